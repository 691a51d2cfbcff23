"""Celery tasks: thin interfaces that call a service."""

from celery import shared_task
from django.conf import settings

from chatbot import knowledge, learning
from chatbot.models import TrainingRun


@shared_task(acks_late=True, ignore_result=True)
def answer_index_rebuild() -> str:
    """Re-embed the knowledge base into a new answer index and make it live."""
    return knowledge.answer_index_build()


@shared_task(
    acks_late=True,
    ignore_result=True,
    soft_time_limit=settings.CHATBOT_RETRAIN_SOFT_TIME_LIMIT,
    time_limit=settings.CHATBOT_RETRAIN_TIME_LIMIT,
)
def model_retrain(run_id: int | None = None) -> str:
    """Retrain the intent model (nightly from beat, or a run queued from the admin).

    Idempotent: a redelivered message finds its run no longer queued and does nothing; the
    lock lets one run train at a time across every worker.
    """
    run = learning.training_run_execute(
        run_id=run_id,
        trigger=TrainingRun.Trigger.MANUAL if run_id else TrainingRun.Trigger.NIGHTLY,
    )
    return f"{run}: {run.reason or run.error}" if run else f"no training run {run_id}"
