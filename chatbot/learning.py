"""Writes for the intent model: training from the database, registering and promoting versions."""

from __future__ import annotations

import logging
from pathlib import Path

from django.db import transaction

from chatbot.models import IntentExample, ModelVersion
from chatbot.runtime import get_runtime
from training.config import TrainConfig
from training.data import Example, stratified_split
from training.train import Progress, train

logger = logging.getLogger(__name__)


def training_examples() -> list[Example]:
    """Every example of an active intent: curated, reviewed and imported."""
    rows = IntentExample.objects.filter(intent__active=True).values_list("text", "intent__name")
    return [Example(text, label) for text, label in rows.order_by("pk")]


def model_train(
    *, config: TrainConfig, promote: bool = False, progress: Progress | None = None
) -> ModelVersion:
    """Train on the database's examples into a new model directory and register it."""
    from django.conf import settings

    config.base_model = config.base_model or settings.CHATBOT_BASE_MODEL
    train_set, val_set = stratified_split(
        training_examples(), val_fraction=config.val_fraction, seed=config.seed
    )
    store = get_runtime().models
    metrics: dict = {}
    version = store.write(
        lambda directory: metrics.update(
            train(config, train_set, val_set, directory, progress=progress)
        )
    )
    model_version = ModelVersion.objects.create(
        directory=str(store.path(version)),
        base_model=config.base_model,
        kind=ModelVersion.Kind.LORA if config.lora else ModelVersion.Kind.FULL,
        metrics=metrics,
    )
    logger.info("Registered %s: %s", model_version, metrics["validation"])
    if promote:
        model_promote(model_version=model_version)
    return model_version


def model_promote(*, model_version: ModelVersion) -> None:
    """Make a version live: in the database, then (after commit) for every serving process."""
    with transaction.atomic():
        ModelVersion.objects.filter(is_live=True).exclude(pk=model_version.pk).update(is_live=False)
        ModelVersion.objects.filter(pk=model_version.pk).update(is_live=True)
        name = Path(model_version.directory).name
        transaction.on_commit(lambda: get_runtime().models.set_live(name))
    model_version.is_live = True
