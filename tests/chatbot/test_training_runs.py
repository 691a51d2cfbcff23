"""Training runs: gated promotion, the one-at-a-time lock, failures, rollback, the schedule."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chatbot.learning import (
    PromotionRule,
    data_fingerprints,
    model_files_prune,
    model_promote,
    out_of_scope_learnt,
    out_of_scope_texts,
    refits,
    review_apply,
    trainable,
    training_examples,
    training_run_execute,
    validation_split,
)
from chatbot.models import Conversation, Intent, IntentExample, Message, ModelVersion, TrainingRun
from chatbot.runtime import get_runtime
from tests.chatbot.conftest import JOBS_NEW, JOBS_REVIEWED, turn
from training.config import TrainConfig
from training.data import Example
from training.inference import IntentClassifier
from training.policy import OUT_OF_SCOPE


@pytest.fixture
def models_store() -> Iterator:
    store = get_runtime().models
    yield store
    store.clear_live()


@pytest.fixture
def placeholder_live(transactional_db, models_store) -> ModelVersion:
    """A live version row (and directory) for runs that must not get as far as training."""
    directory = models_store.root / f"placeholder-{random.randrange(10**9)}"
    directory.mkdir(parents=True)
    version = ModelVersion.objects.create(
        directory=str(directory), base_model="m", kind="full", is_live=True
    )
    models_store.set_live(directory.name)
    return version


def declines(version: ModelVersion, texts: list[str]) -> int:
    """How many of `texts` the version's model declines."""
    decisions = IntentClassifier.from_dir(version.directory).decide(texts)
    return sum(d.decision == OUT_OF_SCOPE for d in decisions)


def test_the_validation_split_is_fixed_by_the_words_and_keeps_every_intent() -> None:
    # given
    examples = [Example(f"phrase {i} about {label}", label) for label in "abc" for i in range(30)]
    examples.append(Example("the only other c phrase", "d"))
    examples.append(Example("one more d phrase", "d"))

    # when
    train, val = validation_split(examples)
    _train_again, val_again = validation_split(list(reversed(examples)))

    # then
    assert {e.label for e in val} == {e.label for e in train} == {"a", "b", "c", "d"}
    assert {e.text for e in val} == {e.text for e in val_again}
    assert not {e.text for e in train} & {e.text for e in val}
    assert 5 <= len(val) <= 20


def scores(macro_f1: float, **recalls: tuple[float, int]) -> dict:
    return {
        "macro_f1": macro_f1,
        "per_intent": {k: {"recall": r, "support": s} for k, (r, s) in recalls.items()},
    }


@pytest.mark.parametrize(
    ("candidate_correct", "promoted", "why"),
    [
        ([True, True, False, True], True, "no more validation messages wrong (1 fixed, 1 broken)"),
        ([True, False, False, True], False, "gets 1 more messages wrong"),
    ],
)
def test_a_macro_f1_drop_rejects_only_a_candidate_that_gets_more_messages_wrong(
    candidate_correct: list[bool], promoted: bool, why: str
) -> None:
    # given: a validation set so small that one message flipping moves macro-F1 past the limit
    live = scores(0.90, a=(1.0, 2), b=(0.5, 2)) | {"correct": [True, True, True, False]}
    candidate = scores(0.894, a=(1.0, 2), b=(0.5, 2)) | {"correct": candidate_correct}
    rule = PromotionRule(max_f1_drop=0.5, max_intent_drop=10, min_support=10)

    verdict, reason = rule.verdict(candidate, live)

    assert verdict is promoted
    assert why in reason


