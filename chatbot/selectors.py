"""Reads: what the chat, the admin and the health check need to know."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

from django.conf import settings
from django.db import connection, connections
from django.db.models import OuterRef, Q, Subquery

from chatbot.models import Conversation, Message, ModelVersion
from chatbot.runtime import EMBED_AHEAD_CHUNK, get_runtime
from retrieval.groups import GROUP_SIMILARITY, LOOK_ALIKES_SHOWN, alike_groups


def conversation_history(*, conversation: Conversation, limit: int | None = None) -> list[Message]:
    """The latest messages of a conversation, oldest first."""
    limit = limit or settings.CHATBOT_HISTORY_LIMIT
    latest = conversation.messages.order_by("-created_at", "-id")[:limit]
    return list(reversed(latest))


def conversations_waiting(*, limit: int) -> list[Conversation]:
    """The conversations waiting for a person, the most recently active first, each with its
    customer's latest message (`last_customer_text`)."""
    latest = (
        Message.objects.filter(conversation=OuterRef("pk"), role=Message.Role.CUSTOMER)
        .order_by("-created_at", "-id")
        .values("text")[:1]
    )
    return list(
        Conversation.objects.filter(status=Conversation.Status.NEEDS_HUMAN)
        .order_by("-last_activity_at")
        .annotate(last_customer_text=Subquery(latest))[:limit]
    )


def messages_awaiting_the_team(*, conversation: Conversation, limit: int) -> list[Message]:
    """The customer's latest messages since someone on the team last wrote, newest first."""
    awaiting = []
    for message in conversation.messages.order_by("-created_at", "-id")[: 5 * limit]:
        if message.role == Message.Role.AGENT or len(awaiting) == limit:
            break
        if message.role == Message.Role.CUSTOMER:
            awaiting.append(message)
    return awaiting


def reply_to(*, message_id: int) -> Message | None:
    return Message.objects.select_related("intent").filter(in_reply_to_id=message_id).first()


def live_index_version() -> str | None:
    return get_runtime().indexes.live()


def model_version_ids(*, names: set[str]) -> dict[str, int]:
    """The ModelVersion rows of model directory names (the runtime knows only names)."""
    store = get_runtime().models
    directories = {str(store.path(name)): name for name in names if name}
    if not directories:
        return {}
    rows = ModelVersion.objects.filter(directory__in=directories).values_list("directory", "pk")
    return {directories[directory]: pk for directory, pk in rows}


FAILED_DECISIONS = (Message.Decision.CLARIFY, Message.Decision.OUT_OF_SCOPE)


@dataclass(frozen=True)
class TurnContext:
    """What the agent needs to know about a conversation before answering its next message."""

    status: str
    failures_in_a_row: int = 0
    # Quick replies the last clarifying question offered: label (lower case) -> intent.
    offered: dict[str, str] = field(default_factory=dict)
    # That question (the bot's reply), while its choices are open.
    question_id: int | None = None


def turn_context(*, message: Message, lookback: int | None = None) -> TurnContext:
    return turn_contexts(messages=[message], lookback=lookback)[message.pk]


def _lookback() -> int:
    """How many of a conversation's latest replies to read: enough to count the failures in a
    row that hand it off (CHATBOT_HANDOFF_AFTER_FAILURES)."""
    return max(10, settings.CHATBOT_HANDOFF_AFTER_FAILURES)


