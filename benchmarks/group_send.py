"""What showing a turn on the support team's live admin pages costs the chat: one Channels
group send (two messages' frames) to a conversation's group that no page watches, the common
case, on the in-process layer and on Redis.

    .venv/bin/python benchmarks/group_send.py [--sends 2000]

Prints the median and 95th percentile per send.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/9"


async def measure(layer, sends: int) -> list[float]:
    frames = [{"type": "message", "role": "customer", "text": "x" * 80}] * 2
    times = []
    for _ in range(sends):
        started = time.perf_counter()
        await layer.group_send(
            f"staff.conversation.{uuid.uuid4()}", {"type": "staff.frames", "frames": frames}
        )
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot.settings")
    import django

    django.setup()
    from channels.layers import InMemoryChannelLayer
    from channels_redis.core import RedisChannelLayer

    for name, layer in (
        ("in-process", InMemoryChannelLayer()),
        ("redis", RedisChannelLayer(hosts=[REDIS_URL])),
    ):
        times = await measure(layer, args.sends)
        p95 = times[int(0.95 * len(times))]
        print(f"{name}: median {statistics.median(times):.3f} ms, p95 {p95:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
