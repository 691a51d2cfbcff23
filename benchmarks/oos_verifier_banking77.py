"""A cross-encoder "same intent?" verifier as an out-of-scope score, BANKING77 with 10 intents
held out (an exploration for #4).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/oos_verifier_banking77.py \
        [--model-dir /tmp/holdout_model] [--neighbours 5] [--limit N]

The intent model's softmax is relative: a message of an unseen intent next to a known one (a card
*payment* pending, next to pending_transfer) still gets a confident top intent, because every
other known intent fits it worse. A verifier judges one pair at a time (DNNC, Zhang et al. 2020,
"Discriminative Nearest Neighbor Few-Shot Intent Detection by Transferring Natural Language
Inference Models"): the message and a known example go through one encoder together, and a
logistic output says whether they ask the same thing. Trained on pairs of the known intents'
training examples (for each example: one of the same intent, one of an intent whose centroid is
among its 6 nearest in the fine-tuned space, one of any other intent), it has learnt that
"pending" questions about different things are different questions, which is what an unseen
intent next to a known one needs.

The score of a message is the verifier's mean probability over the `--neighbours` training
examples of its predicted intent nearest to it (fine-tuned space). It is compared, alone and
added to the shipped score (calibrated probability + 5-nearest similarity, each standardised on
in-scope validation), by declining the lowest 3% and 5% of in-scope validation messages.
Development data only, as in benchmarks/oos_scores_banking77.py: in scope = the validation split,
out of scope = the held-out intents' rows of train.csv. The intent model is the one
oos_scores_banking77.py trains (reused from --model-dir when it is there). About 20 minutes on
2 CPU cores, most of it the verifier's one epoch over 23,000 pairs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oos_scores_banking77 import holdout_split

from retrieval.encoder import mean_pool
from training.config import TrainConfig
from training.inference import IntentClassifier
from training.model import load_encoder
from training.pipeline import train_to_directory
from training.train import (
    Batcher,
    default_base_model,
    knn_similarity,
    lr_factor,
    run_model,
    seed_everything,
    softmax,
)

NEAR_INTENTS = 6


class Verifier:
    """The packaged encoder over "[CLS] a [SEP] b [SEP]", mean-pooled, and one logistic unit."""

    def __init__(self, base_model: str) -> None:
        import torch
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.encoder = load_encoder(base_model, dropout=0.1)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)

    def logits(self, first: list[str], second: list[str]):
        batch = self.tokenizer(
            first, second, truncation=True, max_length=96, padding=True, return_tensors="pt"
        )
        hidden = self.encoder(**batch).last_hidden_state
        return self.head(mean_pool(hidden, batch["attention_mask"]))[:, 0]

    def fit(self, texts: list[str], pairs: list[tuple[int, int, float]], *, batch_size: int = 32):
        import torch

        self.encoder.train()
        optimizer = torch.optim.AdamW(
            [
                {"params": self.encoder.parameters(), "lr": 5e-5},
                {"params": self.head.parameters(), "lr": 1e-3},
            ],
            weight_decay=0.01,
        )
        steps = len(pairs) // batch_size
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps=steps, warmup_steps=steps // 15)
        )
        started = time.perf_counter()
        for step in range(steps):
            chunk = pairs[step * batch_size : (step + 1) * batch_size]
            first, second = [texts[i] for i, _, _ in chunk], [texts[j] for _, j, _ in chunk]
            if step % 2:  # both orders, so that the judgement does not depend on it
                first, second = second, first
            target = torch.tensor([same for _, _, same in chunk])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                self.logits(first, second), target
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [*self.encoder.parameters(), *self.head.parameters()], 1.0
            )
            optimizer.step()
            scheduler.step()
            if step % 100 == 0:
                print(
                    f"verifier step {step}/{steps} loss {loss.item():.3f} "
                    f"({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
        self.encoder.eval()

    def probabilities(self, first: list[str], second: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(first), 80):
                end = start + 80
                out.append(torch.sigmoid(self.logits(first[start:end], second[start:end])))
        return torch.cat(out).numpy()


def training_pairs(y: np.ndarray, embeddings: np.ndarray, rng) -> list[tuple[int, int, float]]:
    """For each training example: a same-intent partner, a partner from one of its intent's
    nearest intents (by centroid, fine-tuned space) and one from any other intent."""
    intents = np.unique(y)
    members = {c: np.flatnonzero(y == c) for c in intents}
    centroids = np.stack([embeddings[members[c]].mean(axis=0) for c in intents])
    closeness = centroids @ centroids.T
    np.fill_diagonal(closeness, -np.inf)
    near = np.argsort(-closeness, axis=1)[:, :NEAR_INTENTS]
    position = {c: n for n, c in enumerate(intents)}
    pairs = []
    for i, c in enumerate(y):
        same = members[c][members[c] != i]
        if not len(same):
            continue
        pairs.append((i, int(rng.choice(same)), 1.0))
        near_intent = intents[rng.choice(near[position[c]])]
        pairs.append((i, int(rng.choice(members[near_intent])), 0.0))
        other = intents[intents != c]
        pairs.append((i, int(rng.choice(members[rng.choice(other)])), 0.0))
    rng.shuffle(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/holdout_model"))
    parser.add_argument("--seed", type=int, default=7, help="which 10 intents are held out")
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="smoke test: first N of each split")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(0)
    train, val, oos = holdout_split(args.seed)
    if not args.model_dir.exists():
        train_to_directory(TrainConfig(), train, val, args.model_dir)
    if args.limit:
        rng = random.Random(0)
        train, val, oos = (rng.sample(rows, args.limit) for rows in (train, val, oos))
    classifier = IntentClassifier.from_dir(args.model_dir, precision="fp32")
    label_id = {label: i for i, label in enumerate(classifier.labels)}

    def run(rows) -> tuple[np.ndarray, np.ndarray]:
        batcher = Batcher(classifier.tokenizer, [e.text for e in rows], max_length=64)
        logits, embeddings = run_model(classifier.model, batcher, "cpu", both=True)
        return logits, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

    (_, train_emb), (val_logits, val_emb), (oos_logits, oos_emb) = map(run, (train, val, oos))
    y_train = np.array([label_id[e.label] for e in train])
    texts = [e.text for e in train]
    verifier = Verifier(default_base_model())
    verifier.fit(texts, training_pairs(y_train, train_emb, np.random.default_rng(0)))

    members_of = [np.flatnonzero(y_train == i) for i in range(len(classifier.labels))]

    def verified(rows, logits: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        first, second, owner = [], [], []
        for n, intent in enumerate(logits.argmax(axis=1)):
            members = members_of[intent]
            if not len(members):  # only in a --limit smoke test
                members = np.arange(len(y_train))
            nearest = members[np.argsort(-(train_emb[members] @ embeddings[n]))][: args.neighbours]
            first += [rows[n].text] * len(nearest)
            second += [texts[j] for j in nearest]
            owner += [n] * len(nearest)
        probabilities, owner = verifier.probabilities(first, second), np.array(owner)
        return np.array([probabilities[owner == n].mean() for n in range(len(rows))])

    temperature = classifier.temperature
    on_val = {
        "probability": softmax(val_logits / temperature).max(axis=1),
        "5-nearest": knn_similarity(val_emb, train_emb),
        "verifier": verified(val, val_logits, val_emb),
    }
    on_oos = {
        "probability": softmax(oos_logits / temperature).max(axis=1),
        "5-nearest": knn_similarity(oos_emb, train_emb),
        "verifier": verified(oos, oos_logits, oos_emb),
    }

    def standard(name: str, values: np.ndarray) -> np.ndarray:
        return (values - on_val[name].mean()) / on_val[name].std()

    for combination in (
        ("probability", "5-nearest"),
        ("probability", "verifier"),
        ("probability", "5-nearest", "verifier"),
    ):
        name = " + ".join(combination)
        on_val[name] = sum(standard(k, on_val[k]) for k in combination)
        on_oos[name] = sum(standard(k, on_oos[k]) for k in combination)
    right = val_logits.argmax(axis=1) == np.array([label_id[e.label] for e in val])
    print("| score | in-scope validation declined | OOS recall | in-scope accuracy lost |")
    print("|---|---|---|---|")
    for name, values in on_val.items():
        for share in (0.03, 0.05):
            threshold = np.quantile(values, share)
            lost = 100 * (right.mean() - (right & (values >= threshold)).mean())
            recall = (on_oos[name] < threshold).mean()
            print(f"| {name} | {share:.0%} | {recall:.1%} | {lost:.2f} points |", flush=True)


if __name__ == "__main__":
    main()
