"""The agent's decision where the model and the knowledge base disagree: intents deactivated
since the model learnt them, phrasings shared by two intents, a customer's words learnt from a
review. Hand-made vectors make each case exact; the index is the real FAISS one."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from chatbot.agent import TALK_TO_PERSON_LABEL, Agent
from chatbot.batching import Batched
from chatbot.runtime import Analysis
from retrieval.index import Entry, KnowledgeIndex
from training.inference import Prediction
from training.policy import ANSWER, CLARIFY, OUT_OF_SCOPE, Policy

AXES = {
    "where is my parcel": 0,
    "help": 1,
    "refund please": 2,
    "talk to a person": 3,
    "my order 88123 for Jane Doe never came": 4,
}


def _vector(text: str) -> np.ndarray:
    vector = np.full(8, 0.01, np.float32)
    vector[AXES.get(text, 5)] = 1.0
    return vector / np.linalg.norm(vector)


def _index(examples: list[Entry]) -> KnowledgeIndex:
    intents = sorted({e.intent for e in examples})
    templates = [Entry(100 + n, f"The answer about {i}.", i) for n, i in enumerate(intents)]
    return KnowledgeIndex.build(
        examples=examples,
        templates=templates,
        encode=lambda texts: np.stack([_vector(t) for t in texts]),
        encoder_name="axes",
        dim=8,
    )


class _Analysed:
    """What the runtime would hand the agent for one message."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis

    async def analyse(self, text: str) -> Batched[Analysis]:
        return Batched(self.analysis, 0.0, 0.0, 1)


# Answers at 0.9 and above, never declines on similarity.
POLICY = Policy(answer=0.9)


def _reply(index: KnowledgeIndex, text: str, top_k):
    vector = _vector(text)
    hits = index.search_examples(vector[None, :], 10)[0]
    prediction = Prediction(top_k[0][0], top_k[0][1], tuple(top_k), 0.9)
    analysis = Analysis(vector, hits, index, prediction, "v1", POLICY)
    agent = Agent(_Analysed(analysis), handoff_intent="talk_to_human")
    return asyncio.run(agent.respond(text))


SHOP = [
    Entry(1, "where is my parcel", "order_status"),
    Entry(2, "refund please", "refund"),
    Entry(3, "talk to a person", "talk_to_human"),
]


def test_the_policy_decides_on_the_models_confidence_not_on_its_rounding() -> None:
    reply = _reply(_index(SHOP), "where is my parcel", [("order_status", 0.89996)])

    assert reply.decision == CLARIFY  # below the answer threshold of 0.9, however close


def test_an_intent_no_longer_in_the_knowledge_base_is_not_answered() -> None:
    # the model still knows "old_returns"; the company has deactivated it since
    reply = _reply(_index(SHOP), "refund please", [("old_returns", 0.97), ("refund", 0.02)])

    assert (reply.decision, reply.suggestions) == (OUT_OF_SCOPE, (TALK_TO_PERSON_LABEL,))


def test_torn_between_a_known_intent_and_gone_ones_the_choice_is_it_or_a_person() -> None:
    top_k = [("order_status", 0.5), ("old_refund", 0.3), ("old_returns", 0.2)]

    reply = _reply(_index(SHOP), "where is my parcel", top_k)

    assert reply.decision == CLARIFY
    assert reply.choices == (
        ("order_status", "where is my parcel"),
        ("talk_to_human", TALK_TO_PERSON_LABEL),
    )


def test_with_nothing_else_to_offer_the_one_known_intent_is_answered() -> None:
    index = _index(SHOP[:2])  # no hand-off intent in this knowledge base
    top_k = [("order_status", 0.5), ("old_refund", 0.3)]

    reply = _reply(index, "where is my parcel", top_k)

    assert (reply.decision, reply.text) == (ANSWER, "The answer about order_status.")


def test_two_intents_sharing_a_phrasing_get_two_different_quick_replies() -> None:
    # a reviewer added "help" to both intents
    index = _index([*SHOP, Entry(4, "help", "order_status"), Entry(5, "help", "refund")])

    reply = _reply(index, "help", [("order_status", 0.5), ("refund", 0.45)])

    assert reply.decision == CLARIFY
    assert reply.choices == (("order_status", "help"), ("refund", "refund please"))


def test_a_customers_words_learnt_from_a_review_are_never_offered_to_another() -> None:
    private = "my order 88123 for Jane Doe never came"
    index = _index([*SHOP, Entry(6, private, "order_status", public=False)])
    only_private = _index([Entry(7, private, "order_status", public=False), *SHOP[1:]])
    top_k = [("order_status", 0.5), ("refund", 0.45)]

    reply = _reply(index, private, top_k)
    named = _reply(only_private, private, top_k)

    assert reply.choices[0] == ("order_status", "where is my parcel")
    assert named.choices[0] == ("order_status", "Order status")  # no phrasing to show: its name


@pytest.mark.parametrize("public", [True, False])
def test_whether_a_text_may_be_shown_survives_saving_the_index(tmp_path, public: bool) -> None:
    index = _index([Entry(1, "where is my parcel", "order_status", public=public)])
    index.save(tmp_path)

    assert KnowledgeIndex.load(tmp_path).examples.entries[1].public is public
