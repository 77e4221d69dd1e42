"""Sparsifiers of task vectors, with mergekit's exact rules (`mergekit/sparsify.py`).

Every function takes one task vector `tau` (any shape) and returns it with entries zeroed, and
optionally rescaled so that its L1 norm is unchanged (DARE's rescale, in mergekit's L1 form).

* magnitude: keep the `k = max(1, int(density * n))` largest |tau| (TIES).
* magnitude_outliers: drop the `int(gamma * n)` largest, then the smallest, to keep `int(density * n)`
  (Model Breadcrumbs). One deliberate difference: where `int(gamma * n) == 0` (gamma 0, or a tensor
  under 1/gamma entries) mergekit's `mask[indices[n_bot:-n_top]]` slices `[n_bot:-0]`, an empty
  range, and keeps nothing; here the `int(density * n)` entries are kept, as the paper means.
* bernoulli: keep each entry with probability `density` (DARE).
* della_magprune: keep entry with probability `density - eps + 2 eps * rank_norm`, the rank being
  taken along axis 1 (rows of a matrix; a vector is one row) (DELLA).

Selecting the top k without a sort: XLA's CPU sort of a 38M-entry embedding takes ~13 s, so the
k-th largest magnitude is found by bisection on the float bits (|x| as int32 is monotonic in |x|),
32 fused counting passes (float64: int64 bits, 64 passes); ties at the threshold are broken by flat
index, so exactly k survive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_RESCALE_EPS = 1e-7  # mergekit: below this either norm, the masked tensor is returned unscaled


def rescale_l1(tau: jax.Array, mask: jax.Array, rescale: bool) -> jax.Array:
    """`tau * mask`, times `||tau||_1 / ||tau * mask||_1` when rescaling (unless a norm < 1e-7)."""
    masked = tau * mask
    if not rescale:
        return masked
    before = jnp.sum(jnp.abs(tau))
    after = jnp.sum(jnp.abs(masked))
    ok = (before >= _RESCALE_EPS) & (after >= _RESCALE_EPS)
    return jnp.where(ok, masked * (before / jnp.where(ok, after, 1.0)), masked)


def _kth_largest_bits(bits: jax.Array, k: int) -> jax.Array:
    """Largest T (of bits' int dtype) with count(bits >= T) >= k, for nonnegative float bits (k >= 1)."""
    itype = bits.dtype
    top = 0x7FF0000000000000 if itype == jnp.int64 else 0x7F800000  # +inf's bits
    passes = 64 if itype == jnp.int64 else 32

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo + 1) // 2
        ok = jnp.sum(bits >= mid, dtype=jnp.int32) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, passes, body, (jnp.asarray(0, itype), jnp.asarray(top, itype)))
    return lo


def top_k_mask(mag: jax.Array, k: int) -> jax.Array:
    """Boolean mask (flat `[n]`) of exactly k largest entries of nonnegative `mag`; ties by index."""
    # float64 magnitudes (a float64 merge) are ranked in float64: cast to float32, entries that
    # differ below float32's precision became ties, and the lower index won over the larger one
    flat = jnp.asarray(mag).reshape(-1)  # a numpy float64 array is float32 here unless x64 is on
    f64 = flat.dtype == jnp.float64
    flat = flat.astype(jnp.float64 if f64 else jnp.float32)
    n = flat.shape[0]
    if k <= 0:
        return jnp.zeros((n,), bool)
    if k >= n:
        return jnp.ones((n,), bool)
    bits = jax.lax.bitcast_convert_type(jnp.nan_to_num(flat, posinf=None if f64 else 3.0e38),
                                        jnp.int64 if f64 else jnp.int32)
    thr = _kth_largest_bits(bits, k)
    above = bits > thr
    at = bits == thr
    room = k - jnp.sum(above, dtype=jnp.int32)
    return above | (at & (jnp.cumsum(at, dtype=jnp.int32) <= room))


