"""A real daphne process serving the project, for tests that go over a real network socket."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

from chatbot.learning import model_promote
from chatbot.models import Conversation, Intent, Message, ModelVersion
from chatbot.runtime import get_runtime
from chatbot.services import NOT_HELPFUL_REVIEW_PRIORITY
from retrieval.store import VersionStore
from training.config import TrainConfig
from training.data import Example
from training.train import train

# Outside what the demo shop's bot is for, next to what it knows (store locations, contact
# details): questions about jobs to mark out of scope, and others like them never reviewed.
JOBS_REVIEWED = [
    "are you hiring at the moment",
    "can i apply for a job in your warehouse",
    "do you have any vacancies",
    "i'd like to work for your company",
    "how do i send you my cv",
    "are there any part-time jobs at your shop",
]
JOBS_NEW = [
    "any job openings?",
    "i am looking for work, do you need staff",
    "where can i apply to work with you",
    "do you take on summer staff",
    "is your store recruiting",
]

# Frames above this size are refused by daphne itself (it drops the connection); below
# it, the consumer answers an over-long message with an error frame.
WEBSOCKET_MAX_MESSAGE_BYTES = 262144


@dataclass(frozen=True)
class LiveServer:
    url: str
    ws_url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def reply_row(reply_id: str | int, timeout_s: float = 10.0) -> Message:
    """The stored row of a bot reply the customer received. A reply is sent before its row
    is written (`services.bot_turn`), so the row may appear a moment after the frame."""
    deadline = time.monotonic() + timeout_s
    while (row := Message.objects.filter(pk=reply_id).first()) is None:
        assert time.monotonic() < deadline, f"reply {reply_id} was sent but never stored"
        time.sleep(0.01)
    return row


def turn(
    conversation: Conversation,
    text: str,
    *,
    decision: str = "answer",
    intent: Intent | None = None,
    confidence: float | None = None,
    priority: float = 0.0,
    top_k: list | None = None,
) -> Message:
    """A customer message and the bot's reply to it, as the chat stores them."""
    question = Message.objects.create(
        conversation=conversation, role="customer", text=text, review_priority=priority
    )
    Message.objects.create(
        conversation=conversation,
        role="bot",
        text="...",
        in_reply_to=question,
        decision=decision,
        intent=intent,
        confidence=confidence,
        top_k=top_k or [],
    )
    return question


def database_url(db: dict) -> str:
    """DATABASE_URL for the test database the current process uses."""
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daphne:
    """A daphne process serving the project on a fixed port; it can be stopped and restarted."""

    def __init__(
        self, *, port: int, data_dir: Path, var_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.server = LiveServer(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws/chat/", var_dir / "daphne.log"
        )
        self.port = port
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            "DATABASE_CONN_MAX_AGE": "0",
            "CHATBOT_DATA_DIR": str(data_dir),
            "CHATBOT_VAR_DIR": str(var_dir),
            "HF_HUB_OFFLINE": "1",
            "OPENAI_API_KEY": "",  # never the developer's own, unless a test sets one
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> LiveServer:
        command = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--websocket-max-message-size",
            str(WEBSOCKET_MAX_MESSAGE_BYTES),
            "chatbot.asgi:application",
        ]
        with self.server.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=settings.BASE_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_until_serving()
        return self.server

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _wait_until_serving(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"daphne exited with {self.process.returncode}:\n{self.server.log_tail()}"
                )
            try:
                urllib.request.urlopen(f"{self.server.url}/healthz", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # answering (503 only means no index is published yet)
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"daphne did not answer within 90 s:\n{self.server.log_tail()}")


@pytest.fixture
def daphne_factory(
    django_db_setup, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], Daphne]]:
    started: list[Daphne] = []

    def make(**env: str) -> Daphne:
        daphne = Daphne(
            port=free_port(),
            data_dir=data_dir,
            var_dir=tmp_path_factory.mktemp("daphne-var"),
            env=env,
        )
        started.append(daphne)
        return daphne

    yield make
    for daphne in started:
        daphne.stop()


