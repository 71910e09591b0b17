"""Admin for connection sessions: live ones at a glance, and kicking one."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .actions import do_kick_session
from .models import ConnectionSession


class LiveFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("live", "Live"), ("ended", "Ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "live":
            return queryset.filter(ended_at__isnull=True)
        if self.value() == "ended":
            return queryset.filter(ended_at__isnull=False)
        return queryset


@admin.register(ConnectionSession)
class ConnectionSessionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "ip",
        "connected_at",
        "last_heartbeat_at",
        "ended_at",
        "end_reason",
    )
    list_filter = (LiveFilter, "end_reason", "connected_at")
    search_fields = ("id", "user__username", "ip", "user_agent", "channel_name")
    list_select_related = ("user",)
    date_hierarchy = "connected_at"
    readonly_fields = [f.name for f in ConnectionSession._meta.fields]
    actions = ["kick"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Kick selected sessions (close with 4410)", permissions=["change"])
    def kick(self, request: HttpRequest, queryset: QuerySet[ConnectionSession]) -> None:
        kicked = sum(1 for s in queryset.filter(ended_at__isnull=True) if do_kick_session(s))
        skipped = queryset.count() - kicked
        self.message_user(request, f"Asked {kicked} live session(s) to close.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} session(s) had already ended.", messages.INFO)
