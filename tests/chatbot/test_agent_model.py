"""The chat answers with the live fine-tuned intent model (the packaged BERT, trained once here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from channels.db import database_sync_to_async

from chatbot.models import AnswerTemplate, Message, ModelVersion
from chatbot.runtime import get_runtime
from tests.chatbot.test_consumer import open_chat, send_message


async def test_the_reply_comes_from_the_live_model_with_calibrated_probabilities(
    live_model: ModelVersion,
) -> None:
    # given
    communicator, _ = await open_chat()

    # when
    reply = await send_message(communicator, "I can't remember my password", "p-1")

    # then
    assert reply["intent"] == "password_reset"
    bot = await Message.objects.select_related("model_version").aget(role="bot")
    assert bot.model_version_id == live_model.pk
    assert bot.confidence == pytest.approx(bot.top_k[0]["score"], abs=1e-4)
    assert 0 < sum(alt["score"] for alt in bot.top_k) <= 1.0001
    assert [alt["score"] for alt in bot.top_k] == sorted(
        (alt["score"] for alt in bot.top_k), reverse=True
    )
    assert await ModelVersion.objects.filter(is_live=True).acount() == 1
    # One forward pass: the model's embedding also chose the template; the base encoder idled.
    assert "classify_ms" in bot.timings and "embed_ms" not in bot.timings
    template = await AnswerTemplate.objects.aget(pk=bot.template_id)
    assert template.intent_id == bot.intent_id and 0 < bot.template_similarity <= 1.0001
    assert bot.nearest_intent == "password_reset"
    await communicator.disconnect()


async def test_messages_arriving_together_share_one_classifier_pass(live_model) -> None:
    chats = [await open_chat() for _ in range(5)]
    texts = [
        "Where is my order?",
        "How much is delivery?",
        "I want a refund",
        "Do you have gift cards?",
        "Talk to a human please",
    ]

    replies = await asyncio.gather(
        *(
            send_message(c, t, f"b{i}")
            for i, ((c, _), t) in enumerate(zip(chats, texts, strict=True))
        )
    )

    assert all(r["intent"] for r in replies)
    sizes = await database_sync_to_async(list)(
        Message.objects.filter(role="bot").values_list("timings__batch_size", flat=True)
    )
    assert max(sizes) > 1
    for chat, _ in chats:
        await chat.disconnect()


def test_a_cleared_live_pointer_stops_the_model_answering(live_model) -> None:
    runtime = get_runtime()
    assert runtime.classifier()[0] is not None

    runtime.models.clear_live()

    assert runtime.classifier() == (None, "")


def test_prepare_model_trains_and_promotes_a_model_when_none_is_live(
    knowledge_base, settings, tmp_path
) -> None:
    from django.core.management import call_command

    from chatbot.models import IntentExample

    # given: a small knowledge base (three intents), nothing live
    IntentExample.objects.exclude(
        intent__name__in=["greeting", "goodbye", "opening_hours"]
    ).delete()
    get_runtime().models.clear_live()

    # when
    call_command("prepare_model", "--epochs", "1")

    # then
    live = ModelVersion.objects.get(is_live=True)
    assert get_runtime().models.live() == Path(live.directory).name
    assert live.metrics["intents"] == 3
    get_runtime().models.clear_live()
