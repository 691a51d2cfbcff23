"""A customer message is stored once, in as few round trips as a message can take."""

from __future__ import annotations

import pytest
from django.db import transaction

from chatbot.models import Conversation, Message
from chatbot.services import customer_message_store


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
