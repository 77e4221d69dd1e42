"""Review 17 of the NuGraph2 network (model, jraph form, widen, losses, message passing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.nugraph import model

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_init_returns_every_leaf_in_the_dtype_asked_for(dtype, x64):
    """init scaled each leaf by a numpy float64 bound, which is not weakly typed: every kernel and bias
    came back float64 under jax_enable_x64 (a float32 training run then ran in float64) and float32 for
    bfloat16/float16 params; only the temperatures had the dtype asked for."""
    with jax.enable_x64(x64):
        params = model.init(jax.random.PRNGKey(0), TINY, dtype=dtype)
    assert {str(a.dtype) for a in jax.tree.leaves(params)} == {jnp.dtype(dtype).name}
    # the same values with and without x64: the bound is rounded to dtype either way
    with jax.enable_x64(not x64):
        other = model.init(jax.random.PRNGKey(0), TINY, dtype=dtype)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
