"""The product served by a real daphne process, over real HTTP and a real WebSocket."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import urllib.request
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from chatbot.models import Message
from chatbot.runtime import get_runtime
from tests.chatbot.conftest import WEBSOCKET_MAX_MESSAGE_BYTES, LiveServer, reply_row, turn
from training.inference import PRECISIONS

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("knowledge_base")]


def test_the_demo_page_embeds_the_widget_and_the_site_is_healthy(
    daphne_server: LiveServer, knowledge_base: str
) -> None:
    page = urllib.request.urlopen(f"{daphne_server.url}/", timeout=10).read().decode()
    script = urllib.request.urlopen(f"{daphne_server.url}/static/chat/widget.js", timeout=10)
    health = json.load(urllib.request.urlopen(f"{daphne_server.url}/healthz", timeout=10))
    favicon = urllib.request.urlopen(f"{daphne_server.url}/favicon.ico", timeout=10)

    assert page.count("<script") == 1 and "/static/chat/widget.js" in page
    assert script.headers["Content-Type"].startswith(("text/javascript", "application/javascript"))
    assert b"ChatWidget" in script.read()
    assert health == {"database": "ok", "index": knowledge_base}
    assert favicon.status == 204  # asked for by every browser: no 404 warning in the log


async def chat(ws, text: str, client_id: str) -> dict:
    await ws.send(json.dumps({"type": "message", "text": text, "id": client_id}))
    ack = json.loads(await ws.recv())
    assert ack["type"] == "ack", ack
    reply = json.loads(await ws.recv())
    assert reply["type"] == "reply", reply
    await database_sync_to_async(reply_row)(reply["id"])
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


async def test_a_serving_process_is_ready_once_its_models_are_loaded(
    daphne_server: LiveServer, knowledge_base: str
) -> None:
    # given: the process queued its warm-up pass when it started, ahead of any message
    async with connect(daphne_server.ws_url, origin=origin(daphne_server), open_timeout=20) as ws:
        await ws.recv()
        await chat(ws, "Can I pay with PayPal?", "ready-1")

    # when: it has answered, the warm-up pass queued before that message has run
    ready = urllib.request.urlopen(f"{daphne_server.url}/readyz", timeout=10)

    # then
    assert ready.status == 200
    assert json.load(ready) == {"database": "ok", "index": knowledge_base, "model": "ready"}


def test_a_process_still_warming_up_is_not_ready(client, monkeypatch, caplog) -> None:
    # given: a runtime that has not run its warm-up pass (as in a process that just started)
    cold = get_runtime.__wrapped__()  # a new one, built from the settings as every process's is
    monkeypatch.setattr("chatbot.views.get_runtime", lambda: cold)

    # when
    with caplog.at_level(logging.INFO, logger="django.request"):
        response = client.get("/readyz")

    # then: alive, but not to be sent customers yet; and that is no error in the log
    assert response.status_code == 503 and response.json()["model"] == "warming_up"
    assert client.get("/healthz").status_code == 200
    assert not [r for r in caplog.records if r.name == "django.request"]


def ask_until_settled(runtime, timeout_s: float = 60) -> tuple[str, str]:
    """The runtime's readiness once its warm-up pass has run."""
    deadline = time.monotonic() + timeout_s
    while (state := runtime.readiness())[0] == "warming_up" and time.monotonic() < deadline:
        time.sleep(0.1)
    return state


def test_a_process_whose_warm_up_failed_is_not_ready_and_tries_again(client, monkeypatch) -> None:
    # given: a process whose forward passes fail for now (fault injection)
    cold = get_runtime.__wrapped__()
    real = cold.analyse_batch
    broken = {"now": True}

    def failing_for_now(texts):
        if broken["now"]:
            raise OSError("base model not found")
        return real(texts)

    monkeypatch.setattr(cold, "analyse_batch", failing_for_now)
    monkeypatch.setattr("chatbot.views.get_runtime", lambda: cold)
    cold.warm_up()

    # when
    assert ask_until_settled(cold) == ("failed", "OSError: base model not found")
    response = client.get("/readyz")

    # then: not ready, saying why
    assert response.status_code == 503
    assert response.json()["model"] in ("failed", "warming_up")

    # when: what it lacked is there
    broken["now"] = False

    # then: a pass queued again recovers it
    deadline = time.monotonic() + 60
    while ask_until_settled(cold)[0] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/readyz").status_code == 200


