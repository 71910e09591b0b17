"""Handler lifecycle: persist the registry at start-up, and carry operator control live.

Three jobs, each with one entry point:

* :func:`register_at_startup` (called once by ``presence.asgi``): every web process writes
  its handlers to ``RegisteredHandler`` with a compare-and-set on the version
  (:func:`register_handler`), records modules that failed to load as ``failed`` rows,
  publishes the operators' disabled set to Redis and marks its rows ``active``.
* :func:`do_disable_handlers` / :func:`do_enable_handlers` (the admin actions): change the
  row status, the source of truth, then publish the disabled set to Redis after commit.
* :func:`ensure_control_watcher` (the consumer, at connect): one task per event loop polls
  the Redis control keys every ``CONTROL_POLL_INTERVAL`` s and applies changes to the
  in-process registry. Dispatch itself only reads a local frozenset: no Redis round trip
  and no SQL per message.

Version order (docs/handlers.md): declared versions are dotted integers compared as numbers
("1.10" > "1.9", "1" == "1.0"); any declared version beats a code hash ("h-..."); two
different hashes have no order, so the later registration wins; an unknown version (a module
that failed before declaring anything) is the lowest of all.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from presence import store
from presence.handlers.registry import VERSION_RE, HandlerRegistry, LoadFailure, registry
from presence.loops import LoopLocal
from presence.models import HandlerStatus, RegisteredHandler

logger = logging.getLogger(__name__)

# How often each event loop polls the control keys: the bound on how long an admin change
# takes to reach a running process (the issue asks for 2 s; this leaves room for slow Redis).
CONTROL_POLL_INTERVAL = 0.5
# Optimistic CAS retries: a retry only happens when another writer changed the row between
# our read and our write, so even dozens of processes starting together settle in a few.
CAS_ATTEMPTS = 50
# The longest message type the table holds (RegisteredHandler.type.max_length).
TYPE_MAX = 100


# --------------------------------------------------------------------------- versions
def version_key(version: str) -> tuple[int, tuple[int, ...]]:
    """Sort key of a version: (rank, numbers). Rank 2 declared, 1 code hash, 0 unknown ("")."""
    if VERSION_RE.match(version):
        numbers = [int(part) for part in version.split(".")]
        while len(numbers) > 1 and numbers[-1] == 0:
            numbers.pop()  # "1.0" is "1"
        return 2, tuple(numbers)
    return (1, ()) if version else (0, ())


def compare_versions(new: str, old: str) -> int:
    """1 when ``new`` supersedes ``old``, 0 when they are the same, -1 when it is older."""
    if new == old:
        return 0
    key_new, key_old = version_key(new), version_key(old)
    if key_new == key_old == (1, ()):
        # Two different code hashes cannot be ordered: the newer registration wins, which
        # during a deploy is normally the newer code. Declare a version to get a real order.
        return 1
    return (key_new > key_old) - (key_new < key_old)


def process_id() -> str:
    """``host:pid`` of this process, stored as ``last_registered_by``."""
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


# --------------------------------------------------------------------------- registration (CAS)
class Outcome(enum.StrEnum):
    """What :func:`register_handler` did to the row of one type."""

    CREATED = "created"  # no row existed
    UPGRADED = "upgraded"  # our version was higher: the row now describes our handler
    REFRESHED = "refreshed"  # same version: only status and last_registered_by were touched
    STALE = "stale"  # the row holds a higher version: left alone


def _next_status(current: str, *, core: bool, failed: bool, upgraded: bool) -> str:
    # An operator's "disabled" survives deploys and failures; only core rows cannot carry it.
    if current == HandlerStatus.DISABLED and not core:
        return HandlerStatus.DISABLED
    if failed:
        return HandlerStatus.FAILED
    if current == HandlerStatus.ACTIVE and not upgraded:
        return HandlerStatus.ACTIVE
    return HandlerStatus.PENDING


def register_handler(
    *,
    type: str,  # noqa: A002 - the model field
    path: str,
    version: str,
    by: str,
    description: str = "",
    core: bool = False,
    failed: bool = False,
    error: str = "",
) -> Outcome:
    """Write one type's row unless the database already holds a higher version.

    A compare-and-set without locks, so it holds on SQLite and PostgreSQL alike: read the
    row, decide in Python (versions do not sort as SQL strings), then UPDATE ... WHERE the
    version and status are still what we read; zero rows updated means another writer won
    the race, so read again. A missing row is INSERTed; the unique ``type`` turns a
    concurrent insert into an IntegrityError, after which we compare against the winner.
    New and upgraded rows are ``pending`` until :func:`register_all` activates them;
    ``failed`` registrations set status ``failed`` and keep ``error``.
    """
    for _ in range(CAS_ATTEMPTS):
        row = (
            RegisteredHandler.objects.filter(type=type)
            .values("pk", "version", "status", "core")
            .first()
        )
        now = timezone.now()
        if row is None:
            try:
                with transaction.atomic():  # a savepoint: PostgreSQL aborts on IntegrityError
                    RegisteredHandler.objects.create(
                        type=type,
                        path=path[:255],
                        description=description[:255],
                        core=core,
                        version=version,
                        status=HandlerStatus.FAILED if failed else HandlerStatus.PENDING,
                        error=error,
                        last_registered_by=by,
                    )
            except IntegrityError:
                continue
            return Outcome.CREATED
        order = compare_versions(version, row["version"])
        if order < 0:
            return Outcome.STALE
        upgraded = order > 0
        row_core = core if upgraded and not failed else row["core"]
        changes: dict[str, object] = {
            "status": _next_status(row["status"], core=row_core, failed=failed, upgraded=upgraded),
            "error": error if failed else "",
            "last_registered_by": by,
            "updated_at": now,
        }
        if upgraded:
            changes.update(version=version, path=path[:255])
            if not failed:  # a failed import knows neither description nor core flag
                changes.update(description=description[:255], core=core)
        updated = RegisteredHandler.objects.filter(
            pk=row["pk"], version=row["version"], status=row["status"]
        ).update(**changes)
        if updated:
            return Outcome.UPGRADED if upgraded else Outcome.REFRESHED
    raise RuntimeError(f"could not register {type!r}: {CAS_ATTEMPTS} conflicting writes in a row")


def _register_failure(failure: LoadFailure, *, by: str, seen: set[str]) -> dict[str, Outcome]:
    """Mark what a failed module serves as ``failed``, keeping its error for the admin."""
    outcomes = {}
    # 1. handlers the module declared before it raised: their version is known.
    for type_, path, version in failure.types:
        outcomes[type_] = register_handler(
            type=type_, path=path, version=version, by=by, failed=True, error=failure.error
        )
    # 2. types the module served in an earlier run: same version as the row (we cannot
    #    know better), so the row says this process could not load them.
    previous = RegisteredHandler.objects.filter(path__startswith=failure.module + ".").exclude(
        type__in=[*outcomes, *seen]
    )
    for row in previous.values("type", "path", "version"):
        outcomes[row["type"]] = register_handler(
            type=row["type"],
            path=row["path"],
            version=row["version"],
            by=by,
            failed=True,
            error=failure.error,
        )
    # 3. nothing known at all: a placeholder row named after the module, so it is visible.
    if not outcomes:
        name = failure.module[:TYPE_MAX]
        outcomes[name] = register_handler(
            type=name, path=failure.module, version="", by=by, failed=True, error=failure.error
        )
    return outcomes


@dataclass
class RegistrationReport:
    """What one process's start-up registration did."""

    by: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    failed: dict[str, Outcome] = field(default_factory=dict)
    activated: int = 0
    published: bool = False
    skipped: str = ""

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        parts = [f"{n} {o}" for o, n in sorted(counts.items())]
        return (
            f"{len(self.outcomes)} handlers ({', '.join(parts) or 'none'}), "
            f"{len(self.failed)} failed, {self.activated} activated"
        )


