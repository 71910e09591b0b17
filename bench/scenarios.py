"""The scenarios: each runs against one server and returns one flat JSON-able dict.

Every scenario starts its own server (so memory and state start clean), resets the private
Redis, drives the load-client fleet and stops the server again. Times are seconds, latencies
milliseconds; a figure that does not apply to a server (rooms on an echo server) is left out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
import uuid
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loadclient import Fleet, view_hash
from .servers import PEER, PLATFORM, RedisProbe, Server, ServerSpec, cpu_seconds, rss_kib, settle

SCENARIOS = ("store", "saturation", "steady", "storm", "bigroom", "profiling", "hooks")


@dataclass
class Context:
    """What every scenario needs: options, the client fleet, the private Redis, users."""

    options: Any  # argparse.Namespace
    fleet: Fleet
    redis: RedisProbe
    log_dir: Path
    uids: list[int]


class NotApplicableError(Exception):
    """The scenario does not apply to this server (e.g. rooms on an echo server)."""


@contextmanager
def serving(ctx: Context, spec: ServerSpec) -> Iterator[Server]:
    """A fresh server on a clean Redis; fails loudly if the server died during the scenario."""
    ctx.redis.reset()
    ctx.fleet.call("take_frames")  # frames counted from here on belong to this scenario
    server = Server(spec, ctx.log_dir).start()
    try:
        yield server
        if not server.alive():
            raise RuntimeError(f"{spec.name} server died:\n{server.log_tail()}")
    finally:
        server.stop()


def _client_url(spec: ServerSpec, room_per_user: bool, cookie: bool) -> tuple[str, bool]:
    """The URL template (``{uid}``, ``{token}``) and whether it needs a platform token."""
    base = f"ws://127.0.0.1:{spec.port}/ws/presence/"
    if spec.name == PLATFORM:
        return (base, False) if cookie else (base + "?token={token}", True)
    if spec.name == PEER and room_per_user:
        # django-channels-presence tracks presence per room only: one room per user is the
        # nearest match to the platform's per-user presence with global events off.
        return base + "?room=u{uid}", False
    return base, False


def open_clients(
    ctx: Context,
    spec: ServerSpec,
    uids: list[int],
    *,
    v2: bool = False,
    sync: bool = False,
    room_per_user: bool = True,
    only: int | None = None,
    cookie: bool = False,
    track_every: int = 1,
) -> dict[str, Any]:
    """Connect one client per user id, spread over the workers; times to the last hello.

    ``v2`` asks the platform for protocol v2; ``sync`` also has each client sync the global
    view, and every ``track_every``-th client keep it (Worker.connect).
    """
    url, token = _client_url(spec, room_per_user, cookie)
    subprotocol = "presence.v2" if v2 and spec.name == PLATFORM else None
    common = {
        "url": url,
        "origin": f"http://127.0.0.1:{spec.port}",
        "subprotocol": subprotocol,
        "sync": sync,
        "concurrency": ctx.options.connect_concurrency,
        "token": token,
        # Every server gets the cookie (a browser sends it anyway); only the platform reads it.
        "cookie": cookie,
        "track_every": track_every,
    }
    if only is not None:
        answers = ctx.fleet.call("connect", {**common, "uids": uids}, only=only)
    else:
        size = ctx.fleet.size
        per_worker = [{"uids": uids[i::size]} for i in range(size)]
        answers = ctx.fleet.call("connect", common, per_worker=per_worker)
    started = min(a["started"] for a in answers)
    last_hello = max(a["last_hello"] for a in answers)
    result = {
        "opened": sum(a["opened"] for a in answers),
        "failed": sum(a["failed"] for a in answers),
        "seconds": round(last_hello - started, 3),
        "last_hello": last_hello,
        "v2_hellos": sum(a["v2_hellos"] for a in answers),
        "client_cpu_s": round(sum(a["cpu_s"] for a in answers), 2),
    }
    errors = [e for a in answers for e in a["errors"]]
    if errors:
        result["errors"] = errors[:3]
    return result


def close_clients(ctx: Context) -> float:
    """Close every client; seconds until the last close completed."""
    return _close_clients(ctx)[0]


def _close_clients(ctx: Context) -> tuple[float, float]:
    """Close every client: (seconds until the last close completed, when it did)."""
    answers = ctx.fleet.call("close_all")
    done = max(a["done"] for a in answers)
    return round(done - min(a["started"] for a in answers), 3), done


def _online_zero_after(ctx: Context, since: float, *, wait: float = 30.0) -> float | None:
    """Seconds from ``since`` until nobody is listed online (None: not within ``wait``)."""
    deadline = time.monotonic() + wait
    while ctx.redis.online() > 0:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return round(max(0.0, time.monotonic() - since), 3)


GC_REPORT = "presence.gctune gc pauses: "


def gc_pauses(server: Server) -> dict[str, float]:
    """The platform's collector pauses over the server's life (its exit report), if any."""
    reports = [line for line in server.own_log().splitlines() if line.startswith(GC_REPORT)]
    if not reports:
        return {}
    stats = json.loads(reports[-1][len(GC_REPORT) :])
    generations = [v for k, v in stats.items() if k.isdigit()]
    out = {"gc_max_pause_ms": max((g.get("max_ms", 0.0) for g in generations), default=0.0)}
    if all("over_50_ms" in g for g in generations if g.get("count")):  # older reports lack it
        out["gc_pauses_over_50ms"] = sum(g.get("over_50_ms", 0) for g in generations)
    if all("cpu_max_ms" in g for g in generations if g.get("count")):
        # The collections' own CPU: the wall pause less the time the process was not running.
        out["gc_max_cpu_ms"] = max((g.get("cpu_max_ms", 0.0) for g in generations), default=0.0)
    if all("with_sockets_max_ms" in g for g in generations if g.get("count")):
        # The pauses that stalled open sockets (a collection with none open stalls nobody).
        out["gc_max_pause_with_sockets_ms"] = max(
            (g.get("with_sockets_max_ms", 0.0) for g in generations), default=0.0
        )
        out["gc_pauses_over_50ms_with_sockets"] = sum(
            g.get("with_sockets_over_50_ms", 0) for g in generations
        )
    # Per generation (in the JSON only): which collections pause, and how often.
    for name, g in stats.items():
        if name.isdigit() and g.get("count"):
            out[f"gc{name}_count"] = g["count"]
            out[f"gc{name}_max_ms"] = g.get("max_ms", 0.0)
            out[f"gc{name}_p99_ms"] = g.get("p99_ms", 0.0)
            if "cpu_max_ms" in g:  # the collection's own CPU (the rest: not scheduled)
                out[f"gc{name}_cpu_max_ms"] = g["cpu_max_ms"]
                out[f"gc{name}_cpu_over_50ms"] = g["cpu_over_50_ms"]
    return out


def leave_grace(spec: ServerSpec) -> float:
    """The platform's ``PRESENCE_LEAVE_GRACE`` as the server runs it (seconds)."""
    from presence.conf import app_settings

    configured = {**spec.env, **spec.extra_env}.get("PRESENCE_LEAVE_GRACE")
    return float(configured) if configured is not None else float(app_settings.LEAVE_GRACE)


