"""Review 14 leftovers: sce's top-k count, slices' unmatched tensors, stale side files of an earlier
merge, inject's --layers range message, torch checkpoint messages."""

from __future__ import annotations

import numpy as np
import pytest


# --- 1. sce: k = int(density * count) in float32, as mergekit (torch: int64 tensor * float -> float32)

@pytest.mark.parametrize("density,n,want", [
    (0.7, 90, 63),    # float64: 0.7 * 90 = 62.999999999999993 -> 62; float32: 63.0 -> 63
    (0.65, 180, 116),  # float64: 117.00000000000001 -> 117; float32: 116.99999 -> 116
    (0.5, 90, 45),     # both agree
])
@pytest.mark.parametrize("x64", [False, True])
def test_sce_topk_count_is_computed_in_float32_as_mergekit(density, n, want, x64):
    import jax
    import jax.numpy as jnp

    from jaxinterp.merge import simple

    assert int(np.float32(np.float32(density) * np.float32(n))) == want  # the figure mergekit gets
    rng = np.random.default_rng(0)
    dtype = np.float64 if x64 else np.float32
    with jax.enable_x64(x64):
        taus = jnp.asarray(rng.normal(size=(2, n)).astype(dtype))
        mask = simple.sce_topk_mask(taus, density)
        assert mask.dtype == taus.dtype
        assert int(np.asarray(mask).sum()) == want
        # the kept entries are those of largest variance
        var = np.var(np.asarray(taus), axis=0)
        assert set(np.flatnonzero(np.asarray(mask))) == set(np.argsort(-var, kind="stable")[:want])
        # and the merge keeps them: the other entries come out as the base's
        base = jnp.zeros(n, dtype)
        out = np.asarray(simple.sce(base, [base + taus[0], base + taus[1]], select_topk=density))
        assert np.count_nonzero(out) <= want and not out[np.asarray(mask) == 0].any()
