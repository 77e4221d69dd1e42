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
