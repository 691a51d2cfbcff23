"""BANKING77 benchmark of the decision policy: answered accuracy vs coverage, and out of scope.

    .venv/bin/python benchmarks/policy_banking77.py [--data ../shared/data/banking77] [--json F]
        [--reviewed-oos 0,5 | --nights 2 --per-night 3 [--review-from groups]] [--skip-coverage]

(1) Trains the default full fine-tune on train.csv (stratified 10% validation split) and reports,
on test.csv, the accuracy of the messages the bot answers at the threshold that answered 90% of
the validation split, and the shares the fitted policy answers / clarifies / declines.
(2) Holds out 10 whole intents (chosen by a fixed seed): trains on the other 67 with no
out-of-scope examples, fits the policy on the in-scope validation split, and treats the held-out
intents' test messages as out of scope: prints out-of-scope recall, how much in-scope accuracy
the policy's declines cost, what the held-out intents' messages got instead of a decline (a
template of a known intent, or a clarifying question), and the in-scope accuracy of the model of
(1), which knows all 77 intents, on the same messages; and the share of each kind of message
that falls in the policy's borderline, not declined, which the optional second opinion
(chatbot.second_opinion, an OpenAI-compatible chat model) would read: what it could catch at
most, and how many in-scope messages it would be shown. Each run also records, for each
held-out intent, its recall and what its messages got instead, beside the known intent nearest
to it before any training (benchmarks/oos_per_intent.py pools them), and prints them for the
first run and the last.
(3) With --reviewed-oos K (a list; 0 is (2)): the same, after a support admin marked K messages
of each held-out intent out of scope (K of its rows in train.csv, never its test messages),
which training reads as the product's learning loop gives them.
(4) With --nights N instead: the loop as a company runs it. Each night, --per-night K more rows
of each held-out intent are reviewed out of scope, drawn only from those the last model declined
(what "Candidate new intents" shows an admin, whose "Mark these out of scope" reviews them;
fewer when it declined fewer), and the next model takes in all reviewed so far: as the product's
runs do when nothing but out-of-scope reviews is new, night 0's model with its policy fitted
again (training.train.refit_policy; --train-each-night trains each night's model instead, which
on the same examples gives the same weights, or so close that the figures move by a message).
With --review-from groups, the rows an admin can reach also take in the look-alikes that
"Candidate new intents" lists under each group (retrieval.groups: messages the bot answered or
clarified that would have joined a group of declined ones, the 10 most alike of each group as
the page shows them), which the admin ticks when the bot got them wrong. The traffic grouped
is the held-out intents' train.csv rows and the in-scope validation split (the model never
trained on either); each night prints how many look-alikes of each kind an admin was shown.
With --review-from whole-groups, no --per-night limit: each night the admin handles whole every
group most of whose messages are of held-out intents: marks its held-out messages out of scope
(unticking the others) and ticks the held-out look-alikes listed under it.
With --review-from queue-and-groups, the admin also works through the review queue's
out-of-scope turns (which its priority puts near the top): every declined held-out row not yet
reviewed is marked out of scope, whether a group holds it or not. (The in-scope turns declined
beside them, which the admin would confirm or relabel, are counted, not fed back to training.)
With --unknown-share S (with --nights), the held-out intents' rows arrive night by night, as a
company's new topics do among the ones it knows: each night a fresh draw of them making share S
of the night's traffic beside the in-scope validation split; the page holds all arrived so far.
With --review-from self (and --unknown-share), nobody reviews: each night the bot marks out of
scope everything it declined in that night's traffic, in-scope messages included, as the
product does by itself (CHATBOT_LEARN_FROM_DECLINES). The known topics' traffic must then be
messages the policy is neither fitted nor judged on: it is half of each known intent's test
messages, a fresh share of them each night, and the figures are measured on the other half and
on every held-out intent's test message (night 0 included, so compare within one run).
With --review-from feedback, the same, and the customers say whether the answers helped (the
widget's buttons): each wrong answer of the night's traffic (another intent's answer to a
held-out intent's message, or a wrong intent's to a known one) gets a "no" with probability
--said-no (0.5), a right one with 0.05, and the admin reviews only those: marks the held-out
intents' messages out of scope (the in-scope ones, relabelled or confirmed, teach the policy
nothing and are only counted).
With --none-fit P (with self or feedback), each clarifying question of the night's traffic
whose choices (the model's top 3 intents) miss the message's intent gets "None of these" with
probability P, and the product learns the message as out of scope with the bot's own declines;
the customers of the others choose the right intent, but for --none-fit-offered Q of them,
who choose "None of these" by mistake.
--skip-coverage leaves (1) out (and the all-77 model's accuracy with it); --keep-models DIR keeps
the models trained (benchmarks/policy_refit_banking77.py refits their policies);
--zero-shot-model DIR measures a kept night-0 model of the same seed instead of training it;
--held-out-far C holds out only intents whose nearest intent still known lies below cosine C
(train.csv centroids in the packaged encoder's space): new topics rather than relatives.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig
from training.data import load_csv, stratified_split
from training.inference import IntentClassifier
from training.pipeline import refit_to_directory, train_to_directory
from training.policy import ANSWER, CLARIFY, OUT_OF_SCOPE, coverage_threshold, decision_shares

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
HELD_OUT = 10
# --review-from choices where the admin handles whole groups (no --per-night limit)
WHOLE_GROUPS = ("whole-groups", "queue-and-groups")
# --review-from choices where the bot marks its own declines (no admin, or one who reads only
# what the customers said did not help)
SELF_MARKING = ("self", "feedback")
# How often a customer says that a right answer did not help (--review-from feedback)
SAID_NO_TO_RIGHT = 0.05


def coverage_run(train, val, test, workdir: Path) -> tuple[dict, np.ndarray]:
    """The figures of (1), and the model's intent for each test message."""
    config = TrainConfig()
    started = time.perf_counter()
    train_to_directory(config, train, val, workdir / "all")
    wall = time.perf_counter() - started
    classifier = IntentClassifier.from_dir(workdir / "all")
    val_conf = np.array([p.confidence for p in classifier.predict([e.text for e in val])])
    threshold = coverage_threshold(val_conf, 0.90)
    decisions = classifier.decide([e.text for e in test])
    gold = np.array([e.label for e in test])
    pred = np.array([d.prediction.intent for d in decisions])
    conf = np.array([d.prediction.confidence for d in decisions])
    answered = conf >= threshold
    policy_answered = np.array([d.decision == ANSWER for d in decisions])
    return {
        "train_wall_s": round(wall, 1),
        "served_precision": classifier.precision,
        "test_accuracy": float((pred == gold).mean()),
        "threshold_for_90pct_validation_coverage": threshold,
        "test_coverage": float(answered.mean()),
        "test_answered_accuracy": float((pred == gold)[answered].mean()),
        "policy": classifier.thresholds["policy"],
        "policy_test_shares": decision_shares([d.decision for d in decisions]),
        "policy_test_answered_accuracy": float((pred == gold)[policy_answered].mean()),
    }, pred