@pytest.mark.parametrize(
    ("candidate", "promoted", "why"),
    [
        (scores(0.904, a=(0.9, 20), b=(0.8, 12)), True, "no intent"),
        (scores(0.894, a=(0.9, 20), b=(0.8, 12)), False, "0.60 points below"),
        (scores(0.95, a=(0.9, 20), b=(0.69, 12)), False, "b (11.0 points)"),
        (scores(0.95, a=(0.9, 20), b=(0.8, 12), c=(0.0, 9)), True, "no intent"),
    ],
)
def test_promotion_needs_macro_f1_within_half_a_point_and_no_intent_collapsing(
    candidate: dict, promoted: bool, why: str
) -> None:
    live = scores(0.90, a=(0.9, 20), b=(0.8, 12), c=(0.9, 9))
    rule = PromotionRule(max_f1_drop=0.5, max_intent_drop=10, min_support=10)

    verdict, reason = rule.verdict(candidate, live)

    assert verdict is promoted
    assert why in reason


def test_a_candidate_trained_on_shuffled_labels_is_kept_but_not_promoted(
    knowledge_base: str, models_store, settings
) -> None:
    # given: a first run, which becomes live, while an intent an admin relabelled two messages
    # into has too few examples to train on
    settings.CHATBOT_RETRAIN_EPOCHS = 1
    thin = Intent.objects.create(name="loyalty_points")
    for text in ("how many points do i have", "redeem my loyalty points"):
        IntentExample.objects.create(intent=thin, text=text, source="reviewed")
    first = training_run_execute(trigger=TrainingRun.Trigger.MANUAL)
    assert first.status == TrainingRun.Status.PROMOTED, first.error
    live = ModelVersion.objects.get(is_live=True)
    assert first.model_version == live
    assert first.metrics["live"] is None
    assert "Left out until they have 3 examples: loyalty_points (2)." in first.reason
    assert first.metrics["left_out"] == {"loyalty_points": 2}
    assert (first.progress, first.dataset_size) == (100.0, IntentExample.objects.count() - 2)
    thin.delete()

    # given: the training part of the data relabelled at random (validation stays true)
    train, _ = validation_split(training_examples())
    rows = list(IntentExample.objects.filter(text__in={e.text for e in train}))
    intents = [row.intent_id for row in rows]
    random.Random(0).shuffle(intents)
    for row, intent in zip(rows, intents, strict=True):
        IntentExample.objects.filter(pk=row.pk).update(intent_id=intent)

    # when
    run = training_run_execute(trigger=TrainingRun.Trigger.MANUAL)

    # then
    assert run.status == TrainingRun.Status.KEPT, run.error
    assert "below the live model" in run.reason
    assert run.metrics["candidate"]["macro_f1"] < run.metrics["live"]["macro_f1"] - 0.005
    assert ModelVersion.objects.get(is_live=True) == live
    assert models_store.live() == Path(live.directory).name
    assert run.model_version and not run.model_version.is_live
    assert set(run.per_intent) == {e.label for e in validation_split(training_examples())[1]}

    # when: the nightly run finds nothing reviewed since the live model
    nightly = training_run_execute()

    # then
    assert nightly.status == TrainingRun.Status.SKIPPED
    assert "Nothing was reviewed" in nightly.reason


