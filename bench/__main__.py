"""Side-by-side presence benchmark: this platform against a floor, a ceiling and a peer.

Run with ``make bench`` (or ``.venv/bin/python -m bench --help``); ``--quick`` is a smoke run
of a few minutes. In one run, interleaved, the same scenarios run against servers started
with identical uvicorn flags and driven by the same multi-process load client:

- floor:    a bare Channels JSON echo consumer (bench/echo_asgi.py);
- platform: this project (config.asgi:application);
- ceiling:  a raw ASGI WebSocket echo, no Django (bench/ceiling_asgi.py);
- peer:     django-channels-presence 1.0.0 (bench/peer_asgi.py), when it installs.

Scenarios (docs/performance.md explains each): store, saturation, steady, storm, bigroom,
profiling (platform only: saturation without and with a CPU profile running in the process)
and hooks (the platform alone: event log to webhook POST and to session row, bench/hooks.py).
It prints one JSON line per (scenario, server), then the ratios against the floor and the
targets, and writes everything to bench/results/<timestamp>.json. It starts its own
redis-server and uses a throw-away SQLite database; ``--port-base`` and ``--redis-port``
choose its ports so that it can run beside other services.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.servers import (  # noqa: E402 - the path above makes the project importable
    CEILING,
    FLOOR,
    PEER,
    PLATFORM,
    SERVER_NAMES,
    UVICORN_FLAGS,
    ServerSpec,
)

DEFAULTS: dict[str, Any] = {
    "sat_connections": 256,
    "sat_duration": 15.0,
    "connections": 10000,
    "interval": 25.0,
    "duration": 120.0,
    "fast_interval": 5.0,
    "fast_duration": 30.0,
    "storm_clients": 5000,
    "room_sizes": "10,2000",
    "store_connections": 20000,
}
QUICK: dict[str, Any] = {
    "sat_connections": 128,
    "sat_duration": 5.0,
    "connections": 500,
    "interval": 25.0,
    "duration": 6.0,
    "fast_interval": 5.0,
    "fast_duration": 6.0,
    "storm_clients": 300,
    "room_sizes": "10,100",
    "store_connections": 2000,
}

# The figures of the ratio table: (scenario, flattened key); steady keys are per phase.
TABLE_KEYS = {
    "saturation": ["heartbeats_per_s", "ack_p50_ms", "ack_p99_ms", "server_cpu_us_per_heartbeat"],
    "steady": ["connect_s", "server_kib_per_connection"],
    "steady_phase": [
        "ack_p50_ms",
        "ack_p99_ms",
        "ack_max_ms",
        "missing",
        "client_lag_max_ms",
        "server_stall_estimate_ms",
        "server_cpu_us_per_heartbeat",
    ],
    "profiling": [
        "heartbeats_per_s_off",
        "heartbeats_per_s_profiling",
        "profiling_over_off",
        "cpu_us_per_heartbeat_off",
        "cpu_us_per_heartbeat_profiling",
        "cpu_profiling_over_off",
        "sampler_cpu_percent",
    ],
    "storm": [
        "connect_s",
        "connect_converge_s",
        "drop_s",
        "drop_settle_s",
        "reconnect_s",
        "reconnect_converge_s",
        "connect_frames_per_client",
        "connect_server_cpu_ms_per_connect",
        "reconnect_server_cpu_ms_per_connect",
        "drop_online_zero_s",
        "drop_online_zero_after_grace_s",
        "drop_give_up_lines",
        "server_kib_per_connection",
        "gc_max_pause_ms",
        "gc_pauses_over_50ms",
        "gc_max_cpu_ms",
        "gc_max_pause_with_sockets_ms",
        "gc_pauses_over_50ms_with_sockets",
        "connect_client_cpu_s",
        "views_tracked",
    ],
    "bigroom_room": [
        "fill_s",
        "fill_errors",
        "redis_commands_per_join",
        "frames_per_join",
        "reply_ms_max_join",
        "redis_commands_per_leave",
        "frames_per_leave",
    ],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; sizes left unset take the issue's defaults, or the --quick preset."""
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke-run sizes (a few minutes)")
    p.add_argument("--servers", default=",".join(SERVER_NAMES), help="comma-separated subset")
    p.add_argument(
        "--scenarios",
        default="store,store_shards,saturation,steady,storm,bigroom",
        help="comma-separated subset of store,store_shards,jobs_shards,saturation,steady,storm,"
        "bigroom,profiling,hooks (profiling, hooks and jobs_shards are not in the default set: "
        "--scenarios hooks; store_shards/jobs_shards: bench/store_shards.py, bench/jobs_shards.py)",
    )
    p.add_argument(
        "--before",
        help="store_shards: a tree of the code before sharding, measured beside it on one Redis "
        "(git archive <commit> | tar -x -C DIR)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per pair, alternating order")
    p.add_argument("--workers", type=int, default=4, help="load-client processes")
    p.add_argument("--port-base", type=int, default=0, help="servers on P..P+3 (0: free ports)")
    p.add_argument("--redis-port", type=int, default=0, help="private redis port (0: free)")
    p.add_argument("--connect-concurrency", type=int, default=100, help="per worker")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the run's scratch directory (the servers' logs, the database, Redis's files);"
        " removed at the end otherwise",
    )
    g = p.add_argument_group("saturation")
    g.add_argument("--sat-connections", type=int, help="sockets in closed loop (256)")
    g.add_argument("--sat-duration", type=float, help="seconds (15)")
    g = p.add_argument_group("steady (open loop)")
    g.add_argument("--connections", type=int, help="sockets (10000)")
    g.add_argument("--interval", type=float, help="heartbeat interval, s (25)")
    g.add_argument("--duration", type=float, help="seconds at --interval (120)")
    g.add_argument("--fast-interval", type=float, help="second phase interval, s (5)")
    g.add_argument("--fast-duration", type=float, help="seconds at --fast-interval (30; 0: skip)")
    g = p.add_argument_group("storm")
    g.add_argument("--storm-clients", type=int, help="clients (5000)")
    g.add_argument("--converge-timeout", type=float, default=60.0, help="s to wait for views")
    g.add_argument(
        "--storm-views",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="platform clients sync and track their views (--no-storm-views: hellos only)",
    )
    g.add_argument(
        "--storm-track-every",
        type=int,
        default=10,
        metavar="K",
        help="with views, every client syncs but only every K-th decodes and tracks its view "
        "(1: all; the server's work is the same, the client's O(n²) decoding is 1/K)",
    )
    g.add_argument(
        "--storm-auth",
        choices=("cookie", "token"),
        default="cookie",
        help="how platform clients authenticate: a session cookie (the browser's path) or a token",
    )
    g = p.add_argument_group("bigroom")
    g.add_argument("--room-sizes", help="members before the probes join (10,2000)")
    g.add_argument("--room-probes", type=int, default=10, help="measured joins per room")
    g.add_argument("--room-spacing", type=float, default=0.25, help="s between measured joins")
    g.add_argument("--room-protocol", type=int, choices=(1, 2), default=2)
    g.add_argument("--peer-room-max", type=int, default=200, help="cap on the peer's room size")
    g.add_argument("--idle-window", type=float, default=2.0, help="s of background Redis rate")
    g = p.add_argument_group("store")
    g.add_argument("--store-connections", type=int, help="connections (20000)")
    g.add_argument("--batch", type=int, default=500, help="heartbeats per call")
    g.add_argument("--rounds", type=int, default=5, help="heartbeats per connection")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.room_sizes = sorted(int(s) for s in str(args.room_sizes).split(","))
    args.servers = [s for s in args.servers.split(",") if s]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.servers) - set(SERVER_NAMES)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return args


