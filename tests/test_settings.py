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
