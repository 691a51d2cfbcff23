"""Each branch of the policy over a real WebSocket, on the real demo model with set thresholds."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from chatbot.agent import NONE_OF_THESE_LABEL, TALK_TO_PERSON_LABEL
from chatbot.learning import out_of_scope_texts
from chatbot.models import Conversation, Intent, Message
from tests.chatbot.conftest import assert_did_not_help
from tests.chatbot.test_consumer import open_chat, send_message


async def test_an_unsure_bot_asks_to_clarify_and_a_choice_gets_that_answer(live_policy) -> None:
    # given: a policy that never answers on its own
    await database_sync_to_async(live_policy)(answer=1.01)
    communicator, _ = await open_chat()

    # when
    question = await send_message(communicator, "my refund for the returned lamp", "c-1")

    # then
    assert question["decision"] == "clarify"
    assert 2 <= len(question["suggestions"]) - 1 <= 3
    bot = await Message.objects.aget(role="bot")
    offered = {alt["label"]: alt["intent"] for alt in bot.top_k if "label" in alt}
    assert [*offered, NONE_OF_THESE_LABEL] == question["suggestions"]

    # when: the customer picks the second choice
    label = question["suggestions"][1]
    answer = await send_message(communicator, label, "c-2")

    # then
    assert answer["decision"] == "answer"
    assert answer["intent"] == offered[label]
    # stored with what the model made of the choice, not a made-up certainty
    chosen = await Message.objects.aget(pk=answer["id"])
    assert chosen.confidence == chosen.top_k[0]["score"] == answer["confidence"]
    await communicator.disconnect()


async def test_out_of_scope_then_repeated_failures_hand_off_to_a_person(live_policy) -> None:
    # given: a policy that declines everything
    await database_sync_to_async(live_policy)(answer=1.01, oos_threshold=1e9)
    communicator, history = await open_chat()

    # when
    first = await send_message(communicator, "what is the capital of peru", "o-1")
    second = await send_message(communicator, "who won the match yesterday", "o-2")
    third = await send_message(communicator, "tell me a joke", "o-3")

    # then
    assert (first["decision"], second["decision"]) == ("out_of_scope", "out_of_scope")
    assert first["handoff"] is False and first["suggestions"] == [TALK_TO_PERSON_LABEL]
    assert third["decision"] == "handoff" and third["handoff"] is True
    conversation = await Conversation.objects.aget(public_id=history["conversation"])
    assert conversation.status == Conversation.Status.NEEDS_HUMAN
    await communicator.disconnect()


async def test_the_quick_reply_of_an_out_of_scope_answer_hands_off(live_policy) -> None:
    # given: a policy that declines everything, and a customer it declined
    await database_sync_to_async(live_policy)(answer=1.01, oos_threshold=1e9)
    communicator, history = await open_chat()
    declined = await send_message(communicator, "what is the capital of peru", "q-1")

    # when: the customer takes the quick reply offered
    handoff = await send_message(communicator, declined["suggestions"][0], "q-2")

    # then: a person is asked for, and nothing is offered that the bot would have to answer
    assert (handoff["decision"], handoff["intent"]) == ("handoff", "talk_to_human")
    assert handoff["handoff"] is True and handoff["suggestions"] == []
    conversation = await Conversation.objects.aget(public_id=history["conversation"])
    assert conversation.status == Conversation.Status.NEEDS_HUMAN
    await communicator.disconnect()


async def test_a_handed_off_chat_gets_no_bot_answers_and_staff_replies_arrive_live(
    live_policy, admin_client
) -> None:
    # given: a customer asks for a person
    await database_sync_to_async(live_policy)(answer=0.0)
    communicator, history = await open_chat()
    handoff = await send_message(communicator, "I want to talk to a real person", "h-1")
    assert handoff["decision"] == "handoff" and handoff["intent"] == "talk_to_human"
    assert handoff["suggestions"] == []
    conversation = await Conversation.objects.aget(public_id=history["conversation"])
    assert conversation.status == Conversation.Status.NEEDS_HUMAN

    # when: the customer writes again
    await communicator.send_json_to({"type": "message", "text": "hello??", "id": "h-2"})
    ack = await communicator.receive_json_from(timeout=10)

    # then: stored, acknowledged, and the bot stays quiet
    assert ack["type"] == "ack"
    assert await communicator.receive_nothing(timeout=1.5)
    assert not await Message.objects.filter(in_reply_to__client_message_id="h-2").aexists()

    # when: a support admin replies from Django admin
    post = sync_to_async(admin_client.post)
    page = await post(
        f"/admin/chatbot/conversation/{conversation.pk}/reply/",
        {"staff_reply": "Hi, this is Sam from support. How can I help?"},
    )

    # then: the reply reaches the open WebSocket, stored with role agent
    assert page.status_code == 302
    live = await communicator.receive_json_from(timeout=10)
    assert (live["type"], live["role"], live["text"], live["status"]) == (
        "message",
        "agent",
        "Hi, this is Sam from support. How can I help?",
        "needs_human",
    )
    assert await Message.objects.filter(role="agent", conversation=conversation).acount() == 1

    # when: the admin hands the conversation back to the bot
    await post(f"/admin/chatbot/conversation/{conversation.pk}/hand-back/")
    note = await communicator.receive_json_from(timeout=10)
    answer = await send_message(communicator, "what are your opening hours?", "h-3")

    # then
    assert (note["role"], note["status"]) == ("system", "bot")
    assert answer["decision"] == "answer" and answer["intent"] == "opening_hours"
    await communicator.disconnect()


def test_handed_off_conversations_come_first_in_admin(admin_client, knowledge_base) -> None:
    Conversation.objects.create(status=Conversation.Status.BOT)
    waiting = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    Conversation.objects.create(status=Conversation.Status.BOT)

    page = admin_client.get("/admin/chatbot/conversation/")

    assert next(iter(page.context["cl"].result_list)).pk == waiting.pk


def test_only_what_tells_the_customer_changes_who_answers(admin_client, knowledge_base) -> None:
    # given: a conversation waiting for a person
    conversation = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    page = f"/admin/chatbot/conversation/{conversation.pk}"

    # then: the change form cannot set the status (a page opened before a hand-off, saved
    # after it, would undo it)
    form = admin_client.get(f"{page}/change/").context["adminform"].form
    assert "status" not in form.fields

    # when: handed back twice (a double click, a stale page)
    admin_client.post(f"{page}/hand-back/")
    second = admin_client.post(f"{page}/hand-back/", follow=True).content.decode()

    # then: the customer is told once
    notes = Message.objects.filter(conversation=conversation, role="system")
    assert notes.count() == 1
    assert "not waiting for a person" in second

    # when: closed from the list, then replied to
    admin_client.post(
        "/admin/chatbot/conversation/",
        {"action": "close_conversations", "_selected_action": [conversation.pk]},
    )
    refused = admin_client.post(
        f"{page}/reply/", {"staff_reply": "Anything else?"}, follow=True
    ).content.decode()

    # then: closed with a note to the widget, and the reply refused, not sent to no one
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.CLOSED
    assert notes.count() == 2 and notes.last().text.startswith("This conversation has been closed")
    assert "The conversation is closed" in refused
    assert not Message.objects.filter(conversation=conversation, role="agent").exists()


def test_with_redis_down_an_admins_change_is_saved_and_reported_done(
    admin_client, knowledge_base, monkeypatch, caplog
) -> None:
    # given: neither the channel layer nor the broker answers (fault injection)
    from kombu.exceptions import OperationalError

    from chatbot.tasks import answer_index_rebuild

    class Down:
        async def group_send(self, group, message):
            raise ConnectionError("Connection refused")

    def broker_down(*args, **kwargs):
        raise OperationalError("Connection refused")

    monkeypatch.setattr("channels.layers.get_channel_layer", lambda: Down())
    monkeypatch.setattr(answer_index_rebuild, "delay", broker_down)
    conversation = Conversation.objects.create(status=Conversation.Status.BOT)
    question = Message.objects.create(conversation=conversation, role="customer", text="hello")
    Message.objects.create(
        conversation=conversation, role="bot", text="Hi!", in_reply_to=question, decision="answer"
    )

    # when: a conversation is closed, and a message relabelled
    closed = admin_client.post(
        "/admin/chatbot/conversation/",
        {"action": "close_conversations", "_selected_action": [conversation.pk]},
    )
    intent = Intent.objects.get(name="greeting")
    relabelled = admin_client.post(
        "/admin/chatbot/reviewitem/",
        {"action": "relabel", "_selected_action": [question.pk], "intent": intent.pk},
    )

    # then: saved, no 500, and the failures are in the log
    assert (closed.status_code, relabelled.status_code) == (302, 302)
    conversation.refresh_from_db()
    question.refresh_from_db()
    assert conversation.status == "closed" and question.review == "relabelled"
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("Could not push message" in line for line in logged)
    assert any("Could not hand the answer-index rebuild" in line for line in logged)


def test_a_staff_reply_with_redis_down_is_stored_and_the_admin_told_it_is_not_live(
    admin_client, knowledge_base, settings
) -> None:
    # given: a conversation waiting for a person, and this machine's Redis
    conversation = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    page = f"/admin/chatbot/conversation/{conversation.pk}/reply/"
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    live = admin_client.post(page, {"staff_reply": "Hello?"}, follow=True).content.decode()

    # when: Redis stops answering (a port where none listens)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    down = admin_client.post(page, {"staff_reply": "Still there?"}, follow=True).content.decode()

    # then: both stored; only the second reply is reported as not live
    texts = Message.objects.filter(conversation=conversation, role="agent").values_list(
        "text", flat=True
    )
    assert list(texts.order_by("pk")) == ["Hello?", "Still there?"]
    assert "Reply sent" in live and "not live" not in live
    assert "Reply sent" in down and "when their chat reconnects, not live" in down


async def test_none_of_the_choices_declines_the_question_and_the_bot_learns_from_it(
    live_policy,
) -> None:
    # given: a customer the bot asked which of its intents they meant
    await database_sync_to_async(live_policy)(answer=1.01)
    communicator, history = await open_chat()
    question = await send_message(communicator, "can i pay with gold coins", "n-1")
    assert question["decision"] == "clarify"
    assert question["suggestions"][-1] == NONE_OF_THESE_LABEL
    asked = await Message.objects.aget(client_message_id="n-1")

    # when: none of them is what they meant
    declined = await send_message(communicator, NONE_OF_THESE_LABEL, "n-2")

    # then: the bot says so and offers another wording or a person
    assert (declined["decision"], declined["handoff"]) == ("out_of_scope", False)
    assert declined["text"].startswith("Sorry I got that wrong")
    assert declined["suggestions"] == [TALK_TO_PERSON_LABEL]
    # the question is recorded as not having helped, the message it asked about moves up the
    # review queue and is learnt as out of scope; the press itself is nothing to learn from
    await assert_did_not_help(question["id"], asked)
    pressed = await Message.objects.aget(client_message_id="n-2")
    assert pressed.review == Message.Review.SKIPPED
    learnt = await sync_to_async(out_of_scope_texts)()
    assert learnt == ["can i pay with gold coins"]

    # when: one more reply that gets them nowhere (the question and the decline were two)
    third = await send_message(communicator, "gold coins accepted?", "n-3")

    # then: a person takes over
    assert third["decision"] == "handoff"
    conversation = await Conversation.objects.aget(public_id=history["conversation"])
    assert conversation.status == Conversation.Status.NEEDS_HUMAN
    await communicator.disconnect()
