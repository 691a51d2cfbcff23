"""Why zero-shot out-of-scope detection falls short on BANKING77: each held-out intent's recall
beside how close a relative the model knows.

    .venv/bin/python benchmarks/oos_per_intent.py
        benchmarks/results/policy_banking77_per_intent_seed{7,8,9}.json

Reads runs of benchmarks/policy_banking77.py (which record, for each held-out intent, its
recall, the known intent its messages were most often taken for, and the cosine of its
train.csv rows' centroid to the nearest known intent's in the packaged encoder's space, before
any fine-tuning). Prints every held-out intent of every run by that cosine, the recall of each
band of cosines at night 0 (zero-shot) and after the last night, their rank correlation, and,
for reference, how many of BANKING77's 77 intents have a relative that close among the other 76
(how often a draw of 10 holds one).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.policy_banking77 import DEFAULT_DATA, nearest_known_intents
from training.data import load_csv

BANDS = (0.0, 0.7, 0.8, 1.01)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    rows = []
    for path in args.runs:
        runs = json.loads(path.read_text())["holdout"]
        last = {p["intent"]: p for p in runs[-1]["per_held_out_intent"]}
        for p in runs[0]["per_held_out_intent"]:
            rows.append((path.stem, p, last[p["intent"]]["recall"]))
    rows.sort(key=lambda r: -r[1]["nearest_known_cosine"])

    print("| run | held-out intent | nearest known (cosine) | taken for | recall: night 0, last |")
    print("|---|---|---|---|---|")
    for run, p, after in rows:
        taken = f"{p['taken_as']} ({p['taken_as_share']:.0%})" if p["taken_as"] else ""
        print(
            f"| {run.rsplit('_', 1)[-1]} | {p['intent']} | {p['nearest_known']} "
            f"({p['nearest_known_cosine']:.3f}) | {taken} | {p['recall']:.0%}, {after:.0%} |"
        )

    cosine = np.array([p["nearest_known_cosine"] for _, p, _ in rows])
    zero = np.array([p["recall"] for _, p, _ in rows])
    last = np.array([after for _, _, after in rows])
    print()
    print(
        "| nearest known intent's cosine | held-out intents | recall night 0 | recall last night |"
    )
    print("|---|---|---|---|")
    for low, high in itertools.pairwise(BANDS):
        band = (cosine >= low) & (cosine < high)
        if band.any():
            print(
                f"| {low:.1f} to {min(high, 1):.1f} | {band.sum()} | {zero[band].mean():.1%} | "
                f"{last[band].mean():.1%} |"
            )
    print(
        f"\nSpearman rank correlation of cosine and recall: night 0 {spearman(cosine, zero):.2f}, "
        f"last night {spearman(cosine, last):.2f} ({len(rows)} held-out intents)"
    )

    examples = load_csv(args.data / "train.csv", label_col="category")
    labels = sorted({e.label for e in examples})
    siblings = np.array([nearest_known_intents(examples, {label})[label][1] for label in labels])
    print(
        f"\nOf BANKING77's {len(labels)} intents, the nearest other intent lies at a cosine of "
        f"0.8 or more for {(siblings >= 0.8).sum()}, 0.7 to 0.8 for "
        f"{((siblings >= 0.7) & (siblings < 0.8)).sum()}, under 0.7 for {(siblings < 0.7).sum()} "
        f"(median {np.median(siblings):.3f})."
    )


if __name__ == "__main__":
    main()
