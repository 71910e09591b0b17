"""The one list of suites run on every store shape (tests/support/shapes.py)."""

from __future__ import annotations

from tests.support.paths import ROOT
from tests.support.shapes import SHAPE_SUITES, in_shape_suites


def test_every_listed_suite_exists() -> None:
    missing = [path for path in SHAPE_SUITES if not (ROOT / path.split("::")[0]).exists()]
    assert missing == []


def test_a_node_id_belongs_to_a_listed_file_only() -> None:
    listed = SHAPE_SUITES[0]
    assert in_shape_suites(f"{listed}::TestX::test_y")
    assert in_shape_suites(f"{listed}::test_y[cluster]")
    assert not in_shape_suites(f"{listed[:-3]}_other.py::test_y")
    assert not in_shape_suites("tests/presence/store/test_lua_end.py::test_y")
