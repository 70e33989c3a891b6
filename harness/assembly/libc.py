"""The C library's functions a build calls that Python's `os` lacks (glibc's mallopt, Linux's
sync_file_range): looked up once per process, None where this system's C library has no such function."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache
from typing import Any


@cache
def _libc() -> ctypes.CDLL | None:
    if os.name != "posix":
        return None
    # runs ldconfig on Linux, once; where it finds nothing, the process's own symbols (its C library's)
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def function(name: str) -> Any | None:
    """The C library's function `name`, or None where it has none (musl or macOS lack some)."""
    return getattr(_libc(), name, None)
