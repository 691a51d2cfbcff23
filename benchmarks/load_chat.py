"""The chat under load, end to end over WebSockets, against a plain transformers pipeline.

    .venv/bin/python benchmarks/load_chat.py [--json benchmarks/results/load_chat.json]

In one run on this machine, with the demo model trained fresh into a scratch PostgreSQL database
(`chatbot_loadbench`) and data directory:
(a) one daphne process, 100 customers each sending about one message a second (and, first,
    one customer alone, for the latency of a message that waits for nothing);
(b) the same process saturated: customers send again as soon as the reply arrives;
(c) the messages of (b) classified one at a time by `transformers.pipeline("text-classification")`
    on the same model (fp32, as the pipeline runs it), just before (b) and just after it;
(d) the serving process's resident memory;
(e) 1,000 idle connections held open on one process for a minute, then each pings;
(f) two daphne processes on two ports (Redis channel layer), saturated clients split between
    them, against one process on the same layer measured before and after them.
Every load test checks that every turn it sent is stored with its reply. Some machines' speed
drifts within a run, so each comparison is made against a baseline measured on both sides of
it, and a fixed Python loop is timed between the phases (`speed_probe_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "chatbot_loadbench"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/7"


def fresh_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        db.execute(f"CREATE DATABASE {DATABASE}")


def manage(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


class Server:
    """A daphne process serving `cwd` (this checkout unless given another) on `port`."""

    def __init__(self, port: int, env: dict, log: Path, *, cwd: Path = ROOT) -> None:
        self.port, self.log = port, log
        self.url = f"ws://127.0.0.1:{port}/ws/chat/"
        command = [
            sys.executable,
            *("-m", "daphne", "-b", "127.0.0.1", "-p", str(port)),
            *("--websocket-max-message-size", "262144", "chatbot.asgi:application"),
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                assert self.process.poll() is None, log.read_text()[-2000:]
                time.sleep(0.3)

    def ready(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as r:
            return json.load(r)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """The CPU time the process has used so far (user and system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def load(urls: list[str], texts, *, clients: int, messages: int, think: float) -> dict:
    """Run the load test (clients split over `urls`), check every turn is stored."""
    from chatbot import loadtest
    from chatbot.management.commands.loadtest import stored_turns

    async def both():
        share = [clients // len(urls) + (i < clients % len(urls)) for i in range(len(urls))]
        return await asyncio.gather(
            *(
                loadtest.run(url, texts, clients=n, messages=messages, think_s=think, seed=i)
                for i, (url, n) in enumerate(zip(urls, share, strict=True))
            )
        )

    started = time.perf_counter()
    runs = asyncio.run(both())
    wall = time.perf_counter() - started
    latencies = sorted(ms for _, results in runs for r in results for ms in r.latencies_ms)
    results = [r for _, results in runs for r in results]
    sent, stored, answered = stored_turns(results)
    return {
        "stage_medians_ms": stage_medians(results),
        "clients": clients,
        "messages": sum(len(r.sent) for r in results),
        "replies": len(latencies),
        "errors": sum(report.errors for report, _ in runs),
        "throughput": len(latencies) / wall,
        "p50_ms": loadtest.percentile(latencies, 50),
        "p95_ms": loadtest.percentile(latencies, 95),
        "p99_ms": loadtest.percentile(latencies, 99),
        "stored": f"{stored}/{sent}",
        "answered": f"{answered}/{sent}",
        "all_stored": stored == answered == sent,
    }


def stage_medians(results) -> dict[str, float]:
    """Median per-stage timings stored with the bot turns of a load test run."""
    import statistics

    from chatbot.models import Message

    timings = Message.objects.filter(
        role=Message.Role.BOT,
        conversation__public_id__in={r.conversation for r in results if r.conversation},
    ).values_list("timings", "latency_ms")
    stages: dict[str, list[float]] = {}
    for stage_times, latency in timings:
        for stage, value in {**stage_times, "stored_latency_ms": latency}.items():
            stages.setdefault(stage, []).append(value)
    return {stage: round(statistics.median(values), 2) for stage, values in stages.items()}


def pipeline_baseline(model_dir: Path, texts: list[str]) -> dict:
    """The same messages, one at a time, through a plain transformers pipeline."""
    import torch
    from transformers import PreTrainedModel, pipeline
    from transformers.modeling_outputs import SequenceClassifierOutput

    from training.model import load_model

    intent_model, meta = load_model(model_dir, device="cpu")
    intent_model.eval()
    config = intent_model.encoder.config
    config.id2label = dict(enumerate(meta["labels"]))
    config.label2id = {label: i for i, label in config.id2label.items()}

    class MeanPooledClassifier(PreTrainedModel):
        """The intent model (mean pooling + head) behind the interface pipelines expect."""

        config_class = type(config)
        _supports_sdpa = True  # the wrapped encoder does; the wrapper adds only pooling and a head

        def __init__(self, config) -> None:
            super().__init__(config)
            self.intent = intent_model

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            return SequenceClassifierOutput(
                logits=self.intent(input_ids, attention_mask, token_type_ids)
            )

    from transformers import AutoTokenizer

    classify = pipeline(
        "text-classification",
        model=MeanPooledClassifier(config),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        device="cpu",
    )
    torch.set_num_threads(os.cpu_count() or 1)
    for text in texts[:20]:
        classify(text)  # warm up
    started = time.perf_counter()
    for text in texts:
        classify(text)
    wall = time.perf_counter() - started
    return {
        "messages": len(texts),
        "throughput": len(texts) / wall,
        "ms_per_message": 1000 * wall / len(texts),
    }


def speed_probe() -> float:
    """Milliseconds for a fixed Python loop (best of 3): the same figure at every phase of a run
    means the machine kept its speed."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


async def idle_connections(url: str, count: int, hold_s: float) -> dict:
    from websockets.asyncio.client import connect

    from chatbot.loadtest import origin_for

    errors: list[str] = []

    async def one(i: int):
        try:
            ws = await connect(url, origin=origin_for(url), open_timeout=60)
            await asyncio.wait_for(ws.recv(), 60)  # history
            return ws
        except Exception as exc:
            errors.append(f"open: {type(exc).__name__}: {exc}")
            return None

    sockets = []
    for start in range(0, count, 100):  # open in waves, as customers arrive
        sockets += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
    opened = sum(ws is not None for ws in sockets)
    await asyncio.sleep(hold_s)

    async def ping(ws) -> None:
        try:
            await ws.send(json.dumps({"type": "ping"}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert frame["type"] == "pong", frame
        except Exception as exc:
            errors.append(f"ping: {type(exc).__name__}: {exc}")
        finally:
            await ws.close()

    await asyncio.gather(*(ping(ws) for ws in sockets if ws is not None))
    return {"opened": opened, "held_s": hold_s, "errors": len(errors), "error_samples": errors[:3]}


def bench_env(scratch: Path) -> dict[str, str]:
    """The environment of a benchmark's servers: the scratch database, data under `scratch`."""
    return {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "CHATBOT_DATA_DIR": str(scratch / "data"),
        "CHATBOT_VAR_DIR": str(scratch / "var"),
        "HF_HUB_OFFLINE": "1",
        "DJANGO_SETTINGS_MODULE": "chatbot.settings",
        "LOG_LEVEL": "WARNING",
        # As in production: DEBUG off (Django's debug mode records every SQL query).
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "load-benchmark-only",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Each simulated customer writes as fast as it is answered: far past a person's rate.
        "CHATBOT_RATE_LIMIT_PER_MINUTE": "0",
    }


def prepare(env: dict[str, str]) -> None:
    """A fresh scratch database with the demo knowledge base and model, and Django set up on
    it in this process (to check what the load tests stored)."""
    fresh_database()
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "CHATBOT_DATA_DIR", "CHATBOT_VAR_DIR")})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot.settings")
    manage("migrate", "--noinput", env=env)
    manage("load_knowledge_base", env=env)
    manage("prepare_model", env=env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/load_chat.json")
    parser.add_argument("--paced-messages", type=int, default=30)
    parser.add_argument("--saturated-clients", type=int, default=64)
    parser.add_argument("--saturated-messages", type=int, default=40)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    scratch = Path(tempfile.mkdtemp(prefix="load-bench-"))
    env = bench_env(scratch)
    prepare(env)
    from chatbot.management.commands.loadtest import demo_texts
    from chatbot.models import ModelVersion

    texts = demo_texts()
    model_dir = Path(ModelVersion.objects.get(is_live=True).directory)
    from training.inference import IntentClassifier, cpu_has_native_bf16, cpu_name

    served = IntentClassifier.from_dir(model_dir)  # as the server will load it
    figures: dict = {
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "native_bf16": cpu_has_native_bf16(),
        "served_precision": served.precision,
        "precision_ms": served.precision_ms,  # what each candidate took when it loaded
        "traced": served.traced is not None,
        "call_tokens": served.call_tokens,
    }
    del served
    probes = figures["speed_probe_ms"] = {"start": speed_probe()}
    saturated_texts = (texts * 10)[: args.saturated_clients * args.saturated_messages]

    server = Server(8101, env, scratch / "daphne.log")
    try:
        load([server.url], texts, clients=10, messages=5, think=0)  # warm up
        figures["server_ready"] = server.ready()  # the version and precision it serves
        print("server", figures["server_ready"], flush=True)
        figures["alone"] = load([server.url], texts, clients=1, messages=100, think=0.05)
        print("alone", figures["alone"], flush=True)
        figures["paced"] = load(
            [server.url], texts, clients=100, messages=args.paced_messages, think=1.0
        )
        print("paced", figures["paced"], flush=True)
        # (c) on both sides of (b), with the server idle (it then uses no CPU)
        probes["before_saturated"] = speed_probe()
        figures["pipeline_before"] = pipeline_baseline(model_dir, saturated_texts)
        print("pipeline before (b)", figures["pipeline_before"], flush=True)
        figures["saturated"] = load(
            [server.url],
            texts,
            clients=args.saturated_clients,
            messages=args.saturated_messages,
            think=0,
        )
        print("saturated", figures["saturated"], flush=True)
        figures["pipeline_after"] = pipeline_baseline(model_dir, saturated_texts)
        probes["after_saturated"] = speed_probe()
        print("pipeline after (b)", figures["pipeline_after"], flush=True)
        figures["rss_mb"] = server.rss_mb()
        figures["idle"] = asyncio.run(idle_connections(server.url, args.idle, args.idle_seconds))
        figures["rss_mb_after_idle"] = server.rss_mb()
        print("idle", figures["idle"], flush=True)
    finally:
        server.stop()

    before, after = figures["pipeline_before"], figures["pipeline_after"]
    figures["pipeline"] = {
        "messages": before["messages"] + after["messages"],
        "throughput": (before["throughput"] + after["throughput"]) / 2,
        "ms_per_message": (before["ms_per_message"] + after["ms_per_message"]) / 2,
    }

    two_env = {**env, "REDIS_URL": REDIS_URL, "CHATBOT_TORCH_THREADS": "1"}
    one_env = {**env, "REDIS_URL": REDIS_URL}
    import redis

    def saturated(environment: dict, ports: tuple[int, ...]) -> dict:
        """Warm up, then the saturated load test split over one process per port."""
        redis.Redis.from_url(REDIS_URL).flushdb()
        servers = [Server(port, environment, scratch / f"daphne-{port}.log") for port in ports]
        try:
            urls = [s.url for s in servers]
            load(urls, texts, clients=10, messages=5, think=0)
            return load(
                urls,
                texts,
                clients=args.saturated_clients,
                messages=args.saturated_messages,
                think=0,
            )
        finally:
            for s in servers:
                s.stop()

    figures["one_process_redis"] = saturated(one_env, (8103,))
    figures["two_processes"] = saturated(two_env, (8104, 8105))
    figures["one_process_redis_again"] = saturated(one_env, (8106,))
    probes["end"] = speed_probe()
    figures["ratio_saturated_to_pipeline"] = (
        figures["saturated"]["throughput"] / figures["pipeline"]["throughput"]
    )
    one_process = (
        figures["one_process_redis"]["throughput"]
        + figures["one_process_redis_again"]["throughput"]
    ) / 2
    figures["scaling_two_to_one"] = figures["two_processes"]["throughput"] / one_process

    rows = [
        ("(a) one customer alone", figures["alone"]),
        ("(a) 100 customers, ~1 message/s each", figures["paced"]),
        ("(b) saturated, one process", figures["saturated"]),
        ("(f) saturated, one process, Redis layer", figures["one_process_redis"]),
        ("(f) saturated, two processes, Redis layer", figures["two_processes"]),
        ("(f) saturated, one process, Redis layer, again", figures["one_process_redis_again"]),
    ]
    print()
    print(
        f"{figures['cpu']}, {figures['cpus']} cores, native bf16: {figures['native_bf16']};"
        f" the server served its model in {figures['server_ready'].get('precision')} (this"
        f" process timed {figures['precision_ms']} ms and chose {figures['served_precision']};"
        f" traced: {figures['traced']}, a pass costs {figures['call_tokens']:.0f} tokens)"
    )
    print("| run | messages | errors | stored | throughput | p50 | p95 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, f in rows:
        print(
            f"| {name} | {f['messages']} | {f['errors']} | {f['stored']} | "
            f"{f['throughput']:.0f} msg/s | {f['p50_ms']:.1f} ms | {f['p95_ms']:.1f} ms | "
            f"{f['p99_ms']:.1f} ms |"
        )
    for name, p in (("before", before), ("after", after)):
        print(
            f"| (c) transformers pipeline, one at a time, {name} (b) | {p['messages']} | | | "
            f"{p['throughput']:.0f} msg/s | {p['ms_per_message']:.1f} ms/msg | | |"
        )
    print()
    for name, f in rows:
        print(f"stored stage medians (ms), {name}: {f['stage_medians_ms']}")
    ratio, scaling = figures["ratio_saturated_to_pipeline"], figures["scaling_two_to_one"]
    print(f"saturated / pipeline (the mean of before and after): {ratio:.2f}x")
    print(f"two processes / one (the mean of before and after): {scaling:.2f}x")
    print(f"speed probe (ms, lower is faster) at each phase: {probes}")
    rss, rss_idle = figures["rss_mb"], figures["rss_mb_after_idle"]
    print(f"serving process RSS: {rss:.0f} MB, after the idle connections: {rss_idle:.0f} MB")
    idle = figures["idle"]
    print(
        f"idle: {idle['opened']} connections held {idle['held_s']:.0f} s, {idle['errors']} errors"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
