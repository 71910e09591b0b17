"""The browser package: ``npm pack`` in its folder, installed from the tarball, imported by node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import presence
from tests.support.paths import ROOT

PACKAGE_DIR = ROOT / "presence" / "static" / "presence"
MANIFEST = json.loads((PACKAGE_DIR / "package.json").read_text())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="node and npm are needed (CI installs Debian's nodejs and npm)",
    ),
]


def npm(*args: str, cwd: Path, cache: Path) -> str:
    env = {
        **os.environ,
        "npm_config_cache": str(cache),  # not the user's cache: nothing shared between runs
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    done = subprocess.run(
        ["npm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def node(script: str, *flags: str, cwd: Path) -> str:
    done = subprocess.run(
        ["node", *flags, "--input-type=module", "-e", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tarball, a scratch folder with the tarball npm-installed in it)."""
    tmp = tmp_path_factory.mktemp("npm")
    cache, packed, scratch = tmp / "cache", tmp / "packed", tmp / "scratch"
    packed.mkdir()
    scratch.mkdir()
    npm("pack", "--pack-destination", str(packed), cwd=PACKAGE_DIR, cache=cache)
    (tarball,) = packed.glob("*.tgz")
    # Offline: the package has no dependencies, so nothing is fetched.
    npm("install", "--offline", str(tarball), cwd=scratch, cache=cache)
    return tarball, scratch


def test_the_tarball_holds_the_module_its_types_and_the_manifest(
    installed: tuple[Path, Path],
) -> None:
    tarball, _ = installed
    with tarfile.open(tarball) as tar:
        files = sorted(name.removeprefix("package/") for name in tar.getnames())
    assert "presence.js" in files and "presence.d.ts" in files and "package.json" in files
    assert not [f for f in files if f.startswith("tests/") or f.startswith(("demo/", "console/"))]


def test_its_version_is_the_python_packages(installed: tuple[Path, Path]) -> None:
    tarball, scratch = installed
    assert MANIFEST["version"] == presence.__version__
    assert tarball.name.endswith(f"-{presence.__version__}.tgz")
    installed_manifest = scratch / "node_modules" / MANIFEST["name"] / "package.json"
    assert json.loads(installed_manifest.read_text())["version"] == presence.__version__


def test_node_imports_it_by_name(installed: tuple[Path, Path]) -> None:
    _, scratch = installed
    names = json.loads(
        node(
            f"import * as client from {MANIFEST['name']!r}; "
            "console.log(JSON.stringify(Object.keys(client)))",
            cwd=scratch,
        )
    )
    assert {"connect", "State", "CloseCode", "SUBPROTOCOL"} <= set(names)
    assert (
        node(
            f"import {{ connect }} from {MANIFEST['name']!r}; console.log(typeof connect)",
            cwd=scratch,
        )
        == "function"
    )


def test_the_types_condition_resolves_to_the_declarations(installed: tuple[Path, Path]) -> None:
    """What TypeScript (moduleResolution node16/bundler) reads: the exports' ``types``."""
    _, scratch = installed
    resolved = node(
        f"console.log(import.meta.resolve({MANIFEST['name']!r}))",
        "--conditions=types",
        cwd=scratch,
    )
    assert resolved.startswith("file://") and resolved.endswith("/presence.d.ts")
    declarations = Path(resolved.removeprefix("file://")).read_text()
    assert "export declare function connect(" in declarations
    # The plain import resolves to the module, not the declarations.
    assert node(f"console.log(import.meta.resolve({MANIFEST['name']!r}))", cwd=scratch).endswith(
        "/presence.js"
    )
