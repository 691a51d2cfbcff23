import pytest

from training.data import (
    DatasetError,
    Example,
    build_label_maps,
    check_known_labels,
    check_training_data,
    load_csv,
    stratified_split,
)


def test_stratified_split_keeps_every_intent_on_both_sides(examples) -> None:
    train, val = stratified_split(examples, val_fraction=0.2, seed=1)

    assert {e.label for e in train} == {e.label for e in val} == {e.label for e in examples}
    assert sorted(train + val, key=str) == sorted(examples, key=str)
    assert stratified_split(examples, val_fraction=0.2, seed=1) == (train, val)


def test_stratified_split_leaves_a_two_example_intent_one_for_training() -> None:
    rows = [Example("a", "x"), Example("b", "x"), Example("c", "y"), Example("d", "y")]

    train, val = stratified_split(rows, val_fraction=0.9, seed=0)

    assert len(train) == len(val) == 2


def test_build_label_maps_is_stable_and_sorted() -> None:
    label2id, id2label = build_label_maps(["b", "a", "b", "c"])

    assert label2id == {"a": 0, "b": 1, "c": 2}
    assert id2label == {0: "a", 1: "b", 2: "c"}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "empty"),
        ([Example("a", "x"), Example("b", "x")], "Only one intent"),
        ([Example("a", "x"), Example("b", "x"), Example("c", "y")], "fewer than 2 examples: y"),
    ],
)
def test_check_training_data_explains_what_is_wrong(rows, message) -> None:
    with pytest.raises(DatasetError, match=message):
        check_training_data(rows)


def test_check_known_labels_names_the_unknown_ones() -> None:
    with pytest.raises(DatasetError, match="does not know: lost_card"):
        check_known_labels([Example("x", "lost_card")], {"card_arrival": 0})


def test_load_csv_reads_configurable_columns_and_refuses_missing_ones(write_csv, examples) -> None:
    path = write_csv("data.csv", examples, text_col="utterance", label_col="category")

    loaded = load_csv(path, text_col="utterance", label_col="category")

    assert loaded == examples
    with pytest.raises(DatasetError, match="no column label"):
        load_csv(path, text_col="utterance")
