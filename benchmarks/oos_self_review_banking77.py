"""Out-of-scope detection that learns from a night of unreviewed traffic (an exploration for #4).

    .venv/bin/python benchmarks/oos_self_review_banking77.py [--model-dir /tmp/holdout_model]

Nobody reviews anything: the bot marks out of scope, by itself, what it declined in a night's
traffic, and the policy is fitted again with those messages as the reviewed out-of-scope ones
(`training.policy.fit_policy`, the contrast the review loop uses). The question is whether the
bot's own declines, which hold some unseen-topic messages and some in-scope ones, teach it to
decline more of the unseen topics without losing in-scope accuracy.

Development data only (the split of benchmarks/oos_scores_banking77.py, whose --model-dir and
feature caches this reads, training them first when missing): the in-scope validation split is
halved, one half is the known topics' traffic and the other fits the policy and measures what
it costs; the held-out intents' train.csv rows are drawn into the traffic at a given share of
it, and recall is measured on those that never arrived. The in-scope cost is measured on the
messages the threshold is chosen on, so it stays within the policy's limits by construction:
this compares rules; benchmarks/policy_banking77.py --review-from self measures the cost.
Rules for what the bot marks:

- declined: everything the night's policy declined;
- grouped: only declined messages that fall into a group of at least 3 alike ones (the groups
  "Candidate new intents" shows, `retrieval.groups.alike_groups`, in the packaged encoder's
  space): an unseen topic arrives many times, a stray in-scope decline mostly alone;
- held-out only: the declined messages of held-out intents (a perfect reviewer, for scale).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.oos_scores_banking77 import holdout_split
from retrieval.groups import alike_groups
from training.data import stratified_split
from training.inference import IntentClassifier
from training.policy import fit_policy
from training.train import knn_similarity, nearest_out_of_scope, softmax


def halves(rows, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of two halves of `rows`, each intent split between them (as training splits
    off its validation messages)."""
    index = {id(e): i for i, e in enumerate(rows)}
    first, second = stratified_split(rows, val_fraction=0.5, seed=seed)
    return tuple(np.array(sorted(index[id(e)] for e in half)) for half in (first, second))


@dataclass(frozen=True)
class Signals:
    """Per dev row: fine-tuned embedding, calibrated top probability, 5-nearest similarity,
    and whether the model's intent is right."""

    f: np.ndarray
    confidence: np.ndarray
    similarity: np.ndarray
    correct: np.ndarray