def test_out_of_scope_marks_refit_the_live_models_policy_a_minute_later_instead_of_training(
    live_model: ModelVersion, settings
) -> None:
    # given: customers asked about jobs, and a support admin marks those messages out of scope,
    # in two goes
    settings.CHATBOT_REFIT_AFTER_REVIEW_S = 60
    conversation = Conversation.objects.create()
    asked = [turn(conversation, text, decision="clarify").pk for text in JOBS_REVIEWED]
    other = turn(conversation, "where is my parcel", decision="answer").pk
    review_apply(message_ids=asked[:3], verdict=Message.Review.OUT_OF_SCOPE)
    review_apply(message_ids=asked[3:], verdict=Message.Review.OUT_OF_SCOPE)
    review_apply(message_ids=[other], verdict=Message.Review.SKIPPED)

    # then: one run is queued for all the marks (the worker starts it a minute later)
    queued = TrainingRun.objects.get(trigger=TrainingRun.Trigger.REVIEW)
    assert queued.status == TrainingRun.Status.QUEUED

    # when: the worker runs it
    run = training_run_execute(run_id=queued.pk)

    # then: a version with the live model's weights and its policy fitted with them went live
    assert run.status == TrainingRun.Status.PROMOTED, (run.reason, run.error, run.log_tail)
    changed = "Only the out-of-scope messages (reviewed, or declined) changed"
    assert f"{changed} since {live_model}" in run.reason
    assert run.metrics["refitted_from"] == live_model.pk
    assert run.metrics["train_seconds"] is None and run.metrics["refit_seconds"] > 0
    assert (run.metrics["broken"], run.metrics["fixed"]) == (0, 0)
    refit = run.model_version
    assert ModelVersion.objects.get(is_live=True) == refit
    assert refit.metrics["n_out_of_scope"] == len(JOBS_REVIEWED)
    weights = Path("encoder", "model.safetensors")
    assert (Path(refit.directory) / weights).samefile(Path(live_model.directory) / weights)
    # then: it declines more of the questions about jobs it never saw than the model before
    declined = [declines(version, JOBS_NEW) for version in (live_model, refit)]
    assert declined[1] > declined[0], declined

    # when: the next night, nothing new
    # then: nothing to do
    assert training_run_execute().status == TrainingRun.Status.SKIPPED

    # when: a mark is undone, but an example was added too before the run starts
    review_apply(message_ids=asked[:1], verdict=Message.Review.SKIPPED)
    IntentExample.objects.create(
        intent=Intent.objects.get(name="missing_package"), text="my parcel vanished"
    )
    second = TrainingRun.objects.get(
        trigger=TrainingRun.Trigger.REVIEW, status=TrainingRun.Status.QUEUED
    )
    second = training_run_execute(run_id=second.pk)

    # then: a run queued by marks never trains a whole model: the marks wait for the next one
    assert second.status == TrainingRun.Status.SKIPPED
    assert "The examples changed too" in second.reason
    assert ModelVersion.objects.get(is_live=True) == refit


def test_what_the_bot_declined_counts_as_out_of_scope_unless_an_admin_said_otherwise(
    db, settings
) -> None:
    # given: the bot declined some messages, answered or asked about others, and an admin
    # reviewed a few of each
    settings.CHATBOT_LEARN_FROM_DECLINES, settings.CHATBOT_LEARN_FROM_DECLINES_DAYS = True, 30
    parcel = Intent.objects.create(name="missing_package")
    conversation = Conversation.objects.create()
    declined = [turn(conversation, t, decision="out_of_scope") for t in ("jobs?", "a cv", "jobs?")]
    turn(conversation, "where is my parcel", decision="answer", intent=parcel)
    turn(conversation, "parcel or refund", decision="clarify", intent=parcel)
    marked = turn(conversation, "do you sell cars", decision="answer", intent=parcel)
    confirmed = turn(conversation, "my parcel never came", decision="out_of_scope", intent=parcel)
    skipped = turn(conversation, "hmm", decision="out_of_scope")
    known = turn(conversation, "where is my parcel", decision="out_of_scope")
    IntentExample.objects.create(intent=parcel, text="where is my parcel")
    old = turn(conversation, "last season's question", decision="out_of_scope")
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    review_apply(message_ids=[marked.pk], verdict=Message.Review.OUT_OF_SCOPE)
    review_apply(message_ids=[confirmed.pk], verdict=Message.Review.CONFIRMED)
    review_apply(message_ids=[skipped.pk], verdict=Message.Review.SKIPPED)
    turn(conversation, "do you sell cars", decision="out_of_scope")  # marked when said before
    # a question whose choices the customer said none of fit ("None of these")
    none_fit = turn(conversation, "gift wrap?", decision="clarify", intent=parcel)
    Message.objects.filter(in_reply_to=none_fit).update(helpful=False)

    # then: a run learns the admin's mark and the unreviewed declines of the last 30 days, the
    # bot's and the customer's, each text once; not what an admin confirmed or skipped, nor
    # older declines, nor one that is an intent's example word for word, nor a question the
    # customer answered by choosing
    assert out_of_scope_learnt() == (
        ["jobs?", "a cv", "do you sell cars", "gift wrap?"],
        {"reviewed": 1, "declined": 3},
    )
    assert declined[0].text == declined[2].text and known.text not in out_of_scope_texts()

    # then: with the setting off, only what admins marked
    settings.CHATBOT_LEARN_FROM_DECLINES = False
    assert out_of_scope_learnt() == (["do you sell cars"], {"reviewed": 1, "declined": 0})


