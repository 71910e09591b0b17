"""The peer's own virtualenv: django-channels-presence 1.0.0 with the Django it can run on.

The library is not a dependency of this project (nothing in requirements*.txt): the bench
installs it at run time into ``var/bench-peer-venv`` and reuses that venv on later runs. If
it does not install or migrate, the peer is reported as not run, with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .servers import ROOT

VENV = ROOT / "var" / "bench-peer-venv"
# 1.0.0 declares no dependencies. It builds a Signal with providing_args (gone in Django 4.0),
# so Django 3.2; Channels 4.0 is the last to support 3.2. uvicorn is the platform's version,
# with the same extras (uvloop, httptools, websockets) so that only the application differs.
REQUIREMENTS = [
    "django-channels-presence==1.0.0",
    "Django>=3.2,<4",
    "channels==4.0.0",
    "channels-redis==4.1.0",
    # redis-py of channels-redis 4.1's time: with redis 8 its blocking receive times out.
    "redis==5.0.8",
]


class PeerUnavailableError(Exception):
    """The peer could not be installed or set up; the message says why."""


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PeerUnavailableError(f"{' '.join(command[:4])} failed: {' | '.join(tail)}")


def uvicorn_requirement() -> str:
    """``uvicorn[standard]`` pinned to the version the platform runs on."""
    from importlib.metadata import version

    return f"uvicorn[standard]=={version('uvicorn')}"


def prepare(database: Path) -> str:
    """Install (once) and migrate the peer; returns its python. Raises PeerUnavailableError."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".bench-installed"
    wanted = "\n".join([*REQUIREMENTS, uvicorn_requirement()])
    if not stamp.exists() or stamp.read_text() != wanted:
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(VENV)])
        _run([str(python), "-m", "pip", "install", "--quiet", *wanted.splitlines()])
        stamp.write_text(wanted)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.peer_settings",
        "PEER_DATABASE": str(database),
    }
    _run([str(python), "-m", "django", "migrate", "-v0"], env=env)
    # Wiring check: importing the ASGI module loads the library and connects its signal.
    _run([str(python), "-c", "import bench.peer_asgi"], env=env)
    return str(python)
