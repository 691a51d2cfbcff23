"""The product served by a real daphne process, over real HTTP and a real WebSocket."""

from __future__ import annotations

import json
import urllib.request

import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from chatbot.models import Message
from tests.chatbot.conftest import WEBSOCKET_MAX_MESSAGE_BYTES, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("knowledge_base")]


def test_the_demo_page_embeds_the_widget_and_the_site_is_healthy(
    daphne_server: LiveServer, knowledge_base: str
) -> None:
    page = urllib.request.urlopen(f"{daphne_server.url}/", timeout=10).read().decode()
    script = urllib.request.urlopen(f"{daphne_server.url}/static/chat/widget.js", timeout=10)
    health = json.load(urllib.request.urlopen(f"{daphne_server.url}/healthz", timeout=10))

    assert page.count("<script") == 1 and "/static/chat/widget.js" in page
    assert script.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    assert b"ChatWidget" in script.read()
    assert health == {"database": "ok", "index": knowledge_base}


async def chat(ws, text: str, client_id: str) -> dict:
    await ws.send(json.dumps({"type": "message", "text": text, "id": client_id}))
    ack = json.loads(await ws.recv())
    assert ack["type"] == "ack", ack
    reply = json.loads(await ws.recv())
    assert reply["type"] == "reply", reply
    return reply


def origin(server: LiveServer) -> str:
    return server.url


async def test_a_customer_chats_with_daphne_over_a_real_websocket(
    daphne_server: LiveServer,
) -> None:
    async with connect(daphne_server.ws_url, origin=origin(daphne_server), open_timeout=20) as ws:
        history = json.loads(await ws.recv())
        reply = await chat(ws, "Can I pay with PayPal?", "r-1")

    assert reply["intent"] == "payment_methods"
    stored = await database_sync_to_async(list)(
        Message.objects.filter(conversation__public_id=history["conversation"]).values_list(
            "role", "text"
        )
    )
    assert stored == [("customer", "Can I pay with PayPal?"), ("bot", reply["text"])]


async def test_bad_input_over_daphne_gets_errors_and_nothing_stored_is_lost(
    daphne_server: LiveServer,
) -> None:
    # given
    async with connect(daphne_server.ws_url, origin=origin(daphne_server), open_timeout=20) as ws:
        history = json.loads(await ws.recv())
        first = await chat(ws, "hi", "b-1")

        # when: over-long text, binary data and broken JSON, on the same connection
        await ws.send(json.dumps({"type": "message", "text": "é" * 5000, "id": "b-2"}))
        too_long = json.loads(await ws.recv())
        await ws.send(b"\x89PNG\r\n")
        binary = json.loads(await ws.recv())
        await ws.send('{"type": "message", "text": "unterminated')
        broken = json.loads(await ws.recv())
        second = await chat(ws, "thanks!", "b-3")

        # and: a frame past daphne's size limit closes the connection
        await ws.send(json.dumps({"type": "message", "text": "x" * WEBSOCKET_MAX_MESSAGE_BYTES}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()

    # then
    assert [too_long["code"], binary["code"], broken["code"]] == [
        "text_too_long",
        "binary_not_supported",
        "invalid_json",
    ]
    assert too_long["in_reply_to"] == "b-2"
    # autobahn drops the TCP connection without a close frame: an abnormal closure
    assert isinstance(closed.value, ConnectionClosedError)
    resumed_url = f"{daphne_server.ws_url}?conversation={history['conversation']}"
    async with connect(resumed_url, origin=origin(daphne_server), open_timeout=20) as ws:
        resumed = json.loads(await ws.recv())
        third = await chat(ws, "bye", "b-4")
    assert resumed["conversation"] == history["conversation"]
    assert [m["id"] for m in resumed["messages"] if m["role"] == "bot"] == [
        first["id"],
        second["id"],
    ]
    assert [m["text"] for m in resumed["messages"] if m["role"] == "customer"] == ["hi", "thanks!"]
    assert third["intent"] == "goodbye"
