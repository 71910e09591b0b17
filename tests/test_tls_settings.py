"""Settings of a deployment behind a TLS proxy, read from the environment; the documented
production environment (deploy/production.env) passes ``manage.py check --deploy``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = ROOT / "deploy" / "production.env"
TLS = (
    "DJANGO_SECURE_PROXY_SSL_HEADER",
    "DJANGO_CSRF_TRUSTED_ORIGINS",
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SECURE_HSTS_SECONDS",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "DJANGO_SECURE_HSTS_PRELOAD",
)


def documented_env() -> dict[str, str]:
    env = {}
    for line in PRODUCTION_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def run(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PRESENCE_"))}
    base.pop("METRICS_TOKEN", None)
    base.update(VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings", **env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def show(env: dict[str, str], tmp_path: Path, expr: str) -> str:
    out = run(env, tmp_path, "-c", f"import django; django.setup(); {expr}")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


class TestCheckDeploy:
    def test_documented_production_env_is_clean(self, tmp_path: Path) -> None:
        env = documented_env()
        env["DJANGO_SECRET_KEY"] = "a-real-looking-secret-" + "k7Qz" * 12  # the file's is a stub

        out = run(env, tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING")

        assert out.returncode == 0, out.stdout + out.stderr
        assert "no issues" in out.stdout

    def test_without_the_tls_settings_it_warns(self, tmp_path: Path) -> None:
        env = {k: v for k, v in documented_env().items() if k not in TLS}
        env["DJANGO_SECRET_KEY"] = "a-real-looking-secret-" + "k7Qz" * 12

        out = run(env, tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING")

        assert out.returncode != 0
        assert "security.W004" in out.stderr + out.stdout  # no HSTS
        assert "security.W008" in out.stderr + out.stdout  # no SSL redirect


class TestFromEnvironment:
    def test_defaults_are_off(self, tmp_path: Path) -> None:
        expr = (
            "from django.conf import settings as s; print(s.CSRF_TRUSTED_ORIGINS, "
            "s.SECURE_PROXY_SSL_HEADER, s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT)"
        )

        assert show({}, tmp_path, expr) == "[] None 0 False"

    def test_read_from_the_environment(self, tmp_path: Path) -> None:
        env = {
            "DJANGO_CSRF_TRUSTED_ORIGINS": "https://a.example,https://b.example",
            "DJANGO_SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
            "DJANGO_SECURE_HSTS_SECONDS": "3600",
            "DJANGO_SECURE_SSL_REDIRECT": "true",
        }
        expr = (
            "from django.conf import settings as s; print(s.CSRF_TRUSTED_ORIGINS, "
            "s.SECURE_PROXY_SSL_HEADER, s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT)"
        )

        assert show(env, tmp_path, expr) == (
            "['https://a.example', 'https://b.example'] "
            "('HTTP_X_FORWARDED_PROTO', 'https') 3600 True"
        )

    @pytest.mark.parametrize("value", ["HTTP_X_FORWARDED_PROTO", "A,b,c"])
    def test_a_malformed_ssl_header_stops_start_up(self, tmp_path: Path, value: str) -> None:
        out = run({"DJANGO_SECURE_PROXY_SSL_HEADER": value}, tmp_path, "manage.py", "check")

        assert out.returncode != 0
        assert "DJANGO_SECURE_PROXY_SSL_HEADER is 'HEADER,value'" in out.stderr