def _table_exists() -> bool:
    return RegisteredHandler._meta.db_table in connection.introspection.table_names()


def disabled_types() -> list[str]:
    """Types operators disabled, from the database (the source of truth)."""
    return list(
        RegisteredHandler.objects.filter(status=HandlerStatus.DISABLED, core=False).values_list(
            "type", flat=True
        )
    )


def publish_disabled(reg: HandlerRegistry = registry, *, only_if_changed: bool = False) -> None:
    """Copy the database's disabled set to Redis (every process picks it up) and to ``reg``.

    ``only_if_changed``: see :func:`presence.store.publish_disabled_handlers`.
    """
    seen: list[str] = []

    def read() -> list[str]:
        seen[:] = disabled_types()
        return seen

    store.publish_disabled_handlers(store.get_redis(), read, only_if_changed=only_if_changed)
    reg.set_disabled(frozenset(seen))


def register_all(reg: HandlerRegistry = registry, *, by: str | None = None) -> RegistrationReport:
    """Persist ``reg`` (handlers and load failures), publish the control state, activate.

    Skipped with a log line when the table does not exist yet (``migrate`` not run).
    """
    report = RegistrationReport(by=by or process_id())
    if not _table_exists():
        report.skipped = "the presence_registeredhandler table does not exist; run migrate"
        logger.warning("handler registration skipped: %s", report.skipped)
        return report
    for spec in reg:
        report.outcomes[spec.type] = register_handler(
            type=spec.type,
            path=spec.path,
            version=spec.version,
            by=report.by,
            description=spec.description,
            core=spec.core,
        )
    for failure in reg.failures:
        report.failed.update(_register_failure(failure, by=report.by, seen=set(report.outcomes)))
    # Placeholders of modules that load now are obsolete: their real types have rows.
    RegisteredHandler.objects.filter(
        type__in=reg.loaded_modules, path__in=reg.loaded_modules, status=HandlerStatus.FAILED
    ).delete()
    try:
        # Rebuilds Redis from the database if they differ (e.g. Redis lost its data).
        publish_disabled(reg, only_if_changed=True)
        report.published = True
    except Exception:
        # Serve anyway (with the database's disabled set); rows stay `pending` so operators
        # see that this start-up did not complete.
        reg.set_disabled(frozenset(disabled_types()))
        logger.exception("could not publish the disabled handlers to Redis")
    else:
        # Only rows this process wrote: a newer row belongs to the process that wrote it.
        ours = [t for t, outcome in report.outcomes.items() if outcome != Outcome.STALE]
        report.activated = RegisteredHandler.objects.filter(
            type__in=ours,
            status=HandlerStatus.PENDING,
            last_registered_by=report.by,
        ).update(status=HandlerStatus.ACTIVE, updated_at=timezone.now())
    stale = sorted(t for t, o in report.outcomes.items() if o == Outcome.STALE)
    if stale:
        logger.warning("the database holds newer versions of %s than this process", stale)
    logger.info("handler registration by %s: %s", report.by, report.summary())
    return report


