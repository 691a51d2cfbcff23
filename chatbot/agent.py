"""The agent: reads a customer message and decides what the bot says, and why.

The live intent model names the intent (calibrated probabilities); without one, the intent of
the nearest curated examples does (sentence embeddings from the base BERT, searched with FAISS).
The answer is the template of that intent closest to the message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from chatbot.runtime import Runtime, get_runtime


class AgentUnavailable(Exception):
    """No answer index has been published yet (run `manage.py prepare_model`)."""


@dataclass(frozen=True)
class IntentScore:
    intent: str
    score: float


@dataclass(frozen=True)
class AgentReply:
    text: str
    decision: str
    intent: str | None
    confidence: float
    alternatives: tuple[IntentScore, ...]
    template_id: int | None
    template_similarity: float | None
    suggestions: tuple[str, ...]
    index_version: str
    model_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def handoff(self) -> bool:
        return self.decision == "handoff"


def rank_intents(hits, limit: int = 3) -> list[IntentScore]:
    """Each intent scored by its nearest example, best first."""
    best: dict[str, float] = {}
    for hit in hits:
        best[hit.intent] = max(best.get(hit.intent, -1.0), hit.score)
    ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)
    return [IntentScore(intent, round(score, 4)) for intent, score in ranked[:limit]]


class Agent:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or get_runtime()

    async def respond(self, text: str) -> AgentReply:
        started = time.perf_counter()
        batched = await self.runtime.analyse(text)
        analysis = batched.value
        index = analysis.index
        if index is None or not analysis.example_hits:
            raise AgentUnavailable("No answer index is live; run `manage.py prepare_model`.")
        if analysis.prediction is not None:
            ranked = [IntentScore(i, round(p, 4)) for i, p in analysis.prediction.top_k]
        else:
            ranked = rank_intents(analysis.example_hits)
        top = ranked[0]
        retrieve_started = time.perf_counter()
        templates = index.search_templates(analysis.vector[None, :], 1, intent=top.intent)[0]
        if not templates:
            raise AgentUnavailable(f"Intent {top.intent!r} has no active answer template.")
        template = templates[0]
        return AgentReply(
            text=template.text,
            decision="answer",
            intent=top.intent,
            confidence=top.score,
            alternatives=tuple(ranked),
            template_id=template.id,
            template_similarity=round(template.score, 4),
            suggestions=template.suggestions,
            index_version=index.version,
            model_version=analysis.model_version,
            timings={
                "queue_ms": round(batched.queue_ms, 2),
                "analyse_ms": round(batched.run_ms, 2),
                "batch_size": batched.batch_size,
                "template_ms": round((time.perf_counter() - retrieve_started) * 1000, 2),
                "agent_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
