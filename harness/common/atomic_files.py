"""Writing a file whole: to a hidden temporary beside it, flushed to disk, then renamed over it, so a
kill leaves the previous file or the new one, never a torn one (run folders, routing records)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_whole(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create `path` from what `write` puts into a binary file object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")  # hidden: outside any glob for the final names
    with tmp.open("wb") as sink:
        write(sink)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(tmp, path)
    return path
