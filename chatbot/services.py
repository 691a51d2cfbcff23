"""Writes: a customer's turn in the chat, from their message to the stored bot reply."""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache
from typing import NamedTuple, TypeVar

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from chatbot import protocol, selectors
from chatbot.agent import (
    NONE_OF_THESE_LABEL,
    TALK_TO_PERSON_LABEL,
    Agent,
    AgentReply,
    SuggestedReply,
    handoff_after_failures,
    suggested_replies,
)
from chatbot.batching import MicroBatcher
from chatbot.db import db_async
from chatbot.models import AnswerTemplate, Conversation, Intent, Message

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

# How long a repeated message (same client id) waits for the reply the first one is producing.
DUPLICATE_REPLY_WAIT_S = 15.0


def conversation_resume(*, public_id: str, visitor: str = "") -> Conversation | None:
    """The customer's conversation, unless it is unknown or closed, or another visitor's.

    The widget keeps both the conversation id and its visitor key; an id alone (seen in a proxy
    log, a screenshot) does not open someone else's transcript. A conversation started without
    a key (a client that sends none) opens with its id alone.
    """
    if not public_id:
        return None
    conversation = (
        Conversation.objects.filter(public_id=public_id)
        .exclude(status=Conversation.Status.CLOSED)
        .first()
    )
    if conversation is not None and not constant_time_compare(
        conversation.session_key, visitor[:64]
    ):
        logger.info("Conversation %s asked for with another visitor key: not resumed", public_id)
        return None
    return conversation


def conversation_new(*, visitor: str, user_agent: str) -> Conversation:
    """A conversation for a customer who has none yet, not stored: the widget connects when its
    page loads, and most visitors never write. `conversation_start` stores it when they do."""
    return Conversation(session_key=visitor[:64], user_agent=user_agent[:512])


def conversation_start(conversation: Conversation) -> None:
    """Store a conversation made by `conversation_new`: its customer has written (or rated)."""
    conversation.save(force_insert=True)


def conversation_rate(*, conversation_id: int, score: int) -> None:
    Conversation.objects.filter(pk=conversation_id).update(rating=score)


# How far up the review queue an answer that did not help moves the message it answered: past
# the confident answers, beside the turns the bot was least sure of (a priority is about 0 to
# 2.75 without it). The customer saying so is the surest sign that the bot got it wrong.
NOT_HELPFUL_REVIEW_PRIORITY = 2.0


class Rated(NamedTuple):
    """A bot reply the customer said something of: its text, and its conversation's status."""

    text: str
    status: str


def reply_feedback_store(
    *,
    conversation_id: int,
    reply_id: int,
    helpful: bool,
    decision: str = Message.Decision.ANSWER,
) -> Rated | None:
    """Store what the customer said of one of the bot's answers in their conversation (they may
    change their mind); None when it holds no such answer.

    An answer that did not help moves the message it answered up the review queue, and counts
    as a failure toward the hand-off (`selectors.turn_contexts`). With `decision` clarify: the
    customer chose none of a clarifying question's choices (`bot_turn`), which also makes the
    message it asked about one the bot learns to decline (`learning.out_of_scope_messages`)."""
    with transaction.atomic():
        reply = (
            Message.objects.select_for_update(of=("self",))
            .filter(
                pk=reply_id,
                conversation_id=conversation_id,
                role=Message.Role.BOT,
                decision=decision,
            )
            .values("helpful", "in_reply_to_id", "text", "conversation__status")
            .first()
        )
        if reply is None:
            return None
        if reply["helpful"] is not helpful:
            Message.objects.filter(pk=reply_id).update(helpful=helpful)
            shift = NOT_HELPFUL_REVIEW_PRIORITY * ((not helpful) - (reply["helpful"] is False))
            if shift:
                Message.objects.filter(
                    pk=reply["in_reply_to_id"], review_priority__isnull=False
                ).update(review_priority=F("review_priority") + shift)
    return Rated(reply["text"], reply["conversation__status"])


def choices_declined(*, question_id: int, pressed: Message) -> None:
    """The customer chose "None of these" under a clarifying question: the question did not
    help (the message it asked about moves up the review queue, and is learnt as out of
    scope), and the press itself, a button's label, is nothing to review or learn from."""
    reply_feedback_store(
        conversation_id=pressed.conversation_id,
        reply_id=question_id,
        helpful=False,
        decision=Message.Decision.CLARIFY,
    )
    Message.objects.filter(pk=pressed.pk, review="").update(
        review=Message.Review.SKIPPED, reviewed_at=timezone.now()
    )


