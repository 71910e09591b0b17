"""The admin app with the presence admin site as its default ``admin.site``."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class PresenceAdminConfig(AdminConfig):
    """Replaces ``django.contrib.admin`` in INSTALLED_APPS; everything else is unchanged."""

    default_site = "presence.console.site.PresenceAdminSite"