# --held-out-far C: hold out only intents whose nearest known intent lies below cosine C
HELD_OUT_FAR: float | None = None


def held_out_intents(examples, seed: int) -> set[str]:
    labels = sorted({e.label for e in examples})
    if HELD_OUT_FAR is None:
        return set(random.Random(seed).sample(labels, HELD_OUT))
    # In the seed's order, each intent whose nearest intent still known lies below the cosine
    # (holding out more only moves an intent's nearest known one further away).
    centroids = _centroids(tuple((e.text, e.label) for e in examples))
    chosen: list[str] = []
    for label in random.Random(seed).sample(labels, len(labels)):
        known = [k for k in labels if k != label and k not in chosen]
        if max(float(centroids[label] @ centroids[k]) for k in known) < HELD_OUT_FAR:
            chosen.append(label)
        if len(chosen) == HELD_OUT:
            return set(chosen)
    raise SystemExit(f"fewer than {HELD_OUT} intents lie that far from the others")


def in_scope_split(examples, held_out: set[str]) -> tuple[list, list]:
    """The known intents' rows, split into training and validation as training splits them."""
    known = [e for e in examples if e.label not in held_out]
    config = TrainConfig()
    return stratified_split(known, val_fraction=config.val_fraction, seed=config.seed)


@functools.cache
def _centroids(texts_and_labels: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    from retrieval.encoder import SentenceEncoder
    from training.train import default_base_model

    encoder = SentenceEncoder.from_pretrained(default_base_model())
    vectors = encoder.encode([text for text, _ in texts_and_labels])
    labels = np.array([label for _, label in texts_and_labels])
    centroids = {}
    for label in sorted(set(labels)):
        centroid = vectors[labels == label].mean(axis=0)
        centroids[label] = centroid / np.linalg.norm(centroid)
    return centroids


def nearest_known_intents(examples, held_out: set[str]) -> dict[str, tuple[str, float]]:
    """For each held-out intent, the known intent whose train.csv rows' centroid is nearest to
    its own in the packaged encoder's space (before any fine-tuning), and their cosine: how
    close a twin the model knows."""
    centroids = _centroids(tuple((e.text, e.label) for e in examples))
    known = [label for label in centroids if label not in held_out]
    nearest = {}
    for label in sorted(held_out):
        cosines = {k: float(centroids[label] @ centroids[k]) for k in known}
        twin = max(cosines, key=cosines.get)
        nearest[label] = (twin, round(cosines[twin], 4))
    return nearest


def reviewed_rows(rows, held_out: set[str], k: int, pick: random.Random) -> list:
    """`k` rows of each held-out intent among `rows` (all of them where it has fewer)."""
    by_label = {label: [e for e in rows if e.label == label] for label in sorted(held_out)}
    return [e for group in by_label.values() for e in pick.sample(group, min(k, len(group)))]


def holdout_run(
    examples,
    test,
    workdir: Path,
    seed: int,
    all_intents_pred: np.ndarray | None,
    reviewed: int = 0,
    out_of_scope: list[str] | None = None,
    reviewed_from: str = "all",
    out_of_scope_weight: float | None = None,
    trained: Path | None = None,
    refit_from: Path | None = None,
) -> dict:
    """`out_of_scope`: the reviewed messages (default: `reviewed` of each held-out intent's
    rows, at random); `out_of_scope_weight`: the training setting (default: TrainConfig's);
    `trained`: a model an earlier run trained for the same, measured instead of training;
    `refit_from`: a model trained on the same examples, whose policy is fitted again with the
    reviewed messages instead of training (as the product's runs do when only those changed;
    not with outlier exposure, where they train the weights)."""
    held_out = held_out_intents(examples, seed)
    if out_of_scope is None:
        rows = reviewed_rows(examples, held_out, reviewed, random.Random(seed + 1))
        out_of_scope = [e.text for e in rows]
    config = TrainConfig()
    if out_of_scope_weight is not None:
        config.out_of_scope_weight = out_of_scope_weight
    directory, seconds = trained, None
    if directory is None:
        train, val = in_scope_split(examples, held_out)
        directory = workdir / f"holdout-{reviewed}-{len(out_of_scope)}"
        for again in range(2, 100):  # a night that marked nothing new trains its own model too
            if not directory.exists():
                break
            directory = workdir / f"holdout-{reviewed}-{len(out_of_scope)}-{again}"
        started = time.monotonic()
        if refit_from is not None and not config.out_of_scope_weight:
            refit_to_directory(refit_from, val, directory, out_of_scope=out_of_scope)
        else:
            refit_from = None
            train_to_directory(config, train, val, directory, out_of_scope=out_of_scope)
        seconds = time.monotonic() - started
    classifier = IntentClassifier.from_dir(directory)
    decisions = classifier.decide([e.text for e in test])
    is_oos = np.array([e.label in held_out for e in test])
    gold = np.array([e.label for e in test])
    pred = np.array([d.prediction.intent for d in decisions])
    decided = np.array([d.decision for d in decisions])
    declined = decided == OUT_OF_SCOPE
    in_scope = ~is_oos
    policy = classifier.policy
    asked = ~declined & np.array(
        [
            policy.borderline(
                d.prediction.confidence, d.prediction.similarity, d.prediction.oos_similarity
            )
            for d in decisions
        ]
    )
    accuracy_without = float((pred == gold)[in_scope].mean())
    accuracy_with = float(((pred == gold) & ~declined)[in_scope].mean())
    per_intent = []
    for label, (twin, cosine) in nearest_known_intents(examples, held_out).items():
        mine = gold == label
        taken = Counter(pred[mine & ~declined]).most_common(1)
        per_intent.append(
            {
                "intent": label,
                "test_messages": int(mine.sum()),
                "recall": float(declined[mine].mean()),
                "shares": decision_shares(decided[mine].tolist()),
                # the known intent its messages not declined were most often taken for
                "taken_as": taken[0][0] if taken else None,
                "taken_as_share": taken[0][1] / int(mine.sum()) if taken else 0.0,
                # the known intent nearest to it before any training: the cosine of their
                # train.csv rows' centroids in the packaged encoder's space
                "nearest_known": twin,
                "nearest_known_cosine": cosine,
            }
        )
    return {
        "reviewed_out_of_scope_per_intent": reviewed,
        "reviewed_out_of_scope": len(out_of_scope),
        "reviewed_from": reviewed_from,
        "served_precision": classifier.precision,
        "held_out_intents": sorted(held_out),
        "oos_test_messages": int(is_oos.sum()),
        "oos_recall": float(declined[is_oos].mean()),
        "oos_precision": float(is_oos[declined].mean()) if declined.any() else 0.0,
        "in_scope_accuracy_without_policy": accuracy_without,
        "in_scope_accuracy_with_policy": accuracy_with,
        "in_scope_accuracy_drop_points": round(100 * (accuracy_without - accuracy_with), 2),
        "in_scope_declined": float(declined[in_scope].mean()),
        "in_scope_accuracy_all_intents_model": None
        if all_intents_pred is None
        else float((all_intents_pred == gold)[in_scope].mean()),
        "oos_shares": decision_shares(decided[is_oos].tolist()),
        "per_held_out_intent": per_intent,
        "second_opinion_asked_in_scope": float(asked[in_scope].mean()),
        "second_opinion_asked_oos": float(asked[is_oos].mean()),
        "policy": classifier.thresholds["policy"],
        "out_of_scope_weight": config.out_of_scope_weight,
        "directory": str(directory),
        "refitted_from": None if refit_from is None else str(refit_from),
        # training (or refitting) this model, on this machine; None: measured a kept model
        "seconds": None if seconds is None else round(seconds, 1),
    }


def declined_rows(examples, seed: int, directory: Path, arrived: list | None = None):
    """The held-out intents' train.csv rows (those `arrived`, when given) that the model in
    `directory` declines."""
    held_out = held_out_intents(examples, seed)
    rows = arrived if arrived is not None else [e for e in examples if e.label in held_out]
    decisions = IntentClassifier.from_dir(directory).decide([e.text for e in rows])
    return [e for e, d in zip(rows, decisions, strict=True) if d.decision == OUT_OF_SCOPE]


def reachable_rows(
    examples,
    seed: int,
    directory: Path,
    reviewed: list,
    encoder,
    whole_groups: bool = False,
    arrived: list | None = None,
    queue: bool = False,
) -> tuple:
    """The held-out intents' rows an admin reaches from the review queue and "Candidate new
    intents": those the model in `directory` declines, and those it answers or clarifies that
    are listed as a group's look-alikes; what the admin was shown (counts), and the texts of
    the look-alikes listed. With `whole_groups`,
    instead: the rows the admin marks by handling each group of a held-out topic whole; with
    `queue` as well, every declined row of a held-out intent not yet reviewed (the review
    queue's out-of-scope turns, most of which no group holds).
    The traffic is the in-scope validation split and the held-out intents' rows (those
    `arrived` so far, when given)."""
    from retrieval.groups import LOOK_ALIKES_SHOWN, alike_groups

    held_out = held_out_intents(examples, seed)
    _, val = in_scope_split(examples, held_out)
    unknown = arrived if arrived is not None else [e for e in examples if e.label in held_out]
    traffic = unknown + val
    decisions = IntentClassifier.from_dir(directory).decide([e.text for e in traffic])
    marked = {e.text for e in reviewed}
    # What "Candidate new intents" groups: declined, or reviewed out of scope before.
    unmatched = [
        e
        for e, d in zip(traffic, decisions, strict=True)
        if d.decision == OUT_OF_SCOPE or e.text in marked
    ]
    answered = [
        e
        for e, d in zip(traffic, decisions, strict=True)
        if d.decision != OUT_OF_SCOPE and e.text not in marked
    ]
    vectors = encoder.encode([e.text for e in unmatched + answered])
    groups = alike_groups(vectors[: len(unmatched)], vectors[len(unmatched) :])
    # As the page lists them: the most alike of each group (the next ones once these are
    # reviewed, the next night).
    look_alikes = [answered[i] for g in groups for i in g.look_alikes[:LOOK_ALIKES_SHOWN]]
    declined = [e for e in unmatched if e.label in held_out and e.text not in marked]
    shown = {
        "groups": len(groups),
        "grouped": sum(len(g.members) for g in groups),
        "look_alikes_found": sum(len(g.look_alikes) for g in groups),
        "look_alikes_held_out": sum(e.label in held_out for e in look_alikes),
        "look_alikes_in_scope": sum(e.label not in held_out for e in look_alikes),
        "held_out_answered_or_clarified": sum(e.label in held_out for e in answered),
        "traffic": len(traffic),
        "traffic_held_out": len(unknown),
    }
    listed = {e.text for e in look_alikes}
    if not whole_groups:
        return declined + [e for e in look_alikes if e.label in held_out], shown, listed
    # The admin marks out of scope each group whose messages are mostly of a held-out intent:
    # its held-out messages (unticking the others) and the held-out look-alikes listed.
    marking = []
    for g in groups:
        members = [unmatched[i] for i in g.members]
        if 2 * sum(e.label in held_out for e in members) <= len(members):
            continue
        under = [answered[i] for i in g.look_alikes[:LOOK_ALIKES_SHOWN]]
        marking.append((members, under))
    rows = [e for m, a in marking for e in m + a if e.label in held_out and e.text not in marked]
    if queue:
        taken = {e.text for e in rows}
        from_queue = [e for e in declined if e.text not in taken]
        rows += from_queue
        shown |= {
            "queue_held_out_marked": len(from_queue),
            "queue_in_scope_declined": sum(e.label not in held_out for e in unmatched),
        }
    shown |= {
        "groups_marked": len(marking),
        "in_scope_members_unticked": sum(e.label not in held_out for m, _ in marking for e in m),
        "in_scope_look_alikes_left": sum(e.label not in held_out for _, a in marking for e in a),
    }
    return rows, shown, listed


def nightly_runs(
    examples,
    test,
    workdir: Path,
    seed: int,
    all_intents_pred,
    per_night: int,
    nights: int,
    review_from: str = "declined",
    unknown_share: float | None = None,
    out_of_scope_weight: float | None = None,
    zero_shot_model: Path | None = None,
    train_each_night: bool = False,
    known_traffic: list | None = None,
    said_no: float = 0.5,
    none_fit: float = 0.0,
    none_fit_offered: float = 0.0,
):
    """The loop as a company runs it: the zero-shot model, then each night `per_night` more of
    each held-out intent's rows reviewed out of scope, drawn from those the last model
    declined (the candidate groups an admin marks), or with `review_from="groups"` also from
    the groups' look-alikes; with "whole-groups", every group of a held-out topic is marked
    whole each night, and its look-alikes listed (no `per_night` limit); and a model for all
    reviewed so far: the zero-shot model with its policy fitted again, as the product's
    nightly run does when only out-of-scope reviews are new (trained again instead with
    `train_each_night`, or where the reviewed messages train the weights).

    With `unknown_share`, the held-out intents' rows arrive night by night instead of all at
    once: each night a fresh draw of them, as many as make that share of a night's traffic
    beside the in-scope validation split (the known topics' traffic, the same every night);
    the page holds every night's arrivals so far, as the product keeps unreviewed messages.

    With `review_from="self"` nobody reviews: each night the bot marks out of scope every
    message it declined in that night's traffic (`known_traffic` split into `nights` equal
    parts, none seen twice, beside that night's arrivals), as the product does with
    CHATBOT_LEARN_FROM_DECLINES, in-scope ones included; with "feedback", also the held-out
    intents' messages it answered that the customer said did not help (each wrong answer with
    probability `said_no`), which an admin reviewing those marks out of scope. With `none_fit`,
    the customers of that share of the clarifying questions whose choices miss their intent
    choose "None of these", and the bot learns their messages as it learns its declines; so do
    `none_fit_offered` of the customers offered their own intent (by mistake)."""
    held_out = held_out_intents(examples, seed)
    pick = random.Random(seed + 1)
    reviewed: list = []
    arrivals, arrived = None, None
    if unknown_share is not None:
        _, val = in_scope_split(examples, held_out)
        known_per_night = len(val) if known_traffic is None else len(known_traffic) // nights
        per_night_arrivals = round(unknown_share / (1 - unknown_share) * known_per_night)
        arrivals = [e for e in examples if e.label in held_out]
        random.Random(seed + 2).shuffle(arrivals)
        if per_night_arrivals * nights > len(arrivals):
            raise SystemExit(
                f"{nights} nights of {per_night_arrivals} arrivals need more than the "
                f"{len(arrivals)} held-out rows"
            )
    known = {e.text for e in examples if e.label not in held_out}
    encoder = None
    if review_from in ("groups", *WHOLE_GROUPS):
        from retrieval.encoder import SentenceEncoder
        from training.train import default_base_model

        encoder = SentenceEncoder.from_pretrained(default_base_model())
    run = holdout_run(examples, test, workdir, seed, all_intents_pred, trained=zero_shot_model)
    zero_shot = None if train_each_night else Path(run["directory"])
    yield run
    for night in range(1, nights + 1):
        seen = {e.text for e in reviewed}
        if arrivals is not None:
            arrived = arrivals[: night * per_night_arrivals]
        shown, look_alike_texts = {}, set()
        if review_from in SELF_MARKING:
            tonight_known = known_traffic[(night - 1) * known_per_night : night * known_per_night]
            traffic = tonight_known + arrived[(night - 1) * per_night_arrivals :]
            decisions = IntentClassifier.from_dir(Path(run["directory"])).decide(
                [e.text for e in traffic]
            )
            # as the product: never a text that is a known intent's example word for word
            pool = [
                e
                for e, d in zip(traffic, decisions, strict=True)
                if d.decision == OUT_OF_SCOPE and e.text not in seen and e.text not in known
            ]
            if none_fit:
                # Each customer's draw depends on their message alone (as with --said-no).
                taken = seen | {e.text for e in pool} | known
                none = [
                    e
                    for e, d in zip(traffic, decisions, strict=True)
                    if d.decision == CLARIFY
                    and e.text not in taken
                    and random.Random(f"{seed}:none:{e.text}").random()
                    < (
                        none_fit
                        if e.label not in {intent for intent, _ in d.prediction.top_k[:3]}
                        else none_fit_offered
                    )
                ]
                pool += none
            shown = {
                "traffic": len(traffic),
                "traffic_held_out": sum(e.label in held_out for e in traffic),
                "marked_held_out": sum(e.label in held_out for e in pool),
                "marked_in_scope": sum(e.label not in held_out for e in pool),
            }
            if none_fit:
                shown |= {
                    "none_fit_held_out": sum(e.label in held_out for e in none),
                    "none_fit_in_scope": sum(e.label not in held_out for e in none),
                }
            if review_from == "feedback":
                # Each customer's draw depends on their message alone, never on what the
                # model decided for the messages before it.
                no = [
                    (e, d.prediction.intent != e.label)
                    for e, d in zip(traffic, decisions, strict=True)
                    if d.decision == ANSWER
                    and random.Random(f"{seed}:{e.text}").random()
                    < (said_no if d.prediction.intent != e.label else SAID_NO_TO_RIGHT)
                ]
                taken = seen | {e.text for e in pool} | known
                reviewed_no = [e for e, _ in no if e.label in held_out and e.text not in taken]
                pool += reviewed_no
                shown |= {
                    "said_no": len(no),
                    "said_no_held_out": sum(e.label in held_out for e, _ in no),
                    "said_no_in_scope_wrong": sum(e.label not in held_out and w for e, w in no),
                    "said_no_in_scope_right": sum(not w for _, w in no),
                    "admin_marked_out_of_scope": len(reviewed_no),
                }
        elif encoder is None:
            pool = [
                e
                for e in declined_rows(examples, seed, Path(run["directory"]), arrived)
                if e.text not in seen
            ]
        else:
            pool, shown, look_alike_texts = reachable_rows(
                examples,
                seed,
                Path(run["directory"]),
                reviewed,
                encoder,
                whole_groups=review_from in WHOLE_GROUPS,
                arrived=arrived,
                queue=review_from == "queue-and-groups",
            )
        print(
            f"night {night}: {len(pool)} held-out rows not yet reviewed within reach "
            f"({review_from}) {json.dumps(shown)}",
            flush=True,
        )
        if review_from in (*WHOLE_GROUPS, *SELF_MARKING):
            tonight = pool
        else:
            tonight = reviewed_rows(pool, held_out, per_night, pick)
        if look_alike_texts:
            shown["look_alikes_reviewed"] = sum(e.text in look_alike_texts for e in tonight)
        reviewed += tonight
        run = holdout_run(
            examples,
            test,
            workdir,
            seed,
            all_intents_pred,
            0 if review_from in (*WHOLE_GROUPS, *SELF_MARKING) else per_night * night,
            [e.text for e in reviewed],
            reviewed_from=f"{review_from}, {night} night(s)",
            out_of_scope_weight=out_of_scope_weight,
            refit_from=zero_shot,
        )
        run["shown_to_the_admin"] = shown
        if review_from in SELF_MARKING:
            run["none_fit"] = none_fit
            run["none_fit_offered"] = none_fit_offered
            run["said_no"] = said_no if review_from == "feedback" else None
        if arrived is not None:
            run["held_out_rows_arrived"] = len(arrived)
            run["unknown_share_per_night"] = unknown_share
        yield run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=7, help="which 10 intents are held out")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--reviewed-oos",
        default="0",
        help="comma-separated: messages of each held-out intent reviewed as out of scope",
    )
    parser.add_argument(
        "--nights",
        type=int,
        default=0,
        help="instead of --reviewed-oos: this many nights of the loop, each reviewing "
        "--per-night more of each held-out intent among those the last model declined",
    )
    parser.add_argument("--per-night", type=int, default=3)
    parser.add_argument(
        "--review-from",
        choices=("declined", "groups", "whole-groups", "queue-and-groups", *SELF_MARKING),
        default="declined",
        help="with --nights: what an admin reaches, the declined rows, or also the look-alikes "
        "that Candidate new intents lists under each group; whole-groups: the admin marks each "
        "group of a held-out topic whole, with its listed look-alikes (no --per-night limit); "
        "queue-and-groups: that, and every declined held-out row of the review queue; self: "
        "no admin, the bot marks all it declined (needs --unknown-share; the known topics' "
        "traffic is half of test.csv's in-scope messages, judged on the other half); "
        "feedback: that, and an admin marks the held-out messages whose answers the "
        "customers said did not help",
    )
    parser.add_argument(
        "--none-fit",
        type=float,
        default=0.0,
        help="with --review-from self or feedback: how often a customer chooses 'None of "
        "these' under a clarifying question whose choices miss their intent (default 0)",
    )
    parser.add_argument(
        "--none-fit-offered",
        type=float,
        default=0.0,
        help="with --none-fit: how often a customer offered their own intent still chooses "
        "'None of these' (a mistake the bot then learns from; default 0)",
    )
    parser.add_argument(
        "--said-no",
        type=float,
        default=0.5,
        help="with --review-from feedback: how often a customer says a wrong answer did not "
        f"help (a right one: {SAID_NO_TO_RIGHT})",
    )
    parser.add_argument(
        "--unknown-share",
        type=float,
        help="with --nights: the held-out intents' rows arrive night by night, a fresh draw "
        "each night making this share of its traffic beside the in-scope validation split "
        "(default: all of them at once)",
    )
    parser.add_argument(
        "--out-of-scope-weight",
        type=float,
        help="train with the reviewed out-of-scope messages at this outlier-exposure weight "
        "(TrainConfig.out_of_scope_weight; default: its default)",
    )
    parser.add_argument(
        "--zero-shot-model",
        type=Path,
        help="with --nights: night 0's model, kept by an earlier run of the same --seed "
        "(its holdout-0-0), measured instead of trained again",
    )
    parser.add_argument(
        "--train-each-night",
        action="store_true",
        help="with --nights: train each night's model again, instead of fitting the zero-shot "
        "model's policy again with the reviewed messages (what the product's runs do when "
        "nothing else changed; the same examples train the same weights)",
    )
    parser.add_argument("--skip-coverage", action="store_true")
    parser.add_argument(
        "--held-out-far",
        type=float,
        help="hold out only intents whose nearest known intent (train.csv centroids in the "
        "packaged encoder's space) lies below this cosine: new topics rather than relatives",
    )
    parser.add_argument(
        "--keep-models",
        type=Path,
        help="train into this (new or empty) directory and keep the models, for "
        "benchmarks/policy_refit_banking77.py (default: a temporary directory)",
    )
    args = parser.parse_args()
    global HELD_OUT_FAR
    HELD_OUT_FAR = args.held_out_far
    examples = load_csv(args.data / "train.csv", label_col="category")
    test = load_csv(args.data / "test.csv", label_col="category")
    config = TrainConfig()
    train, val = stratified_split(examples, val_fraction=config.val_fraction, seed=config.seed)
    results = {}
    known_traffic = None
    judged = np.ones(len(test), bool)
    if args.review_from in SELF_MARKING:
        if not (args.nights and args.unknown_share):
            parser.error(f"--review-from {args.review_from} needs --nights and --unknown-share")
        # The known topics' traffic must be messages the policy is neither fitted nor judged
        # on: half of each known intent's test messages; the other half, and every held-out
        # intent's test message, are judged.
        held_out = held_out_intents(examples, args.seed)
        pick = random.Random(args.seed + 3)
        for label in sorted({e.label for e in test} - held_out):
            rows = [i for i, e in enumerate(test) if e.label == label]
            judged[pick.sample(rows, len(rows) // 2)] = False
        known_traffic = [e for e, j in zip(test, judged, strict=True) if not j]
        random.Random(args.seed + 4).shuffle(known_traffic)
        test = [e for e, j in zip(test, judged, strict=True) if j]
    if args.keep_models:
        args.keep_models.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.nullcontext(str(args.keep_models))
        if args.keep_models
        else tempfile.TemporaryDirectory()
    ) as workdir:
        all_intents_pred = None
        if not args.skip_coverage:
            results["coverage"], all_intents_pred = coverage_run(train, val, test, Path(workdir))
            print(json.dumps(results["coverage"]), flush=True)
        results["holdout"] = []
        runs = (
            nightly_runs(
                examples,
                test,
                Path(workdir),
                args.seed,
                all_intents_pred,
                args.per_night,
                args.nights,
                args.review_from,
                args.unknown_share,
                args.out_of_scope_weight,
                args.zero_shot_model,
                args.train_each_night,
                known_traffic,
                args.said_no,
                args.none_fit,
                args.none_fit_offered,
            )
            if args.nights
            else (
                holdout_run(
                    examples,
                    test,
                    Path(workdir),
                    args.seed,
                    all_intents_pred,
                    int(k),
                    out_of_scope_weight=args.out_of_scope_weight,
                )
                for k in args.reviewed_oos.split(",")
            )
        )
        for run in runs:
            results["holdout"].append(run)
            print(json.dumps(run), flush=True)
    print()
    print("| measure | value |")
    print("|---|---|")
    if not args.skip_coverage:
        print_coverage(results["coverage"])
    print_holdout(results["holdout"])
    print_per_intent(results["holdout"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_coverage(c: dict) -> None:
    print(f"| test accuracy (all answered) | {c['test_accuracy']:.2%} |")
    print(f"| coverage at the 90%-validation threshold | {c['test_coverage']:.2%} |")
    print(f"| answered accuracy there | {c['test_answered_accuracy']:.2%} |")
    shares = c["policy_test_shares"]
    print(
        f"| fitted policy: answered / clarified / declined | {shares['answer']:.1%} / "
        f"{shares['clarify']:.1%} / {shares['out_of_scope']:.1%} "
        f"(answered accuracy {c['policy_test_answered_accuracy']:.2%}) |"
    )


def print_holdout(runs: list[dict]) -> None:
    for h in runs:
        k = h["reviewed_out_of_scope_per_intent"]
        loop = h["reviewed_from"]
        reach = {
            "declined": "those declined",
            "groups": "those declined or look-alikes",
            "whole-groups": "whole groups and their look-alikes",
            "queue-and-groups": "whole groups, their look-alikes and the queue's declined rows",
        }
        n = h["reviewed_out_of_scope"]
        if loop.startswith("self, "):
            when = f"nobody reviewing; the bot's own declines of {loop[6:]}, {n} in all"
        elif loop.startswith("feedback, "):
            when = (
                f"the bot's own declines and the answers customers said did not help, "
                f"{loop[10:]}, {n} in all"
            )
        else:
            source = (
                f" among {reach[loop.split(', ')[0]]}, {loop.split(', ')[1]}"
                if loop != "all"
                else ""
            )
            each = f"{k} of each " if k else ""
            when = f"{each}reviewed{source}, {n} in all" if n else "none reviewed"
        if h.get("none_fit"):
            when += f"; 'None of these' from {h['none_fit']:.0%} of customers not offered theirs"
            if h.get("none_fit_offered"):
                when += f" and {h['none_fit_offered']:.0%} of those offered it"
        print(f"| out-of-scope recall, 10 held-out intents ({when}) | {h['oos_recall']:.2%} |")
        print(f"| out-of-scope precision ({when}) | {h['oos_precision']:.2%} |")
        print(
            f"| in-scope accuracy without / with the policy ({when}) | "
            f"{h['in_scope_accuracy_without_policy']:.2%} / "
            f"{h['in_scope_accuracy_with_policy']:.2%} "
            f"(-{h['in_scope_accuracy_drop_points']:.2f} points) |"
        )
        if h["in_scope_accuracy_all_intents_model"] is not None:
            print(
                f"| in-scope accuracy of the model that knows all 77 ({when}) | "
                f"{h['in_scope_accuracy_all_intents_model']:.2%} |"
            )
        oos = h["oos_shares"]
        print(
            f"| held-out intents' messages answered / clarified / declined ({when}) | "
            f"{oos['answer']:.1%} / {oos['clarify']:.1%} / {oos['out_of_scope']:.1%} |"
        )
        print(
            f"| borderline, not declined: in-scope / held-out intents' messages ({when}) | "
            f"{h['second_opinion_asked_in_scope']:.1%} / {h['second_opinion_asked_oos']:.1%} |"
        )
        if h.get("seconds") is not None:
            how = "its policy refitted" if h.get("refitted_from") else "trained"
            print(f"| model {how} in ({when}) | {h['seconds']:.0f} s |")


def print_per_intent(runs: list[dict]) -> None:
    """Each held-out intent's recall in the first run and the last (zero-shot and the last
    night, in a loop), beside the known intent nearest to it."""
    first, last = runs[0], runs[-1]
    if "per_held_out_intent" not in first:
        return
    after = {p["intent"]: p for p in last["per_held_out_intent"]}
    print()
    print(
        "| held-out intent | nearest known intent (cosine before training) | recall, first run | "
        "taken for, first run | recall, last run |"
    )
    print("|---|---|---|---|---|")
    for p in sorted(first["per_held_out_intent"], key=lambda p: -p["nearest_known_cosine"]):
        taken = f"{p['taken_as']} ({p['taken_as_share']:.0%})" if p["taken_as"] else ""
        print(
            f"| {p['intent']} | {p['nearest_known']} ({p['nearest_known_cosine']:.3f}) | "
            f"{p['recall']:.0%} | {taken} | {after[p['intent']]['recall']:.0%} |"
        )


if __name__ == "__main__":
    main()
