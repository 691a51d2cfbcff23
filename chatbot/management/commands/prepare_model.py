from django.core.management.base import BaseCommand, CommandError

from chatbot.knowledge import KnowledgeBaseError, answer_index_build


class Command(BaseCommand):
    help = "Embed the knowledge base with the base model and publish the answer index."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--force", action="store_true", help="Rebuild even if unchanged.")

    def handle(self, *args, force: bool, **options) -> None:
        try:
            version = answer_index_build(force=force)
        except KnowledgeBaseError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(self.style.SUCCESS(f"Answer index {version} is live."))
