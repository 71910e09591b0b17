"""lock_extend.lua: a lease kept only by the holder whose token is in it (compare-and-expire).

Real Redis; the lock is taken with ``acquire_task_lock`` (SET NX PX) as the readers do.
"""

from __future__ import annotations

import redis

from presence import store


def test_the_holder_extends_its_lock(r: redis.Redis) -> None:
    token = store.acquire_task_lock(r, "consumer-hooks", 1000)
    assert token is not None
    assert store.extend_task_lock(r, "consumer-hooks", token, 60_000) is True
    assert 50_000 < int(r.pttl(store.keys().task_lock("consumer-hooks"))) <= 60_000  # type: ignore[arg-type]


def test_another_token_does_not_extend_it(r: redis.Redis) -> None:
    token = store.acquire_task_lock(r, "consumer-hooks", 1000)
    assert token is not None
    assert store.extend_task_lock(r, "consumer-hooks", "someone-else", 60_000) is False
    assert int(r.pttl(store.keys().task_lock("consumer-hooks"))) <= 1000  # type: ignore[arg-type]
    assert r.get(store.keys().task_lock("consumer-hooks")) == token


def test_a_lapsed_lock_is_not_revived(r: redis.Redis) -> None:
    assert store.extend_task_lock(r, "consumer-hooks", "gone", 60_000) is False
    assert not r.exists(store.keys().task_lock("consumer-hooks"))
