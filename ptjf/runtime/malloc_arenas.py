"""Fewer glibc malloc arenas in ptjf's processes: a lower peak memory at the same speed.

glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and
memory freed in one arena is not reused by another. A ptjf process starts with many threads
allocating at once (the step compiling on one, the state initialised on another, tf.data's and
XLA's pools), so freed compile and pipeline memory is scattered over arenas and the peak RSS
grows. With 2 arenas per core, `ptjf train` for nmt_3layer at the reference shape on 2 cores
peaked at 2.87–2.89 GiB instead of 3.03–3.09 GiB on a cold launch, at the same launch time
(docs/performance.md). Fewer arenas cost time: with 1 per core XLA's parallel compiles waited
on each other's allocations and a cold launch took 3 s longer.

Only glibc has arenas; elsewhere, or when the user set `MALLOC_ARENA_MAX`, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS_PER_CORE = 2


def limit_arenas(arenas: int | None = None) -> bool:
    """Caps glibc's malloc arenas at `arenas` (None: 2 per core) for the arenas created from
    now on; call it before the process starts its threads. True if the cap was set."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        version = libc.gnu_get_libc_version  # absent outside glibc (e.g. musl)
    except (OSError, AttributeError):
        return False
    del version
    if arenas is None:
        arenas = ARENAS_PER_CORE * (os.cpu_count() or 1)
    return bool(libc.mallopt(M_ARENA_MAX, arenas))