def machine_info(argv: list[str]) -> dict[str, Any]:
    """What the numbers were measured on, and with which command and commit."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    # A run from an exported tree (git archive) has no repository: the caller names the commit.
    commit = commit or os.environ.get("BENCH_GIT_COMMIT", "unknown")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "command": " ".join(["python -m bench", *argv]),
        "uvicorn_flags": UVICORN_FLAGS,
    }


def _setup(tmp: Path, redis_url: str) -> None:
    """Environment shared by the coordinator, the workers and every Django server."""
    os.environ.update(
        {
            "REDIS_URL": redis_url,
            # BENCH_DATABASE_URL: an empty database of the caller's instead (PostgreSQL).
            "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL")
            or f"sqlite:///{tmp / 'bench.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            # Production mode: no per-query debug bookkeeping in the servers.
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_hex(32),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_LOG_LEVEL": "WARNING",
        }
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
    import django

    django.setup()


def _create_users(count: int) -> list[int]:
    """``count`` bench users in one bulk insert (unusable passwords: no hashing cost)."""
    from django.contrib.auth import get_user_model

    users = get_user_model()
    users.objects.bulk_create(
        [users(username=f"bench{i}", password="!bench") for i in range(count)], batch_size=2000
    )
    return list(users.objects.order_by("pk").values_list("pk", flat=True)[:count])


def _specs(args: argparse.Namespace, tmp: Path) -> dict[str, ServerSpec]:
    from config.embedded_redis import free_port

    def port(offset: int) -> int:
        return args.port_base + offset if args.port_base else free_port()

    python = sys.executable
    return {
        FLOOR: ServerSpec(FLOOR, "bench.echo_asgi:application", port(0), python),
        PLATFORM: ServerSpec(
            PLATFORM,
            "config.asgi:application",
            port(1),
            python,
            {
                # Saturation must measure the server, not the per-connection rate limit.
                "PRESENCE_RATE_LIMIT": "1000000",
                "PRESENCE_RATE_BURST": "1000000",
                "PRESENCE_FLOOD_DROPS": "1000000",
                # The storm turns global events on; elsewhere they would make every connect
                # an O(n) fan-out that the other servers do not do.
                "PRESENCE_GLOBAL_EVENTS": "false",
                # The collector's pauses, written to the log at exit (presence/live/gctune.py).
                "PRESENCE_GC_REPORT": "1",
            },
        ),
        CEILING: ServerSpec(CEILING, "bench.ceiling_asgi:application", port(2), python),
        PEER: ServerSpec(
            PEER,
            "bench.peer_asgi:application",
            port(3),
            python,
            {"DJANGO_SETTINGS_MODULE": "bench.peer_settings", "PEER_DATABASE": str(tmp / "p.db")},
        ),
    }


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, int | float):  # bools too, as 0/1 (e.g. "converged")
            flat[f"{prefix}{key}"] = float(value)
    return flat


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median over the repeats of every figure: {scenario: {server: {key: value}}}."""
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    for record in records:
        if "result" not in record:
            continue
        per_key = values.setdefault(record["scenario"], {}).setdefault(record["server"], {})
        for key, value in _flatten(record["result"]).items():
            per_key.setdefault(key, []).append(value)
    return {
        scenario: {
            server: {k: round(statistics.median(v), 3) for k, v in keys.items()}
            for server, keys in servers.items()
        }
        for scenario, servers in values.items()
    }