def test_the_bots_own_declines_refit_its_policy_at_night_with_nobody_reviewing(
    live_model: ModelVersion, settings
) -> None:
    # given: customers asked about jobs and the bot declined those questions; nobody reviewed
    settings.CHATBOT_LEARN_FROM_DECLINES = True
    conversation = Conversation.objects.create()
    for text in JOBS_REVIEWED:
        turn(conversation, text, decision="out_of_scope")
    turn(conversation, "where is my parcel", decision="answer")

    # when: the nightly run
    run = training_run_execute()

    # then: the live model's policy is fitted again with them, and it went live
    assert run.status == TrainingRun.Status.PROMOTED, (run.reason, run.error, run.log_tail)
    assert f"(0 marked by admins, {len(JOBS_REVIEWED)} declined by the bot" in run.reason
    assert run.metrics["refitted_from"] == live_model.pk
    assert run.metrics["out_of_scope"] == {"reviewed": 0, "declined": len(JOBS_REVIEWED)}
    refit = run.model_version
    assert refit.metrics["n_out_of_scope"] == len(JOBS_REVIEWED)
    # then: it declines more of the questions about jobs it never saw than the model before
    declined = [declines(version, JOBS_NEW) for version in (live_model, refit)]
    assert declined[1] > declined[0], declined

    # when: the next night, with nothing new
    # then: nothing to do
    assert training_run_execute().status == TrainingRun.Status.SKIPPED

    # when: the operator turns the learning from declines off
    settings.CHATBOT_LEARN_FROM_DECLINES = False
    off = training_run_execute()

    # then: the next run fits the policy again without them
    assert off.status == TrainingRun.Status.PROMOTED, (off.reason, off.error)
    assert off.model_version.metrics["n_out_of_scope"] == 0
    assert off.metrics["out_of_scope"] == {"reviewed": 0, "declined": 0}


def test_with_the_refit_after_marks_off_marks_queue_no_run(live_model, settings) -> None:
    settings.CHATBOT_REFIT_AFTER_REVIEW_S = 0
    conversation = Conversation.objects.create()
    asked = [turn(conversation, text, decision="clarify").pk for text in JOBS_REVIEWED]

    review_apply(message_ids=asked, verdict=Message.Review.OUT_OF_SCOPE)

    assert not TrainingRun.objects.exists()


def test_a_run_refits_only_when_nothing_but_the_out_of_scope_reviews_changed(
    live_model: ModelVersion,
) -> None:
    # given: the examples the live model learnt from, and a message now reviewed out of scope
    train_set, val_set = validation_split(trainable(training_examples())[0])
    now = data_fingerprints(train_set, val_set, ["are you hiring"])
    config = TrainConfig(epochs=1)

    # then: it refits for that alone
    assert refits(live_model, now, config)
    # then: not when nothing changed (an admin asked for a run: it trains), or an example did
    assert not refits(live_model, data_fingerprints(train_set, val_set, []), config)
    assert not refits(live_model, data_fingerprints(train_set[1:], val_set, ["hiring?"]), config)
    assert not refits(live_model, data_fingerprints(val_set, train_set, ["hiring?"]), config)
    # then: nor when training has changed since: LoRA, another base model, or the reviewed
    # messages training the weights too
    assert not refits(live_model, now, TrainConfig(lora=True))
    assert not refits(live_model, now, TrainConfig(base_model="/models/another-bert"))
    assert not refits(live_model, now, TrainConfig(out_of_scope_weight=0.5))
    # then: nor with no live model, or one without a record of what it learnt from
    assert not refits(None, now, config)
    live_model.metrics = {k: v for k, v in live_model.metrics.items() if k != "data"}
    assert not refits(live_model, now, config)


