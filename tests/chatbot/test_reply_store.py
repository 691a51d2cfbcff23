"""Bot replies are stored a batch at a time, and nothing in a batch is lost to a conflict."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chatbot.agent import AgentReply, IntentScore
from chatbot.models import AnswerTemplate, Conversation, Intent, Message
from chatbot.services import BotTurn, bot_replies_store

pytestmark = pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit


def answer(intent: str, text: str = "Track it under My orders.") -> AgentReply:
    return AgentReply(
        text=text,
        decision="answer",
        intent=intent,
        confidence=0.9,
        alternatives=(IntentScore(intent, 0.9), IntentScore("refund_request", 0.05)),
        template_id=None,
        template_similarity=None,
        suggestions=("Track my order",),
        index_version="v1",
    )


def question(conversation: Conversation, text: str) -> Message:
    return Message.objects.create(conversation=conversation, role="customer", text=text)


def test_a_batch_of_replies_is_stored_with_each_intent_and_priority() -> None:
    # given
    conversation = Conversation.objects.create()
    order_status = Intent.objects.create(name="order_status")
    questions = [question(conversation, f"where is order {n}?") for n in range(3)]

    # when
    stored = bot_replies_store([BotTurn(q, answer("order_status"), 12.0) for q in questions])

    # then
    assert [m.in_reply_to_id for m in stored] == [q.pk for q in questions]
    replies = Message.objects.filter(role="bot").order_by("id")
    assert [m.pk for m in replies] == [m.pk for m in stored]
    assert all(m.intent_id == order_status.pk and m.latency_ms == 12.0 for m in replies)
    priorities = Message.objects.filter(role="customer").values_list("review_priority", flat=True)
    assert set(priorities) == {answer("order_status").review_priority}


def test_an_intent_recreated_since_it_was_last_named_still_gets_its_reply() -> None:
    # given: a reply naming the intent (the process remembers its row), then the row replaced
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    bot_replies_store([BotTurn(question(conversation, "first"), answer("order_status"), 1.0)])
    Intent.objects.filter(name="order_status").delete()
    recreated = Intent.objects.create(name="order_status")
    second = question(conversation, "second")

    # when
    [stored] = bot_replies_store([BotTurn(second, answer("order_status"), 1.0)])

    # then
    assert Message.objects.get(in_reply_to=second).intent_id == recreated.pk == stored.intent_id


def test_a_reply_that_already_exists_does_not_lose_the_rest_of_its_batch() -> None:
    # given: the first question already has its reply
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    first, second = question(conversation, "first"), question(conversation, "second")
    [existing] = bot_replies_store([BotTurn(first, answer("order_status", "earlier"), 1.0)])

    # when
    stored = bot_replies_store(
        [BotTurn(first, answer("order_status"), 1.0), BotTurn(second, answer("order_status"), 1.0)]
    )

    # then: one reply each, the first one unchanged
    assert stored[0].pk == existing.pk and stored[0].text == "earlier"
    assert Message.objects.get(in_reply_to=second).pk == stored[1].pk
    assert Message.objects.filter(role="bot").count() == 2


def test_replies_naming_known_templates_are_stored_without_reading_them_again(
    django_assert_num_queries,
) -> None:
    # given: a reply linked to a template, so the process knows the row exists
    conversation = Conversation.objects.create()
    intent = Intent.objects.create(name="order_status")
    template = AnswerTemplate.objects.create(intent=intent, text="Track it under My orders.")
    with_template = replace(answer("order_status"), template_id=template.pk)
    bot_replies_store([BotTurn(question(conversation, "first"), with_template, 1.0)])
    second, third = question(conversation, "second"), question(conversation, "third")

    # when: BEGIN, the customers' review priorities, the replies, COMMIT
    with django_assert_num_queries(4):
        stored = bot_replies_store(
            [BotTurn(second, with_template, 1.0), BotTurn(third, with_template, 1.0)]
        )

    # then
    assert {m.template_id for m in stored} == {template.pk}
    assert Message.objects.filter(role="bot", template=template).count() == 3


def test_a_template_deleted_after_the_process_saw_it_still_gets_the_reply_stored() -> None:
    # given: a template the process has linked a reply to, then deleted by an admin
    conversation = Conversation.objects.create()
    intent = Intent.objects.create(name="order_status")
    template = AnswerTemplate.objects.create(intent=intent, text="Track it under My orders.")
    with_template = replace(answer("order_status"), template_id=template.pk)
    bot_replies_store([BotTurn(question(conversation, "first"), with_template, 1.0)])
    template.delete()
    later = question(conversation, "later")

    # when: the index still names it
    [stored] = bot_replies_store([BotTurn(later, with_template, 1.0)])

    # then: the reply keeps its text and loses only the link
    reply = Message.objects.get(in_reply_to=later)
    assert reply.pk == stored.pk and reply.template_id is None
    assert reply.text == with_template.text
