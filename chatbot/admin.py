"""Django admin: conversations with every turn and why the bot said it, and the knowledge base."""

from __future__ import annotations

import csv
import logging
import uuid

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, Exists, OuterRef, QuerySet, Subquery, When
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from chatbot import knowledge, learning, selectors, services, tasks, views
from chatbot.models import (
    AnswerTemplate,
    Conversation,
    Intent,
    IntentExample,
    Message,
    ModelVersion,
    ReviewItem,
    TrainingRun,
)

logger = logging.getLogger(__name__)

BOT_DECISION_FIELDS = (
    "decision",
    "intent",
    "confidence",
    "top_k",
    "template",
    "template_similarity",
    "nearest_similarity",
    "out_of_scope_similarity",
    "second_opinion",
    "suggestions",
    "model_version",
    "index_version",
    "latency_ms",
    "timings",
    "helpful",
)


class DistinctSearchMixin:
    """Search across a related table joins it in; distinct() keeps one row per object."""

    def get_search_results(self, request, queryset, search_term):
        results, _ = super().get_search_results(request, queryset, search_term)
        return results.distinct(), False


class ExtraViews:
    """Admin pages beyond the stock ones, each listed as (route, view method, URL name)."""

    extra_views: tuple[tuple[str, str, str], ...] = ()

    def get_urls(self):
        own = [
            path(route, self.admin_site.admin_view(getattr(self, view)), name=name)
            for route, view, name in self.extra_views
        ]
        return own + super().get_urls()

    def require_post(self, request: HttpRequest, obj=None) -> None:
        """Views that change something answer only a POST from someone allowed to change."""
        if request.method != "POST" or not self.has_change_permission(request, obj):
            raise PermissionDenied


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
    fields = (
        "created_at",
        "role",
        "text",
        "decision",
        "intent",
        "confidence",
        "helpful",
        "latency_ms",
    )
    readonly_fields = fields
    ordering = ("created_at", "id")
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def _bot_messages(**lookups) -> Exists:
    return Exists(
        Message.objects.filter(conversation=OuterRef("pk"), role=Message.Role.BOT, **lookups)
    )


class BotMessagesFilter(admin.SimpleListFilter):
    """Conversations with ("yes") or without ("no") a bot message matching `bot_messages`."""

    bot_messages: dict
    labels: tuple[str, str]

    def lookups(self, request, model_admin):
        return [("yes", self.labels[0]), ("no", self.labels[1])]

    def queryset(self, request, queryset):
        matching = _bot_messages(**self.bot_messages)
        if self.value() == "yes":
            return queryset.filter(matching)
        if self.value() == "no":
            return queryset.exclude(matching)
        return queryset


class HandedOffFilter(BotMessagesFilter):
    title = "handed off"
    parameter_name = "handed_off"
    bot_messages = {"decision": Message.Decision.HANDOFF}
    labels = ("Handed off at some point", "Never handed off")


class NotHelpfulFilter(BotMessagesFilter):
    title = "customer feedback"
    parameter_name = "not_helpful"
    bot_messages = {"helpful": False}
    labels = ("An answer did not help", "No answer said not to help")


class IntentFilter(admin.SimpleListFilter):
    title = "intent"
    parameter_name = "intent"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in Intent.objects.values_list("pk", "name")]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(_bot_messages(intent_id=self.value()))
        return queryset


class ConfidenceFilter(admin.SimpleListFilter):
    title = "lowest bot confidence"
    parameter_name = "confidence"
    RANGES = {
        "lt50": ("below 50%", 0.0, 0.5),
        "50-80": ("50% to 80%", 0.5, 0.8),
        "80-95": ("80% to 95%", 0.8, 0.95),
        "95up": ("95% and above", 0.95, 1.01),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _, _) in self.RANGES.items()]

    def queryset(self, request, queryset):
        if self.value() not in self.RANGES:
            return queryset
        _, low, high = self.RANGES[self.value()]
        lowest = (
            Message.objects.filter(conversation=OuterRef("pk"), role=Message.Role.BOT)
            .exclude(confidence=None)
            .order_by("confidence")
            .values("confidence")[:1]
        )
        return queryset.annotate(_lowest=lowest).filter(_lowest__gte=low, _lowest__lt=high)