def turn_contexts(
    *, messages: Sequence[Message], lookback: int | None = None
) -> dict[int, TurnContext]:
    """`turn_context` of each of many messages (by primary key), in one query for them all:
    each conversation's status beside its latest replies to the customer, the bot's, a
    person's and the system's (ranked by a window function).

    Written in SQL because the ORM spent about 2 ms of a server's CPU building this query,
    several times what it takes to run (the chat calls it for every batch of messages).
    """
    if not messages:
        return {}
    conversations = sorted({m.conversation_id for m in messages})
    replies_to = [m.pk for m in messages]
    sql = _turn_contexts_sql().format(
        conversations=", ".join(["%s"] * len(conversations)),
        replies_to=", ".join(["%s"] * len(replies_to)),
    )
    params = [
        Message.Role.BOT,
        Message.Role.AGENT,
        Message.Role.SYSTEM,
        *conversations,
        *replies_to,
        lookback or _lookback(),
        *conversations,
    ]
    top_k = Message._meta.get_field("top_k")
    statuses: dict[int, str] = {}
    earlier: dict[int, list[Earlier]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for conversation_id, status, pk, role, decision, offered, helpful in cursor.fetchall():
            statuses[conversation_id] = status
            if role is not None:
                earlier[conversation_id].append(
                    Earlier(
                        pk,
                        role,
                        decision,
                        top_k.from_db_value(offered, None, connection),
                        None if helpful is None else bool(helpful),
                    )
                )
    return {
        m.pk: _turn_context(statuses[m.conversation_id], earlier[m.conversation_id])
        for m in messages
    }


@cache
def _turn_contexts_sql() -> str:
    """`turn_contexts`' query, its tables and columns named once; `{conversations}` and
    `{replies_to}` stand for as many placeholders as there are of each."""
    quote = connection.ops.quote_name
    conversation, message = Conversation._meta, Message._meta
    c = {name: quote(conversation.get_field(name).column) for name in ("id", "status")}
    m = {
        name: quote(message.get_field(name).column)
        for name in ("id", "conversation", "role", "decision", "top_k", "helpful", "created_at")
    }
    in_reply_to = quote(message.get_field("in_reply_to").column)
    return f"""
        SELECT c.{c["id"]}, c.{c["status"]}, r.id, r.role, r.decision, r.top_k, r.helpful
        FROM {quote(conversation.db_table)} c
        LEFT JOIN (
            SELECT m.{m["conversation"]} AS conversation_id,
                   m.{m["id"]} AS id,
                   m.{m["role"]} AS role,
                   m.{m["decision"]} AS decision,
                   m.{m["top_k"]} AS top_k,
                   m.{m["helpful"]} AS helpful,
                   ROW_NUMBER() OVER (
                       PARTITION BY m.{m["conversation"]}
                       ORDER BY m.{m["created_at"]} DESC, m.{m["id"]} DESC
                   ) AS newest
            FROM {quote(message.db_table)} m
            WHERE m.{m["role"]} IN (%s, %s, %s)
              AND m.{m["conversation"]} IN ({{conversations}})
              AND (m.{in_reply_to} IS NULL OR m.{in_reply_to} NOT IN ({{replies_to}}))
        ) r ON r.conversation_id = c.{c["id"]} AND r.newest <= %s
        WHERE c.{c["id"]} IN ({{conversations}})
        ORDER BY c.{c["id"]}, r.newest
    """


class Earlier(NamedTuple):
    """One of a conversation's latest replies to the customer, as `turn_contexts` reads it."""

    pk: int
    role: str
    decision: str
    top_k: list
    helpful: bool | None  # what the customer said of it (bot answers)

    @property
    def failed(self) -> bool:
        """A bot reply that got the customer nowhere: a question back, a decline, or an answer
        they said did not help."""
        return self.role == Message.Role.BOT and (
            self.decision in FAILED_DECISIONS or self.helpful is False
        )


def _turn_context(status: str, earlier: list[Earlier]) -> TurnContext:
    """The context from a conversation's status and its latest replies to the customer, newest
    first. A person's reply or a system note (a hand-back) ends the bot's run of failures, and
    any question it asked."""
    failures = 0
    for reply in earlier:
        if not reply.failed:
            break
        failures += 1
    question = earlier[0] if earlier else None
    if question is None or (question.role, question.decision) != (
        Message.Role.BOT,
        Message.Decision.CLARIFY,
    ):
        return TurnContext(status=status, failures_in_a_row=failures)
    offered = {a["label"].lower(): a["intent"] for a in question.top_k if a.get("label")}
    return TurnContext(status, failures, offered, question.pk)


@dataclass(frozen=True)
class LookAlike:
    """A message the bot answered (or asked about) that looks like a group of declined ones:
    it would have joined the group, had the bot declined it."""

    message_id: int
    text: str
    intent: str  # what the bot took it for
    decision: str
    similarity: float  # mean cosine to the group's messages


@dataclass(frozen=True)
class Member:
    message_id: int
    text: str


@dataclass(frozen=True)
class CandidateIntent:
    """Customer messages that look alike and that no intent matched."""

    size: int
    examples: list[str]  # closest to the group's centre first
    members: list[Member]  # all of them, in the same order
    out_of_scope: int = 0  # how many a reviewer already marked out of scope
    look_alikes: list[LookAlike] = field(default_factory=list)  # most alike first

    @property
    def message_ids(self) -> list[int]:
        return [m.message_id for m in self.members]


def unmatched_messages(*, limit: int = 2000) -> list[Message]:
    """Customer messages the bot declined, or a reviewer marked out of scope, newest first."""
    declined = Message.objects.filter(
        Q(reply__decision=Message.Decision.OUT_OF_SCOPE, review="")
        | Q(review=Message.Review.OUT_OF_SCOPE),
        role=Message.Role.CUSTOMER,
    )
    return list(declined.order_by("-created_at")[:limit])


def answered_messages(*, limit: int = 1000) -> list[Message]:
    """Customer messages not yet reviewed that the bot answered or asked about, newest first,
    with the bot's reply."""
    answered = Message.objects.filter(
        role=Message.Role.CUSTOMER,
        review="",
        reply__decision__in=(Message.Decision.ANSWER, Message.Decision.CLARIFY),
    ).select_related("reply__intent")
    return list(answered.order_by("-created_at")[:limit])


def candidate_texts() -> list[str]:
    """The texts "Candidate new intents" encodes: the unmatched messages, then the answered."""
    return [m.text for m in unmatched_messages()] + [m.text for m in answered_messages()]


def embed_candidates_ahead(*, chunk: int = EMBED_AHEAD_CHUNK) -> threading.Thread:
    """Encode what "Candidate new intents" groups before an admin opens it (a serving process
    starting); the page then encodes only what arrived since."""

    def texts() -> list[str]:
        try:
            return candidate_texts()
        finally:
            connections.close_all()  # this thread's own connection, which nothing else closes

    return get_runtime().embed_ahead(texts, chunk=chunk)


def candidate_intents(
    *,
    min_size: int = 3,
    similarity: float = GROUP_SIMILARITY,
    shown: int = 5,
    look_alikes: int = LOOK_ALIKES_SHOWN,
) -> list[CandidateIntent]:
    """Groups of unmatched messages, largest first: average-linkage clustering of their
    sentence embeddings, cut where groups stop being at least `similarity` alike on average.
    Under each, up to `look_alikes` answered messages that would have joined it by the same
    rule: the bot's confident answers to a question it does not know are among them."""
    messages = unmatched_messages()
    if len(messages) < min_size:
        return []
    answered = answered_messages()
    vectors = get_runtime().embed([m.text for m in messages + answered])  # as candidate_texts
    groups = alike_groups(
        vectors[: len(messages)],
        vectors[len(messages) :],
        min_size=min_size,
        similarity=similarity,
    )
    return [
        CandidateIntent(
            size=len(group.members),
            examples=[messages[i].text for i in group.members[:shown]],
            members=[Member(messages[i].pk, messages[i].text) for i in group.members],
            out_of_scope=sum(
                messages[i].review == Message.Review.OUT_OF_SCOPE for i in group.members
            ),
            look_alikes=[
                LookAlike(
                    message_id=answered[i].pk,
                    text=answered[i].text,
                    intent=answered[i].reply.intent.name if answered[i].reply.intent else "",
                    decision=answered[i].reply.decision,
                    similarity=float(score),
                )
                for i, score in zip(
                    group.look_alikes[:look_alikes],
                    group.look_alike_similarity[:look_alikes],
                    strict=True,
                )
            ],
        )
        for group in groups
    ]
