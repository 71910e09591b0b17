"""Sending the Django signals of presence.signals from the event log (the signal sender of
``manage.py presence_consume``, presence/hooks/readers.py; by hand, the Celery task
``presence.send_signals``).

Guarantees (docs/hooks.md):

* **At least once.** Entries are read through the consumer group ``hooks`` and acknowledged
  (XACK) only after every receiver of every event of the entry returned. A reader killed
  mid-batch leaves its entries pending; the reader that takes over reads them again first.
* **In order per user.** Entries are handled in log order. When a receiver raises, the
  user is *held*: that entry and every later entry of the same user stay pending, while
  other users' entries go on. Held users are retried after an exponential back-off with
  jitter (the hold lives in Redis, ``{P}:hooks:holds``); on a retry every receiver is
  called again, hence "receivers must be idempotent".
* **Failures visible.** Each failing (event, receiver) is a ``HookFailure`` row (admin:
  "Hook failures") with its error and attempts; after ``PRESENCE_HOOKS_RETRY_FOR`` the event
  is given up (``gave_up``), acknowledged, and the user's later events go on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, transaction
from django.utils import timezone

from presence import store
from presence.conf import app_settings
from presence.hooks import replicas
from presence.hooks.events import HookEvent, backoff_seconds, events_of
from presence.jobs import groups
from presence.jobs.periodic import RunReport, run_locked
from presence.models import HookFailure

logger = logging.getLogger(__name__)

TASK = "hooks"


@dataclass
class SignalReport(RunReport):
    """What one run of the signal sender did."""

    batches: int = 0
    entries: int = 0
    events: int = 0  # events sent (every receiver returned or not)
    failed: int = 0  # events with a failing receiver (kept pending, retried later)
    held: int = 0  # entries left pending behind a held user
    unreplicated: int = 0  # entries left pending until a replica has them (hooks/replicas.py)
    given_up: int = 0
    trimmed: int = 0
    malformed: int = 0
    capped: bool = False

    def totals(self) -> dict[str, int]:
        return {**super().totals(), "events_total": self.events, "failed_total": self.failed}


def receiver_name(receiver: Any) -> str:
    """``module.qualname`` of a receiver (what the failure rows name)."""
    func = getattr(receiver, "__func__", receiver)
    module = getattr(func, "__module__", "?")
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


def send_event(event: HookEvent) -> list[tuple[str, BaseException]]:
    """Send ``event`` to its type's signal, then ``presence_event``; every receiver is called
    even when one raises. Returns the failures as (receiver name, exception)."""
    from presence.signals import SIGNALS, presence_event

    failures: list[tuple[str, BaseException]] = []
    for signal in (SIGNALS[event.type], presence_event):
        for receiver, result in signal.send_robust(sender=event.type, event=event):
            if isinstance(result, BaseException):
                failures.append((receiver_name(receiver), result))
    return failures


def record_failures(
    event: HookEvent, failures: list[tuple[str, BaseException]], attempts: int, *, gave_up: bool
) -> None:
    """Write the failures of one attempt (one row per event and receiver)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            for name, exc in failures:
                attempt = {
                    "type": event.type,
                    "user_id": event.user_id,
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "attempts": attempts,
                    "last_failed_at": now,
                    "gave_up": gave_up,
                }
                HookFailure.objects.update_or_create(
                    event_id=event.id,
                    receiver=name[:255],
                    defaults=attempt,
                    create_defaults={**attempt, "first_failed_at": now},
                )
    except DatabaseError:
        # The hold in Redis still retries the event; only the admin's view of it is missing.
        logger.exception("hooks: could not record the failure of %s", event.id)


def _mark_recovered(event_ids: list[str]) -> None:
    try:
        HookFailure.objects.filter(event_id__in=event_ids, gave_up=False).update(recovered=True)
    except DatabaseError:
        logger.exception("hooks: could not mark failures recovered")


