"""The Django project and the chat app."""

from chatbot.celery import app as celery_app

__all__ = ["celery_app"]
