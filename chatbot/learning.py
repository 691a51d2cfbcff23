"""The learning loop's writes: reviews become examples, runs train, promotion is gated.

review_apply       an admin's verdict on customer messages -> IntentExample(source=reviewed)
training_run_*     one retraining: claim the lock, train, score candidate and live model on
                   the same validation set, promote only when the candidate is no worse
model_promote      make a version live for every serving process (after commit)
model_rollback     make the previously live version live again
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from chatbot.models import Intent, IntentExample, Message, ModelVersion, TrainingRun
from chatbot.runtime import get_runtime
from training.config import TrainConfig
from training.data import Example
from training.train import Progress, refit_policy, train

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
# A running run whose heartbeat is older than this was killed (hard time limit, lost worker).
STALE_AFTER = timedelta(minutes=15)


# --- Review ---------------------------------------------------------------------------------


class ReviewError(ValueError):
    pass


def intent_name(text: str) -> str:
    """A typed intent name as the knowledge base spells names: lower_snake_case."""
    name = slugify(text).replace("-", "_")
    if not name:
        raise ReviewError(f"{text!r} is not a usable intent name.")
    return name


def review_apply(
    *,
    message_ids: Iterable[int],
    verdict: str,
    user=None,
    intent: Intent | None = None,
    new_intent: str = "",
) -> int:
    """Record an admin's verdict on customer messages; returns how many were reviewed.

    confirmed: the bot's intent was right; relabelled: `intent` (or a `new_intent` created on the
    spot) is; both make the message a training example linked to it. out_of_scope and skipped
    record the verdict only. Reviewing again replaces the earlier verdict and the example it
    added (never one the knowledge base had already).
    """
    if verdict not in Message.Review.values:
        raise ReviewError(f"Unknown review verdict {verdict!r}.")
    if verdict == Message.Review.RELABELLED:
        if new_intent:
            intent, _ = Intent.objects.get_or_create(name=intent_name(new_intent))
        if intent is None:
            raise ReviewError("Choose an intent, or type the name of a new one, to relabel.")
    reviewed = removed = 0
    out_of_scope_changed = False
    messages = Message.objects.filter(pk__in=list(message_ids), role=Message.Role.CUSTOMER)
    for message in messages.select_related("reply__intent"):
        was_out_of_scope = message.review == Message.Review.OUT_OF_SCOPE
        label = intent
        if verdict == Message.Review.CONFIRMED:
            reply = getattr(message, "reply", None)
            label = reply.intent if reply is not None else None
            if label is None:
                continue  # nothing was predicted: only a relabel can say what it meant
        elif verdict != Message.Review.RELABELLED:
            label = None
        with transaction.atomic():
            removed += _examples_release(message)
            if label is not None:
                example, created = IntentExample.objects.get_or_create(
                    intent=label,
                    text=message.text,
                    defaults={"source": IntentExample.Source.REVIEWED, "message": message},
                )
                if not created and example.message_id is None:
                    example.message = message
                    example.save(update_fields=["message"])
            message.review = verdict
            message.reviewed_intent = label
            message.reviewed_at = timezone.now()
            message.reviewed_by = user if user is not None and user.is_authenticated else None
            message.save(update_fields=["review", "reviewed_intent", "reviewed_at", "reviewed_by"])
        reviewed += 1
        out_of_scope_changed |= was_out_of_scope != (verdict == Message.Review.OUT_OF_SCOPE)
    if removed or (reviewed and verdict in (Message.Review.CONFIRMED, Message.Review.RELABELLED)):
        from chatbot.knowledge import answer_index_rebuild_schedule

        # The retriever knows the new phrasings at once, and forgets those a verdict undid.
        answer_index_rebuild_schedule()
    if out_of_scope_changed:
        refit_request()
    return reviewed


def refit_request() -> TrainingRun | None:
    """Queue a run CHATBOT_REFIT_AFTER_REVIEW_S from now that takes in the out-of-scope marks
    (see `refits`), unless one is queued already: it will read these marks too. None if off."""
    delay = settings.CHATBOT_REFIT_AFTER_REVIEW_S
    if delay <= 0:
        return None
    queued = TrainingRun.objects.filter(
        trigger=TrainingRun.Trigger.REVIEW, status=TrainingRun.Status.QUEUED
    )
    if queued.exists():
        return None
    return training_run_request(trigger=TrainingRun.Trigger.REVIEW, countdown=delay)


def _examples_release(message: Message) -> int:
    """Undo what an earlier verdict on `message` added to the examples; returns how many
    examples went. An example that a review created goes, unless another reviewed message says
    the same (it then points to that one); one the knowledge base had already (curated,
    imported) only forgets the message."""
    deleted = 0
    for example in IntentExample.objects.filter(message=message):
        same = (
            Message.objects.filter(
                role=Message.Role.CUSTOMER,
                text=example.text,
                reviewed_intent=example.intent,
                review__in=(Message.Review.CONFIRMED, Message.Review.RELABELLED),
            )
            .exclude(pk=message.pk)
            .first()
        )
        if example.source == IntentExample.Source.REVIEWED and same is None:
            example.delete()
            deleted += 1
        else:
            example.message = same
            example.save(update_fields=["message"])
    return deleted


# --- Datasets -------------------------------------------------------------------------------


def training_examples() -> list[Example]:
    """Every example of an active intent: curated, reviewed and imported."""
    rows = IntentExample.objects.filter(intent__active=True).values_list("text", "intent__name")
    return [Example(text, label) for text, label in rows.order_by("pk")]


# An intent is trained once it has this many examples: one to validate on, two to learn from.
MIN_EXAMPLES_TO_TRAIN = 3


def trainable(examples: Sequence[Example]) -> tuple[list[Example], dict[str, int]]:
    """The examples of the intents with enough of them to train on, and the others' counts:
    an intent relabelled into being from one or two messages waits for more, instead of failing
    every run until it has them."""
    counts = Counter(example.label for example in examples)
    thin = {label: n for label, n in sorted(counts.items()) if n < MIN_EXAMPLES_TO_TRAIN}
    return [e for e in examples if e.label not in thin], thin


def left_out_note(thin: dict[str, int]) -> str:
    """What a run says about the intents `trainable` left out ("" if none)."""
    if not thin:
        return ""
    names = ", ".join(f"{label} ({n})" for label, n in thin.items())
    return f"Left out until they have {MIN_EXAMPLES_TO_TRAIN} examples: {names}."


def out_of_scope_messages():
    """Customer messages a model learns to decline: those reviewed as outside every intent and,
    with CHATBOT_LEARN_FROM_DECLINES, those declined in the last
    CHATBOT_LEARN_FROM_DECLINES_DAYS days that nobody has reviewed: by the bot, or by the
    customer, who chose "None of these" when the bot asked which intent they meant (any
    verdict wins: a confirmed or relabelled message is an example, a skipped one neither). A
    declined message that is word for word an intent's example is in scope, whatever was
    said of it."""
    marked = Q(review=Message.Review.OUT_OF_SCOPE)
    if settings.CHATBOT_LEARN_FROM_DECLINES:
        since = timezone.now() - timedelta(days=settings.CHATBOT_LEARN_FROM_DECLINES_DAYS)
        declined = Q(reply__decision=Message.Decision.OUT_OF_SCOPE) | Q(
            reply__decision=Message.Decision.CLARIFY, reply__helpful=False
        )
        marked |= Q(
            Q(declined, review="", created_at__gte=since)
            & ~Q(text__in=IntentExample.objects.values("text"))
        )
    return Message.objects.filter(marked, role=Message.Role.CUSTOMER)


def out_of_scope_learnt() -> tuple[list[str], dict[str, int]]:
    """Each out-of-scope text once, in the order first said, and how many of them an admin
    marked (`reviewed`) and how many were only declined, by the bot or by the customer
    (`declined`)."""
    rows = out_of_scope_messages().order_by("pk").values_list("text", "review")
    texts: dict[str, bool] = {}
    for text, review in rows:
        texts[text] = texts.get(text, False) or review == Message.Review.OUT_OF_SCOPE
    reviewed = sum(texts.values())
    return list(texts), {"reviewed": reviewed, "declined": len(texts) - reviewed}


def out_of_scope_texts() -> list[str]:
    return out_of_scope_learnt()[0]


def data_fingerprints(
    train_set: Sequence[Example], val_set: Sequence[Example], out_of_scope: Sequence[str]
) -> dict[str, str]:
    """Digests of what a model learns from: its examples (with their side of the split) and
    the messages reviewed out of scope. Equal digests: the same data, whatever its order."""
    examples = hashlib.sha256()
    for side, rows in (("train", train_set), ("validation", val_set)):
        for label, text in sorted((e.label, e.text) for e in rows):
            examples.update(f"{side}\t{label}\t{text}\n".encode())
    reviewed = hashlib.sha256()
    for text in sorted(set(out_of_scope)):
        reviewed.update(f"{text}\n".encode())
    return {"examples": examples.hexdigest(), "out_of_scope": reviewed.hexdigest()}


def _hash(text: str) -> float:
    return int(hashlib.sha1(text.strip().lower().encode()).hexdigest()[:12], 16) / 16**12


def validation_split(
    examples: Sequence[Example], fraction: float = VALIDATION_FRACTION
) -> tuple[list[Example], list[Example]]:
    """A fixed validation set: each text's place depends on its words only, never on the run.

    So no model version has trained on the validation examples it is compared on, and a
    candidate and the live model are scored on the same set. Every intent with at least two
    examples keeps at least one in validation and one in training.
    """
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    train_set: list[Example] = []
    val_set: list[Example] = []
    for rows in by_label.values():
        rows = sorted(rows, key=lambda e: _hash(e.text))
        held = [e for e in rows if _hash(e.text) < fraction]
        if not held and len(rows) >= 2:
            held = rows[:1]
        if len(held) == len(rows):
            held = held[:-1]
        held_ids = {id(e) for e in held}
        val_set.extend(held)
        train_set.extend(e for e in rows if id(e) not in held_ids)
    return train_set, val_set


# --- Promotion ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionRule:
    max_f1_drop: float  # points of macro-F1
    max_intent_drop: float  # points of one intent's accuracy (recall)
    min_support: int  # intents with fewer validation examples are too noisy to judge

    @classmethod
    def from_settings(cls) -> PromotionRule:
        return cls(
            max_f1_drop=settings.CHATBOT_PROMOTE_MAX_F1_DROP,
            max_intent_drop=settings.CHATBOT_PROMOTE_MAX_INTENT_DROP,
            min_support=settings.CHATBOT_PROMOTE_MIN_SUPPORT,
        )

    def verdict(self, candidate: dict, live: dict | None) -> tuple[bool, str]:
        """Whether the candidate may replace the live model, and why; both scored alike.

        A macro-F1 drop past the limit rejects it only if it also gets more of the same
        validation messages wrong than the live model does (when both say which, `correct`):
        on a small validation set, where each intent has two or three messages, one message
        that flips moves macro-F1 by a point, so two models that get as many right, different
        ones, differ by more than the limit in either direction. Intents with enough messages
        are judged on their own below.
        """
        if live is None:
            return True, "No model was live: the candidate becomes the first live model."
        drop = 100 * (live["macro_f1"] - candidate["macro_f1"])
        broken, fixed = _flips(candidate, live)
        reshuffled = ""
        if drop > self.max_f1_drop:
            if broken is None or broken > fixed:
                more = "" if broken is None else f" and gets {broken - fixed} more messages wrong"
                return False, (
                    f"Macro-F1 {candidate['macro_f1']:.2%} is {drop:.2f} points below the live "
                    f"model's {live['macro_f1']:.2%}{more}; at most {self.max_f1_drop:g} is "
                    "allowed."
                )
            reshuffled = (
                f" Macro-F1 is {drop:.2f} points below, but the candidate gets no more "
                f"validation messages wrong ({fixed} fixed, {broken} broken)."
            )
        worse = []
        for name, scores in candidate["per_intent"].items():
            if scores["support"] < self.min_support or name not in live["per_intent"]:
                continue
            intent_drop = 100 * (live["per_intent"][name]["recall"] - scores["recall"])
            if intent_drop > self.max_intent_drop:
                worse.append(f"{name} ({intent_drop:.1f} points)")
        if worse:
            return False, (
                f"Intents with at least {self.min_support} validation examples lost more than "
                f"{self.max_intent_drop:g} points: {', '.join(worse)}."
            )
        return True, (
            f"Macro-F1 {candidate['macro_f1']:.2%} against the live model's "
            f"{live['macro_f1']:.2%} ({-drop:+.2f} points); no intent with at least "
            f"{self.min_support} validation examples lost more than {self.max_intent_drop:g}."
            f"{reshuffled}"
        )


def _flips(candidate: dict, live: dict) -> tuple[int | None, int | None]:
    """Of the validation messages both models read, how many the candidate gets wrong that the
    live model got right (broken), and the other way round (fixed); None, None if unknown."""
    if "correct" not in candidate or "correct" not in live:
        return None, None
    pairs = list(zip(candidate["correct"], live["correct"], strict=True))
    broken = sum(1 for new, old in pairs if old and not new)
    fixed = sum(1 for new, old in pairs if new and not old)
    return broken, fixed


def model_scores(directory: str | Path, examples: Sequence[Example]) -> dict:
    """Accuracy, macro-F1 and per-intent scores of a model version, the same every time.

    In fp32 and batched by length alone: a serving process picks its precision and how it
    splits batches by timing them when it loads, and in int8 a message's result moves with the
    messages it shares a pass with, so scores taken "as served" would depend on how busy the
    machine was (two identical models once scored 93.67% and 92.41%). The precisions served
    instead are the ones training found to hold the fp32 accuracy.
    """
    from training.evaluate import compute_metrics
    from training.inference import IntentClassifier

    classifier = IntentClassifier.from_dir(directory, precision="fp32")
    classifier.call_tokens = None  # no split by timing
    predictions = classifier.predict([e.text for e in examples], k=1)
    metrics = compute_metrics(
        [e.label for e in examples],
        [p.intent for p in predictions],
        [p.confidence for p in predictions],
    )
    gold = {e.label for e in examples}
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_intent": {k: v for k, v in metrics["per_intent"].items() if k in gold},
        "correct": [p.intent == e.label for p, e in zip(predictions, examples, strict=True)],
    }


# --- Models ---------------------------------------------------------------------------------


def model_train(
    *,
    config: TrainConfig,
    promote: bool = False,
    progress: Progress | None = None,
    split: tuple[list[Example], list[Example]] | None = None,
) -> ModelVersion:
    """Train on the database's examples (fixed validation split, unless `split` is given) and
    register the version."""
    config.base_model = config.base_model or settings.CHATBOT_BASE_MODEL
    if split is None:
        examples, thin = trainable(training_examples())
        if thin:
            logger.warning(left_out_note(thin))
        split = validation_split(examples)
    return _publish(
        lambda directory, out_of_scope: train(
            config, *split, directory, progress=progress, out_of_scope=out_of_scope
        ),
        split,
        base_model=config.base_model,
        kind=ModelVersion.Kind.LORA if config.lora else ModelVersion.Kind.FULL,
        promote=promote,
    )


def model_refit(
    *,
    source: ModelVersion,
    split: tuple[list[Example], list[Example]],
    progress: Progress | None = None,
) -> ModelVersion:
    """Register a version with `source`'s weights and its decision policy fitted again on the
    out-of-scope messages now (`out_of_scope_texts`; `split` must be the data `source` learnt
    from)."""
    return _publish(
        lambda directory, out_of_scope: refit_policy(
            Path(source.directory),
            split[1],
            directory,
            out_of_scope=out_of_scope,
            progress=progress,
        ),
        split,
        base_model=source.base_model,
        kind=source.kind,
    )


def refits(live: ModelVersion | None, fingerprints: dict[str, str], config: TrainConfig) -> bool:
    """Whether a run may refit the live model's policy instead of training: it learnt from the
    same examples as now, with the same base model and kind of training, and only the
    out-of-scope messages (reviewed, or declined) changed (which, unless they train
    the weights, change nothing else)."""
    if live is None or not (Path(live.directory) / "model.json").is_file():
        return False
    learnt = live.metrics.get("data") or {}
    kind = ModelVersion.Kind.LORA if config.lora else ModelVersion.Kind.FULL
    return (
        learnt.get("examples") == fingerprints["examples"]
        and learnt.get("out_of_scope") != fingerprints["out_of_scope"]
        and live.base_model == (config.base_model or settings.CHATBOT_BASE_MODEL)
        and live.kind == kind
        and not config.out_of_scope_weight
    )


def _publish(
    make: Callable[[Path, list[str]], dict],
    split: tuple[list[Example], list[Example]],
    *,
    base_model: str,
    kind: str,
    promote: bool = False,
) -> ModelVersion:
    """Write a version into the model store with `make(directory, out_of_scope)` (which returns
    its metrics) and register it, with what it learnt from."""
    out_of_scope, sources = out_of_scope_learnt()
    store = get_runtime().models
    metrics: dict = {}
    version = store.write(lambda directory: metrics.update(make(directory, out_of_scope)))
    metrics["data"] = data_fingerprints(*split, out_of_scope)
    metrics["out_of_scope"] = sources  # how many texts admins marked, how many the bot declined
    model_version = ModelVersion.objects.create(
        directory=str(store.path(version)), base_model=base_model, kind=kind, metrics=metrics
    )
    logger.info("Registered %s: %s", model_version, metrics["validation"])
    if promote:
        model_promote(model_version=model_version)
    return model_version


def model_promote(*, model_version: ModelVersion, rollback: bool = False) -> None:
    """Make a version live: in the database, then (after commit) for every serving process.
    A rollback keeps the version's promotion time, so that rolling back again goes further
    back, never forth to the version just rolled back from.

    ReviewError if its directory is not a model in the store (a row added by hand, files
    deleted since): every process would drop its model for nothing.
    """
    directory = Path(model_version.directory)
    if not _in_model_store(directory) or not (directory / "model.json").is_file():
        raise ReviewError(
            f"{model_version} has no model in the store ({directory}); it cannot be made live."
        )
    with transaction.atomic():
        current = ModelVersion.objects.select_for_update().filter(is_live=True).first()
        if rollback or (current is not None and current.pk == model_version.pk):
            # Back to where it was in the history (or live already): nothing to record.
            promoted_at = model_version.promoted_at or timezone.now()
            replaced = model_version.replaced_id
        else:
            promoted_at = timezone.now()
            replaced = current.pk if current is not None else None
        ModelVersion.objects.filter(is_live=True).exclude(pk=model_version.pk).update(is_live=False)
        ModelVersion.objects.filter(pk=model_version.pk).update(
            is_live=True, promoted_at=promoted_at, replaced_id=replaced
        )
        name = Path(model_version.directory).name
        transaction.on_commit(lambda: get_runtime().models.set_live(name))
    model_version.is_live = True
    model_version.promoted_at = promoted_at
    model_version.replaced_id = replaced


def _in_model_store(directory: Path) -> bool:
    """Whether `directory` is a version directory of the model store (what `set_live` names)."""
    return get_runtime().models.path(directory.name).resolve() == directory.resolve()


def _rollback_target(live: ModelVersion) -> ModelVersion | None:
    """The version that was live before `live` was promoted (by promotion time for versions
    promoted before that was recorded)."""
    if live.replaced_id is not None:
        return ModelVersion.objects.filter(pk=live.replaced_id).first()
    if live.promoted_at is None:
        return None
    return (
        ModelVersion.objects.filter(promoted_at__lt=live.promoted_at)
        .exclude(pk=live.pk)
        .order_by("-promoted_at")
        .first()
    )


def model_files_prune(*, keep: int | None = None) -> list[ModelVersion]:
    """Delete the files of old model versions (about 90 MB each for a full fine-tune; the rows
    and their metrics stay): all but the live one, the one a rollback returns to, and the newest
    `keep` others (CHATBOT_KEEP_MODEL_VERSIONS). Returns the versions whose files went."""
    keep = settings.CHATBOT_KEEP_MODEL_VERSIONS if keep is None else keep
    live_name = get_runtime().models.live()
    live = ModelVersion.objects.filter(is_live=True).first()
    kept = {live.pk, getattr(_rollback_target(live), "pk", None)} if live else set()
    gone = []
    for version in ModelVersion.objects.exclude(pk__in=kept - {None}).order_by("-created_at")[
        keep:
    ]:
        directory = Path(version.directory)
        if _in_model_store(directory) and directory.name != live_name and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
            gone.append(version)
    return gone


def model_rollback() -> ModelVersion:
    """Make live again the version that was live before the current one."""
    live = ModelVersion.objects.filter(is_live=True).first()
    if live is None or live.promoted_at is None:
        raise ReviewError("No model is live, so there is nothing to roll back.")
    previous = _rollback_target(live)
    if previous is None:
        raise ReviewError(f"No version was promoted before {live.name}: nothing to roll back to.")
    model_promote(model_version=previous, rollback=True)
    return previous


# --- Training runs --------------------------------------------------------------------------


def training_run_request(
    *, trigger: str = TrainingRun.Trigger.MANUAL, countdown: float | None = None
) -> TrainingRun:
    """Queue a run and hand it to a Celery worker once the transaction commits (to start
    `countdown` seconds later, when given)."""
    run = TrainingRun.objects.create(trigger=trigger)
    transaction.on_commit(lambda: _hand_over(run, countdown=countdown))
    return run


def _hand_over(run: TrainingRun, *, countdown: float | None = None) -> None:
    """Send a queued run to a Celery worker; if no broker answers, the run fails saying so."""
    from chatbot.tasks import model_retrain

    try:
        model_retrain.apply_async(kwargs={"run_id": run.pk}, countdown=countdown)
    except Exception as error:  # the broker is down: the run must not wait forever
        logger.exception("Training run %s could not be handed to a worker", run.pk)
        TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.FAILED,
            finished_at=timezone.now(),
            error=f"No worker could be reached to run it ({error}); is the broker "
            "(REDIS_URL, CELERY_BROKER_URL) up?",
        )


def _finish(run: TrainingRun, status: str, **fields) -> TrainingRun:
    fields |= {"status": status, "finished_at": timezone.now()}
    if status in (TrainingRun.Status.PROMOTED, TrainingRun.Status.KEPT):
        fields["progress"] = 100.0
    TrainingRun.objects.filter(pk=run.pk).update(**fields)
    run.refresh_from_db()
    return run


def _claim(run: TrainingRun) -> bool:
    """Take the one-run-at-a-time lock (a unique constraint on the running status)."""
    now = timezone.now()
    TrainingRun.objects.filter(
        status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER
    ).update(
        status=TrainingRun.Status.FAILED,
        finished_at=now,
        error="The worker stopped during this run (killed or lost); the live model is unchanged.",
    )
    try:
        with transaction.atomic():
            claimed = TrainingRun.objects.filter(
                pk=run.pk, status=TrainingRun.Status.QUEUED
            ).update(status=TrainingRun.Status.RUNNING, started_at=now, heartbeat_at=now)
    except IntegrityError:
        return False
    return bool(claimed)


def training_run_execute(
    *, run_id: int | None = None, trigger: str = TrainingRun.Trigger.NIGHTLY
) -> TrainingRun | None:
    """Run a queued training run (or a new one); safe to call twice for the same run.

    A run that is no longer queued (done, or taken by another worker) is left as it is. While
    another run trains, this one is skipped. A nightly run with nothing new since the live model
    is skipped too. Failures, including the soft time limit, are recorded with the log's tail;
    the live model changes only through a successful, passing run.
    """
    if run_id is None:
        run = TrainingRun.objects.create(trigger=trigger)
    else:
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None:  # queued against another database, or deleted since: nothing to do
            logger.warning("Training run %s does not exist; nothing to do", run_id)
            return None
        if run.status != TrainingRun.Status.QUEUED:
            return run
    if not _claim(run):
        other = TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING).first()
        if other is None:  # someone else finished or skipped this very run
            run.refresh_from_db()
            return run
        if run.trigger == TrainingRun.Trigger.REVIEW:
            # Marks must not wait for the night: try again once the other run may be done.
            _hand_over(run, countdown=max(60, settings.CHATBOT_REFIT_AFTER_REVIEW_S))
            return run
        return _finish(
            run, TrainingRun.Status.SKIPPED, reason=f"Run {other.pk} is training; one at a time."
        )
    run.refresh_from_db()
    with log_tail() as tail:
        try:
            return _train_and_judge(run)
        except Exception as error:
            logger.exception("Training run %s failed", run.pk)
            return _finish(
                run,
                TrainingRun.Status.FAILED,
                error="".join(traceback.format_exception_only(error)).strip(),
                log_tail="\n".join(tail),
            )


def _train_and_judge(run: TrainingRun) -> TrainingRun:
    live = ModelVersion.objects.filter(is_live=True).first()
    examples, thin = trainable(training_examples())
    since = live.created_at if live else None
    new_examples = (
        IntentExample.objects.filter(intent__active=True, created_at__gt=since).count()
        if since
        else len(examples)
    )
    new_out_of_scope = (
        Message.objects.filter(review=Message.Review.OUT_OF_SCOPE, reviewed_at__gt=since).count()
        if since
        else 0
    )
    train_set, val_set = validation_split(examples)
    fingerprints = data_fingerprints(train_set, val_set, out_of_scope_texts())
    TrainingRun.objects.filter(pk=run.pk).update(
        dataset_size=len(examples), new_examples=new_examples, validation_size=len(val_set)
    )
    if run.trigger in (TrainingRun.Trigger.NIGHTLY, TrainingRun.Trigger.REVIEW) and live:
        same = _trained_on(fingerprints, live)
        if same is not None or (
            not (live.metrics or {}).get("data") and not (new_examples or new_out_of_scope)
        ):
            return _finish(
                run,
                TrainingRun.Status.SKIPPED,
                reason=f"Nothing was reviewed since {same or live} was trained.",
            )

    last_write = 0.0

    def progress(fraction: float, stage: str) -> None:
        nonlocal last_write
        if time.monotonic() - last_write < 2 and fraction < 1:
            return
        last_write = time.monotonic()
        TrainingRun.objects.filter(pk=run.pk).update(
            progress=round(85 * fraction, 1), stage=stage[:200], heartbeat_at=timezone.now()
        )

    config = TrainConfig(epochs=settings.CHATBOT_RETRAIN_EPOCHS, lora=settings.CHATBOT_RETRAIN_LORA)
    refit = refits(live, fingerprints, config)
    if run.trigger == TrainingRun.Trigger.REVIEW and not refit:
        # Queued by marks, to take them in within a minute: never a whole training.
        return _finish(run, TrainingRun.Status.SKIPPED, reason=_no_refit_reason(live, fingerprints))
    if refit:
        # Only the out-of-scope reviews changed: the same training would rebuild the same
        # weights, so only the policy is fitted again (seconds instead of a fine-tune).
        candidate = model_refit(source=live, split=(train_set, val_set), progress=progress)
    else:
        candidate = model_train(config=config, progress=progress, split=(train_set, val_set))
    TrainingRun.objects.filter(pk=run.pk).update(
        model_version=candidate, progress=90.0, stage="scoring", heartbeat_at=timezone.now()
    )
    live_scores = model_scores(live.directory, val_set) if live else None
    # A refit shares the live model's weight files: its scores are the live model's.
    candidate_scores = live_scores if refit else model_scores(candidate.directory, val_set)
    promote, reason = PromotionRule.from_settings().verdict(candidate_scores, live_scores)
    broken, fixed = _flips(candidate_scores, live_scores or {})
    if promote:
        model_promote(model_version=candidate)
    summary = {
        "candidate": {k: candidate_scores[k] for k in ("accuracy", "macro_f1")},
        "live": {k: live_scores[k] for k in ("accuracy", "macro_f1")} if live_scores else None,
        "live_version": live.pk if live else None,
        # validation messages the candidate gets wrong that the live model got right, and back
        "broken": broken,
        "fixed": fixed,
        "train_seconds": None if refit else candidate.metrics.get("train_seconds"),
        "refitted_from": live.pk if refit else None,
        "refit_seconds": candidate.metrics.get("refit_seconds") if refit else None,
        "n_train": len(train_set),
        "left_out": thin,
        # the out-of-scope texts the candidate learnt from: marked by admins, or declined
        "out_of_scope": candidate.metrics["out_of_scope"],
    }
    per_intent = {
        name: {
            "support": scores["support"],
            "candidate": scores["recall"],
            "live": live_scores["per_intent"].get(name, {}).get("recall") if live_scores else None,
        }
        for name, scores in candidate_scores["per_intent"].items()
    }
    finished = _finish(
        run,
        TrainingRun.Status.PROMOTED if promote else TrainingRun.Status.KEPT,
        metrics=summary,
        per_intent=per_intent,
        reason=" ".join(
            filter(
                None,
                (_refit_note(refit, live, summary["out_of_scope"]), reason, left_out_note(thin)),
            )
        ),
        stage="done",
    )
    try:
        if gone := model_files_prune():
            logger.info("Deleted the files of model versions %s", ", ".join(map(str, gone)))
    except Exception:  # a full disk is no reason to call the run failed
        logger.exception("Could not delete the files of old model versions")
    return finished


def _trained_on(fingerprints: dict[str, str], live: ModelVersion) -> ModelVersion | None:
    """The live model or the newest version, if it learnt from exactly this data (a kept
    candidate too: training it again on the same data would only repeat its verdict)."""
    newest = ModelVersion.objects.order_by("-created_at").first()
    for version in (live, newest):
        if version is not None and (version.metrics or {}).get("data") == fingerprints:
            return version
    return None


def _no_refit_reason(live: ModelVersion | None, fingerprints: dict[str, str]) -> str:
    if live is None:
        return "No model is live: the first one is trained, by hand or at night."
    learnt = (live.metrics or {}).get("data")
    if not learnt:
        return (
            f"{live} does not record what it learnt from (it was trained before versions did): "
            "the out-of-scope marks wait for the next training run."
        )
    if learnt.get("examples") != fingerprints["examples"]:
        return (
            f"The examples changed too since {live} was trained: the out-of-scope marks wait "
            "for the next training run (tonight's, or one started by hand)."
        )
    return (
        f"Training has changed since {live} was trained (base model, LoRA or out-of-scope "
        "weight): the out-of-scope marks wait for the next training run."
    )


def _refit_note(refit: bool, live: ModelVersion | None, counts: dict[str, int]) -> str:
    if not refit:
        return ""
    return (
        f"Only the out-of-scope messages (reviewed, or declined) changed since {live} was "
        "trained: it keeps its weights, and its decision policy was fitted again with them "
        f"({counts['reviewed']} marked by admins, {counts['declined']} declined by the bot or "
        "the customer and not reviewed)."
    )


class _TailHandler(logging.Handler):
    def __init__(self, lines: deque) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def log_tail(size: int = 200):
    """The last `size` log lines of training and of this module, while the block runs."""
    lines: deque[str] = deque(maxlen=size)
    handler = _TailHandler(lines)
    watched = [logging.getLogger(name) for name in ("training", __name__)]
    levels = [watched_logger.level for watched_logger in watched]
    for watched_logger in watched:
        watched_logger.addHandler(handler)
        if watched_logger.getEffectiveLevel() > logging.INFO:
            watched_logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        for watched_logger, level in zip(watched, levels, strict=True):
            watched_logger.removeHandler(handler)
            watched_logger.setLevel(level)
