"""Shared fixtures: a private real redis-server, users, WebSocket clients, server processes.

The Redis server is started once per test run on a free port (never the shared 6379) and
emptied before each test; fault tests may kill and restart it through ``redis_server``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.embedded_redis import RedisServer
from presence import store
from presence.access.auth import mint_token

_server: RedisServer | None = None
_tmp: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Start the private Redis before any test touches settings that point at it."""
    global _server, _tmp
    _tmp = Path(tempfile.mkdtemp(prefix="presence-tests-"))
    _server = RedisServer(_tmp / "redis").start()
    url = _server.url
    os.environ["REDIS_URL"] = url  # for subprocesses (ASGI server, Celery worker)
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = url
    # No persistent database connections in tests: each test's event loop has its own
    # threads, whose connections would otherwise outlive them until the test database's
    # teardown (PostgreSQL refuses to drop a database in use).
    os.environ["DJANGO_CONN_MAX_AGE"] = "0"
    from django.db import connections

    for alias in connections:
        connections.settings[alias]["CONN_MAX_AGE"] = 0
    from config.celery import app as celery_app

    celery_app.conf.broker_url = url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _close_sync_thread_connections(django_db_setup: None) -> Iterator[None]:
    """Close the DB connection of asgiref's sync thread before the test DB is dropped.

    Async tests reach the ORM through sync_to_async, whose one thread keeps its connection
    open; on PostgreSQL that blocks DROP DATABASE at the end of the run.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def _sync_thread_idle_before_db_teardown(_django_db_marker: None) -> Iterator[None]:
    """Wait for work still running on asgiref's sync thread before the database is reset.

    The session-row writer is a background task: when a test ends it may be inside a bulk
    write there. Torn down after pytest-django's database fixture is set up, so this runs
    before its teardown (PostgreSQL's TRUNCATE would otherwise deadlock with the inserts).
    Nothing new starts meanwhile: no event loop runs during a sync fixture's teardown.
    """
    yield
    from asgiref.sync import SyncToAsync

    SyncToAsync.single_thread_executor.submit(lambda: None).result(timeout=30)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The private redis-server of this test run (kill/restart it in fault tests)."""
    assert _server is not None
    return _server


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: RedisServer) -> Iterator[None]:
    """Every test starts with an empty Redis and fresh clients."""
    if not redis_server.ping():
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    store.reset_clients()
    channel_layers.backends.clear()
    yield
    store.reset_clients()
    channel_layers.backends.clear()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    """A plain sync client on the test Redis (decoded strings)."""
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture
def user_factory(django_user_model: Any) -> Callable[..., Any]:
    """Create users: ``user_factory("alice")``, ``user_factory(is_active=False)``."""
    counter = iter(range(1, 1_000_000))

    def make(username: str | None = None, **extra: Any) -> Any:
        name = username or f"user{next(counter)}"
        return django_user_model.objects.create_user(username=name, password="pw", **extra)

    return make


