"""The widget in a real headless Chromium (Debian's), driven by Playwright, against real daphne."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from chatbot.agent import TALK_TO_PERSON_LABEL
from chatbot.models import Message
from tests.chatbot.conftest import LiveServer, reply_row

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("knowledge_base")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPLY_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop running on this thread, which makes Django
    # refuse the test's own (synchronous, single-threaded) database calls; they are safe here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "1"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    yield opened
    context.close()
    # Closing the page closes its chat, and the server's handling of that still queries the
    # database: let it finish before the test database is emptied (TRUNCATE), which it would
    # otherwise deadlock with on a busy machine.
    server_queries_settle()


def server_queries_settle(timeout_s: float = 10.0) -> None:
    from django.db import connection

    deadline = time.monotonic() + timeout_s
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state NOT IN ('idle')"
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.05)


def open_widget(page: Page, server: LiveServer) -> None:
    page.goto(f"{server.url}/")
    page.get_by_test_id("chat-launcher").click()
    expect(page.get_by_test_id("chat-panel")).to_be_visible()
    expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "online")


def first_reply(page: Page, text: str) -> Message:
    """Send the conversation's first message; its reply as stored, once the widget shows it."""
    say(page, text)
    expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)  # greeting + reply
    return reply_row(bubbles(page, "bot").last.get_attribute("data-id"))


@contextmanager
def support_admin(browser: Browser, server: LiveServer) -> Iterator[Page]:
    """A support admin logged in to Django admin, in a browser of their own."""
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("support", "", "pass-for-tests-1")
    context = browser.new_context()
    admin = context.new_page()
    try:
        admin.goto(f"{server.url}/admin/login/")
        admin.fill("#id_username", "support")
        admin.fill("#id_password", "pass-for-tests-1")
        admin.click("input[type=submit]")
        yield admin
    finally:
        context.close()


def say(page: Page, text: str) -> None:
    """The customer types `text` in the widget and sends it."""
    page.get_by_test_id("chat-input").fill(text)
    page.get_by_test_id("chat-send").click()


def expect_live(page: Page, area: str) -> None:
    """Wait until the admin page's live `area` listens (nothing said before then reaches it)."""
    expect(page.locator(f"{area} [data-live-state]")).to_have_attribute("data-state", "live")


def bubbles(page: Page, role: str):
    return page.locator(f'[data-testid="chat-message"][data-role="{role}"]')


def test_a_customer_chats_reloads_and_sees_the_history(
    page: Page, daphne_server: LiveServer
) -> None:
    # given
    open_widget(page, daphne_server)

    # when
    say(page, "How long does standard delivery take?")

    # then
    expect(bubbles(page, "customer")).to_have_text(["How long does standard delivery take?"])
    expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)  # greeting + reply
    reply = reply_row(bubbles(page, "bot").last.get_attribute("data-id"))
    expect(bubbles(page, "bot").last).to_have_text(reply.text, timeout=REPLY_TIMEOUT_MS)
    expect(page.get_by_test_id("chat-typing")).to_be_hidden()

    # and after a reload, the same conversation is shown again
    page.reload()
    page.get_by_test_id("chat-launcher").click()
    expect(bubbles(page, "customer")).to_have_text(["How long does standard delivery take?"])
    expect(bubbles(page, "bot").last).to_have_text(reply.text, timeout=REPLY_TIMEOUT_MS)
    assert Message.objects.filter(role="customer").count() == 1


