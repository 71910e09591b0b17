"""The v2 diff window widens with the fan-out and narrows again (presence/live/diffs.py).

The batcher and the index are the real ones; the sockets are small recording objects
(what the fan-out needs of a consumer), so the frames each one got can be read back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from presence.live import diffs
from presence.live.diffs import DiffBatcher, Event, Pos, next_window
from presence.live.fanout import GLOBAL, LocalIndex

BASE = 0.1


class Sock:
    """A synced v2 socket: its positions, and the frames it was sent."""

    protocol = 2

    def __init__(self) -> None:
        self.positions: dict[str, Pos] = {GLOBAL: (0, 0)}
        self.pending: dict[str, list[tuple[str, Sequence[Event]]]] = {}
        self.sent: list[str] = []

    def deliver(self, text: str) -> None:
        self.sent.append(text)


def event(n: int) -> Event:
    return Event(f"{n}-0", (n, 0), "join", GLOBAL, n, f"u{n}", "online")


def batcher_with(sockets: int) -> tuple[DiffBatcher, list[Sock]]:
    index: LocalIndex[Sock] = LocalIndex()
    socks = [Sock() for _ in range(sockets)]
    for sock in socks:
        index.register(sock)
        index.join(sock, GLOBAL)
    return DiffBatcher(index, BASE, "0-0"), socks


class TestNextWindow:
    def test_a_small_fan_out_keeps_the_configured_window(self) -> None:
        assert next_window(BASE, 0) == BASE
        assert next_window(BASE, int(BASE * diffs.FANOUT_FRAMES_PER_S)) == BASE

    def test_a_large_fan_out_widens_it_in_proportion(self) -> None:
        frames = 3 * int(BASE * diffs.FANOUT_FRAMES_PER_S)
        assert next_window(BASE, frames) == pytest.approx(3 * BASE)

    def test_never_past_the_cap_unless_configured_longer(self) -> None:
        assert next_window(BASE, 10**9) == diffs.MAX_WINDOW
        assert next_window(2.0, 10**9) == 2.0


class TestBatcher:
    async def test_the_window_after_a_big_flush_is_longer_and_narrows_after_a_small_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(diffs, "FANOUT_FRAMES_PER_S", 1_000)
        batcher, socks = batcher_with(400)  # 400 frames -> 0.4 s at 1,000 frames/s
        batcher.add(event(1))
        batcher.add(event(2))
        batcher.flush()
        assert all(len(sock.sent) == 1 for sock in socks)  # one frame per socket, two joins
        assert [u["id"] for u in json.loads(socks[0].sent[0])["join"]] == [1, 2]
        assert batcher.wait == pytest.approx(0.4)
        loop = asyncio.get_running_loop()
        batcher.add(event(3))
        assert batcher._timer is not None
        assert batcher._timer.when() - loop.time() == pytest.approx(0.4, abs=0.05)

        for sock in socks[1:]:  # only one socket is still synced: a small fan-out
            sock.positions.clear()
        batcher.flush()
        assert len(socks[0].sent) == 2 and not socks[1].sent[1:]
        assert batcher.wait == BASE

    async def test_a_widened_window_still_flushes_by_itself(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(diffs, "FANOUT_FRAMES_PER_S", 1_000)
        batcher, socks = batcher_with(200)  # -> 0.2 s
        batcher.add(event(1))
        batcher.flush()
        batcher.add(event(2))
        await asyncio.sleep(0.1)
        assert len(socks[0].sent) == 1  # not yet: the window is 0.2 s now
        await asyncio.sleep(0.25)
        assert len(socks[0].sent) == 2
        assert json.loads(socks[0].sent[1])["seq"] == "2-0"


class TestTails:
    """Sockets whose snapshot holds the window's first events get only the rest."""

    async def test_each_socket_gets_the_events_after_its_own_position(self) -> None:
        batcher, socks = batcher_with(4)
        socks[1].positions[GLOBAL] = (2, 0)  # synced after events 1 and 2
        socks[2].positions[GLOBAL] = (3, 0)
        socks[3].positions[GLOBAL] = (5, 0)  # has all of them: nothing to send
        for n in (1, 2, 3, 4, 5):
            batcher.add(event(n))
        batcher.flush()

        joined = [[u["id"] for u in json.loads(s.sent[0])["join"]] for s in socks[:3]]
        assert joined == [[1, 2, 3, 4, 5], [3, 4, 5], [4, 5]]
        assert not socks[3].sent
        assert all(json.loads(s.sent[0])["seq"] == "5-0" for s in socks[:3])
        assert all(s.positions[GLOBAL] == (5, 0) for s in socks)

    async def test_sockets_at_one_position_share_one_frame(self) -> None:
        batcher, socks = batcher_with(50)
        for sock in socks[10:]:
            sock.positions[GLOBAL] = (2, 0)
        for n in (1, 2, 3):
            batcher.add(event(n))
        batcher.flush()

        tails = {id(sock.sent[0]) for sock in socks[10:]}
        assert len(tails) == 1  # one text built for the 40 sockets, not one each
        assert [u["id"] for u in json.loads(socks[10].sent[0])["join"]] == [3]
        assert len({id(sock.sent[0]) for sock in socks[:10]}) == 1
