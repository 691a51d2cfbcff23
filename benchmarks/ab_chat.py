"""A/B of the chat's latency: servers from two checkouts, taking turns, on one database and model.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python benchmarks/ab_chat.py /tmp/before . [--rounds 3] [--saturated]

Paced latency moves from one run to the next by as much as a change moves it, so one run of
each side says little. Here the two sides take turns (A B A B ...) on the same database, model
and index (trained once, from this checkout), and each turn measures: one customer alone
(100 messages), then 100 customers each sending about one message a second (30 each), and with
`--saturated` 64 customers sending as fast as they are answered. It prints each turn, then the
median of each side. `cpu_ms_per_message` is the serving process's CPU time per reply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load_chat

PORT = 8121


def turn(server: load_chat.Server, texts: list[str], *, saturated: bool) -> dict:
    load_chat.load([server.url], texts, clients=10, messages=5, think=0)  # warm up
    row = {"precision": server.ready().get("precision"), "errors": 0, "all_stored": True}
    runs = [("alone", 1, 100, 0.05), ("paced", 100, 30, 1.0)]
    if saturated:
        runs.append(("saturated", 64, 40, 0.0))
    for name, clients, messages, think in runs:
        before = server.cpu_seconds()
        run = load_chat.load([server.url], texts, clients=clients, messages=messages, think=think)
        cpu_ms = 1000 * (server.cpu_seconds() - before) / run["replies"]
        row |= {
            f"{name}_p50_ms": round(run["p50_ms"], 1),
            f"{name}_p95_ms": round(run["p95_ms"], 1),
            f"{name}_p99_ms": round(run["p99_ms"], 1),
            f"{name}_throughput": round(run["throughput"], 1),
            f"{name}_cpu_ms_per_message": round(cpu_ms, 2),
            "errors": row["errors"] + run["errors"],
            "all_stored": row["all_stored"] and run["all_stored"],
        }
    row["speed_probe_ms"] = load_chat.speed_probe()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (e.g. a git worktree of the base)")
    parser.add_argument("b", type=Path, help="checkout B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--saturated", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="ab-chat-"))
    env = load_chat.bench_env(scratch)
    load_chat.prepare(env)
    from chatbot.management.commands.loadtest import demo_texts

    texts = demo_texts()
    rows: list[dict] = []
    for n in range(args.rounds):
        for side, checkout in (("A", args.a), ("B", args.b)):
            log = scratch / f"daphne-{side}.log"
            server = load_chat.Server(PORT, env, log, cwd=checkout.resolve())
            try:
                row = {"side": side, "round": n, **turn(server, texts, saturated=args.saturated)}
            finally:
                server.stop()
            print(json.dumps(row), flush=True)
            rows.append(row)
    for side in "AB":
        mine = [r for r in rows if r["side"] == side]
        numbers = [k for k, v in mine[0].items() if isinstance(v, float) and k != "round"]
        medians = {k: statistics.median(r[k] for r in mine) for k in numbers}
        print(side, "medians:", json.dumps(medians))


if __name__ == "__main__":
    main()
