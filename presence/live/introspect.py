"""What a web process can tell about itself: its tasks, threads, collector and descriptors.

The pieces of the answer to an operator's "snapshot" request (presence.live.inspector).
Everything here runs on request only, in the process's event loop, and is bounded: at most
``TASK_GROUPS_MAX`` task groups, ``THREADS_MAX`` threads of ``STACK_DEPTH`` frames,
``FDS_LISTED`` descriptor names.

Task ages come from :func:`install_task_clock`: a task factory that notes each task's
creation time in a weak dictionary (about a microsecond per task; tasks created before it was
installed have no age). Without it the leak view could count tasks but not tell a task
created a second ago from one left over for an hour.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Coroutine, Generator
from typing import Any, TypedDict

from presence.live import gctune

TASK_GROUPS_MAX = 200
THREADS_MAX = 64
STACK_DEPTH = 40
FDS_LISTED = 100

_created: weakref.WeakKeyDictionary[asyncio.Future[Any], float] = weakref.WeakKeyDictionary()


class TaskGroup(TypedDict):
    """The tasks of one coroutine function."""

    name: str  # the coroutine's qualified name
    file: str  # where it is defined (path relative to sys.path when possible)
    count: int
    oldest_age: float | None  # seconds; None when no task of the group has a known age
    awaiting: str  # where the oldest task is suspended (innermost coroutine, file:line)


class ThreadStack(TypedDict):
    """One thread and its stack, innermost frame last."""

    name: str
    ident: int
    daemon: bool
    frames: list[str]


def install_task_clock(loop: asyncio.AbstractEventLoop) -> bool:
    """Note the creation time of every task of ``loop`` from now on (unless the loop has a
    task factory of its own already); True when installed."""
    if loop.get_task_factory() is not None:
        return False

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        _created[task] = time.monotonic()
        return task

    loop.set_task_factory(factory)
    return True


def short_path(filename: str) -> str:
    """``filename`` relative to the longest sys.path entry containing it (for display)."""
    best = ""
    for entry in sys.path:
        if entry and filename.startswith(entry.rstrip(os.sep) + os.sep) and len(entry) > len(best):
            best = entry.rstrip(os.sep) + os.sep
    return filename[len(best) :] if best else filename


def _coro_name(coro: Any) -> tuple[str, str]:
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    name = getattr(coro, "__qualname__", None) or type(coro).__qualname__
    return str(name), short_path(code.co_filename) if code is not None else ""


def _awaiting(coro: Any) -> str:
    """The innermost coroutine ``coro`` awaits, as "name (file:line)"."""
    for _ in range(100):  # await chains are short; the bound keeps a cycle from looping
        inner = getattr(coro, "cr_await", None)
        if inner is None or not hasattr(inner, "cr_frame"):
            break
        coro = inner
    frame = getattr(coro, "cr_frame", None)
    name, path = _coro_name(coro)
    if frame is None:
        return name
    return f"{name} ({path}:{frame.f_lineno})"


def task_groups(loop: asyncio.AbstractEventLoop) -> tuple[int, list[TaskGroup]]:
    """(number of tasks, their groups by coroutine, largest first); call in ``loop``."""
    now = time.monotonic()
    groups: dict[tuple[str, str], list[Any]] = {}
    tasks = list(asyncio.all_tasks(loop))
    for task in tasks:
        name, path = _coro_name(task.get_coro())
        created = _created.get(task)
        entry = groups.get((name, path))
        if entry is None:
            groups[(name, path)] = [1, created, task]
            continue
        entry[0] += 1
        if created is not None and (entry[1] is None or created < entry[1]):
            entry[1], entry[2] = created, task
    ordered = sorted(groups.items(), key=lambda item: (-item[1][0], item[0]))
    out: list[TaskGroup] = []
    for (name, path), (count, created, oldest) in ordered[:TASK_GROUPS_MAX]:
        out.append(
            {
                "name": name,
                "file": path,
                "count": count,
                "oldest_age": None if created is None else round(now - created, 3),
                "awaiting": _awaiting(oldest.get_coro()),
            }
        )
    return len(tasks), out


def thread_stacks() -> list[ThreadStack]:
    """Every thread's current stack (innermost frame last), the calling thread included."""
    threads = {t.ident: t for t in threading.enumerate()}
    out: list[ThreadStack] = []
    for ident, frame in list(sys._current_frames().items())[:THREADS_MAX]:
        thread = threads.get(ident)
        # The innermost frames, without reading source files (this runs in the event loop).
        summary = traceback.StackSummary.extract(
            traceback.walk_stack(frame), limit=STACK_DEPTH, lookup_lines=False
        )
        summary.reverse()
        out.append(
            {
                "name": thread.name if thread is not None else f"thread {ident}",
                "ident": ident,
                "daemon": bool(thread.daemon) if thread is not None else False,
                "frames": [f"{short_path(f.filename)}:{f.lineno} in {f.name}" for f in summary],
            }
        )
    return sorted(out, key=lambda t: (t["name"] != "MainThread", t["name"]))


def gc_state() -> dict[str, Any]:
    """The collector: counts, thresholds, totals per generation, pause summary and newest."""
    return {
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
        "frozen": gc.get_freeze_count(),
        "generations": gc.get_stats(),
        "pauses": gctune.pause_stats(),
        "last_pauses_ms": gctune.last_pauses(),
    }


def open_fds() -> dict[str, Any]:
    """Open file descriptors by kind (socket, pipe, anon, file) and the first non-sockets."""
    root = "/proc/self/fd"
    try:
        names = os.listdir(root)
    except OSError:
        return {"count": None, "kinds": {}, "listed": []}
    kinds: dict[str, int] = {}
    listed: list[str] = []
    for fd in names:
        try:
            target = os.readlink(f"{root}/{fd}")
        except OSError:
            continue  # closed between listdir and readlink (the listing's own fd, too)
        kind = target.split(":", 1)[0] if target.endswith("]") and ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind != "socket" and len(listed) < FDS_LISTED:
            listed.append(f"{fd} → {target}")
    return {"count": sum(kinds.values()), "kinds": dict(sorted(kinds.items())), "listed": listed}
