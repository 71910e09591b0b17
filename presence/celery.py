"""The app's part of a host's Celery app: ``presence.celery.install(app)`` (docs/install.md).

Called in the host's celery.py right after ``app.config_from_object(...)``, before Django is
set up (Celery's Django layout): nothing here reads a model or a setting at call time. The
beat schedule is added when Celery first reads its configuration (Django's settings are
importable then), so its periods follow the ``PRESENCE_*`` settings; the worker step reads
``PRESENCE_CELERY_CONSUMERS`` when a worker starts (Django is set up by then).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from celery import bootsteps

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("presence.jobs.consumers")

# The Celery apps install() ran on (the system check presence.E043 asks about the current one).
_installed: weakref.WeakSet[Celery] = weakref.WeakSet()


def install(app: Celery) -> None:
    """Add presence's background work to ``app``: its tasks, its beat schedule, and a worker
    step that runs the event log's consumers when ``PRESENCE_CELERY_CONSUMERS`` is on.

    The schedule's entries (presence/jobs/catalog.py: sweep, stats flush, session reaper,
    ghost reconciliation) are merged under the host's own ``beat_schedule``; an entry of the
    host's with the same name wins. Calling it twice changes nothing.
    """
    if app in _installed:
        return
    _installed.add(app)
    # Lazy (on the worker's import of task modules), so safe before Django is set up; the
    # host's own autodiscover_tasks() finds presence.tasks too, this makes it not depend on it.
    app.autodiscover_tasks(["presence"])
    app.steps["worker"].add(LogConsumersStep)
    if getattr(app, "configured", False):  # Celery sets it when it first reads its conf
        add_beat_schedule(app.conf)
    else:
        app.on_after_configure.connect(_configured, sender=app, weak=False)


def _configured(sender: Celery, source: Any, **kwargs: Any) -> None:
    add_beat_schedule(source)


def add_beat_schedule(conf: Any) -> None:
    """Merge the catalog's beat schedule under ``conf.beat_schedule`` (host entries win)."""
    from presence.jobs.catalog import beat_schedule

    conf.beat_schedule = {**beat_schedule(), **(conf.beat_schedule or {})}


def is_installed(app: object) -> bool:
    """Whether :func:`install` ran on ``app``."""
    try:
        return app in _installed
    except TypeError:  # unhashable: not a Celery app
        return False


class LogConsumersStep(bootsteps.StartStopStep):
    """The event log's consumers (session rows, Django signals, webhooks: what
    ``manage.py presence_consume`` runs) in threads of a worker's main process, when
    ``PRESENCE_CELERY_CONSUMERS`` is on; off, it does nothing.

    Each worker then reads under its own consumer names and the groups share the entries out,
    as between several presence_consume processes (presence/jobs/consumers.py).
    """

    label = "presence consumers"
    # After the pool: prefork children are forked before these threads exist.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stopping = threading.Event()
        self.runner: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        from presence.conf import app_settings

        if not app_settings.CELERY_CONSUMERS:
            return
        from presence.jobs.consumers import run_consumers
        from presence.management.commands.presence_consume import READERS, handlers

        made = handlers(list(READERS), self.stopping)
        self.runner = threading.Thread(
            target=run_consumers, args=(made, self.stopping), name="presence-consumers", daemon=True
        )
        self.runner.start()
        logger.info("consume: reading %s in the Celery worker", ", ".join(READERS))

    def stop(self, parent: Any) -> None:
        self.stopping.set()
        if self.runner is not None:
            # run_consumers joins its readers within its own budget (4 s) after the event.
            self.runner.join(timeout=10)
            self.runner = None

    def terminate(self, parent: Any) -> None:
        self.stop(parent)
