"""GC tuning: start-up objects frozen, pauses recorded, refreeze after connect bursts."""

from __future__ import annotations

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


def test_refreeze_after_growth_and_unfreeze_after_the_drop(restore_gc: None) -> None:
    gc.unfreeze()
    freezer = gctune.ConnectionGrowthFreezer()

    freezer.observe(100, grew=True)
    assert gc.get_freeze_count() == 0  # too few sockets to matter
    freezer.observe(600, grew=True)
    assert gc.get_freeze_count() > 0 and freezer.at_freeze == 600
    frozen = gc.get_freeze_count()
    freezer.observe(800, grew=True)
    assert freezer.at_freeze == 600  # less than half again: no new freeze
    freezer.observe(700, grew=False)
    assert gc.get_freeze_count() >= frozen
    freezer.observe(299, grew=False)
    assert gc.get_freeze_count() == 0 and freezer.at_freeze == 0
