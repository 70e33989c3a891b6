"""Settings of a process that only builds a child (`harness assemble`): the C allocator's, and torch's
threads.

A build allocates and frees a few MB per chunk (float32 values, converted output) on several threads.
glibc's malloc hands blocks that large back to the system when they are freed (mmap, or a trimmed
heap), so every new chunk starts on fresh pages: a page fault and a zeroed page per 4 KB, measured at
about 200,000 faults (0.8 GB) for a 1.5 GB parent pair. Keeping freed blocks of up to 64 MB for reuse
halves the faults and takes 5-15% off a mixed build's time; the memory held stays bounded by the
chunks in flight (a few hundred MB at most).

The build's modules (torch) are imported with the collector off: its passes over the objects an import
makes took 0.15 s of torch's 1.1-1.3 s import (2 cores, 6 runs each).

Everything imported by then is frozen out of the garbage collector's passes (`gc.freeze`): a build
makes many short-lived objects per chunk, and each collection walked torch's and the harness's
modules again (about 2% of a mixed build's CPU time, profiled).

The float work runs on one torch thread: reads and writes need the other cores, and torch's idle
OpenMP threads spin between ops. Measured on 2 cores, a mixed child of two 2.4 GB parents: 6.2 s with
one thread, 7.9-8.1 s with two (user CPU 3.7 s against 7.9 s).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from harness.assembly import libc

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 64 << 20  # blocks up to this size come from (and go back to) the heap, not mmap
TRIM_BYTES = 256 << 20  # free memory at the heap's top kept before it is returned to the system


def build_process_settings() -> None:
    import torch

    reuse_freed_buffers()
    torch.set_num_threads(1)
    gc.freeze()


@contextmanager
def no_collection() -> Iterator[None]:
    """The garbage collector off inside (it is on again after, as it was)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def reuse_freed_buffers() -> bool:
    """Keep freed blocks of up to KEEP_BYTES for reuse (glibc); False where the C library is another."""
    mallopt = libc.function("mallopt")
    if mallopt is None:  # no mallopt (macOS): its defaults stand; musl's refuses (returns 0)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
