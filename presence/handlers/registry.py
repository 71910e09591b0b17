"""The message-handler registry: one dispatch for every WebSocket message type.

Applications declare handlers with ``@registry.handler("chat.typing", payload=Schema)`` in
modules their ``AppConfig`` lists in ``presence_handlers``; ``PresenceConfig.ready()`` imports
those lists explicitly, so the set of handlers never depends on import order.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from .context import HandlerContext

logger = logging.getLogger(__name__)

HandlerFunc = Callable[["HandlerContext", Any], Awaitable[Any] | Any]
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
DEFAULT_TIMEOUT = 5.0
# A handler returns this when it answered (or closed the socket) itself.
NO_REPLY: Any = object()


class FrameError(Exception):
    """Raised by dispatch or a handler: answered with ``{"type": "error", "code": ...}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class HandlerSpec:
    """Everything the registry knows about one message type."""

    type: str
    func: HandlerFunc
    timeout: float | None
    payload: type[BaseModel] | None
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
        if not TYPE_RE.match(spec.type):
            raise ValueError(f"invalid message type {spec.type!r}: use dotted lowercase words")
        existing = self._handlers.get(spec.type)
        if existing is not None and existing.func is not spec.func:
            raise ValueError(f"message type {spec.type!r} is already handled by {existing.path}")
        self._handlers[spec.type] = spec

    def unregister(self, type: str) -> None:  # noqa: A002
        """Remove a handler (tests and app teardown)."""
        self._handlers.pop(type, None)

    def get(self, type: str) -> HandlerSpec | None:  # noqa: A002
        """The spec for ``type``, or None."""
        return self._handlers.get(type)

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(sorted(self._handlers.values(), key=lambda s: s.type))

    def __contains__(self, type: object) -> bool:
        return type in self._handlers

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
            call = sync_to_async(spec.func, thread_sensitive=False)(ctx, arg)
        deadline = asyncio.timeout(spec.timeout)
        try:
            async with deadline:
                return await call
        except FrameError:
            raise
        except TimeoutError:
            if deadline.expired():
                raise FrameError(
                    "handler_timeout", f"{spec.type} did not answer within {spec.timeout} s"
                ) from None
            logger.exception("handler %s raised TimeoutError (session %s)", spec.type, ctx.session_id)
            raise FrameError("handler_error", f"{spec.type} failed; the error was logged") from None
        except Exception:
            logger.exception(
                "handler %s failed (session %s, user %s)", spec.type, ctx.session_id, ctx.user_id
            )
            raise FrameError("handler_error", f"{spec.type} failed; the error was logged") from None


registry = HandlerRegistry()
