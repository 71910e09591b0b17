"""Presence app config: loads every app's declared handler modules, registers checks."""

from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig, apps


class PresenceConfig(AppConfig):
    name = "presence"
    verbose_name = "Presence"
    default_auto_field = "django.db.models.BigAutoField"
    # Handler modules this app contributes; any installed app may declare the same attribute.
    presence_handlers = ["presence.handlers.core", "presence.handlers.chat"]

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        for config in apps.get_app_configs():
            for module in getattr(config, "presence_handlers", ()):
                import_module(module)
