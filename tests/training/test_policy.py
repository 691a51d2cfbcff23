import numpy as np
import pytest

from training.policy import (
    ANSWER,
    CLARIFY,
    OUT_OF_SCOPE,
    Policy,
    answer_threshold,
    coverage_threshold,
    decision_shares,
    fit_policy,
)


def test_answer_threshold_is_the_lowest_that_reaches_the_target_accuracy() -> None:
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([1, 1, 1, 1, 0, 1, 0], bool)

    assert answer_threshold(confidence, correct, target_accuracy=1.0) == 0.8
    assert answer_threshold(confidence, correct, target_accuracy=0.8) == 0.6
    assert answer_threshold(confidence, ~correct & False, target_accuracy=0.9) > 0.99


def test_decide_answers_declines_only_when_both_signals_are_low_and_else_clarifies() -> None:
    policy = Policy(answer=0.8, oos_confidence=0.4, oos_similarity=0.5)

    assert policy.decide(0.85, 0.1) == ANSWER
    assert policy.decide(0.3, 0.4) == OUT_OF_SCOPE
    assert policy.decide(0.3, 0.7) == CLARIFY  # low confidence, but near a known example
    assert policy.decide(0.6, 0.1) == CLARIFY
    assert Policy.from_dict(policy.to_dict()) == policy


def test_fit_policy_without_out_of_scope_examples_keeps_false_declines_within_the_limit() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.beta(5, 1, size=2000)
    similarity = rng.uniform(0.3, 1.0, size=2000)
    correct = rng.uniform(size=2000) < confidence

    policy = fit_policy(confidence, correct, similarity, max_in_scope_decline=0.03)

    declined = [
        policy.decide(c, s) == OUT_OF_SCOPE for c, s in zip(confidence, similarity, strict=True)
    ]
    assert 0 < np.mean(declined) <= 0.03
    answered = confidence >= policy.answer
    assert correct[answered].mean() >= 0.97


def test_fit_policy_with_out_of_scope_examples_catches_them_within_the_limit() -> None:
    rng = np.random.default_rng(1)
    n_in, n_oos = 1000, 200
    confidence = np.concatenate([rng.beta(6, 1, n_in), rng.beta(2, 3, n_oos)])
    similarity = np.concatenate([rng.uniform(0.6, 1.0, n_in), rng.uniform(0.2, 0.7, n_oos)])
    is_oos = np.arange(n_in + n_oos) >= n_in
    correct = ~is_oos

    policy = fit_policy(confidence, correct, similarity, is_oos=is_oos, max_in_scope_decline=0.02)

    declined = np.array(
        [policy.decide(c, s) == OUT_OF_SCOPE for c, s in zip(confidence, similarity, strict=True)]
    )
    assert declined[~is_oos].mean() <= 0.02
    assert declined[is_oos].mean() > 0.5


def test_coverage_threshold_and_decision_shares() -> None:
    confidence = np.linspace(0, 1, 101)

    assert coverage_threshold(confidence, 0.9) == pytest.approx(0.1)
    assert decision_shares([ANSWER, ANSWER, CLARIFY, OUT_OF_SCOPE]) == {
        ANSWER: 0.5,
        CLARIFY: 0.25,
        OUT_OF_SCOPE: 0.25,
    }
