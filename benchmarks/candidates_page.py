"""What "Candidate new intents" costs an admin: grouping the declined messages and finding the
answered look-alikes, on a first visit (every text encoded) and on the next ones (the serving
process remembers the vectors, `Runtime.embed`; only new messages are encoded); then after a
restart, once the server has encoded them ahead (`Runtime.embed_ahead`), and what that pass
costs a customer's message meanwhile.

    .venv/bin/python benchmarks/candidates_page.py [--declined 2000] [--answered 1000]
        [--new 50] [--chunks 4] [--data ../shared/data/banking77]

Stores BANKING77 train.csv rows as customer messages in a throwaway SQLite database (the page's
limits: 2,000 declined, 1,000 answered), then times `selectors.candidate_intents()`: the first
visit, a second, one after --new more declined messages arrive, and the first after a restart.
Prints seconds per visit, and milliseconds per message during the pass ahead and alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--declined", type=int, default=2000)
    parser.add_argument("--answered", type=int, default=1000)
    parser.add_argument("--new", type=int, default=50)
    parser.add_argument(
        "--chunks",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[4],
        help="texts encoded ahead per turn on the batch thread, one restart each (1,2,4)",
    )
    args = parser.parse_args()
    with open(args.data / "train.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    random.Random(0).shuffle(texts)
    declined = texts[: args.declined]
    answered = texts[args.declined : args.declined + args.answered]
    new = texts[args.declined + args.answered :][: args.new]

    workdir = tempfile.mkdtemp(prefix="candidates-page-")
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir}/db.sqlite3"
    os.environ["CHATBOT_DATA_DIR"] = f"{workdir}/data"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from chatbot import selectors
    from chatbot.models import Conversation, Intent, Message
    from chatbot.runtime import get_runtime

    call_command("migrate", verbosity=0)
    intent = Intent.objects.create(name="card_arrival")
    conversation = Conversation.objects.create()

    def store(rows: list[str], decision: str) -> None:
        questions = Message.objects.bulk_create(
            Message(conversation=conversation, role="customer", text=t) for t in rows
        )
        Message.objects.bulk_create(
            Message(
                conversation=conversation,
                role="bot",
                text="...",
                in_reply_to=q,
                decision=decision,
                intent=intent if decision == "answer" else None,
            )
            for q in questions
        )

    store(declined, "out_of_scope")
    store(answered, "answer")
    get_runtime().encoder()  # loaded once per process, before any visit

    def visit(label: str) -> None:
        started = time.perf_counter()
        groups = selectors.candidate_intents()
        took = time.perf_counter() - started
        shown = sum(len(g.look_alikes) for g in groups)
        print(f"{label}: {took:.2f} s ({len(groups)} groups, {shown} look-alikes listed)")

    visit(f"first visit ({args.declined} declined + {args.answered} answered, all encoded)")
    visit("second visit (nothing new)")
    store(new, "out_of_scope")
    visit(f"after {len(new)} new declined messages")

    # A restart: a new process's runtime, which encodes the page's texts ahead as a server does
    # when it starts (CHATBOT_EMBED_REVIEW_AHEAD), while a message arrives every 0.2 s; once per
    # chunk size.
    for chunk in args.chunks:
        get_runtime.cache_clear()
        runtime = get_runtime()
        runtime.encoder()

        def one_message(runtime=runtime) -> float:
            asked = time.perf_counter()
            runtime.batcher.run_on_worker(runtime.analyse_batch, ["where is my card"]).result()
            return (time.perf_counter() - asked) * 1000

        started = time.perf_counter()
        ahead = selectors.embed_candidates_ahead(chunk=chunk)
        during = []
        while ahead.is_alive():
            during.append(one_message())
            time.sleep(0.2)
        took = time.perf_counter() - started
        alone = [one_message() for _ in range(20)]
        print(
            f"after a restart, {chunk} texts a chunk: encoded ahead in {took:.2f} s; a message "
            f"meanwhile took {statistics.median(during or [0]):.1f} ms median, "
            f"{max(during or [0]):.1f} ms at most ({len(during)} messages), alone "
            f"{statistics.median(alone):.1f} ms median"
        )
    visit("first visit after a restart, once encoded ahead")


if __name__ == "__main__":
    main()
