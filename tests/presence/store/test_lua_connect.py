"""connect.lua, run against the private Redis through ``presence.store`` and raw EVALSHA.

Covers the keys a new connection writes, the "first live connection" rule behind join events
(second tab: no join; a lapsed tab does not count), the status reset, key expiry at
expiry + grace, the stats counters, the listing the HTTP API builds on, and what it logs:
``open`` for every connection, then a global ``join`` for the user's first only.
"""

from __future__ import annotations

import redis
from redis.crc import key_slot

from presence import store
from tests.support.eventlog import join, log_entries, log_mark, logged
from tests.support.homes import housemate, user_keys
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture


async def connect(cid: str, uid: int, now: int, username: str = "", channel: str = "ch") -> bool:
    """connect.lua through the store; True when the user joined (their first connection)."""
    result = await store.connect(
        cid=cid,
        uid=uid,
        username=username or f"user{uid}",
        channel=channel,
        now=now,
    )
    return result.joined


class TestFirstConnection:
    async def test_writes_every_key_of_the_layout(self, r: redis.Redis) -> None:
        k, now = user_keys(7), store.now_ms()
        result = await store.connect(cid="c1", uid=7, username="alice", channel="chan!1", now=now)

        (open_id, _), _ = log_entries(r)
        assert result == store.ConnectResult(joined=True, status="online", open_id=open_id)
        exp = now + TTL_MS
        assert r.hgetall(k.conn("c1")) == {
            "uid": "7",
            "username": "alice",
            "channel": "chan!1",
            "exp": str(exp),
            "at": str(now),
            "ip": "",
            "login": "",
        }
        assert r.zscore(k.conns, "c1") == exp
        assert r.zscore(k.users, "7") == exp
        assert r.zrange(k.user_conns(7), 0, -1, withscores=True) == [("c1", exp)]
        assert r.hgetall(k.user(7)) == {"username": "alice", "status": "online"}

    async def test_logs_open_then_a_global_join(self, r: redis.Redis) -> None:
        now = store.now_ms()
        await store.connect(
            cid="c1",
            uid=7,
            username="alice",
            channel="chan!1",
            ip="203.0.113.9",
            user_agent="Firefox/140",
            now=now,
        )

        assert logged(r) == [
            {
                "k": "open",
                "t": str(now),
                "c": "c1",
                "u": "7",
                "n": "alice",
                "ch": "chan!1",
                "ip": "203.0.113.9",
                "ua": "Firefox/140",
            },
            join("", 7, now, username="alice"),
        ]

    async def test_logs_an_unknown_ip_empty_and_caps_the_user_agent(self, r: redis.Redis) -> None:
        await store.connect(
            cid="c1",
            uid=7,
            username="alice",
            channel="ch",
            user_agent="x" * 2_000,
        )

        opened = logged(r)[0]
        assert (opened["k"], opened["ip"], opened["ua"]) == ("open", "", "x" * 512)

    async def test_keys_expire_at_expiry_plus_grace(self, r: redis.Redis) -> None:
        k, now = user_keys(7), store.now_ms()
        await connect("c1", 7, now)

        for key in (k.conn("c1"), k.user(7), k.user_conns(7)):
            pttl = r.pttl(key)
            # PEXPIREAT now + ttl + grace, measured a few ms later.
            assert TTL_MS + GRACE_MS - 2_000 < pttl <= TTL_MS + GRACE_MS, key

    async def test_every_key_carries_the_hash_tag(self, r: redis.Redis) -> None:
        await connect("c1", 7, store.now_ms())

        found = r.keys("*")
        assert user_keys(7).events in found
        # One script, one slot: every key carries the tag of one shard (the user's).
        assert len({key_slot(key.encode()) for key in found}) == 1, found
        assert all(key.startswith("{presence:") for key in found), found

    async def test_counts_connects_and_peaks(self, r: redis.Redis) -> None:
        # Counters and peaks are per shard: two users of one shard.
        k, now, other = user_keys(1), store.now_ms(), housemate(1)
        await connect("c1", 1, now)
        await connect("c2", 1, now)
        await connect("c3", other, now)

        stats = r.hgetall(k.stats)
        assert stats["connects"] == "3"
        assert stats["peak_conns"] == "3"
        assert stats["peak_users"] == "2"


