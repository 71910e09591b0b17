"""A sampling CPU profiler of this process: a thread that reads every thread's stack.

Chosen over pyinstrument or yappi (docs/performance.md has the numbers): it is a few dozen
lines of our own, needs no dependency, and costs nothing when no profile runs (no hook, no
tracer, no signal handler is installed; the thread exists only while sampling). While it
samples, each sample is one ``sys._current_frames()`` and a walk up each stack, holding the
GIL for tens of microseconds, ``SAMPLE_HZ`` times a second. It reports its own CPU time, so
every profile says what it cost.

A sample is the tuple of code objects from the outermost frame to the innermost, per thread;
:func:`call_tree` and :func:`to_speedscope` turn the counts into a tree for the console and
into a file for https://www.speedscope.app.
"""

from __future__ import annotations

import sys
import threading
import time
from types import CodeType, FrameType
from typing import Any, TypedDict

from presence.live.introspect import short_path

SAMPLE_HZ = 100
# While sampling, the GIL's switch interval (5 ms by default) is lowered to this. A sample is
# taken only when the sampler gets the GIL: with 5 ms, a busy event loop hands it over mostly
# when it goes idle in select(), so work in bursts shorter than 5 ms (a heartbeat batch) was
# never seen. The sampler asks for the GIL 100 times a second, so the loop is interrupted at
# most that often more; restored when the profile ends.
SWITCH_INTERVAL = 0.0005
MAX_DEPTH = 96  # frames kept per sample (the innermost ones)
MAX_STACKS = 4000  # distinct stacks kept in a profile (the most frequent)


class Profile(TypedDict):
    """A finished profile: frames, and stacks as (thread index, frame indexes, count)."""

    seconds: float
    interval: float
    samples: int
    sampler_cpu_seconds: float  # the sampler thread's own CPU time
    threads: list[str]
    frames: list[dict[str, Any]]  # {"name", "file", "line"}
    stacks: list[list[Any]]  # [thread index, [frame index, outermost first], count]
    dropped_stacks: int  # distinct stacks left out (rarest first) to bound the size


def _stack(frame: FrameType | None) -> tuple[CodeType, ...]:
    codes: list[CodeType] = []
    while frame is not None and len(codes) < MAX_DEPTH:
        codes.append(frame.f_code)
        frame = frame.f_back
    codes.reverse()
    return tuple(codes)


def sample(seconds: float, *, hz: int = SAMPLE_HZ) -> Profile:
    """Sample every other thread's stack ``hz`` times a second for ``seconds`` (blocks)."""
    me = threading.get_ident()
    interval = 1.0 / hz
    counts: dict[tuple[int, tuple[CodeType, ...]], int] = {}
    samples = 0
    cpu_started = time.thread_time()
    started = time.monotonic()
    deadline = started + seconds
    next_at = started
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL))
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    key = (ident, _stack(frame))
                    counts[key] = counts.get(key, 0) + 1
            samples += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        sys.setswitchinterval(switch_interval)
    return _build(
        counts,
        seconds=time.monotonic() - started,
        interval=interval,
        samples=samples,
        cpu=time.thread_time() - cpu_started,
    )


def _build(
    counts: dict[tuple[int, tuple[CodeType, ...]], int],
    *,
    seconds: float,
    interval: float,
    samples: int,
    cpu: float,
) -> Profile:
    names = {t.ident: t.name for t in threading.enumerate()}
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    kept = ordered[:MAX_STACKS]
    threads: list[str] = []
    thread_index: dict[int, int] = {}
    frames: list[dict[str, Any]] = []
    frame_index: dict[CodeType, int] = {}
    stacks: list[list[Any]] = []
    for (ident, codes), count in kept:
        if ident not in thread_index:
            thread_index[ident] = len(threads)
            threads.append(names.get(ident, f"thread {ident}"))
        idxs = []
        for code in codes:
            at = frame_index.get(code)
            if at is None:
                at = frame_index[code] = len(frames)
                frames.append(
                    {
                        "name": code.co_qualname,
                        "file": short_path(code.co_filename),
                        "line": code.co_firstlineno,
                    }
                )
            idxs.append(at)
        stacks.append([thread_index[ident], idxs, count])
    return {
        "seconds": round(seconds, 3),
        "interval": interval,
        "samples": samples,
        "sampler_cpu_seconds": round(cpu, 4),
        "threads": threads,
        "frames": frames,
        "stacks": stacks,
        "dropped_stacks": len(ordered) - len(kept),
    }


class TreeNode(TypedDict):
    """One node of :func:`call_tree`: a frame, its samples (itself and below), children."""

    name: str
    where: str
    samples: int
    percent: float
    children: list[TreeNode]


def call_tree(profile: Profile, *, min_percent: float = 0.5) -> list[TreeNode]:
    """Per thread (the main thread first), the tree of calls with their share of the wall
    time: the samples a frame was on the stack in, over the sampling rounds (nodes under
    ``min_percent`` pruned). A thread waiting all along is at 100 % in its waiting frame."""
    total = profile["samples"] or 1
    roots: dict[int, dict[str, Any]] = {}
    for thread, idxs, count in profile["stacks"]:
        node = roots.setdefault(thread, {"samples": 0, "children": {}})
        node["samples"] += count
        for idx in idxs:
            node = node["children"].setdefault(idx, {"samples": 0, "children": {}})
            node["samples"] += count

    def convert(name: str, where: str, raw: dict[str, Any]) -> TreeNode:
        children = []
        for idx, child in sorted(raw["children"].items(), key=lambda kv: -kv[1]["samples"]):
            if 100.0 * child["samples"] / total < min_percent:
                continue
            frame = profile["frames"][idx]
            children.append(convert(frame["name"], f"{frame['file']}:{frame['line']}", child))
        return {
            "name": name,
            "where": where,
            "samples": raw["samples"],
            "percent": round(100.0 * raw["samples"] / total, 1),
            "children": children,
        }

    names = profile["threads"]
    return [
        convert(f"thread {names[thread]}", "", raw)
        for thread, raw in sorted(
            roots.items(), key=lambda kv: (names[kv[0]] != "MainThread", names[kv[0]])
        )
    ]


def to_speedscope(profile: Profile, *, name: str) -> dict[str, Any]:
    """The profile in speedscope's file format: one sampled profile per thread."""
    # Each sampling round stands for the wall time it covered: under a thread holding the
    # GIL, rounds come later than the nominal interval, and the file must still add up.
    per_round = profile["seconds"] / profile["samples"] if profile["samples"] else 0.0
    per_thread: dict[int, tuple[list[list[int]], list[float]]] = {}
    for thread, idxs, count in profile["stacks"]:
        samples, weights = per_thread.setdefault(thread, ([], []))
        samples.append(list(idxs))
        weights.append(round(count * per_round, 6))
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": name,
        "exporter": "presence.live.sampler",
        "activeProfileIndex": 0,
        "shared": {"frames": profile["frames"]},
        "profiles": [
            {
                "type": "sampled",
                "name": profile["threads"][thread],
                "unit": "seconds",
                "startValue": 0,
                "endValue": round(sum(weights), 6),
                "samples": samples,
                "weights": weights,
            }
            for thread, (samples, weights) in sorted(per_thread.items())
        ],
    }
