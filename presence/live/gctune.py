"""Keep Python's cyclic garbage collector from stalling the event loop of a web process.

A full (generation 2) collection walks every tracked object. A web process holding tens of
thousands of sockets tracks millions of long-lived objects (Django's import graph, then
each connection's consumer, scope, tasks and buffers), and CPython starts a full
collection each time the long-lived objects grew by a quarter: during a connect storm that
is several collections of seconds each, during which no socket is served (measured: six
pauses of 2.4-2.9 s at 10,000 connections, docs/performance.md).

What we do:

- :func:`configure` at start-up: collect once, then ``gc.freeze()`` everything that exists
  (the framework and the app: never garbage), and set the thresholds so that no young
  collection walks more than ~40,000 objects (see the thresholds below);
- :class:`ConnectionGrowthFreezer`: each time the process's socket count has grown by
  ``FREEZE_STEP`` sockets over its last high (a connect burst), freeze again, so the new
  long-lived connection objects are walked by no later full collection either: a full
  collection walks at most the objects promoted since the last freeze. Cycles among
  objects of closed connections that were frozen are only reclaimed by a collection that
  walks everything (measured: 180-360 ms of CPU after 1,500-2,000 sockets, for ~13 objects
  of garbage per connection): it runs only once the process has no socket left, so it
  stalls none, and only once the garbage kept may be as large as the start-up objects
  (``RECLAIM_GROWTH``). (Unfreezing at half of the high, as before, or at a tenth stalled
  the sockets still open; a process that never empties keeps, at most, the cycles of the
  connections it held at its highs.)
- :func:`pause_stats`: the duration of every collection, per generation, from
  ``gc.callbacks``, so the pauses can be reported (the benchmark reads them).

``gc.freeze()`` itself is O(1) (it moves the generation lists to the permanent one).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# WARNING: the pause of a collection grows with the objects it walks (~0.2-0.5 us each on a
# busy 2-core machine: 115,000 start-up objects take 50 ms), and with what they reference (a
# young list or dict of thousands of entries, e.g. a listing being built, is walked entry by
# entry). A generation-1 collection walks generation 0 (at most GEN0_THRESHOLD net
# allocations) and the survivors of the last GEN1_THRESHOLD generation-0 collections:
# 5,000 + 3 x 5,000 = 20,000 objects at most. (It was 50,000 and 20: up to a million
# objects in a connect storm and 100-300 ms pauses; then 25,000 and 2, 75,000 objects, and
# still generation-0 collections of 30-94 ms of CPU in storms; then 10,000 and 3, and
# generation-1 collections of 65-75 ms of CPU in a 5,000-client storm on a slower machine,
# 23-33 ms at 5,000; docs/performance.md.) The
# total work of young collections barely depends on the threshold (each object is walked
# once per generation it survives into), only the longest pause does; CPython's 700 would
# add a fixed cost per collection thousands of times a second.
GEN0_THRESHOLD = 5_000
GEN1_THRESHOLD = 3
GEN2_THRESHOLD = 10
# Refreeze after this many sockets more than at the last freeze: the connection objects a
# full collection may walk stay at a few hundred sockets' worth.
FREEZE_STEP = 250
# Once the process has no socket left, unfreeze and collect only when what is frozen has
# grown to this many times what was frozen after the last collection. What a freeze keeps
# from being reclaimed is small (measured: the full collection after a drop of 1,500 sockets
# found 20,000 objects of garbage, ~13 per connection, but walked every live object for
# 180-360 ms of CPU), so that walk is worth it only once the garbage kept is as large as
# the start-up objects.
RECLAIM_GROWTH = 2.0
# While the process is busy when its last socket goes, the reclaim checks again this often.
RECLAIM_RETRY = 0.25
# A collection longer than this is logged: it stalled every socket of the process.
SLOW_PAUSE = 0.1

# generation -> (wall clock, this thread's CPU clock) at the collection's start
_started: dict[int, tuple[float, float]] = {}
_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
# The CPU the collections took (the thread's own clock): on a shared machine a pause's wall
# time also counts the time the process was not scheduled at all, which no tuning changes.
_cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}
# Sockets open in this process (ConnectionGrowthFreezer.observe): a pause stalls them.
_sockets = 0
# generation -> [longest pause while sockets were open (s), how many were over 50 ms]
_with_sockets: dict[int, list[float]] = {0: [0.0, 0], 1: [0.0, 0], 2: [0.0, 0]}
MAX_KEPT = 10_000  # pauses kept per generation (the newest)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if sys.is_finalizing():
        return  # the interpreter is going: nothing to report to, streams may be closed
    generation = int(info.get("generation", 0))
    if phase == "start":
        _started[generation] = (time.perf_counter(), time.thread_time())
        return
    began = _started.pop(generation, None)
    if began is None:
        return
    pause = time.perf_counter() - began[0]
    cpu = time.thread_time() - began[1]
    if _sockets:
        worst = _with_sockets.setdefault(generation, [0.0, 0])
        worst[0] = max(worst[0], pause)
        worst[1] += pause > 0.05
    for series, value in ((_pauses, pause), (_cpu, cpu)):
        kept = series.setdefault(generation, [])
        kept.append(value)
        if len(kept) > MAX_KEPT:
            del kept[: len(kept) - MAX_KEPT]
    if pause > SLOW_PAUSE:
        logger.warning(
            "gc generation %d paused the event loop for %.0f ms (%.0f ms of CPU, %d objects"
            " collected, %d frozen)",
            generation,
            pause * 1e3,
            cpu * 1e3,
            int(info.get("collected", 0)),
            gc.get_freeze_count(),
        )


def configure(*, report_at_exit: bool = False) -> None:
    """Freeze what start-up created and set the thresholds (once per process).

    ``report_at_exit`` writes the pause distribution to stderr when the process exits
    (``PRESENCE_GC_REPORT=1``; the benchmark reads it there).
    """
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
        # Out again before logging shuts down: collections at exit are nobody's stall.
        atexit.register(_uninstall)
        if report_at_exit:
            atexit.register(_report_at_exit)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)


def pause_stats() -> dict[str, dict[str, float]]:
    """Per generation: number of collections, their p50, p99 and max pause (ms, wall
    clock) and the most CPU one took (``cpu_max_ms``)."""
    out: dict[str, dict[str, float]] = {}
    for generation, pauses in sorted(_pauses.items()):
        ordered = sorted(pauses)
        if not ordered:
            out[str(generation)] = {"count": 0}
            continue

        def pct(q: float, ordered: list[float] = ordered) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 2)

        out[str(generation)] = {
            "count": len(ordered),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1e3, 2),
            # The loop-pause budget of docs/performance.md: collections longer than 50 ms.
            "over_50_ms": sum(1 for pause in ordered if pause > 0.05),
            "cpu_max_ms": round(max(_cpu.get(generation) or [0.0]) * 1e3, 2),
            "cpu_over_50_ms": sum(1 for cpu in _cpu.get(generation, ()) if cpu > 0.05),
            # Those that stalled open sockets (the rest ran with none open).
            "with_sockets_max_ms": round(_with_sockets.get(generation, [0.0])[0] * 1e3, 2),
            "with_sockets_over_50_ms": int(_with_sockets.get(generation, [0.0, 0])[1]),
        }
    out["frozen"] = {"count": gc.get_freeze_count()}
    return out


def last_pauses(count: int = 10) -> dict[str, list[float]]:
    """Per generation: the newest ``count`` pauses (ms, oldest first; the process inspector)."""
    return {
        str(generation): [round(p * 1e3, 2) for p in pauses[-count:]]
        for generation, pauses in sorted(_pauses.items())
    }


def _uninstall() -> None:
    if _on_gc in gc.callbacks:
        gc.callbacks.remove(_on_gc)


def _report_at_exit() -> None:
    # Straight to stderr: logging handlers may be closed by the time atexit runs.
    try:
        sys.stderr.write(f"presence.gctune gc pauses: {json.dumps(pause_stats())}\n")
    except (OSError, ValueError):
        pass


class ConnectionGrowthFreezer:
    """Refreezes after connect bursts; collects once when the sockets are all gone.

    ``busy`` says whether the process still has work the collection would delay (the
    connection ends of a mass disconnect, still being written when the last socket is
    gone): the collection then waits for it, checking every ``RECLAIM_RETRY`` seconds.
    """

    def __init__(self, busy: Callable[[], bool] = lambda: False) -> None:
        self.at_freeze = 0  # the socket count at the last freeze (0: none since start-up)
        self.baseline = gc.get_freeze_count()  # frozen after start-up or the last reclaim
        self.busy = busy
        self._deferred: asyncio.TimerHandle | None = None

    def observe(self, sockets: int, *, grew: bool) -> None:
        """Called with the process's socket count after a socket registered or left."""
        global _sockets
        _sockets = sockets
        if grew:
            if sockets >= self.at_freeze + FREEZE_STEP:
                gc.freeze()  # O(1): moves the generations to the permanent one
                self.at_freeze = sockets
        elif self.at_freeze and sockets == 0:
            self.at_freeze = 0  # the next burst freezes from its first step again
            if gc.get_freeze_count() >= self.baseline * RECLAIM_GROWTH and not self._deferred:
                self._reclaim_when_idle()  # (a pending deferral checks again by itself)

    def _reclaim_when_idle(self) -> None:
        """Reclaim what closed connections left in cycles, with no socket to stall and no
        work waiting, then freeze the survivors (start-up objects included) again."""
        self._deferred = None
        if _sockets:
            return  # a socket came back: its burst freezes again, the next drop reclaims
        # The walk takes ~0.1-1.5 s; taken while a mass disconnect's ends are queued it
        # delayed their leaves by as much (docs/performance.md, issue 18).
        if self.busy() and self._defer():
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.baseline = gc.get_freeze_count()

    def _defer(self) -> bool:
        """Check again in RECLAIM_RETRY s; False outside a running loop (reclaim now)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._deferred = loop.call_later(RECLAIM_RETRY, self._reclaim_when_idle)
        return True
