import json

import pytest

from chatbot.protocol import (
    CustomerText,
    Ping,
    ProtocolError,
    Rating,
    Typing,
    parse_client_frame,
)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('"hello"', "invalid_frame"),
        ('{"text": "hi"}', "unknown_type"),
        ('{"type": "shout", "text": "hi"}', "unknown_type"),
        ('{"type": "message", "text": "", "id": "a"}', "empty_text"),
        ('{"type": "message", "text": "   \\n\\t ", "id": "a"}', "empty_text"),
        ('{"type": "message", "id": "a"}', "invalid_text"),
        ('{"type": "message", "text": 42, "id": "a"}', "invalid_text"),
        ('{"type": "message", "text": "hi\\u0000there", "id": "a"}', "invalid_text"),
        ('{"type": "message", "text": "hi \\ud800 there", "id": "a"}', "invalid_text"),
        ('{"type": "message", "text": "\\udfff", "id": "a"}', "invalid_text"),
        ('{"type": "rate", "score": 1' + "0" * 5000 + "}", "invalid_json"),
        ('{"type": "message", "text": "hi", "id": 7}', "invalid_id"),
        ('{"type": "message", "text": "hi", "id": "c\\ud800"}', "invalid_id"),
        (json.dumps({"type": "message", "text": "hi", "id": "x" * 65}), "invalid_id"),
        (json.dumps({"type": "message", "text": "y" * 2001, "id": "a"}), "text_too_long"),
        ('{"type": "rate", "score": 6}', "invalid_rating"),
        ('{"type": "rate", "score": true}', "invalid_rating"),
        ("[" * 100_000, "invalid_json"),
    ],
)
def test_parse_client_frame_rejects_bad_frames_with_a_code(raw: str, code: str) -> None:
    with pytest.raises(ProtocolError) as error:
        parse_client_frame(raw)

    assert error.value.code == code
    assert error.value.frame()["type"] == "error"
    assert error.value.frame()["detail"]


def test_parse_client_frame_keeps_the_client_id_on_text_errors() -> None:
    with pytest.raises(ProtocolError) as error:
        parse_client_frame('{"type": "message", "text": "", "id": "c-1"}')

    assert error.value.frame()["in_reply_to"] == "c-1"


def test_parse_client_frame_accepts_valid_frames() -> None:
    text = "  Where is my order?  "
    assert parse_client_frame(json.dumps({"type": "message", "text": text, "id": "c1"})) == (
        CustomerText(text="Where is my order?", client_id="c1")
    )
    assert parse_client_frame(json.dumps({"type": "message", "text": "z" * 2000})) == (
        CustomerText(text="z" * 2000, client_id="")
    )
    assert parse_client_frame('{"type": "rate", "score": 5}') == Rating(5)
    assert parse_client_frame('{"type": "ping"}') == Ping()
    assert parse_client_frame('{"type": "typing"}') == Typing()
    # A whole UTF-16 pair is one character, and welcome.
    assert parse_client_frame('{"type": "message", "text": "ok \\ud83d\\ude00"}') == (
        CustomerText(text="ok \U0001f600", client_id="")
    )
