"""A real run folder (Runner + scripted model, see report_runs.py), built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from report_runs import make_run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir("qwen3_moe"), name="demo", random_seeds=6)


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory: pytest.TempPathFactory, demo_run: Path) -> Path:
    """A folder of two run folders (the second a copy of the first under another id)."""
    parent = tmp_path_factory.mktemp("results")
    shutil.copytree(demo_run, parent / "demo-a")
    shutil.copytree(demo_run, parent / "demo-b")
    (parent / "not-a-run").mkdir()
    return parent