class ReviewedFilter(admin.SimpleListFilter):
    title = "reviewed"
    parameter_name = "reviewed"

    def lookups(self, request, model_admin):
        return [("yes", "Every customer message reviewed"), ("no", "Some left to review")]

    def queryset(self, request, queryset):
        unreviewed = Exists(
            Message.objects.filter(
                conversation=OuterRef("pk"), role=Message.Role.CUSTOMER, review=""
            )
        )
        if self.value() == "yes":
            return queryset.exclude(unreviewed)
        if self.value() == "no":
            return queryset.filter(unreviewed)
        return queryset


CSV_COLUMNS = (
    "conversation",
    "status",
    "created_at",
    "role",
    "text",
    "decision",
    "intent",
    "confidence",
    "template_id",
    "model_version_id",
    "latency_ms",
    "helpful",
    "review",
    "reviewed_intent",
)


def _csv_text(text: str) -> str:
    """Text as a spreadsheet shows it, never runs it: a customer who writes
    `=HYPERLINK(...)` must not plant a formula in the support team's spreadsheet (OWASP's
    CSV injection advice: a leading quote)."""
    return "'" + text if text.lstrip()[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@admin.action(description="Export the selected conversations' messages as CSV")
def export_csv(modeladmin, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="conversations.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    rows = (
        Message.objects.filter(conversation__in=queryset)
        .select_related("conversation", "intent", "reviewed_intent")
        .order_by("conversation_id", "created_at", "id")
    )
    for m in rows.iterator():
        writer.writerow(
            [
                m.conversation.public_id,
                m.conversation.status,
                m.created_at.isoformat(),
                m.role,
                _csv_text(m.text),
                m.decision,
                m.intent.name if m.intent else "",
                "" if m.confidence is None else f"{m.confidence:.4f}",
                m.template_id or "",
                m.model_version_id or "",
                "" if m.latency_ms is None else m.latency_ms,
                "" if m.helpful is None else m.helpful,
                m.review,
                m.reviewed_intent.name if m.reviewed_intent else "",
            ]
        )
    return response


@admin.register(Conversation)
class ConversationAdmin(ExtraViews, DistinctSearchMixin, admin.ModelAdmin):
    extra_views = (
        ("<path:object_id>/reply/", "reply_view", "chatbot_conversation_reply"),
        ("<path:object_id>/hand-back/", "hand_back_view", "chatbot_conversation_hand_back"),
    )
    list_display = (
        "short_id",
        "status",
        "started_at",
        "last_activity_at",
        "message_count",
        "rating",
    )
    list_filter = (
        "status",
        HandedOffFilter,
        NotHelpfulFilter,
        ReviewedFilter,
        IntentFilter,
        ConfidenceFilter,
        "started_at",
        "rating",
    )
    date_hierarchy = "started_at"
    search_fields = ("messages__text", "public_id", "session_key")
    # The status changes only through what tells the customer (a hand-off, a staff reply, hand
    # back, close): a form saved from a page opened before a hand-off must not undo it.
    readonly_fields = (
        "public_id",
        "status",
        "started_at",
        "last_activity_at",
        "session_key",
        "user_agent",
        "rating",  # the customer's
    )
    inlines = [MessageInline]

    actions = ["hand_back_to_bot", "close_conversations", export_csv]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a conversation starts when a customer writes

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        # distinct: a search joins the messages too, which would multiply the count
        return super().get_queryset(request).annotate(_messages=Count("messages", distinct=True))

    def get_object(self, request: HttpRequest, object_id: str, from_field=None):
        """By primary key, or by the conversation id the widget and the protocol show (its
        UUID): /admin/chatbot/conversation/<uuid>/change/ opens it."""
        try:
            public_id = uuid.UUID(object_id)
        except ValueError:
            return super().get_object(request, object_id, from_field)
        return self.get_queryset(request).filter(public_id=public_id).first()

    def get_ordering(self, request: HttpRequest) -> list:
        """Conversations waiting for a person first, then the most recently active."""
        waiting = Case(When(status=Conversation.Status.NEEDS_HUMAN, then=0), default=1)
        return [waiting.asc(), "-last_activity_at"]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """The page, with the answers the bot would give to what the customer asked since the
        team last wrote, for the person replying ("Suggested answers"). Only when a page is
        shown: a saved form redirects without rendering."""
        if (
            obj is not None
            and obj.status != Conversation.Status.CLOSED
            and self.has_change_permission(request, obj)
        ):
            try:
                context["suggested_replies"] = services.staff_reply_suggestions(conversation=obj)
            except Exception:
                # The page and the reply box work without them.
                logger.exception("No suggested replies for conversation %s", obj.pk)
                context["suggested_replies_failed"] = True
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _posted_conversation(self, request: HttpRequest, object_id: str) -> Conversation:
        conversation = self.get_object(request, object_id)  # by primary key or UUID
        if conversation is None:
            raise Http404("No such conversation.")
        self.require_post(request, conversation)
        return conversation

    def save_model(self, request: HttpRequest, obj: Conversation, form, change: bool) -> None:
        """Save, and send the reply typed in "Reply to the customer" if there is one: an admin
        who clicks Save instead of "Send reply" must not lose it."""
        super().save_model(request, obj, form, change)
        if change and request.POST.get("staff_reply", "").strip():
            self._send_reply(request, obj)

    def _send_reply(self, request: HttpRequest, conversation: Conversation) -> None:
        try:
            template = request.POST.get("staff_reply_template", "")
            services.staff_reply_send(
                conversation=conversation,
                text=request.POST.get("staff_reply", ""),
                template_id=int(template) if template.isdigit() else None,
            )
        except ValueError as error:
            self.message_user(request, str(error), messages.ERROR)
        else:
            self.message_user(request, "Reply sent to the customer.", messages.SUCCESS)
            if settings.REDIS_URL and (state := views.redis_state()) != "ok":
                # Stored, and the customer's chat shows it with the history once it reconnects;
                # an open widget cannot be reached now (no channel layer, no WebSocket).
                self.message_user(
                    request,
                    f"Redis is {state}: the customer sees the reply when their chat reconnects, "
                    "not live.",
                    messages.WARNING,
                )

    def reply_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        conversation = self._posted_conversation(request, object_id)
        self._send_reply(request, conversation)
        return redirect("admin:chatbot_conversation_change", conversation.pk)

    def hand_back_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        conversation = self._posted_conversation(request, object_id)
        try:
            services.conversation_hand_back(conversation=conversation)
        except ValueError as error:
            self.message_user(request, str(error), messages.WARNING)
        else:
            self.message_user(request, "The bot answers this conversation again.", messages.SUCCESS)
        return redirect("admin:chatbot_conversation_change", conversation.pk)

    @admin.action(description="Hand back to the bot", permissions=["change"])
    def hand_back_to_bot(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        handed = 0
        for conversation in queryset.filter(status=Conversation.Status.NEEDS_HUMAN):
            try:
                services.conversation_hand_back(conversation=conversation)
            except ValueError:  # handed back meanwhile
                continue
            handed += 1
        self.message_user(
            request,
            f"{handed} of {len(queryset)} conversations handed back to the bot "
            "(only those waiting for a person can be).",
            messages.SUCCESS if handed else messages.WARNING,
        )

    @admin.action(description="Close the conversations", permissions=["change"])
    def close_conversations(self, request: HttpRequest, queryset: QuerySet[Conversation]):
        closed = sum(
            services.conversation_close(conversation=c) is not None
            for c in queryset.exclude(status=Conversation.Status.CLOSED)
        )
        self.message_user(request, f"{closed} conversations closed.", messages.SUCCESS)

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
        "helpful",
        "latency_ms",
        "conversation",
    )
    list_filter = ("role", "decision", "helpful", "intent", "created_at")
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

    # A record of what was said and why: viewed, and deleted when it must be, never rewritten
    # (the review queue records verdicts beside it; staff replies go through the conversation).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class IntentExampleInline(admin.TabularInline):
    model = IntentExample
    extra = 1
    fields = ("text", "source")


class AnswerTemplateInline(admin.StackedInline):
    model = AnswerTemplate
    extra = 0
    fields = ("text", "suggestions", "active")


@admin.action(description="Rebuild the answer index now", permissions=["change"])
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


class ReviewActionForm(ActionForm):
    intent = forms.ModelChoiceField(
        queryset=Intent.objects.all(), required=False, label="Relabel to", empty_label="(intent)"
    )
    new_intent = forms.CharField(
        required=False, label="or new intent", widget=forms.TextInput(attrs={"size": 18})
    )


class ReviewStateFilter(admin.SimpleListFilter):
    title = "review"
    parameter_name = "review"

    def lookups(self, request, model_admin):
        return [("all", "All"), ("todo", "To review"), *Message.Review.choices]

    def choices(self, changelist):
        # Django's own "All" drops the parameter, which reopens the queue on "To review".
        return list(super().choices(changelist))[1:]

    def queryset(self, request, queryset):
        if self.value() == "todo":
            return queryset.filter(review="")
        if self.value() and self.value() != "all":
            return queryset.filter(review=self.value())
        return queryset


class AnswerHelpedFilter(admin.SimpleListFilter):
    title = "customer said the answer"
    parameter_name = "helped"

    def lookups(self, request, model_admin):
        return [("no", "Did not help"), ("yes", "Helped"), ("unsaid", "Said nothing")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(reply__helpful=self.value() == "yes")
        if self.value() == "unsaid":
            return queryset.filter(reply__helpful__isnull=True)
        return queryset


@admin.register(ReviewItem)
class ReviewQueueAdmin(ExtraViews, admin.ModelAdmin):
    """Customer messages, the most useful to label first; each verdict teaches the next model."""

    extra_views = (("candidates/", "candidates_view", "chatbot_reviewitem_candidates"),)
    action_form = ReviewActionForm
    actions = ["confirm", "relabel", "mark_out_of_scope", "skip"]
    list_display = (
        "text",
        "predicted",
        "bot_confidence",
        "bot_decision",
        "answer_helped",
        "retriever",
        "review_priority",
        "review",
        "reviewed_intent",
        "conversation_link",
    )
    list_filter = (ReviewStateFilter, "reply__decision", AnswerHelpedFilter, "created_at")
    search_fields = ("text",)
    ordering = ("-review_priority", "-created_at")
    list_per_page = 50
    readonly_fields = ("text", "created_at", "review", "reviewed_intent", "reviewed_at")
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReviewItem]:
        return (
            super()
            .get_queryset(request)
            .filter(role=Message.Role.CUSTOMER, reply__isnull=False)
            .select_related("reply__intent", "reviewed_intent", "conversation")
        )

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # The queue opens on what is left to review.
        if "review" not in request.GET and not request.GET.get("q") and request.method == "GET":
            query = request.GET.copy()
            query["review"] = "todo"
            return redirect(f"{request.path}?{query.urlencode()}")
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def _apply(self, request: HttpRequest, queryset, verdict: str, **target) -> None:
        try:
            count = learning.review_apply(
                message_ids=queryset.values_list("pk", flat=True),
                verdict=verdict,
                user=request.user,
                **target,
            )
        except learning.ReviewError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        label = Message.Review(verdict).label.lower()
        self.message_user(request, f"{count} message(s) {label}.", messages.SUCCESS)
        if count and verdict == Message.Review.OUT_OF_SCOPE:
            runs = reverse("admin:chatbot_trainingrun_changelist")
            if settings.CHATBOT_REFIT_AFTER_REVIEW_S > 0:
                text = format_html(
                    "In about {} s a run fits the live model's decisions again with them, and "
                    'the bot then declines messages like them (<a href="{}">Training runs</a>). '
                    "If examples changed too since the live model was trained, they wait for "
                    "the next training run, which retrains.",
                    settings.CHATBOT_REFIT_AFTER_REVIEW_S,
                    runs,
                )
            else:
                text = format_html(
                    "The bot declines messages like them once a training run has taken them "
                    'in: tonight\'s, or one you start now (<a href="{}">Training runs</a>, '
                    '"Start a training run now").',
                    runs,
                )
            self.message_user(request, text, messages.INFO)

    @admin.action(description="Confirm the predicted intent", permissions=["change"])
    def confirm(self, request: HttpRequest, queryset) -> None:
        self._apply(request, queryset, Message.Review.CONFIRMED)

    @admin.action(
        description="Relabel to the intent chosen below (or a new one)", permissions=["change"]
    )
    def relabel(self, request: HttpRequest, queryset) -> None:
        form = self.action_form(request.POST)
        form.is_valid()
        data = getattr(form, "cleaned_data", {})
        self._apply(
            request,
            queryset,
            Message.Review.RELABELLED,
            intent=data.get("intent"),
            new_intent=data.get("new_intent", ""),
        )
        # The intent the messages went to (a typed name wins, as in `review_apply`).
        new_name = learning.intent_name(data["new_intent"]) if data.get("new_intent") else ""
        target = Intent.objects.filter(name=new_name).first() if new_name else data.get("intent")
        if target is None:
            return
        if new_name and not target.templates.exists():
            self.message_user(
                request,
                f"Intent {target.name} has no answer yet: until it has one, a person takes "
                "the conversations the bot recognises as it.",
                messages.WARNING,
            )
        if (n := target.examples.count()) < learning.MIN_EXAMPLES_TO_TRAIN:
            self.message_user(
                request,
                f"Intent {target.name} has {n} example(s): training leaves it out until it has "
                f"{learning.MIN_EXAMPLES_TO_TRAIN}.",
                messages.WARNING,
            )

    @admin.action(description="Mark out of scope", permissions=["change"])
    def mark_out_of_scope(self, request: HttpRequest, queryset) -> None:
        self._apply(request, queryset, Message.Review.OUT_OF_SCOPE)

    @admin.action(description="Skip", permissions=["change"])
    def skip(self, request: HttpRequest, queryset) -> None:
        self._apply(request, queryset, Message.Review.SKIPPED)

    @admin.display(description="Bot's intent", ordering="reply__intent__name")
    def predicted(self, obj: ReviewItem) -> str:
        return obj.reply.intent.name if obj.reply.intent else "-"

    # Not named "confidence" and "decision": the message's own (empty) fields of those names
    # would win over these in the list.
    @admin.display(description="Confidence", ordering="reply__confidence")
    def bot_confidence(self, obj: ReviewItem) -> str:
        return _percent(obj.reply.confidence)

    @admin.display(description="Decision", ordering="reply__decision")
    def bot_decision(self, obj: ReviewItem) -> str:
        return obj.reply.get_decision_display()

    @admin.display(description="Helped?", boolean=True, ordering="reply__helpful")
    def answer_helped(self, obj: ReviewItem) -> bool | None:
        """What the customer said of the bot's answer (empty: nothing)."""
        return obj.reply.helpful

    @admin.display(description="Nearest example's intent")
    def retriever(self, obj: ReviewItem) -> str:
        return obj.reply.nearest_intent or "-"

    @admin.display(description="Conversation")
    def conversation_link(self, obj: ReviewItem) -> str:
        return format_html(
            '<a href="../conversation/{}/change/">{}</a>',
            obj.conversation_id,
            str(obj.conversation.public_id)[:8],
        )

    def candidates_view(self, request: HttpRequest) -> HttpResponse:
        """Groups of alike messages no intent matched; one form per group names a new intent
        from them, or marks them out of scope (the next model learns to decline their like)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            ids = [int(i) for i in request.POST.getlist("message") if i.isdigit()]
            group = ReviewItem.objects.filter(pk__in=ids)
            if request.POST.get("verdict") == Message.Review.OUT_OF_SCOPE:
                self._apply(request, group, Message.Review.OUT_OF_SCOPE)
            else:
                self._apply(
                    request,
                    group,
                    Message.Review.RELABELLED,
                    new_intent=request.POST.get("new_intent", ""),
                )
            return redirect("admin:chatbot_reviewitem_candidates")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Candidate new intents",
            "candidates": selectors.candidate_intents(),
        }
        return TemplateResponse(request, "admin/chatbot/reviewitem/candidates.html", context)


@admin.register(TrainingRun)
class TrainingRunAdmin(ExtraViews, admin.ModelAdmin):
    extra_views = (("start/", "start_view", "chatbot_trainingrun_start"),)
    list_display = (
        "__str__",
        "trigger",
        "status",
        "progress_bar",
        "started_at",
        "finished_at",
        "dataset_size",
        "new_examples",
        "model_version",
        "short_reason",
    )
    list_filter = ("status", "trigger")
    # per_intent shows as a table (per_intent_table), not also as raw JSON.
    readonly_fields = [f.name for f in TrainingRun._meta.fields if f.name != "per_intent"] + [
        "per_intent_table"
    ]
    exclude = ("per_intent",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def start_view(self, request: HttpRequest) -> HttpResponse:
        self.require_post(request)
        run = learning.training_run_request(trigger=TrainingRun.Trigger.MANUAL)
        run.refresh_from_db()  # handed over on commit (admin views run in autocommit)
        if run.status == TrainingRun.Status.FAILED:
            self.message_user(request, f"{run} could not start: {run.error}", messages.ERROR)
        else:
            self.message_user(request, f"{run} is queued for the worker.", messages.SUCCESS)
        return redirect("admin:chatbot_trainingrun_changelist")

    @admin.display(description="Progress", ordering="progress")
    def progress_bar(self, obj: TrainingRun) -> str:
        return format_html(
            '<progress max="100" value="{}" title="{}">{}%</progress> {}%',
            obj.progress,
            obj.stage,
            obj.progress,
            round(obj.progress),
        )

    @admin.display(description="Reason")
    def short_reason(self, obj: TrainingRun) -> str:
        text = obj.reason or obj.error
        return text if len(text) <= 90 else text[:89] + "…"

    @admin.display(description="Per intent (validation accuracy)")
    def per_intent_table(self, obj: TrainingRun) -> str:
        if not obj.per_intent:
            return "-"
        rows = sorted(obj.per_intent.items())
        cells = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (name, scores["support"], _percent(scores["candidate"]), _percent(scores["live"]))
                for name, scores in rows
            ),
        )
        return format_html(
            "<table><tr><th>intent</th><th>examples</th><th>candidate</th><th>live</th></tr>"
            "{}</table>",
            cells,
        )


@admin.action(description="Make the selected version live", permissions=["change"])
def make_live(modeladmin, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one version.", messages.ERROR)
        return
    version = queryset.get()
    try:
        learning.model_promote(model_version=version)
    except learning.ReviewError as error:
        modeladmin.message_user(request, str(error), messages.ERROR)
        return
    modeladmin.message_user(request, f"{version.name} is live.", messages.SUCCESS)


@admin.register(ModelVersion)
class ModelVersionAdmin(ExtraViews, admin.ModelAdmin):
    extra_views = (("rollback/", "rollback_view", "chatbot_modelversion_rollback"),)
    list_display = (
        "__str__",
        "kind",
        "validation_accuracy",
        "validation_macro_f1",
        "n_examples",
        "said_not_helpful",
        "created_at",
        "promoted_at",
        "is_live",
    )
    list_filter = ("kind", "is_live")
    readonly_fields = (
        "created_at",
        "directory",
        "base_model",
        "kind",
        "metrics",
        "is_live",
        "promoted_at",
    )
    actions = [make_live]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from training runs and `train_model`, with their files

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Every bot message names the version that wrote it, and the live one is serving:
        # the rows stay (their files are pruned, CHATBOT_KEEP_MODEL_VERSIONS).
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        # What the customers said of each version's answers, live: the admin compares a
        # new version with the one before it on what its validation split cannot show.
        rated = Message.objects.filter(model_version=OuterRef("pk"), helpful__isnull=False)
        return (
            super()
            .get_queryset(request)
            .annotate(
                _rated=_count(rated),
                _not_helpful=_count(rated.filter(helpful=False)),
            )
        )

    def rollback_view(self, request: HttpRequest) -> HttpResponse:
        self.require_post(request)
        try:
            version = learning.model_rollback()
        except learning.ReviewError as error:
            self.message_user(request, str(error), messages.ERROR)
        else:
            self.message_user(request, f"Rolled back: {version.name} is live.", messages.SUCCESS)
        return redirect("admin:chatbot_modelversion_changelist")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "plot": _versions_plot()})

    @admin.display(description="Val. accuracy (at training)")
    def validation_accuracy(self, obj: ModelVersion) -> str:
        return _percent(obj.metrics.get("validation", {}).get("accuracy"))

    @admin.display(description="Val. macro-F1 (at training)")
    def validation_macro_f1(self, obj: ModelVersion) -> str:
        return _percent(obj.metrics.get("validation", {}).get("macro_f1"))

    @admin.display(description="Examples")
    def n_examples(self, obj: ModelVersion) -> int | None:
        return obj.metrics.get("n_train")

    @admin.display(description="Customers said: did not help", ordering="_not_helpful")
    def said_not_helpful(self, obj: ModelVersion) -> str:
        """Of its replies the customers said something of (an answer's buttons, "None of
        these" under a question), those that did not help."""
        if not obj._rated:
            return "-"
        return f"{obj._not_helpful} of {obj._rated} ({obj._not_helpful / obj._rated:.0%})"


def _count(rows: QuerySet[Message]) -> Coalesce:
    """The number of a version's `rows` (filtered on the outer version), as an annotation."""
    counted = rows.order_by().values("model_version").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted[:1]), 0)


