"""The chat WebSocket: one customer's connection, speaking the widget's JSON protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib import auth

from chatbot import protocol, security, selectors, services
from chatbot.agent import Agent, AgentUnavailable
from chatbot.db import db_async
from chatbot.models import Conversation
from chatbot.runtime import get_runtime
from chatbot.services import conversation_group

logger = logging.getLogger(__name__)


class MessageRate:
    """A token bucket: `burst` messages at once, refilled at `per_minute`; never limits when
    `per_minute` is 0."""

    def __init__(self, burst: int, per_minute: float, clock=time.monotonic) -> None:
        self.burst = max(1, burst)
        self.per_second = per_minute / 60
        self.clock = clock
        self.tokens = float(self.burst)
        self.at = clock()

    def take(self) -> float:
        """0 if a message may go now (and counts it), else the seconds until one may."""
        if self.per_second <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.per_second


class Throttle:
    """At most one event per `every_s`: a widget or page repeats "typing" while someone writes,
    and only that often is it passed on."""

    def __init__(self, every_s: float, clock=time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.at = -math.inf

    def ready(self) -> bool:
        now = self.clock()
        if now - self.at < self.every_s:
            return False
        self.at = now
        return True

    def reset(self) -> None:
        """The next event passes (what someone was writing has been sent)."""
        self.at = -math.inf


# How often, at most, one connection's "typing" is passed on; the other side shows it for longer
# (the widget and the admin page, 6 s), so a steady writer shows as typing without a gap.
TYPING_EVERY_S = 2.0


class ChatConsumer(AsyncWebsocketConsumer):
    conversation: Conversation

    async def connect(self) -> None:
        self.agent = Agent()
        self.rate = MessageRate(
            settings.CHATBOT_RATE_LIMIT_BURST, settings.CHATBOT_RATE_LIMIT_PER_MINUTE
        )
        self.typing = Throttle(TYPING_EVERY_S)
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        headers = dict(self.scope.get("headers", []))
        visitor = query.get("visitor", [""])[0]
        resumed = await db_async(services.conversation_resume)(
            public_id=_valid_uuid(query.get("conversation", [""])[0]), visitor=visitor
        )
        # A new conversation is stored with the customer's first message (`started`).
        self.conversation = resumed or services.conversation_new(
            visitor=visitor,
            user_agent=headers.get(b"user-agent", b"").decode("latin1"),
        )
        # Messages from the support team reach every open tab of the conversation, on whichever
        # server process it is connected to (a Channels group; Redis across processes).
        self.group = conversation_group(self.conversation.public_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        get_runtime().warm_up()
        # Read after joining the group, so that no message sent meanwhile falls in between.
        history = (
            []
            if resumed is None
            else await db_async(selectors.conversation_history)(conversation=self.conversation)
        )
        await self.send_json(
            {
                "type": "history",
                "conversation": str(self.conversation.public_id),
                "status": self.conversation.status,
                "messages": [protocol.message_frame(m) for m in history],
                "max_chars": settings.CHATBOT_MAX_MESSAGE_CHARS,
            }
        )

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def conversation_message(self, event: dict[str, Any]) -> None:
        """A message for the customer from the support team (sent to the group)."""
        await self.send_json(event["frame"])

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        received_at = time.perf_counter()
        try:
            if text_data is None:
                raise protocol.ProtocolError(
                    "binary_not_supported", "Binary frames are not supported; send JSON text."
                )
            frame = protocol.parse_client_frame(text_data)
        except protocol.ProtocolError as error:
            # A bad frame counts against the rate too: a script must not flood with them.
            if wait_s := self.rate.take():
                await self.send_rate_limited(wait_s, "")
            else:
                await self.send_json(error.frame())
            return
        # Pings and "typing" are not messages: the throttle, not the rate, bounds what they cost.
        unlimited = isinstance(frame, protocol.Ping | protocol.Typing)
        if not unlimited and (wait_s := self.rate.take()):
            # Nothing stored: the widget offers to send it again (or un-presses a feedback).
            await self.send_rate_limited(
                wait_s,
                getattr(frame, "client_id", ""),
                reply_id=frame.reply_id if isinstance(frame, protocol.Feedback) else None,
            )
            return
        match frame:
            case protocol.CustomerText():
                await self.customer_text(frame, received_at)
            case protocol.Rating(score=score):
                await db_async(services.conversation_rate)(
                    conversation_id=await self.started(), score=score
                )
                await self.send_json({"type": "rated", "score": score})
            case protocol.Feedback():
                await self.feedback(frame)
            case protocol.Ping():
                await self.send_json({"type": "pong"})
            case protocol.Typing():
                await self.customer_typing()

    async def feedback(self, frame: protocol.Feedback) -> None:
        """The customer says whether one of the bot's answers helped. When it did not, and the
        bot still has the conversation, the widget offers what to do next (not stored)."""
        rated = self.conversation.pk and await db_async(services.reply_feedback_store)(
            conversation_id=self.conversation.pk, reply_id=frame.reply_id, helpful=frame.helpful
        )
        if not rated:
            error = protocol.ProtocolError(
                "unknown_reply", "This conversation has no answer of the bot with that id."
            )
            # The id it was about, so that the widget can undo the press it showed at once.
            await self.send_json(error.frame() | {"message": str(frame.reply_id)})
            return
        said: dict[str, Any] = {
            "type": "feedback",
            "message": str(frame.reply_id),
            "helpful": frame.helpful,
        }
        if not frame.helpful and rated.status == Conversation.Status.BOT:
            text, suggestions = await asyncio.to_thread(self.agent.not_helpful)
            said |= {"text": text, "suggestions": list(suggestions)}
        await self.send_json(said)
        await services.feedback_publish(
            public_id=self.conversation.public_id,
            reply_id=frame.reply_id,
            rated=rated,
            helpful=frame.helpful,
        )

    async def customer_typing(self) -> None:
        """The customer is writing: the conversation's open admin pages show it (nothing is
        stored, nothing is answered). A conversation not stored yet has no page to show it."""
        if self.conversation.pk is None or not self.typing.ready():
            return
        await services.typing_publish(
            public_id=self.conversation.public_id, role="customer", sender=self.channel_name
        )

    async def customer_text(self, frame: protocol.CustomerText, received_at: float) -> None:
        self.typing.reset()  # their next message may be shown as being written at once
        # The models read the message while it is being stored: neither waits for the other.
        analysis = self.agent.analyse(frame.text)
        try:
            stored = await services.message_writer().submit(
                services.Incoming(await self.started(), frame.text, frame.client_id)
            )
        except Exception:
            services.discard(analysis)
            # Nothing was stored: the customer can send it again, on this connection.
            logger.exception("Could not store a message of conversation %s", self.conversation.pk)
            await self.send_error(
                "not_stored",
                frame.client_id,
                "Your message could not be saved; please send it again.",
            )
            return
        except BaseException:
            services.discard(analysis)
            raise
        message, created, context = stored.value
        store_ms = (time.perf_counter() - received_at) * 1000
        await self.send_json({"type": "ack", "id": frame.client_id, "message": str(message.pk)})
        if context is not None and context.status == Conversation.Status.CLOSED:
            services.discard(analysis)
            await self.send_error(
                "conversation_closed",
                frame.client_id,
                "This conversation is closed; your message is saved. "
                "Connect without its id to start a new one.",
            )
            return
        reply = None
        waiting = context is not None and context.status == Conversation.Status.NEEDS_HUMAN
        try:
            if not created:
                # A repeat: its reply, once the first try has stored it.
                reply = await services.reply_wait(customer_message=message)
                if reply is not None:
                    services.discard(analysis)
                    await self.send_json(protocol.reply_frame(reply, in_reply_to=frame.client_id))
                    return
                # None is coming: the first try failed (internal_error, say), and this is the
                # customer trying again; answered now, unless a person has the conversation.
                context = None
            reply = await services.bot_turn(
                customer_message=message,
                received_at=received_at,
                agent=self.agent,
                deliver=self.send_json,
                context=context,
                store_ms=store_ms,
                analysis=analysis,
            )
        except AgentUnavailable as error:
            logger.error("Cannot answer: %s", error)
            await self.send_error("agent_unavailable", frame.client_id)
        except Exception:
            # The message is stored; the customer hears that something failed, and the
            # connection stays open for the next message.
            logger.exception("Failed to answer message %s", message.pk)
            await self.send_error("internal_error", frame.client_id)
        if created:  # a repeat was shown the first time
            await self.show_staff(message, reply, waiting=waiting)

    async def show_staff(self, message, reply, *, waiting: bool) -> None:
        """The turn on the support team's open admin pages, once the customer has the reply."""
        try:
            await services.staff_turn_publish(
                conversation=self.conversation,
                customer_message=message,
                reply=reply,
                waiting=waiting,
            )
        except Exception:
            # Stored: the pages show it when reloaded.
            logger.exception("Could not show message %s to the support team live", message.pk)

    async def started(self) -> int:
        """The conversation's primary key, storing it first if this is its first message."""
        if self.conversation.pk is None:
            await db_async(services.conversation_start)(self.conversation)
        return self.conversation.pk

    async def send_rate_limited(
        self, wait_s: float, client_id: str, *, reply_id: int | None = None
    ) -> None:
        """`reply_id`: the answer a refused feedback was about (the frame's `message`)."""
        limited = protocol.ProtocolError(
            "rate_limited",
            "You're sending messages faster than we can read them; "
            f"please wait {math.ceil(wait_s)} s and send it again.",
            in_reply_to=client_id,
        ).frame() | {"retry_after_s": round(wait_s, 1)}
        if reply_id is not None:
            limited["message"] = str(reply_id)
        await self.send_json(limited)

    async def send_error(
        self,
        code: str,
        client_id: str,
        detail: str = "The assistant is not available right now; your message is saved.",
    ) -> None:
        await self.send_json(protocol.ProtocolError(code, detail, in_reply_to=client_id).frame())

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, ensure_ascii=False))


