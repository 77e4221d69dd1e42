"""Chunked vocabulary kernel against its plain-JAX reference: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.kernels import chunked_vocab as cv


def _terms(seed, N=5, Ks=(6, 3), V=37, scale=1.0):
    rng = np.random.default_rng(seed)
    xs = tuple(jnp.asarray(rng.normal(size=(N, K)), jnp.float32) for K in Ks)
    Ws = tuple(jnp.asarray(rng.normal(size=(K, V)) * scale, jnp.float32) for K in Ks)
    b = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(N, V)) * 2, jnp.float32)
    return xs, Ws, b, t


# chunk widths: dividing V, not dividing it (the last chunk overlaps), one chunk, wider than V
CHUNKS = [1, 10, 64]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_logsumexp_and_log_softmax_at(chunk):
    xs, Ws, b, _ = _terms(0)
    np.testing.assert_allclose(cv.logsumexp(xs, Ws, b, chunk=chunk), cv.logsumexp_reference(xs, Ws, b),
                               rtol=2e-6, atol=2e-6)
    ids = jnp.array([[0, 36, 5]] * 5)
    full = jax.nn.log_softmax(cv._logits(xs, Ws, b), axis=-1)
    np.testing.assert_allclose(cv.log_softmax_at(xs, Ws, b, ids, chunk=chunk),
                               jnp.take_along_axis(full, ids, axis=1), rtol=2e-6, atol=2e-6)


def test_logsumexp_survives_huge_logits():
    xs, Ws, b, _ = _terms(1, scale=300.0)  # exp would overflow without the running max
    got = cv.logsumexp(xs, Ws, b, chunk=8)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, cv.logsumexp_reference(xs, Ws, b), rtol=1e-5)


@pytest.mark.parametrize("chunk", [10])  # 37 = 3 full chunks + an overlapping last one
def test_kl_values_and_gradients(chunk):
    xs, Ws, b, t = _terms(2)
    w = jnp.linspace(0.5, 1.5, 5)

    def loss(fn, xs, Ws, b, t):
        return (w * fn(xs, Ws, b, t)).sum()

    fast = lambda *a: cv.kl_div(*a, chunk=chunk)  # noqa: E731
    np.testing.assert_allclose(cv.kl_div(xs, Ws, b, t, chunk=chunk), cv.kl_div_reference(xs, Ws, b, t),
                               rtol=2e-6, atol=2e-6)
    g_fast = jax.grad(lambda *a: loss(fast, *a), argnums=(0, 1, 2, 3))(xs, Ws, b, t)
    g_ref = jax.grad(lambda *a: loss(cv.kl_div_reference, *a), argnums=(0, 1, 2, 3))(xs, Ws, b, t)
    for a, r in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


def test_kl_is_zero_at_the_target_and_handles_zero_probabilities():
    xs, Ws, b, _ = _terms(3)
    t = cv._logits(xs, Ws, b)
    np.testing.assert_allclose(cv.kl_div(xs, Ws, b, t, chunk=8), 0.0, atol=1e-5)
    t_hard = t.at[:, :10].set(-jnp.inf)  # target with zero-probability words
    got = cv.kl_div(xs, Ws, b, t_hard, chunk=8)
    np.testing.assert_allclose(got, cv.kl_div_reference(xs, Ws, b, t_hard), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda W: cv.kl_div(xs, (W, Ws[1]), b, t_hard, chunk=8).sum())(Ws[0])
    assert np.isfinite(g).all()


def test_bfloat16_compute_stays_close():
    xs, Ws, b, t = _terms(5)
    got = cv.kl_div(xs, Ws, b, t, chunk=8, compute_dtype=jnp.bfloat16)
    assert got.dtype == jnp.float32
    ref = cv.kl_div_reference(xs, Ws, b, t)
    err = float(np.abs(np.asarray(got) - np.asarray(ref)).max())
    assert 1e-5 < err < 0.02, err  # measured 6.5e-3 (float32: 9.5e-7, so bfloat16 did run)


@pytest.mark.parametrize("chunk,k", [(8, 1), (10, 12), (64, 37)])
def test_top_k(chunk, k):
    xs, Ws, b, _ = _terms(6)
    got, ref = cv.top_k(xs, Ws, b, k, chunk=chunk), cv.top_k_reference(xs, Ws, b, k)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.values, ref.values, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("call,match", [
    # each message whole, expected and got (the matches were a word or two: "term 1", "k: expected")
    (lambda xs, Ws, b, t: cv.kl_div(xs, Ws[:1], b, t), r"xs and Ws: expected the same number \(>= 1\) of terms, got 2 and 1"),
    (lambda xs, Ws, b, t: cv.kl_div(xs, (Ws[0], Ws[1][:2]), b, t),
     r"term 1: expected x \[N=5, K\] and W \[K, V=37\], got x \[5, 3\] and W \[2, 37\]"),
    (lambda xs, Ws, b, t: cv.kl_div(xs, Ws, b, t[:, :5]), r"target_logits: expected shape \[5, 37\], got \[5, 5\]"),
    (lambda xs, Ws, b, t: cv.top_k(xs, Ws, b, 0), r"k: expected an integer with 1 <= k <= V = 37, got 0"),
    (lambda xs, Ws, b, t: cv.logsumexp(xs, Ws, b[None]), r"b: expected shape \[V\], got \[1, 37\]"),
    (lambda xs, Ws, b, t: cv.logsumexp(xs, Ws, b[0]), r"b: expected shape \[V\], got \[\]"),  # was IndexError
    (lambda xs, Ws, b, t: cv.logsumexp((xs[0][0, 0], xs[1]), Ws, b), r"term 0: .*got x \[\]"),  # was IndexError
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(*_terms(7))


# A chunk of 0 used to divide by zero; a negative one walked no chunk and returned -inf silently.
BAD_CHUNKS = [0, -3, 2.5, True]
CHUNK_CALLS = {
    "logsumexp": lambda xs, Ws, b, t, c: cv.logsumexp(xs, Ws, b, chunk=c),
    "log_softmax_at": lambda xs, Ws, b, t, c: cv.log_softmax_at(xs, Ws, b, jnp.zeros((5, 1), jnp.int32), chunk=c),
    "kl_div": lambda xs, Ws, b, t, c: cv.kl_div(xs, Ws, b, t, chunk=c),
    "kl_div grad": lambda xs, Ws, b, t, c: jax.grad(lambda W: cv.kl_div(xs, (W, Ws[1]), b, t, chunk=c).sum())(Ws[0]),
    "kl_div_stats": lambda xs, Ws, b, t, c: cv.kl_div_stats(xs, Ws, b, t, chunk=c),
    "top_k": lambda xs, Ws, b, t, c: cv.top_k(xs, Ws, b, 3, chunk=c),  # max(chunk, k) must not hide it
    "chunk_layout": lambda xs, Ws, b, t, c: cv.chunk_layout(37, c),
}


@pytest.mark.parametrize("chunk", BAD_CHUNKS)
@pytest.mark.parametrize("name", list(CHUNK_CALLS))
def test_bad_chunk_width(name, chunk):
    with pytest.raises(ValueError, match=f"chunk: expected a positive integer .*got {chunk!r}"):
        CHUNK_CALLS[name](*_terms(8), chunk)


def test_chunk_width_accepts_numpy_integers():
    xs, Ws, b, _ = _terms(9)
    np.testing.assert_allclose(cv.logsumexp(xs, Ws, b, chunk=np.int64(10)), cv.logsumexp_reference(xs, Ws, b),
                               rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("chunk", [2, 3, 5, 8])
def test_top_k_with_fewer_finite_logits_than_k(chunk):
    """Words masked to -inf (a banned vocabulary): top-k must still name k distinct words, as the
    reference does. The running top-k used to start from k fake (-inf, id 0) entries that won ties
    with real -inf logits: ids [4, 0, 0] instead of [4, 0, 1]."""
    xs, Ws = (jnp.zeros((2, 2)),), (jnp.zeros((2, 5)),)
    b = jnp.array([0.0, -jnp.inf, -jnp.inf, -jnp.inf, 1.0])
    got, ref = cv.top_k(xs, Ws, b, 3, chunk=chunk), cv.top_k_reference(xs, Ws, b, 3)
    np.testing.assert_array_equal(got.indices, ref.indices)  # [[4, 0, 1]] * 2
    np.testing.assert_array_equal(got.values, ref.values)
    b_all = jnp.full((5,), -jnp.inf)
    got = cv.top_k(xs, Ws, b_all, 5, chunk=chunk)
    np.testing.assert_array_equal(got.indices, cv.top_k_reference(xs, Ws, b_all, 5).indices)  # each id once


# An empty vocabulary used to raise ZeroDivisionError from the chunk layout.
EMPTY_VOCAB_CALLS = {
    "logsumexp": lambda xs, Ws, b: cv.logsumexp(xs, Ws, b, chunk=4),
    "log_softmax_at": lambda xs, Ws, b: cv.log_softmax_at(xs, Ws, b, jnp.zeros((2, 1), jnp.int32), chunk=4),
    "kl_div": lambda xs, Ws, b: cv.kl_div(xs, Ws, b, jnp.zeros((2, 0)), chunk=4),
    "kl_div_stats": lambda xs, Ws, b: cv.kl_div_stats(xs, Ws, b, jnp.zeros((2, 0)), chunk=4),
    "chunk_layout": lambda xs, Ws, b: cv.chunk_layout(0, 4),
}


@pytest.mark.parametrize("name", list(EMPTY_VOCAB_CALLS))
def test_empty_vocabulary_is_refused(name):
    with pytest.raises(ValueError, match="V: expected at least one vocabulary column, got V = 0"):
        EMPTY_VOCAB_CALLS[name]((jnp.ones((2, 3)),), (jnp.ones((3, 0)),), jnp.zeros((0,)))


@pytest.mark.parametrize("ids, match", [
    (jnp.array([[7], [0]]), r"ids: expected vocabulary ids in \[0, 6\), got ids from 0 to 7"),  # was clamped to 5
    (jnp.array([[-1], [0]]), r"ids: expected vocabulary ids in \[0, 6\), got ids from -1 to 0"),  # was wrapped to 5
    (jnp.array([0, 1]), r"ids: expected shape \[N=2, J\], got \[2\]"),  # was an einsum subscript error
    (jnp.zeros((3, 1), jnp.int32), r"ids: expected shape \[N=2, J\], got \[3, 1\]"),
    (jnp.zeros((2, 1)), "ids: expected integer vocabulary ids, got dtype float32"),
])
def test_log_softmax_at_bad_ids(ids, match):
    xs, Ws, b = (jnp.ones((2, 3)),), (jnp.ones((3, 6)),), jnp.arange(6.0)
    with pytest.raises(ValueError, match=match):
        cv.log_softmax_at(xs, Ws, b, ids, chunk=4)


def test_log_softmax_at_checks_only_shapes_under_jit():
    xs, Ws, b, _ = _terms(10)
    ids = jnp.array([[0, 36]] * 5)
    got = jax.jit(lambda ids: cv.log_softmax_at(xs, Ws, b, ids, chunk=10))(ids)
    full = jax.nn.log_softmax(cv._logits(xs, Ws, b), axis=-1)
    np.testing.assert_allclose(got, jnp.take_along_axis(full, ids, axis=1), rtol=2e-6, atol=2e-6)
