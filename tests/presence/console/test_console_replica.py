"""The read replica (``DATABASE_REPLICA_URL``, issue 24): replica_checks.py counts queries per
database alias on the console's pages, the stats admin and the API; it runs here in a pytest
subprocess whose settings configure the replica from the environment, as production does.
Without the setting, nothing changes: checked in this process (no replica configured)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection, connections, router
from django.test import Client
from django.test.utils import CaptureQueriesContext

from presence.models import StatsBucket
from presence.models.routers import REPLICA, replica_reads
from tests.support.paths import ROOT

CHECKS = "tests/presence/console/replica_checks.py"


def replica_env() -> dict[str, str]:
    """This run's database settings, with a replica URL (the same server) added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    url = os.environ.get("DATABASE_URL", "")
    if connection.vendor == "postgresql" and url:
        # A database name of its own: the subprocess creates and drops "test_<name>", which
        # must not be this run's test database.
        parts = urlsplit(url)
        env["DATABASE_URL"] = urlunsplit(parts._replace(path=parts.path + "_replica"))
        env["DATABASE_REPLICA_URL"] = env["DATABASE_URL"]
    else:
        # SQLite: the test database's name carries the subprocess's pid; the replica mirrors it.
        env["DATABASE_REPLICA_URL"] = "sqlite:///" + str(settings.DATABASES["default"]["NAME"])
    return env


@pytest.mark.slow
def test_operator_reads_go_to_the_replica_when_one_is_configured() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", CHECKS, "-q", "-p", "no:cacheprovider", "-x"],
        cwd=ROOT,
        env=replica_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed is not None and int(passed.group(1)) == 10, out[-2000:]
    assert "skipped" not in out and "failed" not in out


@pytest.mark.django_db
def test_without_a_replica_nothing_changes(admin_client: Client) -> None:
    assert REPLICA not in connections.settings
    assert "DATABASE_ROUTERS" not in dir(settings) or not settings.DATABASE_ROUTERS
    with replica_reads():
        assert router.db_for_read(StatsBucket) == "default"
        with CaptureQueriesContext(connection) as primary:
            assert admin_client.get("/admin/presence/statsbucket/").status_code == 200
    assert any("presence_statsbucket" in q["sql"] for q in primary.captured_queries)


def test_settings_add_the_replica_and_the_router_only_when_asked(tmp_path: Any) -> None:
    probe = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([sorted(s.DATABASES), s.DATABASE_ROUTERS, "
        "s.DATABASES.get('replica', {}).get('TEST', {}).get('MIRROR')]))"
    )
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_REPLICA_URL"}
    base["DJANGO_SETTINGS_MODULE"] = "config.settings"

    def run(env: dict[str, str]) -> str:
        return (
            subprocess.run(
                [sys.executable, "-c", probe],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    assert run(base) == '[["default"], [], null]'
    with_replica = {**base, "DATABASE_REPLICA_URL": f"sqlite:///{tmp_path / 'r.sqlite3'}"}
    assert run(with_replica) == (
        '[["default", "replica"], ["presence.models.routers.ReplicaRouter"], "default"]'
    )