# How often, at most, a live admin page's login is checked again (when it has something to hear).
STAFF_RECHECK_S = 10.0
STAFF_LOGGED_OUT = 4401  # the close code when it fails


class StaffConsumer(AsyncWebsocketConsumer):
    """What the support team's open admin pages hear, live: the list of conversations, those
    left waiting for a person; a conversation's page (`?conversation=<id>`), its messages as
    they are stored. Only for staff allowed to view conversations, from a page of this very
    site (the session cookie authenticates, so another site's page must not open it, whatever
    CHATBOT_WIDGET_ORIGINS lets embed the chat). It only listens, but for one frame: on a
    conversation's page, someone who may reply sends "typing" while writing, which the
    customer's widget and the team's other pages of it show. Replies go through admin."""

    async def connect(self) -> None:
        origin, host = security.header(self.scope, b"origin"), security.header(self.scope, b"host")
        user = self.scope.get("user")
        rights = await db_async(_rights)(user)
        if not security.same_site(origin, host) or not rights.watch:
            await self.close()  # before accepting: the handshake gets 403
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        self.conversation = _valid_uuid(query.get("conversation", [""])[0])
        self.watched = [
            services.staff_conversation_group(self.conversation)
            if self.conversation
            else services.STAFF_INBOX_GROUP
        ]
        self.rights = rights
        self.typing = Throttle(TYPING_EVERY_S)
        self.session_key = self.scope["session"].session_key
        self.checked_at = time.monotonic()
        for group in self.watched:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "watched", ()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def staff_frames(self, event: dict[str, Any]) -> None:
        if event.get("sender") == self.channel_name:
            return  # this page's own "typing"
        if not await self.still_allowed():
            return
        for frame in event["frames"]:
            await self.send(text_data=json.dumps(frame, ensure_ascii=False))

    async def still_allowed(self) -> bool:
        """Whether the login still may watch, checked at most every STAFF_RECHECK_S; a page left
        open after its admin logged out (or lost the permission) is closed here."""
        if time.monotonic() - self.checked_at >= STAFF_RECHECK_S:
            self.rights = await db_async(_session_rights)(self.session_key)
            if not self.rights.watch:
                await self.close(code=STAFF_LOGGED_OUT)
                return False
            self.checked_at = time.monotonic()
        return True

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            frame = None if text_data is None else protocol.parse_client_frame(text_data)
        except protocol.ProtocolError:
            frame = None
        if isinstance(frame, protocol.Typing) and self.conversation and self.rights.reply:
            if await self.still_allowed() and self.rights.reply and self.typing.ready():
                await services.typing_publish(
                    public_id=self.conversation,
                    role="agent",
                    sender=self.channel_name,
                    name=self.rights.name,
                )
            return
        error = protocol.ProtocolError(
            "read_only",
            "This connection only listens (and takes 'typing' on the page of a conversation you "
            "may reply to); reply from the conversation's page.",
        )
        await self.send(text_data=json.dumps(error.frame()))


@dataclass(frozen=True)
class StaffRights:
    watch: bool  # may hear the team's live frames
    reply: bool  # may reply to customers (and so say that they are writing)
    name: str = ""  # as the team's other pages show who is writing


def _session_rights(session_key: str | None) -> StaffRights:
    """What the session's user may do now: nothing once logged out, its password changed, or
    its permission taken away."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return _rights(auth.get_user(SimpleNamespace(session=store)))


def _rights(user) -> StaffRights:
    if user is None or not (user.is_active and user.is_staff):
        return StaffRights(watch=False, reply=False)
    watch = user.has_perm("chatbot.view_conversation")
    return StaffRights(
        watch=watch,
        reply=watch and user.has_perm("chatbot.change_conversation"),
        name=user.get_full_name() or user.get_username(),
    )


def _valid_uuid(value: str) -> str:
    """The value if it is a UUID, else '' (a malformed id starts a new conversation)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return ""
