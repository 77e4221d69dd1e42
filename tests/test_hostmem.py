"""jaxinterp.hostmem: the glibc allocator switch applies and is undone (it changes no result)."""

import platform

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import hostmem


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retain_and_restore_apply_on_glibc():
    try:
        assert hostmem.retain_freed_memory() is True
        big = jnp.ones((3000, 3000)) * 2.0  # 36 MB: above glibc's largest mmap threshold
        np.testing.assert_array_equal(np.asarray(big[:2, :2]), 2.0)
    finally:
        assert hostmem.restore_defaults() is True


def test_retain_sets_one_arena_no_mmap_no_trim_and_restore_undoes_it(monkeypatch):
    calls = {}
    for var in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)  # what restore_defaults sets comes from them
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.__setitem__(k, v) or 1))
    assert hostmem.retain_freed_memory() is True
    assert calls == {hostmem._M_ARENA_MAX: 1, hostmem._M_MMAP_MAX: 0, hostmem._M_TRIM_THRESHOLD: 2**31 - 1}
    assert hostmem.restore_defaults() is True
    assert calls[hostmem._M_MMAP_MAX] == 65536 and calls[hostmem._M_ARENA_MAX] > 1
    monkeypatch.setattr(hostmem, "_mallopt", lambda: None)  # no glibc: nothing applied, False
    assert hostmem.retain_freed_memory() is False


def test_retain_with_an_arena_per_thread_sets_the_default_arena_count(monkeypatch):
    """one_arena=False (several host devices computing side by side): no mmap, no trim, and glibc's
    default arena limit (an arena per thread), also after an earlier one-arena call; a
    MALLOC_ARENA_MAX from the environment is set again (an earlier one-arena call left 1)."""
    calls = {}
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.__setitem__(k, v) or 1))
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)  # its glibc.malloc.arena_max wins over the variable
    assert hostmem.retain_freed_memory(one_arena=False) is True
    assert calls == {hostmem._M_ARENA_MAX: hostmem._DEFAULT_ARENA_MAX, hostmem._M_MMAP_MAX: 0,
                     hostmem._M_TRIM_THRESHOLD: 2**31 - 1}
    calls.clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert hostmem.retain_freed_memory(one_arena=False) is True
    assert calls == {hostmem._M_ARENA_MAX: 2, hostmem._M_MMAP_MAX: 0, hostmem._M_TRIM_THRESHOLD: 2**31 - 1}