def _table_keys(scenario: str, args: argparse.Namespace, summary: dict[str, Any]) -> list[str]:
    if scenario == "steady":
        phases = [f"at_{args.interval:g}s", f"at_{args.fast_interval:g}s"]
        return TABLE_KEYS["steady"] + [
            f"{p}.{k}" for p in phases for k in TABLE_KEYS["steady_phase"]
        ]
    if scenario == "bigroom":
        # Every room size measured (the peer's big room is capped, so it has its own size).
        sizes = sorted(
            {
                int(key.split(".")[0].removeprefix("room_"))
                for figures in summary.get("bigroom", {}).values()
                for key in figures
                if key.startswith("room_")
            }
        )
        rooms = [f"room_{s}.{k}" for s in sizes for k in TABLE_KEYS["bigroom_room"]]
        return [
            *rooms,
            "gc_max_pause_ms",
            "gc_pauses_over_50ms",
            "gc_max_cpu_ms",
            "gc_max_pause_with_sockets_ms",
            "gc_pauses_over_50ms_with_sockets",
        ]
    return TABLE_KEYS.get(scenario, [])


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def ratio_table(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The ratio table, one line per figure: each server's median and X/floor."""
    servers = [s for s in SERVER_NAMES if s in args.servers]
    others = [s for s in servers if s != FLOOR]
    head = f"{'scenario.figure':44}" + "".join(f"{s:>11}" for s in servers)
    head += "".join(f"{s[:4] + '/floor':>13}" for s in others)
    lines = [head, "-" * len(head)]
    for scenario in args.scenarios:
        for key in _table_keys(scenario, args, summary):
            row = {s: summary.get(scenario, {}).get(s, {}).get(key) for s in servers}
            if all(v is None for v in row.values()):
                continue
            line = f"{scenario + '.' + key:44}" + "".join(f"{_fmt(row[s]):>11}" for s in servers)
            floor = row.get(FLOOR)
            for s in others:
                value = row[s]
                ratio = value / floor if value is not None and floor else None
                line += f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>13}"
            lines.append(line)
    return lines