def customer_message_store(
    *, conversation_id: int, text: str, client_id: str
) -> tuple[Message, bool]:
    """Store a customer message once; a repeat of the same client id returns the original.

    The insert is a transaction of its own, and the conversation's activity time is updated
    after it: two round trips to the database for every message, not four. Inside a caller's
    transaction, a savepoint keeps a duplicate's error from spoiling it.
    """
    savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with savepoint:
            message = Message.objects.create(
                conversation_id=conversation_id,
                role=Message.Role.CUSTOMER,
                text=text,
                client_message_id=client_id,
            )
    except IntegrityError:
        original = (
            Message.objects.filter(
                conversation_id=conversation_id,
                role=Message.Role.CUSTOMER,
                client_message_id=client_id,
            ).first()
            if client_id
            else None
        )
        if original is None:  # not a repeat: the conversation is gone, say
            raise
        return original, False
    Conversation.objects.filter(pk=conversation_id).update(last_activity_at=timezone.now())
    return message, True


@dataclass(frozen=True)
class Incoming:
    """A customer message as the widget sent it, to be stored."""

    conversation_id: int
    text: str
    client_id: str


class Received(NamedTuple):
    """A stored customer message, whether it is new, and (when it is) its turn's context."""

    message: Message
    created: bool
    context: selectors.TurnContext | None


def customer_messages_receive(incoming: Sequence[Incoming]) -> list[Received | Exception]:
    """Store customer messages that arrived together and read what the bot needs to answer
    each new one: five statements for the whole batch, however large (`customer_messages_store`,
    `selectors.turn_contexts`). A message that could not be stored has its error in its place."""
    stored = customer_messages_store(incoming)
    new = [s[0] for s in stored if not isinstance(s, Exception) and s[1]]
    contexts = selectors.turn_contexts(messages=new)
    return [s if isinstance(s, Exception) else Received(*s, contexts.get(s[0].pk)) for s in stored]


def customer_messages_store(
    incoming: Sequence[Incoming],
) -> list[tuple[Message, bool] | Exception]:
    """`customer_message_store` for many messages: one insert for them all, then one update of
    their conversations' activity times. If the insert fails (a repeated client id, a
    conversation deleted meanwhile), nothing of it was stored, and each message is stored on its
    own: the repeat gets its original back, and a message that cannot be stored has its error in
    its place, which costs the others nothing."""
    savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with savepoint:
            messages = Message.objects.bulk_create(
                [
                    Message(
                        conversation_id=m.conversation_id,
                        role=Message.Role.CUSTOMER,
                        text=m.text,
                        client_message_id=m.client_id,
                    )
                    for m in incoming
                ]
            )
    except IntegrityError:
        return [
            _or_error(
                customer_message_store,
                conversation_id=m.conversation_id,
                text=m.text,
                client_id=m.client_id,
            )
            for m in incoming
        ]
    Conversation.objects.filter(pk__in={m.conversation_id for m in incoming}).update(
        last_activity_at=timezone.now()
    )
    return [(message, True) for message in messages]


@dataclass(frozen=True)
class BotTurn:
    """A bot reply to store: the customer message it answers and how long the turn took."""

    customer_message: Message
    reply: AgentReply
    latency_ms: float
    # The reply's primary key when it was reserved ahead of the row (`ReplyIds`).
    reply_id: int | None = None


def bot_reply_store(
    *, customer_message: Message, reply: AgentReply, latency_ms: float, reply_id: int | None = None
) -> Message:
    """Store the bot's reply with what it decided and why; one reply per customer message."""
    turn = BotTurn(customer_message, reply, latency_ms, reply_id)
    try:
        return bot_replies_create([turn])[0]
    except IntegrityError:
        # A concurrent duplicate answered first.
        existing = selectors.reply_to(message_id=customer_message.pk)
        if existing is not None:
            return existing
        if reply_id is None:
            raise
    # The reserved id is taken (the sequence was reset under this process): store the reply
    # under a new one, and take no more ids from before.
    logger.warning("Reserved message id %s is taken; storing the reply without it", reply_id)
    reply_ids().forget()
    return bot_replies_create([replace(turn, reply_id=None)])[0]


