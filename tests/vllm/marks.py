"""The marks every vLLM test carries: `vllm`, and a skip with the reason when vLLM cannot be imported.

With MOTE_REQUIRE_VLLM=1 (set by `tox -e vllm` and the CI) a missing vLLM is a failure instead: an
environment whose vLLM install broke must not pass by skipping every vLLM test.
"""

from __future__ import annotations

import os

import pytest

from harness.vllm_plugin.availability import vllm_import_error

REQUIRE_ENV = "MOTE_REQUIRE_VLLM"
REQUIRED = os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")
_REASON = vllm_import_error()

VLLM = [
    pytest.mark.vllm,
    pytest.mark.skipif(_REASON is not None and not REQUIRED, reason=_REASON or ""),
]


def skip_without_vllm() -> None:
    """For fixtures: skip when vLLM cannot be imported, or fail when it is required."""
    if _REASON is None:
        return
    if REQUIRED:
        pytest.fail(f"{REQUIRE_ENV}=1 but {_REASON}", pytrace=False)
    pytest.skip(_REASON)


def missing_required_vllm() -> str | None:
    """The failure message when vLLM is required here but cannot be imported, else None."""
    return f"{REQUIRE_ENV}=1 but {_REASON}" if REQUIRED and _REASON is not None else None
