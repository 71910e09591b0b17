"""The local fan-out index: which of this process's sockets are in which scope.

A scope is a room name, or :data:`GLOBAL` for the global stream every connection receives
(with ``PRESENCE_GLOBAL_EVENTS``). The event log reader (presence/live/eventlog.py) looks a scope up
here for every event and sends to the sockets it finds: the Redis work per event is one read
by one reader per process, whatever the room's size; the per-socket work is a dictionary
lookup and a send, all in this process.

The index is plain data, touched only from its event loop; it keeps a reverse map so that
unregistering a socket removes it from every scope it is in, whatever the socket believes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

GLOBAL = ""  # room names are 1-64 characters, so the empty string names no room

S = TypeVar("S")  # a socket; hashed by identity


class LocalIndex(Generic[S]):
    """Scope -> this process's subscribers in it, and the reverse."""

    def __init__(self) -> None:
        self._members: dict[str, set[S]] = {}
        self._scopes: dict[S, set[str]] = {}

    def register(self, sub: S) -> None:
        """Start tracking ``sub`` (in no scope yet)."""
        self._scopes.setdefault(sub, set())

    def unregister(self, sub: S) -> None:
        """Forget ``sub`` and take it out of every scope."""
        for scope in self._scopes.pop(sub, ()):
            self._drop(scope, sub)

    def join(self, sub: S, scope: str) -> None:
        """Put a registered ``sub`` in ``scope`` (idempotent)."""
        scopes = self._scopes.get(sub)
        if scopes is None:
            raise KeyError("join() of a subscriber that is not registered")
        scopes.add(scope)
        self._members.setdefault(scope, set()).add(sub)

    def leave(self, sub: S, scope: str) -> None:
        """Take ``sub`` out of ``scope`` (idempotent)."""
        scopes = self._scopes.get(sub)
        if scopes is not None and scope in scopes:
            scopes.discard(scope)
            self._drop(scope, sub)

    def _drop(self, scope: str, sub: S) -> None:
        members = self._members.get(scope)
        if members is not None:
            members.discard(sub)
            if not members:
                del self._members[scope]  # no empty sets left behind by churn

    def members(self, scope: str) -> set[S] | frozenset[S]:
        """The subscribers in ``scope`` (do not mutate; copy before awaiting)."""
        return self._members.get(scope) or frozenset()

    def scopes_of(self, sub: S) -> frozenset[str]:
        """The scopes ``sub`` is in."""
        return frozenset(self._scopes.get(sub, ()))

    def scopes(self) -> list[str]:
        """Every scope with at least one subscriber."""
        return list(self._members)

    def __contains__(self, sub: object) -> bool:
        return sub in self._scopes

    def __len__(self) -> int:
        return len(self._scopes)

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._scopes))
