"""System checks of the Redis URL settings: E030 (REDIS_URL) and E031 (CELERY_BROKER_URL)."""

from __future__ import annotations

import os
import subprocess
import sys

from pytest_django.fixtures import Settings

from presence.checks import check_redis_urls
from tests.support.paths import ROOT


def test_the_test_settings_pass() -> None:
    assert check_redis_urls() == []


def test_every_good_form_passes(settings: Settings) -> None:
    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@cache.example:6380/1",
        "unix:///run/redis.sock?db=2",
        "redis+sentinel://:pw@h1:26379,h2:26379,h3:26379/presence/0",
    ):
        settings.REDIS_URL = url
        settings.CELERY_BROKER_URL = url
        assert check_redis_urls() == [], url


def test_a_malformed_redis_url_is_e030_and_says_why(settings: Settings) -> None:
    settings.REDIS_URL = "redis+sentinel://h1:26379,h2:26379/"

    errors = check_redis_urls()

    assert [e.id for e in errors] == ["presence.E030"]
    assert "REDIS_URL is malformed" in errors[0].msg
    assert "names no master" in errors[0].msg
    assert "redis+sentinel://" in errors[0].hint


def test_a_malformed_broker_url_is_e031_and_other_brokers_are_left_alone(
    settings: Settings,
) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:63x79/0"
    errors = check_redis_urls()
    assert [e.id for e in errors] == ["presence.E031"]
    assert "bad port '63x79'" in errors[0].msg

    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    assert check_redis_urls() == []


def test_manage_py_check_explains_a_malformed_url_from_the_environment() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "REDIS_URL": "redis+sentinel://:secret@h1:26379/presence/notadb",
    }
    env.pop("CELERY_BROKER_URL", None)  # the broker follows REDIS_URL: both are reported
    out = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "presence.E030" in out.stderr and "presence.E031" in out.stderr
    assert "the database 'notadb'" in out.stderr
    assert "secret" not in out.stderr
