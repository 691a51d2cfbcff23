"""What the chatbot stores: conversations and their turns, the knowledge base, model versions."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Conversation(models.Model):
    class Status(models.TextChoices):
        BOT = "bot", "Bot answering"
        NEEDS_HUMAN = "needs_human", "Needs a human"
        CLOSED = "closed", "Closed"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    last_activity_at = models.DateTimeField(auto_now_add=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.BOT)
    session_key = models.CharField(
        max_length=64, blank=True, help_text="Visitor key the widget keeps in the browser."
    )
    user_agent = models.CharField(max_length=512, blank=True)
    rating = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1 to 5")

    class Meta:
        ordering = ["-last_activity_at"]
        indexes = [
            # The few waiting for a person, which every support admin's page lists.
            models.Index(
                fields=["-last_activity_at"],
                condition=Q(status="needs_human"),
                name="conversation_waiting",
            )
        ]

    def __str__(self) -> str:
        return f"Conversation {str(self.public_id)[:8]} ({self.get_status_display()})"


class Intent(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class IntentExample(models.Model):
    class Source(models.TextChoices):
        CURATED = "curated", "Curated"
        REVIEWED = "reviewed", "Reviewed"
        IMPORTED = "imported", "Imported"

    intent = models.ForeignKey(Intent, on_delete=models.CASCADE, related_name="examples")
    text = models.TextField()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.CURATED)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    message = models.OneToOneField(
        "Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="example",
        help_text="The reviewed customer message this example came from.",
    )

    class Meta:
        ordering = ["intent__name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["intent", "text"], name="unique_example_per_intent")
        ]

    def __str__(self) -> str:
        return self.text


class AnswerTemplate(models.Model):
    intent = models.ForeignKey(Intent, on_delete=models.CASCADE, related_name="templates")
    text = models.TextField()
    suggestions = models.JSONField(
        default=list, blank=True, help_text="Quick-reply labels offered with this answer."
    )
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["intent__name", "id"]

    def __str__(self) -> str:
        return self.text[:80]


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        FULL = "full", "Full fine-tune"
        LORA = "lora", "LoRA"

    created_at = models.DateTimeField(auto_now_add=True)
    directory = models.CharField(max_length=500, unique=True)
    base_model = models.CharField(max_length=500)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    metrics = models.JSONField(default=dict, blank=True)
    is_live = models.BooleanField(default=False)
    promoted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was last promoted or made live by hand (a rollback does not change it).",
    )
    replaced = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version that was live when this one was promoted: what a rollback "
        "returns to.",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_live"], condition=Q(is_live=True), name="one_live_model_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name}{' (live)' if self.is_live else ''}"

    @property
    def name(self) -> str:
        return f"v{self.pk} {self.kind}"


class Message(models.Model):
    class Role(models.TextChoices):
        CUSTOMER = "customer", "Customer"
        BOT = "bot", "Bot"
        AGENT = "agent", "Support agent"
        SYSTEM = "system", "System"

    class Review(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed"
        RELABELLED = "relabelled", "Relabelled"
        OUT_OF_SCOPE = "out_of_scope", "Out of scope"
        SKIPPED = "skipped", "Skipped"

    class Decision(models.TextChoices):
        ANSWER = "answer", "Answered"
        CLARIFY = "clarify", "Asked to clarify"
        OUT_OF_SCOPE = "out_of_scope", "Out of scope"
        HANDOFF = "handoff", "Handed off"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    client_message_id = models.CharField(max_length=64, blank=True)
    in_reply_to = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reply"
    )

    # Why the bot said what it said (bot turns only).
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True)
    intent = models.ForeignKey(
        Intent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confidence = models.FloatField(null=True, blank=True)
    top_k = models.JSONField(
        default=list,
        blank=True,
        help_text='Alternatives: [{"intent": ..., "score": ..., "label": offered quick reply}]',
    )
    template = models.ForeignKey(
        AnswerTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    template_similarity = models.FloatField(null=True, blank=True)
    nearest_similarity = models.FloatField(
        null=True,
        blank=True,
        help_text="Similarity to the known examples that the out-of-scope check read: mean "
        "cosine of the 5 nearest in the live model's space (base encoder's nearest without one).",
    )
    out_of_scope_similarity = models.FloatField(
        null=True,
        blank=True,
        help_text="Cosine to the nearest customer message reviewed as out of scope, in the live "
        "model's space; the out-of-scope check compares it with the similarity to the known "
        "examples. Empty when the model was trained without any.",
    )
    second_opinion = models.CharField(
        max_length=100,
        blank=True,
        help_text="What the optional OpenAI second opinion said of a borderline message: the "
        "intent it asks about, none (declined as out of scope) or failed (no usable answer in "
        "time; the bot decided alone). Empty when it was not asked.",
    )
    suggestions = models.JSONField(default=list, blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    index_version = models.CharField(max_length=64, blank=True)
    nearest_intent = models.CharField(
        max_length=100, blank=True, help_text="The intent of the nearest known example (retriever)."
    )
    latency_ms = models.FloatField(null=True, blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Per-stage milliseconds.")
    helpful = models.BooleanField(
        null=True,
        blank=True,
        help_text="What the customer said of this answer in the widget (Helpful / Not "
        "helpful); empty when they said nothing. An answer that did not help counts as a "
        "failure toward the hand-off, and puts the message it answered near the top of the "
        "review queue.",
    )

    # Review (customer turns only).
    review_priority = models.FloatField(
        null=True, blank=True, db_index=True, help_text="Higher: more useful to review first."
    )
    review = models.CharField(max_length=16, choices=Review.choices, blank=True, db_index=True)
    reviewed_intent = models.ForeignKey(
        Intent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # A customer message re-sent with the same client id (reconnect, double click) is
            # stored once.
            models.UniqueConstraint(
                fields=["conversation", "client_message_id"],
                condition=Q(role="customer") & ~Q(client_message_id=""),
                name="unique_customer_client_message_id",
            )
        ]
        indexes = [
            # The few answers customers said something of, counted for each model version.
            models.Index(
                fields=["model_version", "helpful"],
                condition=Q(helpful__isnull=False),
                name="message_rated_by_version",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"


class ReviewItem(Message):
    """Customer messages as the review queue shows them (a proxy: same rows)."""

    class Meta:
        proxy = True
        verbose_name = "message to review"
        verbose_name_plural = "review queue"


class TrainingRun(models.Model):
    """One retraining of the intent model: progress, scores, and why it was promoted or not."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PROMOTED = "promoted", "Promoted"
        KEPT = "kept", "Trained, not promoted"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        NIGHTLY = "nightly", "Nightly"
        MANUAL = "manual", "By hand"
        REVIEW = "review", "After out-of-scope marks"

    created_at = models.DateTimeField(auto_now_add=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="Percent.")
    stage = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    dataset_size = models.PositiveIntegerField(null=True, blank=True)
    new_examples = models.PositiveIntegerField(
        null=True, blank=True, help_text="Examples added since the live model was trained."
    )
    validation_size = models.PositiveIntegerField(null=True, blank=True)
    metrics = models.JSONField(
        default=dict, blank=True, help_text="Candidate and live model on the same validation set."
    )
    per_intent = models.JSONField(default=dict, blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    reason = models.TextField(blank=True, help_text="Why it was or was not promoted.")
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # The lock: one run trains at a time, whichever worker picked it up.
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="running"), name="one_running_training_run"
            )
        ]

    def __str__(self) -> str:
        return f"Training run {self.pk} ({self.get_status_display()})"
