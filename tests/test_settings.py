"""Settings that protect a development instance: its secret key is its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def secret_key(var_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG")}
    env.update(VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="config.settings")
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); " + PRINT_KEY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_each_checkout_generates_and_keeps_its_own_key(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"

    key = secret_key(first)

    assert len(key) >= 50
    assert secret_key(first) == key  # kept: sessions survive a restart
    assert secret_key(second) != key  # another checkout, another key
    assert (first / "secret_key").stat().st_mode & 0o777 == 0o600
    # No published constant to fall back on.
    assert key not in (ROOT / "config" / "settings.py").read_text()
    assert "dev-only-insecure-key" not in (ROOT / "config" / "settings.py").read_text()


def test_secrets_are_read_verbatim_even_when_they_start_with_a_dollar(tmp_path: Path) -> None:
    # django-environ reads "$abc" as a reference to the variable "abc" (unset: empty): a
    # production server would refuse to start for want of a key, or run without its token.
    secrets = {
        "SECRET_KEY": "$k3y-that-get_random_secret_key-could-make-" + "x" * 20,
        "METRICS_TOKEN": "$token",
        "PRESENCE_WEBHOOK_SECRET": "$hook",
    }
    env = {**os.environ, "DJANGO_DEBUG": "false", "VAR_DIR": str(tmp_path)}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secrets["SECRET_KEY"])
    env.update(METRICS_TOKEN="$token", PRESENCE_WEBHOOK_SECRET="$hook")
    show = "; ".join(f"print(settings.{name})" for name in secrets)
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {PRINT_KEY.split(';')[0]}; {show}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == list(secrets.values())


def settings_json(names: list[str], **environment: str) -> dict[str, object]:
    """The settings ``names`` of a fresh process with ``environment`` (JSON-serialised)."""
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", **environment)
    show = f"print(json.dumps({{n: getattr(settings, n, None) for n in {names!r}}}))"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import django, json; django.setup(); from django.conf import settings; {show}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_a_sentinel_redis_url_is_translated_for_the_channel_layer_and_the_broker() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/presence/2"
    names = ["REDIS_URL", "CHANNEL_LAYERS", "CELERY_BROKER_URL", "CELERY_BROKER_TRANSPORT_OPTIONS"]

    got = settings_json(names, REDIS_URL=url)  # CELERY_BROKER_URL unset: follows REDIS_URL

    assert got["REDIS_URL"] == url  # the store reads it as given (presence/store/clients.py)
    host = got["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"][0]  # type: ignore[index]
    assert host["master_name"] == "presence"
    assert host["sentinels"] == [["127.0.0.1", 26379], ["127.0.0.1", 26380]]
    assert (host["db"], host["password"]) == (2, "pw")
    assert got["CELERY_BROKER_URL"] == (
        "sentinel://:pw@127.0.0.1:26379/2;sentinel://:pw@127.0.0.1:26380/2"
    )
    options = got["CELERY_BROKER_TRANSPORT_OPTIONS"]
    assert options["master_name"] == "presence"  # type: ignore[index]
    assert options["socket_timeout"] == 10  # type: ignore[index]


def test_rabbitmq_broker_uses_quorum_queues_and_publisher_confirms() -> None:
    names = [
        "CELERY_BROKER_URL",
        "CELERY_TASK_DEFAULT_QUEUE_TYPE",
        "CELERY_TASK_CREATE_MISSING_QUEUE_TYPE",
        "CELERY_BROKER_TRANSPORT_OPTIONS",
        "CELERY_BROKER_CONNECTION_MAX_RETRIES",
    ]
    amqp = "amqp://guest:guest@127.0.0.1:5672//"

    got = settings_json(names, CELERY_BROKER_URL=amqp, REDIS_URL="redis://127.0.0.1:1/0")

    assert got == {
        "CELERY_BROKER_URL": amqp,
        "CELERY_TASK_DEFAULT_QUEUE_TYPE": "quorum",
        "CELERY_TASK_CREATE_MISSING_QUEUE_TYPE": "quorum",
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"confirm_publish": True},
        "CELERY_BROKER_CONNECTION_MAX_RETRIES": None,
    }