def test_one_run_at_a_time_and_a_run_whose_worker_died_is_marked_failed(
    placeholder_live: ModelVersion,
) -> None:
    # given: a run training elsewhere right now
    busy = TrainingRun.objects.create(
        trigger="nightly", status="running", heartbeat_at=timezone.now()
    )

    # when
    skipped = training_run_execute()

    # then
    assert skipped.status == TrainingRun.Status.SKIPPED
    assert f"Run {busy.pk} is training" in skipped.reason

    # given: that run's worker was killed an hour ago
    TrainingRun.objects.filter(pk=busy.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    queued = TrainingRun.objects.create(trigger="nightly")

    # when
    after = training_run_execute(run_id=queued.pk)

    # then: the dead run is failed; this one took the lock (and, nothing being new, stopped)
    busy.refresh_from_db()
    assert busy.status == TrainingRun.Status.FAILED
    assert "worker stopped" in busy.error
    assert after.status == TrainingRun.Status.SKIPPED
    assert "Nothing was reviewed" in after.reason

    # when: the same message is delivered again (acks_late after a lost ack)
    again = training_run_execute(run_id=queued.pk)

    # then: nothing happens twice
    assert (again.status, again.finished_at) == (after.status, after.finished_at)

    # when: a message for a run this database never had (or that was deleted)
    # then: nothing to do, and no error
    assert training_run_execute(run_id=queued.pk + 1000) is None


def test_a_run_queued_by_marks_tries_again_later_when_another_is_training(
    placeholder_live: ModelVersion, monkeypatch
) -> None:
    # given: a run training right now, and a run the out-of-scope marks queued
    from chatbot.tasks import model_retrain

    sent = []
    monkeypatch.setattr(model_retrain, "apply_async", lambda **task: sent.append(task))
    TrainingRun.objects.create(trigger="nightly", status="running", heartbeat_at=timezone.now())
    marks = TrainingRun.objects.create(trigger=TrainingRun.Trigger.REVIEW)

    # when: the worker gets to it
    after = training_run_execute(run_id=marks.pk)

    # then: not skipped (the marks would wait for the night): handed over again for later
    assert after.status == TrainingRun.Status.QUEUED
    assert sent == [{"kwargs": {"run_id": marks.pk}, "countdown": 60}]


def test_a_failed_run_records_why_and_leaves_the_live_model_alone(
    knowledge_base: str, placeholder_live: ModelVersion, settings, tmp_path: Path
) -> None:
    # given: a base model that cannot load
    settings.CHATBOT_BASE_MODEL = str(tmp_path / "no-such-model")
    versions = ModelVersion.objects.count()

    # when
    run = training_run_execute(trigger=TrainingRun.Trigger.MANUAL)

    # then
    assert run.status == TrainingRun.Status.FAILED
    assert "no-such-model" in run.error
    assert "Traceback" in run.log_tail
    assert ModelVersion.objects.count() == versions
    assert ModelVersion.objects.get(is_live=True) == placeholder_live
    assert get_runtime().models.live() == Path(placeholder_live.directory).name


def test_rollbacks_walk_back_through_what_was_live_and_never_forth(
    admin_client: Client, transactional_db, models_store
) -> None:
    # given: v1, v2 and v3 promoted in turn
    versions = []
    for name in ("hist-1", "hist-2", "hist-3"):
        (models_store.root / name).mkdir(parents=True)
        (models_store.root / name / "model.json").write_text("{}")
        versions.append(
            ModelVersion.objects.create(
                directory=str(models_store.root / name), base_model="m", kind="full"
            )
        )
    v1, v2, v3 = versions
    for version in versions:
        model_promote(model_version=version)
    rollback = reverse("admin:chatbot_modelversion_rollback")

    def live() -> ModelVersion:
        return ModelVersion.objects.get(is_live=True)

    # when: rolled back twice (say v3, then v2, proved bad), then once more
    admin_client.post(rollback)
    after_one = live()
    admin_client.post(rollback)
    after_two = live()
    refused = admin_client.post(rollback, follow=True).content.decode()

    # then: v2, then v1; never back to the version just rolled back from
    assert (after_one, after_two, live()) == (v2, v1, v1)
    assert "nothing to roll back to" in refused
    assert models_store.live() == "hist-1"

    # when: a new version is promoted over v1 after the rollbacks, and rolled back
    model_promote(model_version=v3)
    admin_client.post(rollback)

    # then: back to v1, what was live before it, not v2 (promoted later than v1, but rolled back)
    assert live() == v1


def test_model_versions_cannot_be_deleted_from_admin(
    admin_client: Client, transactional_db, models_store
) -> None:
    (models_store.root / "kept").mkdir(parents=True)
    (models_store.root / "kept" / "model.json").write_text("{}")
    version = ModelVersion.objects.create(
        directory=str(models_store.root / "kept"), base_model="m", kind="full"
    )
    model_promote(model_version=version)

    page = admin_client.post(
        reverse("admin:chatbot_modelversion_changelist"),
        {"action": "delete_selected", "_selected_action": [version.pk], "post": "yes"},
    )
    delete = admin_client.get(reverse("admin:chatbot_modelversion_delete", args=[version.pk]))

    assert page.status_code in (200, 302) and delete.status_code == 403
    assert ModelVersion.objects.filter(pk=version.pk, is_live=True).exists()


def test_admin_rolls_back_to_the_previous_live_version_and_plots_versions(
    admin_client: Client, transactional_db, models_store
) -> None:
    # given: v1 then v2 made live from the admin
    versions = []
    for name, accuracy in (("roll-a", 0.91), ("roll-b", 0.87)):
        (models_store.root / name).mkdir(parents=True)
        (models_store.root / name / "model.json").write_text("{}")
        versions.append(
            ModelVersion.objects.create(
                directory=str(models_store.root / name),
                base_model="m",
                kind="full",
                metrics={"validation": {"accuracy": accuracy, "macro_f1": accuracy - 0.01}},
            )
        )
    changelist = reverse("admin:chatbot_modelversion_changelist")
    for version in versions:
        admin_client.post(changelist, {"action": "make_live", "_selected_action": [version.pk]})
    assert models_store.live() == "roll-b"

    # when
    response = admin_client.post(reverse("admin:chatbot_modelversion_rollback"), follow=True)

    # then
    assert "Rolled back" in response.content.decode()
    assert ModelVersion.objects.get(is_live=True) == versions[0]
    assert models_store.live() == "roll-a"
    page = admin_client.get(changelist).content.decode()
    assert 'data-testid="versions-plot"' in page
    assert page.count("<polyline") == 2
    assert f"v{versions[1].pk}: 87.0%" in page


def test_runs_are_started_from_the_admin_and_scheduled_nightly_at_three(
    admin_client: Client, transactional_db
) -> None:
    from django_celery_beat.models import PeriodicTask

    from chatbot.celery import app

    # when
    response = admin_client.post(reverse("admin:chatbot_trainingrun_start"), follow=True)

    # then
    run = TrainingRun.objects.get()
    assert (run.trigger, run.status) == ("manual", "queued")
    assert "queued for the worker" in response.content.decode()
    nightly = PeriodicTask.objects.get(task="chatbot.tasks.model_retrain")
    assert (nightly.crontab.hour, nightly.crontab.minute, nightly.enabled) == ("3", "0", True)
    assert "chatbot.tasks.model_retrain" in app.tasks
    listing = admin_client.get(reverse("admin:chatbot_trainingrun_changelist"))
    assert "Start a training run now" in listing.content.decode()
    detail = admin_client.get(reverse("admin:chatbot_trainingrun_change", args=[run.pk]))
    assert detail.status_code == 200


def test_a_run_no_worker_can_be_reached_for_fails_at_once_saying_why(
    admin_client: Client, transactional_db, monkeypatch
) -> None:
    # given: the broker does not answer (fault injection at the hand-over)
    from kombu.exceptions import OperationalError

    from chatbot.tasks import model_retrain

    def unreachable(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(model_retrain, "apply_async", unreachable)

    # when
    response = admin_client.post(reverse("admin:chatbot_trainingrun_start"), follow=True)

    # then: failed, not queued forever; and the admin is told
    run = TrainingRun.objects.get()
    assert run.status == "failed" and run.finished_at is not None
    assert "No worker could be reached" in run.error and "Connection refused" in run.error
    assert "could not start" in response.content.decode()


def test_old_model_files_go_but_the_live_and_the_rollback_target_stay(
    transactional_db, models_store
) -> None:
    # given: eight versions, the third live, the second live before it
    versions = []
    for i in range(8):
        directory = models_store.root / f"prune-{i}"
        directory.mkdir(parents=True)
        (directory / "model.json").write_text("{}")
        versions.append(
            ModelVersion.objects.create(directory=str(directory), base_model="m", kind="full")
        )
        ModelVersion.objects.filter(pk=versions[-1].pk).update(
            created_at=timezone.now() - timedelta(days=10 - i)
        )
    ModelVersion.objects.filter(pk=versions[1].pk).update(
        promoted_at=timezone.now() - timedelta(days=5)
    )
    ModelVersion.objects.filter(pk=versions[2].pk).update(
        is_live=True, promoted_at=timezone.now() - timedelta(days=1)
    )
    models_store.set_live("prune-2")

    # when
    gone = model_files_prune(keep=2)

    # then: the live one, the rollback target and the newest two keep their files
    assert {v.pk for v in gone} == {versions[i].pk for i in (0, 3, 4, 5)}
    left = sorted(p.name for p in models_store.root.glob("prune-*"))
    assert left == ["prune-1", "prune-2", "prune-6", "prune-7"]
    assert ModelVersion.objects.count() == 8  # rows and metrics stay


def test_a_runs_page_shows_each_intent_once_as_a_table(
    admin_client: Client, transactional_db
) -> None:
    run = TrainingRun.objects.create(
        status="kept",
        per_intent={"order_status": {"support": 12, "candidate": 0.75, "live": 0.9}},
    )

    page = admin_client.get(reverse("admin:chatbot_trainingrun_change", args=[run.pk]))

    html = page.content.decode()
    assert "field-per_intent_table" in html and "order_status" in html
    assert 'class="form-row field-per_intent"' not in html
    assert html.count("order_status") == 1


def test_a_version_scores_the_same_however_busy_the_machine_is(demo_model, monkeypatch) -> None:
    # given: the demo model's validation messages, and a process that would serve it in int8,
    # splitting batches by what it timed a forward pass at
    import json

    import training.inference as inference
    from chatbot.knowledge import DEMO_KNOWLEDGE_BASE
    from chatbot.learning import model_scores

    directory, _ = demo_model
    intents = json.loads(DEMO_KNOWLEDGE_BASE.read_text())["intents"]
    _, val_set = validation_split(
        [Example(text, i["name"]) for i in intents for text in i["examples"]]
    )
    monkeypatch.setattr(inference, "fastest_precision", lambda model, candidates: ("int8", {}))
    timed = {}
    for call_tokens in (0.0, 512.0):  # an idle machine, a busy one
        monkeypatch.setattr(
            inference, "call_overhead_tokens", lambda model, tokens=call_tokens: tokens
        )

        # when
        timed[call_tokens] = model_scores(directory, val_set)

    # then: the same messages right, so two identical models never reject each other
    assert timed[0.0]["correct"] == timed[512.0]["correct"]
    assert timed[0.0]["macro_f1"] == timed[512.0]["macro_f1"]
