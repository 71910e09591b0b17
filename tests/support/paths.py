"""Where things are: the project root (the working directory and PYTHONPATH of subprocesses)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