def _versions_plot(width: int = 640, height: int = 200, pad: int = 32) -> dict | None:
    """Validation accuracy and macro-F1 of every version, oldest first, as SVG coordinates."""
    versions = [
        (v.pk, v.is_live, v.metrics.get("validation", {}))
        for v in ModelVersion.objects.order_by("created_at", "pk")
    ]
    versions = [(pk, live, m) for pk, live, m in versions if "accuracy" in m]
    if not versions:
        return None
    values = [m[key] for _, _, m in versions for key in ("accuracy", "macro_f1")]
    low, high = min(values) - 0.01, max(values) + 0.01
    step = (width - 2 * pad) / max(1, len(versions) - 1)

    def point(i: int, value: float) -> tuple[float, float]:
        x = pad + i * step if len(versions) > 1 else width / 2
        return round(x, 1), round(
            height - pad - (value - low) / (high - low) * (height - 2 * pad), 1
        )

    series = []
    for key, colour in (("accuracy", "#417690"), ("macro_f1", "#d9822b")):
        points = [point(i, m[key]) for i, (_, _, m) in enumerate(versions)]
        series.append(
            {
                "name": "accuracy" if key == "accuracy" else "macro-F1",
                "colour": colour,
                "polyline": " ".join(f"{x},{y}" for x, y in points),
                "points": [
                    {"x": x, "y": y, "label": f"v{pk}: {m[key]:.1%}", "live": live}
                    for (x, y), (pk, live, m) in zip(points, versions, strict=True)
                ],
            }
        )
    return {
        "width": width,
        "height": height,
        "series": series,
        "low": f"{low:.1%}",
        "high": f"{high:.1%}",
        "pad": pad,
        "bottom": height - pad,
        "right": width - pad,
        "versions": [
            {"x": point(i, low)[0], "label": f"v{pk}"} for i, (pk, _, _) in enumerate(versions)
        ],
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
