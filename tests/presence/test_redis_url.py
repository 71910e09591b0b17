"""presence/redis_url.py: every Redis URL form, its translations, and malformed URLs explained."""

from __future__ import annotations

import pytest

from presence.redis_url import (
    RedisUrlError,
    celery_broker,
    channel_layer_host,
    is_redis_url,
    parse_redis_url,
    redacted,
)

SENTINELS = "s1.example:26379,s2.example:26380,10.0.0.3:26381"


class TestPlainForms:
    def test_redis(self) -> None:
        target = parse_redis_url("redis://127.0.0.1:6379/3")
        assert (target.kind, target.db, target.tls, target.is_sentinel) == (
            "redis",
            3,
            False,
            False,
        )
        assert target.password is None and target.username is None

    def test_redis_without_db_is_db_0(self) -> None:
        assert parse_redis_url("redis://localhost").db == 0
        assert parse_redis_url("redis://localhost:6379/").db == 0

    def test_rediss_with_credentials(self) -> None:
        target = parse_redis_url("rediss://app:s%40cret@cache.example:6380/1")
        assert (target.kind, target.tls, target.db) == ("redis", True, 1)
        assert (target.username, target.password) == ("app", "s@cret")

    def test_password_only(self) -> None:
        target = parse_redis_url("redis://:pw@h:1/0")
        assert (target.username, target.password) == (None, "pw")

    def test_unix_with_db_in_query(self) -> None:
        target = parse_redis_url("unix:///run/redis.sock?db=2")
        assert (target.kind, target.db) == ("unix", 2)

    def test_plain_urls_keep_their_query_options_for_from_url(self) -> None:
        url = "redis://h:6379/0?socket_keepalive=true"
        assert parse_redis_url(url).url == url


class TestSentinelForm:
    def test_hosts_master_and_db(self) -> None:
        target = parse_redis_url(f"redis+sentinel://{SENTINELS}/mymaster/4")
        assert target.is_sentinel and target.kind == "sentinel"
        assert target.sentinels == (
            ("s1.example", 26379),
            ("s2.example", 26380),
            ("10.0.0.3", 26381),
        )
        assert (target.master_name, target.db, target.tls) == ("mymaster", 4, False)
        assert target.password is None
        assert target.master_kwargs() == {"db": 4}
        assert target.sentinel_kwargs(socket_timeout=1) == {"socket_timeout": 1}

    def test_db_defaults_to_0_and_port_to_26379(self) -> None:
        target = parse_redis_url("redis+sentinel://s1,s2/mymaster")
        assert target.sentinels == (("s1", 26379), ("s2", 26379))
        assert target.db == 0
        assert parse_redis_url("redis+sentinel://s1/mymaster/").db == 0

    def test_password(self) -> None:
        target = parse_redis_url(f"redis+sentinel://:p%3Ass@{SENTINELS}/m/0")
        assert (target.username, target.password) == (None, "p:ss")
        assert target.master_kwargs() == {"db": 0, "password": "p:ss"}
        # The data nodes' password is not sent to the sentinels...
        assert "password" not in target.sentinel_kwargs()

    def test_username_and_password(self) -> None:
        target = parse_redis_url(f"redis+sentinel://app:pw@{SENTINELS}/m/1")
        assert target.master_kwargs() == {"db": 1, "password": "pw", "username": "app"}

    def test_sentinels_own_credentials(self) -> None:
        target = parse_redis_url(
            f"redis+sentinel://:pw@{SENTINELS}/m/0?sentinel_password=sp&sentinel_username=su"
        )
        assert target.sentinel_kwargs() == {"password": "sp", "username": "su"}

    def test_tls(self) -> None:
        target = parse_redis_url(f"rediss+sentinel://{SENTINELS}/m/0")
        assert target.tls
        assert target.master_kwargs()["ssl"] is True
        assert target.sentinel_kwargs()["ssl"] is True

    def test_ipv6_sentinels(self) -> None:
        target = parse_redis_url("redis+sentinel://[::1]:26379,[fe80::2]/m/0")
        assert target.sentinels == (("::1", 26379), ("fe80::2", 26379))

    def test_the_password_is_not_in_the_repr(self) -> None:
        assert "pw" not in repr(parse_redis_url(f"redis+sentinel://:pw@{SENTINELS}/m/0"))


