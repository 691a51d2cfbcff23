import asyncio
import threading

import pytest

from chatbot.batching import MicroBatcher


async def test_submit_shares_one_call_between_requests_that_arrive_together() -> None:
    # given
    calls: list[list[int]] = []
    threads: set[str] = set()

    def double(items):
        calls.append(list(items))
        threads.add(threading.current_thread().name)
        return [item * 2 for item in items]

    batcher = MicroBatcher(double, max_batch=8, max_wait_ms=20)

    # when
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    # then
    assert [r.value for r in results] == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2, 3, 4]]
    assert {r.batch_size for r in results} == {5}
    assert threads != {threading.current_thread().name}  # ran off the event loop's thread


async def test_submit_never_exceeds_the_batch_limit() -> None:
    sizes: list[int] = []

    def record(items):
        sizes.append(len(items))
        return items

    batcher = MicroBatcher(record, max_batch=4, max_wait_ms=20)

    await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert sum(sizes) == 10
    assert max(sizes) == 4


async def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    def fragile(items):
        if "boom" in items:
            raise ValueError("bad input")
        return [item.upper() for item in items]

    batcher = MicroBatcher(fragile, max_batch=8, max_wait_ms=1)

    with pytest.raises(ValueError):
        await batcher.submit("boom")
    result = await batcher.submit("ok")

    assert result.value == "OK"


async def test_one_bad_request_fails_alone_and_the_others_in_its_batch_get_their_results() -> None:
    calls: list[list[str]] = []

    def fragile(items):
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("bad input")
        return [item.upper() for item in items]

    batcher = MicroBatcher(fragile, max_batch=8, max_wait_ms=20)

    results = await asyncio.gather(
        *(batcher.submit(item) for item in ("a", "boom", "c")), return_exceptions=True
    )

    assert results[0].value == "A" and results[2].value == "C"
    assert isinstance(results[1], ValueError)
    assert calls == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]  # together, then each alone


async def test_a_call_can_fail_one_item_by_returning_its_error_in_its_place() -> None:
    calls: list[list[str]] = []

    def store(items):
        calls.append(list(items))
        return [LookupError(item) if item == "gone" else item for item in items]

    batcher = MicroBatcher(store, max_batch=8, max_wait_ms=20)

    results = await asyncio.gather(
        *(batcher.submit(item) for item in ("a", "gone")), return_exceptions=True
    )

    assert results[0].value == "a" and results[0].batch_size == 2
    assert isinstance(results[1], LookupError)
    assert calls == [["a", "gone"]]
