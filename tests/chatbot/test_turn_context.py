"""What the agent knows of a conversation before answering: its run of failed replies (which
hands it to a person) and the quick replies its last clarifying question offered."""

from __future__ import annotations

import pytest

from chatbot import selectors, services
from chatbot.models import Conversation, Message
from tests.chatbot.conftest import turn

pytestmark = pytest.mark.django_db


def _next_message(conversation: Conversation, text: str = "hello?") -> selectors.TurnContext:
    message = Message.objects.create(conversation=conversation, role="customer", text=text)
    return selectors.turn_context(message=message)


def test_a_hand_back_starts_the_count_of_failures_and_forgets_the_last_question() -> None:
    # given: two failed turns, the last a clarifying question; then a person takes over by
    # replying (no hand-off reply of the bot is stored) and hands the conversation back
    conversation = Conversation.objects.create()
    turn(conversation, "asdf", decision=Message.Decision.OUT_OF_SCOPE)
    offered = [{"intent": "refund", "score": 0.5, "label": "refund please"}]
    turn(conversation, "qwerty", decision=Message.Decision.CLARIFY, top_k=offered)
    assert _next_message(conversation, "refund please").offered == {"refund please": "refund"}
    services.staff_reply_send(conversation=conversation, text="Hi, Sam here. Sorted it.")
    services.conversation_hand_back(conversation=conversation)

    # when: the customer writes again
    context = _next_message(conversation, "refund please")

    # then: nothing has failed since the bot got it back (one more clarify must not send the
    # customer back to a person), and the old question's choices no longer count
    assert context.status == Conversation.Status.BOT
    assert (context.failures_in_a_row, context.offered) == (0, {})


def test_a_persons_reply_alone_ends_the_run_of_failures() -> None:
    conversation = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    turn(conversation, "asdf", decision=Message.Decision.OUT_OF_SCOPE)
    services.staff_reply_send(conversation=conversation, text="How can I help?")
    turn(conversation, "qwerty", decision=Message.Decision.CLARIFY)

    assert _next_message(conversation).failures_in_a_row == 1


def test_more_failures_than_ten_are_counted_when_the_setting_asks_for_them(settings) -> None:
    # given: a company that lets the bot try a dozen times
    settings.CHATBOT_HANDOFF_AFTER_FAILURES = 12
    conversation = Conversation.objects.create()
    for i in range(11):
        turn(conversation, f"asdf {i}", decision=Message.Decision.CLARIFY)

    # then: the 12th message sees all 11 failures, so the bot hands off
    assert _next_message(conversation).failures_in_a_row == 11