class TestMalformed:
    @pytest.mark.parametrize(
        ("url", "explanation"),
        [
            ("", "empty"),
            ("localhost:6379", "has no scheme"),
            ("http://h/0", "unknown scheme 'http://'"),
            ("sentinel://h:26379/0", "kombu's spelling"),
            ("redis+sentinel:///m/0", "names no sentinel hosts"),
            ("redis+sentinel://h1:26379,h2:26379", "names no master"),
            ("redis+sentinel://h1:26379,h2:26379/", "names no master"),
            ("redis+sentinel://h1:26379/m/x", "the database 'x'"),
            ("redis+sentinel://h1:26379/m/-1", "the database '-1'"),
            ("redis+sentinel://h1:26379/m/0/extra", "expected /<master name>/<db>"),
            ("redis+sentinel://h1:port/m/0", "bad port 'port' for host 'h1'"),
            ("redis+sentinel://h1:70000/m/0", "bad port '70000'"),
            ("redis+sentinel://h1,,h2/m/0", "a stray comma"),
            ("redis+sentinel://:26379/m/0", "has no name"),
            ("redis+sentinel://[::1/m/0", "bad IPv6"),
            ("redis+sentinel://h1/m/0?timeout=1", "unknown option(s) timeout"),
            ("redis://h:abc/0", "bad port 'abc'"),
            ("redis://h:6379/zero", "the database 'zero'"),
            ("redis://h:6379/0?db=x", "the database 'x'"),
            ("redis:///0", "names no host"),
            ("unix://", "names no socket path"),
        ],
    )
    def test_explained(self, url: str, explanation: str) -> None:
        with pytest.raises(RedisUrlError) as caught:
            parse_redis_url(url)
        assert explanation in str(caught.value)

    def test_messages_do_not_show_the_password(self) -> None:
        with pytest.raises(RedisUrlError) as caught:
            parse_redis_url("redis+sentinel://:topsecret@h1:26379/m/notadb")
        assert "topsecret" not in str(caught.value)
        assert "***" in str(caught.value)

    def test_redacted(self) -> None:
        assert redacted("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
        assert redacted("redis://h:1/0?password=pw") == "redis://h:1/0?***"
        assert redacted("redis://h:1/0") == "redis://h:1/0"


class TestChannelLayerHost:
    def test_plain_url_is_an_address(self) -> None:
        host = channel_layer_host("redis://h:6379/1", socket_connect_timeout=2)
        assert host == {"address": "redis://h:6379/1", "socket_connect_timeout": 2}

    def test_sentinel_form(self) -> None:
        host = channel_layer_host(
            f"redis+sentinel://:pw@{SENTINELS}/m/2?sentinel_password=sp",
            socket_connect_timeout=2,
        )
        assert host == {
            "master_name": "m",
            "sentinels": [["s1.example", 26379], ["s2.example", 26380], ["10.0.0.3", 26381]],
            "sentinel_kwargs": {"socket_connect_timeout": 2, "password": "sp"},
            "db": 2,
            "password": "pw",
            "socket_connect_timeout": 2,
        }

    def test_malformed_url_is_left_for_the_check(self) -> None:
        assert channel_layer_host("redis+sentinel://h/") == {"address": "redis+sentinel://h/"}


class TestCeleryBroker:
    def test_plain_and_other_brokers_pass_through(self) -> None:
        for url in ("redis://h:6379/0", "amqp://guest:guest@127.0.0.1:5672//", "unix:///s"):
            assert celery_broker(url) == (url, {})

    def test_sentinel_form(self) -> None:
        url, options = celery_broker(f"redis+sentinel://{SENTINELS}/mymaster/5")
        assert url == (
            "sentinel://s1.example:26379/5;sentinel://s2.example:26380/5;sentinel://10.0.0.3:26381/5"
        )
        assert options == {"master_name": "mymaster"}

    def test_sentinel_form_with_credentials(self) -> None:
        url, options = celery_broker(
            "redis+sentinel://app:p@ss@s1:1,[::1]:2/m/0?sentinel_password=sp"
        )
        assert url == "sentinel://app:p%40ss@s1:1/0;sentinel://app:p%40ss@[::1]:2/0"
        assert options == {"master_name": "m", "sentinel_kwargs": {"password": "sp"}}

    def test_kombu_reads_the_translation(self) -> None:
        from kombu import Connection

        url, options = celery_broker("redis+sentinel://:pw@s1:26379,s2:26380/m/3")
        connection = Connection(url, transport_options=options)
        assert connection.transport_cls == "sentinel"
        assert (connection.hostname, connection.port) == ("s1", 26379)
        assert connection.password == "pw"
        assert connection.virtual_host == "3"
        assert connection.alt == ["sentinel://:pw@s1:26379/3", "sentinel://:pw@s2:26380/3"]

    def test_is_redis_url(self) -> None:
        assert is_redis_url("REDIS+SENTINEL://h/m/0")
        assert not is_redis_url("amqp://h//")
