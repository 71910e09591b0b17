"""The app's part of a host's Celery app: ``presence.celery.install(app)`` (docs/install.md).

Called in the host's celery.py right after ``app.config_from_object(...)``, before Django is
set up (Celery's Django layout): nothing here reads a model or a setting at call time. The
beat schedule is added when Celery first reads its configuration (Django's settings are
importable then), so its periods follow the ``PRESENCE_*`` settings.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

# The Celery apps install() ran on (the system check presence.E043 asks about the current one).
_installed: weakref.WeakSet[Celery] = weakref.WeakSet()


def install(app: Celery) -> None:
    """Add presence's background work to ``app``: its tasks and its beat schedule.

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
