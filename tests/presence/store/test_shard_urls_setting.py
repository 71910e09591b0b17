"""PRESENCE_REDIS_SHARD_URLS holds URLs that may be Sentinel URLs, whose sentinel list is
itself comma-separated (``redis+sentinel://h1:1,h2:2,h3:3/<master>/<db>``): the environment's
comma-separated list must keep each such URL whole (found by the chaos suite's shard
scenario, where every process refused to start with presence.E033)."""

from __future__ import annotations

import pytest

from presence.conf import app_settings

SENTINELS = [
    f"redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/presence-shard-{n}/0"
    for n in range(3)
]


@pytest.mark.parametrize(
    "value",
    [
        ",".join(SENTINELS),  # a string, as a settings file may give it
        ",".join(SENTINELS).split(","),  # the environment's list (env.list splits on commas)
        SENTINELS,  # a list of whole URLs
    ],
)
def test_sentinel_shard_urls_stay_whole(settings, value) -> None:
    settings.PRESENCE_REDIS_SHARD_URLS = value
    assert app_settings.REDIS_SHARD_URLS == SENTINELS


def test_plain_and_mixed_shard_urls(settings) -> None:
    settings.PRESENCE_REDIS_SHARD_URLS = (
        "redis://a:1/0, rediss://b:2/0,unix:///tmp/r.sock," + SENTINELS[0]
    ).split(",")
    assert app_settings.REDIS_SHARD_URLS == [
        "redis://a:1/0",
        "rediss://b:2/0",
        "unix:///tmp/r.sock",
        SENTINELS[0],
    ]
    settings.PRESENCE_REDIS_SHARD_URLS = []
    assert app_settings.REDIS_SHARD_URLS == []
