"""Every key in one place with its shard anchor (presence/store/keys.py).

Walks every method and property of ``Keys`` and ``ControlKeys``: each key of ``Keys(n)``
lies in shard n's Cluster slot, each control key in the ``{P}`` slot, and each key's
pattern is listed in the module docstring's table with its anchor.
"""

from __future__ import annotations

import inspect
import re
import sys

import pytest
from redis.crc import key_slot

import presence.store.keys  # noqa: F401 - the module, not the function the package re-exports
from presence.store import shards
from presence.store.keys import ControlKeys, Keys

# Sample arguments by parameter name: every key builder takes some of these.
SAMPLES = {
    "cid": "c1",
    "uid": 7,
    "room": "lobby",
    "ip": "10.0.0.1",
    "login": "h",
    "token_id": "t",
    "task": "sweep",
    "flush_id": "f1",
    "proc_id": "p1",
    "request_id": "q1",
    "rooms": ["lobby"],
}


def built_keys(obj: object) -> dict[str, list[str]]:
    """name -> the keys the member builds (lists for the grouping helpers)."""
    out: dict[str, list[str]] = {}
    for name, member in inspect.getmembers(type(obj)):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            value = getattr(obj, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            value = getattr(obj, name)(*(SAMPLES[p] for p in params))
        else:
            continue
        out[name] = value if isinstance(value, list) else [value]
    return out


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize("shard", [0, 1, 31, 63])
def test_every_shard_key_lies_in_its_shards_slot(shard: int) -> None:
    built = built_keys(Keys(shard))
    assert len(built) > 25  # the walk found the builders
    for name, ks in built.items():
        for key in ks:
            if not isinstance(key, str):
                continue
            if name == "conn_prefix":  # a prefix of keys, not a key: still tagged
                key += "x"
            assert slot(key) == shards.shard_slot(shard), (name, key)


def test_every_control_key_lies_in_the_control_slot() -> None:
    built = built_keys(ControlKeys())
    assert built
    for name, ks in built.items():
        for key in ks:
            assert key.startswith("{presence}:"), name
            assert slot(key) == key_slot(b"presence"), name


def _pattern(key: str, tag: str) -> str:
    """The docstring's spelling of a built key: tag -> {S}/{P}, sample arguments -> <names>."""
    doc_tag = "{S}" if tag.startswith("{presence:") else "{P}"
    key = key.replace(tag, doc_tag)
    for name, value in [
        ("cid", "c1"),
        ("uid", "7"),
        ("room", "lobby"),
        ("ip", "10.0.0.1"),
        ("hash", "h"),
        ("id", "t"),
        ("task", "sweep"),
        ("id", "f1"),
        ("id", "p1"),
        ("rid", "q1"),
    ]:
        key = re.sub(rf"(?<=:){re.escape(value)}(?=:|$)", f"<{name}>", key)
    return key


def test_every_key_is_listed_in_the_table_with_its_anchor() -> None:
    doc = sys.modules["presence.store.keys"].__doc__ or ""
    rows = re.findall(r"^``([^`]+)``\s+\S+\s+(\w+)", doc, re.M)
    table = {pattern: anchor for pattern, anchor in rows}
    k, c = Keys(3), ControlKeys()
    for obj in (k, c):
        for name, ks in built_keys(obj).items():
            if name in ("conn_prefix", "fixed", "conn_group"):
                continue  # helpers over listed keys
            for key in ks:
                pattern = _pattern(key, obj.tag)
                if obj is c and name.startswith("task_"):
                    assert "``{P}:<task>:lock|period|last``" in doc, name
                    continue
                assert pattern in table, (name, pattern)
                assert (table[pattern] == "control") == (obj is c), (name, pattern)


def test_user_keys_are_anchored_on_the_users_shard() -> None:
    # The anchors the docstring names, for a concrete user, room and address.
    uid, room, ip = 1234, "room-9", "192.0.2.7"
    k = Keys(shards.user_shard(uid))
    assert slot(k.user_conns(uid)) == shards.shard_slot(shards.user_shard(uid))
    r = Keys(shards.room_shard(room))
    assert slot(r.room(room)) == shards.shard_slot(shards.room_shard(room))
    a = Keys(shards.ip_shard(ip))
    assert slot(a.addr_rate(ip)) == shards.shard_slot(shards.ip_shard(ip))
