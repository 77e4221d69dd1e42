"""kernels/message_passing.py: the fast gather/segment-sum agrees with the plain reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.kernels.message_passing import gather_segment_sum, gather_segment_sum_reference


def _graph(rng, b, m, n, e, *, empty_receiver=True):
    snd = rng.integers(0, m, (b, e))
    rcv = rng.integers(0, n - 1 if empty_receiver else n, (b, e))  # receiver n-1 gets no edge
    order = np.argsort(rcv, axis=1, kind="stable")
    return (jnp.asarray(np.take_along_axis(snd, order, 1), jnp.int32),
            jnp.asarray(np.take_along_axis(rcv, order, 1), jnp.int32))


CASES = [  # (B, value graphs, C, M, N, E, F, weighted, mean)
    (3, 3, 5, 7, 7, 20, 4, True, False),  # plane net: per-graph values, weights
    (3, 3, 5, 9, 4, 12, 3, False, False),  # nexus up: plain sum to fewer receivers
    (3, 1, 5, 4, 9, 12, 2, True, True),  # nexus down: shared values, weighted mean
    (2, 2, 1, 5, 5, 0, 3, True, True),  # no edges at all: zeros
    (1, 1, 2, 1, 3, 6, 1, False, True),  # one sender feeding everything
]


@pytest.mark.parametrize("b, vb, c, m, n, e, f, weighted, mean", CASES)
def test_fast_matches_reference_values_and_gradients(b, vb, c, m, n, e, f, weighted, mean):
    rng = np.random.default_rng(b * 100 + e)
    snd, rcv = _graph(rng, b, m, n, e)
    values = jnp.asarray(rng.normal(size=(vb, c, m, f)), jnp.float32)
    weights = jnp.asarray(rng.uniform(size=(b, c, e)), jnp.float32) if weighted else None
    cot = jnp.asarray(rng.normal(size=(b, c, n, f)), jnp.float32)

    def loss(fn, v, w):
        return jnp.sum(fn(v, w, snd, rcv, n, mean=mean) * cot)

    argnums = (0, 1) if weighted else (0,)

    @jax.jit  # one compilation for both forms and their gradients
    def both(v, w):
        ref = gather_segment_sum_reference(v, w, snd, rcv, n, mean=mean)
        fast = gather_segment_sum(v, w, snd, rcv, n, mean=mean)
        g_ref = jax.grad(lambda v, w: loss(gather_segment_sum_reference, v, w), argnums)(v, w)
        g_fast = jax.grad(lambda v, w: loss(gather_segment_sum, v, w), argnums)(v, w)
        return ref, fast, g_ref, g_fast

    ref, fast, g_ref, g_fast = both(values, weights)
    assert fast.shape == (b, c, n, f)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    if e:  # the receiver without edges gets 0 (mean over nothing is 0, not NaN)
        np.testing.assert_array_equal(np.asarray(fast)[:, :, n - 1], 0.0)


@pytest.mark.parametrize("mean", [False, True])
def test_initial_is_added_values_and_gradients(mean):
    """`initial` (the model scatters messages straight into the self projection) equals adding it."""
    rng = np.random.default_rng(7)
    snd, rcv = _graph(rng, 3, 6, 5, 14)
    v = jnp.asarray(rng.normal(size=(3, 2, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.uniform(size=(3, 2, 14)), jnp.float32)
    init = jnp.asarray(rng.normal(size=(3, 2, 5, 4)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(3, 2, 5, 4)), jnp.float32)

    @jax.jit
    def both(v, w, init):
        def loss(fn, v, w, init):
            return jnp.sum(fn(v, w, snd, rcv, 5, mean=mean, initial=init) * cot)
        outs = [fn(v, w, snd, rcv, 5, mean=mean, initial=init) for fn in (gather_segment_sum, gather_segment_sum_reference)]
        plain = gather_segment_sum_reference(v, w, snd, rcv, 5, mean=mean) + init
        grads = [jax.grad(lambda *a: loss(fn, *a), (0, 1, 2))(v, w, init)
                 for fn in (gather_segment_sum, gather_segment_sum_reference)]
        return outs, plain, grads

    (fast, ref), plain, (g_fast, g_ref) = both(v, w, init)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, plain, rtol=1e-5, atol=1e-6)
    for a, r in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_mean_divides_by_in_degree():
    snd = jnp.asarray([[0, 1, 2]], jnp.int32)
    rcv = jnp.asarray([[0, 0, 1]], jnp.int32)
    v = jnp.asarray([1.0, 3.0, 5.0]).reshape(1, 1, 3, 1)
    out = gather_segment_sum(v, None, snd, rcv, 3, mean=True)
    np.testing.assert_allclose(out[0, 0, :, 0], [2.0, 5.0, 0.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(values=jnp.zeros((3, 5, 4))), "values: expected shape \\[B, C, M, F\\]"),
    (dict(receivers=jnp.zeros((2, 3), jnp.int32)), "senders/receivers: expected equal shapes"),
    (dict(values=jnp.zeros((2, 1, 4, 2))), "values: leading axis must be 1 or B = 3"),
    (dict(weights=jnp.zeros((3, 1, 7))), "weights: expected shape \\[3, 1, 6\\]"),
    (dict(initial=jnp.zeros((3, 1, 3, 2))), "initial: expected shape \\[3, 1, 4, 2\\], got \\[3, 1, 3, 2\\]"),
])
def test_bad_shapes_are_errors(kwargs, message):
    args = dict(values=jnp.zeros((3, 1, 4, 2)), weights=None, senders=jnp.zeros((3, 6), jnp.int32),
                receivers=jnp.zeros((3, 6), jnp.int32), initial=None)
    args.update(kwargs)
    for fn in (gather_segment_sum, gather_segment_sum_reference):
        with pytest.raises(ValueError, match=message):
            fn(args["values"], args["weights"], args["senders"], args["receivers"], 4, initial=args["initial"])


@pytest.mark.parametrize("index_dtype", [jnp.uint8, jnp.int16])
@pytest.mark.parametrize("mean, with_initial", [(False, False), (True, False), (False, True)])
def test_small_index_dtypes_do_not_overflow_the_flat_rows(index_dtype, mean, with_initial):
    """Node ids that fit their dtype, in a batch whose flat (graph, class, node) rows do not: the flat
    row index used to be formed in the ids' dtype and wrapped (uint8: 3 x 5 x 20 = 300 rows; int16:
    3 x 5 x 2200 = 33,000), so messages landed in another graph's or class's rows."""
    n = 20 if index_dtype == jnp.uint8 else 2200
    rng = np.random.default_rng(11)
    snd, rcv = _graph(rng, 3, n, n, 40)
    snd, rcv = snd.astype(index_dtype), rcv.astype(index_dtype)
    v = jnp.asarray(rng.normal(size=(3, 5, n, 2)), jnp.float32)
    w = jnp.asarray(rng.uniform(size=(3, 5, 40)), jnp.float32)
    init = jnp.asarray(rng.normal(size=(3, 5, n, 2)), jnp.float32) if with_initial else None
    fast = gather_segment_sum(v, w, snd, rcv, n, mean=mean, initial=init)
    ref = gather_segment_sum_reference(v, w, snd.astype(jnp.int32), rcv.astype(jnp.int32), n, mean=mean, initial=init)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)
