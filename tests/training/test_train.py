"""Training mechanics: a few steps on tiny data, with the real packaged model and a tiny BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from training.config import TrainConfig
from training.data import DatasetError, Example
from training.inference import (
    IntentClassifier,
    cpu_has_native_bf16,
    cpu_precisions,
    fastest_precision,
)
from training.model import IntentModel, load_encoder
from training.pipeline import refit_to_directory, search_space, train_to_directory
from training.train import Batcher, default_base_model, softmax

MODEL_FILES = {
    "model.json",
    "head.safetensors",
    "tokenizer.json",
    "thresholds.json",
    "training_config.json",
    "metrics.json",
    "validation_report.json",
    "confusion.png",
}

# Messages a support admin marked out of scope.
WEATHER = [
    "what will the weather be tomorrow",
    "is it going to rain tomorrow",
    "weather forecast for the weekend",
    "will it be sunny tomorrow",
    "how cold will it be tonight",
]


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 4, "seed": 3, **overrides})


def test_packaged_model_trains_saves_and_predicts_the_same_after_reload(
    split, tmp_path: Path
) -> None:
    # given
    train_set, val_set = split
    out = tmp_path / "v1"

    # when
    metrics = train_to_directory(quick(), train_set, val_set, out)

    # then
    assert {p.name for p in out.iterdir()} >= MODEL_FILES
    assert (out / "encoder" / "model.safetensors").is_file()
    assert metrics["kind"] == "full" and metrics["n_train"] == 9
    assert metrics["validation"]["probe"] is not None
    assert metrics["temperature"] > 0
    first = IntentClassifier.from_dir(out, precision="fp32")
    second = IntentClassifier.from_dir(out, precision="fp32")
    texts = [e.text for e in val_set] + ["my card is lost", "euro rate?"]
    np.testing.assert_array_equal(first.predict_proba(texts), second.predict_proba(texts))
    predictions = first.predict(texts, k=2)
    assert all(len(p.top_k) == 2 and p.top_k[0] == (p.intent, p.confidence) for p in predictions)
    assert np.allclose(first.predict_proba(texts).sum(axis=1), 1.0)
    # the packaged sentence encoder separates these intents from nine examples
    assert [p.intent for p in predictions[:6]] == [e.label for e in val_set]
    # trained without reviewed out-of-scope messages, it has none to compare with
    assert all(p.oos_similarity is None for p in predictions)


def test_reviewed_out_of_scope_messages_are_kept_with_the_model_and_read_for_every_message(
    split, tmp_path: Path
) -> None:
    # given: messages a support admin marked out of scope
    train_set, val_set = split

    # when
    metrics = train_to_directory(quick(), train_set, val_set, tmp_path / "v1", out_of_scope=WEATHER)
    classifier = IntentClassifier.from_dir(tmp_path / "v1", precision="fp32")

    # then: kept with the model, in its space, and read for every message
    assert metrics["n_out_of_scope"] == len(WEATHER)
    assert (tmp_path / "v1" / "out_of_scope.npy").is_file()
    near, far = classifier.predict(["will it snow tomorrow", "where is my new card"], k=1)
    assert near.oos_similarity > far.oos_similarity
    # the policy's contrast was standardised on the validation messages as served
    served = classifier.predict([e.text for e in val_set], k=1)
    contrast = [p.similarity - p.oos_similarity for p in served]
    assert classifier.policy.contrast_mean == pytest.approx(np.mean(contrast), abs=1e-3)
    assert classifier.policy.contrast_scale == pytest.approx(np.std(contrast), abs=1e-3)


def test_a_refit_fits_the_policy_training_on_the_same_examples_would_and_shares_the_weights(
    split, tmp_path: Path
) -> None:
    # given: a model trained before anything was reviewed out of scope, and the model that the
    # same training fits once messages are
    train_set, val_set = split
    train_to_directory(quick(), train_set, val_set, tmp_path / "before")
    train_to_directory(quick(), train_set, val_set, tmp_path / "trained", out_of_scope=WEATHER)

    # when: the first model's policy is fitted again with the reviewed messages
    metrics = refit_to_directory(
        tmp_path / "before", val_set, tmp_path / "refit", out_of_scope=WEATHER
    )

    # then: the policy, temperature and reviewed vectors are what training fitted
    refit, trained = (
        json.loads((tmp_path / name / "thresholds.json").read_text())
        for name in ("refit", "trained")
    )
    assert refit["policy"]["contrast_weight"] > 0
    assert refit["policy"] == pytest.approx(trained["policy"], abs=1e-4)
    assert refit["temperature"] == pytest.approx(trained["temperature"], abs=1e-4)
    np.testing.assert_allclose(
        np.load(tmp_path / "refit" / "out_of_scope.npy"),
        np.load(tmp_path / "trained" / "out_of_scope.npy"),
        atol=2e-3,
    )
    assert metrics["n_out_of_scope"] == len(WEATHER)
    assert metrics["refitted_from"] == "before"
    trained_metrics = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    for score in ("accuracy", "macro_f1"):
        assert metrics["validation"][score] == trained_metrics["validation"][score]
    # then: it decides as the trained model does, with the first model's very weights
    texts = [e.text for e in val_set] + ["will it snow tomorrow", "is it sunny today"]
    decided = {
        name: [d.decision for d in IntentClassifier.from_dir(tmp_path / name).decide(texts)]
        for name in ("refit", "trained")
    }
    assert decided["refit"] == decided["trained"]
    weights = Path("encoder", "model.safetensors")
    assert (tmp_path / "refit" / weights).samefile(tmp_path / "before" / weights)
    # then: the model it came from is as it was
    assert not (tmp_path / "before" / "out_of_scope.npy").exists()
    before = json.loads((tmp_path / "before" / "thresholds.json").read_text())
    assert before["policy"]["contrast_weight"] == 0

    # when: the reviews are undone, and the policy fitted again without them
    refit_to_directory(tmp_path / "refit", val_set, tmp_path / "undone")

    # then: it is the policy of the model that never had them
    undone = json.loads((tmp_path / "undone" / "thresholds.json").read_text())
    assert undone["policy"] == pytest.approx(before["policy"], abs=1e-4)
    assert not (tmp_path / "undone" / "out_of_scope.npy").exists()


def test_reviewed_out_of_scope_messages_teach_the_model_to_favour_no_intent_on_alike_ones(
    split, tmp_path: Path
) -> None:
    # given: the same training with and without outlier exposure to reviewed messages (no probe
    # start, so that the fine-tuned weights, which the exposure changes, are the ones kept)
    train_set, val_set = split
    alike = ["will it snow this weekend", "how hot will it be tomorrow", "is rain expected today"]
    top = {}

    # when
    for weight in (0.0, 1.0):
        config = quick(
            epochs=6, probe_init=False, head_lr=1e-2, patience=6, out_of_scope_weight=weight
        )
        out = tmp_path / f"w{weight}"
        train_to_directory(config, train_set, val_set, out, out_of_scope=WEATHER)
        classifier = IntentClassifier.from_dir(out, precision="fp32")
        # the model's own distribution (the calibration's temperature differs between the two)
        top[weight] = {
            texts[0]: softmax(classifier.logits(texts)).max(axis=1) for texts in (WEATHER, alike)
        }
        known = classifier.predict([e.text for e in val_set], k=1)
        assert [p.intent for p in known] == [e.label for e in val_set]

    # then: the reviewed messages lean to no intent in particular, and so, on average, do
    # messages like them that training never saw
    exposed, plain = top[1.0], top[0.0]
    assert (exposed[WEATHER[0]] < plain[WEATHER[0]]).all(), top
    assert exposed[alike[0]].mean() < plain[alike[0]].mean(), top


def test_any_bert_checkpoint_works_through_the_base_model_setting(
    split, tiny_bert: str, tmp_path: Path
) -> None:
    train_set, val_set = split

    metrics = train_to_directory(
        quick(base_model=tiny_bert, pooling="cls", epochs=2), train_set, val_set, tmp_path / "m"
    )

    assert metrics["base_model"] == tiny_bert
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    classifier = IntentClassifier.from_dir(tmp_path / "m")
    assert classifier.meta["pooling"] == "cls"
    assert set(classifier.labels) == {"card_arrival", "exchange_rate", "lost_card"}
    assert classifier.predict(["hello"])[0].intent in classifier.labels


def test_lora_saves_only_adapters_and_reloads_to_the_same_predictions(
    split, tiny_bert: str, tmp_path: Path
) -> None:
    # given
    train_set, val_set = split
    config = quick(base_model=tiny_bert, lora=True, lora_rank=4, lora_targets=["query", "value"])

    # when
    metrics = train_to_directory(config, train_set, val_set, tmp_path / "lora")

    # then
    encoder_files = {p.name for p in (tmp_path / "lora" / "encoder").iterdir()}
    assert "adapter_model.safetensors" in encoder_files and "model.safetensors" not in encoder_files
    assert metrics["kind"] == "lora"
    saved = json.loads((tmp_path / "lora" / "training_config.json").read_text())
    assert saved["lora_rank"] == 4 and saved["lora_targets"] == ["query", "value"]
    texts = ["where is my card", "rate for dollars"]
    a = IntentClassifier.from_dir(tmp_path / "lora", precision="fp32").predict_proba(texts)
    b = IntentClassifier.from_dir(tmp_path / "lora", precision="fp32").predict_proba(texts)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_cpu_precisions_are_measured_at_training_time_and_used_only_if_they_held(
    split, tmp_path
) -> None:
    train_set, val_set = split

    metrics = train_to_directory(quick(), train_set, val_set, tmp_path / "q")

    thresholds = json.loads((tmp_path / "q" / "thresholds.json").read_text())
    allowed = max(0.005, 1 / len(val_set))  # one message on a small validation set
    for precision in ("int8", "bf16"):
        check = metrics[precision]
        assert check["use"] == (check["accuracy_drop"] <= allowed + 1e-9)
        assert thresholds[precision] == check["use"]
    served = IntentClassifier.from_dir(tmp_path / "q")
    candidates = cpu_precisions(thresholds, native_bf16=cpu_has_native_bf16())
    assert served.precision in candidates
    if len(candidates) > 1:  # timed at load: the fastest of those that held
        assert set(served.precision_ms) == set(candidates)
        assert served.precision == min(served.precision_ms, key=served.precision_ms.__getitem__)
    texts = [e.text for e in val_set]
    fp32 = IntentClassifier.from_dir(tmp_path / "q", precision="fp32").predict_proba(texts)
    bf16 = IntentClassifier.from_dir(tmp_path / "q", precision="bf16")
    assert bf16.model.encoder.dtype == torch.bfloat16
    np.testing.assert_allclose(bf16.predict_proba(texts), fp32, atol=0.05)


def test_the_cpu_forward_pass_is_a_traced_graph_with_the_eager_outputs(split, tmp_path) -> None:
    # given: a model trained on the packaged BERT
    train_set, val_set = split
    train_to_directory(quick(), train_set, val_set, tmp_path / "t")
    texts = [e.text for e in val_set] + ["hi"]

    for precision in ("fp32", "bf16", "int8"):
        # when
        traced = IntentClassifier.from_dir(tmp_path / "t", precision=precision)
        eager = IntentClassifier.from_dir(tmp_path / "t", precision=precision, trace=False)

        # then: the same predictions and embeddings, in batches of every size (split alike: each
        # load times its own pass cost, and a different split may move bf16 results, below)
        assert traced.traced is not None and eager.traced is None
        eager.call_tokens = traced.call_tokens
        for batch in (texts[:1], texts[:3], texts):
            (p_traced, v_traced), (p_eager, v_eager) = traced.analyse(batch), eager.analyse(batch)
            assert [p.intent for p in p_traced] == [p.intent for p in p_eager]
            np.testing.assert_allclose(
                [p.confidence for p in p_traced], [p.confidence for p in p_eager], atol=1e-4
            )
            np.testing.assert_allclose(v_traced, v_eager, atol=1e-4)

        # and splitting a batch by length changes no result (dynamic int8 scales activations
        # per pass, so there a message's companions move it a little whatever the split)
        assert traced.call_tokens is not None and 0 <= traced.call_tokens <= 512
        if precision == "int8":
            continue
        mixed = [*texts, "my card was charged twice for the same coffee at the airport " * 3]
        traced.call_tokens = None
        p_whole, v_whole = traced.analyse(mixed)
        traced.call_tokens = 0.0  # a run per padded length
        p_split, v_split = traced.analyse(mixed)
        assert [p.intent for p in p_whole] == [p.intent for p in p_split]
        # each row back in its place: nearest to its own whole-batch embedding
        assert (v_split @ v_whole.T).argmax(axis=1).tolist() == list(range(len(mixed)))
        # bf16 kernels may block a pass by its shape: on an AMD EPYC (Zen 4) with AVX512-BF16
        # and no AMX, a message's bf16 embedding moved by up to 2.1e-3 with the rows beside it
        # (bf16 keeps 8 bits of mantissa), where on a Sapphire Rapids it did not move
        np.testing.assert_allclose(v_whole, v_split, atol=1e-4 if precision == "fp32" else 1e-2)


def test_a_batch_splits_by_length_where_padding_costs_more_than_a_call(packaged_model) -> None:
    # given: three short messages and a long one
    tokenizer = AutoTokenizer.from_pretrained(packaged_model)
    texts = ["hi", "long " * 30, "ok", "card lost"]
    batcher = Batcher(tokenizer, texts, max_length=64)
    assert batcher.lengths == [3, 32, 3, 4]
    assert [batcher.padded(i) for i in range(4)] == [8, 32, 8, 8]

    # then: shortest first, one pass unless told what a pass costs
    assert batcher.in_order(64) == [[0, 2, 3, 1]]
    # a cheap pass: the short ones are not padded to 32 (8 + 3 x 8 + 8 + 32 < 8 + 4 x 32)
    assert batcher.in_order(64, call_tokens=8) == [[0, 2, 3], [1]]
    # a costly pass: one, padding and all (1000 + 4 x 32 < 2 x 1000 + 3 x 8 + 32)
    assert batcher.in_order(64, call_tokens=1000) == [[0, 2, 3, 1]]
    # within the batch size, and never between rows padded alike
    assert batcher.in_order(2, call_tokens=0) == [[0, 2], [3], [1]]


@pytest.mark.parametrize(
    ("thresholds", "native_bf16", "expected"),
    [
        ({"bf16": True, "int8": True}, True, ("fp32", "bf16", "int8")),
        ({"bf16": True, "int8": True}, False, ("fp32", "int8")),  # emulated bf16 is slow
        ({"bf16": False, "int8": True}, True, ("fp32", "int8")),
        ({"bf16": True, "int8": False}, False, ("fp32",)),
        ({"int8": False}, True, ("fp32",)),  # saved before bf16 was measured
    ],
)
def test_cpu_precisions_are_those_that_held_and_that_the_cpu_computes(
    thresholds, native_bf16, expected
) -> None:
    assert cpu_precisions(thresholds, native_bf16=native_bf16) == expected


def test_fastest_precision_times_each_candidate_on_a_copy() -> None:
    # given: the packaged BERT behind an intent head
    model = IntentModel(
        load_encoder(default_base_model()), 3, pooling="mean", normalize=True, dropout=0.0
    ).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # when
    chosen, costs = fastest_precision(model, ("fp32", "int8"))
    alone, no_costs = fastest_precision(model, ("fp32",))

    # then: the cheaper of the two measured, and the model itself left in fp32
    assert set(costs) == {"fp32", "int8"} and all(ms > 0 for ms in costs.values())
    assert chosen == min(costs, key=costs.__getitem__)
    assert (alone, no_costs) == ("fp32", {})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("train_rows", "val_rows", "message"),
    [
        ([], [Example("x", "a")], "empty"),
        (
            [Example("a", "x"), Example("b", "x"), Example("c", "y")],
            [Example("d", "x")],
            "fewer than 2 examples",
        ),
        (
            [Example("a", "x"), Example("b", "x"), Example("c", "y"), Example("d", "y")],
            [Example("e", "z")],
            "does not know: z",
        ),
    ],
)
def test_bad_datasets_fail_clearly_and_leave_no_model(
    train_rows, val_rows, message, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match=message):
        train_to_directory(quick(), train_rows, val_rows, tmp_path / "never")

    assert list(tmp_path.iterdir()) == []


def test_training_into_an_existing_directory_is_refused(split, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()

    with pytest.raises(FileExistsError):
        train_to_directory(quick(), *split, tmp_path / "taken")


def test_search_tries_configurations_within_its_budget_and_keeps_the_best(
    split, tiny_bert: str, tmp_path: Path
) -> None:
    # given: trials of a tiny BERT take a few seconds each, once imports and caches are warm
    config = quick(base_model=tiny_bert, quantize=False)
    train_to_directory(config, *split, tmp_path / "warm-up")
    shutil.rmtree(tmp_path / "warm-up")

    # when
    metrics = train_to_directory(config, *split, tmp_path / "best", search_minutes=0.5)

    # then
    trials = metrics["search"]["trials"]
    assert 2 <= trials <= len(search_space(config))
    assert 1 <= metrics["search"]["best_trial"] <= trials
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # losing trials are removed
    best = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert best["validation"] == metrics["validation"]


def test_search_space_starts_with_the_given_config_and_varies_lora_rank() -> None:
    full = search_space(TrainConfig())
    lora = search_space(TrainConfig(lora=True))

    assert full[0] == TrainConfig()
    assert {c.lr for c in full} >= {5e-5, 8e-5, 1.2e-4}
    assert {c.lora_rank for c in lora} == {8, 16, 32}
    assert len(set(map(repr, lora))) == len(lora)


def test_a_version_saved_before_models_kept_their_neighbours_still_answers(
    split, tiny_bert: str, tmp_path: Path
) -> None:
    # given: a model as the first policy saved it: no neighbours.npy, the old thresholds
    from training.train import NEIGHBOURS_FILE

    train_set, val_set = split
    train_to_directory(quick(base_model=tiny_bert), train_set, val_set, tmp_path / "old")
    (tmp_path / "old" / NEIGHBOURS_FILE).unlink()
    thresholds_file = tmp_path / "old" / "thresholds.json"
    thresholds = json.loads(thresholds_file.read_text())
    thresholds["policy"] = {"answer": 0.5, "oos_confidence": 0.3, "oos_similarity": 0.6}
    thresholds_file.write_text(json.dumps(thresholds))

    # when: rolled back to, it reads a message
    classifier = IntentClassifier.from_dir(tmp_path / "old")
    decision = classifier.decide(["where is my card"])[0]

    # then: it answers or clarifies (it never declines), with no similarity to report
    assert decision.decision in ("answer", "clarify")
    assert decision.prediction.similarity is None