def check_targets(summary: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets, judged on the medians of this run (never in unit tests)."""

    def get(scenario: str, server: str, key: str) -> float | None:
        value = summary.get(scenario, {}).get(server, {}).get(key)
        return None if value is None else float(value)

    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, ok: bool | None, detail: str) -> None:
        verdict = "n/a" if value is None or ok is None else ("PASS" if ok else "MISS")
        checks.append({"target": name, "verdict": verdict, "measured": detail})

    def ratio(scenario: str, key: str) -> float | None:
        ours, floor = get(scenario, PLATFORM, key), get(scenario, FLOOR, key)
        return ours / floor if ours is not None and floor else None

    r = ratio("saturation", "heartbeats_per_s")
    check("saturation >= 1.5x floor", r, r is not None and r >= 1.5, f"{_fmt(r)}x")
    r = get("profiling", PLATFORM, "profiling_over_off")
    cpu = get("profiling", PLATFORM, "sampler_cpu_percent")
    ok = r is not None and cpu is not None and r >= 0.95 and cpu < 5
    check("profiling: saturation >= 0.95x, sampler < 5 % of a core", r, ok, f"{r}x, {cpu} %")
    for phase in (f"at_{args.interval:g}s", f"at_{args.fast_interval:g}s"):
        p99 = get("steady", PLATFORM, f"{phase}.ack_p99_ms")
        check(f"steady {phase}: ack p99 <= 50 ms", p99, p99 is not None and p99 <= 50, f"{p99}")
        missing = get("steady", PLATFORM, f"{phase}.missing")
        ok = missing is not None and missing == 0
        check(f"steady {phase}: every heartbeat acked", missing, ok, f"{missing} missing")
        worst = get("steady", PLATFORM, f"{phase}.ack_max_ms")
        stall = get("steady", PLATFORM, f"{phase}.server_stall_estimate_ms")
        ok = stall is not None and stall <= 100
        detail = f"estimate {stall} ms (max ack {worst} ms)"
        check(f"steady {phase}: no server stall > 100 ms", stall, ok, detail)
    r = ratio("steady", "server_kib_per_connection")
    kib = get("steady", PLATFORM, "server_kib_per_connection")
    check("steady: server KiB per connection vs floor", r, None, f"{kib} KiB, {_fmt(r)}x")
    for phase in ("connect", "reconnect"):
        r = ratio("storm", f"{phase}_s")
        check(f"storm {phase}: <= 2x floor", r, r is not None and r <= 2, f"{_fmt(r)}x")
        s = get("storm", PLATFORM, f"{phase}_converge_s")
        done = get("storm", PLATFORM, f"{phase}_converged")
        ok = s is not None and bool(done) and s <= 5
        check(f"storm {phase}: v2 views converge <= 5 s", s, ok, f"{s} s, converged={bool(done)}")
    for phase in ("connect", "reconnect"):
        r = ratio("storm", f"{phase}_server_cpu_ms_per_connect")
        ms = get("storm", PLATFORM, f"{phase}_server_cpu_ms_per_connect")
        ok = r is not None and r <= 2
        check(f"storm {phase}: server CPU per connect <= 2x floor", r, ok, f"{ms} ms, {_fmt(r)}x")
    # Counted from the end of the leave grace window (users held online for a reconnect).
    zero = get("storm", PLATFORM, "drop_online_zero_after_grace_s")
    if zero is None:  # a platform without the grace window
        zero = get("storm", PLATFORM, "drop_online_zero_s")
    lines = get("storm", PLATFORM, "drop_give_up_lines")
    ok = zero is not None and 0 <= zero <= 2 and lines == 0
    check(
        "storm drop-all: online 0 within 2 s after the grace, no give-up line",
        zero,
        ok,
        f"{zero} s, {lines}",
    )
    small, big = args.room_sizes[0], args.room_sizes[-1]
    fill = get("bigroom", PLATFORM, f"room_{big}.fill_s")
    errors = get("bigroom", PLATFORM, f"room_{big}.fill_errors")
    ok = fill is not None and fill < 10 and errors == 0
    check(f"bigroom: fill {big} from empty < 10 s, 0 errors", fill, ok, f"{fill} s, {errors}")
    a = get("bigroom", PLATFORM, f"room_{small}.redis_commands_per_join")
    b = get("bigroom", PLATFORM, f"room_{big}.redis_commands_per_join")
    ok = a is not None and b is not None and abs(b - a) <= 0.2 * a
    check(f"bigroom: commands per join at {big} within 20% of {small}", b, ok, f"{a} vs {b}")
    for event in ("join", "leave"):
        a = get("bigroom", PLATFORM, f"room_{small}.redis_commands_per_{event}")
        b = get("bigroom", PLATFORM, f"room_{big}.redis_commands_per_{event}")
        # "The same" means it does not grow with the room: up to 10% more is noise.
        ok = a is not None and b is not None and b <= a + max(0.5, 0.1 * a)
        # A join's reply lists the room's members (protocol), so the join figure includes
        # reading them; a leave's reply does not: it is the presence event alone.
        label = "join (reply lists members)" if event == "join" else "leave"
        check(
            f"bigroom: Redis commands per {label} at {big} members <= at {small}",
            b if a is not None else None,
            ok,
            f"{a} vs {b}",
        )
    if "hooks" in args.scenarios:
        from bench import hooks

        for record in getattr(args, "hook_records", []):
            for name, ok, measured in hooks.targets(record):
                check(name, 1.0, ok, measured)
    return checks


def run_pair(ctx: Any, scenario: str, spec: ServerSpec) -> dict[str, Any]:
    """One scenario against one server; failures are recorded, never raised."""
    from bench import scenarios

    runner = getattr(scenarios, f"run_{scenario}")
    started = time.monotonic()
    try:
        return {"result": runner(ctx, spec), "seconds": round(time.monotonic() - started, 1)}
    except scenarios.NotApplicableError as exc:
        return {"not_applicable": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
    finally:
        try:
            ctx.fleet.call("close_all")
        except Exception:
            pass


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from bench import peer, scenarios
    from bench.loadclient import Fleet
    from bench.servers import RedisProbe
    from config.embedded_redis import RedisServer

    info = machine_info(argv)
    tmp = Path(tempfile.mkdtemp(prefix="presence-bench-"))
    redis_server = RedisServer(tmp / "redis", port=args.redis_port or None).start()
    records: list[dict[str, Any]] = []
    fleet = None
    try:
        _setup(tmp, redis_server.url)
        specs = _specs(args, tmp)
        print(json.dumps({"machine": info, "ports": {k: v.port for k, v in specs.items()}}))
        if "store" in args.scenarios:
            record = {"scenario": "store", "server": "-", "repeat": 0}
            record["result"] = scenarios.run_store(args)
            records.append(record)
            print(json.dumps(record), flush=True)
        for name in ("store_shards", "jobs_shards"):  # issue 19: own nodes and processes
            if name in args.scenarios:
                module: Any = importlib.import_module(f"bench.{name}")
                record = {"scenario": name, "server": "-", "repeat": 0}
                record["result"] = module.run_from_bench(args)
                records.append(record)
        wanted = max(
            args.connections if "steady" in args.scenarios else 0,
            args.storm_clients if "storm" in args.scenarios else 0,
            args.sat_connections,
            args.room_sizes[-1] + args.room_probes,
            200 if "hooks" in args.scenarios else 0,  # bench/hooks.py USERS
        )
        uids = _create_users(wanted)
        if "hooks" in args.scenarios:
            from bench import hooks

            record = {"scenario": "hooks", "server": PLATFORM, "repeat": 0}
            record["result"] = hooks.run_hooks(args, uids[: hooks.USERS], tmp)
            records.append(record)
            print(json.dumps(record), flush=True)
        servers = [s for s in SERVER_NAMES if s in args.servers]
        not_run: dict[str, str] = {}
        if PEER in servers:
            try:
                specs[PEER].python = peer.prepare(tmp / "p.db")
            except peer.PeerUnavailableError as exc:
                not_run[PEER] = str(exc)
                servers.remove(PEER)
                print(json.dumps({"peer": f"not run: {exc}"}), flush=True)
        fleet = Fleet(args.workers)
        ctx = scenarios.Context(args, fleet, RedisProbe(redis_server.port), tmp, uids)
        for repeat in range(args.repeat):
            order = servers if repeat % 2 == 0 else servers[::-1]
            for scenario in args.scenarios:
                if scenario in ("store", "hooks", "store_shards", "jobs_shards"):
                    continue
                for name in order:
                    record = {"scenario": scenario, "server": name, "repeat": repeat}
                    record.update(run_pair(ctx, scenario, specs[name]))
                    records.append(record)
                    print(json.dumps(record), flush=True)
        for name, reason in not_run.items():
            records.append({"scenario": "*", "server": name, "not_run": reason})
    finally:
        if fleet is not None:
            fleet.stop()
        redis_server.stop()
        if args.keep_tmp:
            print(json.dumps({"kept": str(tmp)}), flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # ~7 MB of database and logs a run
    summary = summarize(records)
    args.hook_records = [r["result"] for r in records if r["scenario"] == "hooks" and "result" in r]
    checks = check_targets(summary, args)
    print()
    for line in ratio_table(summary, args):
        print(line)
    print()
    for c in checks:
        print(f"{c['verdict']:5} {c['target']}: {c['measured']}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.results_dir / f"{stamp}.json"
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "machine": info,
        "options": options,
        "records": records,
        "summary": summary,
        "targets": checks,
    }
    path.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
