"""The one list of background jobs: every Celery task of presence, and how beat runs it.

Each :class:`Job` says all the code needs to know of a task: its Celery name (the wrappers in
presence/tasks.py), the short key its lock, run record and period claim use in Redis (the
``TASK`` of its module), whether beat schedules it and how (``CELERY_BEAT_SCHEDULE`` is built
from here), and where its runs are shown (``presence_status``, ``/metrics``, the console).

config/settings.py imports this module while the settings load: it imports nothing of the
project but :mod:`presence.conf`, and that only inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presence.conf import AppSettings


@dataclass(frozen=True)
class Job:
    """One background task."""

    key: str
    """Short name: Redis keys of its lock, run record and period claim; metrics, console."""
    task: str
    """The Celery task name."""
    label: str
    """What operators call it (metrics help texts, logs)."""
    interval: str = ""
    """The app_settings attribute holding its period in seconds ("" = started on demand)."""
    beat_entry: str = ""
    """Its entry in Celery beat's schedule ("" = beat does not schedule it)."""
    claims_period: bool = False
    """Beat passes ``period`` (the interval): a run first claims its period (periodic.py)."""
    expires: float | None = None
    """Seconds a run queued by beat stays valid (None: one interval)."""
    locked: bool = False
    """Runs under ``periodic.run_locked``: one at a time, each run recorded under ``key``."""
    reported: bool = False
    """Its recorded runs are read back (presence_status, /metrics ``presence_task_runs``)."""
    on_console: bool = False
    """Shown on the console dashboard, with its own duration histogram in /metrics."""

    @property
    def scheduled(self) -> bool:
        """Whether Celery beat runs it."""
        return bool(self.beat_entry)

    def period(self, conf: AppSettings | None = None) -> float | None:
        """Its interval from ``conf`` (the live app_settings unless given); None: on demand."""
        if not self.interval:
            return None
        if conf is None:
            from presence.conf import app_settings

            conf = app_settings
        return float(getattr(conf, self.interval))


JOBS: tuple[Job, ...] = (
    Job(
        key="sweep",
        task="presence.sweep_expired",
        label="sweep",
        interval="SWEEP_INTERVAL",
        beat_entry="presence-sweep-expired",
        claims_period=True,
        locked=True,
        reported=True,
        on_console=True,
    ),
    Job(
        key="flush",
        task="presence.flush_stats",
        label="stats flush",
        interval="STATS_FLUSH_INTERVAL",
        beat_entry="presence-flush-stats",
        claims_period=True,
        locked=True,
        reported=True,
        on_console=True,
    ),
    Job(
        key="reap",
        task="presence.reap_sessions",
        label="session reaper",
        interval="REAP_INTERVAL",
        beat_entry="presence-reap-sessions",
        claims_period=True,
        expires=300.0,
        locked=True,
        reported=True,
        on_console=True,
    ),
    # The fallback writer of session rows (web processes write them within milliseconds).
    Job(
        key="sessionlog",
        task="presence.write_sessions",
        label="session writer",
        interval="SESSION_LOG_INTERVAL",
        beat_entry="presence-write-sessions",
        locked=True,
        reported=True,
    ),
    # Ghosts: online in Redis, held by no live web process (presence/jobs/reconcile.py).
    Job(
        key="reconcile",
        task="presence.reconcile_connections",
        label="ghost reconciliation",
        interval="RECONCILE_INTERVAL",
        beat_entry="presence-reconcile-connections",
        claims_period=True,
        locked=True,
        reported=True,
    ),
    # Server-side hooks (presence/hooks/, docs/hooks.md): both read the event log each period.
    Job(
        key="hooks",
        task="presence.send_signals",
        label="signal sender",
        interval="HOOKS_INTERVAL",
        beat_entry="presence-send-signals",
        claims_period=True,
        locked=True,
    ),
    Job(
        key="webhooks",
        task="presence.route_webhooks",
        label="webhook router",
        interval="HOOKS_INTERVAL",
        beat_entry="presence-route-webhooks",
        claims_period=True,
        locked=True,
    ),
    # Started by the router for each endpoint with a batch due, under that endpoint's own
    # lock (``webhook-<id>``); its limits and expiry come from presence/hooks/webhooks.py.
    Job(
        key="deliver",
        task="presence.deliver_webhooks",
        label="webhook delivery",
    ),
)


def by_key(key: str) -> Job:
    """The job with this short key (KeyError if none)."""
    for job in JOBS:
        if job.key == key:
            return job
    raise KeyError(key)


def by_task(task: str) -> Job:
    """The job with this Celery task name (KeyError if none)."""
    for job in JOBS:
        if job.task == task:
            return job
    raise KeyError(task)


def scheduled() -> tuple[Job, ...]:
    """The jobs Celery beat runs."""
    return tuple(job for job in JOBS if job.scheduled)


def recorded_keys() -> tuple[str, ...]:
    """Keys of the jobs whose recorded runs are read back (``presence_status``, ``/metrics``)."""
    return tuple(job.key for job in JOBS if job.reported)


def console_keys() -> tuple[str, ...]:
    """Keys of the jobs on the console dashboard, each with a duration histogram in /metrics."""
    return tuple(job.key for job in JOBS if job.on_console)


def beat_schedule(source: object = None) -> dict[str, dict[str, Any]]:
    """Celery beat's schedule (``CELERY_BEAT_SCHEDULE``), periods from the app settings.

    ``source``: where the settings are read (see AppSettings); config/settings.py passes
    itself, django.conf.settings being not yet configured then.
    """
    from presence.conf import AppSettings

    conf = AppSettings(source)
    schedule: dict[str, dict[str, Any]] = {}
    for job in scheduled():
        period = job.period(conf)
        entry: dict[str, Any] = {"task": job.task, "schedule": period}
        if job.claims_period:
            # Each scheduled run claims its period: two beats still run it once per period.
            entry["kwargs"] = {"period": period}
        # A run that waited longer than this is superseded by the next one.
        entry["options"] = {"expires": period if job.expires is None else job.expires}
        schedule[job.beat_entry] = entry
    return schedule
