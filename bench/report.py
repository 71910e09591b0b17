"""Print a results file of the bench as Markdown (for docs/performance.md).

``python -m bench.report bench/results/<timestamp>.json [more.json ...]``: the medians and
ratios table and the targets of each file, as the bench printed them, in Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.__main__ import _fmt, _table_keys
from bench.servers import FLOOR, SERVER_NAMES


def markdown(report: dict[str, Any]) -> list[str]:
    """The table and the targets of one results file."""
    options = argparse.Namespace(**report["options"])
    summary = report["summary"]
    servers = [s for s in SERVER_NAMES if any(s in v for v in summary.values())]
    others = [s for s in servers if s != FLOOR]
    lines = [
        "| figure | "
        + " | ".join(servers)
        + " | "
        + " | ".join(f"{s}/floor" for s in others)
        + " |",
        "|---" * (1 + len(servers) + len(others)) + "|",
    ]
    for scenario in options.scenarios:
        if scenario == "store":
            continue
        for key in _table_keys(scenario, options, summary):
            row = {s: summary.get(scenario, {}).get(s, {}).get(key) for s in servers}
            if all(v is None for v in row.values()):
                continue
            cells = [_fmt(row[s]) for s in servers]
            floor = row.get(FLOOR)
            for s in others:
                value = row[s]
                cells.append(f"{value / floor:.2f}x" if value is not None and floor else "-")
            lines.append(f"| {scenario}.{key} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- **{t['verdict']}** {t['target']}: {t['measured']}" for t in report["targets"])
    return lines


def main() -> None:
    """Print each file given on the command line."""
    for name in sys.argv[1:]:
        report = json.loads(Path(name).read_text())
        print(f"<!-- {name}: {report['machine']['command']} -->")
        print("\n".join(markdown(report)))
        print()


if __name__ == "__main__":
    main()
