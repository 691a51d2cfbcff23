from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from chatbot.knowledge import DEMO_KNOWLEDGE_BASE, KnowledgeBaseError, knowledge_base_load


class Command(BaseCommand):
    help = "Load intents, example phrasings and answer templates from a JSON file (default: demo)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", nargs="?", type=Path, default=DEMO_KNOWLEDGE_BASE)

    def handle(self, *args, path: Path, **options) -> None:
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
