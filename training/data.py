"""Labelled examples: loading, label maps, a stratified split, and the checks data must pass."""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class DatasetError(ValueError):
    """The data cannot train or evaluate a classifier; the message says why and what to fix."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str


def load_csv(
    path: str | Path, *, text_col: str = "text", label_col: str = "label"
) -> list[Example]:
    """Read `text` and `label` columns (names configurable) from a CSV file with a header."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {text_col, label_col} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(
                f"{path}: no column {', '.join(sorted(missing))}; columns are {reader.fieldnames}"
            )
        rows = [Example(row[text_col].strip(), row[label_col].strip()) for row in reader]
    return [row for row in rows if row.text and row.label]


def build_label_maps(labels: Iterable[str]) -> tuple[dict[str, int], dict[int, str]]:
    """Label → id and id → label, sorted by name so the same labels always get the same ids."""
    names = sorted(set(labels))
    return {name: i for i, name in enumerate(names)}, dict(enumerate(names))


def check_training_data(examples: Sequence[Example], *, min_per_label: int = 2) -> None:
    if not examples:
        raise DatasetError("The dataset is empty: there is nothing to train on.")
    counts = Counter(example.label for example in examples)
    if len(counts) < 2:
        raise DatasetError(f"Only one intent ({next(iter(counts))!r}); a classifier needs two.")
    thin = sorted(label for label, n in counts.items() if n < min_per_label)
    if thin:
        raise DatasetError(
            f"Intents with fewer than {min_per_label} examples: {', '.join(thin)}. "
            "Add examples or remove these intents."
        )


def check_known_labels(examples: Sequence[Example], label2id: dict[str, int]) -> None:
    unknown = sorted({example.label for example in examples} - label2id.keys())
    if unknown:
        raise DatasetError(
            f"Labels the model does not know: {', '.join(unknown)}. "
            "Retrain with them, or pass them as --oos-label if they are out of scope."
        )


def stratified_split(
    examples: Sequence[Example], *, val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Cut a validation set that keeps every intent, and every intent in the training set."""
    check_training_data(examples)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    rng.shuffle(train)
    return train, val
