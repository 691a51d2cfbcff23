"""The decision policy: answer, ask to clarify, or say a question is out of scope.

Thresholds are chosen on validation data and saved with each model version, never hand-picked:

- out of scope when the top probability is below `oos_confidence` *and* the nearest known example
  is less similar than `oos_similarity`. A new company has no out-of-scope examples, so without
  them both are set so that at most `max_in_scope_decline` of the (in-scope) validation messages
  would be declined; with out-of-scope examples they are chosen to catch as many as possible
  within the same limit;
- otherwise answer when the calibrated top probability reaches `answer`, the lowest threshold at
  which the validation messages above it are answered with at least the target accuracy;
- otherwise ask to clarify between the top candidates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ANSWER = "answer"
CLARIFY = "clarify"
OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Policy:
    answer: float  # answer when the top calibrated probability is at least this
    oos_confidence: float  # out of scope when the top probability is below this ...
    oos_similarity: float  # ... and no known example is at least this similar

    def decide(self, confidence: float, similarity: float) -> str:
        if confidence < self.oos_confidence and similarity < self.oos_similarity:
            return OUT_OF_SCOPE
        if confidence >= self.answer:
            return ANSWER
        return CLARIFY

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        return cls(**{k: float(data[k]) for k in ("answer", "oos_confidence", "oos_similarity")})


# Answers everything: the behaviour before any policy was fitted.
ANSWER_ALL = Policy(answer=0.0, oos_confidence=0.0, oos_similarity=-1.0)


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


def fit_policy(
    confidence: np.ndarray,
    correct: np.ndarray,
    similarity: np.ndarray,
    *,
    is_oos: np.ndarray | None = None,
    target_accuracy: float = 0.97,
    max_in_scope_decline: float = 0.03,
) -> Policy:
    """Choose the thresholds on validation data (see the module docstring)."""
    in_scope = np.ones(len(confidence), bool) if is_oos is None else ~is_oos
    answer = answer_threshold(
        confidence[in_scope], correct[in_scope], target_accuracy=target_accuracy
    )
    best: tuple[float, float, float] | None = None  # (score, confidence, similarity)
    quantiles = np.linspace(0.0, 0.6, 61)
    conf_grid = np.quantile(confidence[in_scope], quantiles)
    sim_grid = np.quantile(similarity[in_scope], quantiles)
    for c in conf_grid:
        for s in sim_grid:
            declined = (confidence < c) & (similarity < s)
            if declined[in_scope].mean() > max_in_scope_decline:
                continue
            if is_oos is not None and is_oos.any():
                score = declined[is_oos].mean()  # out-of-scope recall within the limit
            else:
                # No out-of-scope examples: decline as wide a region as the limit allows,
                # measured by how far below the in-scope quantiles the thresholds reach.
                score = float(np.mean(confidence < c)) + float(np.mean(similarity < s))
            if best is None or score > best[0]:
                best = (score, float(c), float(s))
    assert best is not None  # c = s = minimum declines nothing, always within the limit
    return Policy(answer=answer, oos_confidence=best[1], oos_similarity=best[2])


def decision_shares(decisions: list[str]) -> dict[str, float]:
    total = max(1, len(decisions))
    return {d: decisions.count(d) / total for d in (ANSWER, CLARIFY, OUT_OF_SCOPE)}
