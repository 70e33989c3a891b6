"""The marks every vLLM test carries: `vllm`, and a skip with the reason when vLLM cannot be imported."""

from __future__ import annotations

import pytest

from harness.vllm_plugin.availability import vllm_import_error

_REASON = vllm_import_error()

VLLM = [
    pytest.mark.vllm,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]
