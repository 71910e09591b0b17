"""The message-handler registry: one dispatch for every WebSocket message type.

Applications declare handlers with ``@registry.handler("chat.typing", payload=Schema)`` in
modules their ``AppConfig`` lists in ``presence_handlers``; ``PresenceConfig.ready()`` loads
those lists explicitly (:meth:`HandlerRegistry.load_modules`), so the set of handlers never
depends on import order. A module that fails to import is recorded as a :class:`LoadFailure`
instead of crashing the process; ``presence.handlers.lifecycle`` persists both the handlers
and the failures to the ``RegisteredHandler`` table when a web process starts.

This module holds no database or Redis code: it is the in-process view that dispatch reads.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import inspect
import logging
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from pydantic import BaseModel, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from presence.handlers.deadlines import watchdog
from presence.obs import metrics
from presence.obs.logs import store_outage
from presence.protocol.errors import FrameError
from presence.store.faults import StoreTimeoutError, is_unavailable

if TYPE_CHECKING:
    from presence.handlers.context import HandlerContext

logger = logging.getLogger(__name__)

HandlerFunc = Callable[["HandlerContext", Any], Awaitable[Any] | Any]
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
# Declared versions are dotted integers so they can be ordered ("1.10" > "1.9"); see
# presence.handlers.lifecycle.version_key and docs/handlers.md.
VERSION_RE = re.compile(r"^\d{1,9}(\.\d{1,9}){0,3}$")
DEFAULT_TIMEOUT = 5.0
# Most characters of an import traceback kept for the admin (the log has all of it).
MAX_ERROR_CHARS = 4000
# A handler returns this when it answered (or closed the socket) itself.
NO_REPLY: Any = object()


@dataclass(frozen=True)
class HandlerSpec:
    """Everything the registry knows about one message type."""

    type: str
    func: HandlerFunc
    timeout: float | None
    payload: builtins.type[BaseModel] | None  # `type` is the field above in this scope
    core: bool
    version: str
    description: str
    reply_type: str

    @property
    def path(self) -> str:
        """Dotted path of the handler function."""
        return f"{self.func.__module__}.{self.func.__qualname__}"


def code_version(func: Callable[..., Any]) -> str:
    """A version derived from the handler's source, for handlers that declare none."""
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        source = f"{func.__module__}.{func.__qualname__}"
    return "h-" + hashlib.sha256(source.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LoadFailure:
    """A declared handler module that could not be imported (or whose handlers were invalid).

    ``types`` are the (type, path, version) of handlers the module registered before it
    failed: they were rolled back, and their rows are marked ``failed`` at registration.
    """

    module: str
    error: str
    types: tuple[tuple[str, str, str], ...] = ()


def _first_error_field(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "data"
    loc = ".".join(str(part) for part in errors[0].get("loc", ())) or "data"
    return f"{loc}: {errors[0].get('msg', 'invalid')}"


class HandlerRegistry:
    """Message type -> handler, plus the dispatch every consumer goes through."""

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        self._disabled: frozenset[str] = frozenset()
        self._failures: dict[str, LoadFailure] = {}
        self._loaded: set[str] = set()

    # ----------------------------------------------------------------- registration
    def handler(
        self,
        type: str,  # noqa: A002 - the wire field is called "type"
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        payload: type[BaseModel] | None = None,
        core: bool = False,
        version: str | None = None,
        description: str | None = None,
        reply_type: str = "reply",
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Decorator registering ``func(ctx, data)`` for message ``type``.

        ``data`` is the validated ``payload`` model instance, or the raw dict when no
        ``payload`` is given. Sync functions run in a worker thread, off the event loop.
        ``version`` is a dotted integer ("3", "1.2"); without one, a hash of the source is used.
        Invalid arguments raise ValueError, which fails the whole module (see load_modules).
        """

        def decorator(func: HandlerFunc) -> HandlerFunc:
            self.register(
                HandlerSpec(
                    type=type,
                    func=func,
                    timeout=timeout,
                    payload=payload,
                    core=core,
                    version=version or code_version(func),
                    description=description or (inspect.getdoc(func) or "").split("\n")[0],
                    reply_type=reply_type,
                )
            )
            return func

        return decorator

    def register(self, spec: HandlerSpec) -> None:
        """Add a handler; a second registration of a type is a programming error."""
        self.validate(spec)
        existing = self._handlers.get(spec.type)
        if existing is not None and existing.func is not spec.func:
            raise ValueError(f"message type {spec.type!r} is already handled by {existing.path}")
        self._handlers[spec.type] = spec

    @staticmethod
    def validate(spec: HandlerSpec) -> None:
        """Raise ValueError when ``spec`` could never be served."""
        if not TYPE_RE.match(spec.type) or len(spec.type) > 100:
            raise ValueError(f"invalid message type {spec.type!r}: use dotted lowercase words")
        if not callable(spec.func):
            raise ValueError(f"{spec.type}: handler {spec.func!r} is not callable")
        if spec.timeout is not None and not spec.timeout > 0:
            raise ValueError(f"{spec.type}: timeout must be a positive number of seconds or None")
        if spec.payload is not None and not (
            isinstance(spec.payload, type) and issubclass(spec.payload, BaseModel)
        ):
            raise ValueError(f"{spec.type}: payload must be a pydantic BaseModel subclass")
        if not (VERSION_RE.match(spec.version) or spec.version.startswith("h-")):
            raise ValueError(
                f"{spec.type}: version {spec.version!r} must be dotted integers, e.g. '3' or '1.2'"
            )
        try:
            inspect.signature(spec.func).bind(None, None)
        except TypeError:
            raise ValueError(f"{spec.type}: a handler takes two arguments, (ctx, data)") from None
        except ValueError:
            pass  # no signature to inspect (some builtins): trust the caller

    def unregister(self, type: str) -> None:  # noqa: A002
        """Remove a handler (tests and app teardown)."""
        self._handlers.pop(type, None)

    def load_modules(self, modules: Iterable[str], *, strict: bool = False) -> list[LoadFailure]:
        """Import declared handler modules; each failure is recorded, not raised.

        A module that raises (an import error, or a ValueError from an invalid declaration)
        has the handlers it registered before the error rolled back, so a type is either
        served from a fully imported module or not at all. With ``strict`` (the platform's
        own modules) the error propagates: a web process without heartbeats is useless.
        """
        failures = []
        for module in modules:
            before = set(self._handlers)
            try:
                import_module(module)
            except Exception as exc:
                if strict:
                    raise
                # Python dropped the failed module (and its failed submodules) from
                # sys.modules; helpers it imported successfully stay and keep their handlers.
                added = [
                    self._handlers.pop(t)
                    for t in set(self._handlers) - before
                    if self._handlers[t].func.__module__ not in sys.modules
                ]
                failure = LoadFailure(
                    module=module,
                    error=_format_error(exc),
                    types=tuple(sorted((s.type, s.path, s.version) for s in added)),
                )
                self._failures[module] = failure
                failures.append(failure)
                logger.error(
                    "handler module %s failed to load; its handlers are not served",
                    module,
                    exc_info=exc,
                )
            else:
                self._failures.pop(module, None)
                self._loaded.add(module)
        return failures

    @property
    def failures(self) -> list[LoadFailure]:
        """Declared modules that could not be loaded in this process."""
        return [self._failures[m] for m in sorted(self._failures)]

    @property
    def loaded_modules(self) -> list[str]:
        """Declared modules that were imported successfully."""
        return sorted(self._loaded)

    def get(self, type: str) -> HandlerSpec | None:  # noqa: A002
        """The spec for ``type``, or None."""
        return self._handlers.get(type)

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(sorted(self._handlers.values(), key=lambda s: s.type))

    def types(self) -> list[str]:
        """The registered message types (the metrics' handler labels)."""
        return [spec.type for spec in self]

    def __contains__(self, msg_type: object) -> bool:
        return msg_type in self._handlers

    def as_choices(self) -> list[tuple[str, str]]:
        """(type, description) pairs, e.g. for form fields."""
        return [(s.type, s.description or s.type) for s in self]

    # ----------------------------------------------------------------- live control
    def set_disabled(self, types: frozenset[str]) -> None:
        """Replace the set of disabled types (core types are never disabled)."""
        self._disabled = frozenset(t for t in types if not (t in self and self._handlers[t].core))

    def is_disabled(self, type: str) -> bool:  # noqa: A002
        """Whether an operator disabled ``type``."""
        return type in self._disabled

    @property
    def disabled(self) -> frozenset[str]:
        """The types this process currently refuses with ``handler_disabled``."""
        return self._disabled

    # ----------------------------------------------------------------- dispatch
    def resolve(self, type: str) -> HandlerSpec:  # noqa: A002
        """The spec that serves ``type``, or a FrameError saying why none does."""
        spec = self._handlers.get(type)
        if spec is None:
            raise FrameError("unknown_type", f"unknown message type {type[:64]!r}")
        if type in self._disabled:
            raise FrameError("handler_disabled", f"{type} is disabled by an operator")
        return spec

    async def call(self, spec: HandlerSpec, ctx: HandlerContext, data: dict[str, Any]) -> Any:
        """Validate ``data`` and run the handler with its timeout; errors become FrameError."""
        arg: Any = data
        if spec.payload is not None:
            try:
                arg = spec.payload.model_validate(data)
            except ValidationError as exc:
                raise FrameError("invalid_payload", _first_error_field(exc)) from None
        if inspect.iscoroutinefunction(spec.func):
            call: Awaitable[Any] = spec.func(ctx, arg)
        else:
            call = database_sync_to_async(spec.func, thread_sensitive=False)(ctx, arg)
        # WARNING: hot path. One watchdog timer per loop, not asyncio.timeout() per call.
        dog = watchdog()
        deadline = dog.enter(spec.timeout) if spec.timeout is not None else None
        try:
            result = await call
        except FrameError:
            raise
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired:
                raise  # cancelled from outside (the socket closed): not ours to answer
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise FrameError(
                "handler_timeout", f"{spec.type} did not answer within {spec.timeout} s"
            ) from None
        except (StoreTimeoutError, RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
            if not is_unavailable(exc):
                logger.exception(
                    "handler %s failed (session %s, user %s)",
                    spec.type,
                    ctx.session_id,
                    ctx.user_id,
                )
                raise FrameError(
                    "handler_error", f"{spec.type} failed; the error was logged"
                ) from None
            # The store is away (down, paused, failing over), not the handler: the client may
            # retry later. Counted, and logged once per interval for the whole process.
            metrics.store_unavailable("handler")
            store_outage.failed("handler", exc)
            raise FrameError("unavailable", "presence is unavailable; retry later") from None
        except TimeoutError:
            logger.exception(
                "handler %s raised TimeoutError (session %s)", spec.type, ctx.session_id
            )
            raise FrameError("handler_error", f"{spec.type} failed; the error was logged") from None
        except Exception:
            logger.exception(
                "handler %s failed (session %s, user %s)", spec.type, ctx.session_id, ctx.user_id
            )
            raise FrameError("handler_error", f"{spec.type} failed; the error was logged") from None
        finally:
            if deadline is not None:
                dog.exit(deadline)
        if deadline is not None and deadline.expired:
            # The handler swallowed its cancellation and finished late: still a timeout.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise FrameError(
                "handler_timeout", f"{spec.type} did not answer within {spec.timeout} s"
            )
        return result


def _format_error(exc: BaseException) -> str:
    """The traceback of a failed import, trimmed for the admin to its head and tail."""
    text = "".join(traceback.format_exception(exc)).strip()
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS // 2] + "\n...\n" + text[-MAX_ERROR_CHARS // 2 :]
    return text


registry = HandlerRegistry()
# Frames and handler series are labelled by registered type only (a client cannot invent labels).
metrics.use_handler_types(registry)