class WSClient:
    """A WebsocketCommunicator speaking protocol v1 frames (JSON)."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.comm = communicator
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: Any) -> None:
        await self.comm.send_to(text_data=json.dumps(frame))

    async def recv(self, timeout: float = 3) -> dict[str, Any]:  # noqa: ASYNC109
        return json.loads(await self.comm.receive_from(timeout=timeout))

    async def recv_until(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 3,  # noqa: ASYNC109 - the communicator's convention
    ) -> dict[str, Any]:
        """Receive frames until one matches ``pred`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if pred(frame):
                    return frame

    async def request(
        self, type_: str, data: dict[str, Any] | None = None, id_: Any = 1
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": type_, "id": id_}
        if data is not None:
            frame["data"] = data
        await self.send(frame)
        return await self.recv_until(lambda f: f.get("id") == id_ and f["type"] != "presence")

    async def no_frame(self, timeout: float = 0.3) -> bool:  # noqa: ASYNC109
        return await self.comm.receive_nothing(timeout=timeout)

    async def send_raw(self, *, text: str | None = None, data: bytes | None = None) -> None:
        """Send one frame as is (empty text and empty binary frames included)."""
        if text is not None:
            await self.comm.send_input({"type": "websocket.receive", "text": text})
        else:
            await self.comm.send_input({"type": "websocket.receive", "bytes": data or b""})

    async def recv_close(
        self,
        timeout: float = 3,  # noqa: ASYNC109
        *,
        finish: bool = True,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Read until the server closes: (close code, text frames received before it).

        With ``finish`` the client then completes the close handshake with the same code, as a
        real ASGI server does, so the consumer's ``disconnect()`` runs before this returns.
        """
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                out = await self.comm.receive_output(timeout)
                if out["type"] == "websocket.close":
                    code = int(out.get("code", 1000))
                    break
                if out["type"] == "websocket.send" and out.get("text") is not None:
                    frames.append(json.loads(out["text"]))
        if finish:
            await self.comm.disconnect(code=code, timeout=timeout)
        return code, frames

    async def close(self) -> None:
        await self.comm.disconnect()


@pytest.fixture
def auser_factory(user_factory: Callable[..., Any], settings: Any) -> Callable[..., Awaitable[Any]]:
    """``await auser_factory("alice")``: ``user_factory`` for async tests.

    Passwords are hashed with MD5 first (PBKDF2 costs ~0.2 s per user); the default hashers
    stay listed, so nothing else changes.
    """
    from asgiref.sync import sync_to_async

    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]

    async def make(username: str | None = None, **extra: Any) -> Any:
        return await sync_to_async(user_factory)(username, **extra)

    return make


@pytest.fixture
async def ws_client() -> AsyncIterator[Callable[..., Awaitable[WSClient]]]:
    """Connect a user through the full ASGI stack (origin check, auth, consumer).

    ``await ws_client(user)`` returns a client that has already received ``hello``;
    ``expect_hello=False`` returns right after the handshake; ``client_addr`` sets the peer
    address (``scope["client"]``), which the communicator leaves out by default;
    ``subprotocols=["presence.v2"]`` asks for protocol v2.
    """
    from config.asgi import application

    clients: list[WSClient] = []

    async def connect(
        user: Any = None,
        *,
        token: str | None = None,
        origin: str = "http://localhost",
        expect_hello: bool = True,
        headers: list[tuple[bytes, bytes]] | None = None,
        client_addr: tuple[str, int] | None = None,
        subprotocols: list[str] | None = None,
    ) -> WSClient:
        path = "/ws/presence/"
        if token is None and user is not None:
            from asgiref.sync import sync_to_async

            token = await sync_to_async(mint_token)(user)
        if token:
            path += f"?token={token}"
        comm = WebsocketCommunicator(
            application,
            path,
            headers=[(b"origin", origin.encode()), *(headers or [])],
            subprotocols=subprotocols,
        )
        if client_addr is not None:
            comm.scope["client"] = client_addr  # the peer address a real server would report
        connected, chosen = await comm.connect(timeout=5)
        client = WSClient(comm)
        client.connected = connected  # type: ignore[attr-defined]
        client.subprotocol = chosen  # type: ignore[attr-defined]
        clients.append(client)
        if connected and expect_hello:
            client.hello = await client.recv()
            assert client.hello["type"] == "hello", client.hello
        return client

    yield connect
    for client in clients:
        try:
            await client.comm.disconnect()
        except (Exception, asyncio.CancelledError):  # already closed, or its app was cancelled
            pass


# ---- Celery worker and beat processes, seeded connections (sweep and flush tests)
ROOT = Path(__file__).resolve().parent.parent


class CeleryProcess:
    """A real ``celery`` subprocess (worker or beat) in its own process group."""

    def __init__(self, kind: str, proc: Any, log: Path) -> None:
        self.kind, self.proc, self.log = kind, proc, log

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 20) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"celery {self.kind} not ready ({needle!r}):\n{self.text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (prefork children included), as in a crash."""
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def celery_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a subprocess sharing this test run's Redis and (committed) test DB."""
    from tests.support import database_url

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        REDIS_URL=os.environ["REDIS_URL"],
        CELERY_BROKER_URL=os.environ["REDIS_URL"],
        DATABASE_URL=database_url(),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra or {})
    return env


@pytest.fixture
def celery_worker_process(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., CeleryProcess]]:
    """Start real Celery processes: ``celery_worker_process(env={...}, concurrency=2)``.

    The worker consumes from this run's private Redis and writes the test database file, so
    tests using it see committed data (the fixture implies ``transaction=True``). Pass
    ``beat=True`` for a beat process instead (schedule in settings, from ``env``). All are
    stopped at teardown.
    """
    import subprocess
    import sys
    import uuid

    started: list[CeleryProcess] = []

    def start(
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        pool: str = "prefork",
        beat: bool = False,
    ) -> CeleryProcess:
        n = len(started)
        log = tmp_path / f"celery-{n}.log"
        if beat:
            kind = "beat"
            args = ["beat", "--schedule", str(tmp_path / f"beat-{n}"), "--max-interval", "1"]
            ready = "beat: Starting"
        else:
            kind = "worker"
            args = [
                "worker",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname=test-{uuid.uuid4().hex[:8]}@%h",
            ]
            ready = " ready."
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", *args, "--loglevel=INFO"],
                cwd=ROOT,
                env=celery_env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop/kill reach prefork children
            )
        process = CeleryProcess(kind, proc, log)
        started.append(process)
        process.wait_for_log(ready)
        return process

    yield start
    for process in reversed(started):
        process.kill()  # nothing to finish gracefully at teardown; saves a second each


@pytest.fixture
def seed_connections() -> Callable[..., Awaitable[list[store.ConnRef]]]:
    """``await seed_connections(users, per_user=2, age=...)``: sessions + presence, no sockets.

    Each connection gets a live ConnectionSession row and is registered in Redis as if its
    last heartbeat was ``age`` seconds ago (``age`` > TTL: already expired). ``rooms`` are
    joined by every connection. Channel names lead nowhere, like a vanished client's.
    """
    import uuid

    from asgiref.sync import sync_to_async

    from sessions_app.actions import do_start_session

    async def seed(
        users: list[Any], *, per_user: int = 1, age: float = 0.0, rooms: tuple[str, ...] = ()
    ) -> list[store.ConnRef]:
        client = store.get_async_redis()
        now = store.now_ms() - int(age * 1000)
        conns = []
        for user in users:
            for _ in range(per_user):
                sid = uuid.uuid4()
                channel = f"specific.seed!{sid.hex}"
                await sync_to_async(do_start_session)(
                    session_id=sid, user_id=user.pk, channel_name=channel, ip=None, user_agent=""
                )
                await store.connect(
                    client,
                    cid=str(sid),
                    uid=user.pk,
                    username=user.get_username(),
                    channel=channel,
                    now=now,
                )
                ref = store.ConnRef(str(sid), user.pk, tuple(sorted(rooms)))
                for room in rooms:
                    await store.room_join(client, ref, room)
                conns.append(ref)
        return conns

    return seed
