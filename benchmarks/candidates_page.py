"""What "Candidate new intents" costs an admin: grouping the declined messages and finding the
answered look-alikes, on a first visit (every text encoded) and on the next ones (the serving
process remembers the vectors, `Runtime.embed`; only new messages are encoded).

    .venv/bin/python benchmarks/candidates_page.py [--declined 2000] [--answered 1000]
        [--new 50] [--data ../shared/data/banking77]

Stores BANKING77 train.csv rows as customer messages in a throwaway SQLite database (the page's
limits: 2,000 declined, 1,000 answered), then times `selectors.candidate_intents()`: the first
visit, a second, and one after --new more declined messages arrive. Prints seconds per visit.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
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


if __name__ == "__main__":
    main()
