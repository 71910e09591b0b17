"""The WebSocket consumer: authenticate, parse frames, dispatch through the registry, reply.

Protocols v1 and v2 are specified in docs/protocol.md; a client that asks for the
``presence.v2`` subprotocol gets v2. The consumer decodes frames itself (Channels' JSON
consumer raises on bad JSON, which would drop the connection) and never lets an exception
or traceback reach the client.

Presence events do not come through the channel layer: this process's event log reader
(presence/live/eventlog.py) finds the socket in its local index and calls :meth:`deliver`. The
channel layer still carries the messages addressed to this one connection (kick, expiry).

WARNING: the connect path is one Redis round trip (connect.lua) and no SQL; the session
row is written behind from the event log (presence/jobs/sessionlog.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from presence import store
from presence.access.addresses import client_address
from presence.access.auth import TokenAuth, login_hash
from presence.actions import connections as actions
from presence.conf import app_settings
from presence.handlers import FrameError, HandlerContext, registry
from presence.handlers.lifecycle import ensure_control_watcher
from presence.handlers.registry import NO_REPLY
from presence.jobs.sessionlog import ensure_session_writer
from presence.live.batching import get_writer
from presence.live.diffs import Event, Pos, dumps
from presence.live.eager import eager
from presence.live.eventlog import EventLogReader, ensure_reader
from presence.live.inbox import get_inbox
from presence.live.ratelimit import FrameLimiter
from presence.live.switchover import ensure_switchover_watcher
from presence.obs import metrics
from presence.obs.logs import store_outage
from presence.protocol import frames
from presence.protocol.closecodes import (
    CLOSE_EXPIRED,
    CLOSE_FLOODING,
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL_ERROR,
    CLOSE_SERVICE_RESTART,
    CLOSE_TERMINATED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
    REFUSALS,
)
from sessions_app.models import EndReason

logger = logging.getLogger(__name__)


SUBPROTOCOL_V1 = "presence.v1"
SUBPROTOCOL_V2 = "presence.v2"


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class PresenceConsumer(AsyncWebsocketConsumer):
    """One authenticated presence connection (``/ws/presence/``)."""

    user_id: int
    username: str
    session_id: str
    reader: EventLogReader | None = None
    # True once the server closed the socket: ASGI allows no send after websocket.close
    # (uvicorn raises), so later frames and events are ignored instead of crashing the
    # consumer before its disconnect() cleanup runs.
    closing = False
    registered = False
    # 1 or 2 (docs/protocol.md); the fan-out reads it for every event.
    protocol = 1
    # Frames from the event log wait here until sent, in order (see deliver()). Created on
    # demand and dropped when empty: most sockets hold none most of the time.
    _outbox: deque[str] | None = None
    _pump: asyncio.Task[None] | None = None
    _ready = False  # hello was sent: queued frames may go out
    # A client frame is being handled: events wait for its reply, so a client always sees
    # the answer to its request before the events it caused (its own room join, say).
    _handling = False
    # The last status this connection set: what it re-asserts after a store loss.
    status = "online"

    async def connect(self) -> None:
        self.rooms: set[str] = set()
        # room -> its join's write while on its way (presence.handlers.core.room_join)
        self.joining: dict[str, asyncio.Future[int]] = {}
        self.end_reason = EndReason.CLOSED
        # protocol v2: scope -> log position the client is at / diffs held during a snapshot
        self.positions: dict[str, Pos] = {}
        self.pending: dict[str, list[tuple[str, Sequence[Event]]]] = {}
        # A browser fails the handshake unless the server picks one of the subprotocols it
        # offered; one that sent only its token gets none (docs/protocol.md). Chosen before the
        # auth checks: a refused handshake must pick one too, or the page sees 1006 instead of
        # the close code and its error frame.
        offered = self.scope.get("subprotocols") or ()
        if SUBPROTOCOL_V2 in offered:
            self.protocol = 2
        chosen = SUBPROTOCOL_V2 if self.protocol == 2 else None
        if chosen is None and SUBPROTOCOL_V1 in offered:
            chosen = SUBPROTOCOL_V1
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept(subprotocol=chosen)
            if await self._cookie_login_revoked():
                # A kick ended this login session (its row is gone too): say so, as documented.
                await self.close_with(*REFUSALS["session_revoked"])
                return
            await self.close_with(CLOSE_UNAUTHORIZED, "unauthorized", "authentication required")
            return
        if not user.is_active:
            await self.accept(subprotocol=chosen)
            await self.close_with(CLOSE_FORBIDDEN, "forbidden", "this account is disabled")
            return
        self.user_id = int(user.pk)
        self.username = user.get_username()
        self.session_id = str(uuid.uuid4())
        self.limiter = FrameLimiter(
            app_settings.RATE_LIMIT,
            app_settings.RATE_BURST,
            app_settings.FLOOD_DROPS,
            app_settings.FLOOD_WINDOW,
        )
        await self.accept(subprotocol=chosen)
        try:
            async with asyncio.timeout(app_settings.CONNECT_TIMEOUT):
                result = await self._register()
        except (RedisError, TimeoutError) as exc:
            # Without the store nobody could see this connection: say so and let the client
            # retry later, rather than keep a socket that is online for no one. The connect
            # script may have run all the same (a timeout while its answer was on the way):
            # undo it, so the connection does not stay registered until its TTL.
            if store.is_unavailable(exc):  # an outage: one summary per interval, not per socket
                metrics.store_unavailable("connect")
                store_outage.failed("connect", exc)
            else:
                logger.warning("refusing connection %s: the store failed: %r", self.session_id, exc)
            self._forget()
            actions.undo_connect(self.conn_ref)
            await self.close_with(CLOSE_TRY_AGAIN, "unavailable", "presence is unavailable")
            return
        if result.refused:
            self._forget()
            await self.refuse(result)
            return
        self.registered = True
        metrics.connection_opened(self)
        hello: dict[str, Any] = {
            "type": "hello",
            "session_id": self.session_id,
            "user": {"id": self.user_id, "username": self.username},
            "heartbeat_interval": app_settings.HEARTBEAT_INTERVAL,
            "presence_ttl": app_settings.TTL,
        }
        if self.protocol == 2:
            hello["protocol"] = 2
        await self.send_frame(hello)
        self._ready = True
        if self._outbox:
            self._start_pump()

    async def _register(self) -> store.ConnectResult:
        """Start this loop's background readers, index the socket, run connect.lua."""
        # Operators' enable/disable, the event log and the session-row writer run in this
        # event loop as tasks started here; only a loop's first connection waits for them.
        await ensure_control_watcher()
        self.reader = await ensure_reader()
        await ensure_session_writer()
        ensure_switchover_watcher()  # Sentinel: follow a new primary at once
        # In the index before the change is logged, so this socket gets its own join;
        # nothing is sent to it before hello (deliver() holds frames until _ready).
        self.reader.register(self)
        return await actions.do_connect_user(
            cid=self.session_id,
            uid=self.user_id,
            username=self.username,
            channel=self.channel_name,
            ip=client_address(self.scope),
            user_agent=_header(self.scope, b"user-agent"),
            gate=self._gate(),
        )

    async def _cookie_login_revoked(self) -> bool:
        """Whether the handshake's session cookie names a revoked login session (a kick
        deletes the session, so the cookie alone no longer authenticates anyone)."""
        key = (self.scope.get("cookies") or {}).get(settings.SESSION_COOKIE_NAME, "")
        if not key:
            return False
        try:
            async with store.bounded():
                return await store.alogin_revoked(login_hash(key))
        except (RedisError, OSError, TimeoutError):
            return False  # refused either way: "unauthorized" then

    def _gate(self) -> store.ConnectGate:
        """The configured limits, with what this handshake's credentials are."""
        token: TokenAuth | None = self.scope.get("presence_token")
        if token is not None:
            return store.ConnectGate.from_settings(
                issued_ms=token.issued_ms, token_id=token.token_id, login=token.login
            )
        session = self.scope.get("session")
        return store.ConnectGate.from_settings(
            login=login_hash(getattr(session, "session_key", None))
        )

    async def refuse(self, result: store.ConnectResult) -> None:
        """Close a connection the gate refused, with the documented code and reason."""
        metrics.connect_refused(result.refused)
        code, error, message = REFUSALS[result.refused]
        if result.retry_after_ms:
            seconds = max(1, -(-result.retry_after_ms // 1000))
            await self.send_frame(
                {
                    "type": "error",
                    "id": None,
                    "code": error,
                    "message": message,
                    "retry_after": seconds,
                }
            )
            await self.close(code=code, reason=message[:120])
            return
        await self.close_with(code, error, message)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one socket: ASGI messages in order, channel-layer messages via the inbox.

        WARNING: per-connection cost. Channels' own ``__call__`` waits on the ASGI receive
        and on a per-socket channel-layer receive at once (``await_many_dispatch``: a task
        per source and an ``asyncio.wait`` per message, plus channels_redis' receive tasks
        and queue per socket). Here the ASGI messages are awaited directly, and the
        process's :class:`~presence.live.inbox.Inbox` hands this consumer the few messages sent to
        its channel name (kick, expiry). Routing, auth middleware, ``channel_name`` and
        ``channel_layer.send()`` to it work as before; channel-layer groups are not used.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        inbox = get_inbox(self.channel_layer)
        if inbox is None:  # another channel layer: Channels' generic loop
            await super().__call__(scope, receive, send)
            return
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        inbox.register(self.channel_name, self)
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        except Exception:
            await self.fail()
        finally:
            inbox.unregister(self.channel_name)
            if self.registered:
                # Reached without websocket.disconnect: the consumer raised or was cancelled
                # (server shutdown). The cleanup runs in its own task so a cancellation of
                # this one cannot stop it half-way.
                await asyncio.shield(
                    asyncio.get_running_loop().create_task(self.disconnect(CLOSE_INTERNAL_ERROR))
                )

    async def dispatch_from_inbox(self, message: dict[str, Any]) -> None:
        """A channel-layer message (kick, expiry, ending), in its own task from the inbox."""
        try:
            await self.dispatch(message)
        except Exception:
            await self.fail()

    async def fail(self) -> None:
        """A bug, not a client: log it, close with 1011 and end the connection at once,
        rather than leave the user online until the sweep."""
        logger.exception("consumer failed (session %s)", getattr(self, "session_id", "-"))
        self.end_reason = EndReason.ERROR
        await self.close(code=CLOSE_INTERNAL_ERROR)
        try:
            await self.disconnect(CLOSE_INTERNAL_ERROR)  # a no-op when it ran already
        except Exception:
            logger.exception("cleanup of failed consumer %s failed", self.session_id)

    @property
    def conn_ref(self) -> store.ConnRef:
        """This connection as the store sees it."""
        return store.ConnRef(self.session_id, self.user_id, tuple(sorted(self.rooms)))

    def liveness(self) -> store.Liveness:
        """What this open socket proves, for a store that lost it (actions/recovery.py)."""
        return store.Liveness(
            conn=self.conn_ref,
            username=self.username,
            channel=self.channel_name,
            status=self.status,
            ip=client_address(self.scope) or "",
            login=self._gate().login,
        )

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Route an ASGI or channel-layer message to its handler method.

        WARNING: hot path. Channels' own dispatch first runs close_old_connections through
        sync_to_async on every message: a hop to the one thread-sensitive executor thread, so
        all frames of all sockets of the process queue behind each other there (measured: most
        of the server's CPU per heartbeat, and a latency tail growing with the socket count).
        This consumer reaches the database only through database_sync_to_async, which closes
        stale connections around each call itself, so the hop is skipped.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # ----------------------------------------------------------------- frames in
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.registered or self.closing:
            return
        size = frames.text_size(text_data) if text_data is not None else len(bytes_data or b"")
        if size > app_settings.WS_MAX_MESSAGE_BYTES:
            # uvicorn enforces --ws-max-size itself; this covers other servers and tests.
            self.end_reason = EndReason.ERROR
            await self.close(code=CLOSE_TOO_BIG)
            return
        allowed, notify, flooding = self.limiter.check()
        if not allowed:
            get_writer().count(store.error_field("rate_limited"))
            metrics.frame_dropped()
            if flooding:
                self.end_reason = EndReason.ERROR
                await self.close_with(CLOSE_FLOODING, "flooding", "too many frames; slow down")
            elif notify:
                await self.send_error(None, "rate_limited", "too many frames; some were dropped")
            return
        await self.handle_frame(text_data, bytes_data)

    async def handle_frame(self, text_data: str | None, bytes_data: bytes | None) -> None:
        """Decode one frame, dispatch it and answer; every failure becomes an error frame."""
        self._handling = True
        try:
            await self._handle_frame(text_data, bytes_data)
        finally:
            self._handling = False
            if self._outbox and self._pump is None and self._ready:
                self._start_pump()

    async def _handle_frame(self, text_data: str | None, bytes_data: bytes | None) -> None:
        frame_id: str | int | None = None
        msg_type = ""
        writer = get_writer()
        started = time.perf_counter()
        try:
            if text_data is None:
                raise FrameError("bad_frame", "binary frames are not supported; send JSON text")
            frame = frames.decode(text_data)
            raw_id = frame.get("id")
            if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
                frame_id = raw_id if not isinstance(raw_id, str) else raw_id[:128]
            elif raw_id is not None:
                raise FrameError("bad_frame", "id must be a string or an integer")
            msg_type = frame.get("type")  # type: ignore[assignment]
            if not isinstance(msg_type, str) or not msg_type:
                msg_type = ""
                raise FrameError("bad_frame", "a frame needs a string 'type'")
            data = frame.get("data", {})
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise FrameError("invalid_payload", "data must be a JSON object")
            spec = registry.resolve(msg_type)
            ctx = HandlerContext(self, frame_id)
            writer.count(store.message_field(msg_type))
            try:
                result = await registry.call(spec, ctx, data)
            finally:
                for name in store.handler_call_fields(spec.type, time.perf_counter() - started):
                    writer.count(name)
                metrics.handler_called(spec.type, time.perf_counter() - started)
            metrics.frame_ok(spec.type)
        except FrameError as err:
            metrics.frame_error(msg_type, err.code)
            writer.count(store.error_field(err.code))
            if err.code in ("handler_error", "handler_timeout"):
                writer.count(store.handler_error_field(msg_type, err.code))
            await self.send_error(frame_id, err.code, err.message)
            return
        except Exception:
            # Nothing a client sends may end its connection with a traceback: a failure
            # outside any handler (the registry, the counters) is answered like a handler's.
            logger.exception(
                "frame handling failed (session %s, user %s)", self.session_id, self.user_id
            )
            metrics.frame_error(msg_type, "internal_error")
            writer.count(store.error_field("internal_error"))
            await self.send_error(frame_id, "internal_error", "the server failed; it was logged")
            return
        if result is NO_REPLY:
            return
        reply: dict[str, Any] = {"type": spec.reply_type, "id": frame_id}
        if result is not None:
            reply["data"] = result
        await self.send_frame(reply)

    # ----------------------------------------------------------------- fan-out
    def deliver(self, text: str) -> None:
        """Queue a frame from the event log; it is sent in order, after hello.

        Never blocks the reader: a send waits while the client is not reading (the server's
        write buffer is full), so each socket drains its own queue in a task started on
        demand. A socket that lets PRESENCE_OUTBOX_MAX frames pile up is closed with 1013
        rather than growing without bound.
        """
        if self.closing:
            return
        box = self._outbox
        if box is None:
            box = self._outbox = deque()
        if self.reader is not None and len(box) >= self.reader.outbox_max:
            self._overflow()
            return
        box.append(text)
        if self._ready and self._pump is None and not self._handling:
            self._start_pump()

    def _start_pump(self) -> None:
        """Send the queued frames: at once while sends do not wait (the socket is writable),
        the rest after a send that waits, from its task (presence/live/eager.py)."""
        box = self._outbox
        while box and not self.closing:
            try:
                self._pump = eager(self.send_text(box.popleft()))
            except Exception:  # as a pump task's failure was: logged, the rest left queued
                logger.exception("session %s: sending a queued frame failed", self.session_id)
                return
            if self._pump is not None:
                self._pump.add_done_callback(self._pumped)
                return
        if not self._outbox:
            self._outbox = None

    def _pumped(self, task: asyncio.Task[None]) -> None:
        self._pump = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.error(
                "session %s: sending a queued frame failed", self.session_id, exc_info=error
            )
            return
        if self._outbox and not self.closing:
            self._start_pump()

    def _overflow(self) -> None:
        logger.warning(
            "session %s: %d frames unread, closing with 1013",
            self.session_id,
            app_settings.OUTBOX_MAX,
        )
        self._outbox = None
        self.positions.clear()
        self.end_reason = EndReason.ERROR
        # The close itself waits until the socket drains or drops (ASGI sends are ordered).
        asyncio.get_running_loop().create_task(self.close(code=CLOSE_TRY_AGAIN))

    def join_scope(self, room: str) -> None:
        """Receive the events of ``room`` (local index only; the caller logs the join)."""
        if self.reader is not None:
            self.reader.index(self).join(self, room)

    def leave_scope(self, room: str) -> None:
        """Stop receiving the events of ``room``."""
        if self.reader is not None:
            self.reader.index(self).leave(self, room)
        self.positions.pop(room, None)
        self.pending.pop(room, None)

    def _forget(self) -> None:
        """Out of the local index, queued frames dropped."""
        if self.reader is not None:
            self.reader.unregister(self)
        self._outbox = None

    # ----------------------------------------------------------------- frames out
    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Serialize and send one frame (nothing once the socket is closing)."""
        await self.send_text(dumps(frame))

    async def send_text(self, text: str) -> None:
        """Send a frame already serialized (nothing once the socket is closing)."""
        if self.closing:
            return
        try:
            # Straight to the server's send: Channels' send() adds two coroutine layers per
            # frame and nothing else for text (WARNING: per frame of the fan-out).
            await self.base_send({"type": "websocket.send", "text": text})
        except OSError:
            # ASGI: a send on a connection the client already closed raises an OSError
            # subclass (uvicorn's ClientDisconnected), e.g. an event dispatched while the
            # client's close was arriving. Drop the frame: that close's websocket.disconnect
            # is queued and disconnect() must still run, which an exception here would prevent.
            self.closing = True

    async def send_error(self, frame_id: str | int | None, code: str, message: str) -> None:
        """Send ``{"type": "error", ...}``; the connection stays open."""
        await self.send_frame({"type": "error", "id": frame_id, "code": code, "message": message})

    async def close_with(self, code: int, error_code: str, message: str) -> None:
        """Send an error frame carrying the reason, then close with ``code``.

        The frame comes first because some servers (daphne) drop close reasons.
        """
        await self.send_error(None, error_code, message)
        await self.close(code=code, reason=message[:120])

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket, once: a second close (e.g. a kick racing an expiry) is a no-op."""
        if self.closing:
            return
        self.closing = True
        try:
            await super().close(code=code, reason=reason)
        except OSError:
            pass  # the client closed first (see send_frame); its disconnect follows

    # ----------------------------------------------------------------- channel-layer events
    async def session_kick(self, event: dict[str, Any]) -> None:
        """An operator ended this session from the admin: terminal.

        The sender revoked the credentials in Redis already (presence.actions.revocation); a socket
        that logged in with a session cookie also ends that login session here, the one
        place that knows its key, so the browser is logged out of HTTP too.
        """
        self.end_reason = EndReason.KICKED
        await self.close_with(CLOSE_TERMINATED, "terminated", "session terminated by an operator")
        session = self.scope.get("session")
        if self.scope.get("presence_token") is None and getattr(session, "session_key", None):
            try:
                await database_sync_to_async(session.delete)()
            except Exception:  # the socket is closed either way; the revocation holds
                logger.exception("could not end the login session of %s", self.session_id)

    async def session_end(self, event: dict[str, Any]) -> None:
        """The credentials of this socket stopped being good (presence.actions.revocation)."""
        self.end_reason = EndReason(event["reason"])
        await self.close_with(int(event["code"]), str(event["error"]), str(event["message"]))

    async def presence_expire(self, event: dict[str, Any]) -> None:
        """The expiry sweep ended this session (the socket was silent past the TTL)."""
        await self.expire()

    async def expire(self) -> None:
        """Close with 4408: this connection's presence lapsed and its session was ended."""
        self.end_reason = EndReason.TIMEOUT
        await self.close_with(CLOSE_EXPIRED, "presence_expired", "presence expired; reconnect")

    # ----------------------------------------------------------------- end
    async def disconnect(self, code: int) -> None:
        metrics.socket_closed(self, code)
        self._forget()
        if not self.registered:
            return
        self.registered = False
        if code == CLOSE_SERVICE_RESTART and self.end_reason == EndReason.CLOSED:
            self.end_reason = EndReason.SERVER_SHUTDOWN
        metrics.connection_ended(self, code)
        # A join whose write is on its way may land before the end: end.lua takes it out too.
        self.rooms.update(self.joining)
        # Logs the leaves and the `close` the session row is ended from; a no-op when the
        # sweep ended the connection first (exactly one of them ends it). Never given up: an
        # end Redis cannot take now stays queued in this process and is retried.
        await actions.do_end_connection(self.conn_ref, reason=self.end_reason.value)
