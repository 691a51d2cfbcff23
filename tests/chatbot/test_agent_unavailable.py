import pytest
from channels.testing import WebsocketCommunicator

from chatbot.asgi import application
from chatbot.models import Message


@pytest.mark.django_db(transaction=True)
async def test_without_a_published_index_the_message_is_kept_and_an_error_sent(
    settings, tmp_path
) -> None:
    # given: a data directory where nothing was ever published
    from chatbot.runtime import get_runtime

    settings.CHATBOT_DATA_DIR = tmp_path
    get_runtime().close()
    get_runtime.cache_clear()
    try:
        communicator = WebsocketCommunicator(
            application,
            "/ws/chat/",
            headers=[(b"origin", b"http://localhost"), (b"host", b"localhost")],
        )
        assert (await communicator.connect(timeout=10))[0]
        await communicator.receive_json_from(timeout=10)

        # when
        await communicator.send_json_to({"type": "message", "text": "hello?", "id": "u1"})
        ack = await communicator.receive_json_from(timeout=30)
        error = await communicator.receive_json_from(timeout=30)

        # then
        assert ack["type"] == "ack"
        assert (error["type"], error["code"], error["in_reply_to"]) == (
            "error",
            "agent_unavailable",
            "u1",
        )
        assert [m.text async for m in Message.objects.all()] == ["hello?"]
        await communicator.disconnect()
    finally:
        get_runtime().close()
        get_runtime.cache_clear()
