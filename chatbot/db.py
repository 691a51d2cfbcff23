"""The ORM from async code, without queueing every customer behind one database thread.

Channels' `database_sync_to_async` runs every call of a process on one thread by default, so
under load each customer's writes wait for everyone else's round trips to PostgreSQL. Here the
calls share a small pool of threads, each with its own connection (`CHATBOT_DB_THREADS`). SQLite
takes one writer at a time anyway, so with it (and with `CHATBOT_DB_THREADS=1`) calls keep
Channels' single thread.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.CHATBOT_DB_THREADS, thread_name_prefix="db")


def db_async(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`fn` as a coroutine function run on the database threads (connections closed as
    Channels closes them: when older than CONN_MAX_AGE or broken)."""
    if settings.CHATBOT_DB_THREADS <= 1:
        return database_sync_to_async(fn)
    return database_sync_to_async(fn, thread_sensitive=False, executor=_pool())


def close_connections() -> None:
    """Close the connection each database thread holds (before the database is dropped)."""
    if not _pool.cache_info().currsize:
        return
    pool = _pool()
    workers = settings.CHATBOT_DB_THREADS
    # Every thread takes exactly one close: each waits for the others before closing.
    barrier = threading.Barrier(workers)

    def close() -> None:
        barrier.wait(timeout=30)
        connections.close_all()

    for future in [pool.submit(close) for _ in range(workers)]:
        future.result()
