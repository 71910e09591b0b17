"""What the wheel holds: the two apps with their data, nothing of this repository's project."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import presence
from tests.support.paths import ROOT

pytestmark = pytest.mark.slow


def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def metadata(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as z:
        (path,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(z.read(path).decode())
    return {key: message.get_all(key) or [] for key in set(message.keys())}


class TestContents:
    def test_only_the_two_apps(self, wheel: Path) -> None:
        tops = {n.split("/")[0] for n in names(wheel)}
        assert {t for t in tops if not t.endswith(".dist-info")} == {"presence", "sessions_app"}

    def test_every_template_static_file_lua_script_and_migration(self, wheel: Path) -> None:
        inside = set(names(wheel))
        for app in ("presence", "sessions_app"):
            source = ROOT / app
            for path in source.rglob("*"):
                rel = path.relative_to(ROOT).as_posix()
                if not path.is_file() or "__pycache__" in rel:
                    continue
                wanted = (
                    "/templates/" in rel
                    or "/migrations/" in rel
                    or rel.endswith(".lua")
                    or ("/static/" in rel and "/static/presence/tests/" not in rel)
                )
                if wanted:
                    assert rel in inside, rel
        assert any(n.startswith("presence/store/lua/lib/") for n in inside)

    def test_no_browser_tests_and_no_project_files(self, wheel: Path) -> None:
        for name in names(wheel):
            assert "/static/presence/tests/" not in name
            assert not name.startswith(("config/", "bench/", "tests/", "templates/"))


class TestMetadata:
    def test_version_python_licence_and_classifiers(self, wheel: Path) -> None:
        meta = metadata(wheel)
        assert meta["Version"] == [presence.__version__]
        assert wheel.name.startswith(f"django_presence_platform-{presence.__version__}-")
        assert meta["Requires-Python"] == [">=3.11"]
        assert meta["License-Expression"] == ["MIT"]
        assert "Framework :: Django :: 5.2" in meta["Classifier"]

    def test_dependencies_are_ranges_holding_the_pins(self, wheel: Path) -> None:
        from packaging.requirements import Requirement

        pins = {}
        for line in (ROOT / "requirements.txt").read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                req = Requirement(line)
                pins[req.name.lower()] = next(iter(req.specifier)).version
        for spec in metadata(wheel)["Requires-Dist"]:
            req = Requirement(spec)
            if req.marker is not None:  # an extra's (uvicorn)
                continue
            assert "==" not in str(req.specifier), spec
            assert req.specifier.contains(pins[req.name.lower()]), (spec, pins[req.name.lower()])


def test_the_browser_package_has_the_python_version() -> None:
    package = json.loads((ROOT / "presence/static/presence/package.json").read_text())
    assert package["version"] == presence.__version__


def test_twine_check_passes(wheel: Path) -> None:
    """What PyPI would refuse (metadata, the README as the long description) fails here."""
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout
