"""The read replica: operator reads go to the ``replica`` database when one is configured.

``DATABASE_REPLICA_URL`` (config/settings.py) adds the ``replica`` alias and installs
:class:`ReplicaRouter`. Only reads that asked for it move: a view wrapped in
:func:`reads_from_replica` (the console's pages, the dashboard and its feed, the stats
admin's lists, the HTTP API's presence reads) reads from the replica while it answers a GET
or HEAD. Everything else stays on ``default``: every write, every read of a POST (a write
path: what it reads decides what it writes, so it must not lag), every read inside
``transaction.atomic``, and everything when no replica is configured.

A replica lags its primary by a little; the pages that read it show minutes-old statistics
and session history, for which a second of lag is invisible.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model

REPLICA = "replica"
SAFE_METHODS = ("GET", "HEAD")

_replica_reads: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "presence_replica_reads", default=False
)

P = ParamSpec("P")
R = TypeVar("R")


def replica_configured() -> bool:
    """Whether a ``replica`` database is configured (``DATABASE_REPLICA_URL``)."""
    return REPLICA in connections.settings


@contextlib.contextmanager
def replica_reads() -> Iterator[None]:
    """Reads in this block may go to the replica (outside transactions; see the module)."""
    token = _replica_reads.set(True)
    try:
        yield
    finally:
        _replica_reads.reset(token)


def reads_from_replica(view: Callable[P, R]) -> Callable[P, R]:
    """Decorate a view (request first, or second after an admin site): its GET and HEAD
    requests read from the replica; other methods read from the primary."""

    if inspect.iscoroutinefunction(view):
        return _areads_from_replica(view)

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        request = next((a for a in args[:2] if hasattr(a, "method")), None)
        if request is None or getattr(request, "method", None) not in SAFE_METHODS:
            return view(*args, **kwargs)
        with replica_reads():
            response = view(*args, **kwargs)
            # A TemplateResponse renders after the view returns, and its lazy querysets run
            # then (the admin's date hierarchy, a page's rows): render it while reads may
            # still go to the replica.
            render = getattr(response, "render", None)
            if callable(render) and not getattr(response, "is_rendered", True):
                render()
            return response

    return wrapper


def _areads_from_replica(view: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`reads_from_replica` of an async view (the HTTP API's). The mark is a context
    variable, and ``sync_to_async`` runs the ORM with a copy of the caller's context, so the
    view's database reads see it."""

    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = next((a for a in args[:2] if hasattr(a, "method")), None)
        if request is None or getattr(request, "method", None) not in SAFE_METHODS:
            return await view(*args, **kwargs)
        with replica_reads():
            return await view(*args, **kwargs)

    return wrapper


class ReplicaRouter:
    """Sends reads marked by :func:`replica_reads` to ``replica``; nothing else moves."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        if not _replica_reads.get() or not replica_configured():
            return None
        if connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return None  # a read inside a write path sees the primary's own writes
        return REPLICA

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        # An object read from the replica is saved to the primary, never to the replica
        # (Django would otherwise write it back where it was read from).
        instance = hints.get("instance")
        if instance is not None and getattr(instance._state, "db", None) == REPLICA:
            return DEFAULT_DB_ALIAS
        return None

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # The same rows on both: relating an object read here to one read there is fine.
        dbs = {obj1._state.db, obj2._state.db}
        return True if dbs <= {DEFAULT_DB_ALIAS, REPLICA} else None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        # The replica follows the primary's schema through replication, never by migrate.
        return False if db == REPLICA else None