class _NamedRows:
    """Intents and model versions by name, and the answer templates known to exist, kept by the
    process: every reply names them, and they rarely change. An entry gone stale (an intent or a
    template deleted since) fails the transaction's foreign-key check; `bot_replies_store` then
    forgets them all and stores again, reading each afresh."""

    def __init__(self) -> None:
        self.intents: dict[str, Intent] = {}
        self.model_versions: dict[str, int] = {}
        self.templates: set[int] = set()

    def templates_existing(self, ids: set[int]) -> set[int]:
        """Those of `ids` that are template rows (the index may name one deleted since)."""
        if missing := ids - self.templates:
            self.templates.update(
                AnswerTemplate.objects.filter(pk__in=missing).values_list("pk", flat=True)
            )
        return ids & self.templates

    def intents_named(self, names: set[str]) -> dict[str, Intent]:
        if missing := names - self.intents.keys():
            self.intents.update(Intent.objects.in_bulk(list(missing), field_name="name"))
        return self.intents

    def model_versions_named(self, names: set[str]) -> dict[str, int]:
        if missing := {name for name in names if name} - self.model_versions.keys():
            self.model_versions.update(selectors.model_version_ids(names=missing))
        return self.model_versions

    def forget(self) -> None:
        self.intents.clear()
        self.model_versions.clear()
        self.templates.clear()


_named_rows = _NamedRows()


def bot_replies_store(turns: Sequence[BotTurn]) -> list[Message | Exception]:
    """Store the replies of many turns in one transaction (a handful of queries, one commit);
    if any of them conflicts, each is stored on its own so the others are not lost (a reply that
    cannot be stored has its error in its place)."""
    try:
        return bot_replies_create(turns)
    except IntegrityError:
        _named_rows.forget()
        return [
            _or_error(
                bot_reply_store,
                customer_message=t.customer_message,
                reply=t.reply,
                latency_ms=t.latency_ms,
                reply_id=t.reply_id,
            )
            for t in turns
        ]


def _or_error(fn: Callable[..., Out], **kwargs: object) -> Out | Exception:
    """`fn(**kwargs)`, or the error it raised: one item of a batch that fails alone."""
    try:
        return fn(**kwargs)
    except Exception as error:
        logger.exception("Could not store one message of a batch")
        return error


@transaction.atomic
def bot_replies_create(turns: Sequence[BotTurn]) -> list[Message]:
    replies = [t.reply for t in turns]
    intents = _named_rows.intents_named({r.intent for r in replies if r.intent})
    # The index may name a template deleted since it was built: keep the text, drop the link.
    templates = _named_rows.templates_existing(
        {r.template_id for r in replies if r.template_id is not None}
    )
    model_versions = _named_rows.model_versions_named({r.model_version for r in replies})
    handed_off = [t.customer_message.conversation_id for t in turns if t.reply.handoff]
    if handed_off:
        Conversation.objects.filter(pk__in=handed_off).update(
            status=Conversation.Status.NEEDS_HUMAN
        )
    review_priorities_set({t.customer_message.pk: t.reply.review_priority for t in turns})
    return Message.objects.bulk_create(
        [
            _bot_message(
                turn,
                intent=intents.get(turn.reply.intent),
                template_id=turn.reply.template_id if turn.reply.template_id in templates else None,
                model_version_id=model_versions.get(turn.reply.model_version),
            )
            for turn in turns
        ]
    )


def review_priorities_set(priorities: dict[int, float]) -> None:
    """Set the review priority of customer messages (by primary key): one UPDATE, in SQL.

    The ORM's `bulk_update` builds a CASE expression for this; building it took about a
    quarter of the reply writer's time under load.
    """
    if not priorities:
        return
    sql = _review_priorities_sql().format(values=", ".join(["(%s, %s)"] * len(priorities)))
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for pair in priorities.items() for value in pair])


@cache
def _review_priorities_sql() -> str:
    """`review_priorities_set`'s statement; `{values}` stands for its (id, priority) rows."""
    quote = connection.ops.quote_name
    table = quote(Message._meta.db_table)
    pk = quote(Message._meta.pk.column)
    priority = quote(Message._meta.get_field("review_priority").column)
    return (
        f"WITH v (id, priority) AS (VALUES {{values}}) "
        f"UPDATE {table} SET {priority} = (SELECT v.priority FROM v WHERE v.id = {table}.{pk}) "
        f"WHERE {pk} IN (SELECT v.id FROM v)"
    )


