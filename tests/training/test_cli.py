"""`python -m training train|evaluate` as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import Example


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_train_then_evaluate_prints_metrics_as_json_on_the_last_line(
    examples, tiny_bert: str, write_csv, tmp_path: Path
) -> None:
    # given
    train_csv = write_csv("train.csv", examples, text_col="utterance", label_col="intent")
    test_rows = [*examples[:6], Example("tell me a joke", "oos"), Example("sing", "oos")]
    test_csv = write_csv("test.csv", test_rows, text_col="utterance", label_col="intent")
    out = tmp_path / "model"

    # when
    trained = run(
        "train", "--csv", str(train_csv), "--text-col", "utterance", "--label-col", "intent",
        "--base-model", tiny_bert, "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.4",
        "--out", str(out),
    )  # fmt: skip
    evaluated = run(
        "evaluate", "--model", str(out), "--csv", str(test_csv), "--text-col", "utterance",
        "--label-col", "intent", "--oos-label", "oos", "--json",
    )  # fmt: skip

    # then
    assert trained.returncode == 0, trained.stderr
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 8
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert metrics["oos"]["n_oos"] == 2
    assert 0.0 <= metrics["oos"]["recall"] <= 1.0  # declined by the policy
    assert sum(metrics["policy"]["shares"].values()) == pytest.approx(1.0)
    assert 0.0 <= metrics["policy"]["coverage"] <= 1.0
    assert {"per_intent", "confusion", "confidence_histogram"} <= metrics.keys()


def test_evaluate_refuses_labels_the_model_does_not_know(
    examples, tiny_bert: str, write_csv, tmp_path: Path
) -> None:
    train_csv = write_csv("train.csv", examples)
    out = tmp_path / "model"
    trained = run(
        "train", "--csv", str(train_csv), "--base-model", tiny_bert, "--epochs", "1",
        "--out", str(out),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    test_csv = write_csv("test.csv", [Example("hello", "greeting")])

    result = run("evaluate", "--model", str(out), "--csv", str(test_csv))

    assert result.returncode == 2
    assert "does not know: greeting" in result.stderr


def test_train_on_an_empty_file_says_so(write_csv, tmp_path: Path) -> None:
    result = run("train", "--csv", str(write_csv("empty.csv", [])), "--out", str(tmp_path / "m"))

    assert result.returncode == 2
    assert "empty" in result.stderr
    assert not (tmp_path / "m").exists()


def test_a_wrong_base_model_or_an_existing_out_directory_is_a_clear_error(
    examples, write_csv, tmp_path: Path
) -> None:
    train_csv = write_csv("train.csv", examples)
    common = ("train", "--csv", str(train_csv), "--epochs", "1")

    mistyped = run(*common, "--base-model", str(tmp_path / "no-such-bert"), "--out", "m1")
    not_a_checkpoint = run(*common, "--base-model", str(tmp_path), "--out", "m2")
    taken = run(*common, "--out", str(tmp_path))

    assert mistyped.returncode == 2 and "Traceback" not in mistyped.stderr
    assert "no-such-bert: no such directory. Set CHATBOT_BASE_MODEL" in mistyped.stderr
    assert not_a_checkpoint.returncode == 2
    assert "has no config.json" in not_a_checkpoint.stderr
    assert taken.returncode == 2 and "exists; choose a new directory" in taken.stderr


def test_a_hub_id_is_a_base_model_only_while_downloads_are_allowed(monkeypatch) -> None:
    from retrieval.encoder import BaseModelError, checked_base_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert checked_base_model("bert-base-uncased") == "bert-base-uncased"
    assert checked_base_model("google/bert_uncased_L-2_H-128_A-2").startswith("google/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE forbids downloading"):
        checked_base_model("bert-base-uncased")
