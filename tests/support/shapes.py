"""Which tests run on every shape of the presence store (make test-shapes, .ci/run).

``make test`` runs the whole suite on one Redis. ``make test-shapes`` runs the tests listed
here again with ``--presence-store=cluster`` (a Redis Cluster of 3 primaries) and with
``--presence-store=shards`` (3 independent primaries), selected by the ``shapes`` marker that
:func:`mark` gives them at collection (tests/conftest.py). One list, in one place: a suite
joins the shape runs by being named here, once it passes on both shapes.

A test that cannot hold on a sharded store (it describes one Redis: reads the event log or a
key through the private Redis's ``r`` client, kills that one server, ...) carries
``@pytest.mark.single_only(reason)``: on the other shapes it is skipped with that reason, so
the skip shows in the run's summary (``-ra``); the list of them is in tests/README.md.
"""

from __future__ import annotations

import pytest

# Paths (files or folders, relative to the project root) of the suites run on every shape;
# a path may end in ``::`` and a test's name to take one test of a file.
SHAPE_SUITES: tuple[str, ...] = (
    # the store: key anchors, shard placement, the lock and stats scripts
    "tests/presence/store/test_keys_anchors.py",
    "tests/presence/store/test_shards.py",
    "tests/presence/store/test_shard_urls_setting.py",
    "tests/presence/store/test_lua_locks.py",
    "tests/presence/store/test_lua_stats.py",
    # the stats flush (per shard, each shard's claim on its node) and the jobs' catalog
    "tests/presence/jobs/test_flush.py",
    "tests/presence/jobs/test_catalog.py",
    "tests/presence/jobs/test_reap.py",
    # the expiry sweep: claims on the users' shards, the leaves read from every shard's log,
    # the repair of orphan room members on the room's shard
    "tests/presence/jobs/test_sweep.py",
    "tests/presence/jobs/test_sweep_repair.py",
    # the session log: rows written behind from every shard's connects and ends (the writer
    # and the fallback drain over entries appended to the users' home shards' logs)
    "tests/sessions_app/test_sessions.py",
    "tests/presence/jobs/test_sessionlog.py",
    # the hooks: signals and webhooks from every shard's stream
    "tests/presence/hooks",
    # presence.list paging through the consumer; the live side of watches and the inbox
    # (live/test_fanout.py is left out: an in-process index, and a 50 s stateful test)
    "tests/presence/handlers/test_list_paging.py",
    "tests/presence/handlers/test_handler_dispatch.py",
    "tests/presence/live/test_watches.py",
    "tests/presence/live/test_inbox.py",
    # the process registry and the ghost reconciliation over every shard's index
    "tests/presence/live/test_processes.py",
    # protocol v1 and v2 through the full ASGI stack: presence, rooms, diffs, sync, gaps
    "tests/presence/consumers/test_protocol_presence.py",
    "tests/presence/consumers/test_protocol_rooms.py",
    "tests/presence/consumers/test_protocol_v2.py",
)

MARKERS = (
    "shapes: runs on every presence store shape (tests/support/shapes.py; make test-shapes)",
    "single_only(reason): holds on one Redis only; skipped with the reason on the "
    "--presence-store=cluster|shards runs (tests/README.md lists them)",
)


def in_shape_suites(nodeid: str) -> bool:
    """Whether the test ``nodeid`` belongs to a suite of :data:`SHAPE_SUITES`."""
    for path in SHAPE_SUITES:
        path = path.rstrip("/")
        if nodeid == path or nodeid.startswith((path + "::", path + "/", path + "[")):
            return True
    return False


def mark(items: list[pytest.Item], shape: str) -> None:
    """Mark the tests of :data:`SHAPE_SUITES` ``shapes``; on a shape other than ``single``,
    skip each ``single_only`` test with its reason."""
    for item in items:
        if in_shape_suites(item.nodeid):
            item.add_marker(pytest.mark.shapes)
        only = item.get_closest_marker("single_only")
        if only is not None and shape != "single":
            reason = only.kwargs.get("reason") or (only.args[0] if only.args else "")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: single_only needs a reason")
            item.add_marker(pytest.mark.skip(reason=f"single_only on {shape}: {reason}"))
