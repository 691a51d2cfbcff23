"""Refit the out-of-scope policy of models a loop run kept, under other choices of its weights.

    .venv/bin/python benchmarks/policy_banking77.py --skip-coverage --seed 8 --nights 2 \\
        --review-from whole-groups --unknown-share 0.1 --keep-models /tmp/models8
    .venv/bin/python benchmarks/policy_refit_banking77.py --models /tmp/models8 --seed 8

With reviewed out-of-scope messages, training.policy.fit_policy kept the weights (probability,
5-nearest similarity, contrast) that catch the most reviewed messages, each judged against the
*other* reviewed ones (it now fixes them: benchmarks/policy_rules_banking77.py shows why).
When whole groups are reviewed, each has close neighbours of its own
topic, so the contrast alone catches nearly all of them, and wins, though it knows nothing of
the topics nobody reviewed yet. For each kept model that was trained with reviewed messages,
this prints the held-out intents' test recall and the in-scope accuracy the declines cost for:

- served: the policy the model was saved with (fitted on the precision training ran in);
- refit: that rule on the served model's own numbers;
- topic left out: the rule with each reviewed message judged against those of *other*
  held-out intents only (an oracle: the product does not know a reviewed message's topic), a
  stand-in for messages of topics not yet reviewed;
- sum + contrast: all three signals at equal weight, the threshold fitted as usual.

With --grid, also a grid of weightings (the probability and similarity turned from one to the
other, the contrast at 0, 0.5, 1 and 2 on standardised scores), each with the share of reviewed
messages it catches judged against the other reviewed ones and against other topics only:
the test figures show which weighting would have been right, for choosing a rule on
development data, not for choosing one here.

The reviewed messages are found again among the held-out intents' train.csv rows by their
embedding (a model keeps their vectors, not their texts).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_banking77 import DEFAULT_DATA, held_out_intents, in_scope_split

from training.data import load_csv
from training.inference import IntentClassifier
from training.policy import WITHOUT_CONTRAST, Policy, decline_threshold, fit_policy

# The weightings fit_policy chose among until it fixed them (REVIEWED_WEIGHTS): the one catching
# the most reviewed messages, each judged against the others.
BY_CATCH = [*WITHOUT_CONTRAST, (0, 0, 1.0), (1.0, 1.0, 1.0), (1.0, 0, 1.0), (0, 1.0, 1.0)]


def features(classifier: IntentClassifier, texts: list[str]) -> tuple[np.ndarray, ...]:
    """Calibrated confidence, 5-nearest similarity, similarity to the nearest reviewed
    out-of-scope message (-1 where none), predicted intent."""
    decisions = classifier.decide(texts)
    p = [d.prediction for d in decisions]
    return (
        np.array([x.confidence for x in p]),
        np.array([x.similarity for x in p]),
        np.array([-1.0 if x.oos_similarity is None else x.oos_similarity for x in p]),
        np.array([x.intent for x in p]),
    )


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def with_threshold(policy: Policy, confidence, similarity, oos_similarity, correct) -> Policy:
    """`policy` with the threshold fit_policy would give its weights (no reviewed rows)."""
    score = policy.in_scope_score(confidence, similarity, oos_similarity)
    threshold = decline_threshold(score, correct)
    return Policy.from_dict({**policy.to_dict(), "oos_threshold": threshold})


def refit(known_rows: tuple, reviewed_rows: tuple, among: np.ndarray) -> Policy:
    """fit_policy on the validation rows and the reviewed ones, each reviewed message judged by
    its similarity to the nearest other in `among` (-1 where excluded)."""
    vc, vs, vo, v_correct = known_rows
    rc, rs = reviewed_rows
    n = len(vc)
    return fit_policy(
        np.concatenate([vc, rc]),
        np.concatenate([v_correct, np.zeros(len(rc), bool)]),
        np.concatenate([vs, rs]),
        is_oos=np.arange(n + len(rc)) >= n,
        oos_similarity=np.concatenate([vo, among.max(axis=1)]),
        weights=BY_CATCH,
    )


def held_out_data(data: Path, seed: int) -> tuple:
    """The known intents' validation split, the held-out intents' train.csv rows, test.csv,
    which test rows are the held-out intents', and the test labels."""
    examples = load_csv(data / "train.csv", label_col="category")
    test = load_csv(data / "test.csv", label_col="category")
    held_out = held_out_intents(examples, seed)
    _, val = in_scope_split(examples, held_out)
    pool = [e for e in examples if e.label in held_out]
    is_oos = np.array([e.label in held_out for e in test])
    return val, pool, test, is_oos, np.array([e.label for e in test])


