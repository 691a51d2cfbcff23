"""Scores the way the field reports them, from gold labels, predictions and confidences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def compute_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    confidences: Sequence[float],
    *,
    oos_label: str | None = None,
) -> dict:
    """Accuracy, macro-F1, per-intent precision/recall/F1, confusion matrix, confidence histogram.

    With `oos_label`, rows labelled with it are out of scope: a prediction of that label is a
    decline, and the report adds out-of-scope recall/precision and in-scope accuracy.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    true = np.asarray(y_true, dtype=object)
    pred = np.asarray(y_pred, dtype=object)
    conf = np.asarray(confidences, dtype=float)
    labels = sorted(set(true) | set(pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=labels, zero_division=0
    )
    gold = sorted(set(true))
    in_gold = np.isin(labels, gold)
    correct = true == pred
    metrics: dict = {
        "n": len(true),
        "accuracy": float(correct.mean()) if len(true) else 0.0,
        # Macro over the intents that occur in the gold labels, as BANKING77 papers report it.
        "macro_f1": float(f1[in_gold].mean()) if len(gold) else 0.0,
        "per_intent": {
            label: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "labels": labels,
        "confusion": confusion_matrix(true, pred, labels=labels).tolist(),
        "confidence_histogram": confidence_histogram(conf, correct),
    }
    if oos_label is not None:
        is_oos = true == oos_label
        said_oos = pred == oos_label
        in_scope = ~is_oos
        metrics["oos"] = {
            "label": oos_label,
            "n_oos": int(is_oos.sum()),
            "recall": _ratio((is_oos & said_oos).sum(), is_oos.sum()),
            "precision": _ratio((is_oos & said_oos).sum(), said_oos.sum()),
            "in_scope_accuracy": _ratio((correct & in_scope).sum(), in_scope.sum()),
        }
    return metrics


def _ratio(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def confidence_histogram(confidences: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
    """How many right and wrong predictions fall in each confidence bin (0-0.1, ..., 0.9-1)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    return {
        "edges": [round(float(e), 2) for e in edges],
        "correct": np.bincount(which[correct], minlength=bins).tolist(),
        "wrong": np.bincount(which[~correct], minlength=bins).tolist(),
    }


def plot_confusion(metrics: dict, path: Path) -> None:
    """A confusion-matrix heat map, rows = gold intent, columns = predicted intent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = metrics["labels"]
    matrix = np.asarray(metrics["confusion"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(6.0, 0.18 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def policy_metrics(gold: Sequence[str], predicted: Sequence[str], decisions: Sequence[str]) -> dict:
    """Shares answered / clarified / declined, and the accuracy of what was answered."""
    from training.policy import ANSWER, decision_shares

    answered = np.asarray(decisions) == ANSWER
    correct = np.asarray(gold, dtype=object) == np.asarray(predicted, dtype=object)
    return {
        "shares": decision_shares(list(decisions)),
        "coverage": float(answered.mean()) if len(answered) else 0.0,
        "answered_accuracy": float(correct[answered].mean()) if answered.any() else 0.0,
    }