def test_a_process_that_cannot_load_the_live_model_is_serving_but_not_ready(
    client, monkeypatch
) -> None:
    # given: a live model version whose files are broken
    cold = get_runtime.__wrapped__()
    monkeypatch.setattr("chatbot.views.get_runtime", lambda: cold)
    version = cold.models.write(lambda d: (d / "model.json").write_text("{not json"))
    cold.models.set_live(version)
    try:
        # when
        cold.warm_up()
        state = ask_until_settled(cold)
        response = client.get("/readyz")
    finally:
        cold.models.clear_live()

    # then
    assert state[0] == "model_unloadable" and version in state[1]
    assert response.status_code == 503 and response.json()["model"] == "model_unloadable"


def test_health_says_when_redis_does_not_answer(client, settings) -> None:
    # given: the Redis of this machine, then a port where none listens
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    reachable = client.get("/healthz")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    # when
    unreachable = client.get("/healthz")

    # then
    assert reachable.status_code == 200 and reachable.json()["channel_layer"] == "ok"
    assert unreachable.status_code == 503
    assert unreachable.json()["channel_layer"].startswith("unreachable")
    assert client.get("/readyz").status_code == 503


def test_probes_tell_the_world_only_their_verdict(
    daphne_server: LiveServer, client, settings
) -> None:
    # given: a request through the site's proxy (it adds X-Forwarded-For), one from a public
    # address, and a Redis that does not answer, whose error text names the host
    proxied = urllib.request.Request(
        f"{daphne_server.url}/healthz", headers={"X-Forwarded-For": "203.0.113.9"}
    )
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    # when
    through_proxy = urllib.request.urlopen(proxied, timeout=10)
    public = client.get("/healthz", REMOTE_ADDR="93.184.216.34")
    public_ready = client.get("/readyz", REMOTE_ADDR="93.184.216.34")
    on_the_host = client.get("/healthz")

    # then: the verdict in the status code and one word; the findings only on the host
    assert through_proxy.status == 200 and json.load(through_proxy) == {"status": "ok"}
    assert public.status_code == 503 and public.json() == {"status": "unavailable"}
    assert public_ready.status_code == 503 and public_ready.json() == {"status": "unavailable"}
    assert on_the_host.status_code == 503
    assert on_the_host.json()["channel_layer"].startswith("unreachable")


def test_a_readiness_probe_without_an_answer_index_is_still_logged_as_an_error(
    client, monkeypatch, caplog
) -> None:
    # given: nothing published, so the process is not healthy either
    monkeypatch.setattr("chatbot.selectors.live_index_version", lambda: None)

    # when
    response = client.get("/readyz")

    # then
    assert response.status_code == 503
    assert [r.levelname for r in caplog.records if r.name == "django.request"] == ["ERROR"]


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


async def test_a_staff_reply_reaches_a_customer_on_another_process_through_redis(
    daphne_factory, settings
) -> None:
    # given: a customer connected to a daphne process that uses the Redis channel layer
    from asgiref.sync import sync_to_async

    from chatbot import services
    from chatbot.models import Conversation

    redis_url = "redis://127.0.0.1:6379/5"
    server = await sync_to_async(daphne_factory(REDIS_URL=redis_url).start)()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }
    async with connect(server.ws_url, origin=server.url, open_timeout=20) as ws:
        history = json.loads(await ws.recv())
        await chat(ws, "hello", "s-1")  # a conversation is stored once its customer writes
        conversation = await Conversation.objects.aget(public_id=history["conversation"])
        # idle for longer than Redis' blocking pop (5 s): the connection must outlive it
        await asyncio.sleep(7)

        # when: a person on the team replies from this (another) process
        await database_sync_to_async(services.staff_reply_send)(
            conversation=conversation, text="Hello from the support team"
        )

        # then
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
    assert (frame["type"], frame["role"], frame["text"]) == (
        "message",
        "agent",
        "Hello from the support team",
    )


