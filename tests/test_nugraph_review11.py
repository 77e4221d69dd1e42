"""NuGraph2 model side, review 11: each test failed on the code before its fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.nugraph import losses


@pytest.mark.parametrize("jit", [False, True])
def test_bce_gradient_is_torchs_where_the_sigmoid_saturates(jit):
    # float32 sigmoid(20) is exactly 1.0: the clamped logs' derivative was 0 * inf = NaN, on a
    # masked padding hit too; torch's BCELoss backward is (p - t) / max(p (1 - p), 1e-12), so the
    # gradient through the saturated sigmoid is 0 and the others are unchanged
    target = jnp.array([1.0, 0.0, 0.0, 1.0])
    mask = jnp.array([True, True, True, False])

    def f(logit):
        return losses.binary_cross_entropy(jax.nn.sigmoid(logit), target, mask)

    grad = jax.jit(jax.grad(f)) if jit else jax.grad(f)
    logit = jnp.array([20.0, -0.2, 20.0, 20.0], jnp.float32)
    assert float(jax.nn.sigmoid(logit)[0]) == 1.0
    g = np.asarray(grad(logit))
    p = float(jax.nn.sigmoid(-0.2))
    np.testing.assert_allclose(g, [0.0, p / 3, 0.0, 0.0], rtol=1e-6, atol=0)
    # directly on probabilities: torch's (p - t) / max(p (1 - p), 1e-12), divided by the 3 real hits
    gp = np.asarray(jax.grad(lambda q: losses.binary_cross_entropy(q, target, mask))(jnp.array([1.0, 0.25, 1.0, 0.0])))
    np.testing.assert_allclose(gp, [0.0, (0.25 / (0.25 * 0.75)) / 3, 1e12 / 3, 0.0], rtol=1e-6)
