"""Out-of-scope detection from changes to training, BANKING77 with 10 intents held out.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/oos_outlier_exposure.py \
        [--variants baseline,text,mixup,margin,leaveout] [--epochs 3] [--oe-weight 0.5] \
        [--scale 30 --margin 0.35] [--leave-out 0.15] [--supcon-temperature 0.1]

An exploration for out-of-scope detection that needs no real out-of-scope data: outlier exposure
with synthetic in-domain negatives, and a margin loss. During the
fine-tune (the LP-FT loop of training.train.train, rewritten here so that a loss can be added) a
second loss pushes the softmax of synthetic negatives towards uniform (the outlier-exposure loss
of Hendrycks et al. 2019: the mean over classes of -log_softmax), built from the known-intent
training texts only:

- baseline: no negatives (OE weight 0), the same loop, for a comparison within one run;
- text: the first half of the words of a training sentence of intent A followed by the second
  half of one of intent B != A;
- mixup: convex combinations (lambda in [0.3, 0.7]) of the pooled embeddings of two examples of
  different intents in the batch, re-normalised and fed through the head (Zhan et al. 2021).
- margin: no negatives; the linear head becomes a cosine head trained with an additive margin
  (large margin cosine loss, Lin & Xu 2019, "Deep Unknown Intent Detection with Margin Loss"):
  logits = s * (cos(x, w_j) - m [j = y]). It pulls each intent's examples into a tighter cone
  around its class vector, which is what a distance-based out-of-scope score needs.
- leaveout: real in-domain outliers instead of made-up ones. Each batch leaves a random share of
  the known intents out of its label set; the softmax of their examples over the intents left in
  is pushed towards uniform, next to the usual cross-entropy over every intent. An unseen intent
  is a near neighbour of known ones, and this is the one situation the known data can simulate
  (Vyas et al. 2018, "Out-of-distribution detection using an ensemble of self supervised
  leave-out classifiers", with one model and a new split every batch instead of an ensemble).
- supcon: no negatives; a supervised contrastive loss (Khosla et al. 2020) on the normalised
  pooled embeddings beside the cross-entropy, each example's positives being the other examples
  of its intent in the batch and in a queue of the last 2,048 embeddings (detached, as the
  momentum queue of KNN-contrastive learning, Zhou et al. 2022, without the momentum encoder). It
  gathers each intent into a tight cluster, which the 5-nearest score needs; contrastive training
  is what makes nearest-neighbour out-of-distribution scores work in Sun et al. 2022. Its weight
  is --oe-weight.

Evaluated as benchmarks/oos_scores_banking77.py does, on development data only: in scope = the
validation split of the 67 known intents, out of scope = the held-out intents' rows of train.csv.
For each score (calibrated max probability, mean cosine similarity of the 5 nearest training
examples in the fine-tuned space, and their sum standardised on in-scope validation) the lowest
2%, 3% and 5% of in-scope validation messages are declined; prints out-of-scope recall and the
in-scope accuracy that costs. test.csv is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oos_scores_banking77 import holdout_split

from training.config import TrainConfig
from training.data import build_label_maps
from training.model import IntentModel, load_encoder
from training.train import (
    Batcher,
    _parameter_groups,
    default_base_model,
    fit_probe,
    fit_temperature,
    knn_similarity,
    length_bucketed_batches,
    lr_factor,
    run_model,
    seed_everything,
    softmax,
)

SHARES = (0.02, 0.03, 0.05)
SCORES = ("max probability", "5-nearest (fine-tuned)", "max probability + 5-nearest")


def oe_loss(logits):
    """Cross-entropy to the uniform distribution: the mean over classes of -log_softmax."""
    import torch

    return -torch.log_softmax(logits.float(), dim=1).mean(dim=1).mean()


class TextNegatives:
    """First half of the words of a sentence of intent A + second half of one of intent B != A."""

    def __init__(self, texts: list[str], labels: np.ndarray, rng: random.Random) -> None:
        self.words = [t.split() for t in texts]
        self.labels = labels
        self.rng = rng

    def _halves(self, i: int) -> tuple[list[str], list[str]]:
        words = self.words[i]
        cut = max(1, len(words) // 2)
        return words[:cut], words[cut:] or words[-1:]

    def sample(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            a, b = self.rng.randrange(len(self.words)), self.rng.randrange(len(self.words))
            if self.labels[a] == self.labels[b]:
                continue
            out.append(" ".join(self._halves(a)[0] + self._halves(b)[1]))
        return out


def leave_out_loss(logits, target, fraction: float, generator):
    """Outlier exposure with real in-domain outliers: a random `fraction` of the intents is left
    out of this batch's label set, and the softmax of their examples over the remaining intents is
    pushed towards uniform (Vyas et al. 2018 train an ensemble of leave-out classifiers; here one
    model sees a new split every batch)."""
    import torch

    left_out = torch.rand(logits.shape[1], generator=generator) < fraction
    rows = left_out[target.cpu()].to(logits.device)
    if not rows.any():
        return torch.zeros((), device=logits.device)
    kept = (~left_out).to(logits.device)
    log_probs = torch.log_softmax(logits[rows][:, kept].float(), dim=1)
    return -log_probs.mean(dim=1).mean()


class SupConQueue:
    """The supervised contrastive loss of a batch against itself and the last `size` embeddings."""

    def __init__(self, size: int, temperature: float) -> None:
        self.size = size
        self.temperature = temperature
        self.keys = None
        self.labels = None

    def loss(self, z, y):
        import torch

        z = z.float()
        if self.keys is None:
            keys, key_labels = z, y
        else:
            keys, key_labels = torch.cat([z, self.keys]), torch.cat([y, self.labels])
        sim = z @ keys.T / self.temperature
        own = torch.zeros_like(sim, dtype=torch.bool)
        own[:, : len(z)] = torch.eye(len(z), dtype=torch.bool, device=z.device)
        sim = sim.masked_fill(own, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        positive = (y[:, None] == key_labels[None, :]) & ~own
        count = positive.sum(dim=1)
        has = count > 0
        self.keys, self.labels = keys.detach()[: self.size], key_labels[: self.size]
        if not has.any():
            return torch.zeros((), device=z.device)
        per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1)[has] / count[has]
        return per_anchor.mean()


def cosine_head(weight, scale: float):
    """A head whose logits are scale * cos(pooled, w_j): no bias, both sides L2-normalised."""
    import torch

    class _CosineHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.nn.functional.normalize(weight.clone(), dim=1))
            self.scale = scale

        def forward(self, x):
            x = torch.nn.functional.normalize(x, dim=-1)
            return self.scale * x @ torch.nn.functional.normalize(self.weight, dim=1).T

    return _CosineHead()


def train_variant(
    variant: str,
    config: TrainConfig,
    train,
    val,
    *,
    oe_weight: float,
    neg: int,
    scale: float = 30.0,
    margin: float = 0.35,
    leave_out: float = 0.15,
    supcon_temperature: float = 0.1,
):
    """The LP-FT loop of training.train.train plus an optional outlier-exposure loss.

    Returns the model (best validation macro-F1 epoch, the probe counting as epoch 0), the
    tokenizer and a summary of the run.
    """
    import torch
    from sklearn.metrics import f1_score
    from transformers import AutoTokenizer

    started = time.perf_counter()
    base_model = config.base_model or default_base_model()
    seed_everything(config.seed)
    device = "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    label2id, _ = build_label_maps(e.label for e in train)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = IntentModel(
        load_encoder(base_model, dropout=config.dropout),
        len(label2id),
        pooling=config.pooling,
        normalize=config.pooling == "mean",
        dropout=config.dropout,
    ).to(device)
    train_texts = [e.text for e in train]
    train_batcher = Batcher(tokenizer, train_texts, max_length=config.max_length)
    val_batcher = Batcher(tokenizer, [e.text for e in val], max_length=config.max_length)
    y_train = np.array([label2id[e.label] for e in train])
    y_val = np.array([label2id[e.label] for e in val])

    def validate() -> float:
        pred = run_model(model, val_batcher, device).argmax(axis=1)
        return float(f1_score(y_val, pred, average="macro"))

    def state() -> dict:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    weight, bias = fit_probe(
        run_model(model, train_batcher, device, embed=True), y_train, len(label2id)
    )
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    if variant == "margin":
        # Start from the class means of the normalised embeddings: the probe's directions are
        # fitted for a biased linear head, the means are what a cosine head wants.
        pooled_train = run_model(model, train_batcher, device, embed=True)
        means = np.stack([pooled_train[y_train == c].mean(axis=0) for c in range(len(label2id))])
        model.head = cosine_head(torch.from_numpy(means).float(), scale).to(device)
    best_f1, best_epoch, best_state = validate(), 0, state()
    history = [{"epoch": 0, "macro_f1": best_f1}]
    print(f"[{variant}] probe: val macro-F1 {best_f1:.4f}", flush=True)

    optimizer = torch.optim.AdamW(_parameter_groups(model, config))
    rng = random.Random(config.seed)
    negatives = TextNegatives(train_texts, y_train, random.Random(config.seed + 1))
    mix_rng = torch.Generator().manual_seed(config.seed)
    queue = SupConQueue(2048, supcon_temperature)
    steps_per_epoch = -(-len(train) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(total_steps * config.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=warmup)
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    use_oe = oe_weight > 0 and variant != "baseline"
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        running = running_oe = 0.0
        batches = length_bucketed_batches(train_batcher.lengths, config.batch_size, rng)
        for step, indices in enumerate(batches, start=1):
            batch = train_batcher.batch(indices, device)
            target = torch.from_numpy(y_train[indices]).to(device)
            pooled = model.embed(**batch)
            logits = model.head(model.dropout(pooled)).float()
            if variant == "margin":
                logits = logits - scale * margin * torch.nn.functional.one_hot(
                    target, logits.shape[1]
                )
            loss = loss_fn(logits, target)
            extra = torch.zeros(())
            if use_oe and variant == "text":
                neg_batch = tokenizer(
                    negatives.sample(neg),
                    truncation=True,
                    max_length=config.max_length,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                extra = oe_loss(model(**neg_batch))
            elif use_oe and variant == "supcon":
                extra = queue.loss(pooled, target)
            elif use_oe and variant == "leaveout":
                extra = leave_out_loss(logits, target, leave_out, mix_rng)
            elif use_oe and variant == "mixup":
                perm = torch.randperm(len(indices), generator=mix_rng)
                keep = target != target[perm]
                if keep.any():
                    lam = 0.3 + 0.4 * torch.rand(int(keep.sum()), 1, generator=mix_rng)
                    mixed = lam * pooled[keep] + (1 - lam) * pooled[perm][keep]
                    mixed = torch.nn.functional.normalize(mixed, dim=-1)
                    extra = oe_loss(model.head(model.dropout(mixed)))
            total = loss + oe_weight * extra if use_oe else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item()
            running_oe += float(extra.item())
            if step % 50 == 0:
                print(
                    f"[{variant}] epoch {epoch} step {step}/{len(batches)} "
                    f"ce {running / step:.3f} oe {running_oe / step:.3f} "
                    f"({time.perf_counter() - epoch_started:.0f}s)",
                    flush=True,
                )
        f1 = validate()
        history.append(
            {
                "epoch": epoch,
                "ce": running / len(batches),
                "oe": running_oe / len(batches),
                "macro_f1": f1,
                "seconds": round(time.perf_counter() - epoch_started, 1),
            }
        )
        print(f"[{variant}] epoch {epoch}: {history[-1]}", flush=True)
        if f1 > best_f1:
            best_f1, best_epoch, best_state = f1, epoch, state()
    model.load_state_dict(best_state)
    summary = {
        "variant": variant,
        "scale_margin": [scale, margin] if variant == "margin" else None,
        "supcon_temperature": supcon_temperature if variant == "supcon" else None,
        "oe_weight": oe_weight if use_oe else 0.0,
        "best_epoch": best_epoch,
        "best_macro_f1": best_f1,
        "history": history,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return model, tokenizer, label2id, summary


def evaluate(model, tokenizer, label2id, train, val, oos, max_length: int) -> dict:
    """OOS recall and in-scope accuracy lost when declining the lowest share of validation."""

    def both(texts):
        return run_model(model, Batcher(tokenizer, texts, max_length=max_length), "cpu", both=True)

    train_emb = run_model(
        model,
        Batcher(tokenizer, [e.text for e in train], max_length=max_length),
        "cpu",
        embed=True,
    )
    val_logits, val_emb = both([e.text for e in val])
    oos_logits, oos_emb = both([e.text for e in oos])
    y_val = np.array([label2id[e.label] for e in val])
    temperature = fit_temperature(val_logits, y_val)
    on_val = {
        SCORES[0]: softmax(val_logits / temperature).max(axis=1),
        SCORES[1]: knn_similarity(val_emb, train_emb),
    }
    on_oos = {
        SCORES[0]: softmax(oos_logits / temperature).max(axis=1),
        SCORES[1]: knn_similarity(oos_emb, train_emb),
    }
    first, second = SCORES[0], SCORES[1]
    for table in (on_val, on_oos):
        table[SCORES[2]] = sum(
            (table[k] - on_val[k].mean()) / on_val[k].std() for k in (first, second)
        )
    right = val_logits.argmax(axis=1) == y_val
    accuracy = float(right.mean())
    rows = []
    for name in SCORES:
        for share in SHARES:
            threshold = np.quantile(on_val[name], share)
            declined = on_val[name] < threshold
            rows.append(
                {
                    "score": name,
                    "share": share,
                    "oos_recall": float((on_oos[name] < threshold).mean()),
                    "in_scope_declined": float(declined.mean()),
                    "lost_points": 100 * (accuracy - float((right & ~declined).mean())),
                }
            )
    return {"val_accuracy": accuracy, "temperature": temperature, "rows": rows}


def print_table(results: list[dict]) -> None:
    print()
    print("| variant | score | in-scope val declined | OOS recall | in-scope accuracy lost |")
    print("|---|---|---|---|---|")
    for result in results:
        for row in result["eval"]["rows"]:
            print(
                f"| {result['variant']} | {row['score']} | {row['share']:.0%} | "
                f"{row['oos_recall']:.1%} | {row['lost_points']:.2f} points |"
            )
    print()
    print("| variant | val accuracy | best epoch | train wall (s) |")
    print("|---|---|---|---|")
    for result in results:
        print(
            f"| {result['variant']} | {result['eval']['val_accuracy']:.2%} | "
            f"{result['best_epoch']} | {result['train_seconds']} |"
        )
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="baseline,text,mixup")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--oe-weight", type=float, default=0.5)
    parser.add_argument("--negatives", type=int, default=16, help="text negatives per batch")
    parser.add_argument("--scale", type=float, default=30.0, help="margin variant: s")
    parser.add_argument("--margin", type=float, default=0.35, help="margin variant: m")
    parser.add_argument(
        "--leave-out", type=float, default=0.15, help="leaveout variant: share of intents per batch"
    )
    parser.add_argument("--supcon-temperature", type=float, default=0.1, help="supcon variant: tau")
    parser.add_argument("--seed", type=int, default=7, help="which 10 intents are held out")
    parser.add_argument("--limit", type=int, default=0, help="smoke test: first N of each split")
    parser.add_argument("--json", type=Path, default=Path("/tmp/oos_outlier_exposure.json"))
    args = parser.parse_args()
    config = TrainConfig(epochs=args.epochs)
    train, val, oos = holdout_split(args.seed)
    held = {e.label for e in oos}
    if args.limit:
        rng = random.Random(0)
        train, val, oos = (
            rng.sample(rows, min(args.limit, len(rows))) for rows in (train, val, oos)
        )
        val = [e for e in val if e.label in {t.label for t in train}]
    print(f"train {len(train)}, val {len(val)}, OOS {len(oos)}; held out {sorted(held)}")
    results = []
    for variant in args.variants.split(","):
        model, tokenizer, label2id, summary = train_variant(
            variant,
            config,
            train,
            val,
            oe_weight=args.oe_weight,
            neg=args.negatives,
            scale=args.scale,
            margin=args.margin,
            leave_out=args.leave_out,
            supcon_temperature=args.supcon_temperature,
        )
        summary["eval"] = evaluate(model, tokenizer, label2id, train, val, oos, config.max_length)
        results.append(summary)
        args.json.write_text(json.dumps(results, indent=2))
        print_table(results)


if __name__ == "__main__":
    main()
