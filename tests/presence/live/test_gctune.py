"""GC tuning: start-up objects frozen, pauses recorded, refreeze after connect bursts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from presence.live import gctune


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Back to the test process's settings (tests/conftest.py) afterwards."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_configure_freezes_and_raises_the_young_threshold(restore_gc: None) -> None:
    gctune.configure()

    assert gc.get_freeze_count() > 10_000  # Django and the app, out of every collection
    assert gc.get_threshold()[0] == gctune.GEN0_THRESHOLD


def test_pauses_are_recorded_per_generation(restore_gc: None) -> None:
    gctune.configure()
    before = gctune.pause_stats()["2"].get("count", 0)

    gc.collect()

    stats = gctune.pause_stats()
    assert stats["2"]["count"] == before + 1
    assert stats["2"]["max_ms"] >= stats["2"]["p50_ms"] >= 0
    # The collection's own CPU is kept beside its wall time (a shared machine's pauses
    # include time the process was not scheduled).
    assert 0 < stats["2"]["cpu_max_ms"]
    assert stats["2"]["cpu_over_50_ms"] <= stats["2"]["count"]


def test_refreeze_after_each_step_of_growth_and_collect_after_the_drop(restore_gc: None) -> None:
    gctune.configure()  # the pause recorder counts the collections below
    gc.unfreeze()
    freezer = gctune.ConnectionGrowthFreezer()
    step = gctune.FREEZE_STEP

    freezer.observe(step - 1, grew=True)
    assert gc.get_freeze_count() == 0  # too few sockets to matter
    freezer.observe(step, grew=True)
    assert gc.get_freeze_count() > 0 and freezer.at_freeze == step
    freezer.observe(2 * step - 1, grew=True)
    assert freezer.at_freeze == step  # less than a step more: no new freeze
    young = [[object()] for _ in range(100)]  # tracked objects allocated since the freeze
    frozen = gc.get_freeze_count()
    freezer.observe(2 * step, grew=True)
    assert freezer.at_freeze == 2 * step
    assert gc.get_freeze_count() >= frozen + len(young)
    del young

    freezer.observe(1, grew=False)
    assert freezer.at_freeze == 2 * step  # a socket is still open: nothing yet
    freezer.baseline = 0  # the frozen objects have grown past any share of the baseline
    # Cyclic garbage that was frozen with a connection is only reclaimed by the collection
    # once the process is empty.
    cycle: list[object] = []
    cycle.append(cycle)
    gc.freeze()
    collected = gctune.pause_stats()["2"].get("count", 0)
    del cycle
    freezer.observe(0, grew=False)
    stats = gctune.pause_stats()["2"]
    assert stats.get("count", 0) == collected + 1  # one full collection
    assert gc.get_freeze_count() > 0  # what survived it is frozen again
    assert freezer.at_freeze == 0
    freezer.observe(0, grew=False)
    assert gctune.pause_stats()["2"].get("count", 0) == collected + 1  # no second one
    assert freezer.baseline == gc.get_freeze_count()


def test_an_empty_process_keeps_a_small_frozen_remainder(restore_gc: None) -> None:
    gctune.configure()
    freezer = gctune.ConnectionGrowthFreezer()
    freezer.observe(gctune.FREEZE_STEP, grew=True)
    collected = gctune.pause_stats()["2"].get("count", 0)
    # Frozen has not grown to RECLAIM_GROWTH x the start-up objects: no walk over them all.
    freezer.observe(0, grew=False)
    assert gctune.pause_stats()["2"].get("count", 0) == collected
    assert freezer.at_freeze == 0 and gc.get_freeze_count() > 0


def test_pauses_with_sockets_open_are_told_apart(restore_gc: None) -> None:
    gctune.configure()
    freezer = gctune.ConnectionGrowthFreezer()
    freezer.observe(3, grew=True)
    gc.collect()
    assert gctune.pause_stats()["2"]["with_sockets_max_ms"] > 0
    freezer.observe(0, grew=False)


def test_young_collections_walk_a_bounded_number_of_objects() -> None:
    # A generation-1 collection walks generation 0 and the survivors of GEN1_THRESHOLD
    # generation-0 collections: the bound that keeps its pause under the 50 ms budget.
    assert gctune.GEN0_THRESHOLD * (1 + gctune.GEN1_THRESHOLD) <= 40_000


def busy_freezer() -> tuple[list[int], gctune.ConnectionGrowthFreezer, int]:
    """A freezer past a connect burst whose end queue is busy while ``pending`` holds
    anything, and the count of full collections so far."""
    gctune.configure()
    pending = [1]
    freezer = gctune.ConnectionGrowthFreezer(busy=lambda: bool(pending))
    freezer.observe(gctune.FREEZE_STEP, grew=True)
    freezer.baseline = 0  # what is frozen has grown past any share of the baseline
    return pending, freezer, gctune.pause_stats()["2"].get("count", 0)


async def test_the_reclaim_after_the_drop_waits_until_the_process_is_idle(
    restore_gc: None,
) -> None:
    """The last socket gone while its ends are still queued: the full collection (up to a
    second and more) comes after them, not in their way."""
    pending, freezer, full = busy_freezer()

    freezer.observe(0, grew=False)
    await asyncio.sleep(gctune.RECLAIM_RETRY * 2.5)
    assert gctune.pause_stats()["2"].get("count", 0) == full  # still busy: not yet
    pending.clear()
    await asyncio.sleep(gctune.RECLAIM_RETRY * 1.5)
    assert gctune.pause_stats()["2"].get("count", 0) == full + 1  # idle: once
    assert freezer.baseline > 0  # the survivors frozen again


async def test_a_socket_back_before_the_process_is_idle_cancels_the_reclaim(
    restore_gc: None,
) -> None:
    pending, freezer, full = busy_freezer()

    freezer.observe(0, grew=False)
    freezer.observe(1, grew=True)  # a reconnect: the collection would stall it
    pending.clear()
    await asyncio.sleep(gctune.RECLAIM_RETRY * 2)
    assert gctune.pause_stats()["2"].get("count", 0) == full


async def test_a_second_drop_while_the_reclaim_waits_does_not_reclaim_twice(
    restore_gc: None,
) -> None:
    pending, freezer, full = busy_freezer()

    freezer.observe(0, grew=False)
    freezer.observe(gctune.FREEZE_STEP, grew=True)  # another burst, gone again at once
    freezer.observe(0, grew=False)
    pending.clear()
    await asyncio.sleep(gctune.RECLAIM_RETRY * 2.5)
    assert gctune.pause_stats()["2"].get("count", 0) == full + 1  # one reclaim, not two
