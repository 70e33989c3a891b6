"""A broken vLLM install must not pass by skipping: with MOTE_REQUIRE_VLLM=1 (tox -e vllm, CI) the
session stops with the import error; without it the vLLM tests skip with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm  # no skip: this runs whether or not vLLM imports

REPO = Path(__file__).resolve().parents[2]


def run_pytest_with_broken_vllm(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("simulated broken vLLM install")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MOTE_REQUIRE_VLLM": require}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "vllm", "-p", "no:cacheprovider", "tests/vllm/test_selection.py"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_required_vllm_that_fails_to_import_fails_the_session(tmp_path):
    done = run_pytest_with_broken_vllm(tmp_path, "1")
    assert done.returncode != 0, done.stdout
    assert "MOTE_REQUIRE_VLLM=1 but vLLM is not importable" in done.stdout + done.stderr
    assert "simulated broken vLLM install" in done.stdout + done.stderr


def test_without_the_requirement_vllm_tests_skip_with_the_reason(tmp_path):
    done = run_pytest_with_broken_vllm(tmp_path, "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" in done.stdout and "passed" not in done.stdout