class TestMultiTab:
    async def test_second_tab_does_not_join(self, r: redis.Redis) -> None:
        k, now = user_keys(7), store.now_ms()
        assert await connect("c1", 7, now) is True
        mark = log_mark(r)
        assert await connect("c2", 7, now + 5_000) is False

        assert r.zcard(k.user_conns(7)) == 2
        # The user's score is their newest connection's expiry.
        assert r.zscore(k.users, "7") == now + 5_000 + TTL_MS
        # The second tab is logged as a connection, but the user does not join again.
        assert [(e["k"], e.get("c")) for e in logged(r, since=mark)] == [("open", "c2")]

    async def test_other_users_join_independently(self, r: redis.Redis) -> None:
        now = store.now_ms()
        assert await connect("c1", 1, now) is True
        assert await connect("c2", 2, now) is True

        # Two users' joins lie on their own shards' logs: compared without their order.
        joins = sorted((e for e in logged(r) if e["k"] == "join"), key=lambda e: e["u"])
        assert joins == [join("", 1, now), join("", 2, now)]

    async def test_older_connect_does_not_lower_the_user_score(self, r: redis.Redis) -> None:
        k, now = user_keys(7), store.now_ms()
        await connect("c1", 7, now + 5_000)
        await connect("c2", 7, now)

        assert r.zscore(k.users, "7") == now + 5_000 + TTL_MS

    async def test_second_tab_keeps_the_users_status(self, r: redis.Redis) -> None:
        now = store.now_ms()
        await connect("c1", 7, now)
        await store.set_status(7, "user7", "busy")
        mark = log_mark(r)

        result = await store.connect(cid="c2", uid=7, username="u", channel="ch", now=now + 1)

        ((open_id, opened),) = log_entries(r, since=mark)
        assert result == store.ConnectResult(joined=False, status="busy", open_id=open_id)
        assert (opened["k"], opened["c"]) == ("open", "c2")

    async def test_lapsed_tab_does_not_count_as_online(self, r: redis.Redis) -> None:
        k, now = user_keys(7), store.now_ms()
        await connect("c1", 7, now)
        await store.set_status(7, "user7", "away")
        mark = log_mark(r)

        # c1 expires at now + TTL exactly: at that instant it no longer counts (exclusive bound).
        result = await store.connect(cid="c2", uid=7, username="u", channel="ch", now=now + TTL_MS)

        (open_id, _), _ = log_entries(r, since=mark)
        assert result == store.ConnectResult(joined=True, status="online", open_id=open_id)
        assert r.hget(k.user(7), "status") == "online"
        # The join carries the reset status, not the lapsed session's "away"; and x: c1 was
        # never logged leaving (not swept yet), so the hooks send no second user.online.
        assert logged(r, since=mark)[1] == join("", 7, now + TTL_MS, username="u", relisted=True)

    async def test_join_after_the_lapsed_tab_ended_is_plain(self, r: redis.Redis) -> None:
        now = store.now_ms()
        await connect("c1", 7, now)
        await store.end_connections([store.ConnRef("c1", 7)], now=now + TTL_MS)
        mark = log_mark(r)

        await connect("c2", 7, now + TTL_MS + 1)

        assert logged(r, since=mark)[1] == join("", 7, now + TTL_MS + 1)

    async def test_raw_evalsha_matches_the_documented_contract(self, r: redis.Redis) -> None:
        """KEYS/ARGV exactly as the script header documents them, without the store wrapper."""
        k, now = user_keys(3), store.now_ms()  # the user's shard, as the store passes
        sha = r.script_load(store.script("connect").source)
        ks = [k.conns, k.users, k.stats, k.conn("x"), k.conn_rooms("x"), k.user(3), k.user_conns(3)]
        ks.append(k.events)
        ip = "198.51.100.1"
        ks += [k.user_block(3), k.user_revoked(3)]
        ks += [k.login_revoked(""), k.token_used(""), k.active, k.held, k.held_why]
        args = [now, TTL_MS, GRACE_MS, "x", 3, "carol", "chan", 1_000, ip, "UA/1"]
        args += [0, 0, "", 0, "", "register"]  # the gate checks nothing

        first = r.evalsha(sha, len(ks), *ks, *args)
        ks2 = [*ks[:3], k.conn("y"), k.conn_rooms("y"), *ks[5:]]
        second = r.evalsha(sha, len(ks2), *ks2, now + 1, *args[1:3], "y", *args[4:])

        entries = log_entries(r)
        assert [(e["k"], e.get("c")) for _, e in entries] == [
            ("open", "x"),
            ("join", None),
            ("open", "y"),
        ]
        assert first == [1, "online", entries[0][0]]
        assert second == [0, "online", entries[2][0]]
        assert (entries[2][1]["t"], entries[2][1]["ip"], entries[2][1]["ua"]) == (
            str(now + 1),
            "198.51.100.1",
            "UA/1",
        )
        assert r.hget(k.conn("y"), "at") == str(now + 1)


class TestListing:
    async def test_lists_live_users_with_connection_counts(self, r: redis.Redis) -> None:
        now = store.now_ms()
        await connect("a1", 1, now, username="alice")
        await connect("a2", 1, now, username="alice")
        await connect("b1", 2, now, username="bob")
        await store.set_status(2, "bob", "away")

        count, users = store.list_online()
        acount, ausers = await store.alist_online()

        assert count == acount == 2
        assert sorted(users, key=lambda u: u["id"]) == [
            {"id": 1, "username": "alice", "status": "online", "connections": 2},
            {"id": 2, "username": "bob", "status": "away", "connections": 1},
        ]
        assert sorted(ausers, key=lambda u: u["id"]) == sorted(users, key=lambda u: u["id"])

    async def test_lapsed_users_are_not_listed(self, r: redis.Redis) -> None:
        now = store.now_ms()
        await connect("old", 1, now - TTL_MS - 1)
        await connect("new", 2, now)

        count, users = store.list_online()

        assert count == 1
        assert [u["id"] for u in users] == [2]
        assert store.user_presence(1) == (None, 0)
        assert store.user_presence(2) == ("online", 1)

    async def test_limit_caps_users_but_not_count(self, r: redis.Redis) -> None:
        now = store.now_ms()
        for uid in range(1, 6):
            await connect(f"c{uid}", uid, now)

        count, users = store.list_online(limit=2)

        assert count == 5
        assert len(users) == 2
