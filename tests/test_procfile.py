"""The Procfile's command lines, expanded by the shell as honcho runs them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.servers import procfile_command


def argv(name: str, env: dict[str, str]) -> list[str]:
    """The argument vector the shell makes of the Procfile's process ``name`` under ``env``."""
    script = f'set -- {procfile_command(name)}; for a in "$@"; do printf "%s\\n" "$a"; done'
    out = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split("\n")[:-1]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


class TestWeb:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(None, "", id="unset-trusts-nobody"),
            pytest.param("", "", id="empty-trusts-nobody"),
            pytest.param("10.0.0.1, 10.1.0.0/16", "10.0.0.1, 10.1.0.0/16", id="list"),
        ],
    )
    def test_trusted_proxies_reach_uvicorn_as_one_argument(
        self, value: str | None, expected: str
    ) -> None:
        env = {"WEB_HOST": "127.0.0.1", "WEB_PORT": "8000", "WS_MAX_MESSAGE_BYTES": "65536"}
        if value is not None:
            env["PRESENCE_TRUSTED_PROXIES"] = value

        assert flag(argv("web", env), "--forwarded-allow-ips") == expected


class TestBeat:
    def test_schedule_file_is_under_var_dir(self, tmp_path: Path) -> None:
        assert flag(argv("beat", {"VAR_DIR": str(tmp_path)}), "--schedule") == str(
            tmp_path / "celerybeat-schedule"
        )

    def test_schedule_file_defaults_to_var(self) -> None:
        assert flag(argv("beat", {}), "--schedule") == "var/celerybeat-schedule"
