"""The learning loop on BANKING77: a model on half the data, the other half reviewed, retrained.

    .venv/bin/python benchmarks/learning_loop_banking77.py [--epochs N] [--json results.json]

Runs the product's own code on a scratch SQLite database and data directory:
1. half of train.csv (stratified) becomes the curated examples; a training run makes the first
   live model;
2. the other half arrives as customer messages, each stored with the live model's answer as the
   chat stores it; a support admin's review confirms the right predictions and relabels the
   wrong ones (`review_apply`, what the admin actions call);
3. the nightly training run retrains, scores candidate and live model on the same validation
   set and promotes or keeps the candidate;
4. customers ask about what a bank's bot does not handle (made-up questions, OUTSIDE), the admin
   marks them out of scope, and the next nightly run, with nothing else new, refits the live
   model's policy instead of training.
It prints test.csv accuracy and macro-F1 before and after, each run's wall time, and how many of
OUTSIDE_NEW (alike questions never reviewed) the live model declines before and after step 4.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
# Outside what a bank's bot is for: reviewed out of scope in step 4, and alike ones never reviewed.
OUTSIDE = [
    "are you hiring at the moment",
    "can i apply for a job at your bank",
    "do you have any vacancies in customer service",
    "how do i send you my cv",
    "what will the weather be like tomorrow",
    "is it going to rain this weekend",
    "can you recommend a good restaurant nearby",
    "where can i book a table for dinner tonight",
    "who won the football match last night",
    "what time does the game start on sunday",
    "can you help me with my maths homework",
    "what is the capital of australia",
]
OUTSIDE_NEW = [
    "any job openings at the bank?",
    "i am looking for work, do you need staff",
    "will it be sunny on monday",
    "how cold will it be tonight",
    "any good pizza places around here",
    "what was the score in the match yesterday",
    "what is the capital of canada",
    "can you solve this equation for me",
]


def setup_django(scratch: Path, epochs: int) -> None:
    os.environ.update(
        DATABASE_URL=f"sqlite:///{scratch / 'db.sqlite3'}",
        CHATBOT_DATA_DIR=str(scratch / "data"),
        CHATBOT_VAR_DIR=str(scratch / "var"),
        CHATBOT_RETRAIN_EPOCHS=str(epochs),
        DJANGO_SETTINGS_MODULE="chatbot.settings",
        HF_HUB_OFFLINE="1",
    )
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/learning_loop.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="loop-bench-"))
    setup_django(scratch, args.epochs)

    from chatbot.learning import model_scores, review_apply, training_run_execute
    from chatbot.models import Conversation, Intent, IntentExample, Message, ModelVersion
    from training.data import load_csv, stratified_split
    from training.inference import IntentClassifier

    train = load_csv(DATA / "train.csv", label_col="category")
    test = load_csv(DATA / "test.csv", label_col="category")
    first_half, second_half = stratified_split(train, val_fraction=0.5, seed=args.seed)
    intents = {name: Intent.objects.create(name=name) for name in sorted({e.label for e in train})}
    IntentExample.objects.bulk_create(
        IntentExample(intent=intents[e.label], text=e.text) for e in first_half
    )

    def test_scores() -> dict:
        live = ModelVersion.objects.get(is_live=True)
        scores = model_scores(live.directory, test)
        return {"version": live.pk, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}

    started = time.perf_counter()
    first = training_run_execute(trigger="manual")
    first_seconds = time.perf_counter() - started
    assert first.status == "promoted", (first.error, first.log_tail)
    before = test_scores()
    print(f"half of train.csv ({len(first_half)} examples): test {before}", flush=True)

    # The other half, logged as the chat logs it, then reviewed.
    live = ModelVersion.objects.get(is_live=True)
    predictions = IntentClassifier.from_dir(live.directory).predict([e.text for e in second_half])
    verdicts: dict[tuple[str, str], list[int]] = defaultdict(list)
    order = list(zip(second_half, predictions, strict=True))
    random.Random(args.seed).shuffle(order)
    for example, prediction in order:
        conversation = Conversation.objects.create()
        question = Message.objects.create(
            conversation=conversation, role="customer", text=example.text
        )
        Message.objects.create(
            conversation=conversation,
            role="bot",
            text="(answer)",
            in_reply_to=question,
            decision="answer",
            intent=intents[prediction.intent],
            confidence=prediction.confidence,
        )
        right = prediction.intent == example.label
        verdicts[("confirmed", "") if right else ("relabelled", example.label)].append(question.pk)
    for (verdict, label), ids in verdicts.items():
        review_apply(message_ids=ids, verdict=verdict, intent=intents.get(label))
    wrong = sum(len(ids) for (verdict, _), ids in verdicts.items() if verdict == "relabelled")

    started = time.perf_counter()
    run = training_run_execute(trigger="nightly")
    retrain_seconds = time.perf_counter() - started
    after = test_scores()

    def declined_outside() -> int:
        live = ModelVersion.objects.get(is_live=True)
        decisions = IntentClassifier.from_dir(live.directory).decide(OUTSIDE_NEW)
        return sum(d.decision == "out_of_scope" for d in decisions)

    # Questions the bank does not handle, marked out of scope; nothing else new.
    declined_before = declined_outside()
    conversation = Conversation.objects.create()
    outside = [
        Message.objects.create(conversation=conversation, role="customer", text=text).pk
        for text in OUTSIDE
    ]
    review_apply(message_ids=outside, verdict="out_of_scope")
    started = time.perf_counter()
    refit = training_run_execute(trigger="nightly")
    refit_seconds = time.perf_counter() - started
    declined_after = declined_outside()
    assert refit.metrics.get("refitted_from"), (refit.status, refit.reason, refit.error)
    results = {
        "first_half_examples": len(first_half),
        "reviewed_examples": len(second_half),
        "reviewed_relabelled": wrong,
        "epochs": args.epochs,
        "before": before,
        "after": after,
        "first_training_seconds": round(first_seconds, 1),
        "retrain_seconds": round(retrain_seconds, 1),
        "run": {
            "status": run.status,
            "reason": run.reason,
            "dataset_size": run.dataset_size,
            "new_examples": run.new_examples,
            "validation": run.metrics,
        },
        "out_of_scope_step": {
            "reviewed": len(OUTSIDE),
            "status": refit.status,
            "reason": refit.reason,
            "run_seconds": round(refit_seconds, 1),
            "refit_seconds": refit.metrics["refit_seconds"],
            "validation": refit.metrics,
            "alike_declined_before": declined_before,
            "alike_declined_after": declined_after,
            "alike": len(OUTSIDE_NEW),
            "test_after": test_scores(),
        },
    }
    print()
    print("| model | training examples | test accuracy | test macro-F1 | training wall time |")
    print("|---|---|---|---|---|")
    print(
        f"| before: half of train.csv | {len(first_half)} | {before['accuracy']:.2%} | "
        f"{before['macro_f1']:.2%} | {first_seconds / 60:.1f} min |"
    )
    print(
        f"| after: + {len(second_half)} reviewed ({wrong} relabelled) | {run.dataset_size} | "
        f"{after['accuracy']:.2%} | {after['macro_f1']:.2%} | {retrain_seconds / 60:.1f} min |"
    )
    print(f"\nrun: {run.status}: {run.reason}")
    print(
        f"\n{len(OUTSIDE)} questions marked out of scope, then the nightly run: {refit.status} "
        f"in {refit_seconds:.0f} s (the policy refitted in {refit.metrics['refit_seconds']:.0f} "
        f"s); alike questions declined: {declined_before} of {len(OUTSIDE_NEW)} before, "
        f"{declined_after} after. {refit.reason}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
