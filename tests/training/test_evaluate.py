import itertools

import numpy as np
import pytest

from training.evaluate import compute_metrics, plot_confusion
from training.train import fit_temperature, length_bucketed_batches, lr_factor, softmax


def test_compute_metrics_on_a_hand_checked_example(tmp_path) -> None:
    gold = ["a", "a", "b", "b", "oos", "oos"]
    pred = ["a", "b", "b", "b", "oos", "a"]

    metrics = compute_metrics(gold, pred, [0.9, 0.4, 0.8, 0.7, 0.3, 0.55], oos_label="oos")

    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_intent"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert metrics["per_intent"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["confusion"][0] == [1, 1, 0]  # gold a: once a, once b
    assert metrics["oos"] == pytest.approx(
        {"label": "oos", "n_oos": 2, "recall": 0.5, "precision": 1.0, "in_scope_accuracy": 0.75}
    )
    assert sum(metrics["confidence_histogram"]["correct"]) == 4
    assert metrics["confidence_histogram"]["wrong"][5] == 1  # 0.55 was wrong
    plot_confusion(metrics, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_lr_factor_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, total_steps=100, warmup_steps=10) for s in range(100)]

    assert factors[0] == pytest.approx(0.1)
    assert max(factors) == factors[9] == 1.0
    assert factors[-1] == pytest.approx(1 / 90)  # reaches 0 at step 100
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_length_bucketed_batches_cover_every_row_once_with_similar_lengths() -> None:
    import random

    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]

    batches = length_bucketed_batches(lengths, 32, random.Random(0), pool=10)

    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 10  # random batches would spread about 50 tokens


def test_fit_temperature_recovers_the_temperature_of_the_data() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 3
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])

    # Logits twice as sharp as the truth want a temperature of about 2.
    assert fit_temperature(true_logits * 2, labels) == pytest.approx(2.0, rel=0.1)