class Sender:
    """One run's state: the holds read at its start and the users held during it."""

    def __init__(self, client: Any, report: SignalReport, *, strict: bool = False) -> None:
        self.client = client
        self.report = report
        # strict: reading new entries while older ones may wait pending (the long-running
        # reader): a held user's entries wait even when the hold is due, since the retry of
        # the older held entries comes first, in the reader's next scan of its pending ones.
        self.strict = strict
        self.holds = store.read_hook_holds(client)
        self.blocked: set[str] = set()  # users whose later entries wait in this run

    def handle(self, entries: list[store.GroupEntry], now_ms: int) -> list[str]:
        """Send the signals of a batch; returns the ids to acknowledge."""
        ack: list[str] = []
        released: list[str] = []
        recovered: list[str] = []
        # Entries their primary cannot show on a replica may vanish with it (a failover's
        # old primary): they wait, and their users' later entries with them (the order).
        _, unconfirmed = replicas.split_replicated(entries)
        waiting = {e.id for e in unconfirmed}
        self.report.unreplicated += len(waiting)
        for entry in entries:
            if entry.id in waiting:
                if uid_of := entry.fields.get("u"):
                    self.blocked.add(uid_of)
                continue
            if not entry.fields:
                self.report.trimmed += 1
                ack.append(entry.id)
                continue
            try:
                evs = events_of(entry)
            except (KeyError, ValueError) as exc:
                logger.warning("hooks: malformed entry %s skipped: %r", entry.id, exc)
                self.report.malformed += 1
                ack.append(entry.id)
                continue
            if not evs:
                ack.append(entry.id)
                continue
            uid = entry.fields["u"]
            hold = self.holds.get(uid)
            if uid in self.blocked or (hold is not None and (self.strict or hold.due_ms > now_ms)):
                self.blocked.add(uid)
                self.report.held += 1
                continue
            failed = self._send(evs, hold, now_ms)
            if failed is None:
                ack.append(entry.id)
                if hold is not None:
                    del self.holds[uid]
                    released.append(uid)
                    recovered += [ev.id for ev in evs]
            elif failed:
                ack.append(entry.id)  # given up
                self.holds.pop(uid, None)
                released.append(uid)
            else:
                self.blocked.add(uid)
        store.clear_hook_holds(self.client, released)
        if recovered:
            _mark_recovered(recovered)
        return ack

    def _send(self, evs: list[HookEvent], hold: store.HookHold | None, now_ms: int) -> bool | None:
        """None: every receiver returned; False: held for a retry; True: given up."""
        failures: list[tuple[HookEvent, list[tuple[str, BaseException]]]] = []
        for ev in evs:
            self.report.events += 1
            failed = send_event(ev)
            if failed:
                failures.append((ev, failed))
        if not failures:
            return None
        self.report.failed += len(failures)
        attempts = (hold.attempts if hold else 0) + 1
        first = hold.first_ms if hold else now_ms
        give_up = now_ms - first >= app_settings.HOOKS_RETRY_FOR * 1000
        for ev, failed in failures:
            record_failures(ev, failed, attempts, gave_up=give_up)
        uid = str(evs[0].user_id)
        if give_up:
            self.report.given_up += 1
            logger.error("hooks: gave up on %s after %d attempts", evs[0].id, attempts)
            return True
        delay = backoff_seconds(
            attempts,
            base=app_settings.HOOKS_BACKOFF_BASE,
            cap=app_settings.HOOKS_BACKOFF_MAX,
            rand=random.random(),  # noqa: S311 - jitter, not a secret
        )
        new = store.HookHold(now_ms + int(delay * 1000), attempts, first)
        self.holds[uid] = new
        store.set_hook_hold(self.client, uid, new)
        logger.warning(
            "hooks: receiver failed on %s (attempt %d), user %s held %.1f s",
            evs[0].id,
            attempts,
            uid,
            delay,
        )
        return False


def drain(report: SignalReport) -> SignalReport:
    """One bounded pass over the log (pending entries first, then new ones)."""
    client = store.get_redis()
    sender = Sender(client, report)
    reading = groups.Reading()
    for entries in groups.batches(
        store.HOOKS_GROUP, count=app_settings.HOOKS_BATCH, reading=reading
    ):
        ack = sender.handle(entries, store.now_ms())
        store.ack_group(store.HOOKS_GROUP, ack)
        report.entries += len(entries)
    report.batches, report.capped = reading.batches, reading.capped
    return report


def send_signals() -> SignalReport:
    """One run under the lock; a run that finds the lock held is counted skipped."""
    report = run_locked(TASK, groups.TIME_LIMIT * 1000, SignalReport(), drain)
    if report.failed or report.given_up or report.malformed:
        logger.info("hooks: %s", report)
    return report
