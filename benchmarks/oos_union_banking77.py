"""Would the loop keep more of what zero-shot caught by declining on either score? Development
data only.

    .venv/bin/python benchmarks/policy_banking77.py --seed 9 --skip-coverage --nights 3 \\
        --unknown-share 0.1 --review-from self --keep-models /tmp/zs9
    .venv/bin/python benchmarks/oos_union_banking77.py --seed 9 --models /tmp/zs9

After nights of the bot's own declines the policy scores a message by the probability and
similarity at 0.71 each plus the contrast at 2 (training.policy.REVIEWED_WEIGHTS), and a few
unseen intents that zero-shot (probability + similarity, 1 and 1) caught are declined less
(benchmarks/POLICY.md, "Why zero-shot falls short"). The rule compared here declines a message
when the zero-shot score is below a threshold that declines a share Q of in-scope validation
messages, or the shipped score is below the highest threshold that keeps both together within
the same limits (3% declined, 1.5% as right answers); Q = 0 is the shipped rule.

For each kept model with out-of-scope messages (each night of the loop), the in-scope
validation split is halved at random three times; the thresholds are fitted on one half and
measured on the other (the in-scope accuracy their declines cost), and on the held-out intents'
train.csv rows (recall; the few the loop marked are among them, for every rule alike). The
figures are the means of the six fits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_refit_banking77 import features, held_out_data, kept_models_parser, reviewed_models

from training.inference import IntentClassifier
from training.policy import REVIEWED_WEIGHTS, Policy

ZERO_SHOT_SHARES = (0.0, 0.005, 0.01, 0.015, 0.02)


def thresholds(
    zero: np.ndarray,
    shipped: np.ndarray,
    correct: np.ndarray,
    share: float,
    max_decline: float = 0.03,
    max_loss: float = 0.015,
) -> tuple[float, float]:
    """The zero-shot score's threshold (declining `share`), then the highest threshold on the
    shipped score that keeps the two together within the limits."""
    zero_below = float(np.quantile(zero, share)) if share else -np.inf
    declined = zero < zero_below
    best = -np.inf
    for value in np.sort(shipped):
        with_it = declined | (shipped < value)
        if with_it.mean() > max_decline or (with_it & correct).mean() > max_loss:
            break
        best = float(value)
    return zero_below, best


def main() -> None:
    parser = kept_models_parser(__doc__)
    parser.add_argument("--splits", type=int, default=3, help="random halvings of validation")
    args = parser.parse_args()
    val, pool, _, _, _ = held_out_data(args.data, args.seed)
    print("| model (marked out of scope) | zero-shot share | recall | in-scope accuracy cost |")
    print("|---|---|---|---|")
    for directory in reviewed_models(args.models):
        classifier = IntentClassifier.from_dir(directory)
        marked = len(np.load(directory / "out_of_scope.npy"))
        vc, vs, vo, vp = features(classifier, [e.text for e in val])
        correct = vp == np.array([e.label for e in val])
        pc, ps, po, _ = features(classifier, [e.text for e in pool])
        rng = np.random.default_rng(0)
        measured: dict[float, list] = {share: [] for share in ZERO_SHOT_SHARES}
        for _ in range(args.splits):
            order = rng.permutation(len(vc))
            halves = (order[: len(vc) // 2], order[len(vc) // 2 :])
            for fit, judge in (halves, halves[::-1]):
                standard = {
                    "confidence_mean": float(vc[fit].mean()),
                    "confidence_scale": float(vc[fit].std()),
                    "similarity_mean": float(vs[fit].mean()),
                    "similarity_scale": float(vs[fit].std()),
                    "contrast_mean": float((vs - vo)[fit].mean()),
                    "contrast_scale": float((vs - vo)[fit].std()),
                }
                zero = Policy(answer=0.0, **standard)
                confidence_weight, similarity_weight, contrast_weight = REVIEWED_WEIGHTS
                shipped = Policy(
                    answer=0.0,
                    confidence_weight=confidence_weight,
                    similarity_weight=similarity_weight,
                    contrast_weight=contrast_weight,
                    **standard,
                )
                z_val, s_val = zero.in_scope_score(vc, vs, vo), shipped.in_scope_score(vc, vs, vo)
                z_pool, s_pool = zero.in_scope_score(pc, ps, po), shipped.in_scope_score(pc, ps, po)
                for share in ZERO_SHOT_SHARES:
                    z_below, s_below = thresholds(z_val[fit], s_val[fit], correct[fit], share)
                    declined = (z_val[judge] < z_below) | (s_val[judge] < s_below)
                    caught = (z_pool < z_below) | (s_pool < s_below)
                    cost = 100 * (declined & correct[judge]).mean()
                    measured[share].append((caught.mean(), cost))
        for share in ZERO_SHOT_SHARES:
            recall, cost = np.mean(measured[share], axis=0)
            print(
                f"| {directory.name} ({marked}) | {share:.1%} | {recall:.2%} | {cost:.2f} points |",
                flush=True,
            )


if __name__ == "__main__":
    main()
