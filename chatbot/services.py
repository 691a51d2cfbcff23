"""Writes: a customer's turn in the chat, from their message to the stored bot reply."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chatbot import protocol, selectors
from chatbot.agent import Agent, AgentReply, handoff_after_failures
from chatbot.models import AnswerTemplate, Conversation, Intent, Message

logger = logging.getLogger(__name__)

# How long a repeated message (same client id) waits for the reply the first one is producing.
DUPLICATE_REPLY_WAIT_S = 15.0


def conversation_open(*, public_id: str, visitor: str, user_agent: str) -> Conversation:
    """Resume the customer's open conversation, or start a new one."""
    if public_id:
        existing = (
            Conversation.objects.filter(public_id=public_id)
            .exclude(status=Conversation.Status.CLOSED)
            .first()
        )
        if existing is not None:
            return existing
    return Conversation.objects.create(session_key=visitor[:64], user_agent=user_agent[:512])


def conversation_rate(*, conversation_id: int, score: int) -> None:
    Conversation.objects.filter(pk=conversation_id).update(rating=score)


def customer_message_store(
    *, conversation_id: int, text: str, client_id: str
) -> tuple[Message, bool]:
    """Store a customer message once; a repeat of the same client id returns the original."""
    try:
        with transaction.atomic():
            message = Message.objects.create(
                conversation_id=conversation_id,
                role=Message.Role.CUSTOMER,
                text=text,
                client_message_id=client_id,
            )
            Conversation.objects.filter(pk=conversation_id).update(last_activity_at=timezone.now())
    except IntegrityError:
        if not client_id:
            raise
        original = Message.objects.get(
            conversation_id=conversation_id,
            role=Message.Role.CUSTOMER,
            client_message_id=client_id,
        )
        return original, False
    return message, True


def customer_message_receive(
    *, conversation_id: int, text: str, client_id: str
) -> tuple[Message, bool, selectors.TurnContext | None]:
    """Store a customer message and read what the bot needs to answer it, in one trip to the
    database thread: (message, whether it is new, the turn's context when it is)."""
    message, created = customer_message_store(
        conversation_id=conversation_id, text=text, client_id=client_id
    )
    return message, created, selectors.turn_context(message=message) if created else None


def bot_reply_store(*, customer_message: Message, reply: AgentReply, latency_ms: float) -> Message:
    """Store the bot's reply with what it decided and why; one reply per customer message."""
    intent = Intent.objects.filter(name=reply.intent).first() if reply.intent else None
    # The index may name a template deleted since it was built: keep the text, drop the link.
    template_id = (
        AnswerTemplate.objects.filter(pk=reply.template_id).values_list("pk", flat=True).first()
    )
    model_version_id = selectors.model_version_id(name=reply.model_version)
    labels = dict(reply.choices)
    try:
        with transaction.atomic():
            if reply.handoff:
                Conversation.objects.filter(pk=customer_message.conversation_id).update(
                    status=Conversation.Status.NEEDS_HUMAN
                )
            Message.objects.filter(pk=customer_message.pk).update(
                review_priority=reply.review_priority
            )
            return Message.objects.create(
                conversation_id=customer_message.conversation_id,
                role=Message.Role.BOT,
                text=reply.text,
                in_reply_to=customer_message,
                decision=reply.decision,
                intent=intent,
                confidence=reply.confidence,
                top_k=[
                    {"intent": a.intent, "score": a.score}
                    | ({"label": labels[a.intent]} if a.intent in labels else {})
                    for a in reply.alternatives
                ],
                nearest_similarity=reply.nearest_example_similarity,
                nearest_intent=reply.nearest_intent,
                template_id=template_id,
                template_similarity=reply.template_similarity,
                suggestions=list(reply.suggestions),
                model_version_id=model_version_id,
                index_version=reply.index_version,
                latency_ms=round(latency_ms, 2),
                timings=reply.timings,
            )
    except IntegrityError:
        # A concurrent duplicate answered first.
        existing = selectors.reply_to(message_id=customer_message.pk)
        if existing is None:
            raise
        return existing


async def bot_turn(
    *,
    customer_message: Message,
    received_at: float,
    agent: Agent,
    context: selectors.TurnContext | None = None,
    store_ms: float = 0.0,
) -> Message | None:
    """Ask the agent about a stored customer message and store its reply.

    None when the bot must not answer: a person on the team has the conversation. `context`
    is read here unless the caller read it with the message (`customer_message_receive`);
    `store_ms`, the time that took, goes into the reply's timings.
    """
    if context is None:
        context = await database_sync_to_async(selectors.turn_context)(message=customer_message)
    if context.status != Conversation.Status.BOT:
        return None
    chosen = context.offered.get(customer_message.text.strip().lower(), "")
    reply = await agent.respond(customer_message.text, chosen_intent=chosen)
    reply = replace(reply, timings={"store_ms": round(store_ms, 2), **reply.timings})
    if (
        reply.decision in selectors.FAILED_DECISIONS
        and context.failures_in_a_row + 1 >= settings.CHATBOT_HANDOFF_AFTER_FAILURES
    ):
        reply = handoff_after_failures(reply)
    latency_ms = (time.perf_counter() - received_at) * 1000
    return await database_sync_to_async(bot_reply_store)(
        customer_message=customer_message, reply=reply, latency_ms=latency_ms
    )


async def reply_wait(*, customer_message: Message, timeout_s: float = DUPLICATE_REPLY_WAIT_S):
    """The reply to a message that was already received, waiting while it is being produced."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await database_sync_to_async(selectors.reply_to)(message_id=customer_message.pk)
        if reply is not None or time.monotonic() > deadline:
            return reply
        context = await database_sync_to_async(selectors.turn_context)(message=customer_message)
        if context.status != Conversation.Status.BOT:
            return None  # a person has it: no bot reply is coming
        await asyncio.sleep(0.1)


def conversation_group(public_id) -> str:
    """The Channels group of a conversation's open connections."""
    return f"conversation.{public_id}"


def _broadcast(conversation: Conversation, message: Message, *, status: str) -> None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    frame = {"type": "message", **protocol.message_frame(message), "status": status}
    async_to_sync(get_channel_layer().group_send)(
        conversation_group(conversation.public_id), {"type": "conversation.message", "frame": frame}
    )


@transaction.atomic
def staff_reply_send(*, conversation: Conversation, text: str) -> Message:
    """A person on the support team writes to the customer; it reaches the open widget live."""
    text = text.strip()
    if not text:
        raise ValueError("The reply is empty.")
    message = Message.objects.create(conversation=conversation, role=Message.Role.AGENT, text=text)
    Conversation.objects.filter(pk=conversation.pk).update(
        status=Conversation.Status.NEEDS_HUMAN, last_activity_at=timezone.now()
    )
    transaction.on_commit(
        lambda: _broadcast(conversation, message, status=Conversation.Status.NEEDS_HUMAN)
    )
    return message


HAND_BACK_TEXT = "You're chatting with our assistant again. Ask me anything."


@transaction.atomic
def conversation_hand_back(*, conversation: Conversation) -> Message:
    """The support team gives the conversation back to the bot, and the customer is told."""
    Conversation.objects.filter(pk=conversation.pk).update(status=Conversation.Status.BOT)
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.SYSTEM, text=HAND_BACK_TEXT
    )
    transaction.on_commit(lambda: _broadcast(conversation, message, status=Conversation.Status.BOT))
    return message
