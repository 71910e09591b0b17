"""The one list of background jobs: the periodic Celery tasks and the event log's consumers.

Each :class:`Job` says all the code needs to know of a job: its kind (periodic: beat runs it;
consumer: a long-running reader of a consumer group, ``manage.py presence_consume``), its
Celery name (the wrappers in presence/tasks.py), the short key its lock, run record and
period claim use in Redis (the ``TASK`` of its module), whether beat schedules it and how
(``CELERY_BEAT_SCHEDULE`` is built from here), when it is late, and where it is shown
(``presence_status``, ``/metrics``, ``/readyz``, the console's "Background jobs").

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
    kind: str
    """``periodic`` (beat runs it), ``consumer`` (a long-running reader of a consumer group,
    ``manage.py presence_consume``) or ``on demand`` (started by other code)."""
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
    group: str = ""
    """A consumer's group over the event log (its backlog is shown with it)."""

    @property
    def consumer(self) -> bool:
        """Whether it is a long-running reader of the event log."""
        return self.kind == CONSUMER

    def late_after(self, conf: AppSettings | None = None) -> float | None:
        """Seconds since its last success after which it is late (None: never late).

        A periodic job is late after ``LATE_PERIODS`` periods; a consumer records that it is
        alive every second or so, so it is late (stalled or not running) after
        ``CONSUMER_LATE`` seconds.
        """
        if self.consumer:
            return CONSUMER_LATE
        period = self.period(conf) if self.scheduled else None
        return None if period is None else LATE_PERIODS * period

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


PERIODIC = "periodic"
CONSUMER = "consumer"
ON_DEMAND = "on demand"
# A periodic job is late after this many periods without a finished run.
LATE_PERIODS = 3
# A consumer is late (stalled, or none running) after this many seconds without a read:
# it reads at least once a second (presence/jobs/consumers.py BLOCK_MAX) and records it.
CONSUMER_LATE = 30.0


def _periodic(
    key: str,
    task: str,
    label: str,
    *,
    interval: str,
    beat_entry: str,
    expires: float | None = None,
    on_console: bool = True,
) -> Job:
    """A job beat runs every ``interval``: each run claims its period, runs under its lock
    and is recorded (what every periodic job here does)."""
    return Job(
        key=key,
        kind=PERIODIC,
        task=task,
        label=label,
        interval=interval,
        beat_entry=beat_entry,
        claims_period=True,
        expires=expires,
        locked=True,
        reported=True,
        on_console=on_console,
    )


def _consumer(key: str, task: str, label: str, *, group: str) -> Job:
    """A long-running reader of consumer group ``group``: one reader at a time (its lock),
    recorded, on the console."""
    return Job(
        key=key,
        kind=CONSUMER,
        task=task,
        label=label,
        locked=True,
        reported=True,
        on_console=True,
        group=group,
    )


JOBS: tuple[Job, ...] = (
    _periodic(
        "sweep",
        "presence.sweep_expired",
        "sweep",
        interval="SWEEP_INTERVAL",
        beat_entry="presence-sweep-expired",
    ),
    _periodic(
        "flush",
        "presence.flush_stats",
        "stats flush",
        interval="STATS_FLUSH_INTERVAL",
        beat_entry="presence-flush-stats",
    ),
    _periodic(
        "reap",
        "presence.reap_sessions",
        "session reaper",
        interval="REAP_INTERVAL",
        beat_entry="presence-reap-sessions",
        expires=300.0,
    ),
    # The log readers of ``manage.py presence_consume`` (presence/jobs/consumers.py). Their
    # Celery tasks remain for runs by hand (a one-off drain); beat does not schedule them.
    # Session rows (web processes write them too, within milliseconds, while they live).
    _consumer("sessionlog", "presence.write_sessions", "session writer", group="sessions"),
    # Ghosts: online in Redis, held by no live web process (presence/jobs/reconcile.py).
    _periodic(
        "reconcile",
        "presence.reconcile_connections",
        "ghost reconciliation",
        interval="RECONCILE_INTERVAL",
        beat_entry="presence-reconcile-connections",
        on_console=False,
    ),
    # Server-side hooks (presence/hooks/, docs/hooks.md).
    _consumer("hooks", "presence.send_signals", "signal sender", group="hooks"),
    _consumer(
        "webhooks", "presence.route_webhooks", "webhook router and delivery", group="webhooks"
    ),
    # The webhooks consumer delivers in its own threads; this task delivers an endpoint when
    # other code asks (the admin's replay of dead letters), under the same per-endpoint lock
    # (``webhook-<id>``); its limits and expiry come from presence/hooks/webhooks.py.
    Job(
        key="deliver",
        kind=ON_DEMAND,
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


def consumers() -> tuple[Job, ...]:
    """The long-running readers of the event log."""
    return tuple(job for job in JOBS if job.consumer)


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
