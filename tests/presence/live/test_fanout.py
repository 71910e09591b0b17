"""The per-process fan-out: the local index and the reader's delivery, against a model.

A hypothesis state machine drives an EventLogReader's index through random churn — sockets
connecting with either protocol, joining and leaving rooms, and ending in the ways a
connection ends (close, kick, expiry: each unregisters the socket) — and after every step
compares the index with a plain reference model, then delivers a log entry to a random
scope and checks exactly the model's members got it. The sockets are small recording
objects: the index and the reader are the real ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from presence.live.diffs import Event, Pos
from presence.live.eventlog import EventLogReader
from presence.live.fanout import GLOBAL, LocalIndex

ROOMS = st.sampled_from(["a", "b", "c", "doc:1"])
_ids = itertools.count(1)


class Sock:
    """A socket as the fan-out sees it: a protocol, positions, and what it was sent."""

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.positions: dict[str, Pos] = {}
        self.pending: dict[str, list[tuple[str, Sequence[Event]]]] = {}
        self.sent: list[str] = []
        self.name = f"s{next(_ids)}"

    def deliver(self, text: str) -> None:
        self.sent.append(text)

    def __repr__(self) -> str:
        return self.name


class FanoutMachine(RuleBasedStateMachine):
    """Random churn on a reader's index, compared with a dict of sets after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = EventLogReader()
        self.model: dict[Sock, set[str]] = {}

    @rule(protocol=st.sampled_from([1, 2]))
    def connect(self, protocol: int) -> None:
        sock = Sock(protocol)
        self.reader.register(sock)  # type: ignore[arg-type]
        self.model[sock] = {GLOBAL}  # global events are on by default

    @precondition(lambda self: self.model)
    @rule(data=st.data(), room=ROOMS)
    def join(self, data: Any, room: str) -> None:
        sock = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.reader.index(sock).join(sock, room)
        self.model[sock].add(room)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), room=ROOMS)
    def leave(self, data: Any, room: str) -> None:
        sock = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.reader.index(sock).leave(sock, room)
        self.model[sock].discard(room)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), how=st.sampled_from(["close", "kick", "expire"]))
    def end(self, data: Any, how: str) -> None:
        # However a connection ends, its consumer's disconnect() unregisters it.
        sock = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.reader.unregister(sock)  # type: ignore[arg-type]
        del self.model[sock]

    @rule(room=st.one_of(ROOMS, st.just(GLOBAL)))
    def frame(self, room: str) -> None:
        """An application frame logged for ``room`` reaches exactly its members, once."""
        for sock in self.model:
            sock.sent.clear()
        text = f'{{"type":"t","room":"{room}"}}'
        self.reader.dispatch("1-1", {"k": "frame", "r": room, "f": text, "p": "0-0"})
        got = {sock for sock in self.model if sock.sent}
        assert got == {sock for sock, scopes in self.model.items() if room in scopes}
        assert all(sock.sent == [text] for sock in got)

    @invariant()
    def index_matches_the_model(self) -> None:
        for index, protocol in ((self.reader.v1, 1), (self.reader.v2, 2)):
            socks = {s for s in self.model if s.protocol == protocol}
            assert set(index) == socks
            expected_scopes = {scope for s in socks for scope in self.model[s]}
            assert set(index.scopes()) == expected_scopes  # no empty scope left behind
            for scope in expected_scopes:
                assert set(index.members(scope)) == {s for s in socks if scope in self.model[s]}
            for sock in socks:
                assert index.scopes_of(sock) == frozenset(self.model[sock])


TestFanoutChurn = FanoutMachine.TestCase
TestFanoutChurn.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestLocalIndex:
    def test_join_of_an_unregistered_socket_is_refused(self) -> None:
        index: LocalIndex[str] = LocalIndex()
        with pytest.raises(KeyError):
            index.join("nobody", "a")

    def test_operations_are_idempotent(self) -> None:
        index: LocalIndex[str] = LocalIndex()
        index.register("s")
        index.join("s", "a")
        index.join("s", "a")
        index.leave("s", "b")
        assert index.members("a") == {"s"}
        index.leave("s", "a")
        index.leave("s", "a")
        index.unregister("s")
        index.unregister("s")
        assert (len(index), index.scopes()) == (0, [])
