"""Do several models know what one does not? Deep ensembles and MC dropout for out-of-scope
detection on BANKING77 with 10 intents held out (an exploration for #4).

    .venv/bin/python benchmarks/oos_ensemble_banking77.py [--models 4] [--passes 10]

Trains `--models` full fine-tunes on the 67 known intents that differ only in their seed (the
order of batches and the dropout masks; `/tmp/oos_ensemble/seed_<n>`, reused when present), then
compares, at 2%, 3% and 5% of in-scope validation messages declined, the shipped score of the
first model alone (calibrated max probability + 5-nearest training example, standardised and
summed) with what the ensemble offers: the max of the averaged calibrated probabilities, the
mutual information between prediction and model (entropy of the mean minus the mean entropy:
how much the models disagree, Lakshminarayanan et al. 2017; Malinin & Gales 2018), the share of
models that agree with the ensemble's intent, the 5-nearest similarity averaged over the models'
spaces, and sums of them. Then the same with `--passes` forward passes of the first model with
its dropout left on (MC dropout, Gal & Ghahramani 2016).
Development data only (as benchmarks/oos_scores_banking77.py): in scope = the validation split,
out of scope = the held-out intents' rows of train.csv. Each score's in-scope accuracy lost is
counted against its own predictions (the ensemble's own intent for ensemble scores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.oos_scores_banking77 import holdout_split
from training.config import TrainConfig
from training.inference import IntentClassifier
from training.pipeline import train_to_directory
from training.train import Batcher, run_model, softmax


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)


def five_nearest(f: np.ndarray, train_f: np.ndarray) -> np.ndarray:
    return np.sort(f @ train_f.T, axis=1)[:, -5:].mean(axis=1)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def dropout_passes(classifier: IntentClassifier, texts: list[str], passes: int, seed: int):
    """Calibrated probabilities (passes, n, labels) with the encoder's dropout on."""
    import torch

    torch.manual_seed(seed)
    batcher = Batcher(classifier.tokenizer, texts, max_length=64)
    model = classifier.model
    out = np.zeros((passes, len(texts), len(classifier.labels)), dtype=np.float32)
    model.train()  # dropout on; nothing is learnt (inference mode, no optimiser)
    try:
        with torch.inference_mode():
            for p in range(passes):
                for indices in batcher.in_order(128):
                    logits = model(**batcher.batch(indices, "cpu")).float().numpy()
                    out[p, indices] = softmax(logits / classifier.temperature)
    finally:
        model.eval()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--root", type=Path, default=Path("/tmp/oos_ensemble"))
    parser.add_argument("--seed", type=int, default=7, help="which 10 intents are held out")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    train, val, oos = holdout_split(args.seed)
    held = {e.label for e in oos}
    dev = val + oos
    is_oos = np.array([e.label in held for e in dev])
    gold = np.array([e.label for e in dev])

    members = []  # per model: calibrated probabilities and normalised embeddings of val and dev
    started = time.perf_counter()
    for n in range(args.models):
        directory = args.root / f"seed_{13 + n}"
        if not directory.exists():
            args.root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            # quantize=False: the scores are read in fp32, so the int8/bf16 checks would only cost
            # time.
            train_to_directory(
                replace(TrainConfig(), seed=13 + n, quantize=False), train, val, directory
            )
            print(f"trained {directory.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        classifier = IntentClassifier.from_dir(directory, precision="fp32", trace=False)
        cache = directory / "oos_ensemble_features.npz"
        if cache.exists():
            arrays = dict(np.load(cache))
        else:
            arrays = {}
            for name, rows in (("train", train), ("val", val), ("dev", dev)):
                batcher = Batcher(classifier.tokenizer, [e.text for e in rows], max_length=64)
                logits, pooled = run_model(classifier.model, batcher, "cpu", both=True)
                arrays[f"{name}_p"] = softmax(logits / classifier.temperature)
                arrays[f"{name}_f"] = normalised(pooled)
            np.savez(cache, **arrays)
        arrays["labels"] = np.array(classifier.labels)
        members.append(arrays)
        if n == 0:
            first = classifier
    labels = members[0]["labels"]
    assert all((m["labels"] == labels).all() for m in members)

    table: dict[str, dict[str, np.ndarray]] = {"val": {}, "dev": {}}
    predicted: dict[str, np.ndarray] = {}  # each score's own intents, on dev

    def add(name: str, val_score: np.ndarray, dev_score: np.ndarray, dev_pred: np.ndarray) -> None:
        table["val"][name], table["dev"][name], predicted[name] = val_score, dev_score, dev_pred

    def add_sum(name: str, parts: list[str]) -> None:
        z = {k: (table["val"][k].mean(), table["val"][k].std()) for k in parts}
        add(
            name,
            *(sum((table[s][k] - z[k][0]) / z[k][1] for k in parts) for s in ("val", "dev")),
            predicted[parts[0]],
        )

    # The first model alone: what ships.
    m0 = members[0]
    single = m0["dev_p"].argmax(axis=1)
    add("one model: max probability", m0["val_p"].max(1), m0["dev_p"].max(1), single)
    add(
        "one model: 5-nearest",
        five_nearest(m0["val_f"], m0["train_f"]),
        five_nearest(m0["dev_f"], m0["train_f"]),
        single,
    )
    add_sum(
        "one model: max probability + 5-nearest (shipped)",
        ["one model: max probability", "one model: 5-nearest"],
    )

    # The ensemble.
    k = len(members)
    stacked = {s: np.stack([m[f"{s}_p"] for m in members]) for s in ("val", "dev")}
    mean = {s: stacked[s].mean(axis=0) for s in stacked}
    ensemble = mean["dev"].argmax(axis=1)
    add(f"{k} models: max mean probability", mean["val"].max(1), mean["dev"].max(1), ensemble)
    add(
        f"{k} models: minus mutual information",
        *(-(entropy(mean[s]) - entropy(stacked[s]).mean(axis=0)) for s in ("val", "dev")),
        ensemble,
    )
    add(
        f"{k} models: share agreeing",
        *(
            (stacked[s].argmax(axis=2) == mean[s].argmax(axis=1)[None, :]).mean(axis=0)
            for s in ("val", "dev")
        ),
        ensemble,
    )
    add(
        f"{k} models: 5-nearest, averaged",
        *(
            np.mean([five_nearest(m[f"{s}_f"], m["train_f"]) for m in members], axis=0)
            for s in ("val", "dev")
        ),
        ensemble,
    )
    add_sum(
        f"{k} models: max mean probability + 5-nearest, averaged",
        [f"{k} models: max mean probability", f"{k} models: 5-nearest, averaged"],
    )
    add_sum(
        f"{k} models: max mean probability + 5-nearest + minus mutual information",
        [
            f"{k} models: max mean probability",
            f"{k} models: 5-nearest, averaged",
            f"{k} models: minus mutual information",
        ],
    )
    add_sum(
        f"one model's shipped sum + {k} models' minus mutual information",
        [
            "one model: max probability + 5-nearest (shipped)",
            f"{k} models: minus mutual information",
        ],
    )

    # MC dropout on the first model.
    t0 = time.perf_counter()
    passes = {
        s: dropout_passes(first, [e.text for e in rows], args.passes, seed=1)
        for s, rows in (("val", val), ("dev", dev))
    }
    mc_seconds = time.perf_counter() - t0
    mc_mean = {s: passes[s].mean(axis=0) for s in passes}
    mc = mc_mean["dev"].argmax(axis=1)
    t = args.passes
    add(f"MC dropout x{t}: max mean probability", mc_mean["val"].max(1), mc_mean["dev"].max(1), mc)
    add(
        f"MC dropout x{t}: minus mutual information",
        *(-(entropy(mc_mean[s]) - entropy(passes[s]).mean(axis=0)) for s in ("val", "dev")),
        mc,
    )
    add_sum(
        f"one model's shipped sum + MC dropout x{t} minus mutual information",
        [
            "one model: max probability + 5-nearest (shipped)",
            f"MC dropout x{t}: minus mutual information",
        ],
    )

    rows = []
    for name, intents in (("one model", single), (f"{k} models", ensemble), ("MC dropout", mc)):
        print(
            f"in-scope validation accuracy, {name}: {(labels[intents] == gold)[~is_oos].mean():.2%}"
        )
    print("| score | in-scope validation declined | OOS recall | in-scope accuracy lost |")
    print("|---|---|---|---|")
    for name in table["val"]:
        right = labels[predicted[name]] == gold
        base = right[~is_oos].mean()
        for share in (0.02, 0.03, 0.05):
            declined = table["dev"][name] < np.quantile(table["val"][name], share)
            lost = 100 * (base - (right & ~declined)[~is_oos].mean())
            recall = declined[is_oos].mean()
            rows.append(
                {
                    "score": name,
                    "declined_val": share,
                    "recall": recall,
                    "lost": lost,
                    "in_scope_accuracy": base,
                }
            )
            print(f"| {name} | {share:.0%} | {recall:.1%} | {lost:.2f} points |")
    print(
        f"{k} models; MC dropout: {t} passes in {mc_seconds:.0f} s; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps({"models": k, "passes": t, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
