"""Compare rules for choosing the out-of-scope weights, on development data from train.csv.

    .venv/bin/python benchmarks/policy_banking77.py --skip-coverage --seed 8 --nights 1 \\
        --review-from whole-groups --unknown-share 0.1 --keep-models /tmp/models8
    .venv/bin/python benchmarks/policy_rules_banking77.py --models /tmp/models8 --seed 8

With reviewed out-of-scope messages, training.policy.fit_policy tries weightings of three
signals (calibrated probability, 5-nearest similarity, contrast with the nearest reviewed
message) and keeps the one that catches the most reviewed messages. A night-1 model of the loop
is the same whichever rule the policy uses (night 0 has nothing reviewed), so refitting its
policy under each rule shows what the rule would have served that night.

Each rule is measured twice, and only the first is for choosing between them:

- development (train.csv only): the in-scope validation split is halved at random (three
  times, each half in turn); the policy is fitted on one half with the reviewed messages, and
  measured on the other half (the in-scope accuracy its declines cost) and on the held-out
  intents' train.csv rows nobody reviewed (recall);
- test: fitted on the whole validation split, measured on test.csv as policy_banking77.py
  measures it.

Rules: which weightings are tried (the 13 fit_policy has tried so far, or a grid of 21: the
probability turned to the similarity in five steps, with the contrast at 0, 0.5, 1 and 2, and
the contrast alone), and how a reviewed message counts as caught: judged against the other
reviewed messages, or also against those of other groups (the mean of the two), the groups
found among the reviewed messages by retrieval.groups.alike_groups in the model's space, or
(an oracle) their true topics. Fixed weightings for comparison (--fixed-grid: each of the
grid's; --contrasts 3,4: 0.71, 0.71 with the contrast at 3 and at 4).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_refit_banking77 import (
    BY_CATCH,
    features,
    held_out_data,
    kept_models_parser,
    reviewed_models,
    unit,
    weights_text,
)

from retrieval.groups import alike_groups
from training.inference import IntentClassifier
from training.policy import REVIEWED_WEIGHTS, fit_policy

GRID = [
    (float(np.cos(a)), float(np.sin(a)), c)
    for c in (0.0, 0.5, 1.0, 2.0)
    for a in np.linspace(0, np.pi / 2, 5)
] + [(0.0, 0.0, 1.0)]


def group_labels(vectors: np.ndarray) -> np.ndarray:
    """Each row's group among `vectors` (alike_groups with no minimum size)."""
    labels = np.full(len(vectors), -1)
    for g, group in enumerate(alike_groups(vectors, min_size=1)):
        labels[group.members] = g
    return labels


