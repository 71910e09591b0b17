"""A command on a connection whose transport the switch-over closed under it (a shard's
Sentinel failover, presence/store/switchover.py) fails in asyncio with a RuntimeError, not a
ConnectionError: the store is away for that moment, so the heartbeat writer must hold and
retry the batch, not fail it (the chaos suite's shards scenario got 2 handler_error frames)."""

from __future__ import annotations

from presence.store.faults import is_unavailable

CLOSED = (
    "unable to perform operation on <TCPTransport closed=True reading=False "
    "0x5642119b77b0>; the handler is closed"
)


def test_a_closed_transport_is_the_store_away() -> None:
    assert is_unavailable(RuntimeError(CLOSED))


def test_other_runtime_errors_are_not() -> None:
    assert not is_unavailable(RuntimeError("something else went wrong"))
