from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from chatbot.knowledge import KnowledgeBaseError, answer_index_build
from chatbot.runtime import get_runtime
from retrieval.encoder import BaseModelError
from training.config import TrainConfig


class Command(BaseCommand):
    help = (
        "Embed the knowledge base into the answer index and, when no intent model is live yet, "
        "fine-tune one on the knowledge base's examples and make it live."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="rebuild the index even if unchanged"
        )
        parser.add_argument("--no-train", action="store_true", help="only build the answer index")
        parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)

    def handle(self, *args, force: bool, no_train: bool, epochs: int, **options) -> None:
        try:
            version = answer_index_build(force=force)
        except (KnowledgeBaseError, BaseModelError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(self.style.SUCCESS(f"Answer index {version} is live."))
        live = get_runtime().models.live()
        if live or no_train:
            self.stdout.write(f"Intent model: {live or 'none (nearest-example answers)'}")
            return
        self.stdout.write("Fine-tuning the intent model on the knowledge base (first run only)...")
        call_command("train_model", epochs=epochs, promote=True, stdout=self.stdout)
