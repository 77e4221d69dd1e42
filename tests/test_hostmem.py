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


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_retained_block_applies_then_restores(monkeypatch):
    calls = []
    real = hostmem._mallopt()
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.append((k, v)) or real(k, v)))
    with hostmem.freed_memory_retained() as applied:
        assert applied is True
        assert (hostmem._M_ARENA_MAX, 1) in calls and (hostmem._M_MMAP_MAX, 0) in calls
    assert calls[3:] and (hostmem._M_MMAP_MAX, 65536) in calls[3:]  # glibc's defaults again
