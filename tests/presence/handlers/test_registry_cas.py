"""Persisting the registry: the version compare-and-set, start-up registration, failures.

Concurrency is tested for real: threads with their own database connections, and separate
Python processes started together against the test database file.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection, connections

from presence import store
from presence.handlers import HandlerRegistry, lifecycle, registry
from presence.handlers.lifecycle import Outcome, register_all, register_handler
from presence.models import HandlerStatus, RegisteredHandler
from tests.presence.handlers import test_registry
from tests.support.db import database_url
from tests.support.paths import ROOT

scratch = test_registry.scratch  # the fixture: a scratch registry and module writer
BY = "test-host:1"


def row(type_: str) -> RegisteredHandler:
    return RegisteredHandler.objects.get(type=type_)


def reg(type_: str = "demo.ping", version: str = "1", **kw: Any) -> Outcome:
    fields: dict[str, Any] = {"path": f"app.handlers.{type_}", "by": BY, "description": "d"}
    fields.update(kw)
    return register_handler(type=type_, version=version, **fields)


@pytest.fixture
def clean_disabled() -> Iterator[None]:
    """register_all applies the disabled set to the process's registry: undo it."""
    yield
    registry.set_disabled(frozenset())


@pytest.mark.django_db
class TestCompareAndSet:
    def test_first_registration_creates_a_pending_row(self) -> None:
        assert reg(core=True) == Outcome.CREATED
        r = row("demo.ping")
        assert (r.version, r.status, r.core, r.last_registered_by) == ("1", "pending", True, BY)
        assert r.path == "app.handlers.demo.ping"

    def test_higher_version_overwrites(self) -> None:
        reg(version="1")
        RegisteredHandler.objects.update(status=HandlerStatus.ACTIVE)
        assert reg(version="2", path="app.v2.ping", description="new", by="other:2") == (
            Outcome.UPGRADED
        )
        r = row("demo.ping")
        assert (r.version, r.path, r.description) == ("2", "app.v2.ping", "new")
        assert (r.status, r.last_registered_by) == ("pending", "other:2")

    def test_lower_version_never_overwrites(self) -> None:
        reg(version="10", path="app.v10")
        assert reg(version="9", path="app.v9", by="old:9") == Outcome.STALE
        r = row("demo.ping")
        assert (r.version, r.path, r.last_registered_by) == ("10", "app.v10", BY)

    def test_equal_version_only_refreshes(self) -> None:
        reg(version="3", path="app.first", description="first")
        RegisteredHandler.objects.update(status=HandlerStatus.ACTIVE)
        assert reg(version="3", path="app.second", description="second", by="b:2") == (
            Outcome.REFRESHED
        )
        r = row("demo.ping")
        assert (r.path, r.description, r.status) == ("app.first", "first", "active")
        assert r.last_registered_by == "b:2"

    def test_declared_version_beats_a_hash_and_not_back(self) -> None:
        reg(version="h-0123456789ab")
        assert reg(version="1") == Outcome.UPGRADED
        assert reg(version="h-ba9876543210") == Outcome.STALE
        assert row("demo.ping").version == "1"

    def test_disabled_survives_an_upgrade(self) -> None:
        reg(version="1")
        RegisteredHandler.objects.update(status=HandlerStatus.DISABLED)
        reg(version="2")
        assert row("demo.ping").status == "disabled"

    def test_failure_keeps_the_error_and_a_success_clears_it(self) -> None:
        assert reg(version="4", failed=True, error="Traceback ...\nImportError: x") == (
            Outcome.CREATED
        )
        r = row("demo.ping")
        assert (r.status, r.error) == ("failed", "Traceback ...\nImportError: x")
        assert reg(version="4") == Outcome.REFRESHED
        r = row("demo.ping")
        assert (r.status, r.error) == ("pending", "")

    def test_failure_of_an_older_version_leaves_a_newer_row(self) -> None:
        reg(version="5")
        assert reg(version="4", failed=True, error="boom") == Outcome.STALE
        assert row("demo.ping").status == "pending"