def test_quick_replies_send_their_label_and_text_is_never_html(
    page: Page, daphne_server: LiveServer
) -> None:
    # given: the greeting's answer offers quick replies
    open_widget(page, daphne_server)
    page.get_by_test_id("chat-input").fill("hello")
    page.get_by_test_id("chat-input").press("Enter")
    quick = page.get_by_test_id("chat-quick-reply")
    expect(quick.first).to_be_visible(timeout=REPLY_TIMEOUT_MS)
    label = quick.first.inner_text()

    # when
    quick.first.click()

    # then
    expect(bubbles(page, "customer")).to_have_text(["hello", label])
    expect(bubbles(page, "bot")).to_have_count(3, timeout=REPLY_TIMEOUT_MS)  # greeting + 2

    # and markup typed by a customer is shown as text, not run
    markup = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    say(page, markup)
    expect(bubbles(page, "customer").last).to_have_text(markup)
    expect(bubbles(page, "bot")).to_have_count(4, timeout=REPLY_TIMEOUT_MS)
    assert page.evaluate("window.__pwned") is None
    assert (
        page.locator("#nw-chat-widget").evaluate("h => h.shadowRoot.querySelector('img')") is None
    )


def test_the_widget_works_with_the_keyboard_alone_on_a_phone(
    browser: Browser, daphne_server: LiveServer
) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 667}, has_touch=True)
    page = context.new_page()
    try:
        page.goto(f"{daphne_server.url}/")
        launcher = page.get_by_test_id("chat-launcher")
        launcher.focus()
        page.keyboard.press("Enter")

        panel = page.get_by_test_id("chat-panel")
        expect(panel).to_be_visible()
        expect(page.get_by_test_id("chat-input")).to_be_focused()
        box = panel.bounding_box()
        assert box is not None and box["width"] >= 370 and box["height"] >= 600

        page.keyboard.type("I want to return a lamp")
        page.keyboard.press("Enter")
        expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)

        page.keyboard.press("Escape")
        expect(panel).to_be_hidden()
        expect(launcher).to_be_focused()
    finally:
        context.close()


def test_the_widget_goes_offline_queues_and_sends_once_the_server_is_back(
    page: Page, daphne_factory
) -> None:
    # given: a chat open on a server that then goes away
    daphne = daphne_factory()
    server = daphne.start()
    open_widget(page, server)
    daphne.stop()
    expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "offline")

    # when: the customer writes while offline, and the server comes back
    say(page, "Do you sell gift cards?")
    expect(bubbles(page, "customer")).to_have_text(["Do you sell gift cards?"])
    daphne.start()

    # then: the widget reconnects by itself and the message is answered, once
    expect(page.get_by_test_id("chat-status")).to_have_attribute(
        "data-state", "online", timeout=REPLY_TIMEOUT_MS
    )
    expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    reply_row(bubbles(page, "bot").last.get_attribute("data-id"))
    assert Message.objects.filter(role="customer").count() == 1
    assert Message.objects.filter(role="bot").count() == 1


def test_a_customer_asks_for_a_person_and_sees_the_admins_reply_live(
    browser: Browser, page: Page, daphne_server: LiveServer
) -> None:
    # given: a customer who asks for a person
    open_widget(page, daphne_server)
    conversation = first_reply(page, "I want to talk to a real person").conversation
    assert conversation.status == "needs_human"

    # when: the customer reloads the page while waiting
    page.reload()
    page.get_by_test_id("chat-launcher").click()

    # then: still told that a person will answer
    expect(bubbles(page, "system").last).to_have_text("A member of our team will reply here.")

    # when: a support admin replies from Django admin, in another browser
    with support_admin(browser, daphne_server) as admin:
        admin.goto(f"{daphne_server.url}/admin/chatbot/conversation/{conversation.pk}/change/")
        admin.fill("#id_staff_reply", "Hi, I'm Alex from the team. How can I help?")
        admin.click("input[value='Send reply']")
        expect(admin.locator(".messagelist")).to_contain_text("Reply sent")
        # a reply typed and then saved with the page (not "Send reply") is sent too
        admin.fill("#id_staff_reply", "Your refund is on its way.")
        admin.click("input[name=_continue]")
        expect(admin.locator(".messagelist")).to_contain_text("Reply sent")

    # then: the customer sees them without reloading
    expect(bubbles(page, "agent")).to_have_text(
        ["Hi, I'm Alex from the team. How can I help?", "Your refund is on its way."],
        timeout=REPLY_TIMEOUT_MS,
    )

    # and after a reload, a person has answered: no note that one will
    page.reload()
    page.get_by_test_id("chat-launcher").click()
    expect(bubbles(page, "agent")).to_have_count(2)
    expect(bubbles(page, "system")).to_have_count(0)


