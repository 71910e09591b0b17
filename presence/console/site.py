"""The operator console's pages on the host's admin site, linked from its index and sidebar.

``install(site)`` adds them to an existing ``AdminSite`` instance: ``presence.apps`` calls it
for Django's default ``admin.site`` when ``django.contrib.admin`` is installed, so a host keeps
its own admin (no admin site or AdminConfig of ours to swap in); a host serving a second
``AdminSite`` of its own may call it for that one too. Like ``UserAdmin``'s password page,
every page is a view wrapped in the site's ``admin_view`` (staff only, CSRF-protected, never
cached); permissions beyond "staff" are checked in the views.
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
AppList = list[dict[str, Any]]

# Set on a site once its console is installed: installing twice would add the pages twice.
INSTALLED_FLAG = "presence_console_installed"


def install(site: admin.AdminSite) -> None:
    """Add the console's URLs (/admin/presence/online/, rooms/<room>/, dashboard/ …) to ``site``
    and its pages to the app list ("Presence" in the index and the sidebar).

    Must run before the site's ``urls`` are read (the host's urls.py): an ``AppConfig.ready()``
    is. The site's own ``get_urls`` and ``get_app_list`` are wrapped on the instance, not
    subclassed, because the instance is the host's.
    """
    if getattr(site, INSTALLED_FLAG, False):
        return
    own_urls = site.get_urls
    own_app_list = site.get_app_list

    def get_urls() -> list[URLResolver | URLPattern]:
        # First: the admin's own "presence/<model>/" patterns must not shadow these.
        return console_urls(site) + own_urls()

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> AppList:
        return with_console_pages(site, request, own_app_list(request, app_label), app_label)

    # setattr: mypy rightly refuses assignments to methods; these are the instance's own.
    setattr(site, "get_urls", get_urls)  # noqa: B010
    setattr(site, "get_app_list", get_app_list)  # noqa: B010
    setattr(site, INSTALLED_FLAG, True)


def _console_view(site: admin.AdminSite, view: Callable[..., HttpResponse]) -> ViewFunc:
    def bound(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return view(site, request, *args, **kwargs)

    bound.__name__ = view.__name__
    # GETs read from the replica when one is configured; POSTs (writes) never do.
    return site.admin_view(reads_from_replica(bound))


# The console's pages: (route under the admin, view, URL name).
CONSOLE_PAGES: tuple[tuple[str, Callable[..., HttpResponse], str], ...] = (
    ("presence/online/", views.online, "presence_online"),
    ("presence/online/disconnect/", views.disconnect, "presence_disconnect"),
    ("presence/rooms/<path:room>/", views.room, "presence_room"),
    ("presence/dashboard/", views.dashboard, "presence_dashboard"),
    ("presence/dashboard/data/", views.dashboard_data, "presence_dashboard_data"),
    ("presence/processes/", inspect.process_list, "presence_processes"),
    ("presence/processes/<str:proc_id>/", inspect.process_detail, "presence_process"),
    (
        "presence/processes/<str:proc_id>/profile/",
        inspect.process_profile,
        "presence_process_profile",
    ),
    (
        "presence/processes/<str:proc_id>/profile/<str:request_id>.speedscope.json",
        inspect.profile_download,
        "presence_process_profile_download",
    ),
)


def console_urls(site: admin.AdminSite) -> list[URLResolver | URLPattern]:
    """The console's URL patterns, each view bound to ``site``."""
    return [
        path(route, _console_view(site, view), name=name) for route, view, name in CONSOLE_PAGES
    ]


def with_console_pages(
    site: admin.AdminSite, request: HttpRequest, app_list: AppList, app_label: str | None
) -> AppList:
    """The admin's app list with "Online now" and "Dashboard" first in Presence."""
    if app_label not in (None, "presence"):
        return app_list
    pages = [
        _page_entry(site, "Online now", "Online", "presence_online"),
        _page_entry(site, "Dashboard", "Dashboard", "presence_dashboard"),
    ]
    if inspect.can_inspect(request.user):
        pages.append(_page_entry(site, "Web processes", "Processes", "presence_processes"))
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


def _page_entry(
    site: admin.AdminSite, name: str, object_name: str, url_name: str
) -> dict[str, Any]:
    return {
        "name": name,
        "object_name": object_name,
        "perms": {"add": False, "change": False, "delete": False, "view": True},
        "admin_url": reverse(f"{site.name}:{url_name}", current_app=site.name),
        "add_url": None,
        "view_only": True,
    }
