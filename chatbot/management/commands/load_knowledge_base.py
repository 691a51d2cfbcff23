from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from chatbot.knowledge import DEMO_KNOWLEDGE_BASE, KnowledgeBaseError, knowledge_base_load
from chatbot.models import Intent


class Command(BaseCommand):
    help = "Load intents, example phrasings and answer templates from a JSON file (default: demo)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", nargs="?", type=Path, default=DEMO_KNOWLEDGE_BASE)
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="Load only into an empty knowledge base (a first start): once support admins "
            "edit it, Django admin is where it lives, and loading the file again would bring "
            "back the wording they changed as a second template.",
        )

    def handle(self, *args, path: Path, if_empty: bool, **options) -> None:
        if if_empty and Intent.objects.exists():
            self.stdout.write("The knowledge base is not empty: nothing loaded.")
            return
        try:
            report = knowledge_base_load(path=path)
        except (OSError, ValueError, KnowledgeBaseError) as error:
            raise CommandError(f"Cannot load {path}: {error}") from error
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.intents} intents; added {report.examples_added} examples and "
                f"{report.templates_added} templates from {path}"
            )
        )
