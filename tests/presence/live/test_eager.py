"""eager(): a coroutine runs in the caller until it waits; only then is there a task."""

from __future__ import annotations

import asyncio

import pytest

from presence.live.eager import eager


async def test_a_coroutine_that_never_waits_runs_now_without_a_task() -> None:
    done: list[str] = []

    async def send() -> None:
        done.append("sent")

    before = len(asyncio.all_tasks())
    assert eager(send()) is None
    assert done == ["sent"]
    assert len(asyncio.all_tasks()) == before


async def test_its_exception_is_raised_in_the_caller() -> None:
    async def send() -> None:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        eager(send())


async def test_a_coroutine_that_waits_finishes_in_a_task_with_what_it_waited_for() -> None:
    writable = asyncio.Event()
    steps: list[object] = []

    async def send() -> None:
        steps.append("before")
        steps.append(await writable.wait())
        await asyncio.sleep(0)  # a bare yield too
        steps.append("after")

    task = eager(send())
    assert task is not None and steps == ["before"]
    await asyncio.sleep(0.01)
    assert not task.done()
    writable.set()
    await asyncio.wait_for(task, 1)
    assert steps == ["before", True, "after"]


async def test_the_failure_of_what_it_waits_for_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def send() -> None:
        try:
            await fut
        except ConnectionResetError:
            seen.append("handled")
            raise OSError("closed") from None

    task = eager(send())
    assert task is not None
    fut.set_exception(ConnectionResetError())
    with pytest.raises(OSError, match="closed"):
        await task
    assert seen == ["handled"]


async def test_cancelling_the_task_cancels_the_coroutine_inside_its_wait() -> None:
    never = asyncio.Event()
    seen: list[str] = []

    async def send() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    task = eager(send())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled inside"]
