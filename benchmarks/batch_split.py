"""The served forward pass on chat-sized micro-batches: one pass per batch, or split by length.

    .venv/bin/python benchmarks/batch_split.py [--data ../shared/data/banking77] [--json F]

A chat server's micro-batch gathers whatever messages arrived together, so their lengths vary,
and padding every message to the longest makes the model compute 2 to 3 times the real tokens.
`Batcher.in_order(call_tokens=...)` splits a batch where that padding costs more than another
pass; `IntentClassifier.from_dir` measures what a pass costs beyond its tokens on this machine.

Trains a model on 20% of BANKING77's train.csv (one epoch: its accuracy is not the point), then,
on one thread as the server runs it, times the same 200 micro-batches (1 to 16 messages drawn
from train.csv rows it did not train on) in each precision, with and without the split, and
how often each precision's top intent agrees with fp32's. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig
from training.data import load_csv, stratified_split

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
BATCHES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/batch_split.json"))
    args = parser.parse_args()

    import torch

    from training.inference import IntentClassifier, cpu_has_native_bf16, cpu_name
    from training.pipeline import train_to_directory

    torch.set_num_threads(1)  # as a 2-core server runs it (CHATBOT_TORCH_THREADS)
    examples = load_csv(args.data / "train.csv", label_col="category")
    rest, trained = stratified_split(examples, val_fraction=0.2, seed=5)
    train_set, val_set = stratified_split(trained, val_fraction=0.1, seed=5)
    rng = random.Random(7)
    texts = [e.text for e in rest]
    batches = [rng.sample(texts, rng.randint(1, 16)) for _ in range(BATCHES)]
    messages = sum(map(len, batches))

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "model"
        train_to_directory(TrainConfig(epochs=1), train_set, val_set, out)
        figures: dict = {
            "cpu": cpu_name(),
            "native_bf16": cpu_has_native_bf16(),
            "messages": messages,
            "batches": BATCHES,
        }
        reference: list[str] = []
        for precision in ("fp32", "int8", "bf16"):
            classifier = IntentClassifier.from_dir(out, precision=precision)
            measured = classifier.call_tokens
            row: dict = {"call_tokens": round(measured, 1)}
            for label, call_tokens in (("one_pass", None), ("split", measured)):
                classifier.call_tokens = call_tokens
                for batch in batches[:10]:  # warm the kernels up
                    classifier.analyse(batch)
                intents, seconds = [], []
                for batch in batches:
                    started = time.perf_counter()
                    predictions, _ = classifier.analyse(batch)
                    seconds.append(time.perf_counter() - started)
                    intents += [p.intent for p in predictions]
                if precision == "fp32" and label == "one_pass":
                    reference = intents
                row[label] = {
                    "ms_per_message": round(sum(seconds) * 1000 / messages, 2),
                    "median_batch_ms": round(statistics.median(seconds) * 1000, 2),
                    "agrees_with_fp32": round(
                        sum(a == b for a, b in zip(intents, reference, strict=True)) / messages, 4
                    ),
                }
            row["speedup"] = round(
                row["one_pass"]["ms_per_message"] / row["split"]["ms_per_message"], 2
            )
            figures[precision] = row
            print(precision, row, flush=True)

    print(f"\n{figures['cpu']} (native bf16: {figures['native_bf16']}), one torch thread")
    print(f"{messages} messages in {BATCHES} micro-batches of 1 to 16\n")
    print("| precision | pass costs (tokens) | one pass | split by length | speed-up |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "int8", "bf16"):
        row = figures[precision]
        one, split = row["one_pass"], row["split"]
        print(
            f"| {precision} | {row['call_tokens']:.0f} | {one['ms_per_message']:.2f} ms/msg "
            f"(top-1 = fp32: {one['agrees_with_fp32']:.1%}) | {split['ms_per_message']:.2f} ms/msg "
            f"(top-1 = fp32: {split['agrees_with_fp32']:.1%}) | {row['speedup']:.2f}x |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