def elsewhere(among: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's cosine to the nearest row of another label."""
    return np.where(labels[:, None] == labels[None, :], -1.0, among).max(axis=1)


def main() -> None:
    parser = kept_models_parser(__doc__)
    parser.add_argument("--splits", type=int, default=3, help="random halvings of validation")
    parser.add_argument(
        "--fixed-grid", action="store_true", help="also each weighting of the grid, fixed"
    )
    parser.add_argument(
        "--contrasts",
        type=lambda text: tuple(float(c) for c in text.split(",")),
        default=(),
        help="comma-separated: also fixed 0.71, 0.71, c for each contrast weight c",
    )
    args = parser.parse_args()
    val, pool, test, test_oos, gold = held_out_data(args.data, args.seed)
    print(
        "| model (reviewed) | rule | weights chosen on all validation | development: recall, "
        "cost (points) | test: recall, cost (points) |"
    )
    print("|---|---|---|---|---|")
    for directory in reviewed_models(args.models):
        compare(
            directory, val, pool, test, test_oos, gold, args.splits, args.fixed_grid, args.contrasts
        )


def compare(
    directory: Path,
    val,
    pool,
    test,
    test_oos,
    gold,
    splits: int,
    fixed_grid: bool = False,
    contrasts: tuple[float, ...] = (),
) -> None:
    """Print each rule's development and test figures for the model in `directory`."""
    classifier = IntentClassifier.from_dir(directory)
    reviewed_vectors = unit(np.load(directory / "out_of_scope.npy"))
    pool_vectors = unit(classifier.embed([e.text for e in pool]))
    match = (reviewed_vectors @ pool_vectors.T).argmax(axis=1)
    reviewed = [pool[i] for i in match]
    matched = set(match.tolist())
    unreviewed = [e for i, e in enumerate(pool) if i not in matched]
    topics = np.array([e.label for e in reviewed])
    vc, vs, vo, vp = features(classifier, [e.text for e in val])
    v_right = vp == np.array([e.label for e in val])
    rc, rs, _, _ = features(classifier, [e.text for e in reviewed])
    uc, us, uo, _ = features(classifier, [e.text for e in unreviewed])
    tc, ts, to, tp = features(classifier, [e.text for e in test])
    t_right = tp == gold
    among = reviewed_vectors @ reviewed_vectors.T
    np.fill_diagonal(among, -1.0)
    groups = group_labels(reviewed_vectors)
    majority = {
        g: max(set(topics[groups == g]), key=list(topics[groups == g]).count) for g in set(groups)
    }
    pure = np.mean([majority[g] == t for g, t in zip(groups, topics, strict=True)])
    print(
        f"<!-- {directory.name}: {len(reviewed)} reviewed of {len(set(topics))} topics, "
        f"{len(set(groups))} groups, {pure:.0%} in their group's majority topic -->",
        flush=True,
    )
    by_others = among.max(axis=1)
    other_groups = elsewhere(among, groups)
    rules = {
        "13 weightings by catch, each against the others (the rule before)": {"weights": BY_CATCH},
        "13 by catch, also against other groups": {
            "weights": BY_CATCH,
            "oos_similarity_elsewhere": other_groups,
        },
        "grid of 21 by catch, against the others": {"weights": GRID},
        "grid of 21 by catch, also against other groups": {
            "weights": GRID,
            "oos_similarity_elsewhere": other_groups,
        },
        "grid of 21 by catch, also against other topics (oracle)": {
            "weights": GRID,
            "oos_similarity_elsewhere": elsewhere(among, topics),
        },
        "fixed 1, 1, 0 (zero-shot)": {"weights": [(1.0, 1.0, 0.0)]},
        "fixed 1, 1, 1": {"weights": [(1.0, 1.0, 1.0)]},
        "fixed 0.71, 0.71, 2 (fit_policy's now)": {},
    }
    if fixed_grid:
        for weights in GRID:
            rules[f"fixed {', '.join(f'{w:.2f}' for w in weights)}"] = {"weights": [weights]}
    for c in contrasts:
        rules[f"fixed 0.71, 0.71, {c:g}"] = {"weights": [(*REVIEWED_WEIGHTS[:2], c)]}

    def fit(rows: np.ndarray, options: dict):
        n = len(rows)
        return fit_policy(
            np.concatenate([vc[rows], rc]),
            np.concatenate([v_right[rows], np.zeros(len(rc), bool)]),
            np.concatenate([vs[rows], rs]),
            is_oos=np.arange(n + len(rc)) >= n,
            oos_similarity=np.concatenate([vo[rows], by_others]),
            **options,
        )

    rng = np.random.default_rng(0)
    halves = []
    for _ in range(splits):
        order = rng.permutation(len(val))
        a, b = order[: len(val) // 2], order[len(val) // 2 :]
        halves += [(a, b), (b, a)]
    for name, options in rules.items():
        recall, cost = [], []
        for fitted_on, measured_on in halves:
            policy = fit(fitted_on, options)
            recall.append(policy.declines(uc, us, uo).mean())
            kept = v_right[measured_on] & ~policy.declines(
                vc[measured_on], vs[measured_on], vo[measured_on]
            )
            cost.append(100 * (v_right[measured_on].mean() - kept.mean()))
        policy = fit(np.arange(len(val)), options)
        declined = policy.declines(tc, ts, to)
        t_cost = 100 * (t_right[~test_oos].mean() - (t_right & ~declined)[~test_oos].mean())
        print(
            f"| {directory.name} ({len(reviewed)}) | {name} | {weights_text(policy)} | "
            f"{np.mean(recall):.2%}, {np.mean(cost):.2f} | "
            f"{declined[test_oos].mean():.2%}, {t_cost:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
