"""Review 16b of jaxinterp.merge: Bezier curves off [0, 1], fit_bezier's optimizer arguments, a
slices: base_model in no slice, Re-Basin views keys, RegMean Gram matrices. Each test failed on the
code before its fix."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.merge import curves, landscape

PA = {"k": jnp.ones((2, 3)), "b": jnp.zeros(3)}
PB = {"k": 2 * jnp.ones((2, 3)), "b": jnp.ones(3)}
PC = {"k": jnp.eye(2, 3), "b": jnp.arange(3.0)}
LOSS = lambda p, x: jnp.sum(p["k"] ** 2) + x  # noqa: E731


# ----------------------------------------------------------------------------- curve_losses on [0, 1]


@pytest.mark.parametrize("ts,got,index,n_off", [
    ([0.0, 0.5, 1.5], "1.5", 2, 1),         # phi(1.5) is past p1: a loss off the curve, silently
    ([-0.25, 0.5, 1.0], "-0.25", 0, 1),
    ([0.0, 2.0, -1.0, 1.0], "2.0", 1, 2),   # the first bad t is named, the count is of all of them
])
def test_curve_losses_refuses_ts_off_the_curve(ts, got, index, n_off):
    with pytest.raises(ValueError, match="^" + re.escape(
            f"ts: expected points in [0, 1] (the curve runs from p0 at t = 0 to p1 at t = 1), got {got} at "
            f"index ({index},) ({n_off} of {len(ts)} points outside)") + "$"):
        curves.curve_losses(LOSS, PA, PC, PB, 0.0, jnp.asarray(ts))


def test_curve_losses_ends_and_path_losses_beyond_the_segment_still_accepted():
    """t = 0 and 1 are the models; path_losses (a straight line, not a curve) keeps extrapolating."""
    ends = np.asarray(curves.curve_losses(LOSS, PA, PC, PB, 0.0, jnp.array([0.0, 1.0])))
    np.testing.assert_allclose(ends, [6.0, 24.0])
    assert np.isfinite(np.asarray(landscape.path_losses(LOSS, PA, PB, 0.0, jnp.array([-0.5, 1.5])))).all()


def test_curve_losses_nan_still_named_as_not_finite():
    with pytest.raises(ValueError, match=r"^ts: expected finite points, got nan at index \(1,\)$"):
        curves.curve_losses(LOSS, PA, PC, PB, 0.0, jnp.array([0.0, jnp.nan, 2.0]))
