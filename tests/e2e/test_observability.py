"""Observability under real uvicorn processes: metrics summed over processes, the process
registry and ghosts after a crash, structured logs and what they must never contain.

Servers run with production settings (``DJANGO_DEBUG=false``, ``METRICS_TOKEN``) and share
one ``PROMETHEUS_MULTIPROC_DIR``, as ``make run`` and a deployment with several workers do.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from presence.access.auth import mint_token
from presence.jobs import reconcile
from presence.live import processes
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(90),
]

TOKEN = "e2e-metrics-token"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def production_env(multiproc: Path, **extra: str) -> dict[str, str]:
    multiproc.mkdir(exist_ok=True)
    return {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,  # tokens minted here must verify there
        "METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PRESENCE_PROCESS_REFRESH": "0.5",
        **extra,
    }


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _opener.open(request, timeout=10) as response:
            return response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, _lower(err.headers), err.read()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def scrape(server: ASGIServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = get(server.url + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def ws(server: ASGIServer, user: Any) -> ClientConnection:
    token = await sync_to_async(mint_token)(user)
    conn = await connect(
        f"{server.ws_url}/ws/presence/?token={token}", origin=server.url, open_timeout=10
    )
    hello = json.loads(await asyncio.wait_for(conn.recv(), 5))
    assert hello["type"] == "hello"
    return conn


async def heartbeat(conn: ClientConnection, frame_id: int) -> None:
    await conn.send(json.dumps({"type": "heartbeat", "id": frame_id}))
    while True:
        reply = json.loads(await asyncio.wait_for(conn.recv(), 5))
        if reply.get("id") == frame_id:
            assert reply["type"] == "heartbeat.ack", reply
            return


async def eventually(pred: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {within} s")


class TestTwoProcesses:
    async def test_counters_add_up_across_processes(
        self, asgi_server: Any, auser_factory: Any, tmp_path: Path
    ) -> None:
        env = production_env(tmp_path / "prom")
        first, second = asgi_server(env=env), asgi_server(env=env)
        users = [await auser_factory() for _ in range(5)]
        conns = [await ws(first, u) for u in users[:2]] + [await ws(second, u) for u in users[2:]]
        for i, conn in enumerate(conns):
            for n in range(i + 1):  # 1 + 2 + 3 + 4 + 5 = 15 heartbeats
                await heartbeat(conn, n)

        for server in (first, second):  # whichever process a scrape reaches: the same sums
            samples = scrape(server)
            assert value(samples, "presence_connects_total") == 5
            assert value(samples, "presence_frames_total", type="heartbeat", outcome="ok") == 15
            assert value(samples, "presence_heartbeats_total") == 15
            count = "presence_handler_duration_seconds_count"
            assert value(samples, count, handler="heartbeat") == 15
            assert value(samples, "presence_connections_online") == 5
            assert value(samples, "presence_users_online") == 5

        # Per process, from the registry: 2 sockets on the first, 3 on the second.
        def open_by_process() -> list[float]:
            samples = scrape(first)
            found = [v for (n, _), v in samples.items() if n == "presence_connections_open"]
            return sorted(found)

        await eventually(lambda: open_by_process() == [2.0, 3.0])
        samples = scrape(first)
        assert value(samples, "presence_processes") == 2
        pids = {dict(labels)["pid"] for (n, labels) in samples if n == "presence_process_info"}
        assert pids == {str(first.process.pid), str(second.process.pid)}

        for conn in conns:
            await conn.close()
        await eventually(
            lambda: value(scrape(second), "presence_disconnects_total", reason="closed") == 5
        )
        assert value(scrape(first), "presence_closes_total", code="1000") == 5

    async def test_metrics_need_the_token_in_production(
        self, asgi_server: Any, tmp_path: Path
    ) -> None:
        server = asgi_server(env=production_env(tmp_path / "prom"))
        assert get(server.url + "/metrics")[0] == 403
        assert get(server.url + "/metrics", {"Authorization": "Bearer nope"})[0] == 403
        assert scrape(server)  # with the token

    async def test_without_access_configured_metrics_are_refused_and_logged_once(
        self, asgi_server: Any, tmp_path: Path
    ) -> None:
        env = production_env(tmp_path / "prom", METRICS_TOKEN="")
        server = asgi_server(env=env)
        for _ in range(3):
            assert get(server.url + "/metrics")[0] == 403
        await eventually(lambda: "METRICS_TOKEN" in server.log())
        assert server.log().count("neither METRICS_TOKEN nor METRICS_ALLOWED_NETWORKS") == 1


class TestRegistryAndGhosts:
    async def test_a_killed_process_leaves_ghosts_until_the_sweep(
        self, asgi_server: Any, auser_factory: Any, tmp_path: Path
    ) -> None:
        env = production_env(tmp_path / "prom")
        doomed, survivor = asgi_server(env=env), asgi_server(env=env)
        users = [await auser_factory() for _ in range(3)]
        await ws(doomed, users[0])
        await ws(doomed, users[1])
        kept = await ws(survivor, users[2])

        def registered() -> dict[int, int]:
            return {p["pid"]: p["sockets"] for p in processes.list_processes()}

        pids = {doomed.process.pid: 2, survivor.process.pid: 1}
        await eventually(lambda: registered() == pids)
        await asyncio.sleep(1.2)  # past every process's next refresh: sockets published
        assert (await sync_to_async(reconcile.run_reconcile)()).ghosts == 0

        doomed.kill()  # no disconnect runs: Redis still holds its two connections online
        await eventually(lambda: registered() == {survivor.process.pid: 1})  # record expired
        report = await sync_to_async(reconcile.reconcile_connections)()
        assert (report.processes, report.scanned, report.ghosts) == (1, 3, 2)
        samples = scrape(survivor)
        assert value(samples, "presence_ghost_connections") == 2
        assert value(samples, "presence_processes") == 1
        await heartbeat(kept, 1)  # the survivor's socket is fine

    async def test_staff_json_lists_the_processes(
        self, asgi_server: Any, auser_factory: Any, tmp_path: Path
    ) -> None:
        server = asgi_server(env=production_env(tmp_path / "prom"))
        get(server.url + "/healthz")  # the first request registers the process
        await eventually(lambda: len(processes.list_processes()) == 1)
        (record,) = processes.list_processes()
        assert record["pid"] == server.process.pid
        assert record["rss_bytes"] > 10_000_000
        assert record["version"] == "dev"

    async def test_with_lifespan_a_process_registers_at_start_and_leaves_at_stop(
        self, asgi_server: Any, tmp_path: Path
    ) -> None:
        env = production_env(tmp_path / "prom", PRESENCE_PROCESS_REFRESH="5")  # TTL 15 s
        server = asgi_server(env=env, extra_args=("--lifespan", "on"))  # as the Procfile
        # Registered before any request reached it.
        await eventually(
            lambda: [p["pid"] for p in processes.list_processes()] == [server.process.pid]
        )
        server.stop()  # SIGTERM: uvicorn runs the lifespan shutdown, then exits
        assert server.process.returncode is not None
        assert processes.list_processes() == []  # at once, not after the 15 s expiry
        assert "Application startup complete" in server.log()


class TestLogs:
    async def test_no_token_reaches_any_log_line(
        self, asgi_server: Any, auser_factory: Any, tmp_path: Path
    ) -> None:
        server = asgi_server(env=production_env(tmp_path / "prom"))
        user = await auser_factory()
        token = await sync_to_async(mint_token)(user)
        conn = await ws(server, user)
        await heartbeat(conn, 1)
        await conn.close()
        # An HTTP request carrying a token and a session cookie in the URL and headers.
        get(
            server.url + f"/api/presence/online/?token={token}&x=1",
            {"Authorization": f"Bearer {token}", "Cookie": f"sessionid={token}"},
        )
        # A refused handshake with a token (wrong origin) and one with a bad token.
        with pytest.raises(InvalidStatus):
            await connect(f"{server.ws_url}/ws/presence/?token={token}", origin="http://evil.test")
        bad = await connect(f"{server.ws_url}/ws/presence/?token={token}x", origin=server.url)
        await asyncio.wait_for(bad.wait_closed(), 5)
        # A token in the Sec-WebSocket-Protocol header (used, then refused as used again).
        header_token = await sync_to_async(mint_token)(user)
        for _ in range(2):
            sub = await connect(
                f"{server.ws_url}/ws/presence/",
                origin=server.url,
                subprotocols=[f"presence.token.{header_token}"],
            )
            await sub.close()
        await asyncio.sleep(0.3)
        log = server.log()
        assert token not in log
        assert header_token not in log and header_token.split(".")[-1] not in log
        assert token.split(":")[-1] not in log  # not even the signature alone
        assert "WebSocket /ws/presence/?token=[redacted]" in log  # uvicorn's handshake line
        assert "/api/presence/online/?token=[redacted]&x=1" in log  # uvicorn's access log
        assert "handshake refused: origin not allowed (Origin 'http://evil.test')" in log
        assert "handshake refused: unauthorized" in log

    async def test_json_lines_carry_request_and_connection_ids(
        self, asgi_server: Any, auser_factory: Any, tmp_path: Path
    ) -> None:
        server = asgi_server(env=production_env(tmp_path / "prom", LOG_FORMAT="json"))
        status, headers, _ = get(server.url + "/no/such/page", {"X-Request-ID": "rid-e2e-1"})
        assert status == 404
        assert headers["x-request-id"] == "rid-e2e-1"
        status, headers, _ = get(server.url + "/healthz", {"X-Request-ID": "bad id {x}"})
        assert status == 200 and len(headers["x-request-id"]) == 32  # replaced, not echoed

        user = await auser_factory()
        conn = await ws(server, user)
        await heartbeat(conn, 1)
        await conn.close()

        def lines() -> list[dict[str, Any]]:
            out = []
            for line in server.log().splitlines():
                if line.startswith("{"):
                    out.append(json.loads(line))  # every JSON-looking line is valid JSON
            return out

        await eventually(lambda: any(r.get("event") == "disconnect" for r in lines()))
        records = lines()
        not_found = [r for r in records if r["logger"] == "django.request"]
        assert not_found and not_found[0]["request_id"] == "rid-e2e-1"
        access = [r for r in records if r["logger"] == "uvicorn.access" and "/no/such" in str(r)]
        assert access and access[0]["request_id"] == "rid-e2e-1"
        (opened,) = [r for r in records if r.get("event") == "connect"]
        (closed,) = [r for r in records if r.get("event") == "disconnect"]
        assert opened["user_id"] == closed["user_id"] == user.pk
        assert opened["session_id"] == closed["session_id"]
        assert closed["code"] == 1000 and closed["reason"] == "closed"
        assert closed["duration_seconds"] > 0
        assert all(r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR") for r in records)


class TestCeleryLogs:
    async def test_worker_logs_json_with_the_sweep_summary(
        self, auser_factory: Any, seed_connections: Any, celery_worker_process: Any
    ) -> None:
        from presence.tasks import sweep_expired

        await seed_connections([await auser_factory()], age=70)  # lapsed, keys still there
        worker = celery_worker_process(env={"LOG_FORMAT": "json"}, concurrency=1)
        await asyncio.to_thread(sweep_expired.delay)

        def swept() -> bool:
            return '"logger": "presence.jobs.sweep"' in worker.text()

        await eventually(swept, within=20)
        records = [json.loads(line) for line in worker.text().splitlines() if line.startswith("{")]
        (summary,) = [r for r in records if r["logger"] == "presence.jobs.sweep"]
        assert summary["level"] == "INFO" and "ended=1" in summary["message"]
        assert any(r["message"].endswith(" ready.") for r in records)  # Celery's own lines too
