"""Review in Django admin: the queue, its verdicts, conversation filters, CSV, candidate intents."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client
from django.urls import reverse

from chatbot import selectors
from chatbot.learning import ReviewError, review_apply
from chatbot.models import Conversation, Intent, IntentExample, Message
from retrieval.groups import GROUP_SIMILARITY
from tests.chatbot.conftest import turn

QUEUE = "admin:chatbot_reviewitem_changelist"


@pytest.fixture
def intents(db) -> dict[str, Intent]:
    names = ("card_lost", "opening_hours", "refund_request")
    return {name: Intent.objects.create(name=name) for name in names}


@pytest.fixture
def queue(intents) -> list[Message]:
    conversation = Conversation.objects.create()
    return [
        turn(conversation, "my card is gone", intent=intents["card_lost"], confidence=0.9),
        turn(
            conversation,
            "when do you close on sunday",
            intent=intents["card_lost"],
            confidence=0.41,
            decision="clarify",
            priority=1.6,
        ),
        turn(
            conversation,
            "i want my money back",
            intent=intents["opening_hours"],
            confidence=0.55,
            priority=0.9,
        ),
    ]


def act(client: Client, action: str, messages: list[Message], **fields) -> str:
    response = client.post(
        reverse(QUEUE),
        {"action": action, "_selected_action": [m.pk for m in messages], **fields},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


def test_the_queue_lists_the_most_useful_messages_first_and_opens_on_what_is_left(
    admin_client: Client, queue: list[Message]
) -> None:
    # given
    queue[2].review = Message.Review.SKIPPED
    queue[2].save()

    # when
    response = admin_client.get(reverse(QUEUE), follow=True)

    # then: the unsure clarify turn first; the skipped one is no longer waiting
    shown = [m.text for m in response.context["cl"].result_list]
    assert shown == ["when do you close on sunday", "my card is gone"]
    assert response.redirect_chain[0][0].endswith("?review=todo")

    # when: the filter's "All"
    everything = admin_client.get(reverse(QUEUE), {"review": "all"})

    # then: reviewed or not, and its link keeps the parameter (without it, the queue reopens
    # on what is left to review)
    assert everything.context["cl"].result_count == len(queue)
    assert 'href="?review=all"' in everything.content.decode()


def test_each_row_shows_the_bots_confidence_and_decision_and_sorts_by_them(
    admin_client: Client, queue: list[Message]
) -> None:
    # when: sorted by the Confidence column (the third), lowest first
    response = admin_client.get(reverse(QUEUE), {"review": "todo", "o": "3"})

    # then
    page = response.content.decode()
    assert '<td class="field-bot_confidence">41.0%</td>' in page
    assert '<td class="field-bot_decision">Asked to clarify</td>' in page
    assert '<td class="field-bot_confidence">90.0%</td>' in page
    shown = [m.text for m in response.context["cl"].result_list]
    assert shown == ["when do you close on sunday", "i want my money back", "my card is gone"]


def test_confirming_makes_the_message_a_reviewed_example_of_the_predicted_intent(
    admin_client: Client, queue: list[Message], intents
) -> None:
    # when
    page = act(admin_client, "confirm", [queue[0]])

    # then
    example = IntentExample.objects.get(message=queue[0])
    assert (example.intent, example.text, example.source) == (
        intents["card_lost"],
        "my card is gone",
        "reviewed",
    )
    queue[0].refresh_from_db()
    assert queue[0].review == "confirmed"
    assert queue[0].reviewed_by.username == "admin"
    assert "1 message(s) confirmed" in page


def test_relabelling_replaces_an_earlier_verdict_and_its_example(
    admin_client: Client, queue: list[Message], intents
) -> None:
    # given: first confirmed as card_lost (wrongly)
    act(admin_client, "confirm", [queue[1]])

    # when
    act(admin_client, "relabel", [queue[1]], intent=intents["opening_hours"].pk)

    # then
    examples = IntentExample.objects.filter(text="when do you close on sunday")
    assert [e.intent.name for e in examples] == ["opening_hours"]
    assert examples[0].message == queue[1]


def test_reviewing_again_never_removes_an_example_the_knowledge_base_had(
    admin_client: Client, queue: list[Message], intents
) -> None:
    # given: a customer wrote a curated phrasing word for word, and two wrote the same new one
    curated = IntentExample.objects.create(intent=intents["card_lost"], text="my card is gone")
    conversation = queue[0].conversation
    twice = [
        turn(conversation, "lost it at the bar", intent=intents["card_lost"], confidence=0.7)
        for _ in range(2)
    ]
    act(admin_client, "confirm", [queue[0], *twice])

    # when: each verdict is taken back
    act(admin_client, "skip", [queue[0], twice[0]])

    # then: the curated example stays; the reviewed one stays while a review still says it
    curated.refresh_from_db()
    assert curated.message is None and curated.source == "curated"
    reviewed = IntentExample.objects.get(text="lost it at the bar")
    assert reviewed.message == twice[1]

    # when: the last one too
    act(admin_client, "skip", [twice[1]])

    # then
    assert not IntentExample.objects.filter(text="lost it at the bar").exists()
    assert IntentExample.objects.filter(pk=curated.pk).exists()


def test_relabelling_to_a_new_intent_creates_it_on_the_spot(
    admin_client: Client, queue: list[Message]
) -> None:
    # when
    page = act(admin_client, "relabel", [queue[2]], new_intent="Refund status")

    # then
    intent = Intent.objects.get(name="refund_status")
    assert list(intent.examples.values_list("text", flat=True)) == ["i want my money back"]
    assert "has no answer yet" in page
    assert "refund_status has 1 example(s): training leaves it out until it has 3" in page


def test_out_of_scope_and_skip_record_the_verdict_without_an_example(
    admin_client: Client, queue: list[Message]
) -> None:
    # when
    act(admin_client, "mark_out_of_scope", [queue[1]])
    act(admin_client, "skip", [queue[2]])

    # then
    queue[1].refresh_from_db()
    queue[2].refresh_from_db()
    assert (queue[1].review, queue[2].review) == ("out_of_scope", "skipped")
    assert not IntentExample.objects.filter(message__in=queue).exists()


def test_relabel_without_an_intent_is_refused_and_changes_nothing(
    admin_client: Client, queue: list[Message]
) -> None:
    # when
    page = act(admin_client, "relabel", [queue[0]])

    # then
    assert "Choose an intent" in page
    queue[0].refresh_from_db()
    assert queue[0].review == ""
    with pytest.raises(ReviewError):
        review_apply(message_ids=[queue[0].pk], verdict="nonsense")


def test_conversation_filters_and_csv_export(
    admin_client: Client, queue: list[Message], intents
) -> None:
    # given: a second conversation, handed off and fully reviewed
    other = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    human = turn(other, "let me talk to someone", intent=intents["refund_request"], confidence=0.99)
    Message.objects.filter(in_reply_to=human).update(decision="handoff")
    review_apply(message_ids=[human.pk], verdict="confirmed")
    changelist = reverse("admin:chatbot_conversation_changelist")

    def shown(**query) -> set:
        response = admin_client.get(changelist, query)
        assert response.status_code == 200
        return {c.pk for c in response.context["cl"].result_list}

    first = queue[0].conversation_id

    # then
    assert shown(handed_off="yes") == {other.pk}
    assert shown(handed_off="no") == {first}
    assert shown(reviewed="yes") == {other.pk}
    assert shown(reviewed="no") == {first}
    assert shown(intent=intents["opening_hours"].pk) == {first}
    assert shown(confidence="lt50") == {first}
    assert shown(confidence="95up") == {other.pk}
    assert shown(status__exact="needs_human") == {other.pk}

    # when
    response = admin_client.post(
        changelist, {"action": "export_csv", "_selected_action": [first, other.pk]}
    )

    # then
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert response["Content-Type"].startswith("text/csv")
    assert len(rows) == 8
    handed = next(r for r in rows if r["text"] == "let me talk to someone")
    assert (handed["review"], handed["reviewed_intent"]) == ("confirmed", "refund_request")
    assert {r["decision"] for r in rows if r["role"] == "bot"} == {"answer", "clarify", "handoff"}


def test_alike_unmatched_messages_are_grouped_as_candidate_new_intents(
    admin_client: Client, intents
) -> None:
    # given: two recurring questions no intent covers, and one stray
    conversation = Conversation.objects.create()
    crypto = [
        "can i buy bitcoin with my account",
        "do you support buying bitcoin",
        "can i buy bitcoin in the app",
        "is it possible to buy bitcoin here",
    ]
    pets = [
        "does my insurance cover my dog",
        "is pet insurance included for dogs",
        "can i get insurance for my dog",
    ]
    for text in [*crypto, *pets, "what's the weather like on mars"]:
        turn(conversation, text, intent=None, confidence=0.2, decision="out_of_scope")

    # when
    groups = selectors.candidate_intents()

    # then
    assert [(g.size, set(g.examples)) for g in groups] == [(4, set(crypto)), (3, set(pets))]

    # when: the admin names the first group
    page = admin_client.get(reverse("admin:chatbot_reviewitem_candidates"))
    assert page.content.decode().count("Mark these out of scope") == 2
    admin_client.post(
        reverse("admin:chatbot_reviewitem_candidates"),
        {"message": groups[0].message_ids, "new_intent": "buy crypto"},
    )

    # then
    assert "4 messages" in page.content.decode()
    examples = IntentExample.objects.filter(intent__name="buy_crypto")
    assert set(examples.values_list("text", flat=True)) == set(crypto)
    assert [len(g.message_ids) for g in selectors.candidate_intents()] == [3]

    # when: the company does not sell pet insurance, and the admin says so for the group
    admin_client.post(
        reverse("admin:chatbot_reviewitem_candidates"),
        {"message": groups[1].message_ids, "verdict": "out_of_scope"},
    )

    # then: each is reviewed out of scope (what the next model learns to decline), no intent is
    # made, and the group stays listed as such, with nothing left to mark
    reviewed = Message.objects.filter(pk__in=groups[1].message_ids)
    assert sorted(reviewed.values_list("review", flat=True)) == ["out_of_scope"] * 3
    assert not Intent.objects.filter(name__contains="insurance").exists()
    [left] = selectors.candidate_intents()
    assert (left.size, left.out_of_scope) == (3, 3)
    page = admin_client.get(reverse("admin:chatbot_reviewitem_candidates")).content.decode()
    assert "3 messages (3 marked out of scope)" in page
    assert "Mark these out of scope" not in page


def test_a_verdict_that_undoes_an_example_takes_it_out_of_the_answer_index(
    knowledge_base: str,
) -> None:
    # given: a message relabelled into an intent, its text in the live index (Celery in-process)
    from chatbot.celery import app
    from chatbot.runtime import get_runtime

    words = "what is the weather like in Paris"
    message = Message.objects.create(
        conversation=Conversation.objects.create(), role="customer", text=words
    )
    app.conf.task_always_eager = True
    try:
        review_apply(
            message_ids=[message.pk],
            verdict="relabelled",
            intent=Intent.objects.get(name="order_status"),
        )
        learnt = get_runtime().index()

        # when: the reviewer corrects it to out of scope
        review_apply(message_ids=[message.pk], verdict="out_of_scope")
    finally:
        app.conf.task_always_eager = False

    # then: gone from the examples, and from what the chat searches
    indexed = {e.text for e in learnt.examples.entries.values()}
    assert words in indexed
    assert not IntentExample.objects.filter(text=words).exists()
    assert words not in {e.text for e in get_runtime().index().examples.entries.values()}


def test_a_group_lists_the_alike_messages_the_bot_answered_and_takes_those_ticked(
    admin_client: Client, intents
) -> None:
    # given: a question no intent covers, declined three times and answered twice with another
    # intent's answer; and right answers that look nothing like it
    conversation = Conversation.objects.create()
    declined = [
        "can i buy bitcoin with my account",
        "do you support buying bitcoin",
        "can i buy bitcoin in the app",
    ]
    for text in declined:
        turn(conversation, text, intent=None, confidence=0.2, decision="out_of_scope")
    wrong = turn(
        conversation,
        "I want to buy some bitcoin please",
        intent=intents["card_lost"],
        confidence=0.8,
    )
    asked = turn(
        conversation,
        "where can I buy bitcoin",
        intent=intents["refund_request"],
        confidence=0.5,
        decision="clarify",
    )
    right = [
        turn(conversation, "my card is gone", intent=intents["card_lost"], confidence=0.9),
        turn(conversation, "when do you open", intent=intents["opening_hours"], confidence=0.9),
    ]

    # when
    [group] = selectors.candidate_intents()

    # then: the two that would have joined the group are listed under it, most alike first,
    # with what the bot took them for; the right answers are not
    assert group.size == 3
    assert {(a.message_id, a.intent, a.decision) for a in group.look_alikes} == {
        (wrong.pk, "card_lost", "answer"),
        (asked.pk, "refund_request", "clarify"),
    }
    assert all(a.similarity >= GROUP_SIMILARITY for a in group.look_alikes)
    assert [a.similarity for a in group.look_alikes] == sorted(
        (a.similarity for a in group.look_alikes), reverse=True
    )
    page = admin_client.get(reverse("admin:chatbot_reviewitem_candidates")).content.decode()
    assert "The bot answered these alike messages" in page
    assert f'name="message" value="{wrong.pk}">' in page  # unticked
    for member in group.members:  # the group's own messages: ticked, each may be unticked
        assert f'name="message" value="{member.message_id}" checked> {member.text}' in page
    assert "answered as\n            card_lost" in page
    assert "asked about\n            refund_request" in page
    assert "my card is gone" not in page

    # when: the admin ticks only the first look-alike, unticks one of the group's messages, and
    # marks the group out of scope
    kept, unticked = group.message_ids[:2], group.message_ids[2]
    admin_client.post(
        reverse("admin:chatbot_reviewitem_candidates"),
        {"message": [*kept, wrong.pk], "verdict": "out_of_scope"},
    )

    # then: what was ticked is reviewed out of scope; the unticked ones and the right answers
    # are not reviewed; the ticked look-alike is now one of the group's
    reviewed = set(Message.objects.filter(review="out_of_scope").values_list("pk", flat=True))
    assert reviewed == {*kept, wrong.pk}
    untouched = [unticked, asked.pk, *(m.pk for m in right)]
    assert not Message.objects.filter(pk__in=untouched).exclude(review="").exists()
    [after] = selectors.candidate_intents()
    assert (after.size, after.out_of_scope) == (4, 3)
    assert [a.message_id for a in after.look_alikes] == [asked.pk]
    page = admin_client.get(reverse("admin:chatbot_reviewitem_candidates")).content.decode()
    assert "Mark these out of scope" in page  # the one left to tick

    # when: the admin creates an intent from the group with the last look-alike ticked
    admin_client.post(
        reverse("admin:chatbot_reviewitem_candidates"),
        {"message": [*after.message_ids, asked.pk], "new_intent": "buy crypto"},
    )

    # then: it becomes one of the new intent's examples with the group
    examples = IntentExample.objects.filter(intent__name="buy_crypto").values_list(
        "text", flat=True
    )
    assert "where can I buy bitcoin" in set(examples)