def slow_reads(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    """Delay after each SELECT, as a remote database would: it widens the window between a
    CAS read and its write, so a missing compare would lose updates in nearly every run."""
    result = execute(sql, params, many, context)
    if sql.lstrip().upper().startswith("SELECT"):
        time.sleep(random.uniform(0, 0.002))
    return result


class VersionMonitor(threading.Thread):
    """Samples the rows while writers run: under a correct CAS a version never goes down."""

    def __init__(self, prefix: str) -> None:
        super().__init__(daemon=True)
        self.prefix = prefix
        self.highest: dict[str, tuple[int, ...]] = {}
        self.regressions: list[tuple[str, str]] = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                rows = RegisteredHandler.objects.filter(type__startswith=self.prefix)
                for type_, version in rows.values_list("type", "version"):
                    key = tuple(int(p) for p in version.split("."))
                    if key < self.highest.get(type_, ()):
                        self.regressions.append((type_, version))
                    self.highest[type_] = max(key, self.highest.get(type_, ()))
                self.samples += 1
        finally:
            connections.close_all()

    def finish(self) -> None:
        self.stop.set()
        self.join(10)


def _hammer(types: list[str], versions: list[int], barrier: threading.Barrier) -> None:
    try:
        with connection.execute_wrapper(slow_reads):
            barrier.wait()
            for version in versions:
                for type_ in types:
                    reg(type_, str(version), path=f"app.v{version}", by=f"thread:{version}")
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
class TestConcurrency:
    def test_threads_leave_one_row_per_type_with_the_highest_version(self) -> None:
        types = [f"cas.t{i}" for i in range(4)]
        versions = list(range(1, 97))
        random.shuffle(versions)
        # Each thread registers many versions, so lower ones often arrive after higher ones.
        chunks = [versions[i::12] for i in range(12)]
        barrier = threading.Barrier(len(chunks))
        errors: list[BaseException] = []

        def run(chunk: list[int]) -> None:
            try:
                _hammer(random.sample(types, len(types)), chunk, barrier)
            except BaseException as exc:  # reported below, a thread cannot fail the test
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
        monitor = VersionMonitor("cas.t")
        monitor.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        monitor.finish()
        assert errors == []
        assert monitor.samples > 10
        assert monitor.regressions == []
        rows = list(RegisteredHandler.objects.filter(type__in=types).values("type", "version"))
        assert sorted(r["type"] for r in rows) == types
        assert {r["version"] for r in rows} == {"96"}
        assert set(
            RegisteredHandler.objects.filter(type__in=types).values_list("path", flat=True)
        ) == {"app.v96"}

    def test_processes_starting_at_once(self, tmp_path: Path, r: redis.Redis) -> None:
        """Real web-process start-up, six at once: register_all plus competing versions."""
        go = tmp_path / "go"
        script = textwrap.dedent(
            f"""
            import os, sys, time, random
            import django
            django.setup()
            from pathlib import Path
            from django.db import connection
            from presence.handlers.lifecycle import register_all, register_handler
            from tests.presence.handlers.test_registry_cas import slow_reads
            version = int(sys.argv[1])
            go = Path({str(go)!r})
            while not go.exists():
                time.sleep(0.005)
            types = [f"cas.p{{i}}" for i in range(3)]
            # Process i owns versions i, i+6, ... up to 60, registered in a random order.
            versions = list(range(version, 61, 6))
            random.shuffle(versions)
            with connection.execute_wrapper(slow_reads):
                for v in versions:
                    for t in types:
                        register_handler(type=t, version=str(v), path=f"app.v{{v}}", by=str(v))
            report = register_all()
            assert report.published, report
            print(report.summary())
            """
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url(),
            "PYTHONPATH": str(ROOT),
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(v)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for v in (1, 2, 3, 4, 5, 6)
        ]
        time.sleep(1.0)  # let them all finish django.setup() and wait at the line
        monitor = VersionMonitor("cas.p")
        monitor.start()
        go.touch()
        results = [p.communicate(timeout=90) for p in procs]
        monitor.finish()
        assert monitor.samples > 10
        assert monitor.regressions == []
        for p, (_out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        cas = list(
            RegisteredHandler.objects.filter(type__startswith="cas.p").values("version", "path")
        )
        assert len(cas) == 3
        assert {(c["version"], c["path"]) for c in cas} == {("60", "app.v60")}
        # The real handlers: one row each, all active, each at the version the code declares.
        real = {h.type: h for h in RegisteredHandler.objects.exclude(type__startswith="cas.")}
        assert set(real) == {spec.type for spec in registry}
        assert {h.status for h in real.values()} == {"active"}
        assert all(real[s.type].version == s.version for s in registry)


@pytest.mark.django_db
class TestRegisterAll:
    def test_registers_every_handler_active_and_publishes(
        self, r: redis.Redis, clean_disabled: None
    ) -> None:
        report = register_all(by=BY)
        assert report.published and not report.skipped
        assert set(report.outcomes) == {spec.type for spec in registry}
        rows = {h.type: h for h in RegisteredHandler.objects.all()}
        assert set(rows) == {spec.type for spec in registry}
        typing = rows["chat.typing"]
        assert (typing.status, typing.version, typing.core) == ("active", "1", False)
        assert typing.path == "presence.handlers.chat.chat_typing"
        assert typing.last_registered_by == BY
        assert rows["heartbeat"].core
        assert report.activated == len(rows)
        # Nothing disabled and nothing in Redis: start-up leaves Redis alone.
        assert r.keys(store.keys().tag + ":handlers:*") == []
        # A second start-up changes nothing but the registrant.
        again = register_all(by="second:2")
        assert set(again.outcomes.values()) == {Outcome.REFRESHED}
        assert RegisteredHandler.objects.get(type="heartbeat").last_registered_by == "second:2"

    def test_disabled_rows_are_published_and_applied(
        self, r: redis.Redis, clean_disabled: None
    ) -> None:
        register_all(by=BY)
        RegisteredHandler.objects.filter(type="chat.typing").update(status="disabled")
        report = register_all(by="restart:3")
        assert report.outcomes["chat.typing"] == Outcome.REFRESHED
        assert row("chat.typing").status == "disabled"
        assert r.smembers(store.control_keys().handlers_disabled) == {"chat.typing"}
        assert registry.is_disabled("chat.typing")

    def test_rebuilds_redis_from_the_database(self, r: redis.Redis, clean_disabled: None) -> None:
        """Redis holds a stale set (an enable published while it was down): start-up fixes it."""
        register_all(by=BY)
        k = store.control_keys()
        r.sadd(k.handlers_disabled, "chat.typing")
        r.set(k.handlers_version, 41)
        register_all(by="restart:4")
        assert r.smembers(k.handlers_disabled) == set()
        assert r.get(k.handlers_version) == "42"
        assert not registry.is_disabled("chat.typing")

    def test_newer_row_in_the_database_is_left_alone(self, clean_disabled: None) -> None:
        reg("chat.typing", "7", path="newer.code.typing")
        report = register_all(by=BY)
        assert report.outcomes["chat.typing"] == Outcome.STALE
        r = row("chat.typing")
        assert (r.version, r.path, r.status) == ("7", "newer.code.typing", "pending")

    def test_failed_modules_become_failed_rows(
        self,
        scratch: Any,
        r: redis.Redis,
        clean_disabled: None,
    ) -> None:
        reg_, write = scratch
        ok = write(
            "hm_ok",
            """
            from scratch_reg import registry
            @registry.handler("ok.ping", version="1")
            async def ping(ctx, data):
                return None
            """,
        )
        partial = write(
            "hm_partial",
            """
            from scratch_reg import registry
            @registry.handler("partial.first", version="2")
            async def first(ctx, data):
                return None
            raise ImportError("cannot import name 'gone' from 'somewhere'")
            """,
        )
        early = write("hm_early", "raise KeyError('SETTING_MISSING')\n")
        reg_.load_modules([ok, partial, early])

        report = register_all(reg_, by=BY)

        assert report.outcomes == {"ok.ping": Outcome.CREATED}
        assert set(report.failed) == {"partial.first", "hm_early"}
        assert row("ok.ping").status == "active"
        first = row("partial.first")
        assert (first.status, first.version, first.path) == ("failed", "2", "hm_partial.first")
        assert "ImportError: cannot import name 'gone'" in first.error
        # Nothing declared before the error: a placeholder row named after the module.
        placeholder = row("hm_early")
        assert (placeholder.status, placeholder.path, placeholder.version) == (
            "failed",
            "hm_early",
            "",
        )
        assert "SETTING_MISSING" in placeholder.error

    def test_types_a_module_served_before_are_marked_failed(
        self,
        scratch: Any,
        clean_disabled: None,
    ) -> None:
        reg_, write = scratch
        reg("old.one", "3", path="hm_gone.one")
        RegisteredHandler.objects.update(status=HandlerStatus.ACTIVE)
        reg_.load_modules([write("hm_gone", "import not_installed_anymore\n")])
        report = register_all(reg_, by=BY)
        assert set(report.failed) == {"old.one"}
        r = row("old.one")
        assert (r.status, r.version) == ("failed", "3")
        assert "not_installed_anymore" in r.error
        assert not RegisteredHandler.objects.filter(type="hm_gone").exists()

    def test_placeholder_goes_once_the_module_loads(
        self,
        scratch: Any,
        clean_disabled: None,
    ) -> None:
        reg_, write = scratch
        module = write("hm_flaky", "raise RuntimeError('first deploy is broken')\n")
        reg_.load_modules([module])
        register_all(reg_, by=BY)
        assert row("hm_flaky").status == "failed"
        write(
            "hm_flaky",
            """
            from scratch_reg import registry
            @registry.handler("flaky.ping", version="1")
            async def ping(ctx, data):
                return None
            """,
        )
        reg_.load_modules([module])
        register_all(reg_, by=BY)
        assert not RegisteredHandler.objects.filter(type="hm_flaky").exists()
        assert row("flaky.ping").status == "active"

    def test_works_with_an_empty_registry(self, clean_disabled: None) -> None:
        report = register_all(HandlerRegistry(), by=BY)
        assert report.outcomes == {} and report.published


class TestRegisterAtStartup:
    @pytest.mark.django_db
    def test_once_per_process(self, monkeypatch: pytest.MonkeyPatch, clean_disabled: None) -> None:
        monkeypatch.setattr(lifecycle, "_startup_done", False)
        report = lifecycle.register_at_startup()
        assert report is not None and report.published
        assert report.by == lifecycle.process_id()
        assert RegisteredHandler.objects.count() == len(list(registry))
        assert lifecycle.register_at_startup() is None  # the second call does nothing
        # Ran inline on this thread, inside the test's transaction, which is still usable.
        assert RegisteredHandler.objects.filter(status="active").count() == len(list(registry))

    @pytest.mark.django_db(transaction=True)
    async def test_inside_an_event_loop_runs_in_a_thread(
        self, monkeypatch: pytest.MonkeyPatch, clean_disabled: None
    ) -> None:
        """uvicorn imports the application inside its loop, where Django refuses the ORM."""
        monkeypatch.setattr(lifecycle, "_startup_done", False)
        report = lifecycle.register_at_startup()
        assert report is not None and report.outcomes["chat.typing"] == Outcome.CREATED
        assert await RegisteredHandler.objects.filter(status="active").acount() == len(
            list(registry)
        )

    def test_database_errors_are_logged_not_raised(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        # No django_db mark: pytest-django refuses database access, like a database outage.
        monkeypatch.setattr(lifecycle, "_startup_done", False)
        assert lifecycle.register_at_startup() is None
        assert "handler registration failed" in caplog.text


class TestStartupWithoutTables:
    def test_asgi_import_on_an_unmigrated_database_logs_and_serves(self, tmp_path: Path) -> None:
        """`migrate` has not run yet: the web process must start, not crash."""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        }
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import config.asgi; "
                "from presence.handlers.lifecycle import register_all; "
                "print('SKIPPED:', register_all().skipped)",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "SKIPPED: the presence_registeredhandler table does not exist" in out.stdout
        assert "handler registration skipped" in out.stderr

    def test_migrate_on_a_fresh_database(self, tmp_path: Path) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        }
        out = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
