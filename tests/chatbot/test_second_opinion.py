"""The optional OpenAI second opinion, through the real `openai` client, against a small
OpenAI-compatible server on 127.0.0.1 (the remote API cannot run here), on the real demo model."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from channels.db import database_sync_to_async

from chatbot.agent import NONE_OF_THESE_LABEL
from chatbot.models import Message
from chatbot.second_opinion import get_second_opinion
from tests.chatbot.test_consumer import open_chat, send_message

# Declines nothing on its own; every message it does not decline is borderline.
EVERYTHING_BORDERLINE = {"oos_threshold": -1e9, "second_opinion_below": 1e9}


@dataclass
class FakeOpenAI:
    """Answers /v1/chat/completions with what `reply` returns for each request it records."""

    url: str
    requests: list[dict] = field(default_factory=list)
    reply: Callable[[dict], tuple[int, dict]] = lambda body: (200, completion('{"topic": 0}'))


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(
                {"path": self.path, "authorization": self.headers["Authorization"], **body}
            )
            status, answer = fake.reply(body)
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except BrokenPipeError:
                pass  # the client gave up waiting (the timeout under test)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake
    server.shutdown()


@pytest.fixture
def second_opinion(settings, fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The helper on, pointed at the fake server."""
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_BASE_URL = fake_openai.url
    settings.CHATBOT_OPENAI_MODEL = "gpt-test"
    settings.CHATBOT_OPENAI_TIMEOUT_S = 2.0
    settings.CHATBOT_OPENAI_CHECK = "borderline"
    get_second_opinion.cache_clear()
    yield fake_openai
    get_second_opinion.cache_clear()


async def bot_message(reply: dict) -> Message:
    return await Message.objects.aget(pk=reply["id"])


async def test_a_borderline_message_it_finds_outside_every_topic_is_declined(
    live_policy,
    second_opinion: FakeOpenAI,
) -> None:
    # given: a policy that would answer everything, and everything borderline
    await database_sync_to_async(live_policy)(answer=0.0, **EVERYTHING_BORDERLINE)
    communicator, _ = await open_chat()

    # when
    reply = await send_message(communicator, "Can I pay with my lamp?", "s-1")

    # then: declined, and the stored turn says who decided
    assert reply["decision"] == "out_of_scope"
    stored = await bot_message(reply)
    assert stored.second_opinion == "none"
    assert stored.timings["second_opinion_ms"] > 0
    # what the chat model read: the message and the ranked intents with their known phrasings
    (request,) = second_opinion.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == "Bearer sk-test" and request["model"] == "gpt-test"
    asked = request["messages"][-1]["content"]
    assert '"Can I pay with my lamp?"' in asked
    assert "1. payment methods" in asked and "example:" in asked
    assert "bot's answer starts:" in asked
    await communicator.disconnect()


async def test_it_settles_a_clarifying_question_or_turns_a_disputed_answer_into_one(
    live_policy,
    second_opinion: FakeOpenAI,
) -> None:
    # given: the second topic offered is the one it names
    second_opinion.reply = lambda body: (200, completion('{"topic": 2}'))
    await database_sync_to_async(live_policy)(answer=1.01, **EVERYTHING_BORDERLINE)
    communicator, _ = await open_chat()

    # when: the bot would have asked which one
    settled = await send_message(communicator, "my refund for the returned lamp", "s-2")

    # then: it answers the intent named, which the model ranked second
    stored = await bot_message(settled)
    assert settled["decision"] == "answer"
    assert settled["intent"] == stored.top_k[1]["intent"] == stored.second_opinion

    # when: the bot would have answered its top intent
    await database_sync_to_async(live_policy)(answer=0.0, **EVERYTHING_BORDERLINE)
    disputed = await send_message(communicator, "my refund for the returned lamp", "s-3")

    # then: the customer chooses between them
    stored = await bot_message(disputed)
    assert disputed["decision"] == "clarify"
    assert stored.second_opinion == stored.top_k[1]["intent"]
    offered = [alt["intent"] for alt in stored.top_k if "label" in alt]
    assert stored.top_k[0]["intent"] in offered and stored.second_opinion in offered
    # the quick replies are phrasings the chat model was shown for their topics
    asked = second_opinion.requests[-1]["messages"][-1]["content"]
    labels = [alt["label"] for alt in stored.top_k if "label" in alt]
    assert [*labels, NONE_OF_THESE_LABEL] == disputed["suggestions"]
    assert all(f"example: {json.dumps(label)}" in asked for label in labels)
    await communicator.disconnect()


