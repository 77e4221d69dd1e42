"""Keep freed host memory in the process, so XLA:CPU's large buffers stop page-faulting on every call.

glibc serves allocations above its mmap threshold (32 MiB at most) with fresh pages from mmap and
returns them to the kernel on free. XLA:CPU allocates a jitted function's buffers on each call, so
every call pays a page fault per 4 KiB page of each large buffer: for GPT-2 small at 8 x 128 with
all twelve `hook_result` cached (37.7 MB each) that is ~15 ms a layer, more than the arithmetic
that fills them (an XLA broadcast writing a fresh [1024, 12, 768] buffer: 14-16 ms; with freed
memory retained: 0.8-1.1 ms; BUILD_NOTES.md, "hook_result on a CPU").

`retain_freed_memory()` tells glibc to serve every size from its heap and never trim it, so a
buffer freed by one call is reused by the next. The price: the process keeps its peak heap (its
resident memory does not shrink after a peak). It is a process-wide choice, so the library never
makes it on import: call it at the top of a long-running CPU job, or set the equivalent environment
variables before Python starts: `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296`.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4


def _mallopt():
    """glibc's mallopt, or None where there is no glibc (macOS, musl)."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def _set(mmap_max: int, trim_threshold: int) -> bool:
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def retain_freed_memory() -> bool:
    """Turns glibc's mmap for large blocks off and its heap trimming down; True when applied,
    False where there is no glibc (nothing is changed there)."""
    return _set(0, 2**31 - 1)


def restore_defaults() -> bool:
    """glibc's defaults again (mmap for large blocks, 128 KiB trim threshold); True when applied."""
    return _set(65536, 128 * 1024)
