"""The distribution built once per test run: ``pip wheel --no-deps .`` into a temporary folder.

Once per run, not per pytest-xdist worker: make test's load scheduler hands the tests of
test_wheel.py and test_fresh_project.py to different workers, and each built its own wheel
(31 s under CI's load, measured with --durations). The first worker to need it builds it
under a lock in the run's shared temporary folder; the others wait for it and reuse it.

It is built from a copy of the checkout's files (tracked, or new and not ignored): setuptools
leaves ``build/`` and ``*.egg-info`` beside the sources it builds, which would otherwise land in
the working tree (and in `ruff check .`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def copy_sources(dest: Path) -> None:
    """The checkout's files (as git sees them, untracked new ones included) under ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet staged is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout (built in an isolated environment: setuptools from PyPI)."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is a folder of the run's own (pytest-N/popen-gwX).
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "wheel"
    with (shared / "wheel.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        built = sorted(out.glob("*.whl"))
        if not built:
            built = [build_wheel(tmp_path_factory.mktemp("source"), out)]
    return built[0]


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout into ``out`` (one wheel there)."""
    copy_sources(source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("*.whl")
    return built
