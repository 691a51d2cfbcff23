"""The customer says whether an answer helped: stored, offered a person, counted toward the
hand-off, and put first in the review queue."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from chatbot.agent import TALK_TO_PERSON_LABEL
from chatbot.models import Conversation, Message, ModelVersion
from chatbot.services import reply_feedback_store
from tests.chatbot.conftest import assert_did_not_help, turn
from tests.chatbot.test_consumer import open_chat, send_message
from tests.chatbot.test_staff_live import listening

pytestmark = pytest.mark.usefixtures("knowledge_base")


async def say(communicator, reply_id: str | int, helpful: bool) -> dict:
    await communicator.send_json_to({"type": "feedback", "message": reply_id, "helpful": helpful})
    return await communicator.receive_json_from(timeout=10)


async def test_an_answer_that_did_not_help_is_stored_and_the_customer_offered_a_person() -> None:
    # given: a customer the bot answered
    communicator, history = await open_chat()
    answer = await send_message(communicator, "How much does delivery cost?", "f-1")
    assert answer["decision"] == "answer"
    asked = await Message.objects.aget(role="customer", client_message_id="f-1")

    # when: they say it did not help
    said = await say(communicator, answer["id"], False)

    # then: stored, the message it answered moved up the review queue, and a way on offered
    assert said["type"] == "feedback"
    assert (said["message"], said["helpful"]) == (answer["id"], False)
    assert said["text"].startswith("Sorry that didn't help")
    assert said["suggestions"] == [TALK_TO_PERSON_LABEL]
    moved = await assert_did_not_help(answer["id"], asked)

    # when: they change their mind
    said = await say(communicator, int(answer["id"]), True)

    # then: nothing more is offered, and the message is back where it was in the queue
    assert said == {"type": "feedback", "message": answer["id"], "helpful": True}
    assert (await Message.objects.aget(pk=answer["id"])).helpful is True
    await moved.arefresh_from_db()
    assert moved.review_priority == pytest.approx(asked.review_priority)

    # and: the quick reply offered after a no hands the conversation to a person
    handoff = await send_message(communicator, TALK_TO_PERSON_LABEL, "f-2")
    assert handoff["decision"] == "handoff"
    await communicator.disconnect()

    # and: a reload shows what the customer said of each answer
    _, again = await open_chat(f"?conversation={history['conversation']}")
    bot = [m for m in again["messages"] if m["role"] == "bot"]
    assert [(m["decision"], m["helpful"]) for m in bot] == [("answer", True), ("handoff", None)]
    assert all("helpful" not in m for m in again["messages"] if m["role"] == "customer")


async def test_answers_that_did_not_help_count_toward_the_hand_off(live_policy) -> None:
    # given: two conversations, each answered twice; one customer says neither answer helped,
    # the other that both did
    await database_sync_to_async(live_policy)(answer=0.0)
    unhappy, unhappy_history = await open_chat()
    happy, happy_history = await open_chat()
    for communicator, helpful in ((unhappy, False), (happy, True)):
        for n, text in enumerate(["How much does delivery cost?", "where is your shop"]):
            answer = await send_message(communicator, text, f"a-{n}")
            assert answer["decision"] == "answer"
            assert (await say(communicator, answer["id"], helpful))["helpful"] is helpful

    # when: the bot declines the next message of each (CHATBOT_HANDOFF_AFTER_FAILURES is 3)
    await database_sync_to_async(live_policy)(answer=1.01, oos_threshold=1e9)
    unhappy_turn = await send_message(unhappy, "what is the capital of peru", "a-3")
    happy_turn = await send_message(happy, "what is the capital of peru", "a-3")

    # then: the customer the bot got nowhere with three times in a row gets a person
    assert unhappy_turn["decision"] == "handoff" and unhappy_turn["handoff"] is True
    assert happy_turn["decision"] == "out_of_scope"
    unhappy_after = await Conversation.objects.aget(public_id=unhappy_history["conversation"])
    happy_after = await Conversation.objects.aget(public_id=happy_history["conversation"])
    assert (unhappy_after.status, happy_after.status) == ("needs_human", "bot")

    # and: once a person has the conversation, a no offers nothing the bot would answer
    first_answer = await Message.objects.filter(
        conversation__public_id=unhappy_history["conversation"], role="bot"
    ).afirst()
    said = await say(unhappy, first_answer.pk, False)
    assert said == {"type": "feedback", "message": str(first_answer.pk), "helpful": False}
    await unhappy.disconnect()
    await happy.disconnect()


async def test_feedback_on_what_is_no_answer_of_this_conversation_gets_an_error(
    live_policy,
) -> None:
    # given: a conversation with an answer, one with a clarifying question, and another
    # customer's answer
    await database_sync_to_async(live_policy)(answer=0.0)
    other, _ = await open_chat()
    elsewhere = await send_message(other, "How much does delivery cost?", "e-0")
    await database_sync_to_async(live_policy)(answer=1.01)
    communicator, history = await open_chat()
    question = await send_message(communicator, "my refund for the returned lamp", "e-1")
    assert question["decision"] == "clarify"
    customer = await Message.objects.aget(
        conversation__public_id=history["conversation"], role="customer"
    )

    # when
    bad = [
        ({"type": "feedback", "message": "abc", "helpful": False}, "invalid_feedback"),
        ({"type": "feedback", "message": question["id"], "helpful": "no"}, "invalid_feedback"),
        ({"type": "feedback", "helpful": False}, "invalid_feedback"),
        ({"type": "feedback", "message": True, "helpful": False}, "invalid_feedback"),
        ({"type": "feedback", "message": "1" * 25, "helpful": False}, "invalid_feedback"),
        ({"type": "feedback", "message": elsewhere["id"], "helpful": False}, "unknown_reply"),
        ({"type": "feedback", "message": question["id"], "helpful": False}, "unknown_reply"),
        ({"type": "feedback", "message": customer.pk, "helpful": False}, "unknown_reply"),
    ]
    for frame, code in bad:
        await communicator.send_to(text_data=json.dumps(frame))
        error = await communicator.receive_json_from(timeout=10)
        assert (error["type"], error["code"]) == ("error", code), frame
        assert error["detail"]
        # an id the widget can take its press back for
        assert error.get("message") == (str(frame["message"]) if code == "unknown_reply" else None)

    # then: nothing changed, and the chat goes on
    assert not await Message.objects.filter(helpful__isnull=False).aexists()
    choice = await send_message(communicator, question["suggestions"][0], "e-2")
    assert choice["decision"] == "answer"
    assert (await say(communicator, choice["id"], True))["helpful"] is True
    await communicator.disconnect()
    await other.disconnect()


async def test_a_feedback_over_the_rate_is_refused_with_its_answer_id(settings) -> None:
    # given: a connection allowed 2 frames at once, then one every 100 s, that used 1
    settings.CHATBOT_RATE_LIMIT_BURST = 2
    settings.CHATBOT_RATE_LIMIT_PER_MINUTE = 0.6
    communicator, _ = await open_chat()
    answer = await send_message(communicator, "How much does delivery cost?", "r-1")

    # when: the customer presses yes, then no at once
    said = await say(communicator, answer["id"], True)
    refused = await say(communicator, answer["id"], False)

    # then: the yes is stored; the no is refused, naming the answer so the widget can undo it
    assert said["helpful"] is True
    assert (refused["type"], refused["code"]) == ("error", "rate_limited")
    assert refused["message"] == answer["id"]
    assert "in_reply_to" not in refused
    assert (await Message.objects.aget(pk=answer["id"])).helpful is True
    await communicator.disconnect()


async def test_a_new_visitor_has_no_answer_to_rate() -> None:
    communicator, _ = await open_chat()
    await communicator.send_to(
        text_data=json.dumps({"type": "feedback", "message": "1", "helpful": False})
    )
    error = await communicator.receive_json_from(timeout=10)
    assert error["code"] == "unknown_reply"
    assert not await Conversation.objects.aexists()  # nothing stored for a visitor who never wrote
    await communicator.disconnect()


def test_the_review_queue_puts_answers_that_did_not_help_first(admin_client) -> None:
    # given: an uncertain decline, a confident answer the customer said did not help, and one
    # they said helped
    conversation = Conversation.objects.create()
    declined = turn(conversation, "do you sell gift cards", decision="out_of_scope", priority=1.6)
    wrong = turn(conversation, "where is my parcel", priority=0.1)
    right = turn(conversation, "how much is delivery", priority=0.1)
    for message, helpful in ((wrong, False), (right, True)):
        rated = reply_feedback_store(
            conversation_id=conversation.pk, reply_id=message.reply.pk, helpful=helpful
        )
        assert rated == ("...", "bot")

    # when
    queue = admin_client.get("/admin/chatbot/reviewitem/?review=todo").content.decode()
    not_helped = admin_client.get("/admin/chatbot/reviewitem/?review=todo&helped=no")
    conversations = admin_client.get("/admin/chatbot/conversation/?not_helpful=yes")

    # then: the answer that did not help comes first, and the filters find it
    positions = [queue.index(m.text) for m in (wrong, declined, right)]
    assert positions == sorted(positions)
    assert wrong.text in not_helped.content.decode()
    assert declined.text not in not_helped.content.decode()
    assert right.text not in not_helped.content.decode()
    assert str(conversation.public_id)[:8] in conversations.content.decode()


def test_each_model_version_shows_what_customers_said_of_its_answers(admin_client) -> None:
    # given: two versions; customers said something of three answers of the older one
    older = ModelVersion.objects.create(directory="/models/a", base_model="b", kind="full")
    newer = ModelVersion.objects.create(directory="/models/b", base_model="b", kind="full")
    conversation = Conversation.objects.create()
    for text, helpful in (("a", False), ("b", True), ("c", True), ("d", None)):
        question = turn(conversation, text)
        Message.objects.filter(in_reply_to=question).update(model_version=older)
        if helpful is not None:
            reply_feedback_store(
                conversation_id=conversation.pk, reply_id=question.reply.pk, helpful=helpful
            )
    Message.objects.filter(in_reply_to=turn(conversation, "e")).update(model_version=newer)

    # when
    page = admin_client.get("/admin/chatbot/modelversion/").content.decode()

    # then: 1 of the 3 rated answers did not help; the newer version has no rating yet
    def row(version: ModelVersion) -> str:
        return next(r for r in page.split("</tr>") if f">{version.name}</a>" in r)

    assert "1 of 3 (33%)" in row(older)
    assert 'class="field-said_not_helpful">-<' in row(newer)


async def test_the_team_sees_live_what_the_customer_said_of_an_answer(admin_client) -> None:
    # given: an admin with the conversation's page open, and an answer in it
    communicator, history = await open_chat()
    answer = await send_message(communicator, "How much does delivery cost?", "t-1")
    page = await listening(admin_client, f"?conversation={history['conversation']}")

    # when
    await say(communicator, answer["id"], False)

    # then: the page hears which answer did not help
    heard = await page.receive_json_from(timeout=10)
    assert heard == {
        "type": "feedback",
        "conversation": history["conversation"],
        "message": answer["id"],
        "helpful": False,
        "text": answer["text"][:200],
    }
    await page.disconnect()
    await communicator.disconnect()
