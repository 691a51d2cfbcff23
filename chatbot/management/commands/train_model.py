from django.core.management.base import BaseCommand, CommandError

from chatbot.learning import model_train
from retrieval.encoder import BaseModelError
from training.config import TrainConfig
from training.data import DatasetError


class Command(BaseCommand):
    help = "Fine-tune the intent classifier on the database's examples and register the version."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--lora", action="store_true", help="train LoRA adapters")
        parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
        parser.add_argument(
            "--lr", type=float, help="peak learning rate (of the adapters with --lora)"
        )
        parser.add_argument("--promote", action="store_true", help="make it the live model")

    def handle(self, *args, lora: bool, epochs: int, lr: float | None, promote: bool, **options):
        config = TrainConfig(lora=lora, epochs=epochs)
        if lr is not None:
            setattr(config, "lora_lr" if lora else "lr", lr)
        try:
            version = model_train(config=config, promote=promote)
        except (DatasetError, BaseModelError) as error:
            raise CommandError(str(error)) from error
        validation = version.metrics["validation"]
        self.stdout.write(
            self.style.SUCCESS(
                f"{version}: validation accuracy {validation['accuracy']:.4f}, "
                f"macro-F1 {validation['macro_f1']:.4f}"
            )
        )