def test_the_team_hears_of_a_hand_off_and_sees_the_customer_write_live(
    browser: Browser, page: Page, daphne_server: LiveServer
) -> None:
    with support_admin(browser, daphne_server) as admin:
        # given: a support admin at work in the review queue
        admin.goto(f"{daphne_server.url}/admin/chatbot/reviewitem/")
        expect_live(admin, "#live-waiting")

        # when: a customer asks for a person
        open_widget(page, daphne_server)
        first_reply(page, "I want to talk to a real person")

        # then: the page says so without a reload, and so does the tab's title
        notice = admin.locator("[data-live-waiting] li")
        expect(notice).to_have_text(
            "A conversation was handed to the team: “I want to talk to a real person”"
        )
        expect(admin).to_have_title(re.compile(r"^\(1\) "))

        # when: the admin opens it, and the customer writes while waiting
        notice.get_by_role("link").click()
        expect_live(admin, "#live-conversation")
        say(page, "<img src=x onerror=alert(1)> still there?")

        # then: the page shows it as it is stored, as text
        expect(admin.locator("[data-live-messages] li")).to_have_text(
            "Customer: <img src=x onerror=alert(1)> still there?", timeout=REPLY_TIMEOUT_MS
        )
        expect(admin.locator("[data-live-status]")).to_have_text(
            "Status now: waiting for a person."
        )
        expect(admin.locator("[data-live-messages] img")).to_have_count(0)

        # when: the customer starts another message
        page.get_by_test_id("chat-input").press_sequentially("is any")

        # then: the admin sees them writing
        expect(admin.locator("[data-live-typing]")).to_have_text("The customer is writing…")

        # when: the admin starts a reply with one of the answers the bot suggests
        use = admin.locator("#suggested-replies [data-suggested-reply]").first
        suggestion = use.get_attribute("data-suggested-reply")
        template = use.get_attribute("data-template")
        use.click()
        expect(admin.locator("#id_staff_reply")).to_have_value(suggestion)
        expect(admin.locator("#id_staff_reply_template")).to_have_value(template)

        # then: the customer sees the team writing (the dots, said as such to a screen reader)
        dots = page.get_by_test_id("chat-typing")
        expect(dots).to_be_visible()
        expect(dots).to_have_attribute("data-who", "agent")
        expect(dots).to_have_text("Support team is typing")

        # when: the admin replies, while the review queue is open in another tab
        queue = admin.context.new_page()
        queue.goto(f"{daphne_server.url}/admin/chatbot/reviewitem/")
        expect_live(queue, "#live-waiting")
        say(page, "Hello?")
        expect(queue.locator("[data-live-waiting] li")).to_have_text(
            "A customer wrote while waiting for the team: “Hello?”", timeout=REPLY_TIMEOUT_MS
        )
        signed = f"{suggestion} Alex, from the team."
        admin.fill("#id_staff_reply", signed)
        admin.click("input[value='Send reply']")
        expect(bubbles(page, "agent")).to_have_text(signed)
        expect(dots).to_be_hidden()

        # ... and the reply records the suggested answer it was written from
        sent = Message.objects.get(role="agent", text=signed)
        assert sent.template_id == int(template)

        # then: the other tab drops the notice, since the customer no longer waits
        expect(queue.locator("[data-live-waiting] li")).to_have_count(0)
        expect(queue.locator("#live-waiting")).to_be_hidden()
        expect(queue).not_to_have_title(re.compile(r"^\("))


