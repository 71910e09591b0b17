"""No Redis password reaches a log line: Redis URLs and redis-py's client reprs (a Sentinel's
MasterNotFoundError carries one) are masked by presence.redis_url.redact, which the log
formatters apply to every line; the checks' messages mask the URLs they quote."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pytest_django.fixtures import Settings

from config.embedded_redis import RedisServer, free_port, redis_server_binary
from presence import store
from presence.checks import check_presence_store_shape
from presence.obs.logs import JsonFormatter, PlainFormatter
from presence.ops.collector import PresenceCollector
from presence.redis_url import redact

DATA_PASSWORD = "data-pw-7f3a"
SENTINEL_PASSWORD = "sentinel-pw-91c2"
STALE_PASSWORD = "rotated-pw-5d0e"


@pytest.fixture
def locked_sentinel(tmp_path: Path) -> Iterator[int]:
    """A real Sentinel (``redis-server --sentinel``) with ``requirepass``, monitoring nothing:
    every master name is unknown to it, so a client through it raises MasterNotFoundError."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {port}\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"requirepass {SENTINEL_PASSWORD}\n"
    )
    process = subprocess.Popen(
        [redis_server_binary(), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, f"the sentinel exited; see {tmp_path}"
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the sentinel did not answer"
                time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def locked_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server with ``requirepass``."""
    server = RedisServer(tmp_path / "locked").start()
    redis.Redis.from_url(server.url).config_set("requirepass", DATA_PASSWORD)
    yield server
    server.stop()


def _formatted(caplog: pytest.LogCaptureFixture, formatter: logging.Formatter) -> str:
    return "\n".join(formatter.format(record) for record in caplog.records)


def test_scrape_through_a_locked_sentinel_logs_no_password(
    locked_sentinel: int, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The sentinel refuses the URL's (stale) password; redis-py's MasterNotFoundError then
    # quotes its sentinel client's repr, password included, and /metrics logs it.
    settings.REDIS_URL = (
        f"redis+sentinel://app:{DATA_PASSWORD}@127.0.0.1:{locked_sentinel}/presence-primary/0"
        f"?sentinel_password={STALE_PASSWORD}"
    )
    store.reset_clients()
    try:
        with caplog.at_level(logging.WARNING, logger="presence"):
            families = list(PresenceCollector().collect())
    finally:
        store.reset_clients()
    assert [f.name for f in families] == ["presence_redis_up"]
    raw = "\n".join(r.getMessage() for r in caplog.records)
    # redis-py 6 quoted the sentinel's password in this message; redis-py 7 masks its
    # reprs itself. The formatters below must not rely on either.
    assert "No master found" in raw
    for formatter in (PlainFormatter(), JsonFormatter()):
        text = _formatted(caplog, formatter)
        assert "No master found" in text
        assert STALE_PASSWORD not in text and DATA_PASSWORD not in text
        assert "password=***" in text


def test_a_locked_servers_client_repr_is_masked(
    locked_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = "127.0.0.1", locked_server.port
    url = f"redis://default:{DATA_PASSWORD}@{host}:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    assert client.ping()  # the password is right: the server is really locked with it
    with caplog.at_level(logging.INFO, logger="presence.tests"):
        logging.getLogger("presence.tests").info("store at %s through %r", url, client)
    text = _formatted(caplog, PlainFormatter())
    assert DATA_PASSWORD not in text
    assert f"redis://default:***@{host}:{port}/0" in text
    assert "password=***" in text


def test_a_malformed_shard_url_is_quoted_without_its_password(settings: Settings) -> None:
    settings.PRESENCE_REDIS_SHARD_URLS = [f"redis://:{DATA_PASSWORD}@127.0.0.1:1/x"]
    [error] = check_presence_store_shape()
    assert error.id == "presence.E033"
    assert DATA_PASSWORD not in error.msg and "redis://:***@127.0.0.1:1/x" in error.msg


@pytest.mark.parametrize(
    "text,expected",
    [
        ("at redis://u:pw@h:1/0, retrying", "at redis://u:***@h:1/0, retrying"),
        ("(rediss://:pw@h:1/0)", "(rediss://:***@h:1/0)"),
        (
            "redis+sentinel://:pw@a:1,b:2/m/0?sentinel_password=sp down",
            "redis+sentinel://:***@a:1,b:2/m/0?*** down",
        ),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("Connection(db=0,password=pw,host=h)", "Connection(db=0,password=***,host=h)"),
        ("{'password': 'pw', 'db': 0}", "{'password': '***', 'db': 0}"),
        ("redis://h:6379/0 and no secret", "redis://h:6379/0 and no secret"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
