"""The process inspector: a process answers operators through the real Redis (issue 24)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from presence import store
from presence.live import inspector
from presence.live.inspector import ask_process, read_answer
from tests.support.inspected import ThreadedProcess


async def leaked_forever() -> None:
    """A task nobody awaits or cancels: the leak the grouped view must show."""
    await asyncio.Event().wait()


def spin(seconds: float) -> int:
    """Burn CPU in a recognisable frame (the profile must name it)."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        n += 1
    return n


async def spinning_in_the_loop(seconds: float) -> None:
    spin(seconds)


def group(snapshot: dict[str, Any], suffix: str) -> dict[str, Any]:
    return next(g for g in snapshot["tasks"]["groups"] if g["name"].endswith(suffix))


class TestSnapshot:
    def test_leaked_tasks_are_grouped_with_their_count_and_age(self, r: Any) -> None:
        with ThreadedProcess() as p:
            for _ in range(3):
                p.spawn(leaked_forever())
            time.sleep(0.3)
            answer = ask_process(p.id, "snapshot", by="alice")
        assert answer.outcome == "answered", answer
        snapshot = answer.data["snapshot"]
        leaked = group(snapshot, "leaked_forever")
        assert leaked["count"] == 3
        assert leaked["file"].endswith("tests/presence/live/test_inspector.py")
        assert leaked["oldest_age"] is not None and leaked["oldest_age"] >= 0.3
        assert "Event.wait" in leaked["awaiting"]
        # The process's own machinery is there too, one task each.
        assert group(snapshot, "LocalProcess.run")["count"] == 1
        assert group(snapshot, "Inspector.run")["count"] == 1
        assert snapshot["tasks"]["count"] >= 5

    def test_snapshot_has_threads_gc_lag_fds_and_the_record(self, r: Any) -> None:
        with ThreadedProcess() as p:
            time.sleep(0.6)  # two lag probes
            snapshot = ask_process(p.id, "snapshot", by="alice").data["snapshot"]
        assert snapshot["record"]["id"] == p.id and snapshot["record"]["rss_bytes"] > 0
        names = {t["name"] for t in snapshot["threads"]}
        assert {"MainThread", "inspected-loop"} <= names
        loop_thread = next(t for t in snapshot["threads"] if t["name"] == "inspected-loop")
        assert any("run_forever" in f for f in loop_thread["frames"])
        assert len(snapshot["gc"]["counts"]) == 3 and "0" in snapshot["gc"]["last_pauses_ms"]
        assert len(snapshot["loop_lag"]) >= 2
        assert snapshot["fds"]["count"] > 0 and snapshot["fds"]["kinds"].get("socket", 0) >= 1

    def test_the_request_and_its_outcome_are_logged_with_the_operator(
        self, r: Any, caplog: Any
    ) -> None:
        caplog.set_level("INFO", logger="presence.live.inspector")
        with ThreadedProcess() as p:
            ask_process(p.id, "snapshot", by="alice")
        lines = [rec.getMessage() for rec in caplog.records]
        assert any("snapshot" in line and "requested by alice" in line for line in lines)
        assert any("by alice: answered" in line for line in lines)


class TestNotAnswering:
    def test_an_unregistered_process_is_gone_at_once(self, r: Any) -> None:
        answer = ask_process("nowhere:1:abc", "snapshot", by="alice")
        assert answer.outcome == "gone" and answer.waited < 1

    def test_a_dead_process_whose_record_lives_on_is_not_answering_within_5_s(self, r: Any) -> None:
        # What a killed process leaves: its record (until three refreshes are missed), and
        # nobody popping its request list.
        with ThreadedProcess() as p:
            proc_id = p.id
        r.hset(store.control_keys().proc(proc_id), mapping={"id": proc_id, "pid": 1})
        answer = ask_process(proc_id, "snapshot", by="alice")
        assert answer.outcome == "not_answering"
        assert inspector.ASK_WAIT <= answer.waited < inspector.ASK_WAIT + 1

    def test_a_stale_request_is_dropped_not_answered_late(self, r: Any) -> None:
        with ThreadedProcess() as p:
            stale = {"id": "old", "kind": "snapshot", "by": "x", "at": time.time() - 60}
            r.rpush(store.control_keys().proc_ask(p.id), json.dumps(stale))
            r.rpush(store.control_keys().proc_ask(p.id), "not json")
            assert ask_process(p.id, "snapshot", by="alice").outcome == "answered"
            assert read_answer(p.id, "old") is None

    def test_an_answer_over_the_bound_is_refused(self, r: Any) -> None:
        big = "x" * (store.INSPECT_REPLY_MAX_BYTES + 1)

        async def write() -> None:
            client = store.get_async_redis()
            try:
                await store.write_inspect_reply(client, "p", "rid", big, ttl_ms=1000)
            finally:
                await client.aclose()

        with pytest.raises(ValueError):
            asyncio.run(write())
        assert r.get(store.control_keys().proc_reply("p", "rid")) is None


class TestProfile:
    @pytest.mark.serial  # measures the sampler's CPU and rate: others would distort it
    def test_a_profile_names_the_busy_frames_and_reports_its_cost(self, r: Any) -> None:
        with ThreadedProcess() as p:
            answer = ask_process(p.id, "profile", by="alice", seconds=1.5)
            assert answer.outcome == "running"
            p.run(spinning_in_the_loop(1.2))
            deadline = time.monotonic() + 10
            while (done := read_answer(p.id, answer.request_id))["state"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        profile = done["profile"]
        assert 60 <= profile["samples"] <= 160  # 100 Hz for 1.5 s, slower under a busy GIL
        names = {f["name"] for f in profile["frames"]}
        assert {"spin", "spinning_in_the_loop"} <= names
        spin_index = next(i for i, f in enumerate(profile["frames"]) if f["name"] == "spin")
        in_spin = sum(c for _, idxs, c in profile["stacks"] if spin_index in idxs)
        loop_thread = profile["threads"].index("inspected-loop")
        loop_samples = sum(c for t, _, c in profile["stacks"] if t == loop_thread)
        assert in_spin >= 0.6 * loop_samples  # 1.2 s of the 1.5 s
        # The sampler's own CPU use, reported with the profile: well under 5 % of a core.
        assert profile["sampler_cpu_seconds"] < 0.05 * profile["seconds"]

    def test_one_profile_at_a_time_and_bounds_on_its_length(self, r: Any) -> None:
        with ThreadedProcess() as p:
            first = ask_process(p.id, "profile", by="alice", seconds=1)
            assert first.outcome == "running"
            assert ask_process(p.id, "profile", by="bob", seconds=1).outcome == "busy"
            assert ask_process(p.id, "profile", by="bob", seconds=31).outcome == "error"
            assert ask_process(p.id, "profile", by="bob", seconds=0).outcome == "error"
            deadline = time.monotonic() + 10
            while read_answer(p.id, first.request_id)["state"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # Done: the next one may start, and no sampler thread is left behind.
            assert ask_process(p.id, "profile", by="bob", seconds=0.2).outcome == "running"
            time.sleep(0.6)
        assert not any(t.name == "presence-profiler" for t in threading.enumerate())

    def test_no_sampler_thread_while_idle(self, r: Any) -> None:
        with ThreadedProcess() as p:
            ask_process(p.id, "snapshot", by="alice")
            assert not any(t.name == "presence-profiler" for t in threading.enumerate())
