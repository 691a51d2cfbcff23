import functools

import numpy as np
import pytest

from training.policy import (
    ANSWER,
    ANSWER_ALL,
    CLARIFY,
    OUT_OF_SCOPE,
    WITHOUT_CONTRAST,
    Policy,
    accuracy_loss_threshold,
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


def test_decide_declines_when_the_combined_score_is_low_and_else_answers_or_clarifies() -> None:
    policy = Policy(
        answer=0.8,
        oos_threshold=-2.0,
        confidence_mean=0.8,
        confidence_scale=0.1,
        similarity_mean=0.6,
        similarity_scale=0.1,
    )

    assert policy.decide(0.85, 0.6) == ANSWER
    assert policy.decide(0.65, 0.4) == OUT_OF_SCOPE  # -1.5 + -2.0
    assert policy.decide(0.65, 0.7) == CLARIFY  # unsure, but close to known examples
    assert policy.decide(0.9, 0.35) == ANSWER  # -2.5 + 1.0: confident enough to make up for it
    assert Policy.from_dict(policy.to_dict()) == policy
    assert ANSWER_ALL.decide(0.0, -1.0) == ANSWER


def test_a_policy_saved_by_the_first_version_never_declines() -> None:
    old = {"answer": 0.7, "oos_confidence": 0.5, "oos_similarity": 0.6}

    policy = Policy.from_dict(old)

    assert policy.decide(0.1, 0.0) == CLARIFY
    assert policy.decide(0.75, 0.0) == ANSWER


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


def test_the_borderline_is_the_least_in_scope_looking_tenth_the_policy_does_not_decline() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.beta(5, 1, size=2000)
    similarity = rng.uniform(0.3, 1.0, size=2000)
    correct = rng.uniform(size=2000) < confidence

    policy = fit_policy(confidence, correct, similarity, second_opinion_share=0.10)

    pairs = list(zip(confidence, similarity, strict=True))
    declined = np.array([policy.decide(c, s) == OUT_OF_SCOPE for c, s in pairs])
    borderline = np.array([policy.borderline(c, s) for c, s in pairs])
    assert 0.099 <= borderline.mean() <= 0.101
    assert borderline[declined].all()  # what is declined is below it too
    kept = borderline & ~declined  # what a second opinion would read
    assert 0.06 <= kept.mean() <= 0.08
    assert Policy.from_dict(policy.to_dict()) == policy
    # a model saved before the borderline was fitted has none
    assert not Policy.from_dict({"answer": 0.5, "oos_threshold": -2.0}).borderline(0.1, 0.0)
    assert not policy.borderline(0.1, None)  # similarity not measured


def test_fit_policy_with_out_of_scope_examples_weighs_the_signal_that_catches_them() -> None:
    # given: out-of-scope messages told apart by similarity only; confidence is noise
    rng = np.random.default_rng(1)
    n_in, n_oos = 1000, 200
    confidence = rng.beta(5, 2, n_in + n_oos)
    similarity = np.concatenate([rng.uniform(0.6, 1.0, n_in), rng.uniform(0.2, 0.62, n_oos)])
    is_oos = np.arange(n_in + n_oos) >= n_in
    correct = ~is_oos

    # when
    with_examples = fit_policy(
        confidence, correct, similarity, is_oos=is_oos, max_in_scope_decline=0.02
    )
    without = fit_policy(confidence[~is_oos], correct[~is_oos], similarity[~is_oos])

    # then
    def declined(policy: Policy) -> np.ndarray:
        return np.array(
            [
                policy.decide(c, s) == OUT_OF_SCOPE
                for c, s in zip(confidence, similarity, strict=True)
            ]
        )

    assert declined(with_examples)[~is_oos].mean() <= 0.02
    assert declined(with_examples)[is_oos].mean() > 0.9
    assert with_examples.similarity_weight > 0.9 and with_examples.confidence_weight < 0.1
    assert declined(with_examples)[is_oos].mean() > declined(without)[is_oos].mean() + 0.2


def test_reviewed_out_of_scope_messages_near_known_ones_are_caught_by_the_contrast() -> None:
    # given: unseen-intent messages that look in scope by probability and similarity alike, but
    # lie close to one another (an admin reviewed a few of them as out of scope)
    rng = np.random.default_rng(2)
    n_in, n_oos = 1000, 60
    confidence = rng.beta(5, 1.5, n_in + n_oos)
    similarity = rng.uniform(0.5, 0.9, n_in + n_oos)
    oos_similarity = np.concatenate(
        [similarity[:n_in] - rng.uniform(0.1, 0.5, n_in), similarity[n_in:] + 0.05]
    )
    is_oos = np.arange(n_in + n_oos) >= n_in
    correct = ~is_oos & (rng.uniform(size=n_in + n_oos) < 0.95)

    # when
    policy = fit_policy(
        confidence,
        correct,
        similarity,
        is_oos=is_oos,
        oos_similarity=oos_similarity,
        max_in_scope_decline=0.03,
    )

    # then: the contrast carries the decision, within the in-scope limit
    declined = np.array(
        [
            policy.decide(c, s, o) == OUT_OF_SCOPE
            for c, s, o in zip(confidence, similarity, oos_similarity, strict=True)
        ]
    )
    assert policy.contrast_weight > 0
    assert declined[is_oos].mean() > 0.9
    assert declined[~is_oos].mean() <= 0.03
    # ... and a model served without reviewed messages falls back to the other signals
    assert Policy.from_dict(policy.to_dict()) == policy
    assert policy.decide(0.99, 0.9, None) != OUT_OF_SCOPE


def _tight_groups(seed: int = 3):
    """Reviewed out-of-scope messages in tight groups (each close to others of its group, far
    from other groups' and from the known examples), their similarity to the known examples
    lower than in-scope messages'. Returns the signals, and each reviewed message's cosine to
    the nearest reviewed message of another group."""
    rng = np.random.default_rng(seed)
    n_in, n_oos = 1000, 60
    confidence = rng.beta(5, 1.5, n_in + n_oos)
    similarity = np.concatenate([rng.uniform(0.6, 0.9, n_in), rng.uniform(0.3, 0.65, n_oos)])
    is_oos = np.arange(n_in + n_oos) >= n_in
    correct = ~is_oos & (rng.uniform(size=n_in + n_oos) < 0.95)
    far = similarity - rng.uniform(0.1, 0.5, n_in + n_oos)
    # the nearest other reviewed message is of the same group ...
    oos_similarity = np.where(is_oos, similarity + 0.05, far)
    # ... the nearest of another group as far as the known messages' nearest
    return confidence, correct, similarity, is_oos, oos_similarity, far[is_oos]


# The weightings fit_policy chose among before: the one catching the most reviewed messages.
CHOSEN_BY_CATCH = [
    *WITHOUT_CONTRAST,
    (0, 0, 1.0),
    (1.0, 1.0, 1.0),
    (1.0, 0, 1.0),
    (0, 1.0, 1.0),
]


def _caught(policy: Policy, confidence, similarity, oos_similarity) -> float:
    return float(policy.declines(confidence, similarity, oos_similarity).mean())


def test_with_reviewed_messages_the_policy_keeps_what_catches_topics_nobody_reviewed() -> None:
    # given
    confidence, correct, similarity, is_oos, oos_similarity, elsewhere = _tight_groups()
    fit = functools.partial(
        fit_policy, confidence, correct, similarity, is_oos=is_oos, oos_similarity=oos_similarity
    )

    # when
    policy, by_catch = fit(), fit(weights=CHOSEN_BY_CATCH)

    # then: chosen by what it catches of the reviewed messages (each judged against the
    # others), the contrast alone wins and misses a new topic's messages (the nearest reviewed
    # message far away); the policy keeps the probability and similarity beside the contrast
    assert (by_catch.confidence_weight, by_catch.similarity_weight) == (0.0, 0.0)
    assert min(policy.confidence_weight, policy.similarity_weight) > 0
    assert policy.contrast_weight > max(policy.confidence_weight, policy.similarity_weight)
    new_topic = (confidence[is_oos], similarity[is_oos], elsewhere)
    assert _caught(policy, *new_topic) > 0.2 > 0.05 > _caught(by_catch, *new_topic)
    # ... while still catching the reviewed topics, within the in-scope limit
    assert _caught(policy, confidence[is_oos], similarity[is_oos], oos_similarity[is_oos]) > 0.9
    for p in (policy, by_catch):
        assert _caught(p, confidence[~is_oos], similarity[~is_oos], oos_similarity[~is_oos]) <= 0.03


def test_weightings_judged_against_other_groups_too_keep_what_catches_new_topics() -> None:
    # given
    confidence, correct, similarity, is_oos, oos_similarity, elsewhere = _tight_groups()

    # when: chosen by the mean of what each weighting catches judged against the others and
    # against other groups only
    policy = fit_policy(
        confidence,
        correct,
        similarity,
        is_oos=is_oos,
        oos_similarity=oos_similarity,
        oos_similarity_elsewhere=elsewhere,
        weights=CHOSEN_BY_CATCH,
    )

    # then
    assert policy.similarity_weight > 0
    assert _caught(policy, confidence[is_oos], similarity[is_oos], elsewhere) > 0.8


def test_declines_cost_at_most_the_accuracy_limit() -> None:
    # given: the lowest scores are mostly messages the model gets right
    score = np.arange(100, dtype=float)
    correct = np.ones(100, bool)
    correct[[0, 2]] = False

    # then: declining below the threshold drops at most 2 right answers of 100
    threshold = accuracy_loss_threshold(score, correct, 0.02)
    assert threshold == 4.0
    assert correct[score < threshold].sum() == 2
    assert accuracy_loss_threshold(score, np.zeros(100, bool), 0.02) == np.inf

    # when: declining 3% would cost 3 right answers of 100
    signal = np.linspace(0.5, 1.0, 100)
    policy = fit_policy(signal, np.ones(100, bool), signal, max_accuracy_loss=0.02)

    # then: it declines 2
    declined = [policy.decide(c, c) == OUT_OF_SCOPE for c in signal]
    assert sum(declined) == 2
    three = fit_policy(signal, np.ones(100, bool), signal, max_accuracy_loss=0.05)
    assert sum(three.decide(c, c) == OUT_OF_SCOPE for c in signal) == 3


def test_coverage_threshold_and_decision_shares() -> None:
    confidence = np.linspace(0, 1, 101)

    assert coverage_threshold(confidence, 0.9) == pytest.approx(0.1)
    assert decision_shares([ANSWER, ANSWER, CLARIFY, OUT_OF_SCOPE]) == {
        ANSWER: 0.5,
        CLARIFY: 0.25,
        OUT_OF_SCOPE: 0.25,
    }