_startup_lock = threading.Lock()
_startup_done = False


def _register_safely() -> RegistrationReport | None:
    try:
        return register_all()
    except Exception:
        logger.exception("handler registration failed; serving the handlers loaded anyway")
        return None


def _register_in_thread(result: list[RegistrationReport | None]) -> None:
    try:
        result.append(_register_safely())
    finally:
        connections.close_all()  # this thread's own connections; they would stay open


def register_at_startup() -> RegistrationReport | None:
    """Run :func:`register_all` once per process; called by the ASGI module when it loads.

    Servers like uvicorn import the application inside their running event loop, where
    Django refuses ORM calls, so the work then runs in a thread (and we wait for it: nothing
    is served before the import returns). A failure is logged, never raised: the process
    still serves the handlers it loaded.
    """
    global _startup_done
    with _startup_lock:
        if _startup_done:
            return None
        _startup_done = True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _register_safely()
    result: list[RegistrationReport | None] = []
    worker = threading.Thread(
        target=_register_in_thread, args=(result,), name="presence-handler-registration"
    )
    worker.start()
    worker.join()
    return result[0] if result else None


# --------------------------------------------------------------------------- operator control
@dataclass
class ControlResult:
    """What an enable/disable action did; ``published`` is None until the commit happened."""

    changed: list[RegisteredHandler] = field(default_factory=list)
    unchanged: list[RegisteredHandler] = field(default_factory=list)
    refused_core: list[RegisteredHandler] = field(default_factory=list)
    published: bool | None = None
    publish_error: str = ""


def _publish_after_commit(result: ControlResult) -> Callable[[], None]:
    def publish() -> None:
        try:
            publish_disabled()
            result.published = True
        except Exception as exc:
            # The rows are saved; running processes learn of it at the next change or restart.
            logger.exception("could not publish the disabled handlers to Redis")
            result.published = False
            result.publish_error = str(exc)

    return publish