@pytest.fixture(scope="module")
def daphne_server(
    django_db_setup, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    daphne = Daphne(port=free_port(), data_dir=data_dir, var_dir=tmp_path_factory.mktemp("daphne"))
    try:
        yield daphne.start()
    finally:
        daphne.stop()


@pytest.fixture(scope="session")
def demo_model(data_dir: Path) -> tuple[Path, dict]:
    """One epoch on the demo knowledge base's examples, written into the models store.

    Split as the learning loop splits, so its validation examples are never trained on.
    """
    from chatbot.knowledge import DEMO_KNOWLEDGE_BASE
    from chatbot.learning import data_fingerprints, validation_split

    intents = json.loads(DEMO_KNOWLEDGE_BASE.read_text())["intents"]
    examples = [Example(text, i["name"]) for i in intents for text in i["examples"]]
    train_set, val_set = validation_split(examples)
    store = VersionStore(data_dir / "models")
    metrics: dict = {}
    version = store.write(
        lambda d: metrics.update(train(TrainConfig(epochs=1), train_set, val_set, d))
    )
    # What it learnt from, as the learning loop records it for the versions it trains.
    metrics["data"] = data_fingerprints(train_set, val_set, [])
    return store.path(version), metrics


@pytest.fixture
def live_model(knowledge_base, demo_model) -> Iterator[ModelVersion]:
    """The demo model, registered and live for the test."""
    from chatbot.learning import model_promote
    from chatbot.runtime import get_runtime

    directory, metrics = demo_model
    version = ModelVersion.objects.create(
        directory=str(directory), base_model=metrics["base_model"], kind="full", metrics=metrics
    )
    model_promote(model_version=version)
    serve_now(version)
    yield version
    get_runtime().models.clear_live()


def serve_now(version: ModelVersion, timeout: float = 60) -> None:
    """Wait until this process's runtime answers with `version` (it swaps in the background),
    and run one pass on it, as a serving process's warm-up does: the answer index is then
    embedded in the model's space, and the next message waits for nothing but its own pass."""
    from chatbot.runtime import get_runtime

    runtime = get_runtime()
    name = Path(version.directory).name
    deadline = time.monotonic() + timeout
    while runtime.classifier()[1] != name:
        assert time.monotonic() < deadline, f"{name} was not served within {timeout} s"
        time.sleep(0.05)
    runtime.batcher.run_on_worker(runtime.analyse_batch, ["hello"]).result(timeout)


@pytest.fixture
def live_policy(knowledge_base, demo_model) -> Iterator[Callable[..., ModelVersion]]:
    """Make a copy of the demo model live with the given policy thresholds."""
    store = get_runtime().models

    def make(**policy: float) -> ModelVersion:
        directory, metrics = demo_model
        copy = store.root / f"{directory.name}-{secrets.token_hex(4)}"
        shutil.copytree(directory, copy)
        thresholds = json.loads((copy / "thresholds.json").read_text())
        thresholds["policy"] = policy
        (copy / "thresholds.json").write_text(json.dumps(thresholds))
        version = ModelVersion.objects.create(
            directory=str(copy), base_model=metrics["base_model"], kind="full", metrics=metrics
        )
        model_promote(model_version=version)
        serve_now(version)
        return version

    yield make
    store.clear_live()


async def assert_did_not_help(reply_id: str | int, asked: Message) -> Message:
    """The bot's reply is stored as not having helped, and the customer message it replied to
    (`asked`, as it was before) moved up the review queue; returns that message now."""
    reply = await Message.objects.aget(pk=reply_id)
    assert reply.helpful is False
    moved = await Message.objects.aget(pk=asked.pk)
    assert moved.review_priority == pytest.approx(
        asked.review_priority + NOT_HELPFUL_REVIEW_PRIORITY
    )
    return moved
