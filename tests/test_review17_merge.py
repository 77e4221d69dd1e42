"""Review 17 of model merging (RegMean's Gram matrices, the side files of `merge yaml`, re-basin spec
errors, the merge benchmark's configs): each test failed on the code before its fix."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.merge import fisher

# ----------------------------------------------------------------------------- RegMean Gram matrices

M2 = [{"d": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.zeros(2)}},
      {"d": {"kernel": jnp.arange(6.0).reshape(3, 2) + 1, "bias": jnp.ones(2)}}]
X3 = jax.random.normal(jax.random.PRNGKey(0), (3, 3))  # inputs X [N = 3, d_in = 3]: the shape of X^T X


@pytest.mark.parametrize("bad,match", [
    # X itself (N == d_in): solved against as if it were X^T X, a wrong merge, silently
    (X3, r"^grams\[0\]\['d\.kernel'\]: expected a symmetric Gram matrix X\^T X \[d_in, d_in\] \(to 0\.00035 of its "
         r"largest entry, [0-9.]+\), got G\[\d, \d\] = \S+ and G\[\d, \d\] = \S+; pass X\^T X \(fisher\.gram\(X\)\), "
         r"not the inputs X$"),
    (jnp.array([[1.0, 0.5, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 1.0]]),
     r"^grams\[0\]\['d\.kernel'\]: expected a symmetric .*got G\[0, 1\] = 0\.5 and G\[1, 0\] = 0\.4; "),
    (-jnp.eye(3), r"^grams\[0\]\['d\.kernel'\]: expected a Gram matrix X\^T X, whose diagonal \(sums of squares\) "
                  r"is >= 0, got G\[0, 0\] = -1$"),
    (jnp.eye(3).at[1, 2].set(jnp.nan), r"^grams\[0\]\['d\.kernel'\]: expected a finite Gram matrix X\^T X, got nan "
                                       r"at \(1, 2\)$"),
    # X [N = 5, d_in = 3]: refused by shape (as before; kept here beside its square case)
    (jnp.ones((5, 3)), r"^grams\[0\]\['d\.kernel'\]: expected \[3, 3\] for a kernel \(3, 2\), got \(5, 3\)$"),
])
def test_regmean_refuses_a_matrix_that_is_no_gram_matrix(bad, match):
    with pytest.raises(ValueError, match=match):
        fisher.regmean(M2, [{"d.kernel": bad}, {"d.kernel": jnp.eye(3)}])
    with pytest.raises(ValueError, match=match.replace(r"grams\[0\]", r"grams\[1\]")):
        fisher.regmean(M2, [{"d.kernel": jnp.eye(3)}, {"d.kernel": bad}])


def test_regmean_takes_grams_of_float32_sums_accumulated_in_any_order():
    """X^T X summed batch by batch is symmetric only up to float32 rounding: still a Gram matrix."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4000, 3)) * 10
    g = sum(fisher.gram(x[i:i + 7]) for i in range(0, 4000, 7))
    g = g.at[0, 1].multiply(1 + 2e-6)  # float32 rounding of one order of summation against the other
    out = fisher.regmean(M2, [{"d.kernel": g}, {"d.kernel": g}])
    assert np.isfinite(np.asarray(out["d"]["kernel"])).all()


def test_regmean_names_the_model_that_lacks_a_gram_matrix():
    g = {"d.kernel": jnp.eye(3)}
    # grams[0] lacks the layer: the message blamed grams[1], which had it
    with pytest.raises(ValueError, match=r"^grams\[0\]: expected Gram matrices for the same leaves in every model, "
                                         r"got none for \['d\.kernel'\] \(grams\[1\] has 'd\.kernel'\)$"):
        fisher.regmean(M2 + [M2[0]], [{}, g, g])
    with pytest.raises(ValueError, match=r"^grams\[2\]: .* got none for \['d\.kernel'\] \(grams\[0\] has 'd\.kernel'\)$"):
        fisher.regmean(M2 + [M2[0]], [g, g, {}])


def test_regmean_solves_in_float32_for_bfloat16_grams():
    """bfloat16 Gram matrices (exactly representable in float32): alpha G + (1 - alpha) diag(G) and the
    sum over models were rounded to bfloat16 before the solve."""
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 40, 3))
    g16 = [fisher.gram(xi).astype(jnp.bfloat16) for xi in x]
    g32 = [g.astype(jnp.float32) for g in g16]
    want = fisher.regmean(M2, [{"d.kernel": g} for g in g32], alpha=0.7)
    got = fisher.regmean(M2, [{"d.kernel": g} for g in g16], alpha=0.7)
    np.testing.assert_allclose(np.asarray(got["d"]["kernel"]), np.asarray(want["d"]["kernel"]), rtol=1e-6, atol=1e-6)