def measure(
    signals: Signals, fitting: np.ndarray, judged: np.ndarray, marked: np.ndarray
) -> tuple[float, float]:
    """Fit the policy on the in-scope `fitting` rows with the `marked` rows as reviewed out of
    scope; recall on the `judged` held-out rows, in-scope accuracy lost on `fitting` (points)."""
    f = signals.f
    fit_rows = np.concatenate([fitting, marked])
    flagged = np.zeros(len(fit_rows), bool)
    flagged[len(fitting) :] = True
    oos_sim = None
    if len(marked):
        oos_sim = nearest_out_of_scope(f[fit_rows], f[marked])
        # a marked row's nearest *other* marked row
        own = f[marked] @ f[marked].T
        np.fill_diagonal(own, -1.0)
        oos_sim[len(fitting) :] = own.max(axis=1) if len(marked) > 1 else -1.0
    policy = fit_policy(
        signals.confidence[fit_rows],
        signals.correct[fit_rows],
        signals.similarity[fit_rows],
        is_oos=flagged if len(marked) else None,
        oos_similarity=oos_sim,
    )
    everyone = np.concatenate([fitting, judged])
    near = nearest_out_of_scope(f[everyone], f[marked]) if len(marked) else None
    score = policy.in_scope_score(signals.confidence[everyone], signals.similarity[everyone], near)
    declined = score < policy.oos_threshold
    kept = (signals.correct[fitting] & ~declined[: len(fitting)]).mean()
    return declined[len(fitting) :].mean(), 100 * (signals.correct[fitting].mean() - kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/holdout_model"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shares", default="0.05,0.1,0.3")
    parser.add_argument("--draws", type=int, default=3, help="halvings and arrivals drawn")
    args = parser.parse_args()
    cache = args.model_dir / "oos_features.npz"
    base_cache = args.model_dir / "oos_base_features.npz"
    if not (cache.exists() and base_cache.exists()):
        script = Path(__file__).with_name("oos_scores_banking77.py")
        command = [sys.executable, str(script), "--model-dir", str(args.model_dir)]
        subprocess.run([*command, "--seed", str(args.seed)], check=True)
    _, val, oos = holdout_split(args.seed)
    classifier = IntentClassifier.from_dir(args.model_dir, precision="fp32")
    arrays, based = dict(np.load(cache)), dict(np.load(base_cache))
    train_f = arrays["train_f"]
    # dev = val + held-out rows, in that order
    f, logits, base = arrays["dev_f"], arrays["dev_l"], based["dev"]
    rows = val + oos
    is_oos = np.arange(len(rows)) >= len(val)
    probability = softmax(logits / classifier.temperature)
    confidence = probability.max(axis=1)
    predicted = np.array([classifier.labels[i] for i in logits.argmax(axis=1)])
    correct = predicted == np.array([e.label for e in rows])
    similarity = knn_similarity(f, train_f)
    signals = Signals(f, confidence, similarity, correct)

    print(f"seed {args.seed}: {len(val)} in-scope validation, {len(oos)} held-out rows")
    print("| held-out share of traffic | draw | rule | marked (held-out / in-scope) |", end="")
    print(" recall | in-scope lost |")
    print("|---|---|---|---|---|---|")
    totals: dict[tuple, list] = {}
    for share in [float(s) for s in args.shares.split(",")]:
        for draw in range(args.draws):
            known_traffic, fitting = halves(val, seed=draw)
            held = np.flatnonzero(is_oos)
            random.Random(100 + draw).shuffle(held := held.copy())
            arriving = round(share / (1 - share) * len(known_traffic))
            unknown_traffic, judged = held[:arriving], held[arriving:]
            traffic = np.concatenate([known_traffic, unknown_traffic])

            # The night: the zero-shot policy's declines in the traffic.
            zero_recall, zero_lost = measure(signals, fitting, judged, np.zeros(0, int))
            zero_policy = fit_policy(confidence[fitting], correct[fitting], similarity[fitting])
            night_score = zero_policy.in_scope_score(confidence[traffic], similarity[traffic], None)
            declined = traffic[night_score < zero_policy.oos_threshold]
            groups = alike_groups(base[declined])
            grouped = np.array(
                sorted(int(declined[i]) for g in groups for i in g.members), dtype=int
            )
            rules = {
                "none (zero-shot)": None,
                "declined": declined,
                "grouped": grouped,
                "held-out only": declined[is_oos[declined]],
            }
            for rule, marked in rules.items():
                if marked is None:
                    recall, lost = zero_recall, zero_lost
                    counts = "-"
                else:
                    recall, lost = measure(signals, fitting, judged, marked)
                    counts = f"{is_oos[marked].sum()} / {(~is_oos[marked]).sum()}"
                totals.setdefault((share, rule), []).append((recall, lost))
                print(
                    f"| {share:.0%} | {draw} | {rule} | {counts} | {recall:.1%} |"
                    f" {lost:.2f} points |",
                    flush=True,
                )
    print()
    print("| held-out share of traffic | rule | mean recall | mean in-scope lost |")
    print("|---|---|---|---|")
    for (share, rule), values in totals.items():
        recall, lost = np.mean(values, axis=0)
        print(f"| {share:.0%} | {rule} | {recall:.1%} | {lost:.2f} points |")


if __name__ == "__main__":
    main()
