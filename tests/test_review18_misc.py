"""Review 18: merge demo seeds, the toy-world tokenizer's length, host memory settings restored,
the NuGraph2 demo's latency timing, `merge barrier --devices`."""

from __future__ import annotations

import pytest

from jaxinterp import hostmem

# ----------------------------------------------------------------------------- hostmem


def _recorded(monkeypatch) -> dict:
    calls: dict = {}
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.__setitem__(k, v) or 1))
    return calls


@pytest.mark.parametrize("env, want", [
    # nothing set: glibc's defaults
    ({}, (hostmem._DEFAULT_ARENA_MAX, 65536, 128 * 1024)),
    # the user's values (as glibc's tunables read them: decimal, 0x hex, 0 octal) were replaced by glibc's
    ({"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_MAX_": "0x10", "MALLOC_TRIM_THRESHOLD_": "0400"}, (2, 16, 256)),
    ({"MALLOC_ARENA_MAX": "1"}, (1, 65536, 128 * 1024)),
    # values glibc ignores (no number, below the minimum of 1 arena) leave glibc's defaults
    ({"MALLOC_ARENA_MAX": "0", "MALLOC_MMAP_MAX_": "many", "MALLOC_TRIM_THRESHOLD_": "+5"},
     (hostmem._DEFAULT_ARENA_MAX, 65536, 128 * 1024)),
])
def test_restore_defaults_restores_the_environments_malloc_settings(monkeypatch, env, want):
    for var in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    calls = _recorded(monkeypatch)
    assert hostmem.retain_freed_memory() is True
    assert hostmem.restore_defaults() is True
    assert (calls[hostmem._M_ARENA_MAX], calls[hostmem._M_MMAP_MAX], calls[hostmem._M_TRIM_THRESHOLD]) == want
    # an arena per thread after the one-arena call: the environment's limit again (it stayed at 1)
    calls.clear()
    assert hostmem.retain_freed_memory(one_arena=False) is True
    assert calls == {hostmem._M_ARENA_MAX: want[0], hostmem._M_MMAP_MAX: 0, hostmem._M_TRIM_THRESHOLD: 2**31 - 1}
