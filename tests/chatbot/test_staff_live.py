"""The support team's admin pages, live: the staff WebSocket over the real ASGI application, on
the real demo model."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatbot.asgi import application
from chatbot.models import Conversation
from tests.chatbot.test_consumer import HOST, ORIGIN, open_chat, send_message


def staff_socket(client: Client | None, query: str = "", origin: bytes = ORIGIN):
    headers = [(b"origin", origin), (b"host", HOST)]
    if client is not None and "sessionid" in client.cookies:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(application, f"/ws/staff/{query}", headers=headers)


async def listening(client: Client, query: str = "") -> WebsocketCommunicator:
    communicator = staff_socket(client, query)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    return communicator


async def test_the_team_sees_a_conversation_live_and_hears_of_every_hand_off(
    live_policy,
    admin_client: Client,
) -> None:
    # given: the list of conversations open in admin, and a customer chatting
    await database_sync_to_async(live_policy)(answer=0.0)
    inbox = await listening(admin_client)
    customer, history = await open_chat()
    public_id = history["conversation"]
    await send_message(customer, "what are your opening hours?", "l-1")

    # then: a conversation the bot answers is no news for the list
    assert await inbox.receive_nothing(timeout=1)

    # when: the customer asks for a person
    await send_message(customer, "I want to talk to a real person", "l-2")

    # then: every open list hears of it, with where to answer it
    notice = await inbox.receive_json_from(timeout=10)
    assert notice == {
        "type": "waiting",
        "conversation": public_id,
        "reason": "handoff",
        "text": "I want to talk to a real person",
        "url": f"/admin/chatbot/conversation/{public_id}/change/",
    }

    # when: an admin opens the conversation, and the customer writes while waiting
    page = await listening(admin_client, f"?conversation={public_id}")
    await customer.send_json_to({"type": "message", "text": "hello?? <b>anyone</b>", "id": "l-3"})
    assert (await customer.receive_json_from(timeout=10))["type"] == "ack"

    # then: the page shows the message, and the list hears that they wrote
    message = await page.receive_json_from(timeout=10)
    assert (message["type"], message["conversation"], message["role"]) == (
        "message",
        public_id,
        "customer",
    )
    assert (message["text"], message["status"]) == ("hello?? <b>anyone</b>", "needs_human")
    assert (await inbox.receive_json_from(timeout=10))["reason"] == "message"

    # when: an admin replies from Django admin, then hands the conversation back to the bot
    conversation = await Conversation.objects.aget(public_id=public_id)
    post = sync_to_async(admin_client.post)
    await post(
        f"/admin/chatbot/conversation/{conversation.pk}/reply/", {"staff_reply": "Sam here."}
    )
    await post(f"/admin/chatbot/conversation/{conversation.pk}/hand-back/")

    # then: the page shows both as they happen
    reply = await page.receive_json_from(timeout=10)
    handed_back = await page.receive_json_from(timeout=10)
    assert (reply["role"], reply["text"], reply["status"]) == ("agent", "Sam here.", "needs_human")
    assert (handed_back["role"], handed_back["status"]) == ("system", "bot")
    # ... and the list hears that the customer no longer waits for the team
    handled = [await inbox.receive_json_from(timeout=10) for _ in range(2)]
    assert handled == [
        {"type": "handled", "conversation": public_id, "status": "needs_human"},
        {"type": "handled", "conversation": public_id, "status": "bot"},
    ]

    # when: the bot answers again
    await customer.receive_json_from(timeout=10)  # the widget's copies of the two
    await customer.receive_json_from(timeout=10)
    answer = await send_message(customer, "what are your opening hours?", "l-4")

    # then: the page shows the question and the answer with what the bot decided
    question, shown = await page.receive_json_from(10), await page.receive_json_from(10)
    assert (question["role"], question["text"]) == ("customer", "what are your opening hours?")
    assert (shown["id"], shown["role"], shown["text"]) == (answer["id"], "bot", answer["text"])
    assert (shown["decision"], shown["intent"], shown["status"]) == (
        "answer",
        "opening_hours",
        "bot",
    )
    assert shown["confidence"] == pytest.approx(answer["confidence"])
    # ... and the list hears nothing of it
    assert await inbox.receive_nothing(timeout=1)
    for communicator in (customer, page, inbox):
        await communicator.disconnect()


async def test_each_side_sees_the_other_writing_and_nothing_is_stored(
    live_policy,
    admin_client: Client,
    settings,
) -> None:
    from django.contrib.auth.models import Permission, User

    from chatbot.models import Message

    # given: a conversation handed to the team, open on two admins' pages and on a viewer's
    settings.CHATBOT_RATE_LIMIT_BURST = 2  # "typing" must not use up the customer's messages
    await database_sync_to_async(live_policy)(answer=0.0)
    customer, history = await open_chat()
    public_id = history["conversation"]
    await send_message(customer, "I want to talk to a real person", "t-1")

    def account(name: str, *codenames: str) -> Client:
        user = User.objects.create_user(
            name, password="pass-for-tests-1", is_staff=True, first_name=name.title()
        )
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        logged_in = Client()
        logged_in.force_login(user)
        return logged_in

    sam = await database_sync_to_async(account)("sam", "view_conversation", "change_conversation")
    viewer = await database_sync_to_async(account)("vic", "view_conversation")
    query = f"?conversation={public_id}"
    mine, sams, viewers = [await listening(c, query) for c in (admin_client, sam, viewer)]
    stored_before = await Message.objects.filter(conversation__public_id=public_id).acount()

    # when: the customer writes, and their widget says so three times in a row
    for _ in range(3):
        await customer.send_json_to({"type": "typing"})

    # then: the conversation's pages show it once (it is passed on at most every 2 s)
    customer_typing = {"type": "typing", "conversation": public_id, "role": "customer"}
    for page in (mine, sams, viewers):
        assert await page.receive_json_from(timeout=10) == customer_typing
        assert await page.receive_nothing(timeout=0.3)
    # ... and the customer hears nothing back, and may still send their messages
    assert await customer.receive_nothing(timeout=0.3)
    await customer.send_json_to({"type": "message", "text": "it's about my card", "id": "t-2"})
    assert (await customer.receive_json_from(timeout=10))["type"] == "ack"
    for page in (mine, sams, viewers):
        assert (await page.receive_json_from(timeout=10))["text"] == "it's about my card"

    # when: they start their next message at once
    await customer.send_json_to({"type": "typing"})

    # then: it shows without waiting out the 2 s: what they were writing has been sent
    for page in (mine, sams, viewers):
        assert await page.receive_json_from(timeout=10) == customer_typing

    # when: an admin writes a reply, saying so twice
    await mine.send_json_to({"type": "typing"})
    await mine.send_json_to({"type": "typing"})

    # then: the customer's widget hears that the team is writing (not who), once
    assert await customer.receive_json_from(timeout=10) == {"type": "typing", "role": "agent"}
    assert await customer.receive_nothing(timeout=0.3)
    # ... the team's other pages hear who; the admin's own page hears nothing of it
    said = {"type": "typing", "conversation": public_id, "role": "agent", "name": "admin"}
    for page in (sams, viewers):
        assert await page.receive_json_from(timeout=10) == said
    assert await mine.receive_nothing(timeout=0.3)

    # when: someone who may only view tries, and so does the list of conversations
    await viewers.send_json_to({"type": "typing"})
    inbox = await listening(sam)
    await inbox.send_json_to({"type": "typing"})

    # then: both are told that they only listen, and nobody hears of it
    for page in (viewers, inbox):
        error = await page.receive_json_from(timeout=10)
        assert (error["type"], error["code"]) == ("error", "read_only")
    assert await customer.receive_nothing(timeout=0.3)
    assert await sams.receive_nothing(timeout=0.1)
    # ... and nothing of the writing was stored
    count = await Message.objects.filter(conversation__public_id=public_id).acount()
    assert count == stored_before + 1  # "it's about my card"

    # when: a visitor who has not written yet starts typing
    conversations = await Conversation.objects.acount()
    newcomer, _ = await open_chat()
    await newcomer.send_json_to({"type": "typing"})

    # then: no conversation is stored for it, and nothing goes wrong
    assert await newcomer.receive_nothing(timeout=0.3)
    await newcomer.send_json_to({"type": "ping"})
    assert await newcomer.receive_json_from(timeout=10) == {"type": "pong"}
    assert await Conversation.objects.acount() == conversations
    for communicator in (customer, mine, sams, viewers, inbox, newcomer):
        await communicator.disconnect()


async def test_only_staff_who_may_view_conversations_on_this_site_may_listen(
    knowledge_base, client: Client, settings
) -> None:
    from django.contrib.auth.models import Permission, User

    def account(name: str, *, staff: bool, view: bool, superuser: bool = False) -> Client:
        user = User.objects.create_user(
            name, password="pass-for-tests-1", is_staff=staff, is_superuser=superuser
        )
        if view:
            user.user_permissions.set(Permission.objects.filter(codename="view_conversation"))
        logged_in = Client()
        logged_in.force_login(user)
        return logged_in

    accounts = await database_sync_to_async(
        lambda: {
            "viewer": account("viewer", staff=True, view=True),
            "no permission": account("clerk", staff=True, view=False),
            "not staff": account("customer", staff=False, view=True),
            "superuser": account("root", staff=True, view=False, superuser=True),
        }
    )()
    settings.CHATBOT_WIDGET_ORIGINS = ["*"]  # any site may embed the chat; not watch the team's

    async def refused(communicator: WebsocketCommunicator) -> bool:
        connected, _ = await communicator.connect(timeout=10)
        await communicator.disconnect()
        return not connected

    # then: refused without a login, without the permission, outside the staff, from elsewhere
    assert await refused(staff_socket(None))
    assert await refused(staff_socket(accounts["no permission"]))
    assert await refused(staff_socket(accounts["not staff"]))
    assert await refused(staff_socket(accounts["superuser"], origin=b"https://evil.example"))
    assert await refused(staff_socket(accounts["superuser"], origin=b""))

    # when: an account that may view conversations listens, and tries to talk
    viewer = await listening(accounts["viewer"])
    await viewer.send_to(text_data='{"type": "message", "text": "hi", "id": "x"}')

    # then: it listens only
    error = await viewer.receive_json_from(timeout=10)
    assert (error["type"], error["code"]) == ("error", "read_only")
    await viewer.disconnect()
    superuser = await listening(accounts["superuser"])
    await superuser.disconnect()


async def test_a_page_left_open_after_its_admin_logged_out_hears_no_more(
    live_policy,
    admin_client: Client,
    monkeypatch,
) -> None:
    # given: the list open, its login checked before everything it hears
    from chatbot import consumers

    monkeypatch.setattr(consumers, "STAFF_RECHECK_S", 0.0)
    await database_sync_to_async(live_policy)(answer=0.0)
    inbox = await listening(admin_client)
    customer, _ = await open_chat()
    await send_message(customer, "I want to talk to a real person", "o-1")
    assert (await inbox.receive_json_from(timeout=10))["reason"] == "handoff"

    # when: the admin logs out (in another tab), and the customer writes while waiting
    await sync_to_async(admin_client.logout)()
    await customer.send_json_to({"type": "message", "text": "my card number is 4111", "id": "o-2"})
    assert (await customer.receive_json_from(timeout=10))["type"] == "ack"

    # then: the page is disconnected instead of told
    assert await inbox.receive_output(timeout=10) == {"type": "websocket.close", "code": 4401}
    await customer.disconnect()


def test_every_admin_page_lists_those_waiting_for_admins_who_may_view_conversations(
    admin_client: Client, client: Client
) -> None:
    import re
    from datetime import timedelta

    from django.contrib.auth.models import Permission, User
    from django.utils import timezone

    from chatbot.models import Message

    # given: two conversations waiting for a person, the newer active a minute ago, and two not
    def conversation(status: str, *texts: str, minutes_ago: int = 0) -> Conversation:
        made = Conversation.objects.create(status=status)
        for text in texts:
            Message.objects.create(conversation=made, role="customer", text=text)
        Message.objects.create(conversation=made, role="agent", text="A person replied.")
        at = timezone.now() - timedelta(minutes=minutes_ago)
        Conversation.objects.filter(pk=made.pk).update(last_activity_at=at)
        return made

    older = conversation("needs_human", "I need a person", minutes_ago=30)
    newer = conversation("needs_human", "Hello?", "<b>my parcel</b> is lost", minutes_ago=1)
    conversation("bot", "where is my order?")
    conversation("closed", "bye")
    # ... and an account that may only edit templates
    writer = User.objects.create_user("writer", password="pass-for-tests-1", is_staff=True)
    writer.user_permissions.set(Permission.objects.filter(codename="change_answertemplate"))
    client.force_login(writer)

    # then: the pages of an admin who may view conversations list the waiting ones, the latest
    # first with its customer's last message (as text), and listen for more
    for url in ("/admin/", "/admin/chatbot/reviewitem/?review=todo", "/admin/chatbot/intent/"):
        page = admin_client.get(url).content.decode()
        assert 'data-staff-socket="/ws/staff/"' in page
        listed = re.findall(r'<li class="warning" data-conversation="([^"]+)">(.*?)</li>', page)
        assert [public_id for public_id, _ in listed] == [
            str(newer.public_id),
            str(older.public_id),
        ]
        assert "last active 1\xa0minute ago" in listed[0][1]
        assert listed[0][1].endswith("“&lt;b&gt;my parcel&lt;/b&gt; is lost”")
        assert f'href="/admin/chatbot/conversation/{older.public_id}/change/"' in listed[1][1]
    templates = client.get("/admin/chatbot/answertemplate/")
    assert templates.status_code == 200
    assert "admin_live/staff.js" not in templates.content.decode()
    assert "data-staff-socket" not in client.get("/admin/").content.decode()
