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
# them once, at startup: what the environment says is what this process began with), with each
# tunable's least value (dl-tunables.list) and whether glibc holds it as a size_t (else an int32)
_GLIBC_DEFAULTS = {"arena_max": ("MALLOC_ARENA_MAX", _DEFAULT_ARENA_MAX, 1, True),
                   "mmap_max": ("MALLOC_MMAP_MAX_", 65536, 0, False),
                   "trim_threshold": ("MALLOC_TRIM_THRESHOLD_", 128 * 1024, 0, True)}
_INT_MAX, _UINT64_MAX = 2**31 - 1, 2**64 - 1


def _glibc_version() -> tuple[int, int]:
    """(major, minor) of the C library, (0, 0) where it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return (int(version.split(".")[0]), int(version.split(".")[1])) if name == "glibc" else (0, 0)
    except (AttributeError, ValueError, OSError, IndexError):
        return (0, 0)


def _strtoul(text: str) -> tuple[int, bool]:
    """glibc's _dl_strtoul, which reads every tunable's number: spaces and tabs, a sign, then decimal,
    0x hex or 0 octal digits as far as they go (past 2**64 - 1: that); '-' negates modulo 2**64. Returns
    the value and whether it read all of `text` (a value with no digits is 0, read up to where it stops)."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t":
        i += 1
    negative = i < n and text[i] == "-"
    i += i < n and text[i] in "+-"
    if i == n or not "0" <= text[i] <= "9":
        return 0, i == n
    base = 16 if text[i] == "0" and text[i + 1:i + 2] in ("x", "X") else 8 if text[i] == "0" else 10
    i += 2 if base == 16 else 0
    digits = "0123456789abcdef"[:base]
    value = 0
    while i < n and text[i].lower() in digits:
        d = digits.index(text[i].lower())
        if value >= (_UINT64_MAX - d) // base:  # glibc's overflow test, sign ignored
            return _UINT64_MAX, False
        value, i = value * base + d, i + 1
    return (-value) % 2**64 if negative else value, i == n


def _env_value(text: str, least: int, size_t: bool, *, strict: bool | None = None) -> int | None:
    """An environment variable's value as glibc reads it into the tunable, as the int mallopt takes, or
    None where glibc ignores it. glibc 2.39 and later (`strict`) take a value only if all of it is a
    number ("5 MB", "many" are ignored); earlier ones read the number it starts with ("5 MB" is 5, "many"
    and "" are 0). A size_t tunable takes any value from `least` (-1 is 2**64 - 1), an int32 one only
    those up to 2**31 - 1. mallopt's int reaches a size_t's top 2**31 values (-1 is 2**64 - 1 again);
    a trim threshold between those and 2**31 - 1 comes back as 2**31 - 1, an arena limit past it too
    (the nearest mallopt can set: as many arenas as the process will ever make)."""
    v, whole = _strtoul(text)
    if (_glibc_version() >= (2, 39) if strict is None else strict) and not whole:
        return None
    if not size_t:
        signed = v - 2**64 if v >= 2**63 else v  # compared as a signed number
        return signed if least <= signed <= _INT_MAX else None
    if v < least:
        return None
    if v <= _INT_MAX:
        return v
    return v - 2**64 if v >= 2**64 - 2**31 and least <= 0 else _INT_MAX


def _tunables_pairs(text: str, *, strict: bool) -> list[tuple[str, str]]:
    """GLIBC_TUNABLES' name=value pairs (name=value:name=value) in the order glibc applies them. Before
    2.39 a name without '=' before a ':' is passed over and one at the end ends the list; a value runs
    to the next ':'. From 2.39 (`strict`) such a name at the end (a ':' last too), or a '=' in a value,
    makes glibc ignore the whole string, and only the last pair of a name counts."""
    pairs, i, n = [], 0, len(text)
    if strict and text and text[-1] == ":":  # 2.39's parser then reads an empty name at the end
        return []
    while i < n:
        j = i
        while j < n and text[j] not in "=:":
            j += 1
        if j == n:
            return [] if strict else pairs
        if text[j] == ":":
            i = j + 1
            continue
        k = j + 1
        while k < n and text[k] != ":" and not (strict and text[k] == "="):
            k += 1
        if k < n and text[k] == "=":
            return []
        pairs.append((text[i:j], text[j + 1:k]))
        i = k + 1
    return list({name: (name, value) for name, value in pairs}.values()) if strict else pairs


def _defaults() -> dict[str, int]:
    """The values a fresh process of this environment starts with: where glibc takes one from the
    environment, that one, else glibc's. GLIBC_TUNABLES (glibc.malloc.arena_max=2:...) comes first: a
    value of it that glibc takes wins over the variable (MALLOC_ARENA_MAX), whatever their order."""
    strict = _glibc_version() >= (2, 39)
    pairs = _tunables_pairs(os.environ.get("GLIBC_TUNABLES", ""), strict=strict)
    out = {}
    for name, (var, default, least, size_t) in _GLIBC_DEFAULTS.items():
        v = None
        for key, text in pairs:  # a later value glibc ignores leaves an earlier one (before 2.39)
            taken = _env_value(text, least, size_t, strict=strict) if key == f"glibc.malloc.{name}" else None
            v = v if taken is None else taken
        if v is None and var in os.environ:
            v = _env_value(os.environ[var], least, size_t, strict=strict)
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

    A value the user set in the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`,
    `MALLOC_TRIM_THRESHOLD_`, or GLIBC_TUNABLES' glibc.malloc.*: what glibc started this process with)
    is restored in place of glibc's default (`_defaults`): MALLOC_ARENA_MAX=2 came back as 8 arenas a
    core."""
    return _set(**_defaults())