async def test_the_answer_index_is_swapped_while_the_server_answers(daphne_server) -> None:
    # given
    from chatbot.knowledge import answer_index_build
    from chatbot.models import AnswerTemplate

    async with connect(daphne_server.ws_url, origin=daphne_server.url, open_timeout=20) as ws:
        await ws.recv()

        published = asyncio.Event()

        async def keep_chatting() -> list[dict]:
            from django.conf import settings

            replies: list[dict] = []
            while not published.is_set() or len(replies) < 12:
                if len(replies) >= settings.CHATBOT_RATE_LIMIT_BURST - 2:
                    # On a fast machine the burst is spent before the index is rebuilt: from
                    # there, keep to the per-connection rate, as the widget does.
                    await asyncio.sleep(60 / settings.CHATBOT_RATE_LIMIT_PER_MINUTE)
                replies.append(await chat(ws, "what are your opening hours?", f"s-{len(replies)}"))
            # one more, sent once the last version is live
            replies.append(await chat(ws, "what are your opening hours?", "s-last"))
            return replies

        async def republish() -> None:
            for n in range(3):
                await AnswerTemplate.objects.filter(intent__name="opening_hours").aupdate(
                    text=f"Open from 0{n + 6}:00 every day."
                )
                await database_sync_to_async(answer_index_build)()
                await asyncio.sleep(0.2)
            published.set()

        # when
        replies, _ = await asyncio.gather(keep_chatting(), republish())

    # then: every message was answered, and the answers moved to the new index as it went live
    assert len(replies) >= 13 and all(r["intent"] == "opening_hours" for r in replies)
    versions = await database_sync_to_async(list)(
        Message.objects.filter(role="bot").values_list("index_version", flat=True).distinct()
    )
    assert len(versions) >= 2
    assert replies[-1]["text"] == "Open from 08:00 every day."


def test_the_load_test_command_chats_like_the_widget_and_checks_every_turn_is_stored(
    daphne_server: LiveServer, tmp_path
) -> None:
    # given
    from django.core.management import call_command

    figures = tmp_path / "load.json"

    # when
    call_command(
        "loadtest",
        url=daphne_server.ws_url,
        clients=6,
        messages=4,
        think=0.05,
        json=figures,
        stdout=io.StringIO(),
    )

    # then
    result = json.loads(figures.read_text())
    assert (result["replies"], result["errors"]) == (24, 0)
    assert result["turns_sent"] == result["turns_stored"] == result["turns_answered"] == 24
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert (
        Message.objects.filter(role="customer", client_message_id__startswith="lt-").count() == 24
    )


def test_the_load_test_fails_loudly_when_the_server_is_not_there() -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from tests.chatbot.conftest import free_port

    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "loadtest",
            url=f"ws://127.0.0.1:{free_port()}/ws/chat/",
            clients=2,
            messages=1,
            timeout=2,
            stdout=out,
        )
    assert "errors               2" in out.getvalue()


@pytest.mark.django_db
def test_a_ready_process_names_the_model_and_the_precision_it_serves(client, live_model) -> None:
    # given: this process serving the live model, its warm-up pass run
    runtime = get_runtime()
    runtime.warm_up()  # queues the pass, unless an earlier connection already did
    for _ in range(600):
        if runtime.ready:
            break
        time.sleep(0.1)

    # when
    response = client.get("/readyz")

    # then: the version the live pointer names, in the precision this process chose for it
    classifier, version = runtime.classifier()
    body = response.json()
    assert response.status_code == 200 and body["model"] == "ready"
    assert body["model_version"] == version == Path(live_model.directory).name
    assert body["precision"] == classifier.precision
    assert body["precision"] in PRECISIONS


def test_probes_answer_whatever_host_they_are_sent_to(client, settings) -> None:
    # given: the operator named the site; a container health check probes 127.0.0.1
    settings.ALLOWED_HOSTS = ["chat.example.com"]

    # when
    probes = [client.get(path, HTTP_HOST="127.0.0.1:8000") for path in ("/healthz", "/readyz")]
    page = client.get("/", HTTP_HOST="127.0.0.1:8000")

    # then: the probes answer (ready or not: this process may not have warmed up); other pages
    # do not
    assert probes[0].status_code == 200 and probes[0].json()["database"] == "ok"
    assert probes[1].status_code in (200, 503) and "model" in probes[1].json()
    assert page.status_code == 400


def test_a_starting_process_encodes_what_candidate_new_intents_groups(daphne_factory) -> None:
    # given: messages the bot declined and answered, stored before the process starts
    from chatbot.models import Conversation

    conversation = Conversation.objects.create()
    turns = [
        ("can i buy bitcoin here", "out_of_scope"),
        ("do you sell pet insurance", "out_of_scope"),
        ("can i buy bitcoin here", "out_of_scope"),  # the same text is encoded once
        ("can I pay with PayPal?", "answer"),
        ("when are you open", "clarify"),
    ]
    for text, decision in turns:
        turn(conversation, text, decision=decision)

    # when
    server = daphne_factory().start()

    # then: once its models are loaded, it encodes each text the page groups, ahead of a visit
    deadline = time.monotonic() + 60
    while "Encoded 4 review texts ahead" not in server.log_tail():
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
