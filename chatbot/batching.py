"""Micro-batching: requests that arrive together in one process share one model call.

The model runs on one worker thread, off the event loop. While it works, new requests queue up;
the next call takes them all (up to `max_batch`), so under load the batch grows by itself and a
lone request waits at most `max_wait_ms` for company.

One request must not fail the others that rode with it. `fn` may put an exception in place of an
item's result, which fails that item alone; when `fn` raises, each item of the batch is run again
on its own, so `fn` must leave nothing behind when it raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Batched(Generic[Out]):
    """A result with the time it waited in the queue and the size of the batch it rode in."""

    value: Out
    queue_ms: float
    run_ms: float
    batch_size: int


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 3.0,
        name: str = "model",
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-batch")
        self._queue: asyncio.Queue[tuple[In, asyncio.Future, float]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None

    def run_on_worker(self, fn: Callable[..., object], *args: object) -> Future:
        """Run `fn` on the batch thread, in order with the batches (to warm up, to clean up)."""
        return self._executor.submit(fn, *args)

    async def submit(self, item: In) -> Batched[Out]:
        self._ensure_worker()
        assert self._queue is not None
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future, time.perf_counter()))
        return await future

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        # A batcher follows the loop it is used from (tests run one loop per test).
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue), name="micro-batcher")

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [entry for entry in batch if not entry[1].cancelled()]
            if not live:
                continue
            try:
                await self._call(loop, live)
            except Exception as exc:  # one bad batch must not stop the worker
                if len(live) == 1:
                    logger.exception("Batched call failed")
                    _settle(live[0][1], exc)
                    continue
                logger.warning(
                    "Batched call failed for %d items (%r); running each on its own",
                    len(live),
                    exc,
                )
                for entry in live:
                    try:
                        await self._call(loop, [entry])
                    except Exception as alone:
                        logger.exception("Batched call failed")
                        _settle(entry[1], alone)

    async def _call(self, loop: asyncio.AbstractEventLoop, live: list) -> None:
        started = time.perf_counter()
        results = await loop.run_in_executor(self._executor, self.fn, [item for item, _, _ in live])
        run_ms = (time.perf_counter() - started) * 1000
        for (_, future, queued), result in zip(live, results, strict=True):
            _settle(future, result, Batched(result, (started - queued) * 1000, run_ms, len(live)))


def _settle(future: asyncio.Future, result: object, batched: Batched | None = None) -> None:
    """Fail `future` if `result` is an exception, else give it `batched`."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(batched)
