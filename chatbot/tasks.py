"""Celery tasks: thin interfaces that call a service."""

from celery import shared_task

from chatbot import knowledge


@shared_task(acks_late=True, ignore_result=True)
def answer_index_rebuild() -> str:
    """Re-embed the knowledge base into a new answer index and make it live."""
    return knowledge.answer_index_build()