def _bot_message(
    turn: BotTurn, *, intent: Intent | None, template_id: int | None, model_version_id: int | None
) -> Message:
    reply = turn.reply
    labels = dict(reply.choices)
    return Message(
        pk=turn.reply_id,
        conversation_id=turn.customer_message.conversation_id,
        role=Message.Role.BOT,
        text=reply.text,
        in_reply_to=turn.customer_message,
        decision=reply.decision,
        intent=intent,
        confidence=reply.confidence,
        top_k=[
            {"intent": a.intent, "score": a.score}
            | ({"label": labels[a.intent]} if a.intent in labels else {})
            for a in reply.alternatives
        ],
        nearest_similarity=reply.nearest_example_similarity,
        out_of_scope_similarity=reply.out_of_scope_similarity,
        second_opinion=reply.second_opinion,
        nearest_intent=reply.nearest_intent,
        template_id=template_id,
        template_similarity=reply.template_similarity,
        suggestions=list(reply.suggestions),
        model_version_id=model_version_id,
        index_version=reply.index_version,
        latency_ms=round(turn.latency_ms, 2),
        timings=reply.timings,
    )


def _writer(fn: Callable[[Sequence[In]], list[Out]], name: str) -> MicroBatcher[In, Out]:
    """A batcher running `fn` on a thread of its own, whose connection is closed as Channels
    closes its own: when older than CONN_MAX_AGE or broken."""

    def run(items: Sequence[In]) -> list[Out]:
        close_old_connections()
        try:
            return fn(items)
        finally:
            close_old_connections()

    return MicroBatcher(
        run,
        max_batch=settings.CHATBOT_STORE_BATCH_MAX_SIZE,
        max_wait_ms=settings.CHATBOT_STORE_BATCH_WAIT_MS,
        name=name,
    )


@cache
def message_writer() -> MicroBatcher[Incoming, Received]:
    """Gathers the customer messages that arrive together in this process into one insert."""
    return _writer(customer_messages_receive, "message-store")


@cache
def reply_writer() -> MicroBatcher[BotTurn, Message]:
    """Gathers the replies that finish together in this process into one transaction."""
    return _writer(bot_replies_store, "reply-store")


def message_ids_reserve(count: int) -> list[int]:
    """Take `count` primary keys for messages from the database, ahead of their rows: no other
    process or thread is given them, whether or not they are used. Empty on a database that
    cannot (only PostgreSQL and SQLite can here)."""
    table, column = Message._meta.db_table, Message._meta.pk.column
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [table, column, count],
            )
            return [row[0] for row in cursor.fetchall()]
        if connection.vendor == "sqlite":
            # An AUTOINCREMENT table never reuses a key up to sqlite_sequence's `seq`, so
            # moving `seq` on reserves the keys in between. The row appears with the first
            # insert; until then it starts from the largest key.
            quote = connection.ops.quote_name
            with transaction.atomic():
                cursor.execute(
                    f"INSERT INTO sqlite_sequence (name, seq) "
                    f"SELECT %s, (SELECT COALESCE(MAX({quote(column)}), 0) FROM {quote(table)}) "
                    f"WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = %s)",
                    [table, table],
                )
                cursor.execute(
                    "UPDATE sqlite_sequence SET seq = seq + %s WHERE name = %s RETURNING seq",
                    [count, table],
                )
                [(last,)] = cursor.fetchall()
            return list(range(last - count + 1, last + 1))
    return []


class ReplyIds:
    """Ids for bot replies, reserved from the database a block at a time, so that a reply can
    go to the customer with its id before its row is written (`bot_turn`).

    Taking an id never waits for the database: when the ids run low, a new block is reserved
    on the customer-message writer's thread, and while there are none, a reply is stored
    first and sent after, as every reply was before.
    """

    def __init__(self, block: int = 64) -> None:
        self.block = block
        self._free: deque[int] = deque()
        self._refilling = False

    def take(self) -> int | None:
        if len(self._free) <= self.block // 2 and not self._refilling:
            self._refilling = True
            message_writer().run_on_worker(self._refill)
        try:
            return self._free.popleft()
        except IndexError:
            return None

    def reserve(self) -> None:
        """Reserve a block now, on this thread."""
        self._free.extend(message_ids_reserve(self.block))

    def _refill(self) -> None:
        close_old_connections()
        try:
            self.reserve()
        except Exception:
            logger.exception("Could not reserve message ids; replies are stored before sending")
        finally:
            close_old_connections()
            self._refilling = False

    def forget(self) -> None:
        """Drop the ids held (a test flushes the database; a sequence was reset)."""
        self._free.clear()


