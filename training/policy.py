"""The decision policy: answer, ask to clarify, or say a question is out of scope.

Thresholds are chosen on validation data and saved with each model version, never hand-picked:

- out of scope when the in-scope score is below `oos_threshold`. The score adds the calibrated
  top probability and the similarity to the known examples (the mean cosine similarity of the 5
  nearest training examples in the fine-tuned model's space), each standardised on the in-scope
  validation messages. A new company has no out-of-scope examples, so without them the two
  count equally. The threshold declines at most `max_in_scope_decline` of the (in-scope)
  validation messages, and at most `max_accuracy_loss` of them as messages the model gets right.
  With reviewed out-of-scope examples a third signal joins them: how much closer a message is
  to the known examples than to the nearest reviewed out-of-scope message (the "contrast"),
  weighted 2 beside the probability and similarity at 1/sqrt(2) each (`REVIEWED_WEIGHTS`), the
  threshold chosen within the same limits;
- otherwise answer when the calibrated top probability reaches `answer`, the lowest threshold at
  which the validation messages above it are answered with at least the target accuracy;
- otherwise ask to clarify between the top candidates.

`second_opinion_below` marks the borderline: the in-scope score under which the lowest
`second_opinion_share` (10%) of in-scope validation messages fall. The policy does not decline
them; a second opinion (chatbot.second_opinion, an optional OpenAI-compatible model) may.

Why this score: on BANKING77 with 10 intents held out (development data only,
benchmarks/oos_scores_banking77.py), declining 3% of in-scope validation messages caught 43% of
the unseen intents with it, against 36% with the probability alone, 38% with the fine-tuned
5-nearest similarity alone, 25% with relative Mahalanobis, and fewer with the base encoder's
nearest example, which the first policy combined with the probability. With a few reviewed
out-of-scope messages of each unseen intent (3 to 20, same script), the contrast alone caught 79%
to 87% of the rest of them at 2% declined, against 31% for the sum and 52% to 56% for the sum
plus the contrast; on test, benchmarks/policy_banking77.py --reviewed-oos.

Why fixed weights with reviewed messages: the policy used to keep the weighting that caught the
most reviewed messages, each judged against the others. An admin reviews whole groups of alike
messages, so each reviewed message has close neighbours of its own topic, the contrast alone
won, and the probability and similarity that catch topics nobody has reviewed yet were dropped.
On the loop's night-1 models for two draws of held-out intents (development data only:
validation halved, the policy fitted on one half and its cost measured on the other, recall on
the held-out intents' unreviewed train.csv rows; benchmarks/policy_rules_banking77.py), these
weights caught 76% and 68% for 1.47 and 1.27 points, against 66% and 61% for 1.74 and 1.54
with the old choice, and had the best mean of the 21 fixed weightings tried. Where every unseen
topic has a few reviewed messages (3 random ones of each), the contrast alone is better (84%
against 80%): no topic is left that nobody reviewed, which is not how a review queue fills.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import numpy as np

logger = logging.getLogger(__name__)

ANSWER = "answer"
CLARIFY = "clarify"
OUT_OF_SCOPE = "out_of_scope"
NEVER = -1e9  # a threshold no score is below


@dataclass(frozen=True)
class Policy:
    answer: float  # answer when the top calibrated probability is at least this
    oos_threshold: float = NEVER  # out of scope when the in-scope score is below this
    confidence_mean: float = 0.0
    confidence_scale: float = 1.0
    confidence_weight: float = 1.0
    similarity_mean: float = 0.0
    similarity_scale: float = 1.0
    similarity_weight: float = 1.0
    # similarity minus the similarity to the nearest reviewed out-of-scope message
    contrast_weight: float = 0.0
    contrast_mean: float = 0.0
    contrast_scale: float = 1.0
    # a message scoring below this (and not declined) is borderline: worth a second opinion
    second_opinion_below: float = NEVER

    def in_scope_score(self, confidence, similarity, oos_similarity=None):
        """Higher: more like the messages the model knows (works on floats and arrays).
        `oos_similarity`: the cosine to the nearest reviewed out-of-scope message (None: none)."""
        score = (
            self.confidence_weight * (confidence - self.confidence_mean) / self.confidence_scale
            + self.similarity_weight * (similarity - self.similarity_mean) / self.similarity_scale
        )
        if self.contrast_weight and oos_similarity is not None:
            contrast = similarity - oos_similarity
            score = score + self.contrast_weight * (
                (contrast - self.contrast_mean) / self.contrast_scale
            )
        return score

    def declines(self, confidence, similarity, oos_similarity=None):
        """Whether the in-scope score falls below the out-of-scope threshold (floats and
        arrays)."""
        return self.in_scope_score(confidence, similarity, oos_similarity) < self.oos_threshold

    def decide(
        self, confidence: float, similarity: float | None, oos_similarity: float | None = None
    ) -> str:
        """`similarity` None: not measured (a model saved before it was), so never declined."""
        if similarity is not None and self.declines(confidence, similarity, oos_similarity):
            return OUT_OF_SCOPE
        if confidence >= self.answer:
            return ANSWER
        return CLARIFY

    def borderline(
        self, confidence: float, similarity: float | None, oos_similarity: float | None = None
    ) -> bool:
        """Among the least in-scope-looking messages the policy does not decline."""
        return similarity is not None and bool(
            self.in_scope_score(confidence, similarity, oos_similarity) < self.second_opinion_below
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        if "oos_threshold" not in data:
            # Saved by the first policy (probability and base-encoder similarity thresholds),
            # whose similarity this model's files no longer match: it never declines.
            logger.warning("Model saved with an older policy: out-of-scope detection is off")
            return cls(answer=float(data["answer"]))
        return cls(**{f.name: float(data[f.name]) for f in fields(cls) if f.name in data})


# Answers everything: the behaviour before any policy was fitted.
ANSWER_ALL = Policy(answer=0.0)

# (probability, similarity, contrast) weights. With reviewed out-of-scope messages: the contrast
# at 2, beside the probability and similarity in the zero-shot sum's direction at unit length.
REVIEWED_WEIGHTS = (float(np.sqrt(0.5)), float(np.sqrt(0.5)), 2.0)
# Reviewed messages but no contrast measured: from the probability alone to the similarity alone.
WITHOUT_CONTRAST = [(float(np.cos(a)), float(np.sin(a)), 0.0) for a in np.linspace(0, np.pi / 2, 9)]


def answer_threshold(
    confidence: np.ndarray, correct: np.ndarray, *, target_accuracy: float
) -> float:
    """The lowest confidence threshold whose answered validation messages reach the target."""
    order = np.argsort(-confidence)
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    reaching = np.flatnonzero(running >= target_accuracy)
    if not len(reaching):
        return float(confidence.max()) + 1e-6  # never confident enough: always clarify
    # The longest prefix (by confidence) that still reaches the target.
    return float(confidence[order][reaching[-1]])


def coverage_threshold(confidence: np.ndarray, coverage: float) -> float:
    """The threshold that answers the given share of messages."""
    return float(np.quantile(confidence, 1.0 - coverage))


def accuracy_loss_threshold(score: np.ndarray, correct: np.ndarray, max_loss: float) -> float:
    """The highest threshold that declines at most `max_loss` of the messages as right
    answers: what declining costs in accuracy."""
    order = np.argsort(score)
    lost = np.cumsum(correct[order]) / max(1, len(score))
    over = np.flatnonzero(lost > max_loss)
    return float(score[order][over[0]]) if len(over) else np.inf


def decline_threshold(
    score: np.ndarray,
    correct: np.ndarray,
    max_in_scope_decline: float = 0.03,
    max_accuracy_loss: float = 0.015,
) -> float:
    """The out-of-scope threshold for in-scope `score`s: it declines at most
    `max_in_scope_decline` of them, and at most `max_accuracy_loss` as right answers."""
    return min(
        float(np.quantile(score, max_in_scope_decline)),
        accuracy_loss_threshold(score, correct, max_accuracy_loss),
    )


def fit_policy(
    confidence: np.ndarray,
    correct: np.ndarray,
    similarity: np.ndarray,
    *,
    is_oos: np.ndarray | None = None,
    oos_similarity: np.ndarray | None = None,
    target_accuracy: float = 0.97,
    max_in_scope_decline: float = 0.03,
    max_accuracy_loss: float = 0.015,
    second_opinion_share: float = 0.10,
    oos_similarity_elsewhere: np.ndarray | None = None,
    weights: list[tuple[float, float, float]] | None = None,
) -> Policy:
    """Choose the thresholds on validation data (see the module docstring).

    `oos_similarity`: each message's cosine to the nearest reviewed out-of-scope message, for
    the out-of-scope rows the nearest *other* one (-1 where there is none).
    `oos_similarity_elsewhere`: for the out-of-scope rows, the cosine to the nearest reviewed
    message of *another group*; when given, a weighting is judged by the mean of what it catches
    judged both ways. `weights`: the (probability, similarity, contrast) weightings tried."""
    in_scope = np.ones(len(confidence), bool) if is_oos is None else ~is_oos
    answer = answer_threshold(
        confidence[in_scope], correct[in_scope], target_accuracy=target_accuracy
    )
    standard = {
        "confidence_mean": float(confidence[in_scope].mean()),
        "confidence_scale": float(max(confidence[in_scope].std(), 1e-6)),
        "similarity_mean": float(similarity[in_scope].mean()),
        "similarity_scale": float(max(similarity[in_scope].std(), 1e-6)),
    }
    if is_oos is None or not is_oos.any():
        weights = [(1.0, 1.0, 0.0)]
    else:
        if oos_similarity is not None:
            contrast = similarity[in_scope] - oos_similarity[in_scope]
            standard["contrast_mean"] = float(contrast.mean())
            standard["contrast_scale"] = float(max(contrast.std(), 1e-6))
        if weights is None:
            weights = [REVIEWED_WEIGHTS] if oos_similarity is not None else WITHOUT_CONTRAST
        elif oos_similarity is None:
            weights = [w for w in weights if not w[2]]
    best: tuple[float, Policy] | None = None
    for confidence_weight, similarity_weight, contrast_weight in weights:
        policy = Policy(
            answer=answer,
            confidence_weight=confidence_weight,
            similarity_weight=similarity_weight,
            contrast_weight=contrast_weight,
            **standard,
        )
        score = policy.in_scope_score(confidence, similarity, oos_similarity)
        threshold = decline_threshold(
            score[in_scope], correct[in_scope], max_in_scope_decline, max_accuracy_loss
        )
        caught = float((score[~in_scope] < threshold).mean()) if (~in_scope).any() else 0.0
        if oos_similarity_elsewhere is not None and (~in_scope).any():
            elsewhere = policy.in_scope_score(
                confidence[~in_scope], similarity[~in_scope], oos_similarity_elsewhere
            )
            caught = (caught + float((elsewhere < threshold).mean())) / 2
        if best is None or caught > best[0]:
            borderline = max(threshold, float(np.quantile(score[in_scope], second_opinion_share)))
            best = (
                caught,
                Policy(
                    **{
                        **policy.to_dict(),
                        "oos_threshold": threshold,
                        "second_opinion_below": borderline,
                    }
                ),
            )
    assert best is not None
    return best[1]


def decision_shares(decisions: list[str]) -> dict[str, float]:
    total = max(1, len(decisions))
    return {d: decisions.count(d) / total for d in (ANSWER, CLARIFY, OUT_OF_SCOPE)}