# Log lines of a close the server could not write (the platform's old and new wording).
GIVE_UP_LINES = ("could not remove connection", "could not end ")


def _latency_stats(blobs: list[bytes]) -> dict[str, float]:
    values = array("d")
    for blob in blobs:
        values.frombytes(blob)
    if not values:
        return {}
    ordered = sorted(values)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "ack_p50_ms": round(statistics.median(ordered) * 1000, 2),
        "ack_p99_ms": pct(0.99),
        "ack_max_ms": round(ordered[-1] * 1000, 2),
    }


# ---------------------------------------------------------------------- store
def run_store(options: Any) -> dict[str, Any]:
    """Heartbeats per second through heartbeat.lua, and Redis bytes per connection."""
    return asyncio.run(_bench_store(options.store_connections, options.batch, options.rounds))


async def _bench_store(connections: int, batch: int, rounds: int) -> dict[str, Any]:
    from presence import store

    store.reset_clients()
    client = store.get_async_redis()
    await client.flushall()
    base = int((await client.info("memory"))["used_memory"])
    refs = []
    for i in range(connections):
        cid = str(uuid.uuid4())
        await store.connect(cid=cid, uid=i + 1, username=f"u{i + 1}", channel=f"c.{i}")
        ref = store.ConnRef(cid, i + 1, ("lobby",) if i % 2 == 0 else ())
        if ref.rooms:
            await store.room_join(ref, "lobby")
        refs.append(ref)
    used = int((await client.info("memory"))["used_memory"]) - base
    before = int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
    started = time.perf_counter()
    beats = 0
    for _ in range(rounds):
        for i in range(0, connections, batch):
            chunk = refs[i : i + batch]
            await store.heartbeat_many(chunk, {"msg:heartbeat": len(chunk)})
            beats += len(chunk)
    elapsed = time.perf_counter() - started
    after = int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
    calls = rounds * -(-connections // batch)
    await client.flushall()
    await client.aclose()
    return {
        "connections": connections,
        "batch": batch,
        "heartbeats": beats,
        "heartbeats_per_s": round(beats / elapsed),
        "evalsha_per_batch": round((after - before) / calls, 2),
        "redis_bytes_per_connection": round(used / connections),
    }


# ---------------------------------------------------------------------- saturation
def run_saturation(ctx: Context, spec: ServerSpec) -> dict[str, Any]:
    """Closed-loop heartbeats from a fixed set of sockets: the most the server answers."""
    o = ctx.options
    with serving(ctx, spec) as server:
        opened = open_clients(ctx, spec, ctx.uids[: o.sat_connections])
        settle(server.pid)
        cpu = cpu_seconds(server.pid)
        start_at = time.monotonic() + 0.5
        answers = ctx.fleet.call("saturate", {"start_at": start_at, "duration": o.sat_duration})
        elapsed = max(a["finished"] for a in answers) - start_at
        cpu = cpu_seconds(server.pid) - cpu
        acked = sum(a["acked"] for a in answers)
        close_clients(ctx)
    return {
        "connections": opened["opened"],
        "connect_failed": opened["failed"],
        "heartbeats_per_s": round(acked / elapsed),
        "missing": sum(a["missing"] for a in answers),
        **_latency_stats([a["latencies"] for a in answers]),
        "server_cpu_share": round(cpu / elapsed, 2),
        "server_cpu_us_per_heartbeat": round(cpu / max(1, acked) * 1e6),
        "client_lag_max_ms": round(max(a["client_lag_max"] for a in answers) * 1000, 1),
    }


# ---------------------------------------------------------------------- profiling
def _saturate_once(ctx: Context, server: Server) -> dict[str, Any]:
    cpu = cpu_seconds(server.pid)
    start_at = time.monotonic() + 0.5
    answers = ctx.fleet.call(
        "saturate", {"start_at": start_at, "duration": ctx.options.sat_duration}
    )
    elapsed = max(a["finished"] for a in answers) - start_at
    cpu = cpu_seconds(server.pid) - cpu
    acked = sum(a["acked"] for a in answers)
    return {
        "heartbeats_per_s": acked / elapsed,
        "cpu_us_per_heartbeat": cpu / max(1, acked) * 1e6,
        **_latency_stats([a["latencies"] for a in answers]),
    }


def run_profiling(ctx: Context, spec: ServerSpec) -> dict[str, Any]:
    """Saturation of one platform process without, with, and again without a CPU profile
    running in it (presence.live.sampler, asked for through Redis as the console does)."""
    if spec.name != PLATFORM:
        raise NotApplicableError("the process inspector is the platform's")
    from presence.live import inspector
    from presence.live.processes import list_processes

    o = ctx.options
    with serving(ctx, spec) as server:
        opened = open_clients(ctx, spec, ctx.uids[: o.sat_connections])
        settle(server.pid)
        deadline = time.monotonic() + 15
        while not (ids := [p["id"] for p in list_processes() if p["pid"] == server.pid]):
            if time.monotonic() > deadline:
                raise RuntimeError("the server never registered in the process registry")
            time.sleep(0.2)
        proc_id = ids[0]
        before = _saturate_once(ctx, server)
        seconds = min(float(inspector.PROFILE_MAX_SECONDS), o.sat_duration + 2.0)
        asked = inspector.ask_process(proc_id, "profile", by="bench", seconds=seconds)
        if asked.outcome != "running":
            raise RuntimeError(f"profile not started: {asked.outcome} {asked.data}")
        during = _saturate_once(ctx, server)
        deadline = time.monotonic() + 30
        while (answer := inspector.read_answer(proc_id, asked.request_id) or {}).get(
            "state"
        ) == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        after = _saturate_once(ctx, server)
        close_clients(ctx)
    profile = answer.get("profile") or {}
    off = (before["heartbeats_per_s"] + after["heartbeats_per_s"]) / 2
    return {
        "connections": opened["opened"],
        "heartbeats_per_s_off": round(off),
        "heartbeats_per_s_profiling": round(during["heartbeats_per_s"]),
        "profiling_over_off": round(during["heartbeats_per_s"] / off, 3) if off else None,
        "cpu_us_per_heartbeat_off": round(
            (before["cpu_us_per_heartbeat"] + after["cpu_us_per_heartbeat"]) / 2
        ),
        "cpu_us_per_heartbeat_profiling": round(during["cpu_us_per_heartbeat"]),
        "cpu_profiling_over_off": round(
            2
            * during["cpu_us_per_heartbeat"]
            / (before["cpu_us_per_heartbeat"] + after["cpu_us_per_heartbeat"]),
            3,
        ),
        "heartbeats_per_s_phases": [
            round(before["heartbeats_per_s"]),
            round(during["heartbeats_per_s"]),
            round(after["heartbeats_per_s"]),
        ],
        "ack_p99_ms_off": round(max(before["ack_p99_ms"], after["ack_p99_ms"]), 2),
        "ack_p99_ms_profiling": round(during["ack_p99_ms"], 2),
        "profile_samples": profile.get("samples"),
        "sampler_cpu_percent": round(100 * profile["sampler_cpu_seconds"] / profile["seconds"], 2)
        if profile
        else None,
    }


# ---------------------------------------------------------------------- steady
def run_steady(ctx: Context, spec: ServerSpec) -> dict[str, Any]:
    """Many sockets beating on schedule (open loop), at the default and a fast interval."""
    o = ctx.options
    with serving(ctx, spec) as server:
        rss_idle = rss_kib(server.pid)
        opened = open_clients(ctx, spec, ctx.uids[: o.connections])
        settle(server.pid)
        rss_connected = rss_kib(server.pid)
        result: dict[str, Any] = {
            "connections": opened["opened"],
            "connect_failed": opened["failed"],
            "connect_s": opened["seconds"],
            "server_rss_kib_idle": rss_idle,
            "server_rss_kib_connected": rss_connected,
            "server_kib_per_connection": round(
                (rss_connected - rss_idle) / max(1, opened["opened"]), 1
            ),
        }
        if "errors" in opened:
            result["connect_errors"] = opened["errors"]
        phases = [(o.interval, o.duration), (o.fast_interval, o.fast_duration)]
        for interval, duration in phases:
            if duration <= 0:
                continue
            settle(server.pid)
            key = f"at_{interval:g}s"
            cpu = cpu_seconds(server.pid)
            start_at = time.monotonic() + 1.0
            answers = ctx.fleet.call(
                "heartbeats",
                {"start_at": start_at, "interval": interval, "duration": duration, "grace": 5.0},
            )
            cpu = cpu_seconds(server.pid) - cpu
            sent = sum(a["sent"] for a in answers)
            missing = sum(a["missing"] for a in answers)
            phase = {
                "interval_s": interval,
                "duration_s": duration,
                "heartbeats": sent,
                "heartbeats_per_s": round(sent / duration),
                "missing": missing,
                "closed_sockets": sum(a["closed"] for a in answers),
                **_latency_stats([a["latencies"] for a in answers]),
                "client_lag_max_ms": round(max(a["client_lag_max"] for a in answers) * 1000, 1),
                "server_cpu_us_per_heartbeat": round(cpu / max(1, sent) * 1e6),
            }
            # The worst ack less what the client's own loop stalls and a typical ack explain:
            # a lower bound on the longest the server left a due heartbeat unanswered.
            if "ack_max_ms" in phase:
                phase["server_stall_estimate_ms"] = round(
                    max(
                        0.0, phase["ack_max_ms"] - phase["client_lag_max_ms"] - phase["ack_p50_ms"]
                    ),
                    1,
                )
            result[key] = phase
        result["server_rss_kib_end"] = rss_kib(server.pid)
        close_clients(ctx)
    return result


# ---------------------------------------------------------------------- storm
def run_storm(ctx: Context, spec: ServerSpec) -> dict[str, Any]:
    """Connect all, drop all, reconnect all; on the platform, v2 views must converge."""
    o = ctx.options
    uids = ctx.uids[: o.storm_clients]
    platform = spec.name == PLATFORM
    if platform:
        # A presence.sync must list every user or no view can converge. Only here: elsewhere
        # (a room join's reply) listings keep the production limit.
        spec = spec.with_env(PRESENCE_GLOBAL_EVENTS="true", PRESENCE_LIST_LIMIT="1000000")
    # Without views the clients skip presence.sync: every sync lists everyone, so decoding
    # them is O(n²) client work that can bound the storm on a small machine.
    views = platform and o.storm_views
    cookie = o.storm_auth == "cookie"
    target = view_hash(uids)
    result: dict[str, Any] = {"clients": len(uids), "views": views, "auth": o.storm_auth}
    with serving(ctx, spec) as server:
        rss_idle = rss_kib(server.pid)
        for phase in ("connect", "reconnect"):
            cpu = cpu_seconds(server.pid)
            opened = open_clients(
                ctx,
                spec,
                uids,
                v2=platform,
                sync=views,
                cookie=cookie,
                track_every=o.storm_track_every,
            )
            result[f"{phase}_s"] = opened["seconds"]
            result[f"{phase}_failed"] = opened["failed"]
            result[f"{phase}_client_cpu_s"] = opened["client_cpu_s"]
            if "errors" in opened:
                result[f"{phase}_errors"] = opened["errors"]
            if views:
                result["v2_hellos"] = opened["v2_hellos"]
                answers = ctx.fleet.call(
                    "await_views", {"target": target, "wait_s": o.converge_timeout}
                )
                behind = sum(a["behind"] for a in answers)
                result["views_tracked"] = sum(a["tracked"] for a in answers)
                last = max(a["last_change"] for a in answers)
                result[f"{phase}_converged"] = behind == 0
                result[f"{phase}_converge_s"] = round(last - opened["last_hello"], 3)
                if behind:
                    result[f"{phase}_views_behind"] = behind
                for key in ("resyncs", "truncated", "sync_errors", "reader_errors"):
                    result[key] = sum(a[key] for a in answers)
            frames = sum(ctx.fleet.call("take_frames"))
            result[f"{phase}_frames_per_client"] = round(frames / max(1, len(uids)), 1)
            result[f"{phase}_settle_s"] = settle(server.pid)
            phase_cpu = cpu_seconds(server.pid) - cpu
            result[f"{phase}_server_cpu_s"] = round(phase_cpu, 2)
            # Everything the server did for the phase (handshakes, syncs, events, rows).
            result[f"{phase}_server_cpu_ms_per_connect"] = round(
                phase_cpu / max(1, opened["opened"]) * 1000, 3
            )
            if phase == "connect":
                result["server_kib_per_connection"] = round(
                    (rss_kib(server.pid) - rss_idle) / max(1, opened["opened"]), 1
                )
                result["drop_s"], last_close = _close_clients(ctx)
                # Nobody may stay listed online after their socket is gone (ghosts).
                zero = _online_zero_after(ctx, last_close)
                result["drop_online_zero_s"] = zero if zero is not None else -1
                if platform:
                    # The leave grace window holds a closed last connection's user online
                    # for a reconnect (docs/presence.md): ghosts are what outlasts it.
                    grace = leave_grace(spec)
                    result["drop_leave_grace_s"] = grace
                    result["drop_online_zero_after_grace_s"] = (
                        round(max(0.0, zero - grace), 3) if zero is not None else -1
                    )
                result["drop_settle_s"] = settle(server.pid)
                ctx.fleet.call("take_frames")
        log = server.own_log()  # not the lines of an earlier scenario on this port
        result["drop_give_up_lines"] = sum(log.count(line) for line in GIVE_UP_LINES)
        close_clients(ctx)
    result.update(gc_pauses(server))  # written by the server at its exit
    return result


# ---------------------------------------------------------------------- big room
def run_bigroom(ctx: Context, spec: ServerSpec) -> dict[str, Any]:
    """Redis commands and frames per join and per leave, in a small and a big room."""
    o = ctx.options
    if spec.name not in (PLATFORM, PEER):
        raise NotApplicableError("no rooms")
    sizes = o.room_sizes
    if spec.name == PEER:
        # The peer broadcasts its whole member list on every change (its README's
        # presence_changed receiver): filling a room is O(n²) frames, so it is capped.
        sizes = [min(s, o.peer_room_max) for s in sizes]
    result: dict[str, Any] = {"protocol": o.room_protocol if spec.name == PLATFORM else None}
    with serving(ctx, spec) as server:
        for size in sizes:
            result[f"room_{size}"] = _one_room(ctx, spec, server, size)
    result.update(gc_pauses(server))  # written by the server at its exit
    small, big = (result[f"room_{s}"] for s in (sizes[0], sizes[-1]))
    for event in ("join", "leave"):
        key = f"redis_commands_per_{event}"
        result[f"{key}_big_vs_small"] = round(big[key] / max(0.01, small[key]), 2)
    return result


def _one_room(ctx: Context, spec: ServerSpec, server: Server, size: int) -> dict[str, Any]:
    o = ctx.options
    room = f"big-{size}"
    members, probes = ctx.uids[:size], ctx.uids[size : size + o.room_probes]
    v2 = o.room_protocol == 2
    # Global events are off here, so the room's frames are the only presence frames; they
    # are counted, not decoded.
    opened = open_clients(ctx, spec, members, v2=v2, room_per_user=False)
    fill_started = time.monotonic()
    joins = ctx.fleet.call(
        "request_all", {"frame_type": "room.join", "data": {"room": room}, "concurrency": 20}
    )
    fill_s = time.monotonic() - fill_started
    kinds: dict[str, int] = {}
    for answer in joins:
        for kind, n in answer.items():
            kinds[kind] = kinds.get(kind, 0) + n
    fill_errors = sum(n for kind, n in kinds.items() if kind != "reply")
    # The probes all live on worker 0, after its share of the members.
    worker0 = len(members[0 :: ctx.fleet.size])
    open_clients(ctx, spec, probes, v2=v2, room_per_user=False, only=0)
    settle(server.pid)
    time.sleep(0.5)
    ctx.fleet.call("take_frames")
    background = _background_rate(ctx, o.idle_window)
    positions = list(range(worker0, worker0 + len(probes)))
    join = _measure_requests(ctx, server, positions, "room.join", room, background)
    # A leave has no member list in its reply: its cost is the presence event's alone.
    leave = _measure_requests(ctx, server, positions, "room.leave", room, background)
    close_clients(ctx)
    settle(server.pid)
    return {
        "members": opened["opened"],
        "member_joins": kinds,
        "fill_s": round(fill_s, 3),
        "fill_errors": fill_errors,
        "probes": len(probes),
        "redis_background_per_s": round(background, 1),
        **{f"{k}_join": v for k, v in join.items()},
        **{f"{k}_leave": v for k, v in leave.items()},
    }


def _background_rate(ctx: Context, window: float, slices: int = 8) -> float:
    """Redis commands per second with nobody joining: the median of ``slices`` slices of
    ``window``. The platform's periodic work comes in bursts (a reclaim's XAUTOCLAIM on
    every shard, once in a while): a mean over one window counts a burst or not by chance."""
    rates = []
    for _ in range(slices):
        started, commands = time.monotonic(), ctx.redis.commands()
        time.sleep(window / slices)
        rates.append((ctx.redis.commands() - commands) / (time.monotonic() - started))
    return statistics.median(rates)


def _measure_requests(
    ctx: Context,
    server: Server,
    positions: list[int],
    frame_type: str,
    room: str,
    background: float,
) -> dict[str, Any]:
    """Send ``frame_type`` from each probe in turn (spaced past the server's batching window);
    Redis commands (less the idle background rate) and frames received, per request.

    The commands per request are the median over the probes of each one's count, from its
    send to the next one's (its reply, its event's fan-out and log reads included), less the
    background rate over that time: a burst of periodic work lands in one probe's count and
    moves the median little (the mean over all probes is ``redis_commands_mean_per``)."""
    before = ctx.redis.by_command()
    started, commands = time.monotonic(), ctx.redis.commands()
    reply_ms = []
    marks = [(started, commands)]
    for position in positions:
        answer = ctx.fleet.call(
            "request",
            {"position": position, "frame_type": frame_type, "data": {"room": room}},
            only=0,
        )[0]
        reply_ms.append(answer["ms"])
        time.sleep(ctx.options.room_spacing)
        marks.append((time.monotonic(), ctx.redis.commands()))
    time.sleep(0.5)
    settle(server.pid)
    elapsed = time.monotonic() - started
    raw = ctx.redis.commands() - commands
    after = ctx.redis.by_command()
    n = max(1, len(positions))
    frames = sum(ctx.fleet.call("take_frames")) - len(positions)  # less the probes' replies
    each = [(c1 - c0) - background * (t1 - t0) for (t0, c0), (t1, c1) in itertools.pairwise(marks)]
    return {
        "redis_commands_per": round(statistics.median(each), 2) if each else 0.0,
        "redis_commands_mean_per": round((raw - background * elapsed) / n, 2),
        "redis_commands_raw_per": round(raw / n, 2),
        "redis_by_command_per": {
            name: round((after.get(name, 0) - before.get(name, 0)) / n, 2)
            for name in sorted(after)
            if after.get(name, 0) != before.get(name, 0) and name != "info"
        },
        "frames_per": round(frames / n, 1),
        "reply_ms_max": round(max(reply_ms, default=0.0), 2),
    }