def test_a_message_over_the_limit_is_not_cut_and_not_sent_until_shortened(
    page: Page, daphne_server: LiveServer, settings
) -> None:
    # given: the server's limit (its history frame tells the widget)
    limit = settings.CHATBOT_MAX_MESSAGE_CHARS
    open_widget(page, daphne_server)
    field, hint = page.get_by_test_id("chat-input"), page.get_by_test_id("chat-length")

    # when: a customer pastes a message 50 characters too long, and presses Send
    field.fill("x" * (limit + 50))
    page.get_by_test_id("chat-send").click()

    # then: all of it is still there, nothing is sent, and the widget says why
    expect(hint).to_have_text(f"50 characters too long (the limit is {limit}).")
    assert len(field.input_value()) == limit + 50
    expect(bubbles(page, "customer")).to_have_count(0)

    # then: an emoji counts as one character, as the server counts it
    field.fill("\U0001f600" * limit)
    expect(hint).to_have_text("0 characters left")

    # when: shortened to fit
    field.fill("Where is my order? " + "x" * (limit - 30))
    expect(hint).to_have_text("11 characters left")
    page.get_by_test_id("chat-send").click()

    # then: sent whole
    expect(bubbles(page, "customer")).to_have_count(1)
    expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    assert len(Message.objects.get(role="customer").text) == limit - 11
    expect(hint).to_be_hidden()


def test_a_conversation_the_team_closes_ends_in_the_widget_and_the_next_message_starts_anew(
    browser: Browser, page: Page, daphne_server: LiveServer
) -> None:
    # given: a customer who has chatted
    from chatbot.services import CLOSED_TEXT

    open_widget(page, daphne_server)
    first = first_reply(page, "How long does standard delivery take?").conversation

    # when: a support admin closes it from the list of conversations
    with support_admin(browser, daphne_server) as admin:
        admin.goto(f"{daphne_server.url}/admin/chatbot/conversation/")
        admin.check(f"input[name=_selected_action][value='{first.pk}']")
        admin.select_option("select[name=action]", "close_conversations")
        admin.click("button[name=index]")
        expect(admin.locator(".messagelist")).to_contain_text("1 conversations closed")

    # then: the customer is told at once, and asked how it went
    expect(bubbles(page, "system")).to_have_text([CLOSED_TEXT], timeout=REPLY_TIMEOUT_MS)
    rating = page.get_by_test_id("chat-rating")
    expect(rating).to_contain_text("How did we do?")

    # when: they give it 4 out of 5
    rating.get_by_role("button", name="4 out of 5").click()

    # then: thanked, and the closed conversation holds the rating
    expect(rating).to_have_text("Thank you for your feedback.")
    first.refresh_from_db()
    for _ in range(50):
        if first.rating is not None:
            break
        page.wait_for_timeout(100)
        first.refresh_from_db()
    assert first.rating == 4

    # when: the customer writes again
    say(page, "What are your opening hours?")

    # then: a new conversation (the widget shows it alone), answered by the bot
    expect(bubbles(page, "customer")).to_have_text(
        ["What are your opening hours?"], timeout=REPLY_TIMEOUT_MS
    )
    expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    reply = reply_row(bubbles(page, "bot").last.get_attribute("data-id"))
    assert reply.conversation_id != first.pk and reply.intent.name == "opening_hours"
    first.refresh_from_db()
    assert first.status == "closed" and first.rating == 4
    expect(page.get_by_test_id("chat-rating")).to_have_count(0)