@cache
def reply_ids() -> ReplyIds:
    return ReplyIds()


async def bot_turn(
    *,
    customer_message: Message,
    received_at: float,
    agent: Agent,
    deliver: Callable[[dict], Awaitable[None]],
    context: selectors.TurnContext | None = None,
    store_ms: float = 0.0,
    analysis: asyncio.Future | None = None,
) -> Message | None:
    """Ask the agent about a stored customer message, send its reply frame to `deliver`, and
    store the reply.

    The reply is sent first and stored right after, under an id reserved for it (`ReplyIds`):
    the customer does not wait for the reply's transaction. A reply that hands the
    conversation to a person is stored first, so that the bot cannot answer the customer's
    next message. None when the bot must not answer (a person on the team has the
    conversation), or when a sent reply could not be stored (logged).

    `context` is read here unless the caller read it with the message
    (`customer_messages_receive`); `store_ms`, the time that took, goes into the reply's
    timings; `analysis`, the models' reading of the message if the caller started it
    (`Agent.analyse`).
    """
    if context is None:
        context = await db_async(selectors.turn_context)(message=customer_message)
    if context.status != Conversation.Status.BOT:
        if analysis is not None:
            discard(analysis)
        return None
    said = customer_message.text.strip().lower()
    chosen = context.offered.get(said, "")
    if not chosen and said == TALK_TO_PERSON_LABEL.lower():
        chosen = agent.handoff_intent  # the quick reply an out-of-scope answer offers
    none_fit = bool(not chosen and context.offered and said == NONE_OF_THESE_LABEL.lower())
    if none_fit:
        await db_async(choices_declined)(question_id=context.question_id, pressed=customer_message)
    reply = await agent.respond(
        customer_message.text, chosen_intent=chosen, none_fit=none_fit, analysis=analysis
    )
    reply = replace(reply, timings={"store_ms": round(store_ms, 2), **reply.timings})
    if (
        reply.decision in selectors.FAILED_DECISIONS
        and context.failures_in_a_row + 1 >= settings.CHATBOT_HANDOFF_AFTER_FAILURES
    ):
        reply = handoff_after_failures(reply)
    latency_ms = (time.perf_counter() - received_at) * 1000
    in_reply_to = customer_message.client_message_id
    reply_id = None if reply.handoff else reply_ids().take()
    turn = BotTurn(customer_message, reply, latency_ms, reply_id)
    if reply_id is None:
        stored = (await reply_writer().submit(turn)).value
        await deliver(protocol.reply_frame(stored, in_reply_to=in_reply_to))
        return stored
    try:
        await deliver(protocol.agent_reply_frame(reply, id=reply_id, in_reply_to=in_reply_to))
    finally:
        # Stored whether or not the frame reached the customer.
        try:
            stored = (await reply_writer().submit(turn)).value
        except Exception:
            # The customer has the reply: an error frame now would only confuse them.
            logger.exception("The reply to message %s was sent but not stored", customer_message.pk)
            stored = None
    return stored


def discard(future: asyncio.Future) -> None:
    """Cancel work whose result is no longer wanted (and never report its failure)."""
    future.cancel()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


async def reply_wait(*, customer_message: Message, timeout_s: float | None = None):
    """The reply to a message that was already received, waiting while it may still be being
    produced: until `timeout_s` (DUPLICATE_REPLY_WAIT_S) after the message was stored. None when
    no reply is coming (a person has the conversation, or the first try failed)."""
    if timeout_s is None:
        timeout_s = DUPLICATE_REPLY_WAIT_S
    age_s = (timezone.now() - customer_message.created_at).total_seconds()
    deadline = time.monotonic() + timeout_s - max(0.0, age_s)
    while True:
        reply = await db_async(selectors.reply_to)(message_id=customer_message.pk)
        if reply is not None or time.monotonic() > deadline:
            return reply
        context = await db_async(selectors.turn_context)(message=customer_message)
        if context.status != Conversation.Status.BOT:
            return None  # a person has it: no bot reply is coming
        await asyncio.sleep(0.1)


def conversation_group(public_id) -> str:
    """The Channels group of a conversation's open connections."""
    return f"conversation.{public_id}"


