"""Reads: what the chat, the admin and the health check need to know."""

from __future__ import annotations

from django.conf import settings

from chatbot.models import Conversation, Message, ModelVersion
from chatbot.runtime import get_runtime


def conversation_history(*, conversation: Conversation, limit: int | None = None) -> list[Message]:
    """The latest messages of a conversation, oldest first."""
    limit = limit or settings.CHATBOT_HISTORY_LIMIT
    latest = conversation.messages.order_by("-created_at", "-id")[:limit]
    return list(reversed(latest))


def reply_to(*, message_id: int) -> Message | None:
    return Message.objects.select_related("intent").filter(in_reply_to_id=message_id).first()


def live_index_version() -> str | None:
    return get_runtime().indexes.live()


def model_version_id(*, name: str) -> int | None:
    """The ModelVersion row of a live model's directory name (the runtime knows only names)."""
    if not name:
        return None
    directory = str(get_runtime().models.path(name))
    return ModelVersion.objects.filter(directory=directory).values_list("pk", flat=True).first()
