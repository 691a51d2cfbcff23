"""Training runs that write a whole model directory or nothing, with an optional search."""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from retrieval.store import VersionStore, sync_dir
from training.config import TrainConfig
from training.data import Example
from training.train import Progress, refit_policy, train

logger = logging.getLogger(__name__)


def train_to_directory(
    config: TrainConfig,
    train_set: Sequence[Example],
    val_set: Sequence[Example],
    out: Path,
    *,
    search_minutes: float = 0,
    progress: Progress | None = None,
    out_of_scope: Sequence[str] = (),
) -> dict:
    """Train into `out`, which appears only once complete; returns the metrics.
    `out_of_scope`: messages reviewed as outside every intent (see training.train.train)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory for the model.")
    store = VersionStore(out.parent)
    if search_minutes <= 0:
        metrics: dict = {}

        def write(directory: Path) -> None:
            metrics.update(
                train(
                    config,
                    train_set,
                    val_set,
                    directory,
                    progress=progress,
                    out_of_scope=out_of_scope,
                )
            )

        store.write(write, version=out.name)
        return metrics
    return _search(
        config,
        train_set,
        val_set,
        out,
        store,
        budget_s=search_minutes * 60,
        out_of_scope=out_of_scope,
    )


def refit_to_directory(
    source: Path,
    val_set: Sequence[Example],
    out: Path,
    *,
    out_of_scope: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict:
    """`source`'s weights with its decision policy fitted again (training.train.refit_policy)
    into `out`, which appears only once complete; returns the metrics."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory for the model.")
    metrics: dict = {}
    VersionStore(out.parent).write(
        lambda directory: metrics.update(
            refit_policy(source, val_set, directory, out_of_scope=out_of_scope, progress=progress)
        ),
        version=out.name,
    )
    return metrics


def search_space(config: TrainConfig) -> list[TrainConfig]:
    """Learning rates by epochs (by LoRA ranks), the given config first, the rest shuffled."""
    epochs = [3, 5]
    if config.lora:
        grid = [
            replace(config, lora_lr=lr, epochs=n, lora_rank=r, lora_alpha=2 * r)
            for lr, n, r in itertools.product([3e-4, 5e-4, 1e-3], epochs, [8, 16, 32])
        ]
    else:
        grid = [
            replace(config, lr=lr, epochs=n)
            for lr, n in itertools.product([5e-5, 8e-5, 1.2e-4], epochs)
        ]
    random.Random(config.seed).shuffle(grid)
    return [config, *[c for c in grid if c != config]]


def _search(
    config,
    train_set,
    val_set,
    out: Path,
    store: VersionStore,
    *,
    budget_s: float,
    out_of_scope: Sequence[str] = (),
):
    """Train candidates until the budget would run out; keep the best on validation macro-F1."""
    started = time.monotonic()
    best: tuple[float, str, dict] | None = None
    trials_run = 0
    last = 0.0
    for number, candidate in enumerate(search_space(config), start=1):
        elapsed = time.monotonic() - started
        # The last trial predicts the next (the first also pays for imports and caches).
        if best is not None and elapsed + last > budget_s:
            break
        metrics: dict = {}
        trials_run = number
        trial_started = time.monotonic()
        version = store.write(
            lambda d, c=candidate, m=metrics: m.update(
                train(c, train_set, val_set, d, out_of_scope=out_of_scope)
            ),
            version=f".trial-{out.name}-{number}",
        )
        last = time.monotonic() - trial_started
        score = metrics["validation"]["macro_f1"]
        logger.info(
            "Trial %d (lr %s, LoRA lr %s, epochs %s, rank %s): macro-F1 %.4f",
            number,
            candidate.lr,
            candidate.lora_lr,
            candidate.epochs,
            candidate.lora_rank,
            score,
        )
        if best is None or score > best[0]:
            if best is not None:
                shutil.rmtree(store.path(best[1]), ignore_errors=True)
            best = (score, version, {**metrics, "search": {"best_trial": number}})
        else:
            shutil.rmtree(store.path(version), ignore_errors=True)
    assert best is not None
    store.path(best[1]).rename(out)
    sync_dir(out.parent)
    best[2]["search"]["trials"] = trials_run
    return best[2]
