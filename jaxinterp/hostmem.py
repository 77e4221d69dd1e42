"""Keep freed host memory in the process, so XLA:CPU's large buffers stop page-faulting on every call.

XLA:CPU allocates a jitted function's buffers (its temporaries as one block) with malloc on each
call. glibc serves large blocks with fresh pages from mmap and returns them to the kernel on free,
so every call pays a page fault per 4 KiB page of each large buffer:
- blocks above the mmap threshold (32 MiB at most) in any thread: for GPT-2 small at 8 x 128 with
  all twelve `hook_result` cached (37.7 MB each) ~15 ms a layer, more than the arithmetic that
  fills them (BUILD_NOTES.md, "hook_result on a CPU");
- every block of more than 64 MiB that XLA's worker threads allocate: each thread gets an arena
  of its own, and glibc serves what does not fit an arena's 64 MiB heap with mmap whatever the
  threshold. NuGraph2 at batch 32 maps a 563 MB temporary block per call: 137,000 faults and
  0.24 s of kernel time in a 1 s call; its training spent 44% of its CPU time in the kernel.

`retain_freed_memory()` tells glibc to use one arena for all threads, to serve every size from
its heap and never to trim it, so a buffer freed by one call is reused by the next (NuGraph2 at
batch 32: 48 faults per call, 18% less wall time; a training step: 76,000 faults and 151 ms of
kernel time -> none and 4 ms, 5.2 -> 7.7 steps per second). The price: the process keeps its peak
heap (its resident memory does not shrink after a peak), and threads share one arena's lock. The
arena setting reaches only threads that have not allocated yet: call it before JAX's first
computation (before `jax.devices()` or the first jitted call). It is a process-wide choice, so the
library never makes it on import; the `jaxinterp` command makes it for its compute jobs
(`cli.RETAIN_FREED_MEMORY`: not `lens`, where a full-size step got 12% faster but its peak RSS grew
from 6.4 to 7.9 GiB, nor `merge`'s streaming threads, nor `bench`, whose benchmarks run in processes
of their own). The environment equivalent, set before Python starts:
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_DEFAULT_ARENA_MAX = 8 * (os.cpu_count() or 1)  # glibc's limit on a 64-bit machine: 8 arenas a core


def _mallopt():
    """glibc's mallopt, or None where there is no glibc (macOS, musl)."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


# glibc's defaults, and the environment variables that set them when the process starts (glibc reads
# them once, at startup: what the environment says is what this process began with)
_GLIBC_DEFAULTS = {"arena_max": ("MALLOC_ARENA_MAX", _DEFAULT_ARENA_MAX, 1),
                   "mmap_max": ("MALLOC_MMAP_MAX_", 65536, 0),
                   "trim_threshold": ("MALLOC_TRIM_THRESHOLD_", 128 * 1024, 0)}


def _env_value(text: str, least: int) -> int | None:
    """An environment variable's plain value (decimal, 0x hex or 0 octal digits alone, from the tunable's
    minimum up to mallopt's int), or None, for which glibc's default is restored. Other spellings
    (a sign, spaces, trailing text, values past an int) and GLIBC_TUNABLES are not interpreted: glibc
    reads some of them, by rules that changed in 2.39, and restoring its default is the safe answer."""
    base, digits = (16, text[2:]) if text[:2].lower() == "0x" else (8, text) if text[:1] == "0" else (10, text)
    if not digits or any(c not in "0123456789abcdef"[:base] for c in digits.lower()):  # int() takes " 5", "+5", "1_0"
        return None
    v = int(digits, base)
    return v if least <= v <= 2**31 - 1 else None


def _defaults() -> dict[str, int]:
    """The values a fresh process of this environment starts with: the environment's where it sets a
    valid one, else glibc's."""
    out = {}
    for name, (var, default, least) in _GLIBC_DEFAULTS.items():
        v = _env_value(os.environ[var], least) if var in os.environ else None
        out[name] = default if v is None else v
    return out


def _set(**values: int) -> bool:
    mallopt = _mallopt()
    names = {"mmap_max": _M_MMAP_MAX, "trim_threshold": _M_TRIM_THRESHOLD, "arena_max": _M_ARENA_MAX}
    return mallopt is not None and all([bool(mallopt(names[k], v)) for k, v in values.items()])


def retain_freed_memory(*, one_arena: bool = True) -> bool:
    """No mmap for large blocks, no heap trimming and (`one_arena`) one arena for all threads; True
    when applied, False where there is no glibc (nothing is changed there).

    `one_arena=False` keeps glibc's arena per thread: for several host devices
    (`--xla_force_host_platform_device_count`) computing side by side with temporaries below the
    64 MiB a thread arena holds. There one shared arena cost ~10%: NuGraph2 `predict` on 2 host
    devices x 1 event per call, 20.4-21.5 ms/event with one arena, 18.3-19.3 with an arena per
    thread (BUILD_NOTES.md, NuGraph2 "Latency", session 15). It sets glibc's default arena limit
    (8 a core) again, so it also undoes an earlier `retain_freed_memory()` (which had left every
    later thread in the one arena while this call said True), or the environment's
    `MALLOC_ARENA_MAX` where the user set one (`_defaults`).
    """
    return _set(arena_max=1 if one_arena else _defaults()["arena_max"], mmap_max=0, trim_threshold=2**31 - 1)


def restore_defaults() -> bool:
    """glibc's default values again (mmap for large blocks, 128 KiB trim threshold, 8 arenas a core
    for threads that have not allocated yet); True when applied. Not quite a fresh process: setting
    any of these turned off glibc's dynamic mmap threshold (which otherwise rises to the size of
    freed mmapped blocks, up to 32 MiB), and mallopt has no way to turn it back on, so the threshold
    stays where it was; compare against the default allocator in a fresh process.

    A plain value the user set in the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`,
    `MALLOC_TRIM_THRESHOLD_`: what glibc started this process with) is restored in place of glibc's
    default (`_defaults`): MALLOC_ARENA_MAX=2 came back as 8 arenas a core."""
    return _set(**_defaults())

