"""Operators look inside a live web process through Redis: no port, no shell, no ptrace.

Each web process runs one :class:`Inspector` task beside its registry refresher
(presence.live.processes). It waits on its request list (``{P}:proc:<id>:ask``, BLPOP on the
loop's blocking client, ``LISTEN_BLOCK`` seconds at a time: one idle round trip per period)
and answers in ``{P}:proc:<id>:reply:<rid>``:

* ``snapshot``: the registry record, asyncio tasks grouped by coroutine (count, oldest
  age), thread stacks, the collector, loop-lag history, open descriptors;
* ``profile``: a sampling CPU profile of ``seconds`` (at most ``PROFILE_MAX_SECONDS``; one
  at a time per process). It answers ``running`` at once, then ``done`` with the profile
  when the sampler thread finishes, or ``busy`` while another profile runs.

The console (a sync view) calls :func:`ask_process`: it queues the request and polls the
answer for ``ASK_WAIT`` seconds; a process that does not answer by then is reported as not
answering (a stalled loop, a dead process whose record has not expired yet), and one that is
not registered at all as gone. Requests and outcomes are logged with the operator's name.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from redis.exceptions import RedisError

from presence import store
from presence.live import introspect, sampler

logger = logging.getLogger(__name__)

ASK_WAIT = 5.0  # seconds the console waits for an answer
ASK_POLL = 0.05  # how often it looks for one
PROFILE_MAX_SECONDS = 30
LISTEN_BLOCK = 10  # seconds per BLPOP while idle
REPLY_TTL_MS = 15 * 60 * 1000  # answers (profiles) stay readable this long
REQUEST_TTL_MS = int(ASK_WAIT * 2 * 1000)  # a request list nobody pops is gone after this
# A request older than this (by the asker's clock) is dropped unanswered: its page gave up
# long ago. Far beyond ASK_WAIT so that clocks a few seconds apart between hosts never make
# a live request look stale.
STALE_AFTER = 30.0

Kind = Literal["snapshot", "profile"]
Outcome = Literal["answered", "running", "busy", "done", "not_answering", "gone", "error"]


class Source(Protocol):
    """What the inspector reads of its process (presence.live.processes.LocalProcess)."""

    id: str

    def record(self) -> Any: ...

    def lag_history(self) -> Sequence[tuple[float, float]]: ...


@dataclass
class Inspector:
    """Answers the operators' requests to one process, in that process's event loop."""

    source: Source
    profiling: threading.Thread | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self) -> None:
        """Pop requests and answer them until cancelled; Redis outages are logged once."""
        failing = False
        while True:
            try:
                client = store.get_async_redis(blocking=True)
                raw = await store.await_inspect_request(client, self.source.id, block=LISTEN_BLOCK)
            except (RedisError, OSError) as exc:
                if not failing:
                    logger.warning("inspector of %s: cannot read requests: %s", self.source.id, exc)
                failing = True
                await asyncio.sleep(1.0)
                continue
            failing = False
            if raw is not None:
                await self.handle(raw)

    async def handle(self, raw: str) -> None:
        """Answer one request (JSON: id, kind, seconds, by, at)."""
        try:
            request = json.loads(raw)
            rid = str(request["id"])[:32]
            kind = request["kind"]
            asked_at = float(request["at"])
        except (ValueError, KeyError, TypeError):
            logger.warning("inspector of %s: malformed request dropped", self.source.id)
            return
        if time.time() - asked_at > STALE_AFTER:
            # The operator's page gave up on it already: answering now would only cost.
            logger.info("inspector of %s: stale request %s dropped", self.source.id, rid)
            return
        if kind == "snapshot":
            await self.reply(rid, {"state": "answered", "snapshot": self.snapshot()})
        elif kind == "profile":
            await self.start_profile(rid, request.get("seconds"))
        else:
            await self.reply(rid, {"state": "error", "error": f"unknown request {kind!r}"})

    def snapshot(self) -> dict[str, Any]:
        """The state of this process now (runs in its loop: the task list is read safely)."""
        loop = asyncio.get_running_loop()
        count, groups = introspect.task_groups(loop)
        return {
            "record": self.source.record(),
            "tasks": {"count": count, "groups": groups},
            "threads": introspect.thread_stacks(),
            "gc": introspect.gc_state(),
            "loop_lag": [[round(t, 3), round(lag, 6)] for t, lag in self.source.lag_history()],
            "fds": introspect.open_fds(),
            "profiling": self.profiling is not None,
        }

    async def start_profile(self, rid: str, seconds: Any) -> None:
        """Start the sampler thread (one at a time) and answer "running" or "busy"."""
        try:
            secs = float(seconds)
        except (TypeError, ValueError):
            secs = 0.0
        if not 0 < secs <= PROFILE_MAX_SECONDS:
            await self.reply(rid, {"state": "error", "error": "seconds must be in (0, 30]"})
            return
        if self.profiling is not None:
            await self.reply(rid, {"state": "busy"})
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[sampler.Profile] = loop.create_future()

        def work() -> None:
            try:
                profile = sampler.sample(secs)
            except BaseException as exc:  # reported to the operator, never lost
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, profile, None)

        thread = threading.Thread(target=work, name="presence-profiler", daemon=True)
        self.profiling = thread
        thread.start()
        await self.reply(rid, {"state": "running", "seconds": secs, "until": time.time() + secs})
        task = loop.create_task(self.finish_profile(rid, done), context=contextvars.Context())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def finish_profile(self, rid: str, done: asyncio.Future[sampler.Profile]) -> None:
        """Wait for the sampler and store its profile as the answer."""
        try:
            profile = await done
        except Exception as exc:
            await self.reply(rid, {"state": "error", "error": f"profile failed: {exc!r}"})
            return
        finally:
            self.profiling = None
        await self.reply(rid, {"state": "done", "profile": profile})

    async def reply(self, rid: str, answer: dict[str, Any]) -> None:
        """Write ``answer``; an answer over the size bound is replaced by an error."""
        answer = {**answer, "process": self.source.id, "answered_at": time.time()}
        payload = json.dumps(answer, default=str)
        if len(payload) > store.INSPECT_REPLY_MAX_BYTES:
            payload = json.dumps(
                {"state": "error", "error": f"answer too large ({len(payload)} bytes)"}
            )
        try:
            async with store.bounded():
                await store.write_inspect_reply(
                    store.get_async_redis(), self.source.id, rid, payload, ttl_ms=REPLY_TTL_MS
                )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("inspector of %s: cannot answer %s: %s", self.source.id, rid, exc)


def _settle(
    future: asyncio.Future[sampler.Profile], result: Any, exc: BaseException | None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# --------------------------------------------------------------------------- the asking side
@dataclass
class Answer:
    """What :func:`ask_process` got: the outcome, the answer's JSON, and how long it took."""

    outcome: Outcome
    request_id: str
    data: dict[str, Any] = field(default_factory=dict)
    waited: float = 0.0