def reviewed_models(models: Path) -> list[Path]:
    """The kept models trained with reviewed out-of-scope messages, oldest first."""
    kept = sorted(models.iterdir(), key=lambda d: d.stat().st_mtime)
    return [d for d in kept if (d / "out_of_scope.npy").exists()]


def kept_models_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a script that reads policy_banking77.py's --keep-models directory."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=7, help="as given to policy_banking77.py")
    parser.add_argument("--models", type=Path, required=True, help="its --keep-models directory")
    return parser


def weights_text(policy: Policy) -> str:
    """The policy's probability, similarity and contrast weights, as a table cell."""
    weights = (policy.confidence_weight, policy.similarity_weight, policy.contrast_weight)
    return ", ".join(f"{w:.2f}" for w in weights)


def main() -> None:
    parser = kept_models_parser(__doc__)
    parser.add_argument("--grid", action="store_true", help="also print a grid of weightings")
    args = parser.parse_args()
    val, pool, test, is_oos, gold = held_out_data(args.data, args.seed)
    print(
        "| model (reviewed out of scope) | policy | weights: probability, similarity, "
        "contrast | recall | in-scope accuracy cost |"
    )
    print("|---|---|---|---|---|")
    for directory in reviewed_models(args.models):
        classifier = IntentClassifier.from_dir(directory)
        reviewed_vectors = unit(np.load(directory / "out_of_scope.npy"))
        match = reviewed_vectors @ unit(classifier.embed([e.text for e in pool])).T
        reviewed = [pool[i] for i in match.argmax(axis=1)]
        vc, vs, vo, vp = features(classifier, [e.text for e in val])
        v_correct = vp == np.array([e.label for e in val])
        rc, rs, _, _ = features(classifier, [e.text for e in reviewed])
        among = reviewed_vectors @ reviewed_vectors.T
        np.fill_diagonal(among, -1.0)
        topics = np.array([e.label for e in reviewed])
        tc, ts, to, tp = features(classifier, [e.text for e in test])

        known_rows = (vc, vs, vo, v_correct)
        fitted = refit(known_rows, (rc, rs), among)
        other_topics = np.where(topics[:, None] == topics[None, :], -1.0, among)
        policies = {
            "served": classifier.policy,
            "refit": fitted,
            "topic left out (oracle)": refit(known_rows, (rc, rs), other_topics),
            "sum + contrast": with_threshold(
                Policy.from_dict(
                    {
                        **fitted.to_dict(),
                        "confidence_weight": 1.0,
                        "similarity_weight": 1.0,
                        "contrast_weight": 1.0,
                    }
                ),
                vc,
                vs,
                vo,
                v_correct,
            ),
        }
        if args.grid:
            loo, topic_out = among.max(axis=1), other_topics.max(axis=1)
            grid = [(c, a) for c in (0.0, 0.5, 1.0, 2.0) for a in np.linspace(0, np.pi / 2, 5)]
            for row, (contrast, angle) in enumerate(grid, 1):
                weights = {
                    "confidence_weight": float(np.cos(angle)),
                    "similarity_weight": float(np.sin(angle)),
                    "contrast_weight": contrast,
                }
                policy = with_threshold(
                    Policy.from_dict({**fitted.to_dict(), **weights}), vc, vs, vo, v_correct
                )
                caught = [float(policy.declines(rc, rs, o).mean()) for o in (loo, topic_out)]
                policies[f"grid {row} (caught {caught[0]:.2f} / {caught[1]:.2f})"] = policy
        for name, policy in policies.items():
            declined = policy.declines(tc, ts, to)
            right = tp == gold
            cost = 100 * (right[~is_oos].mean() - (right & ~declined)[~is_oos].mean())
            print(
                f"| {directory.name} ({len(reviewed)}) | {name} | {weights_text(policy)} | "
                f"{declined[is_oos].mean():.2%} | {cost:.2f} points |",
                flush=True,
            )


if __name__ == "__main__":
    main()
