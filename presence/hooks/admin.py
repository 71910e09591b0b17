"""Admin of the server-side hooks: webhook endpoints with their recent deliveries, the outbox
and its dead letters (replayable), and the failures of signal receivers."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from presence.hooks import destinations, webhooks
from presence.models import (
    DeliveryState,
    HookFailure,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from presence.protocol.events import EVENT_TYPES

# Recent deliveries shown on an endpoint's page.
RECENT_DELIVERIES = 20


class Replays:
    """The ``replay`` action's permission (a dedicated one, not "change")."""

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("presence.replay_webhookevent")


class ReadOnly:
    """Rows written by the hooks themselves: operators look (and replay), never edit."""


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: every event type.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["name", "url", "secret", "event_types", "enabled"]
        widgets = {"secret": forms.PasswordInput(render_value=True)}

    def clean_url(self) -> str:
        """Refuse internal destinations now, not at the first delivery (docs/hooks.md)."""
        url = str(self.cleaned_data["url"])
        if destinations.refusal(url) is not None:
            raise forms.ValidationError(destinations.REFUSED_HELP, code="destination")
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(Replays, admin.ModelAdmin):
    """Endpoints; the ``environment`` one follows PRESENCE_WEBHOOK_* (edits are overwritten)."""

    form = WebhookEndpointForm
    list_display = ("name", "url", "enabled", "types", "pending", "dead", "from_environment")
    list_filter = ("enabled", "from_environment")
    search_fields = ("name", "url")
    readonly_fields = ("recent_deliveries",)
    actions = ["replay_dead_letters"]

    @admin.display(description="recent deliveries")
    def recent_deliveries(self, obj: WebhookEndpoint) -> str:
        """The last POSTs, newest first: when, outcome, status, latency, attempt, events."""
        rows = obj.deliveries.order_by("-started_at", "-id")[:RECENT_DELIVERIES] if obj.pk else []
        if not rows:
            return "none yet"
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td>"
            "<td>{}</td></tr>",
            (
                (
                    f"{d.started_at:%Y-%m-%d %H:%M:%S}",
                    d.outcome,
                    d.status_code or "-",
                    d.latency_ms,
                    d.attempt,
                    d.events,
                    d.error or "",
                )
                for d in rows
            ),
        )
        return format_html(
            "<table><thead><tr><th>started</th><th>outcome</th><th>status</th>"
            "<th>latency</th><th>attempt</th><th>events</th><th>error</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            body,
        )

    @admin.display(description="event types")
    def types(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    @admin.display(description="pending")
    def pending(self, obj: WebhookEndpoint) -> int:
        return obj.events.filter(state=DeliveryState.PENDING).count()

    @admin.display(description="dead letters")
    def dead(self, obj: WebhookEndpoint) -> int:
        return obj.events.filter(state=DeliveryState.DEAD).count()

    @admin.action(description="Replay dead letters of selected endpoints", permissions=["replay"])
    def replay_dead_letters(
        self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]
    ) -> None:
        n = webhooks.do_replay_dead_letters(WebhookEvent.objects.filter(endpoint__in=queryset))
        self.message_user(request, f"Queued {n} dead letter(s) for delivery.", messages.SUCCESS)


@admin.register(WebhookEvent)
class WebhookEventAdmin(Replays, ReadOnly, admin.ModelAdmin):
    """The outbox: pending, delivered and dead events per endpoint (read-only; replayable)."""

    list_display = (
        "event_id",
        "type",
        "endpoint",
        "user_id",
        "room",
        "state",
        "attempts",
        "next_attempt_at",
        "last_error",
    )
    list_filter = ("state", "endpoint", "type")
    search_fields = ("event_id", "=user_id", "room")
    actions = ["replay"]

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        n = webhooks.do_replay_dead_letters(queryset)
        skipped = queryset.count() - n
        note = f" ({skipped} not dead, left alone)" if skipped > 0 else ""
        self.message_user(
            request, f"Queued {n} dead letter(s) for delivery{note}.", messages.SUCCESS
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnly, admin.ModelAdmin):
    """Every POST (kept PRESENCE_WEBHOOK_KEEP): status, latency, attempt."""

    list_display = (
        "started_at",
        "endpoint",
        "outcome",
        "status_code",
        "latency_ms",
        "attempt",
        "events",
        "error",
    )
    list_filter = ("outcome", "endpoint")
    date_hierarchy = "started_at"


@admin.register(HookFailure)
class HookFailureAdmin(ReadOnly, admin.ModelAdmin):
    """Signal receivers that raised: retried with back-off, given up after
    PRESENCE_HOOKS_RETRY_FOR."""

    list_display = (
        "last_failed_at",
        "receiver",
        "type",
        "event_id",
        "user_id",
        "attempts",
        "gave_up",
        "recovered",
        "error",
    )
    list_filter = ("gave_up", "recovered", "type", "receiver")
    search_fields = ("event_id", "receiver", "=user_id")