def ask_process(
    proc_id: str,
    kind: Kind,
    *,
    by: str,
    seconds: float | None = None,
    wait: float = ASK_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> Answer:
    """Ask process ``proc_id`` for a snapshot or to start a profile; wait up to ``wait`` s.

    ``by`` is the operator's username, logged with the request and its outcome.
    """
    rid = secrets.token_hex(8)
    request = {"id": rid, "kind": kind, "by": by, "at": time.time()}
    if seconds is not None:
        request["seconds"] = seconds
    client = store.get_redis()
    started = time.monotonic()
    logger.info("inspect %s of %s requested by %s (request %s)", kind, proc_id, by, rid)
    if not store.push_inspect_request(client, proc_id, json.dumps(request), ttl_ms=REQUEST_TTL_MS):
        answer = Answer("gone", rid)
    else:
        answer = Answer("not_answering", rid)
        while time.monotonic() - started < wait:
            raw = store.read_inspect_reply(client, proc_id, rid)
            if raw is not None:
                data = json.loads(raw)
                answer = Answer(data.get("state", "error"), rid, data)
                break
            sleep(ASK_POLL)
    answer.waited = round(time.monotonic() - started, 3)
    logger.info(
        "inspect %s of %s by %s: %s after %.1f s (request %s)",
        kind,
        proc_id,
        by,
        answer.outcome,
        answer.waited,
        rid,
    )
    return answer


def read_answer(proc_id: str, request_id: str) -> dict[str, Any] | None:
    """A stored answer (a profile, running or done), or None when expired or unknown."""
    raw = store.read_inspect_reply(store.get_redis(), proc_id, request_id)
    return None if raw is None else json.loads(raw)