# The support team's live admin pages: the list of conversations hears of those left waiting for
# a person (STAFF_INBOX_GROUP); a conversation's page, of its messages (`staff_conversation_group`).
STAFF_INBOX_GROUP = "staff.inbox"
# How much of the customer's message a "waiting" notice shows.
WAITING_PREVIEW_CHARS = 200


def staff_conversation_group(public_id) -> str:
    """The Channels group of the admin pages that show a conversation live."""
    return f"staff.conversation.{public_id}"


async def staff_turn_publish(
    *, conversation: Conversation, customer_message: Message, reply: Message | None, waiting: bool
) -> None:
    """Show a customer's turn on the support team's open admin pages: the message and the bot's
    reply on the conversation's page; on the list of conversations, a notice when the turn
    leaves the conversation waiting for a person (the bot handed it off, or the customer wrote
    while it waited)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    public_id = str(conversation.public_id)
    handed_off = reply is not None and reply.decision == Message.Decision.HANDOFF
    status = Conversation.Status.NEEDS_HUMAN if waiting or handed_off else Conversation.Status.BOT
    frames = [
        protocol.staff_message_frame(message, conversation=public_id, status=status)
        for message in (customer_message, reply)
        if message is not None
    ]
    await layer.group_send(
        staff_conversation_group(public_id), {"type": "staff.frames", "frames": frames}
    )
    if handed_off or waiting:
        notice = {
            "type": "waiting",
            "conversation": public_id,
            "reason": "handoff" if handed_off else "message",
            "text": customer_message.text[:WAITING_PREVIEW_CHARS],
            "url": reverse("admin:chatbot_conversation_change", args=[public_id]),
        }
        await layer.group_send(STAFF_INBOX_GROUP, {"type": "staff.frames", "frames": [notice]})


async def feedback_publish(*, public_id, reply_id: int, rated: Rated, helpful: bool) -> None:
    """Show on the team's open pages of a conversation what the customer said of one of the
    bot's answers. A failure is logged, never raised: it is stored, and the page shows it when
    reloaded."""
    from channels.layers import get_channel_layer

    frame = {
        "type": "feedback",
        "conversation": str(public_id),
        "message": str(reply_id),
        "helpful": helpful,
        "text": rated.text[:WAITING_PREVIEW_CHARS],
    }
    try:
        await get_channel_layer().group_send(
            staff_conversation_group(public_id), {"type": "staff.frames", "frames": [frame]}
        )
    except Exception:
        logger.exception("Could not show the customer's feedback in conversation %s", public_id)


async def typing_publish(*, public_id, role: str, sender: str, name: str = "") -> None:
    """Someone is writing in a conversation: the customer (shown on the team's pages of it), or
    a person of the team (`name`; shown in the customer's widget, without the name, and on the
    team's other pages of it). Nothing is stored; `sender` (a channel name) does not hear its
    own. A failure is logged, never raised: it must not cost the connection."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    public_id = str(public_id)
    staff_frame = {"type": "typing", "conversation": public_id, "role": role}
    try:
        if role == "agent":
            staff_frame["name"] = name
            await layer.group_send(
                conversation_group(public_id),
                {"type": "conversation.message", "frame": {"type": "typing", "role": "agent"}},
            )
        await layer.group_send(
            staff_conversation_group(public_id),
            {"type": "staff.frames", "frames": [staff_frame], "sender": sender},
        )
    except Exception:
        logger.exception("Could not show that someone is writing in conversation %s", public_id)


def _broadcast(conversation: Conversation, message: Message, *, status: str) -> None:
    """Send a message from the support team (or the system) to the conversation's open widgets,
    and to the team's pages that show it."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    frame = {"type": "message", **protocol.message_frame(message), "status": status}
    public_id = str(conversation.public_id)
    staff_frame = protocol.staff_message_frame(message, conversation=public_id, status=status)
    # The customer is no longer waiting for the team: the others' pages drop the notice.
    handled = {"type": "handled", "conversation": public_id, "status": status}

    async def send() -> None:  # one trip into async code for the three
        layer = get_channel_layer()
        await layer.group_send(
            conversation_group(public_id), {"type": "conversation.message", "frame": frame}
        )
        await layer.group_send(
            staff_conversation_group(public_id), {"type": "staff.frames", "frames": [staff_frame]}
        )
        await layer.group_send(STAFF_INBOX_GROUP, {"type": "staff.frames", "frames": [handled]})

    try:
        async_to_sync(send)()
    except Exception:
        # Stored already (this runs after commit): an open widget gets it with the history
        # when it reconnects. A 500 now would tell the admin the change failed; it did not.
        logger.exception("Could not push message %s to the open widget", message.pk)


# The customer's messages (since the team last wrote) that suggested replies are drawn from.
SUGGESTION_MESSAGES = 3


def staff_reply_suggestions(
    *, conversation: Conversation, limit: int = 3, timeout_s: float = 5.0
) -> list[SuggestedReply]:
    """The answers the bot has for what the customer most likely asks, from their messages
    since the team last wrote: for the person replying to pick from and edit. Read by the live
    models on their own thread, in turn with the chat's batches; TimeoutError when that takes
    longer than `timeout_s` (a process whose models are still loading)."""
    from chatbot.runtime import get_runtime

    awaiting = selectors.messages_awaiting_the_team(
        conversation=conversation, limit=SUGGESTION_MESSAGES
    )
    if not awaiting:
        return []
    runtime = get_runtime()
    analysed = runtime.batcher.run_on_worker(runtime.analyse_batch, [m.text for m in awaiting])
    return suggested_replies(
        analysed.result(timeout=timeout_s), skip=settings.CHATBOT_HANDOFF_INTENT, limit=limit
    )


# How much of a suggested answer a reply must keep (difflib's ratio) to be recorded as written
# from it: an edited name or order number keeps it, a reply written over it does not.
KEPT_OF_A_SUGGESTION = 0.6


def suggestion_kept(template_id: int | None, text: str) -> AnswerTemplate | None:
    """The suggested answer a staff reply was written from ("Use"), when the reply still keeps
    most of it."""
    if not template_id:
        return None
    template = AnswerTemplate.objects.select_related("intent").filter(pk=template_id).first()
    if template is None:  # deleted since the page was drawn
        return None
    kept = difflib.SequenceMatcher(None, template.text, text, autojunk=False).ratio()
    return template if kept >= KEPT_OF_A_SUGGESTION else None


@transaction.atomic
def staff_reply_send(
    *, conversation: Conversation, text: str, template_id: int | None = None
) -> Message:
    """A person on the support team writes to the customer; it reaches the open widget live.

    `template_id`: the suggested answer the person started from; the reply records it, and its
    intent, when it keeps most of its text (what the team took the customer to be asking)."""
    text = text.strip()
    if not text:
        raise ValueError("The reply is empty.")
    status = Conversation.objects.select_for_update().values_list("status", flat=True)
    if status.get(pk=conversation.pk) == Conversation.Status.CLOSED:
        # Its widget has moved on to a new conversation: the reply would reach no one.
        raise ValueError("The conversation is closed; the customer would not see the reply.")
    template = suggestion_kept(template_id, text)
    message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.AGENT,
        text=text,
        template=template,
        intent=template.intent if template else None,
    )
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
    """The support team gives the conversation back to the bot, and the customer is told.

    Only a conversation waiting for a person can be handed back (ValueError otherwise): a second
    click, or a stale page, must not tell the customer twice or reopen a closed conversation.
    """
    handed = Conversation.objects.filter(
        pk=conversation.pk, status=Conversation.Status.NEEDS_HUMAN
    ).update(status=Conversation.Status.BOT)
    if not handed:
        raise ValueError("The conversation is not waiting for a person; nothing to hand back.")
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.SYSTEM, text=HAND_BACK_TEXT
    )
    transaction.on_commit(lambda: _broadcast(conversation, message, status=Conversation.Status.BOT))
    return message


CLOSED_TEXT = "This conversation has been closed. Write again to start a new one."


@transaction.atomic
def conversation_close(*, conversation: Conversation) -> Message | None:
    """Close a conversation, and tell an open widget, which starts a new one when the customer
    writes again. None if it was closed already."""
    closed = (
        Conversation.objects.filter(pk=conversation.pk)
        .exclude(status=Conversation.Status.CLOSED)
        .update(status=Conversation.Status.CLOSED)
    )
    if not closed:
        return None
    message = Message.objects.create(
        conversation=conversation, role=Message.Role.SYSTEM, text=CLOSED_TEXT
    )
    transaction.on_commit(
        lambda: _broadcast(conversation, message, status=Conversation.Status.CLOSED)
    )
    return message
