"""Handler timeouts with one timer per event loop instead of one per call.

``asyncio.timeout()`` around every handler call schedules and cancels a timer handle per
message (measured: ~9 % of a heartbeat's CPU at saturation, where nearly every call
finishes in a millisecond and its timer is thrown away). Here each call only records its
deadline in a dict; one timer per loop, armed while calls are in flight, cancels the
tasks whose deadline passed, at most :data:`GRANULARITY` late. The semantics are those of
``asyncio.timeout``: the caller's task is cancelled, and the call sees ``expired`` true.
"""

from __future__ import annotations

import asyncio

from presence.loops import LoopLocal

# How late a timeout may fire. Handler timeouts are seconds; 50 ms late is immaterial, and
# it lets calls with the same timeout share one timer run.
GRANULARITY = 0.05


class Deadline:
    """One call's deadline; ``expired`` once the watchdog cancelled its task for it."""

    __slots__ = ("expired", "task", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task, self.when, self.expired = task, when, False


class Watchdog:
    """The deadlines of one event loop's in-flight handler calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def enter(self, timeout: float) -> Deadline:
        """Watch the current task for ``timeout`` seconds."""
        task = asyncio.current_task(self._loop)
        assert task is not None, "handler calls run in a task"
        deadline = Deadline(task, self._loop.time() + timeout)
        self._calls[deadline] = None
        if self._timer is None or deadline.when < self._timer_when - GRANULARITY:
            self._arm(deadline.when)
        return deadline

    def exit(self, deadline: Deadline) -> None:
        """The call finished (or failed): stop watching it."""
        self._calls.pop(deadline, None)
        if not self._calls and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = max(when, self._loop.time() + GRANULARITY / 10)
        self._timer = self._loop.call_at(self._timer_when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        earliest = None
        for deadline in list(self._calls):
            if deadline.when <= now:
                del self._calls[deadline]
                deadline.expired = True
                deadline.task.cancel()
            elif earliest is None or deadline.when < earliest:
                earliest = deadline.when
        if earliest is not None:
            self._arm(max(earliest, now + GRANULARITY))


_watchdogs: LoopLocal[Watchdog] = LoopLocal(Watchdog)

# The running loop's watchdog. WARNING: hot path (every handler call): the bound method itself.
watchdog = _watchdogs.get
