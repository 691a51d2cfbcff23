import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from chatbot.knowledge import (
    DEMO_KNOWLEDGE_BASE,
    KnowledgeBaseError,
    answer_index_build,
    knowledge_base_load,
)
from chatbot.models import AnswerTemplate, Intent, IntentExample
from chatbot.runtime import get_runtime


def test_demo_knowledge_base_covers_a_shop() -> None:
    intents = json.loads(DEMO_KNOWLEDGE_BASE.read_text())["intents"]
    names = {intent["name"] for intent in intents}

    assert len(intents) >= 25
    assert all(len(intent["examples"]) >= 15 for intent in intents)
    assert all(intent["templates"] for intent in intents)
    assert {"order_status", "return_item", "refund_status", "talk_to_human", "greeting"} <= names


@pytest.mark.django_db
def test_loading_twice_adds_nothing_the_second_time() -> None:
    first = knowledge_base_load()
    counts = (Intent.objects.count(), IntentExample.objects.count(), AnswerTemplate.objects.count())

    second = knowledge_base_load()

    assert first.examples_added == counts[1] and first.templates_added == counts[2]
    assert (second.examples_added, second.templates_added) == (0, 0)
    assert counts == (
        Intent.objects.count(),
        IntentExample.objects.count(),
        AnswerTemplate.objects.count(),
    )


@pytest.mark.django_db
def test_a_restart_does_not_bring_back_a_template_an_admin_reworded() -> None:
    # given: the demo loaded at a first start, then a template reworded in Django admin
    call_command("load_knowledge_base", "--if-empty")
    template = AnswerTemplate.objects.filter(intent__name="opening_hours").first()
    first_wording = template.text
    template.text = "We are open Monday to Friday, 09:00 to 17:00 only."
    template.save()
    counts = (IntentExample.objects.count(), AnswerTemplate.objects.count())

    # when: the product starts again
    call_command("load_knowledge_base", "--if-empty")

    # then: the admin's wording stands alone
    texts = set(
        AnswerTemplate.objects.filter(intent__name="opening_hours").values_list("text", flat=True)
    )
    assert "We are open Monday to Friday, 09:00 to 17:00 only." in texts
    assert first_wording not in texts
    assert counts == (IntentExample.objects.count(), AnswerTemplate.objects.count())


@pytest.mark.django_db
def test_a_malformed_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"intents": [{"examples": ["hi"]}]}))

    with pytest.raises(KnowledgeBaseError, match='needs a "name"'):
        knowledge_base_load(path=path)
    with pytest.raises(CommandError):
        call_command("load_knowledge_base", str(tmp_path / "missing.json"))
    assert not Intent.objects.exists()


@pytest.mark.django_db
def test_index_build_needs_a_knowledge_base() -> None:
    with pytest.raises(KnowledgeBaseError):
        answer_index_build()


def test_index_is_rebuilt_when_a_template_changes_and_kept_when_nothing_did(
    knowledge_base: str,
) -> None:
    # given
    assert answer_index_build() == knowledge_base
    template = AnswerTemplate.objects.filter(intent__name="opening_hours").first()

    # when
    template.text = "We are open every day from 07:00 to 23:00."
    template.save()
    version = answer_index_build()

    # then
    assert version != knowledge_base
    index = get_runtime().index()
    assert index.version == version
    assert index.templates.entries[template.pk].text == template.text


def test_a_customers_message_learnt_from_a_review_is_indexed_as_not_to_be_shown(
    knowledge_base: str,
) -> None:
    # given: a customer's message relabelled into an intent in the review queue
    from chatbot import learning
    from chatbot.models import Conversation, Message

    intent = Intent.objects.get(name="order_status")
    words = "order 88123 for Jane Doe never came"
    message = Message.objects.create(
        conversation=Conversation.objects.create(), role="customer", text=words
    )
    learning.review_apply(message_ids=[message.pk], verdict="relabelled", intent=intent)

    # when
    answer_index_build()

    # then: indexed (the model and the retriever learn from it), but never a quick reply
    entries = get_runtime().index().examples.entries.values()
    shown = {e.text: e.public for e in entries if e.intent == "order_status"}
    assert shown.pop(words) is False
    assert shown and all(shown.values())


@pytest.mark.django_db(transaction=True)
def test_deleting_the_last_template_withdraws_the_index_instead_of_serving_it() -> None:
    # given: a one-intent knowledge base, live
    intent = Intent.objects.create(name="opening_hours")
    IntentExample.objects.create(intent=intent, text="when are you open")
    template = AnswerTemplate.objects.create(intent=intent, text="We open 9 to 5 (old hours).")
    answer_index_build()
    assert get_runtime().index() is not None

    # when: the admin deletes its only template
    template.delete()
    with pytest.raises(KnowledgeBaseError):
        answer_index_build()

    # then: the chat no longer answers with the deleted text: it has no index at all
    assert get_runtime().indexes.live() is None
    assert get_runtime().index() is None
