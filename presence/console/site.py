"""The admin site with the operator console's pages, linked from the index and the sidebar.

Installed as the default ``admin.site`` by ``presence.console.apps.PresenceAdminConfig``.
Like ``UserAdmin``'s password page, every page is a view wrapped in ``admin_view`` (staff
only, CSRF-protected, never cached); permissions beyond "staff" are checked in the views.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, path, reverse

from presence.console import inspect, views
from presence.models.routers import reads_from_replica

ViewFunc = Callable[..., HttpResponse]


class PresenceAdminSite(admin.AdminSite):
    """``admin.site`` plus /admin/presence/online/, rooms/<room>/ and dashboard/."""

    def _console_view(self, view: Callable[..., HttpResponse]) -> ViewFunc:
        def bound(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            return view(self, request, *args, **kwargs)

        bound.__name__ = view.__name__
        # GETs read from the replica when one is configured; POSTs (writes) never do.
        return self.admin_view(reads_from_replica(bound))

    def get_urls(self) -> list[URLResolver | URLPattern]:
        # First: the admin's own "presence/<model>/" patterns must not shadow these.
        console = [
            path("presence/online/", self._console_view(views.online), name="presence_online"),
            path(
                "presence/online/disconnect/",
                self._console_view(views.disconnect),
                name="presence_disconnect",
            ),
            path(
                "presence/rooms/<path:room>/", self._console_view(views.room), name="presence_room"
            ),
            path(
                "presence/dashboard/",
                self._console_view(views.dashboard),
                name="presence_dashboard",
            ),
            path(
                "presence/dashboard/data/",
                self._console_view(views.dashboard_data),
                name="presence_dashboard_data",
            ),
            path(
                "presence/processes/",
                self._console_view(inspect.process_list),
                name="presence_processes",
            ),
            path(
                "presence/processes/<str:proc_id>/",
                self._console_view(inspect.process_detail),
                name="presence_process",
            ),
            path(
                "presence/processes/<str:proc_id>/profile/",
                self._console_view(inspect.process_profile),
                name="presence_process_profile",
            ),
            path(
                "presence/processes/<str:proc_id>/profile/<str:request_id>.speedscope.json",
                self._console_view(inspect.profile_download),
                name="presence_process_profile_download",
            ),
        ]
        return console + super().get_urls()

    def get_app_list(
        self, request: HttpRequest, app_label: str | None = None
    ) -> list[dict[str, Any]]:
        """The admin's app list with "Online now" and "Dashboard" first in Presence."""
        app_list = super().get_app_list(request, app_label)
        if app_label not in (None, "presence"):
            return app_list
        pages = [
            self._page_entry("Online now", "Online", "presence_online"),
            self._page_entry("Dashboard", "Dashboard", "presence_dashboard"),
        ]
        if inspect.can_inspect(request.user):
            pages.append(self._page_entry("Web processes", "Processes", "presence_processes"))
        for app in app_list:
            if app["app_label"] == "presence":
                app["models"] = pages + app["models"]
                return app_list
        # Staff without any presence model permission still get the console pages.
        app_list.append(
            {
                "name": "Presence",
                "app_label": "presence",
                "app_url": pages[0]["admin_url"],
                "has_module_perms": True,
                "models": pages,
            }
        )
        return app_list

    def _page_entry(self, name: str, object_name: str, url_name: str) -> dict[str, Any]:
        return {
            "name": name,
            "object_name": object_name,
            "perms": {"add": False, "change": False, "delete": False, "view": True},
            "admin_url": reverse(f"admin:{url_name}", current_app=self.name),
            "add_url": None,
            "view_only": True,
        }
