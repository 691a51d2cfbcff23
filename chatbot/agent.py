"""The agent: reads a customer message and decides what the bot says, and why.

The live intent model names the intent (calibrated probabilities), and the same forward pass
embeds the message in the model's space, where the answer index's examples and templates are
embedded too (see chatbot.runtime); without a model, the intent of the nearest curated examples
does (sentence embeddings from the base BERT, searched with FAISS). The model version's policy
then answers (with that intent's template closest to the message), asks to clarify between the
top intents (offering each one's closest known phrasing as a quick reply), or says the question
is out of scope. Asking for a person hands the conversation off.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace

from django.conf import settings

from chatbot.batching import Batched
from chatbot.runtime import Analysis, Runtime, get_runtime
from chatbot.second_opinion import NONE, Topic, get_second_opinion
from training.policy import ANSWER, CLARIFY, OUT_OF_SCOPE

HANDOFF = "handoff"


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
    nearest_example_similarity: float | None = None
    # Similarity to the nearest customer message reviewed as out of scope (None: none reviewed).
    out_of_scope_similarity: float | None = None
    # The retriever's opinion: the intent of the nearest known example (in the live model's
    # space; the base encoder's without a model).
    nearest_intent: str = ""
    # (intent, label) pairs offered as quick replies by a clarifying question.
    choices: tuple[tuple[str, str], ...] = ()
    # What the optional second opinion said: an intent, "none", "failed"; "" when not asked.
    second_opinion: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def handoff(self) -> bool:
        return self.decision == HANDOFF

    @property
    def review_priority(self) -> float:
        """How much a person's label on this message would teach the model; higher first.

        Low confidence, a small gap between the top two intents, a turn the bot did not answer,
        and the classifier disagreeing with the nearest known example each add to it.
        """
        scores = [a.score for a in self.alternatives]
        priority = 1.0 - self.confidence
        if len(scores) >= 2:
            priority += max(0.0, 0.5 - (scores[0] - scores[1]))
        priority += {CLARIFY: 0.5, OUT_OF_SCOPE: 0.75, HANDOFF: 0.75}.get(self.decision, 0.0)
        if (
            self.nearest_intent
            and self.alternatives
            and (self.nearest_intent != self.alternatives[0].intent)
        ):
            priority += 0.5
        return round(priority, 4)


def rank_intents(hits, limit: int = 3) -> list[IntentScore]:
    """Each intent scored by its nearest example, best first."""
    best: dict[str, float] = {}
    for hit in hits:
        best[hit.intent] = max(best.get(hit.intent, -1.0), hit.score)
    ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)
    return [IntentScore(intent, round(score, 4)) for intent, score in ranked[:limit]]


@dataclass(frozen=True)
class SuggestedReply:
    """An answer a person on the team may send as it is or edit first: the template the bot
    would answer with for one of the intents the customer most likely asks about."""

    intent: str
    # The model's calibrated probability of the intent (without a model: the similarity of the
    # intent's nearest example).
    probability: float
    text: str
    template_id: int


def suggested_replies(
    analyses: Sequence[Analysis], *, skip: str = "", limit: int = 3
) -> list[SuggestedReply]:
    """For messages waiting for an answer (as the models read them), the likeliest intents'
    templates closest to the message that makes each likeliest, likeliest first; never `skip`
    (asking for a person, which the team is already doing), only intents with a template."""
    best: dict[str, tuple[float, Analysis]] = {}
    for analysis in analyses:
        if analysis.index is None:
            continue
        ranked = (
            analysis.prediction.top_k
            if analysis.prediction is not None
            else [(r.intent, r.score) for r in rank_intents(analysis.example_hits)]
        )
        answerable = analysis.index.templates.ids_by_intent
        for intent, probability in ranked:
            known = intent != skip and intent in answerable
            if known and probability > best.get(intent, (-math.inf,))[0]:
                best[intent] = (probability, analysis)
    replies = []
    for intent, (probability, analysis) in sorted(best.items(), key=lambda kv: -kv[1][0])[:limit]:
        hits = analysis.index.search_templates(analysis.vector[None, :], 1, intent=intent)[0]
        if hits:
            replies.append(SuggestedReply(intent, round(probability, 4), hits[0].text, hits[0].id))
    return replies


CLARIFY_TEXT = "I want to be sure I help with the right thing. Which of these is closest?"
OUT_OF_SCOPE_TEXT = (
    "Sorry, that is outside what I can help with here. I can answer questions about the "
    "topics I know, or pass you to a person on our team."
)
# The quick reply an out-of-scope answer offers: choosing it asks for a person.
TALK_TO_PERSON_LABEL = "Talk to a person"
HANDOFF_TEXT = "I'm passing you to a person on our team; they will reply here shortly."
# An intent learnt from reviews before anyone wrote its answer: a person answers it.
NO_TEMPLATE_TEXT = (
    "I understand what you need, but a person on our team is better placed to answer it. "
    "I'm passing you to them; they will reply here."
)
HANDOFF_AFTER_FAILURES_TEXT = (
    "I'm sorry I couldn't help. I'm passing you to a person on our team; they will reply here."
)
# What the widget shows when the customer says an answer did not help (never stored).
NOT_HELPFUL_TEXT = "Sorry that didn't help. You could ask it in other words"
# The last quick reply of every clarifying question: none of the choices is what they meant.
NONE_OF_THESE_LABEL = "None of these"
NONE_FIT_TEXT = "Sorry I got that wrong. You could ask it in other words"


class Agent:
    def __init__(self, runtime: Runtime | None = None, *, handoff_intent: str = "") -> None:
        self.runtime = runtime or get_runtime()
        self.handoff_intent = handoff_intent or settings.CHATBOT_HANDOFF_INTENT

    def not_helpful(self) -> tuple[str, tuple[str, ...]]:
        """What the bot says, and offers, when the customer says an answer did not help: ask in
        other words, or talk to a person (when the knowledge base can hand off). Reads the
        live index, which may load it: call it off the event loop."""
        index = self.runtime.index()
        known = index.examples.ids_by_intent if index is not None else {}
        return _another_way(NOT_HELPFUL_TEXT, person=self.handoff_intent in known)

    def analyse(self, text: str) -> asyncio.Future[Batched[Analysis]]:
        """Start reading `text` with the models now, so that it can run while the message is
        being stored; pass the result to `respond`."""
        return asyncio.ensure_future(self.runtime.analyse(text))

    async def respond(
        self,
        text: str,
        *,
        chosen_intent: str = "",
        none_fit: bool = False,
        analysis: Awaitable[Batched[Analysis]] | None = None,
    ) -> AgentReply:
        """Decide the reply to `text`; `chosen_intent` answers a clarifying question's choice,
        `none_fit` says the customer chose none of them (declined: ask in other words, or a
        person), `analysis` is what `analyse(text)` started, if it was."""
        started = time.perf_counter()
        batched = await (analysis if analysis is not None else self.runtime.analyse(text))
        analysis = batched.value
        index = analysis.index
        if index is None or not analysis.example_hits:
            raise AgentUnavailable("No answer index is live; run `manage.py prepare_model`.")
        if analysis.prediction is not None:
            ranked = [IntentScore(i, round(p, 4)) for i, p in analysis.prediction.top_k]
            confidence = analysis.prediction.confidence  # decided on unrounded, as in training
        else:
            ranked = rank_intents(analysis.example_hits)
            confidence = ranked[0].score
        # What the out-of-scope check reads: the similarity to the model's training examples in
        # its own space; without a model, the nearest example's by the base encoder.
        similarity = (
            analysis.prediction.similarity
            if analysis.prediction is not None and analysis.prediction.similarity is not None
            else analysis.example_hits[0].score
        )
        # ... and to the nearest message a support admin marked out of scope (None: none).
        oos_similarity = (
            analysis.prediction.oos_similarity if analysis.prediction is not None else None
        )
        # The intents the knowledge base holds now: the model may have learnt others since
        # deactivated (or deleted), which the bot must neither answer nor offer.
        known = index.examples.ids_by_intent
        # Offered only when the knowledge base can hand off (it has the intent's examples).
        talk_to_person = (
            ((self.handoff_intent, TALK_TO_PERSON_LABEL),) if self.handoff_intent in known else ()
        )
        if chosen_intent:
            decision, intent = ANSWER, chosen_intent
        elif none_fit:
            decision, intent = OUT_OF_SCOPE, ranked[0].intent
        else:
            decision = analysis.policy.decide(confidence, similarity, oos_similarity)
            intent = ranked[0].intent
            if intent not in known:
                decision = OUT_OF_SCOPE
        vector = analysis.vector[None, :]

        @functools.cache
        def phrasings(intent: str) -> tuple[str, ...]:
            """The company's own phrasings of `intent` nearest to the message, nearest first
            (never another customer's words); searched once for the second opinion and the
            clarifying question alike."""
            hits = index.search_examples(vector, CHOICE_CANDIDATES, intent=intent)[0]
            return tuple(hit.text for hit in hits if hit.public)

        second_opinion, asked = "", {}
        if (
            not chosen_intent
            and decision in (ANSWER, CLARIFY)
            and intent != self.handoff_intent
            and (helper := get_second_opinion()) is not None
            and (
                settings.CHATBOT_OPENAI_CHECK == "all"
                or analysis.policy.borderline(confidence, similarity, oos_similarity)
            )
        ):
            offered = [r.intent for r in ranked[:3] if r.intent in known]
            candidates = [i for i in offered if i != self.handoff_intent]
            topics = self._topics(index, vector, candidates, phrasings)
            second_opinion, asked["second_opinion_ms"] = await helper.topic(text, topics)
            if second_opinion == NONE:
                decision = OUT_OF_SCOPE
            elif second_opinion in candidates and decision == CLARIFY:
                decision, intent = ANSWER, second_opinion  # it settled the question
            elif second_opinion in candidates and second_opinion != intent:
                decision = CLARIFY  # the two disagree: the customer says which
        policy_started = time.perf_counter()
        template = None
        choices: tuple[tuple[str, str], ...] = ()
        if decision == CLARIFY:
            choices = self._choices([r.intent for r in ranked[:3] if r.intent in known], phrasings)
            if len(choices) < 2 and self.handoff_intent not in dict(choices):
                # The others are no longer known: the choice is this one or a person, else
                # there is nothing to choose and the one known intent is answered.
                choices += talk_to_person
            if len(choices) < 2:
                decision = ANSWER
        if decision == ANSWER:
            templates = index.search_templates(vector, 1, intent=intent)[0]
            if not templates:
                decision, reply_text, suggestions = HANDOFF, NO_TEMPLATE_TEXT, ()
            else:
                template = templates[0]
                reply_text, suggestions = template.text, template.suggestions
            if intent == self.handoff_intent:
                # A person answers next: no quick reply would reach the bot.
                decision, suggestions = HANDOFF, ()
        elif decision == CLARIFY:
            labels = tuple(label for _, label in choices)
            reply_text, suggestions = CLARIFY_TEXT, (*labels, NONE_OF_THESE_LABEL)
        else:
            choices = talk_to_person
            if none_fit:
                reply_text, suggestions = _another_way(NONE_FIT_TEXT, person=bool(choices))
            else:
                reply_text, suggestions = OUT_OF_SCOPE_TEXT, tuple(label for _, label in choices)
        return AgentReply(
            text=reply_text,
            decision=decision,
            intent=intent if decision in (ANSWER, HANDOFF) else ranked[0].intent,
            # What the model made of this message, also when it is a clarifying choice.
            confidence=ranked[0].score,
            alternatives=tuple(ranked),
            template_id=template.id if template else None,
            template_similarity=round(template.score, 4) if template else None,
            suggestions=suggestions,
            index_version=index.version,
            model_version=analysis.model_version,
            nearest_example_similarity=round(similarity, 4),
            out_of_scope_similarity=None if oos_similarity is None else round(oos_similarity, 4),
            nearest_intent=analysis.example_hits[0].intent,
            choices=choices,
            second_opinion=second_opinion,
            timings={
                "queue_ms": round(batched.queue_ms, 2),
                "analyse_ms": round(batched.run_ms, 2),
                **analysis.stages,
                **asked,
                "batch_size": batched.batch_size,
                "policy_ms": round((time.perf_counter() - policy_started) * 1000, 2),
                "agent_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    @staticmethod
    def _choices(intents: list[str], phrasings) -> tuple[tuple[str, str], ...]:
        """For each intent, a quick reply: its phrasing closest to the message among those the
        company wrote, else its name; each label once, since the label the customer picks names
        the intent."""
        choices: list[tuple[str, str]] = []
        for intent in intents:
            labels = [*phrasings(intent), intent_label(intent)]
            taken = {label.lower() for _, label in choices}
            label = next((label for label in labels if label.lower() not in taken), None)
            if label is not None:
                choices.append((intent, label))
        return tuple(choices)

    @staticmethod
    def _topics(index, vector, intents: list[str], phrasings) -> list[Topic]:
        """What the second opinion reads of each intent: its phrasings nearest to the message
        that the company wrote, and the answer the bot would give."""
        topics = []
        for intent in intents:
            templates = index.search_templates(vector, 1, intent=intent)[0]
            topics.append(
                Topic(
                    intent=intent,
                    examples=phrasings(intent)[:TOPIC_EXAMPLES],
                    answer=templates[0].text if templates else "",
                )
            )
        return topics


# How many of an intent's nearest examples a clarifying question looks through for a label.
CHOICE_CANDIDATES = 8
# How many of its phrasings the second opinion reads of each intent.
TOPIC_EXAMPLES = 3


def _another_way(opening: str, *, person: bool) -> tuple[str, tuple[str, ...]]:
    """`opening`, then a way on: ask in other words, or (`person`) talk to a person, with the
    quick reply that hands off."""
    if person:
        return f"{opening}, or talk to a person on our team.", (TALK_TO_PERSON_LABEL,)
    return f"{opening}.", ()


def intent_label(intent: str) -> str:
    """An intent's name as a quick reply: "card_arrival" -> "Card arrival"."""
    return intent.replace("_", " ").strip().capitalize()


def handoff_after_failures(reply: AgentReply) -> AgentReply:
    """The reply turned into a hand-off, when the customer has been getting nowhere."""
    return replace(reply, text=HANDOFF_AFTER_FAILURES_TEXT, decision=HANDOFF, suggestions=())