def do_disable_handlers(handlers: Iterable[RegisteredHandler]) -> ControlResult:
    """Disable handlers (never core ones); every web process refuses them within ~1 s."""
    result = ControlResult()
    with transaction.atomic():
        for handler in handlers:
            if handler.core:
                result.refused_core.append(handler)
                continue
            # Conditional UPDATE: a concurrent change of the same row cannot be lost.
            done = (
                RegisteredHandler.objects.filter(pk=handler.pk, core=False)
                .exclude(status=HandlerStatus.DISABLED)
                .update(status=HandlerStatus.DISABLED, updated_at=timezone.now())
            )
            (result.changed if done else result.unchanged).append(handler)
        if result.changed:
            transaction.on_commit(_publish_after_commit(result))
    return result


def do_enable_handlers(handlers: Iterable[RegisteredHandler]) -> ControlResult:
    """Enable disabled handlers: back to ``active``, or ``failed`` if their import failed."""
    result = ControlResult()
    with transaction.atomic():
        for handler in handlers:
            done = RegisteredHandler.objects.filter(
                pk=handler.pk, status=HandlerStatus.DISABLED
            ).update(
                status=Case(
                    When(error="", then=Value(HandlerStatus.ACTIVE)),
                    default=Value(HandlerStatus.FAILED),
                ),
                updated_at=timezone.now(),
            )
            (result.changed if done else result.unchanged).append(handler)
        if result.changed:
            transaction.on_commit(_publish_after_commit(result))
    return result


# --------------------------------------------------------------------------- live propagation
class ControlWatcher:
    """Keeps one event loop's view of the disabled set in step with Redis.

    Polling, not pub/sub: one pipelined GET + SMEMBERS per ``CONTROL_POLL_INTERVAL`` per
    process, no extra connection, and it heals by itself after a Redis restart or a missed
    notice. When nothing was ever published (``version`` is None, e.g. Redis was emptied),
    the process keeps the state it has rather than enabling everything.
    """

    def __init__(self, reg: HandlerRegistry) -> None:
        self.registry = reg
        self.ready: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def refresh(self) -> bool:
        """Apply the published set if it differs from ours; True when something changed."""
        version, disabled = await store.aread_handler_control(store.get_async_redis())
        if version is None or disabled == self.registry.disabled:
            return False
        before = self.registry.disabled
        self.registry.set_disabled(disabled)
        if self.registry.disabled == before:
            return False  # only core types differed, which are never disabled
        logger.info("disabled handlers now %s (control version %s)", sorted(disabled), version)
        return True

    async def _initial(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            logger.warning("could not read the handler control keys: %s", exc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_POLL_INTERVAL)
            try:
                await self.refresh()
            except Exception as exc:
                if not self._failing:  # one line per outage, not two per second
                    logger.warning("handler control poll failing: %s", exc)
                self._failing = True
            else:
                self._failing = False

    def stop(self) -> None:
        """Cancel the polling task (tests)."""
        for task in (self.ready, self._task):
            if task is not None:
                task.cancel()


_watchers: LoopLocal[ControlWatcher] = LoopLocal()


async def ensure_control_watcher(reg: HandlerRegistry = registry) -> ControlWatcher:
    """Start this event loop's watcher on first use; waits for its first read (once)."""

    def start(loop: asyncio.AbstractEventLoop) -> ControlWatcher:
        watcher = ControlWatcher(reg)
        watcher.ready = loop.create_task(watcher._initial())
        return watcher

    watcher = _watchers.get(start)
    assert watcher.ready is not None
    await asyncio.shield(watcher.ready)
    return watcher


# --------------------------------------------------------------------------- latency
def latency_quantile(histogram: dict[str, int], q: float) -> float | None:
    """Upper bound (s) of the histogram bucket holding quantile ``q``; None without data.

    ``histogram`` maps bucket upper bounds (``store.LATENCY_BUCKETS`` as text, plus "inf")
    to counts; the answer is "at most this long", as precise as the buckets are.
    """
    buckets = sorted((float(bound), int(n)) for bound, n in (histogram or {}).items() if n)
    total = sum(n for _, n in buckets)
    if total <= 0:
        return None
    rank, seen = q * total, 0
    for bound, n in buckets:
        seen += n
        if seen >= rank:
            return bound
    return buckets[-1][0]
