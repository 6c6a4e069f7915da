"""Fewer glibc malloc arenas in ptjf's processes: a lower peak memory at the same speed.

glibc gives threads that allocate at the same time arenas of their own, up to 8 per core, and
memory freed in one arena is not reused by another. A ptjf process starts with many threads
allocating at once (the step compiling on one, the state initialised on another, tf.data's and
XLA's pools), so freed compile and pipeline memory is scattered over arenas and the peak RSS
grows. With two arenas, `ptjf train` for nmt_3layer at the reference shape peaked at 2.98 GiB
instead of 3.26 GiB on a cold launch and 2.52 GiB instead of 2.66 GiB on a warm one, with the
same launch and step times (docs/performance.md).

Only glibc has arenas; elsewhere, or when the user set `MALLOC_ARENA_MAX`, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Caps glibc's malloc arenas at `arenas` for the arenas created from now on (call it
    before the process starts its threads). True if the cap was set."""
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
    return bool(libc.mallopt(M_ARENA_MAX, arenas))
