"""Admin for connection sessions: read-only rows, live ones at a glance, and kicking one.

Rows are written by the presence engine; operators only view them and disconnect live ones
(the dedicated ``kick_connectionsession`` permission). A live session cannot be deleted:
its socket is open, so it is disconnected instead.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from .actions import do_kick_session
from .display import format_timestamp
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
        "connected",
        "last_heartbeat",
        "ended",
        "end_reason",
    )
    list_filter = (LiveFilter, "end_reason", "connected_at")
    search_fields = ("id", "user__username", "ip", "user_agent", "channel_name")
    list_select_related = ("user",)
    date_hierarchy = "connected_at"
    readonly_fields = [
        *(f.name for f in ConnectionSession._meta.fields if not f.name.endswith("_at")),
        "connected",
        "last_heartbeat",
        "ended",
    ]
    exclude = ("connected_at", "last_heartbeat_at", "ended_at")
    actions = ["kick"]

    # ----------------------------------------------------------------- permissions
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from the presence engine

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: no Save button; kicking has its own permission

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_live:
            return False  # its socket is open: disconnect it instead
        return super().has_delete_permission(request, obj)

    def has_kick_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sessions_app.kick_connectionsession")

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # "Delete selected" would delete live sessions along with ended ones.
        actions.pop("delete_selected", None)
        return actions

    # ----------------------------------------------------------------- columns
    @admin.display(description="connected at", ordering="connected_at")
    def connected(self, obj: ConnectionSession) -> SafeString:
        return format_timestamp(obj.connected_at)

    @admin.display(description="last heartbeat at", ordering="last_heartbeat_at")
    def last_heartbeat(self, obj: ConnectionSession) -> SafeString:
        return format_timestamp(obj.last_heartbeat_at)

    @admin.display(description="ended at", ordering="ended_at")
    def ended(self, obj: ConnectionSession) -> SafeString:
        return format_timestamp(obj.ended_at)

    # ----------------------------------------------------------------- actions
    @admin.action(description="Kick selected sessions (close with 4410)", permissions=["kick"])
    def kick(self, request: HttpRequest, queryset: QuerySet[ConnectionSession]) -> None:
        kicked = sum(1 for s in queryset.filter(ended_at__isnull=True) if do_kick_session(s))
        skipped = queryset.count() - kicked
        self.message_user(request, f"Asked {kicked} live session(s) to close.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} session(s) had already ended.", messages.INFO)
