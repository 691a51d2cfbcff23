"""A customer message is stored once, in as few round trips as a message can take, and the
messages that arrive together share them."""

from __future__ import annotations

import pytest
from django.db import transaction

from chatbot.models import Conversation, Message
from chatbot.selectors import TurnContext, turn_context
from chatbot.services import Incoming, customer_message_store, customer_messages_receive


@pytest.mark.django_db(transaction=True)
def test_customer_message_store_is_two_statements_and_a_repeat_returns_the_original(
    django_assert_num_queries,
) -> None:
    # given
    conversation = Conversation.objects.create()
    before = conversation.last_activity_at

    # when: the insert and the activity time, with no BEGIN and COMMIT around them
    with django_assert_num_queries(2):
        first, created = customer_message_store(
            conversation_id=conversation.pk, text="where is my order?", client_id="c-1"
        )
    again, created_again = customer_message_store(
        conversation_id=conversation.pk, text="where is my order?", client_id="c-1"
    )

    # then
    assert created and not created_again and again.pk == first.pk
    assert Message.objects.filter(conversation=conversation).count() == 1
    conversation.refresh_from_db()
    assert conversation.last_activity_at > before


@pytest.mark.django_db
def test_a_repeated_message_inside_a_transaction_leaves_the_transaction_usable() -> None:
    # given
    conversation = Conversation.objects.create()

    with transaction.atomic():
        # when: the repeat's insert fails on the unique client id
        first, _ = customer_message_store(
            conversation_id=conversation.pk, text="hi", client_id="c-2"
        )
        again, created_again = customer_message_store(
            conversation_id=conversation.pk, text="hi", client_id="c-2"
        )

        # then: the caller's transaction goes on (a spoiled one refuses every query)
        assert not created_again and again.pk == first.pk
        assert Message.objects.filter(conversation=conversation).count() == 1


def bot_reply(question: Message, decision: str, top_k: list | None = None) -> Message:
    return Message.objects.create(
        conversation_id=question.conversation_id,
        role=Message.Role.BOT,
        text="…",
        in_reply_to=question,
        decision=decision,
        top_k=top_k or [],
    )


def customer(conversation: Conversation, text: str) -> Message:
    return Message.objects.create(conversation=conversation, role=Message.Role.CUSTOMER, text=text)


@pytest.mark.django_db(transaction=True)
def test_messages_arriving_together_are_stored_in_one_insert_with_each_turn_context(
    django_assert_num_queries,
) -> None:
    # given: one conversation whose last reply was a clarifying question after a decline,
    # one with an answer and then twelve declines, one handed to a person
    torn = Conversation.objects.create()
    bot_reply(customer(torn, "my card"), Message.Decision.OUT_OF_SCOPE)
    offered = [
        {"intent": "card_lost", "score": 0.5, "label": "Lost card"},
        {"intent": "card_arrival", "score": 0.4, "label": "Card arrival"},
    ]
    question = bot_reply(customer(torn, "card?"), Message.Decision.CLARIFY, offered)
    long = Conversation.objects.create()
    bot_reply(customer(long, "first"), Message.Decision.ANSWER)
    for n in range(12):
        bot_reply(customer(long, f"question {n}"), Message.Decision.OUT_OF_SCOPE)
    human = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    incoming = [
        Incoming(torn.pk, "Lost card", "t-1"),
        Incoming(long.pk, "one more", "l-1"),
        Incoming(human.pk, "hello?", "h-1"),
        Incoming(long.pk, "and another", "l-2"),
    ]

    # when: the insert (in bulk_create's own transaction), the activity times, and the
    # conversations' statuses with their latest bot replies
    with django_assert_num_queries(5):
        received = customer_messages_receive(incoming)

    # then: every message stored once, in order, each with its conversation's context
    assert [r.message.text for r in received] == [m.text for m in incoming]
    assert all(r.created for r in received)
    stored = Message.objects.filter(pk__in=[r.message.pk for r in received])
    client_ids = sorted(stored.values_list("client_message_id", flat=True))
    assert client_ids == ["h-1", "l-1", "l-2", "t-1"]
    torn_context, long_context, human_context, long_again = (r.context for r in received)
    assert torn_context == TurnContext(
        status=Conversation.Status.BOT,
        failures_in_a_row=2,
        offered={"lost card": "card_lost", "card arrival": "card_arrival"},
        question_id=question.pk,
    )
    # twelve declines in a row, counted as far back as the context looks
    assert long_context == long_again == TurnContext(Conversation.Status.BOT, 10, {})
    assert human_context == TurnContext(Conversation.Status.NEEDS_HUMAN, 0, {})
    assert turn_context(message=received[0].message) == torn_context
    for conversation in (torn, long, human):
        before = conversation.last_activity_at
        conversation.refresh_from_db()
        assert conversation.last_activity_at > before


@pytest.mark.django_db(transaction=True)
def test_a_repeat_in_a_batch_gets_its_original_and_loses_nothing_else() -> None:
    # given: a message already stored
    conversation = Conversation.objects.create()
    first, _ = customer_message_store(
        conversation_id=conversation.pk, text="where is my card?", client_id="c-1"
    )

    # when: a batch with its repeat, two new messages, and one sent twice within the batch
    received = customer_messages_receive(
        [
            Incoming(conversation.pk, "hello", "c-2"),
            Incoming(conversation.pk, "where is my card?", "c-1"),
            Incoming(conversation.pk, "thanks", "c-3"),
            Incoming(conversation.pk, "thanks", "c-3"),
        ]
    )

    # then
    assert [r.created for r in received] == [True, False, True, False]
    assert received[1].message.pk == first.pk and received[1].context is None
    assert received[3].message.pk == received[2].message.pk
    assert received[0].context == turn_context(message=received[0].message)
    texts = Message.objects.filter(conversation=conversation).values_list("text", flat=True)
    assert sorted(texts) == ["hello", "thanks", "where is my card?"]


@pytest.mark.django_db(transaction=True)
def test_a_message_to_a_deleted_conversation_fails_alone_in_its_batch() -> None:
    # given: an admin deleted one conversation while its widget was still open
    kept, deleted = Conversation.objects.create(), Conversation.objects.create()
    gone = deleted.pk
    deleted.delete()

    # when
    received = customer_messages_receive(
        [
            Incoming(kept.pk, "hello", "c-1"),
            Incoming(gone, "anyone there?", "c-2"),
            Incoming(kept.pk, "thanks", "c-3"),
        ]
    )

    # then: its error in its place; the others stored, new, and with their turn's context
    assert isinstance(received[1], Exception)
    assert [received[0].created, received[2].created] == [True, True]
    assert received[2].context == turn_context(message=received[2].message)
    texts = Message.objects.values_list("text", flat=True)
    assert sorted(texts) == ["hello", "thanks"]
