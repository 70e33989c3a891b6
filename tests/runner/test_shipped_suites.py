from __future__ import annotations

from pathlib import Path

import pytest

from harness.suite.schema import load_suite

SUITES = sorted((Path(__file__).resolve().parents[2] / "tasks" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_validates(path):
    suite = load_suite(path)
    assert suite.tasks and suite.name == path.stem
