"""The operator kit: deploy/ (Prometheus config, alert rules, Grafana dashboard) and the
commands docs/operations.md gives, checked against the real exposition and the real Redis.

promtool comes from Debian's ``prometheus`` package; without it those tests are skipped
with a line saying so (``.ci/run`` does not install it; ``apt-get install prometheus`` does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from presence import store
from presence.jobs import periodic

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus); rules not validated",
)
METRIC_RE = re.compile(r"\bpresence_[a-z0-9_]+\b")
SUFFIXES = ("_bucket", "_count", "_sum")


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


@pytest.fixture
def exported(settings: Any, db: None) -> set[str]:
    """Every metric name /metrics exports (sample names and family names)."""
    settings.DEBUG = True
    periodic.run_locked("sweep", 1000, periodic.RunReport(), lambda r: None)
    periodic.run_locked("flush", 1000, periodic.RunReport(), lambda r: None)
    periodic.run_locked("reap", 1000, periodic.RunReport(), lambda r: None)
    periodic.run_locked("reconcile", 1000, periodic.RunReport(), lambda r: None)
    text = Client().get("/metrics").content.decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(s.name for s in family.samples)
    return names


def used_names(text: str) -> set[str]:
    return set(METRIC_RE.findall(text))


class TestNames:
    def test_every_metric_the_rules_use_is_exported(self, exported: set[str]) -> None:
        used = set().union(*(used_names(e) for e in alert_exprs()))
        assert used, "no presence metric in the rules?"
        assert used - exported == set()

    def test_every_metric_the_dashboard_uses_is_exported(self, exported: set[str]) -> None:
        used = set().union(*(used_names(e) for e in dashboard_exprs()))
        assert len(used) > 20
        assert used - exported == set()

    def test_every_exported_presence_metric_is_documented(self, exported: set[str]) -> None:
        documented = used_names(DOCS.read_text())
        base = {n for n in exported if n.startswith("presence_") and not n.endswith(SUFFIXES)}
        base = {n for n in base if not n.endswith("_created")}
        counters = {n[: -len("_total")] for n in base if n.endswith("_total")}
        assert (base - counters) - documented == set()

    def test_dashboard_is_importable_json(self) -> None:
        dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        assert dash["uid"] and dash["title"]
        for p in dash["panels"]:
            for t in p.get("targets", []):
                assert t["refId"] and t["expr"].strip()


@needs_promtool
class TestPromtool:
    def test_rules_are_valid(self) -> None:
        result = promtool("check", "rules", "alerts.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_rules_fire_as_intended(self) -> None:
        result = promtool("test", "rules", "alerts_test.yml")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_a_broken_rule_is_caught(self, tmp_path: Path) -> None:
        """The check can fail: a rule with a syntax error is refused."""
        broken = (DEPLOY / "alerts.yml").read_text().replace("> 60", "> > 60", 1)
        (tmp_path / "alerts.yml").write_text(broken)
        assert promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode != 0

    def test_scrape_config_is_valid(self, tmp_path: Path) -> None:
        config = (DEPLOY / "prometheus.yml").read_text()
        token = tmp_path / "token"
        token.write_text("t\n")
        config = config.replace("/etc/prometheus/presence-metrics-token", str(token))
        (tmp_path / "prometheus.yml").write_text(config)
        shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
        result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_dashboard_queries_are_valid_promql(self, tmp_path: Path) -> None:
        # promtool validates expressions in rule files: one recording rule per panel query.
        rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [
                        {"record": f"dashboard_query_{i}", "expr": expr}
                        for i, expr in enumerate(dashboard_exprs())
                    ],
                }
            ]
        }
        (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
        result = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


class TestDocCommands:
    """The redis-cli lines of docs/operations.md, run as written against the private Redis."""

    def commands(self) -> list[str]:
        lines = [line.strip() for line in DOCS.read_text().splitlines()]
        return [line for line in lines if line.startswith("redis-cli")]

    def test_every_command_names_the_server(self) -> None:
        commands = self.commands()
        assert len(commands) >= 6
        # A bare redis-cli talks to 127.0.0.1:6379, where nothing of ours runs.
        assert all(
            c.startswith('redis-cli -u "${REDIS_URL:-$(cat var/redis.url)}" ') for c in commands
        )

    @pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
    @pytest.mark.parametrize("mode", ["embedded", "REDIS_URL"])
    def test_commands_work_as_written(
        self, mode: str, redis_server: Any, r: Any, tmp_path: Path
    ) -> None:
        store.ensure_group(store.SESSION_LOG_GROUP)
        for task in ("sweep", "flush", "sessionlog"):
            periodic.run_locked(task, 1000, periodic.RunReport(), lambda rep: None)
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        if mode == "embedded":  # what `make run` leaves behind
            (tmp_path / "var").mkdir()
            (tmp_path / "var" / "redis.url").write_text(redis_server.url + "\n")
        else:
            env["REDIS_URL"] = redis_server.url
        for command in self.commands():
            result = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 0, (command, output)
            assert "Could not connect" not in output and "ERR" not in output, (command, output)
            if "HGETALL" in command:
                assert "runs_total" in output, (command, output)  # the real hash, not empty
