from django.apps import AppConfig
from django.db.models.signals import post_migrate

NIGHTLY_RETRAINING = "Nightly retraining of the intent model"


def schedule_nightly_retraining(using: str = "default", **kwargs) -> None:
    """The nightly retraining at 03:00, unless it is already scheduled (at whatever time).

    Support admins see it, move it or disable it under Periodic tasks in Django admin.
    """
    from django.conf import settings
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    if PeriodicTask.objects.using(using).filter(name=NIGHTLY_RETRAINING).exists():
        return
    crontab, _ = CrontabSchedule.objects.using(using).get_or_create(
        minute="0",
        hour="3",
        day_of_week="*",
        day_of_month="*",
        month_of_year="*",
        timezone=settings.TIME_ZONE,
    )
    PeriodicTask.objects.using(using).create(
        name=NIGHTLY_RETRAINING,
        task="chatbot.tasks.model_retrain",
        crontab=crontab,
        description="Retrains on reviewed conversations; promotes only if no worse.",
    )


class ChatbotConfig(AppConfig):
    name = "chatbot"
    verbose_name = "Chatbot"

    def ready(self) -> None:
        post_migrate.connect(schedule_nightly_retraining, sender=self)
