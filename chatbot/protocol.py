"""The widget's JSON protocol: parsing client frames and shaping server frames.

Parsing is strict and gives every bad frame a stable error code, so a client (or a load tester)
can tell what it did wrong while the connection stays open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings

from chatbot.models import Message

if TYPE_CHECKING:
    from chatbot.agent import AgentReply

MAX_CLIENT_ID_CHARS = 64


class ProtocolError(Exception):
    def __init__(self, code: str, detail: str, *, in_reply_to: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.in_reply_to = in_reply_to

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error", "code": self.code, "detail": self.detail}
        if self.in_reply_to:
            frame["in_reply_to"] = self.in_reply_to
        return frame


@dataclass(frozen=True)
class CustomerText:
    text: str
    client_id: str


@dataclass(frozen=True)
class Rating:
    score: int


@dataclass(frozen=True)
class Feedback:
    """The customer's verdict on one of the bot's answers: did it help?"""

    reply_id: int
    helpful: bool


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Typing:
    """Someone is writing a message (the customer in the widget, or a person of the support team
    on the conversation's admin page): the other side shows it for a few seconds."""


ClientFrame = CustomerText | Rating | Feedback | Ping | Typing


def parse_client_frame(raw: str) -> ClientFrame:
    """Turn one text frame into a typed request, or raise ProtocolError saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        # JSONDecodeError is a ValueError, and so is a number longer than Python converts.
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_frame", "A frame must be a JSON object with a 'type'.")
    kind = data.get("type")
    if kind == "message":
        return _parse_message(data)
    if kind == "rate":
        score = data.get("score")
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise ProtocolError("invalid_rating", "'score' must be a whole number from 1 to 5.")
        return Rating(score)
    if kind == "feedback":
        return _parse_feedback(data)
    if kind == "ping":
        return Ping()
    if kind == "typing":
        return Typing()
    shown = repr(kind) if len(repr(kind)) <= 40 else repr(kind)[:37] + "..."
    raise ProtocolError(
        "unknown_type",
        f"Unknown frame type {shown}; expected message, typing, feedback, rate or ping.",
    )


def _parse_message(data: dict[str, Any]) -> CustomerText:
    client_id = data.get("id", "")
    if (
        not isinstance(client_id, str)
        or len(client_id) > MAX_CLIENT_ID_CHARS
        or not _encodable(client_id)
    ):
        raise ProtocolError(
            "invalid_id", f"'id' must be a string of at most {MAX_CLIENT_ID_CHARS} characters."
        )
    text = data.get("text")
    if not isinstance(text, str):
        raise ProtocolError("invalid_text", "'text' must be a string.", in_reply_to=client_id)
    text = text.strip()
    if not text:
        raise ProtocolError("empty_text", "The message is empty.", in_reply_to=client_id)
    limit = settings.CHATBOT_MAX_MESSAGE_CHARS
    if len(text) > limit:
        raise ProtocolError(
            "text_too_long",
            f"The message is {len(text)} characters long; the limit is {limit}.",
            in_reply_to=client_id,
        )
    if "\x00" in text:
        raise ProtocolError(
            "invalid_text", "The message contains a NUL character.", in_reply_to=client_id
        )
    if not _encodable(text):
        raise ProtocolError(
            "invalid_text", "The message is not valid Unicode text.", in_reply_to=client_id
        )
    return CustomerText(text=text, client_id=client_id)


# The longest id a reply can have (a bigint's digits): anything longer is no id of ours.
MAX_REPLY_ID_DIGITS = 19


def _parse_feedback(data: dict[str, Any]) -> Feedback:
    reply = data.get("message")
    helpful = data.get("helpful")
    if isinstance(reply, int) and not isinstance(reply, bool):
        reply = str(reply)
    if (
        not isinstance(reply, str)
        or not reply.isascii()
        or not reply.isdigit()
        or len(reply) > MAX_REPLY_ID_DIGITS
        or not isinstance(helpful, bool)
    ):
        raise ProtocolError(
            "invalid_feedback",
            "'message' must be the id of one of the bot's replies and 'helpful' true or false.",
        )
    return Feedback(reply_id=int(reply), helpful=helpful)


def _encodable(text: str) -> bool:
    """False for a string holding half of a UTF-16 pair (JSON's "\\ud800"), which is no
    character: neither the tokenizer nor the database can take it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def message_frame(message: Message) -> dict[str, Any]:
    """A stored message as it appears in the history frame; a bot reply also says what the bot
    decided and what the customer said of it (`helpful`: true, false, or null)."""
    frame = {
        "id": str(message.pk),
        "role": message.role,
        "text": message.text,
        "created": message.created_at.isoformat(),
        "client_id": message.client_message_id,
        "suggestions": message.suggestions,
    }
    if message.role == Message.Role.BOT:
        frame |= {"decision": message.decision, "helpful": message.helpful}
    return frame


def staff_message_frame(message: Message, *, conversation: str, status: str) -> dict[str, Any]:
    """A stored message as the support team's live admin pages get it: a bot reply with what
    the bot decided, and the conversation's status after it."""
    frame = {"type": "message", "conversation": conversation, "status": status}
    frame |= message_frame(message)
    if message.role == Message.Role.BOT:
        frame |= {
            "decision": message.decision,
            "intent": message.intent.name if message.intent else None,
            "confidence": message.confidence,
        }
    return frame


def reply_frame(reply: Message, *, in_reply_to: str) -> dict[str, Any]:
    """A stored bot reply as the reply frame."""
    return _reply_frame(
        id=reply.pk,
        text=reply.text,
        in_reply_to=in_reply_to,
        intent=reply.intent.name if reply.intent else None,
        confidence=reply.confidence,
        suggestions=reply.suggestions,
        decision=reply.decision,
    )


def agent_reply_frame(reply: AgentReply, *, id: int, in_reply_to: str) -> dict[str, Any]:
    """The agent's reply as the reply frame, before it is stored under the reserved `id`: the
    same frame `reply_frame` makes of the stored row."""
    return _reply_frame(
        id=id,
        text=reply.text,
        in_reply_to=in_reply_to,
        intent=reply.intent,
        confidence=reply.confidence,
        suggestions=list(reply.suggestions),
        decision=reply.decision,
    )


def _reply_frame(
    *,
    id: int,
    text: str,
    in_reply_to: str,
    intent: str | None,
    confidence: float | None,
    suggestions: list[str],
    decision: str,
) -> dict[str, Any]:
    return {
        "type": "reply",
        "id": str(id),
        "text": text,
        "in_reply_to": in_reply_to,
        "intent": intent,
        "confidence": None if confidence is None else round(confidence, 4),
        "suggestions": suggestions,
        "handoff": decision == Message.Decision.HANDOFF,
        "decision": decision,
    }