async def test_only_borderline_messages_are_sent_and_none_without_a_key(
    live_policy,
    second_opinion: FakeOpenAI,
    settings,
) -> None:
    # given: a policy whose borderline nothing is under (a model saved before it existed)
    await database_sync_to_async(live_policy)(answer=0.0, oos_threshold=-1e9)
    communicator, _ = await open_chat()

    # when
    confident = await send_message(communicator, "Can I pay with PayPal?", "s-4")

    # then: not asked
    assert confident["decision"] == "answer" and second_opinion.requests == []
    assert (await bot_message(confident)).second_opinion == ""

    # when: every message is to be checked, but no key is set
    settings.CHATBOT_OPENAI_CHECK = "all"
    settings.OPENAI_API_KEY = ""
    get_second_opinion.cache_clear()
    keyless = await send_message(communicator, "Can I pay with PayPal?", "s-5")

    # then: the helper is off
    assert keyless["decision"] == "answer" and second_opinion.requests == []

    # when: with the key again, "all" asks about a message that is not borderline
    settings.OPENAI_API_KEY = "sk-test"
    get_second_opinion.cache_clear()
    checked = await send_message(communicator, "Can I pay with PayPal?", "s-6")

    # then
    assert checked["decision"] == "out_of_scope" and len(second_opinion.requests) == 1
    await communicator.disconnect()


async def test_without_a_usable_answer_in_time_the_bot_decides_alone(
    live_policy,
    second_opinion: FakeOpenAI,
    settings,
    caplog,
) -> None:
    # given: a chat model that is slow, then failing, then talking, then naming no topic offered
    settings.CHATBOT_OPENAI_TIMEOUT_S = 0.5
    failures = ["slow", "server_error", "not_json", "no_such_topic"]

    def reply(body: dict) -> tuple[int, dict]:
        failure = failures[len(second_opinion.requests) - 1]
        if failure == "slow":
            time.sleep(2)
            return 200, completion('{"topic": 0}')
        if failure == "server_error":
            return 500, {"error": {"message": "overloaded", "type": "server_error"}}
        if failure == "not_json":
            return 200, completion("The first topic, I think.")
        return 200, completion('{"topic": 7}')

    second_opinion.reply = reply
    await database_sync_to_async(live_policy)(answer=0.0, **EVERYTHING_BORDERLINE)
    communicator, _ = await open_chat()

    # when
    with caplog.at_level(logging.WARNING, logger="chatbot.second_opinion"):
        replies = [
            await send_message(communicator, "Can I pay with PayPal?", f"s-{failure}")
            for failure in failures
        ]

    # then: each answered as without it, on time, and the connection still serves
    assert len(second_opinion.requests) == len(failures)
    for reply_frame in replies:
        assert (reply_frame["decision"], reply_frame["intent"]) == ("answer", "payment_methods")
        stored = await bot_message(reply_frame)
        assert stored.second_opinion == "failed"
        assert stored.timings["second_opinion_ms"] < 1500
    warnings = [r.getMessage() for r in caplog.records if r.name == "chatbot.second_opinion"]
    assert len(warnings) == len(failures) and all("deciding alone" in w for w in warnings)
    assert "Timeout" in warnings[0] and "topic 7" in warnings[3]
    await communicator.disconnect()


@pytest.mark.server
@pytest.mark.usefixtures("knowledge_base")
async def test_a_daphne_server_reads_its_second_opinion_settings_from_the_environment(
    daphne_factory, fake_openai: FakeOpenAI
) -> None:
    # given: a server process started as an operator would, with the helper's settings
    from asgiref.sync import sync_to_async
    from websockets.asyncio.client import connect

    from tests.chatbot.test_server import chat

    server = await sync_to_async(
        daphne_factory(
            OPENAI_API_KEY="sk-operator",
            OPENAI_BASE_URL=fake_openai.url,
            CHATBOT_OPENAI_MODEL="gpt-operator",
            CHATBOT_OPENAI_CHECK="all",
        ).start
    )()

    # when
    async with connect(server.ws_url, origin=server.url, open_timeout=20) as ws:
        await ws.recv()
        reply = await chat(ws, "Can I pay with PayPal?", "d-1")

    # then: the chat model it was pointed at said none of the topics, so the bot declined
    assert reply["decision"] == "out_of_scope"
    (request,) = fake_openai.requests
    assert request["authorization"] == "Bearer sk-operator" and request["model"] == "gpt-operator"
    assert (await bot_message(reply)).second_opinion == "none"
