"""Django admin: conversations with every turn and why the bot said it, and the knowledge base."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, QuerySet, When
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path

from chatbot import knowledge, learning, services, tasks
from chatbot.models import (
    AnswerTemplate,
    Conversation,
    Intent,
    IntentExample,
    Message,
    ModelVersion,
)

BOT_DECISION_FIELDS = (
    "decision",
    "intent",
    "confidence",
    "top_k",
    "template",
    "template_similarity",
    "nearest_similarity",
    "suggestions",
    "model_version",
    "index_version",
    "latency_ms",
    "timings",
)


class DistinctSearchMixin:
    """Search across a related table joins it in; distinct() keeps one row per object."""

    def get_search_results(self, request, queryset, search_term):
        results, _ = super().get_search_results(request, queryset, search_term)
        return results.distinct(), False


class RebuildsAnswerIndex:
    """Saving or deleting knowledge-base rows re-embeds the answer index, in the worker."""

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        knowledge.answer_index_rebuild_schedule()

    def save_related(self, request, form, formsets, change) -> None:
        super().save_related(request, form, formsets, change)
        knowledge.answer_index_rebuild_schedule()

    def delete_model(self, request, obj) -> None:
        super().delete_model(request, obj)
        knowledge.answer_index_rebuild_schedule()

    def delete_queryset(self, request, queryset) -> None:
        super().delete_queryset(request, queryset)
        knowledge.answer_index_rebuild_schedule()


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = ("created_at", "role", "text", "decision", "intent", "confidence", "latency_ms")
    readonly_fields = fields
    ordering = ("created_at", "id")
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(DistinctSearchMixin, admin.ModelAdmin):
    list_display = (
        "short_id",
        "status",
        "started_at",
        "last_activity_at",
        "message_count",
        "rating",
    )
    list_filter = ("status", "started_at", "last_activity_at", "rating")
    date_hierarchy = "started_at"
    search_fields = ("messages__text", "public_id", "session_key")
    readonly_fields = ("public_id", "started_at", "last_activity_at", "session_key", "user_agent")
    inlines = [MessageInline]

    actions = ["hand_back_to_bot", "close_conversations"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(_messages=Count("messages"))

    def get_ordering(self, request: HttpRequest) -> list:
        """Conversations waiting for a person first, then the most recently active."""
        waiting = Case(When(status=Conversation.Status.NEEDS_HUMAN, then=0), default=1)
        return [waiting.asc(), "-last_activity_at"]

    def get_urls(self):
        own = [
            path(
                "<path:object_id>/reply/",
                self.admin_site.admin_view(self.reply_view),
                name="chatbot_conversation_reply",
            ),
            path(
                "<path:object_id>/hand-back/",
                self.admin_site.admin_view(self.hand_back_view),
                name="chatbot_conversation_hand_back",
            ),
        ]
        return own + super().get_urls()

    def _posted_conversation(self, request: HttpRequest, object_id: str) -> Conversation:
        conversation = get_object_or_404(Conversation, pk=object_id)
        if request.method != "POST" or not self.has_change_permission(request, conversation):
            raise PermissionDenied
        return conversation

    def reply_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        conversation = self._posted_conversation(request, object_id)
        try:
            services.staff_reply_send(
                conversation=conversation, text=request.POST.get("staff_reply", "")
            )
        except ValueError as error:
            self.message_user(request, str(error), messages.ERROR)
        else:
            self.message_user(request, "Reply sent to the customer.", messages.SUCCESS)
        return redirect("admin:chatbot_conversation_change", conversation.pk)

    def hand_back_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        conversation = self._posted_conversation(request, object_id)
        services.conversation_hand_back(conversation=conversation)
        self.message_user(request, "The bot answers this conversation again.", messages.SUCCESS)
        return redirect("admin:chatbot_conversation_change", conversation.pk)

    @admin.action(description="Hand back to the bot")
    def hand_back_to_bot(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        for conversation in queryset.filter(status=Conversation.Status.NEEDS_HUMAN):
            services.conversation_hand_back(conversation=conversation)

    @admin.action(description="Close the conversations")
    def close_conversations(self, request: HttpRequest, queryset: QuerySet[Conversation]):
        queryset.update(status=Conversation.Status.CLOSED)

    @admin.display(description="Conversation", ordering="public_id")
    def short_id(self, obj: Conversation) -> str:
        return str(obj.public_id)[:8]

    @admin.display(description="Messages", ordering="_messages")
    def message_count(self, obj: Conversation) -> int:
        return obj._messages


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "role",
        "short_text",
        "decision",
        "intent",
        "confidence",
        "latency_ms",
        "conversation",
    )
    list_filter = ("role", "decision", "intent", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("text",)
    list_select_related = ("intent", "conversation")
    raw_id_fields = ("conversation", "in_reply_to", "template")
    readonly_fields = ("created_at", "client_message_id", *BOT_DECISION_FIELDS)
    fieldsets = (
        (None, {"fields": ("conversation", "role", "text", "created_at", "client_message_id")}),
        ("Why the bot said this", {"fields": ("in_reply_to", *BOT_DECISION_FIELDS)}),
    )

    @admin.display(description="Text")
    def short_text(self, obj: Message) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"


class IntentExampleInline(admin.TabularInline):
    model = IntentExample
    extra = 1
    fields = ("text", "source")


class AnswerTemplateInline(admin.StackedInline):
    model = AnswerTemplate
    extra = 0
    fields = ("text", "suggestions", "active")


@admin.action(description="Rebuild the answer index now")
def rebuild_answer_index(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    tasks.answer_index_rebuild.delay()
    modeladmin.message_user(
        request, "The answer index is being rebuilt by the worker.", messages.SUCCESS
    )


@admin.register(Intent)
class IntentAdmin(RebuildsAnswerIndex, DistinctSearchMixin, admin.ModelAdmin):
    list_display = ("name", "active", "example_count", "template_count", "description")
    list_filter = ("active",)
    search_fields = ("name", "description", "examples__text")
    inlines = [AnswerTemplateInline, IntentExampleInline]
    actions = [rebuild_answer_index]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Intent]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _examples=Count("examples", distinct=True),
                _templates=Count("templates", distinct=True),
            )
        )

    @admin.display(description="Examples", ordering="_examples")
    def example_count(self, obj: Intent) -> int:
        return obj._examples

    @admin.display(description="Templates", ordering="_templates")
    def template_count(self, obj: Intent) -> int:
        return obj._templates


@admin.register(IntentExample)
class IntentExampleAdmin(RebuildsAnswerIndex, admin.ModelAdmin):
    list_display = ("text", "intent", "source", "created_at")
    list_filter = ("source", "intent")
    search_fields = ("text",)
    list_select_related = ("intent",)


@admin.register(AnswerTemplate)
class AnswerTemplateAdmin(RebuildsAnswerIndex, admin.ModelAdmin):
    list_display = ("short_text", "intent", "active", "updated_at")
    list_filter = ("active", "intent")
    search_fields = ("text",)
    list_select_related = ("intent",)
    actions = [rebuild_answer_index]

    @admin.display(description="Text")
    def short_text(self, obj: AnswerTemplate) -> str:
        return str(obj)


@admin.action(description="Make the selected version live")
def make_live(modeladmin, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one version.", messages.ERROR)
        return
    version = queryset.get()
    learning.model_promote(model_version=version)
    modeladmin.message_user(request, f"{version} is live.", messages.SUCCESS)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "kind",
        "validation_accuracy",
        "validation_macro_f1",
        "n_examples",
        "created_at",
        "is_live",
    )
    list_filter = ("kind", "is_live")
    readonly_fields = ("created_at", "directory", "base_model", "kind", "metrics", "is_live")
    actions = [make_live]

    @admin.display(description="Val. accuracy")
    def validation_accuracy(self, obj: ModelVersion) -> str:
        return _percent(obj.metrics.get("validation", {}).get("accuracy"))

    @admin.display(description="Val. macro-F1")
    def validation_macro_f1(self, obj: ModelVersion) -> str:
        return _percent(obj.metrics.get("validation", {}).get("macro_f1"))

    @admin.display(description="Examples")
    def n_examples(self, obj: ModelVersion) -> int | None:
        return obj.metrics.get("n_train")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
