"""Fixtures shared by every test: an isolated data directory and the demo knowledge base."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from chatbot.db import close_connections
from chatbot.runtime import get_runtime
from chatbot.services import message_writer, reply_writer


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory, django_db_blocker) -> Iterator[Path]:
    """Models and indexes written by tests go to a temporary directory, never to var/."""
    from django.conf import settings

    path = tmp_path_factory.mktemp("chatbot-data")
    settings.CHATBOT_DATA_DIR = path
    settings.VAR_DIR = tmp_path_factory.mktemp("chatbot-var")
    # Connections opened on Channels' database thread must close after each use, or the test
    # database cannot be dropped at the end of the run.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A developer's own OpenAI key must not send test messages anywhere (tests that use the
    # second opinion point it at a local server).
    settings.OPENAI_API_KEY = settings.OPENAI_BASE_URL = ""
    get_runtime.cache_clear()
    yield path
    # Its watcher would otherwise log into the closed output once the run is over.
    get_runtime().close()


@pytest.fixture
def knowledge_base(transactional_db) -> str:
    """The demo knowledge base in the database and its answer index live; returns its version.

    The first build embeds every text with the packaged BERT; later builds reuse the vectors.
    """
    from chatbot.knowledge import answer_index_build, knowledge_base_load

    knowledge_base_load()
    return answer_index_build()


@pytest.fixture(autouse=True)
def _close_async_orm_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close what the async ORM and the chat's database threads opened, so the test database
    can be dropped.

    Outside any async_to_sync, Django's async ORM runs on asgiref's single shared thread; the
    close must run there too (and on each database thread, and on the two writers'). (A sync
    fixture: an async one would clash with Playwright's loop.)
    """
    yield
    if inspect.iscoroutinefunction(request.function):
        SyncToAsync.single_thread_executor.submit(connections.close_all).result()
        close_connections()
        for writer in (message_writer(), reply_writer()):
            writer.run_on_worker(connections.close_all).result()
