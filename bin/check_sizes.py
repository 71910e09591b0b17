"""Fail when a module of the project's own code is over 600 lines without saying why.

Run by ``make lint``. Tests, migrations and the benchmark are exempt; a module may be longer
when its docstring has a line starting ``Long module:`` that says why.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "presence", "sessions_app", "bin")
LIMIT = 600


def oversized() -> list[str]:
    """``path: N lines`` for each module over the limit whose docstring gives no reason."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            text = path.read_text()
            lines = text.count("\n")
            if lines <= LIMIT:
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if any(line.startswith("Long module:") for line in doc.splitlines()):
                continue
            found.append(f"{path.relative_to(ROOT)}: {lines} lines (limit {LIMIT})")
    return found


if __name__ == "__main__":
    problems = oversized()
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)
