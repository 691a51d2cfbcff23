"""Writes to the knowledge base: loading intents from a file, publishing the answer index."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from chatbot.models import AnswerTemplate, Intent, IntentExample
from chatbot.runtime import get_runtime
from retrieval.index import Entry, KnowledgeIndex

logger = logging.getLogger(__name__)

DEMO_KNOWLEDGE_BASE = Path(__file__).parent / "demo" / "knowledge_base.json"
KEEP_INDEX_VERSIONS = 5


@dataclass(frozen=True)
class LoadReport:
    intents: int
    examples_added: int
    templates_added: int


class KnowledgeBaseError(ValueError):
    pass


def _validated(data: object) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("intents"), list):
        raise KnowledgeBaseError('A knowledge base is a JSON object with an "intents" list.')
    for number, intent in enumerate(data["intents"], start=1):
        if not isinstance(intent, dict) or not isinstance(intent.get("name"), str):
            raise KnowledgeBaseError(f'Intent #{number} needs a "name".')
        for key in ("examples", "templates"):
            if not isinstance(intent.get(key, []), list):
                raise KnowledgeBaseError(f'Intent {intent["name"]!r}: "{key}" must be a list.')
    return data["intents"]


@transaction.atomic
def knowledge_base_load(*, path: Path = DEMO_KNOWLEDGE_BASE) -> LoadReport:
    """Add the intents, examples and templates of a file; loading it again adds nothing."""
    intents = _validated(json.loads(Path(path).read_text(encoding="utf-8")))
    examples_added = templates_added = 0
    for spec in intents:
        intent, _ = Intent.objects.update_or_create(
            name=spec["name"],
            defaults={"description": spec.get("description", ""), "active": True},
        )
        known = set(intent.examples.values_list("text", flat=True))
        new = [text.strip() for text in spec.get("examples", []) if text.strip() not in known]
        IntentExample.objects.bulk_create(
            [IntentExample(intent=intent, text=text) for text in dict.fromkeys(new)]
        )
        examples_added += len(set(new))
        for template in spec.get("templates", []):
            _, created = AnswerTemplate.objects.update_or_create(
                intent=intent,
                text=template["text"].strip(),
                defaults={"suggestions": template.get("suggestions", [])},
            )
            templates_added += created
    return LoadReport(len(intents), examples_added, templates_added)


def _entries() -> tuple[list[Entry], list[Entry]]:
    examples = [
        # Only the examples a company wrote may be offered to customers as quick replies; one
        # learnt from a review is a customer's own words (an order number, an address...).
        Entry(id=pk, text=text, intent=intent, public=source == IntentExample.Source.CURATED)
        for pk, text, intent, source in IntentExample.objects.filter(intent__active=True)
        .order_by("pk")
        .values_list("pk", "text", "intent__name", "source")
    ]
    templates = [
        Entry(id=pk, text=text, intent=intent, suggestions=tuple(suggestions or ()))
        for pk, text, intent, suggestions in AnswerTemplate.objects.filter(
            active=True, intent__active=True
        )
        .order_by("pk")
        .values_list("pk", "text", "intent__name", "suggestions")
    ]
    return examples, templates


def answer_index_build(*, force: bool = False) -> str:
    """Embed the active examples and templates into a new index version and make it live.

    Texts the live index already embedded are reused, so a rebuild after an edit is quick; when
    nothing changed the live version stays (unless `force`).
    """
    runtime = get_runtime()
    store = runtime.indexes
    with store.lock():
        examples, templates = _entries()
        if not examples or not templates:
            if store.live() is not None:
                # The last template deleted, every intent deactivated: the chat must not go on
                # answering from what is no longer there. Without an index it answers nothing
                # (each message gets an error) and /healthz says so.
                store.clear_live()
                logger.error(
                    "The knowledge base has no active %s left: the answer index is withdrawn "
                    "and the chat answers nothing until there are.",
                    "intent examples" if not examples else "answer templates",
                )
            raise KnowledgeBaseError("Nothing to index: load a knowledge base first.")
        live = store.live()
        previous = KnowledgeIndex.load(store.path(live)) if live else None
        if (
            not force
            and previous is not None
            and previous.holds(
                examples=examples, templates=templates, encoder_name=runtime.encoder_name
            )
        ):
            return previous.version
        encoder = runtime.encoder()
        template_versions = {
            str(pk): updated.isoformat()
            for pk, updated in AnswerTemplate.objects.filter(
                pk__in=[t.id for t in templates]
            ).values_list("pk", "updated_at")
        }
        index = KnowledgeIndex.build(
            examples=examples,
            templates=templates,
            encode=encoder.encode,
            encoder_name=encoder.name,
            dim=encoder.dim,
            reuse=previous,
            extra_info={"template_versions": template_versions},
        )
        version = store.write(index.save)
        store.set_live(version)
        store.prune(keep=KEEP_INDEX_VERSIONS)
    logger.info(
        "Published answer index %s: %d examples, %d templates, %d newly embedded",
        version,
        len(examples),
        len(templates),
        index.info["newly_encoded"],
    )
    return version


def answer_index_rebuild_schedule() -> None:
    """Rebuild the answer index in the worker once the current transaction commits."""
    from chatbot.tasks import answer_index_rebuild

    def hand_over() -> None:
        try:
            answer_index_rebuild.delay()
        except Exception:
            # The edit is saved; the next rebuild (any edit, `prepare_model`, the admin action)
            # embeds it. /healthz says the broker is down.
            logger.exception("Could not hand the answer-index rebuild to a worker")

    transaction.on_commit(hand_over)
