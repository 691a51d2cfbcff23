"""An optional second opinion on borderline messages, from an OpenAI-compatible chat model.

Off unless `OPENAI_API_KEY` is set; the bot never needs it. When it is on, the messages the
policy does not decline but that look least like what the model knows (below the model
version's `second_opinion_below`, fitted as the least in-scope-looking tenth of validation, or
every message with `CHATBOT_OPENAI_CHECK=all`) are shown to the chat model with the two or
three intents the classifier ranked first, each as its known phrasings nearest to the message
and the start of the answer the bot would give. It names the topic the message asks about, or
none:

- none: the bot says the question is out of scope (this is where the unseen near relatives of
  known intents hide, which no score computed from the known intents alone tells apart);
- a topic, when the bot was about to ask which one: it answers that one;
- another topic than the one the bot was about to answer: it asks which one;
- no usable answer in `CHATBOT_OPENAI_TIMEOUT_S` (a timeout, an error, a reply that names
  nothing): the bot decides as it would without it.

What the chat model said is stored on the bot message (`second_opinion`). The customer's words
go to the API only for these messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from functools import cache

from django.conf import settings

logger = logging.getLogger(__name__)

NONE = "none"  # the message asks about none of the topics
FAILED = "failed"  # no usable answer: the bot decides alone
# What the chat model reads of each topic's answer.
ANSWER_PREVIEW_CHARS = 200

INSTRUCTIONS = (
    "You check a customer-service bot before it replies. You get a customer's message and the "
    "topics the bot can answer that are closest to it, each with example questions and the "
    "start of the bot's answer. Say which topic the message asks about. A message that only "
    "resembles a topic but asks something its answer does not cover asks about none of them. "
    'Reply with JSON only: {"topic": N}, N the topic\'s number, or {"topic": 0} for none.'
)


@dataclass(frozen=True)
class Topic:
    intent: str
    examples: tuple[str, ...]
    answer: str


def prompt(text: str, topics: list[Topic]) -> str:
    lines = [f"Customer message: {json.dumps(text, ensure_ascii=False)}", "", "Topics:"]
    for number, topic in enumerate(topics, 1):
        lines.append(f"{number}. {topic.intent.replace('_', ' ')}")
        lines += [f"   example: {json.dumps(e, ensure_ascii=False)}" for e in topic.examples]
        if topic.answer:
            answer = topic.answer[:ANSWER_PREVIEW_CHARS]
            lines.append(f"   bot's answer starts: {json.dumps(answer, ensure_ascii=False)}")
    return "\n".join(lines)


class SecondOpinion:
    def __init__(self, *, api_key: str, base_url: str, model: str, timeout_s: float) -> None:
        self.api_key = api_key
        self.base_url = base_url or None
        self.model = model
        self.timeout_s = timeout_s
        # One client per event loop: its connection pool belongs to the loop it was made in.
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
            )
            self._loop = loop
        return self._client

    async def topic(self, text: str, topics: list[Topic]) -> tuple[str, float]:
        """The intent `text` asks about, NONE or FAILED; and the milliseconds it took."""
        import openai

        started = time.perf_counter()
        try:
            response = await asyncio.wait_for(
                self.client().chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": INSTRUCTIONS},
                        {"role": "user", "content": prompt(text, topics)},
                    ],
                    temperature=0,
                    max_tokens=20,
                    response_format={"type": "json_object"},
                ),
                self.timeout_s,
            )
            number = json.loads(response.choices[0].message.content or "")["topic"]
            if isinstance(number, bool) or not isinstance(number, int):
                raise ValueError(f"topic {number!r} is not a number")
            if not 0 <= number <= len(topics):
                raise ValueError(f"topic {number} is not among the {len(topics)} offered")
        except (openai.OpenAIError, TimeoutError, ValueError, KeyError, TypeError, IndexError) as e:
            # One line per failure, no traceback: the bot goes on without it.
            logger.warning("No second opinion (%s: %s); deciding alone", type(e).__name__, e)
            verdict = FAILED
        else:
            verdict = NONE if number == 0 else topics[number - 1].intent
        return verdict, round((time.perf_counter() - started) * 1000, 2)


@cache
def get_second_opinion() -> SecondOpinion | None:
    """The process's helper; None when no API key is set or CHATBOT_OPENAI_CHECK is off."""
    if not settings.OPENAI_API_KEY or settings.CHATBOT_OPENAI_CHECK == "off":
        return None
    return SecondOpinion(
        api_key=settings.OPENAI_API_KEY,
        base_url=settings.OPENAI_BASE_URL,
        model=settings.CHATBOT_OPENAI_MODEL,
        timeout_s=settings.CHATBOT_OPENAI_TIMEOUT_S,
    )
