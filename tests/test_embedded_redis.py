"""config/embedded_redis.py: a RedisServer is up only when the server on its port is its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import config.embedded_redis as embedded
from config.embedded_redis import PortTakenError, RedisServer


@pytest.fixture
def occupant(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server holding a port before the server under test starts."""
    server = RedisServer(tmp_path / "occupant").start()
    yield server
    server.stop()


def test_started_server_reports_its_own_pid(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "own").start()
    try:
        assert server.process is not None
        assert server.process_id() == server.process.pid
    finally:
        server.stop()


def test_named_port_taken_fails_clearly(tmp_path: Path, occupant: RedisServer) -> None:
    second = RedisServer(tmp_path / "second", port=occupant.port)
    with pytest.raises(PortTakenError, match=f"port {occupant.port} is taken") as caught:
        second.start()
    assert occupant.process is not None
    assert caught.value.pid == occupant.process.pid
    # Its own process is gone, and the occupant was left alone.
    assert second.process is not None and second.process.poll() is not None
    assert occupant.process.poll() is None


def test_chosen_port_taken_moves_to_another(
    tmp_path: Path, occupant: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race free_port() cannot close: the port it found is bound by another server before
    # ours starts. The object chose the port, so it picks another one.
    ports = iter([occupant.port])
    real_free_port = embedded.free_port
    monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real_free_port())
    server = RedisServer(tmp_path / "moved")
    assert server.port == occupant.port
    try:
        server.start()
        assert server.port != occupant.port
        assert server.process is not None
        assert server.process_id() == server.process.pid
        # Writing through the new URL does not reach the occupant.
        redis.Redis.from_url(server.url).set("mine", "1")
        assert redis.Redis.from_url(occupant.url).get("mine") is None
    finally:
        server.stop()


def test_restart_keeps_its_port_or_fails(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "kept").start()
    try:
        port = server.port
        server.restart()
        assert server.port == port
        assert server.process is not None and server.process_id() == server.process.pid
    finally:
        server.stop()
    # The port taken while it was down: the restart says so instead of moving the URL.
    taker = RedisServer(tmp_path / "taker", port=port).start()
    try:
        with pytest.raises(PortTakenError):
            server.start()
        assert server.port == port
    finally:
        taker.stop()


def test_password_protected_occupant_is_foreign(tmp_path: Path) -> None:
    occupant = RedisServer(tmp_path / "locked")
    occupant.start()
    try:
        redis.Redis.from_url(occupant.url).config_set("requirepass", "s3cret")
        second = RedisServer(tmp_path / "second", port=occupant.port)
        with pytest.raises(PortTakenError, match="wants a password"):
            second.start()
    finally:
        occupant.stop()
