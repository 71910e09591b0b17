"""The steps of docs/install.md, read from the page itself (the fresh-project test applies them).

Each step is a fenced block preceded by a comment that says what to do with it:
``<!-- install: append <path> -->``, ``<!-- install: write <path> -->`` (paths relative to the
project's directory), ``<!-- install: commands -->`` (run in order) and
``<!-- install: processes -->`` (one long-running process a line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

GUIDE = ROOT / "docs" / "install.md"
_STEP = re.compile(
    r"<!-- install: (?P<action>append|write|commands|processes)(?: (?P<path>\S+))? -->\n"
    r"```[a-z]*\n(?P<body>.*?)```",
    re.DOTALL,
)


@dataclass(frozen=True)
class Step:
    """One marked block of the guide."""

    action: str
    path: str | None
    body: str

    def lines(self) -> list[str]:
        """The block's non-empty lines (commands, processes)."""
        return [line.strip() for line in self.body.splitlines() if line.strip()]


def steps(guide: Path = GUIDE) -> list[Step]:
    """Every marked step of the guide, in order."""
    return [Step(m["action"], m["path"], m["body"]) for m in _STEP.finditer(guide.read_text())]


def apply_files(project: Path, guide: Path = GUIDE) -> list[Step]:
    """Apply the guide's ``append`` and ``write`` steps to ``project``; returns them."""
    applied = []
    for step in steps(guide):
        if step.action not in ("append", "write"):
            continue
        assert step.path, f"an {step.action} step names no file"
        target = project / step.path
        if step.action == "append":
            assert target.exists(), f"{target} to append to does not exist"
            target.write_text(target.read_text() + "\n" + step.body)
        else:
            target.write_text(step.body)
        applied.append(step)
    return applied


def block(action: str, guide: Path = GUIDE) -> Step:
    """The one step of ``action`` (``commands``, ``processes``)."""
    (found,) = [step for step in steps(guide) if step.action == action]
    return found
