"""The chat consumer over Channels' WebsocketCommunicator, on the real database and encoder."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from chatbot import protocol, services
from chatbot.agent import Agent
from chatbot.asgi import application
from chatbot.models import Conversation, Message
from chatbot.routing import websocket_urlpatterns
from chatbot.security import WidgetOriginValidator
from tests.chatbot.conftest import reply_row

pytestmark = pytest.mark.usefixtures("knowledge_base")

ORIGIN = b"http://127.0.0.1:8000"
HOST = b"127.0.0.1:8000"


async def open_chat(query: str = "", origin: bytes = ORIGIN) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(
        application,
        f"/ws/chat/{query}",
        # a page of the chat server's own site (as the demo page is)
        headers=[(b"origin", origin), (b"host", HOST), (b"user-agent", b"pytest-browser/1.0")],
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    history = await communicator.receive_json_from(timeout=10)
    assert history["type"] == "history"
    return communicator, history


async def send_message(communicator: WebsocketCommunicator, text: str, client_id: str) -> dict:
    """Send a customer message; returns the reply after checking the ack, once it is stored."""
    await communicator.send_json_to({"type": "message", "text": text, "id": client_id})
    ack = await communicator.receive_json_from(timeout=30)
    assert ack["type"] == "ack" and ack["id"] == client_id
    reply = await communicator.receive_json_from(timeout=30)
    assert reply["type"] == "reply", reply
    await database_sync_to_async(reply_row)(reply["id"])
    return reply


@database_sync_to_async
def stored(conversation_id: str) -> list[Message]:
    return list(
        Message.objects.filter(conversation__public_id=conversation_id)
        .select_related("intent", "template")
        .order_by("created_at", "id")
    )


async def test_message_gets_a_reply_and_both_turns_are_stored(knowledge_base: str) -> None:
    # given
    communicator, history = await open_chat("?visitor=v-123")
    assert history["messages"] == [] and history["status"] == "bot"

    # when
    reply = await send_message(communicator, "I forgot my password and can't sign in", "c-1")

    # then
    assert reply["in_reply_to"] == "c-1"
    assert reply["intent"] == "password_reset"
    assert 0 < reply["confidence"] <= 1
    assert reply["handoff"] is False
    assert isinstance(reply["suggestions"], list)
    customer, bot = await stored(history["conversation"])
    assert (customer.role, customer.text, customer.client_message_id) == (
        "customer",
        "I forgot my password and can't sign in",
        "c-1",
    )
    assert bot.role == "bot" and bot.in_reply_to_id == customer.pk
    assert bot.text == reply["text"] == bot.template.text
    assert bot.intent.name == "password_reset"
    assert bot.decision == "answer"
    assert bot.confidence == pytest.approx(reply["confidence"], abs=1e-4)
    assert bot.top_k[0]["intent"] == "password_reset" and 1 <= len(bot.top_k) <= 3
    assert bot.index_version == knowledge_base
    assert bot.latency_ms > 0
    # No intent model is live: the base sentence encoder embeds the message.
    stages = {"store_ms", "queue_ms", "embed_ms", "search_ms"}
    assert stages | {"analyse_ms", "batch_size", "agent_ms"} <= bot.timings.keys()
    assert "classify_ms" not in bot.timings
    conversation = await Conversation.objects.aget(public_id=history["conversation"])
    assert conversation.session_key == "v-123"
    assert conversation.user_agent == "pytest-browser/1.0"
    await communicator.disconnect()


async def test_a_reply_goes_out_before_its_row_is_written_but_a_handoff_after() -> None:
    # given: ids reserved for replies, and a delivery that looks at the database
    conversation = await Conversation.objects.acreate()
    await database_sync_to_async(services.reply_ids().reserve)()
    seen = []

    async def deliver(frame: dict) -> None:
        row = await Message.objects.filter(pk=frame["id"]).afirst()
        status = await Conversation.objects.values_list("status", flat=True).aget(
            pk=conversation.pk
        )
        seen.append((frame, row, status))

    async def turn(text: str, client_id: str) -> Message:
        message, _ = await database_sync_to_async(services.customer_message_store)(
            conversation_id=conversation.pk, text=text, client_id=client_id
        )
        return await services.bot_turn(
            customer_message=message,
            received_at=time.perf_counter(),
            agent=Agent(),
            deliver=deliver,
        )

    # when
    answered = await turn("How much does delivery cost?", "t-1")
    handed_off = await turn("I want to talk to a real person", "t-2")

    # then: the answer went out before its row was written, with the id the row then got
    (answer_frame, answer_row, _), (handoff_frame, handoff_row, status) = seen
    assert answer_row is None and answer_frame["id"] == str(answered.pk)
    stored = await Message.objects.select_related("intent").aget(pk=answered.pk)
    assert answer_frame == protocol.reply_frame(stored, in_reply_to="t-1")
    # and the hand-off was stored, with the conversation's new status, before it went out
    assert handoff_frame["handoff"] and handoff_row is not None
    assert handoff_row.pk == handed_off.pk and status == "needs_human"


BAD_FRAMES = [
    ("{not json", "invalid_json"),
    (json.dumps({"type": "dance"}), "unknown_type"),
    (json.dumps({"type": "message", "text": "   ", "id": "e1"}), "empty_text"),
    (json.dumps({"type": "message", "text": "a" * 2001, "id": "e2"}), "text_too_long"),
    (json.dumps(["message"]), "invalid_frame"),
    ('{"type": "message", "text": "hi \\ud800 there", "id": "e3"}', "invalid_text"),
    ('{"type": "rate", "score": 1' + "0" * 5000 + "}", "invalid_json"),
]


async def test_bad_frames_get_error_frames_and_the_chat_goes_on() -> None:
    # given
    communicator, history = await open_chat()
    await send_message(communicator, "hello there", "ok-1")

    # when
    for raw, code in BAD_FRAMES:
        await communicator.send_to(text_data=raw)
        error = await communicator.receive_json_from(timeout=10)
        assert (error["type"], error["code"]) == ("error", code)
        assert error["detail"]
    await communicator.send_to(bytes_data=b"\x00\xffbinary")
    error = await communicator.receive_json_from(timeout=10)
    assert (error["type"], error["code"]) == ("error", "binary_not_supported")

    # then: the connection is still up, nothing bad was stored, nothing stored was lost
    reply = await send_message(communicator, "what are your opening hours?", "ok-2")
    assert reply["intent"] == "opening_hours"
    messages = await stored(history["conversation"])
    customer_texts = [m.text for m in messages if m.role == "customer"]
    assert customer_texts == ["hello there", "what are your opening hours?"]
    assert len(messages) == 4
    await communicator.disconnect()


async def test_a_message_sent_twice_is_stored_and_answered_once() -> None:
    communicator, history = await open_chat()

    first = await send_message(communicator, "How much does delivery cost?", "dup-1")
    second = await send_message(communicator, "How much does delivery cost?", "dup-1")

    assert second["id"] == first["id"]
    assert second["text"] == first["text"]
    messages = await stored(history["conversation"])
    assert [m.role for m in messages] == ["customer", "bot"]
    await communicator.disconnect()


async def test_reconnecting_with_the_conversation_id_sends_the_history() -> None:
    # given
    first, history = await open_chat()
    reply = await send_message(first, "Do you ship to Ireland?", "h-1")
    await first.disconnect()

    # when
    second, resumed = await open_chat(f"?conversation={history['conversation']}")

    # then
    assert resumed["conversation"] == history["conversation"]
    assert [(m["role"], m["text"]) for m in resumed["messages"]] == [
        ("customer", "Do you ship to Ireland?"),
        ("bot", reply["text"]),
    ]
    assert resumed["messages"][0]["client_id"] == "h-1"
    assert resumed["messages"][1]["id"] == reply["id"]
    # a message the widget re-sends after the drop is not stored again
    again = await send_message(second, "Do you ship to Ireland?", "h-1")
    assert again["id"] == reply["id"]
    assert len(await stored(history["conversation"])) == 2
    await second.disconnect()


async def test_a_conversation_id_without_its_visitor_key_opens_nothing() -> None:
    # given: a customer's conversation, started by their widget (which sends its visitor key)
    first, history = await open_chat("?visitor=v-owner")
    await send_message(first, "My card number ends in 4242", "o-1")
    await first.disconnect()
    conversation = history["conversation"]

    # when: someone who learnt the id connects with it, with another key or none
    for query in (f"?conversation={conversation}&visitor=v-other", f"?conversation={conversation}"):
        other, seen = await open_chat(query)
        await other.disconnect()

        # then: a new, empty conversation of their own
        assert seen["conversation"] != conversation and seen["messages"] == []

    # and the customer's own widget still resumes it
    again, resumed = await open_chat(f"?conversation={conversation}&visitor=v-owner")
    assert resumed["conversation"] == conversation and len(resumed["messages"]) == 2
    await again.disconnect()


@pytest.mark.parametrize("query", ["?conversation=not-a-uuid", f"?conversation={uuid.uuid4()}"])
async def test_an_unknown_conversation_id_starts_a_new_conversation(query: str) -> None:
    communicator, history = await open_chat(query)

    assert history["messages"] == [] and history["conversation"] not in query
    await send_message(communicator, "hello there", "n-1")
    assert await Conversation.objects.filter(public_id=history["conversation"]).aexists()
    await communicator.disconnect()


async def test_a_visitor_who_never_writes_leaves_no_conversation_behind() -> None:
    # given: a page with the widget loaded, and reloaded, by a visitor who never writes
    first, history = await open_chat("?visitor=v-9")
    await first.disconnect()
    second, again = await open_chat(f"?conversation={history['conversation']}&visitor=v-9")
    await second.send_json_to({"type": "ping"})
    assert await second.receive_json_from(timeout=10) == {"type": "pong"}

    # then: nothing for support admins to wade through
    assert again["messages"] == []
    assert not await Conversation.objects.aexists()

    # when: the visitor writes
    await send_message(second, "Do you ship to Ireland?", "w-1")

    # then: the conversation is stored, with what the widget told the server at connect
    conversation = await Conversation.objects.aget(public_id=again["conversation"])
    assert (conversation.session_key, conversation.user_agent) == ("v-9", "pytest-browser/1.0")
    assert await conversation.messages.acount() == 2
    await second.disconnect()


async def test_a_closed_conversation_is_not_resumed() -> None:
    first, history = await open_chat()
    await send_message(first, "hello there", "c-1")
    await first.disconnect()
    await Conversation.objects.filter(public_id=history["conversation"]).aupdate(
        status=Conversation.Status.CLOSED
    )

    second, resumed = await open_chat(f"?conversation={history['conversation']}")

    assert resumed["conversation"] != history["conversation"]
    await second.disconnect()


async def test_closing_tells_the_open_widget_and_a_late_message_is_kept_but_not_answered(
    settings,
) -> None:
    # given
    communicator, history = await open_chat()
    await send_message(communicator, "hello there", "cl-1")
    conversation = await Conversation.objects.aget(public_id=history["conversation"])

    # when: the team closes it
    await database_sync_to_async(services.conversation_close)(conversation=conversation)

    # then: the widget hears it at once
    note = await communicator.receive_json_from(timeout=10)
    assert (note["type"], note["role"], note["status"]) == ("message", "system", "closed")
    assert note["text"] == services.CLOSED_TEXT
    # and a message that still reaches it is kept, with an error instead of a silence
    await communicator.send_json_to({"type": "message", "text": "one more thing", "id": "cl-2"})
    assert (await communicator.receive_json_from(timeout=10))["type"] == "ack"
    error = await communicator.receive_json_from(timeout=10)
    assert (error["type"], error["code"], error["in_reply_to"]) == (
        "error",
        "conversation_closed",
        "cl-2",
    )
    texts = [(m.role, m.text) for m in await stored(history["conversation"])]
    assert texts[-2:] == [("system", services.CLOSED_TEXT), ("customer", "one more thing")]
    assert (
        await database_sync_to_async(services.conversation_close)(conversation=conversation) is None
    )
    await communicator.disconnect()


async def test_a_message_that_cannot_be_stored_gets_an_error_and_the_chat_goes_on(settings) -> None:
    # given: an open chat whose conversation an admin deleted
    communicator, history = await open_chat()
    assert history["max_chars"] == settings.CHATBOT_MAX_MESSAGE_CHARS
    await send_message(communicator, "hello there", "d-1")
    await Conversation.objects.filter(public_id=history["conversation"]).adelete()

    # when
    await communicator.send_json_to({"type": "message", "text": "still there?", "id": "d-2"})

    # then: no ack (nothing is stored), an error the widget can offer a retry for, no drop
    error = await communicator.receive_json_from(timeout=30)
    assert (error["type"], error["code"], error["in_reply_to"]) == ("error", "not_stored", "d-2")
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=10) == {"type": "pong"}
    await communicator.disconnect()


async def test_a_page_from_another_site_cannot_open_the_chat(settings) -> None:
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert not connected
    assert not await Conversation.objects.aexists()


async def test_a_site_listed_in_widget_origins_can_embed_the_chat(settings) -> None:
    settings.CHATBOT_WIDGET_ORIGINS = ["https://shop.example"]
    app = WidgetOriginValidator(URLRouter(websocket_urlpatterns))
    allowed = WebsocketCommunicator(
        app, "/ws/chat/", headers=[(b"origin", b"https://shop.example")]
    )
    denied = WebsocketCommunicator(
        app, "/ws/chat/", headers=[(b"origin", b"https://other.example")]
    )

    assert (await allowed.connect(timeout=10))[0]
    assert not (await denied.connect(timeout=10))[0]
    await allowed.disconnect()


async def test_a_refused_origin_is_logged_once_with_the_setting_that_allows_it(
    settings, caplog, monkeypatch
) -> None:
    # given: a site the operator has not listed, whose widget reconnects
    settings.CHATBOT_WIDGET_ORIGINS = ["https://shop.example"]
    monkeypatch.setattr("chatbot.security._refused", set())
    app = WidgetOriginValidator(URLRouter(websocket_urlpatterns))

    # when
    for _ in range(3):
        denied = WebsocketCommunicator(
            app, "/ws/chat/", headers=[(b"origin", b"https://forgotten.example")]
        )
        assert not (await denied.connect(timeout=10))[0]

    # then: one warning, naming the origin and the setting
    refused = [r.getMessage() for r in caplog.records if r.name == "chatbot.security"]
    assert len(refused) == 1
    assert "'https://forgotten.example'" in refused[0] and "CHATBOT_WIDGET_ORIGINS" in refused[0]


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # the server's own page
        ("http://localhost", "localhost", True),
        ("http://127.0.0.1:9001", "127.0.0.1:8000", False),  # another app on its host
        ("https://127.0.0.1:4444", "127.0.0.1:8000", False),
        ("http://localhost:1234", "127.0.0.1:8000", False),
        ("http://chat.example.com", "chat.example.com", False),  # not in ALLOWED_HOSTS
        ("https://shop.example", "127.0.0.1:8000", True),  # listed
        ("https://shop.example:8443", "127.0.0.1:8000", False),
        ("http://shop.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),
        ("", "127.0.0.1:8000", False),
    ],
)
def test_only_the_sites_own_pages_and_the_listed_sites_may_open_a_chat(
    settings, origin: str, host: str, allowed: bool
) -> None:
    from chatbot.security import origin_allowed

    settings.CHATBOT_WIDGET_ORIGINS = ["https://shop.example/"]

    assert origin_allowed(origin, host) is allowed


async def test_a_connection_that_floods_the_bot_is_slowed_and_the_chat_goes_on(settings) -> None:
    # given: a burst of 3 messages, then one a second
    settings.CHATBOT_RATE_LIMIT_BURST = 3
    settings.CHATBOT_RATE_LIMIT_PER_MINUTE = 60
    communicator, history = await open_chat()

    # when: a script sends 5 messages at once
    for n in range(5):
        await communicator.send_json_to({"type": "message", "text": f"hello {n}", "id": f"f-{n}"})
    frames = [await communicator.receive_json_from(timeout=30) for _ in range(3 * 2 + 2)]

    # then: 3 stored and answered; the other 2 refused, each saying when to try again
    limited = [f for f in frames if f["type"] == "error"]
    assert [f["type"] for f in frames].count("ack") == 3
    assert [f["type"] for f in frames].count("reply") == 3
    assert [(f["code"], f["in_reply_to"]) for f in limited] == [
        ("rate_limited", "f-3"),
        ("rate_limited", "f-4"),
    ]
    assert all(0 < f["retry_after_s"] <= 1 for f in limited)
    assert "send it again" in limited[0]["detail"]
    assert [m.text for m in await stored(history["conversation"]) if m.role == "customer"] == [
        "hello 0",
        "hello 1",
        "hello 2",
    ]

    # when: the customer waits, and sends one again
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=10) == {"type": "pong"}
    await asyncio.sleep(1.1)
    reply = await send_message(communicator, "hello 3", "f-3")

    # then: the connection never dropped, and the message is answered
    assert reply["in_reply_to"] == "f-3"
    await communicator.disconnect()


async def test_bad_frames_count_against_the_rate_and_are_not_echoed_back(settings) -> None:
    # given: 2 frames at once, then one every 100 s
    settings.CHATBOT_RATE_LIMIT_BURST = 2
    settings.CHATBOT_RATE_LIMIT_PER_MINUTE = 0.6
    communicator, _ = await open_chat()

    # when: a script sends frames that are not even valid
    for _ in range(3):
        await communicator.send_json_to({"type": "x" * 1000})
    errors = [await communicator.receive_json_from(timeout=10) for _ in range(3)]

    # then: two refused as unknown (their type cut short), the third as too many
    assert [e["code"] for e in errors] == ["unknown_type", "unknown_type", "rate_limited"]
    assert len(errors[0]["detail"]) < 120
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=10) == {"type": "pong"}
    await communicator.disconnect()


def test_the_message_rate_refills_and_never_limits_when_off() -> None:
    from chatbot.consumers import MessageRate

    now = [0.0]
    rate = MessageRate(burst=2, per_minute=30, clock=lambda: now[0])  # one every 2 s
    assert (rate.take(), rate.take()) == (0.0, 0.0)
    assert rate.take() == pytest.approx(2.0)
    now[0] = 1.0
    assert rate.take() == pytest.approx(1.0)
    now[0] = 2.0
    assert rate.take() == 0.0
    off = MessageRate(burst=1, per_minute=0)
    assert all(off.take() == 0.0 for _ in range(100))


def test_typing_passes_at_most_every_2_s_and_at_once_after_a_message() -> None:
    from chatbot.consumers import Throttle

    now = [100.0]
    typing = Throttle(2.0, clock=lambda: now[0])
    assert [typing.ready(), typing.ready()] == [True, False]
    now[0] = 101.9
    assert not typing.ready()
    now[0] = 102.0
    assert typing.ready()
    typing.reset()  # a message was sent
    assert [typing.ready(), typing.ready()] == [True, False]


async def test_rating_and_ping() -> None:
    communicator, history = await open_chat()

    await communicator.send_json_to({"type": "rate", "score": 4})
    assert await communicator.receive_json_from(timeout=10) == {"type": "rated", "score": 4}
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=10) == {"type": "pong"}

    conversation = await Conversation.objects.aget(public_id=history["conversation"])
    assert conversation.rating == 4
    await communicator.disconnect()


SIMULTANEOUS = {
    "My mug arrived with a crack in it": "damaged_item",
    "Has my refund been processed?": "refund_status",
    "Do gift cards expire?": "gift_card",
    "Unsubscribe from emails": "newsletter_unsubscribe",
    "I think my parcel was stolen": "missing_package",
    "can you send to Switzerland": "international_shipping",
}


async def test_customers_writing_at_once_share_forward_passes_and_get_their_own_replies() -> None:
    # given
    chats = [await open_chat() for _ in SIMULTANEOUS]

    # when
    replies = await asyncio.gather(
        *(
            send_message(chat, text, f"m{i}")
            for i, ((chat, _), text) in enumerate(zip(chats, SIMULTANEOUS, strict=True))
        )
    )

    # then: each reply answers its own message (curated phrasings, so nearest is exact)
    assert [r["intent"] for r in replies] == list(SIMULTANEOUS.values())
    assert all(r["confidence"] == pytest.approx(1.0, abs=1e-3) for r in replies)
    bots = [m for _, h in chats for m in await stored(h["conversation"]) if m.role == "bot"]
    assert max(m.timings["batch_size"] for m in bots) > 1
    for chat, _ in chats:
        await chat.disconnect()


async def test_a_model_that_cannot_load_leaves_the_bot_answering_from_examples(
    knowledge_base: str,
) -> None:
    # given: a live model version whose files are broken
    from chatbot.runtime import get_runtime

    store = get_runtime().models
    version = store.write(lambda d: (d / "model.json").write_text("{not json"))
    store.set_live(version)
    try:
        communicator, history = await open_chat()

        # when
        reply = await send_message(communicator, "Do gift cards expire?", "g-1")

        # then
        assert reply["intent"] == "gift_card"
        bot = (await stored(history["conversation"]))[-1]
        assert bot.model_version_id is None and bot.index_version == knowledge_base
        await communicator.disconnect()
    finally:
        store.clear_live()


async def test_an_unexpected_failure_is_reported_and_the_chat_goes_on(monkeypatch) -> None:
    # given: the agent fails once (fault injection)
    from chatbot.agent import Agent

    real_respond = Agent.respond
    calls = {"n": 0}

    async def failing_once(self, text, **options):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return await real_respond(self, text, **options)

    monkeypatch.setattr(Agent, "respond", failing_once)
    communicator, history = await open_chat()

    # when
    await communicator.send_json_to({"type": "message", "text": "hello", "id": "f-1"})
    ack = await communicator.receive_json_from(timeout=30)
    error = await communicator.receive_json_from(timeout=30)
    reply = await send_message(communicator, "thanks a lot", "f-2")

    # then
    assert ack["type"] == "ack"
    assert (error["code"], error["in_reply_to"]) == ("internal_error", "f-1")
    assert reply["intent"] == "thanks"
    texts = [(m.role, m.text) for m in await stored(history["conversation"])]
    assert texts[:2] == [("customer", "hello"), ("customer", "thanks a lot")]

    # when: the customer sends the unanswered message again (the widget's Retry: the same id),
    # once no first try can still be answering it
    monkeypatch.setattr(services, "DUPLICATE_REPLY_WAIT_S", 0.5)
    retried = await send_message(communicator, "hello", "f-1")

    # then: answered now, and still stored once
    assert retried["in_reply_to"] == "f-1" and retried["intent"] == "greeting"
    messages = await stored(history["conversation"])
    customers = {m.pk: m.text for m in messages if m.role == "customer"}
    assert list(customers.values()) == ["hello", "thanks a lot"]
    answered = [customers[m.in_reply_to_id] for m in messages if m.role == "bot"]
    assert answered == ["thanks a lot", "hello"]
    await communicator.disconnect()
