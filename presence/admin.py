"""Admin for the message-handler registry (status, versions, stats, enable/disable) and the
per-minute stats buckets (read-only). The operator console is in presence/console/."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from presence.actions.revocation import do_block_user, do_lift_blocks
from presence.handlers.lifecycle import (
    ControlResult,
    do_disable_handlers,
    do_enable_handlers,
    latency_quantile,
)
from presence.hooks import admin as hooks_admin  # noqa: F401 - registers the hooks' admin pages
from presence.models import RegisteredHandler, StatsBucket, UserBlock
from presence.models.routers import reads_from_replica
from presence.store import LATENCY_BUCKETS
from sessions_app.display import format_timestamp


def format_latency(seconds: float | None) -> str:
    """A histogram bound in milliseconds: "≤ 25 ms", "≤ 2500 ms", "> 5000 ms" (overflow)."""
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return f"> {LATENCY_BUCKETS[-1] * 1000:g} ms"
    return f"≤ {seconds * 1000:g} ms"


def _names(handlers: list[RegisteredHandler]) -> str:
    return ", ".join(h.type for h in handlers)


@admin.register(RegisteredHandler)
class RegisteredHandlerAdmin(admin.ModelAdmin):
    """Rows are written by web processes at start-up; operators only enable and disable."""

    list_display = (
        "type",
        "status_label",
        "version",
        "core",
        "calls",
        "errors",
        "timeouts",
        "p50",
        "p95",
        "p99",
        "last_registered_by",
        "updated",
    )
    list_filter = ("status", "core")
    search_fields = ("type", "path", "description")
    ordering = ("type",)
    readonly_fields = [
        *(
            f.name
            for f in RegisteredHandler._meta.fields
            if f.name not in ("error", "latency", "registered_at", "updated_at")
        ),
        "registered",
        "updated",
        "error_text",
        "p50",
        "p95",
        "p99",
        "latency_table",
    ]
    exclude = ("error", "latency", "registered_at", "updated_at")
    actions = ["disable_handlers", "enable_handlers"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from the code that registers handlers

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # The list's enable/disable actions need "change"; a row's page has nothing to save.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # a deleted row comes back at the next start; disable the handler instead

    # ----------------------------------------------------------------- columns
    @admin.display(description="status", ordering="status")
    def status_label(self, obj: RegisteredHandler) -> str:
        # Failed rows keep their error; a hover shows the last line of it in the list.
        if obj.error:
            return format_html(
                '<span title="{}">{}</span>',
                obj.error.strip().splitlines()[-1],
                obj.get_status_display(),
            )
        return obj.get_status_display()

    @admin.display(description="p50")
    def p50(self, obj: RegisteredHandler) -> str:
        return format_latency(latency_quantile(obj.latency, 0.50))

    @admin.display(description="p95")
    def p95(self, obj: RegisteredHandler) -> str:
        return format_latency(latency_quantile(obj.latency, 0.95))

    @admin.display(description="p99")
    def p99(self, obj: RegisteredHandler) -> str:
        return format_latency(latency_quantile(obj.latency, 0.99))

    @admin.display(description="registered at", ordering="registered_at")
    def registered(self, obj: RegisteredHandler) -> SafeString:
        return format_timestamp(obj.registered_at)

    @admin.display(description="updated at", ordering="updated_at")
    def updated(self, obj: RegisteredHandler) -> SafeString:
        return format_timestamp(obj.updated_at)

    @admin.display(description="latency histogram")
    def latency_table(self, obj: RegisteredHandler) -> str:
        """Calls per latency bucket, in milliseconds (the stored JSON is keyed by seconds)."""
        rows = sorted(((float(b), int(n)) for b, n in (obj.latency or {}).items()))
        if not rows:
            return "-"
        return format_html(
            "<table><thead><tr><th>duration</th><th>calls</th></tr></thead><tbody>{}</tbody>"
            "</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td></tr>",
                ((format_latency(bound), count) for bound, count in rows),
            ),
        )

    @admin.display(description="error")
    def error_text(self, obj: RegisteredHandler) -> str:
        return format_html("<pre>{}</pre>", obj.error) if obj.error else "-"

    # ----------------------------------------------------------------- actions
    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[RegisteredHandler],
        action: Callable[[QuerySet[RegisteredHandler]], ControlResult],
        verb: str,
    ) -> None:
        # The audit entries commit with the change; Redis is told after that commit.
        with transaction.atomic():
            result = action(queryset)
            for handler in result.changed:
                self.log_change(request, handler, f"{verb.capitalize()} the handler.")
        self._report(request, result, verb)

    def _report(self, request: HttpRequest, result: ControlResult, verb: str) -> None:
        if result.changed:
            self.message_user(
                request,
                f"{verb.capitalize()} {len(result.changed)} handler(s): {_names(result.changed)}. "
                "Running web processes apply this within about a second.",
                messages.SUCCESS,
            )
        if result.unchanged:
            self.message_user(
                request, f"Already {verb}: {_names(result.unchanged)}.", messages.INFO
            )
        if result.refused_core:
            self.message_user(
                request,
                f"Core handlers cannot be disabled: {_names(result.refused_core)}.",
                messages.ERROR,
            )
        if result.published is False:
            self.message_user(
                request,
                "Saved, but running processes could not be notified (Redis: "
                f"{result.publish_error}); they apply it when they restart.",
                messages.WARNING,
            )

    @admin.action(description="Disable selected handlers", permissions=["change"])
    def disable_handlers(self, request: HttpRequest, queryset: QuerySet[RegisteredHandler]) -> None:
        self._apply(request, queryset, do_disable_handlers, "disabled")

    @admin.action(description="Enable selected handlers", permissions=["change"])
    def enable_handlers(self, request: HttpRequest, queryset: QuerySet[RegisteredHandler]) -> None:
        self._apply(request, queryset, do_enable_handlers, "enabled")


# --------------------------------------------------------------------------- user blocks
BLOCK_DURATIONS = [
    ("900", "15 minutes"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
]


class UserBlockForm(forms.ModelForm):
    """A block is given a duration; its end time is computed from it."""

    duration = forms.ChoiceField(choices=BLOCK_DURATIONS, initial="3600")

    class Meta:
        model = UserBlock
        fields = ["user", "reason"]


@admin.register(UserBlock)
class UserBlockAdmin(admin.ModelAdmin):
    """Operators block a user for a chosen time: their sockets close with 4403 at once and
    new ones are refused until the block ends (presence.actions.revocation)."""

    form = UserBlockForm
    list_display = ("user", "until", "active", "reason", "created_by", "created_at")
    list_filter = ("until",)
    search_fields = ("user__username", "reason")
    list_select_related = ("user", "created_by")
    autocomplete_fields = ("user",)
    actions = ["lift"]

    @admin.display(boolean=True, description="in force")
    def active(self, block: UserBlock) -> bool:
        return block.is_active

    def has_change_permission(self, request: HttpRequest, obj: UserBlock | None = None) -> bool:
        return False  # a block is lifted (action), not edited

    def has_delete_permission(self, request: HttpRequest, obj: UserBlock | None = None) -> bool:
        return False  # the rows are the record of who blocked whom

    def save_model(self, request: HttpRequest, obj: UserBlock, form: Any, change: bool) -> None:
        until = timezone.now() + dt.timedelta(seconds=int(form.cleaned_data["duration"]))
        block = do_block_user(obj.user, until=until, reason=obj.reason, by=request.user)
        obj.pk, obj.until = block.pk, block.until

    @admin.action(description="Lift selected blocks now", permissions=["add"])
    def lift(self, request: HttpRequest, queryset: QuerySet[UserBlock]) -> None:
        lifted = do_lift_blocks(list(queryset))
        self.message_user(request, f"Lifted {lifted} block(s).", messages.SUCCESS)


@admin.register(StatsBucket)
class StatsBucketAdmin(admin.ModelAdmin):
    """Per-minute counters written by the stats flush: browsable, never edited."""

    list_display = (
        "minute_label",
        "heartbeats",
        "connects",
        "disconnects",
        "messages",
        "errors",
        "peak_users",
        "peak_connections",
    )
    date_hierarchy = "minute"
    ordering = ("-minute",)
    fields = (
        "minute_label",
        ("heartbeats", "messages", "errors"),
        ("connects", "disconnects"),
        ("peak_users", "peak_connections"),
        "counters_table",
        "updated",
    )
    readonly_fields = (
        "minute_label",
        "heartbeats",
        "messages",
        "errors",
        "connects",
        "disconnects",
        "peak_users",
        "peak_connections",
        "counters_table",
        "updated",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the history the dashboard charts are drawn from

    # Read-only pages: with a replica configured, their reads go there.
    @reads_from_replica
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return super().changelist_view(request, extra_context)

    @reads_from_replica
    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="minute (UTC)", ordering="minute")
    def minute_label(self, obj: StatsBucket) -> SafeString:
        return format_timestamp(obj.minute)

    @admin.display(description="updated at", ordering="updated_at")
    def updated(self, obj: StatsBucket) -> SafeString:
        return format_timestamp(obj.updated_at)

    @admin.display(description="counters")
    def counters_table(self, obj: StatsBucket) -> str:
        if not obj.counters:
            return "-"
        return format_html(
            "<table><tbody>{}</tbody></table>",
            format_html_join(
                "", "<tr><td><code>{}</code></td><td>{}</td></tr>", sorted(obj.counters.items())
            ),
        )
