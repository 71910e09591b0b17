"""Session-cookie handshakes authenticated in batches: one session and one user query for
all the handshakes that arrive together, not two queries (and a thread hop) each.

The browser's path authenticates with Django's session cookie. Channels resolves each
handshake's session and user in the one thread-sensitive executor thread, one handshake at a
time: in a connect storm of cookie clients the handshakes queue behind each other's two
queries, and the connect costs three to four times the bare Channels consumer's CPU.

Here every cookie handshake of this event loop hands its (not yet loaded) session to one
:class:`HandshakeBatcher`. Handshakes that arrive while a batch is in the database wait for
the next one; each batch is one executor hop running ``SELECT … FROM django_session WHERE
session_key IN (…)`` and ``SELECT … FROM auth_user WHERE id IN (…)``. The rules are
Django's (``django.contrib.auth.get_user``, as Channels applies them): the session must be
unexpired, its backend configured, the user able to authenticate (``is_active`` for the
model backend) and the session's auth hash the user's current one, else the handshake is
anonymous (and a session with a stale hash is flushed). Nothing is cached: a logout, a
password change, a deactivation or a kick (which deletes the login session) takes effect
for the next handshake exactly as before. Other session engines or authentication backends
take Channels' own per-handshake path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import import_module
from typing import Any, Generic, TypeVar

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore as DBSessionStore
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from presence.loops import LoopLocal

# Most handshakes resolved by one pair of queries; bounds the IN lists.
BATCH_MAX = 500


T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Resolves what one event loop's handshakes ask of the database, a batch at a time.

    ``resolve`` (sync, ORM) takes the items of a batch and returns their results in order;
    it runs in the thread-sensitive executor, one hop per batch.
    """

    def __init__(self, resolve: Callable[[list[T]], list[R]]) -> None:
        self._resolve = resolve
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # batches resolved (tests and the bench read it)

    async def one(self, item: T) -> R:
        """``item``'s result, resolved with the other items of the moment."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # One loop iteration lets handshakes that arrived together join the same batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
            try:
                results = await database_sync_to_async(self._resolve)([i for i, _ in batch])
            except Exception as exc:  # the database is down: these handshakes fail
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class HandshakeBatcher(Batcher[Any, Any]):
    """The cookie handshakes' batcher: sessions in, users out (:func:`resolve_users`)."""

    def __init__(self) -> None:
        super().__init__(resolve_users)

    async def user_for(self, session: Any) -> Any:
        """The user ``session`` (the handshake's ``scope["session"]``) is logged in as, else
        ``AnonymousUser``; the session is loaded too (the consumer reads its key)."""
        return await self.one(session)


def _batchable() -> bool:
    """Whether sessions live in the database table (the engine whose rows this reads)."""
    engine = import_module(settings.SESSION_ENGINE)
    return issubclass(getattr(engine, "SessionStore", object), DBSessionStore) and not hasattr(
        engine.SessionStore,
        "cache_key_prefix",  # cached_db reads its cache first
    )


def resolve_users(sessions: list[Any]) -> list[Any]:
    """The users of ``sessions`` (Channels' lazy session objects), in order; sync (ORM).

    WARNING: on the connect path of every cookie client: two queries for the whole batch.
    """
    if not _batchable():
        return [get_user.func({"session": session}) for session in sessions]
    stores = [session._wrapped if hasattr(session, "_wrapped") else session for session in sessions]
    data = _load_sessions(stores)
    user_model = get_user_model()
    wanted: dict[Any, str] = {}  # user pk -> backend path
    slow: set[int] = set()  # sessions resolved the per-handshake way (other backends)
    for i, values in enumerate(data):
        backend_path = str(values.get(BACKEND_SESSION_KEY, ""))
        if backend_path not in settings.AUTHENTICATION_BACKENDS:
            continue
        if type(load_backend(backend_path)).get_user is not ModelBackend.get_user:
            slow.add(i)
            continue
        pk = _user_pk(values)
        if pk is not None:
            wanted[pk] = backend_path
    users = {user.pk: user for user in user_model._default_manager.filter(pk__in=list(wanted))}
    out: list[Any] = []
    for i, (session, values) in enumerate(zip(sessions, data, strict=True)):
        if i in slow:
            out.append(get_user.func({"session": session}))
            continue
        out.append(_verified(session, values, users, wanted) or AnonymousUser())
    return out


def _load_sessions(stores: list[Any]) -> list[dict[str, Any]]:
    """Load every session in one query, as ``SessionStore.load()`` would one by one."""
    keys = [store.session_key for store in stores if store.session_key]
    rows = {}
    if keys:
        model = stores[0].get_model_class()
        found = model.objects.filter(session_key__in=keys, expire_date__gt=timezone.now())
        rows = dict(found.values_list("session_key", "session_data"))
    out = []
    for store in stores:
        raw = rows.get(store.session_key) if store.session_key else None
        values = store.decode(raw) if raw is not None else {}
        if raw is None:
            store._session_key = None  # as load() does for a missing or expired session
        store._session_cache = values
        out.append(values)
    return out


def _verified(
    session: Any, values: dict[str, Any], users: dict[Any, Any], wanted: dict[Any, str]
) -> Any:
    """The session's user when it may authenticate and the session's hash is current."""
    pk = _user_pk(values)
    user = users.get(pk)
    if user is None or pk not in wanted:
        return None
    backend = load_backend(wanted[pk])
    if not backend.user_can_authenticate(user):  # type: ignore[attr-defined]
        return None
    session_hash = values.get(HASH_SESSION_KEY)
    if not (session_hash and constant_time_compare(session_hash, user.get_session_auth_hash())):
        session.flush()  # what Channels' get_user does with a stale session
        return None
    return user


def _user_pk(values: dict[str, Any]) -> Any:
    """The user id a session names, None when it names none (or a malformed one)."""
    if SESSION_KEY not in values:
        return None
    try:
        return get_user_model()._meta.pk.to_python(values[SESSION_KEY])
    except Exception:  # ValidationError: anonymous, where Channels' get_user would raise
        return None


_batchers: LoopLocal[HandshakeBatcher] = LoopLocal(lambda loop: HandshakeBatcher())

# The running loop's batcher.
get_batcher = _batchers.get