def magnitude(tau: jax.Array, density: float, *, rescale: bool = False) -> jax.Array:
    if density >= 1:
        return tau
    n = tau.size
    if density <= 0 or n == 0:
        return jnp.zeros_like(tau)
    k = max(1, int(density * n))
    mask = top_k_mask(jnp.abs(tau), k).reshape(tau.shape).astype(tau.dtype)
    return rescale_l1(tau, mask, rescale)


def magnitude_outliers(tau: jax.Array, density: float, *, gamma: float = 0.01,
                       rescale: bool = False) -> jax.Array:
    if density >= 1:
        return tau
    n = tau.size
    target_n = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target_n - n_top)
    # ascending ranks [n_bot, n_bot + target_n) = top (n - n_bot) minus top (n - n_bot - target_n)
    mag = jnp.abs(tau)
    keep = top_k_mask(mag, n - n_bot) & ~top_k_mask(mag, n - n_bot - target_n)
    return rescale_l1(tau, keep.reshape(tau.shape).astype(tau.dtype), rescale)


def bernoulli(tau: jax.Array, density: float, *, key: jax.Array, rescale: bool = False) -> jax.Array:
    if density >= 1:
        return tau
    mask = jax.random.bernoulli(key, density, tau.shape).astype(tau.dtype)
    return rescale_l1(tau, mask, rescale)


def della_probabilities(tau: jax.Array, density: float, epsilon: float) -> jax.Array:
    """Keep probabilities `density - eps + 2 eps (rank - min) / (max - min)`, ranks along axis 1."""
    t = tau.reshape(1, -1) if tau.ndim < 2 else tau  # a vector, or a 0-d scalar, is one row
    ranks = jnp.argsort(jnp.argsort(jnp.abs(t), axis=1), axis=1).astype(jnp.float32) + 1
    lo = ranks.min(axis=1, keepdims=True)
    hi = ranks.max(axis=1, keepdims=True)
    # a single-entry row has max == min (0/0 in mergekit); its rank counts as the lowest
    rank_norm = jnp.clip(jnp.where(hi > lo, (ranks - lo) / jnp.where(hi > lo, hi - lo, 1), 0.0), 0, 1)
    return (density - epsilon) + rank_norm * 2 * epsilon


def della_magprune(tau: jax.Array, density: float, *, epsilon: float, key: jax.Array,
                   rescale: bool = False) -> jax.Array:
    if density >= 1:
        return tau
    if density <= 0:
        return jnp.zeros_like(tau)
    probs = della_probabilities(tau, density, epsilon)
    # float32, float64 kept: a float64 merge's task vectors were rounded to float32 here (1/3 came back
    # 1e-8 off), while magnitude and bernoulli keep them in the merge's work dtype
    work = jnp.float64 if tau.dtype == jnp.float64 else jnp.float32
    mask = jax.random.bernoulli(key, probs).astype(work)
    t = (tau.reshape(1, -1) if tau.ndim < 2 else tau).astype(work)
    return rescale_l1(t, mask, rescale).astype(tau.dtype).reshape(tau.shape)


def sparsify(tau: jax.Array, method: str, *, density: float, rescale: bool, gamma: float = 0.01,
             epsilon: float = 0.15, key: jax.Array | None = None) -> jax.Array:
    """Dispatch on mergekit's sparsification method name."""
    if method == "magnitude":
        return magnitude(tau, density, rescale=rescale)
    if method == "magnitude_outliers":
        return magnitude_outliers(tau, density, gamma=gamma, rescale=rescale)
    if method == "random":
        return bernoulli(tau, density, key=key, rescale=rescale)
    if method == "della_magprune":
        return della_magprune(tau, density, epsilon=epsilon, key=key, rescale=rescale)
    raise ValueError(f"sparsification method: expected magnitude, magnitude_outliers, random or "
                     f"della_magprune, got {method!r}")
