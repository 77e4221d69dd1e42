"""Chunked vocabulary projection: log-softmax normaliser, KL to a target distribution and top-k of

    z = sum_i x_i @ W_i + b        (x_i [N, K_i], W_i [K_i, V], b [V])

over a large vocabulary, one chunk of C columns at a time, so no [N, V] array of z is ever held.

An Attention Lens of one GPT-2-small layer has 12 heads x 768 x 50257 weights; its logits for a batch
of 4 x 128 tokens would be [4, 128, 12, 50257] (1.2 GB). Summing the heads is one matmul with the
heads stacked along K (x [N, H*D] @ W [H*D, V]), and a chunk of columns needs only [N, C] at a time.
`kl_div` has a custom VJP whose backward pass recomputes each chunk's logits instead of saving them,
so the backward pass does not hold full logits either.

Chunks all have the static width C (scan-friendly): the last one starts at V - C and overlaps the
one before it; columns already counted are masked (`fresh`). Sums therefore see each column once.

`*_reference` functions are the plain forms (full logits), for tests.

Axis names: N rows (examples x positions), K_i width of term i, V vocabulary, C chunk width, k top-k.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jaxinterp.checks import check_x64, is_integer

DEFAULT_CHUNK = 8192
_NEG = -jnp.inf


class TopK(NamedTuple):
    values: Array  # [N, k] logits, descending
    indices: Array  # [N, k] int32 vocabulary ids


def check_chunk(chunk) -> int:
    """`chunk` as an int; ValueError unless it is a positive integer (0 would divide by zero, and a
    negative width would walk no chunk at all and return -inf)."""
    if not is_integer(chunk) or chunk < 1:
        raise ValueError(f"chunk: expected a positive integer (columns per chunk), got {chunk!r}")
    return int(chunk)


def _check_vocab(V: int) -> None:
    if V < 1:  # else the chunk layout divides by zero
        raise ValueError(f"V: expected at least one vocabulary column, got V = {V}")


def _layout(V: int, chunk: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts [n], fresh [n, C] bool, C): chunk i covers columns starts[i] + [0, C)."""
    _check_vocab(V)
    C = min(check_chunk(chunk), V)
    n = -(-V // C)
    starts = np.minimum(np.arange(n) * C, V - C).astype(np.int32)
    fresh = (starts[:, None] + np.arange(C)[None, :]) >= (np.arange(n) * C)[:, None]
    return starts, fresh, C


def chunk_layout(V: int, chunk: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The chunks every function here walks: (starts [n], fresh [n, C] bool, C); chunk i covers
    columns starts[i] + [0, C), and `fresh` marks those no earlier chunk covered (for callers that
    walk the vocabulary themselves, e.g. `jaxinterp.lens.fused_adam`)."""
    return _layout(V, chunk)


def _check(xs: Sequence[Array], Ws: Sequence[Array], b: Array) -> int:
    if len(xs) != len(Ws) or not xs:
        raise ValueError(f"xs and Ws: expected the same number (>= 1) of terms, got {len(xs)} and {len(Ws)}")
    if b.ndim != 1:
        raise ValueError(f"b: expected shape [V], got {list(b.shape)}")
    V = b.shape[0]
    _check_vocab(V)
    N = xs[0].shape[0] if xs[0].ndim else None  # a 0-d x is refused below, not an IndexError here
    for i, (x, W) in enumerate(zip(xs, Ws)):
        if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0] or W.shape[1] != V or x.shape[0] != N:
            n = "N" if N is None else f"N={N}"
            raise ValueError(f"term {i}: expected x [{n}, K] and W [K, V={V}], got x {list(x.shape)} "
                             f"and W {list(W.shape)}")
    return V


def _acc(*arrays) -> jnp.dtype:
    """Accumulation dtype: float32, or float64 when an input is float64 (for exact tests)."""
    return jnp.promote_types(jnp.float32, jnp.result_type(*jax.tree.leaves(arrays)))


def _chunk_logits(xs, Ws, b, start, C, compute_dtype):
    """z[:, start:start+C] in the accumulation dtype: [N, C]."""
    acc = _acc(xs, Ws, b)
    z = lax.dynamic_slice_in_dim(b, start, C).astype(acc)
    for x, W in zip(xs, Ws):
        Wc = lax.dynamic_slice_in_dim(W, start, C, axis=1)
        dt = compute_dtype or jnp.result_type(x.dtype, W.dtype)
        z = z + jnp.matmul(x.astype(dt), Wc.astype(dt), preferred_element_type=acc)
    return z


def _check_compute_dtype(compute_dtype) -> None:
    """At trace time: a float64 compute dtype under 32-bit JAX (x.astype(float64) is float32 there)."""
    if compute_dtype is not None:
        check_x64(compute_dtype, "compute_dtype")


def _logits(xs, Ws, b):
    acc = _acc(xs, Ws, b)
    z = b.astype(acc)
    for x, W in zip(xs, Ws):
        z = z + jnp.matmul(x, W, preferred_element_type=acc)
    return z


# ----------------------------------------------------------------------------------------------
# log-softmax normaliser

def logsumexp(xs: Sequence[Array], Ws: Sequence[Array], b: Array, *, chunk: int = DEFAULT_CHUNK,
              compute_dtype=None) -> Array:
    """log sum_v exp(z[n, v]) [N], online over chunks; log_softmax(z) = z - logsumexp.

    Sums are float32 (float64 when an input is float64), whatever the input dtype."""
    xs, Ws = tuple(xs), tuple(Ws)
    V = _check(xs, Ws, b)
    _check_compute_dtype(compute_dtype)
    starts, fresh, C = _layout(V, chunk)
    N = xs[0].shape[0]

    def body(carry, inp):
        m, s = carry
        start, ok = inp
        z = jnp.where(ok, _chunk_logits(xs, Ws, b, start, C, compute_dtype), _NEG)
        m_new = jnp.maximum(m, z.max(-1))
        s = s * jnp.exp(m - m_new) + jnp.exp(z - m_new[:, None]).sum(-1)
        return (m_new, s), None

    # The running max starts at the most negative finite float, not -inf, so exp(m - m_new) is
    # never exp(-inf + inf).
    acc = _acc(xs, Ws, b)
    init = (jnp.full((N,), jnp.finfo(acc).min), jnp.zeros((N,), acc))
    (m, s), _ = lax.scan(body, init, (jnp.asarray(starts), jnp.asarray(fresh)))
    return m + jnp.log(s)


def log_softmax_at(xs: Sequence[Array], Ws: Sequence[Array], b: Array, ids: Array, *,
                   chunk: int = DEFAULT_CHUNK, compute_dtype=None) -> Array:
    """log_softmax(z)[n, ids[n, j]] [N, J] without full logits (only the columns `ids` are formed)."""
    xs, Ws = tuple(xs), tuple(Ws)
    V = _check(xs, Ws, b)
    N = xs[0].shape[0]
    if ids.ndim != 2 or ids.shape[0] != N:
        raise ValueError(f"ids: expected shape [N={N}, J], got {list(ids.shape)}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids: expected integer vocabulary ids, got dtype {ids.dtype}")
    # values only when concrete: out of range, b[ids] would clamp (or wrap) them silently
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        host = np.asarray(ids)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"ids: expected vocabulary ids in [0, {V}), got ids from {lo} to {hi}")
    lse = logsumexp(xs, Ws, b, chunk=chunk, compute_dtype=compute_dtype)
    acc = _acc(xs, Ws, b)
    z = b[ids].astype(acc)
    for x, W in zip(xs, Ws):
        # the matmul inputs in the dtype the normaliser's were (_chunk_logits): float32 logits less a
        # bfloat16-input lse gave log-probabilities above 0
        dt = compute_dtype or jnp.result_type(x.dtype, W.dtype)
        z = z + jnp.einsum("nk,knj->nj", x.astype(dt), W[:, ids].astype(dt), preferred_element_type=acc)
    return z - lse[:, None]


def logsumexp_reference(xs, Ws, b) -> Array:
    return jax.nn.logsumexp(_logits(xs, Ws, b), axis=-1)


# ----------------------------------------------------------------------------------------------
# KL(target || softmax(z)) per row, with a backward pass that recomputes chunks

def _target_lse(t: Array) -> Array:
    return jax.nn.logsumexp(t.astype(jnp.promote_types(jnp.float32, t.dtype)), axis=-1)


def _kl_forward(xs, Ws, b, t, chunk, compute_dtype):
    V = b.shape[0]
    starts, fresh, C = _layout(V, chunk)
    N = xs[0].shape[0]
    lse_t = _target_lse(t)
    acc = _acc(xs, Ws, b, t)

    def body(carry, inp):
        m, s, cross = carry
        start, ok = inp
        z = _chunk_logits(xs, Ws, b, start, C, compute_dtype)
        tc = lax.dynamic_slice_in_dim(t, start, C, axis=1).astype(acc)
        p = jnp.exp(tc - lse_t[:, None])
        cross = cross + jnp.where(ok & (p > 0), p * (tc - z), 0.0).sum(-1)
        z = jnp.where(ok, z, _NEG)
        m_new = jnp.maximum(m, z.max(-1))
        s = s * jnp.exp(m - m_new) + jnp.exp(z - m_new[:, None]).sum(-1)
        return (m_new, s, cross), None

    init = (jnp.full((N,), jnp.finfo(acc).min), jnp.zeros((N,), acc), jnp.zeros((N,), acc))
    (m, s, cross), _ = lax.scan(body, init, (jnp.asarray(starts), jnp.asarray(fresh)))
    lse_z = m + jnp.log(s)
    # KL = sum p (log p - log q) = sum p (t - z) + lse_z - lse_t (sum p = 1). Summing p (t - z)
    # rather than p t and p z apart avoids cancelling two large sums when the lens is near the target.
    kl = cross + (lse_z - lse_t)
    return kl, (lse_z, lse_t, kl)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _kl(xs, Ws, b, t, chunk, compute_dtype, wrt_inputs):
    return _kl_forward(xs, Ws, b, t, chunk, compute_dtype)[0]


def _kl_fwd(xs, Ws, b, t, chunk, compute_dtype, wrt_inputs):
    kl, (lse_z, lse_t, kl_) = _kl_forward(xs, Ws, b, t, chunk, compute_dtype)
    # Residuals are the inputs and three [N] vectors: no [N, V] logits are saved.
    return kl, (xs, Ws, b, t, lse_z, lse_t, kl_)


def _kl_bwd(chunk, compute_dtype, wrt_inputs, res, g):
    xs, Ws, b, t, lse_z, lse_t, kl = res
    V = b.shape[0]
    starts, fresh, C = _layout(V, chunk)
    acc = _acc(xs, Ws, b, t)
    g = g.astype(acc)

    def add_at(acc, upd, start, axis):
        cur = lax.dynamic_slice_in_dim(acc, start, C, axis=axis)
        return lax.dynamic_update_slice_in_dim(acc, cur + upd.astype(acc.dtype), start, axis=axis)

    def body(carry, inp):
        dxs, dWs, db, dt = carry
        start, ok = inp
        z = _chunk_logits(xs, Ws, b, start, C, compute_dtype)
        logq = z - lse_z[:, None]
        logp = lax.dynamic_slice_in_dim(t, start, C, axis=1).astype(acc) - lse_t[:, None]
        p = jnp.exp(logp)
        # d KL / d z = q - p;  d KL / d t = p (log p - log q - KL)
        dz = jnp.where(ok, g[:, None] * (jnp.exp(logq) - p), 0.0)
        dtc = jnp.where(ok, g[:, None] * jnp.where(p > 0, p * (logp - logq - kl[:, None]), 0.0), 0.0)
        new_dxs, new_dWs = [], []
        for x, W, dx, dW in zip(xs, Ws, dxs, dWs):
            Wc = lax.dynamic_slice_in_dim(W, start, C, axis=1)
            dt_ = compute_dtype or jnp.result_type(x.dtype, W.dtype)
            if wrt_inputs:  # skipped when the caller's xs and t are constants: one read of W fewer
                dx = dx + jnp.matmul(dz.astype(dt_), Wc.T.astype(dt_), preferred_element_type=acc)
            new_dxs.append(dx)
            new_dWs.append(add_at(dW, jnp.matmul(x.T.astype(dt_), dz.astype(dt_),
                                                 preferred_element_type=acc), start, 1))
        db = add_at(db, dz.sum(0), start, 0)
        if wrt_inputs:
            dt = add_at(dt, dtc, start, 1)
        return (tuple(new_dxs), tuple(new_dWs), db, dt), None

    init = (tuple(jnp.zeros(x.shape, acc) for x in xs), tuple(jnp.zeros_like(W) for W in Ws),
            jnp.zeros_like(b), jnp.zeros(t.shape, t.dtype))
    (dxs, dWs, db, dt), _ = lax.scan(body, init, (jnp.asarray(starts), jnp.asarray(fresh)))
    dxs = tuple(dx.astype(x.dtype) for dx, x in zip(dxs, xs))
    return dxs, dWs, db, dt


_kl.defvjp(_kl_fwd, _kl_bwd)


def kl_div(xs: Sequence[Array], Ws: Sequence[Array], b: Array, target_logits: Array, *,
           chunk: int = DEFAULT_CHUNK, compute_dtype=None, wrt_inputs: bool = True) -> Array:
    """KL(softmax(target_logits) || softmax(z)) per row [N] (float32), differentiable in every input.

    Args:
      xs, Ws, b: the terms of z = sum_i xs[i] @ Ws[i] + b ([N, K_i], [K_i, V], [V]).
      target_logits: [N, V] logits of the target distribution (any offset per row).
      chunk: columns per chunk (memory O(N x chunk) besides the inputs and gradients).
      compute_dtype: dtype of the matmul inputs (e.g. jnp.bfloat16); sums are float32 whatever it is.
      wrt_inputs: False when xs and target_logits are constants (a lens's activations): their
        gradients are then returned as zeros without being computed.
    """
    xs, Ws = tuple(xs), tuple(Ws)
    V = _check(xs, Ws, b)
    _check_compute_dtype(compute_dtype)
    check_chunk(chunk)
    if target_logits.shape != (xs[0].shape[0], V):
        raise ValueError(f"target_logits: expected shape {[xs[0].shape[0], V]}, got {list(target_logits.shape)}")
    return _kl(xs, Ws, b, target_logits, chunk, compute_dtype, wrt_inputs)


def kl_div_stats(xs: Sequence[Array], Ws: Sequence[Array], b: Array, target_logits: Array, *,
                 chunk: int = DEFAULT_CHUNK, compute_dtype=None) -> tuple[Array, Array, Array]:
    """(KL per row, logsumexp of z, logsumexp of the target), each [N], in one pass over the chunks
    and without gradients: what a caller forming the gradient itself (d KL / d z = q - p, with
    q = exp(z - lse_z) and p = exp(t - lse_t)) needs."""
    xs, Ws = tuple(xs), tuple(Ws)
    V = _check(xs, Ws, b)
    _check_compute_dtype(compute_dtype)
    check_chunk(chunk)
    if target_logits.shape != (xs[0].shape[0], V):
        raise ValueError(f"target_logits: expected shape {[xs[0].shape[0], V]}, got {list(target_logits.shape)}")
    kl, (lse_z, lse_t, _) = _kl_forward(*lax.stop_gradient((xs, Ws, b, target_logits)), chunk, compute_dtype)
    return kl, lse_z, lse_t


def kl_div_reference(xs, Ws, b, target_logits) -> Array:
    logq = jax.nn.log_softmax(_logits(xs, Ws, b), axis=-1)
    logp = jax.nn.log_softmax(target_logits.astype(_acc(target_logits)), axis=-1)
    p = jnp.exp(logp)
    return jnp.where(p > 0, p * (logp - logq), 0.0).sum(-1)


# ----------------------------------------------------------------------------------------------
# top-k

def top_k(xs: Sequence[Array], Ws: Sequence[Array], b: Array, k: int, *, chunk: int = DEFAULT_CHUNK,
          compute_dtype=None) -> TopK:
    """The k largest logits of each row and their vocabulary ids, merged chunk by chunk."""
    xs, Ws = tuple(xs), tuple(Ws)
    V = _check(xs, Ws, b)
    _check_compute_dtype(compute_dtype)
    check_chunk(chunk)  # before max(chunk, k) would hide a width of 0
    # an integer: 2.0 failed inside lax.top_k with a TypeError (or, as the chunk width, blamed `chunk`)
    if not is_integer(k) or not 1 <= k <= V:
        raise ValueError(f"k: expected an integer with 1 <= k <= V = {V}, got {k!r}")
    k = int(k)
    starts, fresh, C = _layout(V, max(chunk, k))

    def chunk_top(start, ok):
        z = jnp.where(ok, _chunk_logits(xs, Ws, b, start, C, compute_dtype), _NEG)
        cv, ci = lax.top_k(z, k)
        return cv, ci.astype(jnp.int32) + start

    def body(carry, inp):
        vals, idx = carry
        cv, ci = chunk_top(*inp)
        # the running top-k first: on ties (-inf logits) the lower ids win, as in lax.top_k
        allv = jnp.concatenate([vals, cv], axis=-1)
        alli = jnp.concatenate([idx, ci], axis=-1)
        v, j = lax.top_k(allv, k)
        return (v, jnp.take_along_axis(alli, j, axis=-1)), None

    # Started from the first chunk (k <= C real words), not from k placeholder (-inf, id 0) entries:
    # those won ties with real -inf logits and put id 0 in the result more than once.
    init = chunk_top(starts[0], fresh[0])
    (vals, idx), _ = lax.scan(body, init, (jnp.asarray(starts[1:]), jnp.asarray(fresh[1:])))
    return TopK(vals, idx)


def top_k_reference(xs, Ws, b, k: int) -> TopK:
    v, i = lax.top_k(_logits(xs, Ws, b), k)
    return TopK(v, i.astype(jnp.int32))
