"""Bot replies are stored a batch at a time, and nothing in a batch is lost to a conflict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from chatbot import protocol
from chatbot.agent import AgentReply, IntentScore
from chatbot.models import AnswerTemplate, Conversation, Intent, Message
from chatbot.services import BotTurn, bot_replies_store, message_ids_reserve

pytestmark = pytest.mark.django_db(transaction=True)  # foreign keys are checked at commit

ROOT = Path(__file__).resolve().parents[2]


def answer(intent: str, text: str = "Track it under My orders.") -> AgentReply:
    return AgentReply(
        text=text,
        decision="answer",
        intent=intent,
        confidence=0.9,
        alternatives=(IntentScore(intent, 0.9), IntentScore("refund_request", 0.05)),
        template_id=None,
        template_similarity=None,
        suggestions=("Track my order",),
        index_version="v1",
    )


def question(conversation: Conversation, text: str) -> Message:
    return Message.objects.create(conversation=conversation, role="customer", text=text)


def test_a_batch_of_replies_is_stored_with_each_intent_and_priority() -> None:
    # given
    conversation = Conversation.objects.create()
    order_status = Intent.objects.create(name="order_status")
    questions = [question(conversation, f"where is order {n}?") for n in range(3)]

    # when
    stored = bot_replies_store([BotTurn(q, answer("order_status"), 12.0) for q in questions])

    # then
    assert [m.in_reply_to_id for m in stored] == [q.pk for q in questions]
    replies = Message.objects.filter(role="bot").order_by("id")
    assert [m.pk for m in replies] == [m.pk for m in stored]
    assert all(m.intent_id == order_status.pk and m.latency_ms == 12.0 for m in replies)
    priorities = Message.objects.filter(role="customer").values_list("review_priority", flat=True)
    assert set(priorities) == {answer("order_status").review_priority}


def test_an_intent_recreated_since_it_was_last_named_still_gets_its_reply() -> None:
    # given: a reply naming the intent (the process remembers its row), then the row replaced
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    bot_replies_store([BotTurn(question(conversation, "first"), answer("order_status"), 1.0)])
    Intent.objects.filter(name="order_status").delete()
    recreated = Intent.objects.create(name="order_status")
    second = question(conversation, "second")

    # when
    [stored] = bot_replies_store([BotTurn(second, answer("order_status"), 1.0)])

    # then
    assert Message.objects.get(in_reply_to=second).intent_id == recreated.pk == stored.intent_id


def test_a_reply_that_already_exists_does_not_lose_the_rest_of_its_batch() -> None:
    # given: the first question already has its reply
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    first, second = question(conversation, "first"), question(conversation, "second")
    [existing] = bot_replies_store([BotTurn(first, answer("order_status", "earlier"), 1.0)])

    # when
    stored = bot_replies_store(
        [BotTurn(first, answer("order_status"), 1.0), BotTurn(second, answer("order_status"), 1.0)]
    )

    # then: one reply each, the first one unchanged
    assert stored[0].pk == existing.pk and stored[0].text == "earlier"
    assert Message.objects.get(in_reply_to=second).pk == stored[1].pk
    assert Message.objects.filter(role="bot").count() == 2


def test_replies_naming_known_templates_are_stored_without_reading_them_again(
    django_assert_num_queries,
) -> None:
    # given: a reply linked to a template, so the process knows the row exists
    conversation = Conversation.objects.create()
    intent = Intent.objects.create(name="order_status")
    template = AnswerTemplate.objects.create(intent=intent, text="Track it under My orders.")
    with_template = replace(answer("order_status"), template_id=template.pk)
    bot_replies_store([BotTurn(question(conversation, "first"), with_template, 1.0)])
    second, third = question(conversation, "second"), question(conversation, "third")

    # when: BEGIN, the customers' review priorities, the replies, COMMIT
    with django_assert_num_queries(4):
        stored = bot_replies_store(
            [BotTurn(second, with_template, 1.0), BotTurn(third, with_template, 1.0)]
        )

    # then
    assert {m.template_id for m in stored} == {template.pk}
    assert Message.objects.filter(role="bot", template=template).count() == 3


def test_a_template_deleted_after_the_process_saw_it_still_gets_the_reply_stored() -> None:
    # given: a template the process has linked a reply to, then deleted by an admin
    conversation = Conversation.objects.create()
    intent = Intent.objects.create(name="order_status")
    template = AnswerTemplate.objects.create(intent=intent, text="Track it under My orders.")
    with_template = replace(answer("order_status"), template_id=template.pk)
    bot_replies_store([BotTurn(question(conversation, "first"), with_template, 1.0)])
    template.delete()
    later = question(conversation, "later")

    # when: the index still names it
    [stored] = bot_replies_store([BotTurn(later, with_template, 1.0)])

    # then: the reply keeps its text and loses only the link
    reply = Message.objects.get(in_reply_to=later)
    assert reply.pk == stored.pk and reply.template_id is None
    assert reply.text == with_template.text


def test_a_reply_is_stored_under_the_id_reserved_for_it_which_no_other_row_gets() -> None:
    # given: ids reserved, then a row inserted the ordinary way
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    reserved = message_ids_reserve(3)
    first, second = question(conversation, "first"), question(conversation, "second")

    # when: one reply with a reserved id and one without, in one batch
    reply = answer("order_status")
    stored = bot_replies_store(
        [BotTurn(first, reply, 1.0, reply_id=reserved[1]), BotTurn(second, reply, 1.0)]
    )

    # then
    assert len(set(reserved)) == 3 and {first.pk, second.pk, stored[1].pk}.isdisjoint(reserved)
    assert [m.in_reply_to_id for m in stored] == [first.pk, second.pk]
    row = Message.objects.select_related("intent").get(pk=reserved[1])
    assert row.in_reply_to_id == first.pk
    # and the frame sent before the row was written is the frame of the row
    assert protocol.agent_reply_frame(
        reply, id=reserved[1], in_reply_to="c-1"
    ) == protocol.reply_frame(row, in_reply_to="c-1")


def test_a_reply_whose_reserved_id_was_taken_is_stored_under_another() -> None:
    # given: the reserved id taken by a row written under it (a sequence reset under a process)
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    [taken] = message_ids_reserve(1)
    Message.objects.create(pk=taken, conversation=conversation, role="system", text="note")
    later = question(conversation, "later")

    # when
    [stored] = bot_replies_store([BotTurn(later, answer("order_status"), 1.0, reply_id=taken)])

    # then: the reply is not lost
    assert stored.pk != taken
    assert Message.objects.get(in_reply_to=later).pk == stored.pk


def test_message_ids_are_reserved_on_sqlite_too(tmp_path) -> None:
    # given: the embedded database, migrated, with no message yet
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    script = """
import json
from django.db import connection
from chatbot.models import Conversation, Message
from chatbot.services import message_ids_reserve
conversation = Conversation.objects.create()
# A table that was never rebuilt has no sqlite_sequence row until its first insert.
connection.cursor().execute("DELETE FROM sqlite_sequence WHERE name = 'chatbot_message'")
before = message_ids_reserve(3)
inserted = Message.objects.create(conversation=conversation, role="customer", text="hi").pk
after = message_ids_reserve(2)
Message.objects.create(pk=before[0], conversation=conversation, role="bot", text="hello")
print(json.dumps({"before": before, "inserted": inserted, "after": after}))
"""

    # when
    done = subprocess.run(
        [*manage, "shell", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )

    # then: each block is new, and an ordinary insert lands after the blocks before it
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    assert ids == {"before": [1, 2, 3], "inserted": 4, "after": [5, 6]}


def test_each_customer_message_gets_the_review_priority_of_its_own_reply() -> None:
    # given: replies of different certainty in one batch
    conversation = Conversation.objects.create()
    Intent.objects.create(name="order_status")
    sure, unsure = question(conversation, "sure"), question(conversation, "unsure")
    doubtful = replace(answer("order_status"), confidence=0.3, decision="clarify")

    # when
    bot_replies_store([BotTurn(sure, answer("order_status"), 1.0), BotTurn(unsure, doubtful, 1.0)])

    # then
    priorities = dict(Message.objects.filter(role="customer").values_list("pk", "review_priority"))
    assert priorities == {
        sure.pk: pytest.approx(answer("order_status").review_priority),
        unsure.pk: pytest.approx(doubtful.review_priority),
    }
    assert doubtful.review_priority > answer("order_status").review_priority
