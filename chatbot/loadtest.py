"""A load test that speaks the widget's protocol: N customers on real WebSockets, M messages each.

Each customer opens `/ws/chat/`, reads its history frame, then sends messages one at a time,
each with a fresh client id, waiting for the reply to that id before thinking and sending the
next. Latency is measured from sending a message to receiving its reply frame. Nothing here
needs Django: the management command adds the check against the database.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class CustomerResult:
    conversation: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)  # client ids, in order


@dataclass(frozen=True)
class Report:
    clients: int
    messages_sent: int
    replies: int
    errors: int
    wall_s: float
    throughput: float  # replies per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_samples: tuple[str, ...]

    def lines(self) -> list[str]:
        return [
            f"customers            {self.clients}",
            f"messages sent        {self.messages_sent}",
            f"replies              {self.replies}",
            f"errors               {self.errors}",
            f"wall time            {self.wall_s:.1f} s",
            f"throughput           {self.throughput:.1f} replies/s",
            f"latency p50/p95/p99  {self.p50_ms:.1f} / {self.p95_ms:.1f} / {self.p99_ms:.1f} ms"
            f" (max {self.max_ms:.1f})",
            *(f"  error: {sample}" for sample in self.error_samples),
        ]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def origin_for(url: str) -> str:
    """The page origin a browser would send for a widget served by this server."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


async def customer(
    url: str,
    texts: Sequence[str],
    *,
    messages: int,
    think_s: float,
    timeout_s: float,
    origin: str,
    rng: random.Random,
) -> CustomerResult:
    from websockets.asyncio.client import connect

    result = CustomerResult()
    run = secrets.token_hex(4)
    if think_s:
        await asyncio.sleep(rng.uniform(0, think_s))  # customers do not all start at once
    try:
        async with connect(url, origin=origin, open_timeout=timeout_s, max_size=2**20) as ws:
            history = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            result.conversation = history.get("conversation", "")
            for n in range(messages):
                client_id = f"lt-{run}-{n}"
                started = time.perf_counter()
                frame = {"type": "message", "text": rng.choice(texts), "id": client_id}
                await ws.send(json.dumps(frame))
                result.sent.append(client_id)
                error = await _await_reply(ws, client_id, timeout_s)
                if error:
                    result.errors.append(error)
                else:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                if think_s:
                    await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
    except Exception as exc:  # a refused or dropped connection is the test's result, not a crash
        result.errors.append(f"connection: {type(exc).__name__}: {exc}")
    return result


async def _await_reply(ws, client_id: str, timeout_s: float) -> str:
    """'' once the reply to `client_id` arrives, else what went wrong."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"no reply to {client_id} within {timeout_s:g} s"
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        except TimeoutError:
            return f"no reply to {client_id} within {timeout_s:g} s"
        if frame.get("in_reply_to") == client_id:
            if frame.get("type") == "reply":
                return ""
            if frame.get("type") == "error":
                return f"error frame {frame.get('code')}: {frame.get('detail')}"


async def run(
    url: str,
    texts: Sequence[str],
    *,
    clients: int,
    messages: int,
    think_s: float = 0.0,
    timeout_s: float = 30.0,
    origin: str | None = None,
    seed: int = 0,
) -> tuple[Report, list[CustomerResult]]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            customer(
                url,
                texts,
                messages=messages,
                think_s=think_s,
                timeout_s=timeout_s,
                origin=origin or origin_for(url),
                rng=random.Random(seed * 100_003 + i),
            )
            for i in range(clients)
        )
    )
    wall = time.perf_counter() - started
    latencies = [ms for r in results for ms in r.latencies_ms]
    errors = [e for r in results for e in r.errors]
    report = Report(
        clients=clients,
        messages_sent=sum(len(r.sent) for r in results),
        replies=len(latencies),
        errors=len(errors),
        wall_s=wall,
        throughput=len(latencies) / wall if wall else 0.0,
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=float("nan")),
        error_samples=tuple(dict.fromkeys(errors))[:5],
    )
    return report, list(results)
