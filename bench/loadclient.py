"""The load client: several OS processes, each an asyncio loop of ``websockets`` clients.

The coordinating process (:class:`Fleet`) sends each worker a command over a pipe and collects
the answers; all timestamps are ``time.monotonic()``, which is one clock for every process of
the machine, so the coordinator can compare them across workers.

The machine has two cores shared with the server, so the client is kept cheap: frames are
decoded only when needed (heartbeat acks, replies, and presence diffs when a scenario tracks
views) and then with orjson (a 5,000-user sync decodes in 1.2 ms against the json module's
4.8; decoding was a quarter of the client's CPU in the storm with views), sockets send no
WebSocket pings (the server pings, as for browsers), and each worker spreads its source
addresses over 127.0.0.0/8 so that tens of thousands of sockets never run out of ephemeral
ports.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import resource
import time
import traceback
from array import array
from collections.abc import Awaitable, Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

MASK64 = (1 << 64) - 1
HEARTBEAT_ACK_BYTES = b'"heartbeat.ack"'
# An ack is {"type":"heartbeat.ack","id":<n>} (and a server time): far below this.
ACK_MAX_BYTES = 256
SYNC_ID = "sync"
SYNC_FRAME = json.dumps({"type": "presence.sync", "id": SYNC_ID, "data": {"room": None}})
Seq = tuple[int, int]


def id_mix(uid: int) -> int:
    """A well-mixed 64-bit image of a user id (splitmix64)."""
    x = (uid + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def view_hash(uids: Iterable[int]) -> int:
    """Hash of a set of user ids, kept up to date in O(1) per join or leave.

    A sum of mixed ids: adding or removing one id adds or subtracts its image, so a client
    compares its view with the truth without sorting thousands of ids on every frame.
    """
    return sum(id_mix(u) for u in uids) & MASK64


def parse_seq(value: Any) -> Seq | None:
    """A Redis stream id ``"ms-n"`` as an integer pair (they compare in that order)."""
    if not isinstance(value, str) or "-" not in value:
        return None
    ms, _, n = value.partition("-")
    try:
        return int(ms), int(n)
    except ValueError:
        return None


class Client:
    """One WebSocket connection and what the scenarios track about it."""

    __slots__ = (
        "ack_waiter",
        "changed",
        "hash",
        "next_id",
        "pending",
        "reader",
        "sched",
        "seq",
        "tracks",
        "uid",
        "view",
        "waiters",
        "ws",
    )

    def __init__(self, uid: int, ws: ClientConnection, tracks: bool = True) -> None:
        self.uid = uid
        self.ws = ws
        # Whether this client decodes presence frames and keeps its view (the sampled
        # clients of Worker.connect); the others only count what they receive.
        self.tracks = tracks
        self.next_id = 0
        # heartbeat id -> the time it was scheduled (open loop) or sent (closed loop)
        self.sched: dict[int, float] = {}
        self.ack_waiter: asyncio.Future[None] | None = None
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # The global view (v2): ids online, their hash, when it last changed, the stream
        # position it reflects (None while a presence.sync is outstanding) and the diffs
        # that arrived meanwhile.
        self.view: set[int] = set()
        self.hash = 0
        self.changed = 0.0
        self.seq: Seq | None = None
        self.pending: list[dict[str, Any]] = []
        self.reader: asyncio.Task[None] | None = None


class Worker:
    """The state of one load-client process; each public coroutine is a command."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count
        self.clients: list[Client] = []
        self.latencies = array("d")
        self.recording = False
        self.frames = 0
        self.acked = 0
        self.track_views = False
        self.stats = {"resyncs": 0, "truncated": 0, "sync_errors": 0, "reader_errors": 0}
        self._addr = 0
        self._users: dict[int, Any] = {}
        self._sessions: dict[int, str] = {}  # uid -> session key (cookie clients)
        self._tasks: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ connecting
    def _local_host(self) -> str:
        """The next source address: 127.<worker+1>.x.y, one per socket.

        Each source address has its own ephemeral port range, so spreading sockets over
        127.0.0.0/8 (all of it is loopback on Linux) keeps repeated connect storms clear of
        ports still in TIME_WAIT.
        """
        n = self._addr
        self._addr = (n + 1) % 62500
        return f"127.{self.index + 1}.{n // 250}.{n % 250 + 1}"

    async def _mint(self, uids: list[int]) -> dict[int, str]:
        """Fresh platform tokens (they expire after 60 s, so each phase mints its own)."""
        missing = [u for u in uids if u not in self._users]
        if missing:
            self._users.update(await asyncio.to_thread(_load_users, missing))
        from presence.access.auth import mint_token

        return {u: mint_token(self._users[u]) for u in uids}

    async def _login(self, uids: list[int]) -> dict[int, str]:
        """A logged-in Django session per user (a browser's cookie), made once and kept."""
        missing = [u for u in uids if u not in self._sessions]
        if missing:
            self._sessions.update(await asyncio.to_thread(_create_sessions, missing))
        return {u: self._sessions[u] for u in uids}

    async def connect(
        self,
        uids: list[int],
        url: str,
        origin: str,
        subprotocol: str | None,
        sync: bool,
        concurrency: int,
        token: bool,
        cookie: bool = False,
        track_every: int = 1,
    ) -> dict[str, Any]:
        """Open one socket per user id; returns when each has its hello (or failed).

        ``url`` may hold ``{uid}`` and ``{token}``. With ``sync`` each socket asks for the
        global view (``presence.sync``) right after its hello, and every ``track_every``-th
        of them (the first, and then evenly over ``uids``) decodes what it receives and
        keeps its view up to date. The server sends the same frames to every socket
        whether it decodes them or not; sampling keeps the clients' O(n²) decoding (each
        of n views learns about n users) from taking the machine's cores from the server
        under test. With ``cookie`` each socket sends its user's session cookie (the
        browser's path).
        """
        if track_every < 1:
            raise ValueError("track_every must be at least 1")
        tracked = set(uids[::track_every])
        tokens = await self._mint(uids) if token else {}
        cookies = await self._login(uids) if cookie else {}
        self.track_views = self.track_views or sync
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        hellos: list[float] = []
        v2 = 0
        started, cpu = time.monotonic(), time.process_time()

        async def one(uid: int) -> None:
            nonlocal v2
            async with gate:
                try:
                    ws = await connect(
                        url.format(uid=uid, token=tokens.get(uid, "")),
                        origin=origin,  # type: ignore[arg-type]
                        additional_headers=(
                            {"Cookie": f"sessionid={cookies[uid]}"} if uid in cookies else None
                        ),
                        subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
                        compression=None,
                        max_queue=None,
                        max_size=None,
                        proxy=None,
                        open_timeout=120,
                        ping_interval=None,
                        close_timeout=20,
                        local_addr=(self._local_host(), 0),
                    )
                    hello = await asyncio.wait_for(ws.recv(), 120)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
            hellos.append(time.monotonic())
            if not isinstance(hello, str) or '"hello"' not in hello:
                errors.append(f"first frame is not hello: {hello!r}"[:200])
            if isinstance(hello, str) and '"protocol":2' in hello.replace(" ", ""):
                v2 += 1
            client = Client(uid, ws, tracks=uid in tracked)
            client.changed = time.monotonic()
            self.clients.append(client)
            client.reader = asyncio.create_task(self._read(client))
            if sync:
                try:
                    await ws.send(SYNC_FRAME)
                except ConnectionClosed:
                    pass

        await asyncio.gather(*(one(u) for u in uids))
        # Thousands of long-lived sockets make every full collection of this process scan
        # millions of objects (measured: client stalls of 200-400 ms in the middle of a
        # phase). Freezing them leaves the collector only what the phase itself allocates.
        gc.collect()
        gc.freeze()
        return {
            "opened": len(hellos),
            "failed": len(errors),
            "errors": errors[:5],
            "started": started,
            "last_hello": max(hellos, default=started),
            "v2_hellos": v2,
            # Client CPU shows whether a phase was bound by the client (e.g. decoding syncs).
            "cpu_s": time.process_time() - cpu,
        }

    async def close_all(self) -> dict[str, Any]:
        """Close every socket (a clean close: the server sees it at once)."""
        started = time.monotonic()
        clients, self.clients = self.clients, []
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
        readers = [c.reader for c in clients if c.reader is not None]
        await asyncio.gather(*readers, return_exceptions=True)
        self.track_views = False
        return {"closed": len(clients), "started": started, "done": time.monotonic()}

    # ------------------------------------------------------------------ frames in
    async def _read(self, client: Client) -> None:
        # Frames stay bytes (no UTF-8 decoding; orjson reads bytes) and only small ones are
        # searched for an ack: in a storm with views each client receives O(n) bytes of
        # syncs and diffs (1.5 GB per phase for 5,000 clients, measured), which the clients
        # that do not track a view only drop. The server only sends text frames.
        recv = client.ws.recv
        try:
            while True:
                message = await recv(decode=False)
                self.frames += 1
                if len(message) <= ACK_MAX_BYTES and HEARTBEAT_ACK_BYTES in message:
                    self._on_ack(client, message)
                elif (self.track_views and client.tracks) or client.waiters:
                    self._on_frame(client, orjson.loads(message))
        except ConnectionClosed:
            pass
        except Exception:
            self.stats["reader_errors"] += 1

    def _on_ack(self, client: Client, message: bytes) -> None:
        now = time.monotonic()
        sent = client.sched.pop(orjson.loads(message).get("id"), None)
        if sent is not None:
            self.acked += 1
            if self.recording:
                self.latencies.append(now - sent)
        waiter = client.ack_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_frame(self, client: Client, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in ("reply", "error"):
            frame_id = str(frame.get("id"))
            waiter = client.waiters.pop(frame_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            if frame_id == SYNC_ID:
                if kind == "reply":
                    self._apply_sync(client, frame.get("data") or {})
                else:
                    self.stats["sync_errors"] += 1
        elif not self.track_views or frame.get("room") is not None:
            return
        elif kind == "presence.diff":
            self._apply_diff(client, frame)
        elif kind == "presence.state":
            self._replace_view(client, (u["id"] for u in frame.get("users", ())))
            client.seq = parse_seq(frame.get("seq"))

    def _replace_view(self, client: Client, uids: Iterable[int]) -> None:
        client.view = set(uids)
        new_hash = view_hash(client.view)
        if new_hash != client.hash:
            client.hash = new_hash
            client.changed = time.monotonic()

    def _apply_sync(self, client: Client, data: dict[str, Any]) -> None:
        users = data.get("users") or []
        if int(data.get("count", len(users))) > len(users):
            self.stats["truncated"] += 1  # the view can never converge: raise the list limit
        self._replace_view(client, (u["id"] for u in users))
        client.seq = parse_seq(data.get("seq"))
        pending, client.pending = client.pending, []
        for diff in pending:
            self._apply_diff(client, diff)

    def _apply_diff(self, client: Client, diff: dict[str, Any]) -> None:
        if client.seq is None:  # a sync is outstanding: keep it for after the reply
            client.pending.append(diff)
            return
        seq = parse_seq(diff.get("seq"))
        if seq is None or seq <= client.seq:
            return
        prev = parse_seq(diff.get("prev"))
        if prev is not None and prev > client.seq:
            # A gap: events between our position and this diff are missing. Resync from
            # state, as the protocol says, rather than guess.
            self.stats["resyncs"] += 1
            client.seq = None
            client.pending = [diff]
            task = asyncio.ensure_future(self._send_quietly(client, SYNC_FRAME))
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)
            return
        before = client.hash
        for user in diff.get("join", ()):
            uid = user["id"]
            if uid not in client.view:
                client.view.add(uid)
                client.hash = (client.hash + id_mix(uid)) & MASK64
        for user in diff.get("leave", ()):
            uid = user["id"]
            if uid in client.view:
                client.view.discard(uid)
                client.hash = (client.hash - id_mix(uid)) & MASK64
        client.seq = seq
        if client.hash != before:
            client.changed = time.monotonic()

    @staticmethod
    async def _send_quietly(client: Client, text: str) -> None:
        try:
            await client.ws.send(text)
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ heartbeats
    async def _lag_monitor(self, stop: asyncio.Event, tick: float = 0.01) -> float:
        """Worst lateness of this loop's timers while ``stop`` is unset (client-side stalls)."""
        worst = 0.0
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(tick)
            worst = max(worst, time.monotonic() - before - tick)
        return worst

    async def _with_monitor(self, work: Awaitable[Any]) -> float:
        stop = asyncio.Event()
        monitor = asyncio.create_task(self._lag_monitor(stop))
        try:
            await work
        finally:
            stop.set()
        return await monitor

    async def _drain_acks(self, grace: float) -> int:
        """Wait up to ``grace`` s for outstanding acks; returns how many never came."""
        deadline = time.monotonic() + grace
        # A poll: acks arrive on many sockets and no single event says the last one came.
        while time.monotonic() < deadline and any(c.sched for c in self.clients):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        missing = sum(len(c.sched) for c in self.clients)
        for c in self.clients:
            c.sched.clear()
        return missing

    async def heartbeats(
        self, start_at: float, interval: float, duration: float, grace: float
    ) -> dict[str, Any]:
        """Open loop: each socket beats every ``interval`` s on a fixed schedule.

        Sockets are spread evenly over the interval across all workers. Latency is measured
        from the scheduled send time, so a stalled client or server cannot hide its own
        delay by sending late (no coordinated omission).
        """
        self.latencies = array("d")
        self.recording = True
        end = start_at + duration
        total = max(1, len(self.clients) * self.count)
        sent = 0

        async def beat(client: Client, first: float) -> None:
            nonlocal sent
            due = first
            while due < end:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                hid = client.next_id
                client.next_id += 1
                client.sched[hid] = due
                try:
                    await client.ws.send(f'{{"type":"heartbeat","id":{hid}}}')
                except ConnectionClosed:
                    return
                sent += 1
                due += interval

        async def run() -> None:
            await asyncio.gather(
                *(
                    beat(c, start_at + interval * (self.index + i * self.count) / total)
                    for i, c in enumerate(self.clients)
                )
            )

        lag = await self._with_monitor(run())
        missing = await self._drain_acks(grace)
        self.recording = False
        return {
            "sent": sent,
            "missing": missing,
            "latencies": self.latencies.tobytes(),
            "client_lag_max": lag,
            "closed": sum(1 for c in self.clients if c.ws.close_code is not None),
        }

    async def saturate(self, start_at: float, duration: float) -> dict[str, Any]:
        """Closed loop: each socket sends its next heartbeat as soon as the last is acked."""
        self.latencies = array("d")
        self.recording = True
        end = start_at + duration
        loop = asyncio.get_running_loop()
        acked_before = self.acked

        async def run_one(client: Client) -> None:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            while time.monotonic() < end:
                waiter: asyncio.Future[None] = loop.create_future()
                client.ack_waiter = waiter
                hid = client.next_id
                client.next_id += 1
                client.sched[hid] = time.monotonic()
                try:
                    await client.ws.send(f'{{"type":"heartbeat","id":{hid}}}')
                    await asyncio.wait_for(waiter, 30)
                except (ConnectionClosed, TimeoutError):
                    return

        async def run() -> None:
            await asyncio.gather(*(run_one(c) for c in self.clients))

        lag = await self._with_monitor(run())
        finished = time.monotonic()
        missing = await self._drain_acks(1.0)
        self.recording = False
        return {
            "acked": self.acked - acked_before,
            "finished": finished,
            "missing": missing,
            "latencies": self.latencies.tobytes(),
            "client_lag_max": lag,
        }

    # ------------------------------------------------------------------ rooms and views
    async def request(
        self, position: int, frame_type: str, data: dict[str, Any], wait_s: float = 60
    ) -> dict[str, Any]:
        """Send one request frame from client ``position`` and wait for its answer."""
        client = self.clients[position]
        client.next_id += 1
        frame_id = f"r{client.next_id}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        client.waiters[frame_id] = waiter
        sent = time.monotonic()
        await client.ws.send(json.dumps({"type": frame_type, "id": frame_id, "data": data}))
        answer = await asyncio.wait_for(waiter, wait_s)
        return {
            "type": answer.get("type"),
            "code": answer.get("code"),
            "ms": (time.monotonic() - sent) * 1000,
        }

    async def request_all(
        self, frame_type: str, data: dict[str, Any], concurrency: int, skip: int = 0
    ) -> dict[str, Any]:
        """The same request from every client from position ``skip`` on, ``concurrency`` at once."""
        gate = asyncio.Semaphore(concurrency)
        kinds: dict[str, int] = {}

        async def one(position: int) -> None:
            async with gate:
                try:
                    answer = await self.request(position, frame_type, data)
                    kind = str(answer["type"])
                    if answer["code"]:
                        kind += f":{answer['code']}"
                except Exception as exc:
                    kind = type(exc).__name__
                kinds[kind] = kinds.get(kind, 0) + 1

        await asyncio.gather(*(one(p) for p in range(skip, len(self.clients))))
        return kinds

    async def take_frames(self) -> int:
        """Frames received since the last call."""
        frames, self.frames = self.frames, 0
        return frames

    async def await_views(self, target: int, wait_s: float) -> dict[str, Any]:
        """Wait until every client's global view hashes to ``target`` (or ``wait_s`` passed).

        Returns the time the last of them changed to it: the moment this worker's share of the
        clients agreed with the truth. Only the clients that track their views count.
        """
        tracking = [c for c in self.clients if c.tracks]
        deadline = time.monotonic() + wait_s
        while True:
            behind = sum(1 for c in tracking if c.hash != target)
            if not behind or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        return {
            "converged": behind == 0,
            "behind": behind,
            "tracked": len(tracking),
            "last_change": max((c.changed for c in tracking), default=0.0),
            **self.stats,
        }

    async def ping(self) -> str:
        """Liveness check."""
        return "pong"


def _load_users(uids: list[int]) -> dict[int, Any]:
    """The User rows for minting tokens (Django set up on first use, in a thread)."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    return {u.pk: u for u in get_user_model().objects.filter(pk__in=uids)}


def _create_sessions(uids: list[int]) -> dict[int, str]:
    """One logged-in session row per user, as ``login()`` leaves it, in one bulk insert."""
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.base import VALID_KEY_CHARS
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils.crypto import get_random_string

    users = _load_users(uids)
    store, rows, keys = SessionStore(), [], {}
    expires = store.get_expiry_date()
    for uid in uids:
        key = get_random_string(32, VALID_KEY_CHARS)
        data = {
            SESSION_KEY: str(uid),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: users[uid].get_session_auth_hash(),
        }
        rows.append(Session(session_key=key, session_data=store.encode(data), expire_date=expires))
        keys[uid] = key
    Session.objects.bulk_create(rows, batch_size=1000)
    return keys


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(pipe: Connection, worker: Worker) -> None:
    while True:
        command, kwargs = await asyncio.to_thread(pipe.recv)
        if command == "stop":
            await worker.close_all()
            pipe.send(None)
            return
        try:
            method: Callable[..., Awaitable[Any]] = getattr(worker, command)
            pipe.send(("ok", await method(**kwargs)))
        except Exception:
            pipe.send(("error", traceback.format_exc()))


def worker_main(pipe: Connection, index: int, count: int) -> None:
    """Entry point of one load-client process."""
    _raise_fd_limit()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    worker = Worker(index, count)
    try:
        import uvloop

        uvloop.run(_serve(pipe, worker))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(_serve(pipe, worker))


class WorkerError(RuntimeError):
    """A load-client command failed; the message holds the worker's traceback."""


class Fleet:
    """The coordinator's handle on the load-client processes."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main, args=(theirs, index, workers), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        self.call("ping")

    @property
    def size(self) -> int:
        return len(self.pipes)

    def call(
        self,
        command: str,
        kwargs: dict[str, Any] | None = None,
        *,
        per_worker: list[dict[str, Any]] | None = None,
        only: int | None = None,
    ) -> list[Any]:
        """Run ``command`` on every worker (or worker ``only``) at once; their answers."""
        targets = [only] if only is not None else list(range(self.size))
        for index in targets:
            args = dict(kwargs or {})
            if per_worker is not None:
                args.update(per_worker[index])
            self.pipes[index].send((command, args))
        answers = []
        for index in targets:
            status, value = self.pipes[index].recv()
            if status != "ok":
                raise WorkerError(f"load client {index}: {command} failed:\n{value}")
            answers.append(value)
        return answers

    def stop(self) -> None:
        """Close all sockets and end the processes."""
        for pipe in self.pipes:
            try:
                pipe.send(("stop", {}))
            except OSError:
                pass
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                if pipe.poll(30):
                    pipe.recv()
            except (OSError, EOFError):
                pass
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
