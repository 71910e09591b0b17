"""LoopLocal (presence/loops.py): one value per running event loop."""

from __future__ import annotations

import asyncio

import pytest

from presence.loops import LoopLocal


def test_one_value_per_loop_made_once() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory(loop: asyncio.AbstractEventLoop) -> object:
        made.append(loop)
        return object()

    local: LoopLocal[object] = LoopLocal(factory)

    async def twice() -> tuple[object, object, object | None]:
        return local.get(), local.get(), local.peek()

    first = asyncio.run(twice())
    second = asyncio.run(twice())
    assert first[0] is first[1] is first[2]
    assert second[0] is second[1] is second[2]
    assert first[0] is not second[0]  # another loop, another value
    assert len(made) == 2


def test_peek_outside_a_loop_and_before_get_is_none() -> None:
    local: LoopLocal[int] = LoopLocal(lambda loop: 1)
    assert local.peek() is None

    async def before() -> int | None:
        return local.peek()

    assert asyncio.run(before()) is None


def test_get_outside_a_loop_raises() -> None:
    local: LoopLocal[int] = LoopLocal(lambda loop: 1)
    with pytest.raises(RuntimeError):
        local.get()


def test_make_overrides_the_factory_and_discard_forgets() -> None:
    local: LoopLocal[str] = LoopLocal()

    async def run() -> list[str]:
        seen = [local.get(lambda loop: "a"), local.get(lambda loop: "b")]
        local.discard()
        seen.append(local.get(lambda loop: "c"))
        return seen

    assert asyncio.run(run()) == ["a", "a", "c"]


def test_a_finished_loops_value_is_not_kept_for_a_new_loop() -> None:
    local: LoopLocal[list[int]] = LoopLocal(lambda loop: [])

    async def add(n: int) -> list[int]:
        value = local.get()
        value.append(n)
        return value

    assert asyncio.run(add(1)) == [1]
    assert asyncio.run(add(2)) == [2]
    local.clear()
    assert asyncio.run(add(3)) == [3]
