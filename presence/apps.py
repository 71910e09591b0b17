"""Presence app config: loads every app's declared handler modules, registers checks, puts the
operator console on the host's admin site."""

from __future__ import annotations

from django.apps import AppConfig, apps


class PresenceConfig(AppConfig):
    name = "presence"
    verbose_name = "Presence"
    default_auto_field = "django.db.models.BigAutoField"
    # Handler modules this app contributes; any installed app may declare the same attribute.
    presence_handlers = [
        "presence.handlers.core",
        "presence.handlers.users",
        "presence.handlers.chat",
    ]

    def ready(self) -> None:
        from presence import checks  # noqa: F401 - registers the system checks
        from presence.actions.revocation import connect_receivers
        from presence.handlers.registry import registry
        from presence.live import processes
        from presence.obs import metrics

        connect_receivers()
        if apps.is_installed("django.contrib.admin"):
            # The console's pages ride on the host's default admin site (docs/install.md).
            from django.contrib import admin

            from presence.console.site import install

            install(admin.site)
        # The process registry counts the sockets this process holds as they open and end.
        metrics.on_connection(opened=processes.track_open, closed=processes.track_close)

        # No database access here (Django forbids it in ready()): a broken application module
        # is recorded and persisted as a `failed` row when the web process starts
        # (presence.handlers.lifecycle.register_all); only the platform's own modules are fatal.
        for config in apps.get_app_configs():
            modules = getattr(config, "presence_handlers", ())
            registry.load_modules(modules, strict=config is self)
