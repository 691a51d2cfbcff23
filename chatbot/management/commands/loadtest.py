import asyncio
import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from chatbot import loadtest
from chatbot.knowledge import DEMO_KNOWLEDGE_BASE
from chatbot.models import Message

# Phrasings that would hand the conversation to a person: the bot goes quiet after them.
SKIPPED_INTENTS = {"talk_to_human"}


def demo_texts() -> list[str]:
    intents = json.loads(DEMO_KNOWLEDGE_BASE.read_text())["intents"]
    return [t for i in intents if i["name"] not in SKIPPED_INTENTS for t in i["examples"]]


def stored_turns(
    results: list[loadtest.CustomerResult], *, settle_s: float = 5.0
) -> tuple[int, int, int] | None:
    """(sent, stored, answered) for the turns the load test sent, or None when none of its
    conversations is in this database (pointed at another deployment). A reply is written
    just after it is sent, so the last ones get `settle_s` to appear."""
    sent = {(r.conversation, cid) for r in results if r.conversation for cid in r.sent}
    if not sent:
        return None
    conversations = {conversation for conversation, _ in sent}
    deadline = time.monotonic() + settle_s
    while True:
        rows = Message.objects.filter(
            role=Message.Role.CUSTOMER,
            conversation__public_id__in=conversations,
            client_message_id__in={cid for _, cid in sent},
        ).values_list("conversation__public_id", "client_message_id", "reply__id")
        found = {(str(conversation), cid): reply for conversation, cid, reply in rows}
        if not found and not Message.objects.filter(conversation__public_id__in=conversations):
            return None
        stored = sum(key in found for key in sent)
        answered = sum(found.get(key) is not None for key in sent)
        if answered == len(sent) or time.monotonic() > deadline:
            return len(sent), stored, answered
        time.sleep(0.1)


class Command(BaseCommand):
    help = "Open N real WebSocket customers against a deployment and measure the chat."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/chat/")
        parser.add_argument("--clients", type=int, default=10)
        parser.add_argument("--messages", type=int, default=10, help="per customer")
        parser.add_argument("--think", type=float, default=0.0, help="seconds between messages")
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds per reply")
        parser.add_argument("--origin", help="Origin header (default: the server's own)")
        parser.add_argument("--texts", type=Path, help="one message per line (default: demo)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", type=Path, help="also write the figures here")
        parser.add_argument(
            "--no-verify", action="store_true", help="skip checking the turns in this database"
        )

    def handle(self, *args, **options) -> None:
        texts = (
            [t for t in options["texts"].read_text().splitlines() if t.strip()]
            if options["texts"]
            else demo_texts()
        )
        if not texts:
            raise CommandError("No messages to send.")
        report, results = asyncio.run(
            loadtest.run(
                options["url"],
                texts,
                clients=options["clients"],
                messages=options["messages"],
                think_s=options["think"],
                timeout_s=options["timeout"],
                origin=options["origin"],
                seed=options["seed"],
            )
        )
        for line in report.lines():
            self.stdout.write(line)
        figures = dict(report.__dict__, error_samples=list(report.error_samples))
        if not options["no_verify"]:
            turns = stored_turns(results)
            if turns is None:
                self.stdout.write("stored turns         not checked (not this database)")
            else:
                sent, stored, answered = turns
                self.stdout.write(
                    f"stored turns         {stored}/{sent} messages, {answered}/{sent} replies"
                )
                figures |= {"turns_sent": sent, "turns_stored": stored, "turns_answered": answered}
        if options["json"]:
            options["json"].write_text(json.dumps(figures, indent=2))
        failed = report.errors or figures.get("turns_stored", 0) < figures.get("turns_sent", 0)
        if failed:
            raise CommandError("The load test saw errors or turns that were not stored.")