def test_a_message_the_bot_could_not_answer_is_answered_when_retried(
    page: Page, daphne_server: LiveServer
) -> None:
    from chatbot.runtime import get_runtime

    # given: the server has no answer index for a while (the operator republishes it)
    indexes = get_runtime().indexes
    live = indexes.live()
    open_widget(page, daphne_server)
    indexes.clear_live()
    try:
        # when
        say(page, "How long does standard delivery take?")

        # then: stored, but marked as not answered, with a way to ask again
        unanswered = page.locator('[data-testid="chat-message"][data-status="unanswered"]')
        expect(unanswered).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    finally:
        indexes.set_live(live)

    # when: the customer retries once the index is back
    page.get_by_role("button", name="Retry").click()

    # then: the same stored message is answered
    expect(bubbles(page, "bot")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    reply = reply_row(bubbles(page, "bot").last.get_attribute("data-id"))
    assert reply.in_reply_to.text == "How long does standard delivery take?"
    assert Message.objects.filter(role="customer").count() == 1


def wait_until_rated(pk: int, helpful: bool, timeout_s: float = 10) -> None:
    """Until the widget's press is stored on the bot message."""
    deadline = time.monotonic() + timeout_s
    while Message.objects.get(pk=pk).helpful is not helpful:
        assert time.monotonic() < deadline, f"the customer's {helpful} was never stored"
        time.sleep(0.05)


def test_a_customer_says_an_answer_did_not_help_and_takes_the_person_offered(
    browser: Browser, page: Page, daphne_server: LiveServer
) -> None:
    # given: an answer, under which (and only there, not under the greeting) the customer can
    # say whether it helped; a support admin has the conversation's page open
    open_widget(page, daphne_server)
    reply = first_reply(page, "How long does standard delivery take?")
    assert reply.decision == "answer"
    feedback = page.get_by_test_id("chat-feedback")
    expect(feedback).to_have_count(1)
    not_helpful = feedback.get_by_role("button", name="Not helpful", exact=True)
    with support_admin(browser, daphne_server) as admin:
        admin.goto(
            f"{daphne_server.url}/admin/chatbot/conversation/{reply.conversation.public_id}/change/"
        )
        expect_live(admin, "#live-conversation")

        # when
        not_helpful.click()

        # then: the admin sees it live
        expect(admin.locator("[data-live-messages] li")).to_have_text(
            f"The customer said the bot's answer did not help: “{reply.text[:200]}”"
        )

    # then: stored, shown as chosen, and a person offered
    expect(not_helpful).to_have_attribute("aria-pressed", "true")
    expect(feedback.get_by_role("button", name="Helpful", exact=True)).to_have_attribute(
        "aria-pressed", "false"
    )
    quick = page.get_by_test_id("chat-quick-reply")
    expect(quick).to_have_text([TALK_TO_PERSON_LABEL], timeout=REPLY_TIMEOUT_MS)
    wait_until_rated(reply.pk, False)

    # when: the customer takes the offer
    quick.click()

    # then: a person is asked for
    expect(bubbles(page, "bot")).to_have_count(3, timeout=REPLY_TIMEOUT_MS)
    handoff = reply_row(bubbles(page, "bot").last.get_attribute("data-id"))
    assert handoff.decision == "handoff"

    # and after a reload, the answer still shows what the customer said of it
    page.reload()
    page.get_by_test_id("chat-launcher").click()
    expect(page.get_by_test_id("chat-feedback")).to_have_count(1)
    expect(
        page.get_by_test_id("chat-feedback").get_by_role("button", name="Not helpful", exact=True)
    ).to_have_attribute("aria-pressed", "true")


def test_a_feedback_the_server_refuses_is_undone_in_the_widget(
    page: Page, daphne_server: LiveServer
) -> None:
    # given: the customer said an answer helped, and an admin then deleted that answer
    open_widget(page, daphne_server)
    reply = first_reply(page, "How long does standard delivery take?")
    feedback = page.get_by_test_id("chat-feedback")
    helpful = feedback.get_by_role("button", name="Helpful", exact=True)
    not_helpful = feedback.get_by_role("button", name="Not helpful", exact=True)
    helpful.click()
    wait_until_rated(reply.pk, True)
    Message.objects.filter(pk=reply.pk).delete()
    offered = page.get_by_test_id("chat-quick-reply").all_inner_texts()

    # when: the customer changes their mind
    not_helpful.click()

    # then: told why, and the buttons show again what was stored before
    expect(bubbles(page, "system").last).to_have_text(
        "This conversation has no answer of the bot with that id.", timeout=REPLY_TIMEOUT_MS
    )
    expect(not_helpful).to_have_attribute("aria-pressed", "false")
    expect(helpful).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("chat-quick-reply")).to_have_text(offered)  # no person offered
