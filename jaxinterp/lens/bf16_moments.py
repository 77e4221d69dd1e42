"""Adam with its two moments stored in bfloat16, rounded stochastically.

A lens of one GPT-2-small layer holds 464M float32 weights (1.73 GiB) and Adam keeps two more
copies; stored in bfloat16 the moments take half of that, and the optimiser state of a layer drops
from 3.46 to 1.73 GiB (GPT-2 XL: 25 heads x 1600 x 50257 = 2.0B weights, 16 -> 8 GB). The weights
stay float32, and so does every formula: each step computes the new moments in float32 from the
stored ones, then stores them.

Round-to-nearest would not do for nu: its step adds (1 - b2) g^2 = 0.001 g^2, below half a bfloat16
ulp (2^-9 relative) of a nu of g^2's size, so nu would stop following the gradient. Rounding
stochastically (up with probability equal to the remainder's share of the ulp, Gupta et al. 2015)
is unbiased: the stored moment's expectation is the float32 one. The random bits are a hash of
(leaf, moment, step, element index), not a PRNG stream: nothing to carry in the state, the same bits
for an element whichever program computes it (the whole-gradient step here, the chunk-by-chunk
one of `fused_adam`), and a resumed run draws the bits the uninterrupted run drew.

The state has optax.adam's layout (`(ScaleByAdamState(count, mu, nu), EmptyState())`), so
checkpoints, sharding and `fused_adam` take it unchanged; its moments are the uint16 bit patterns of
their bfloat16 values (`load` reads them). Not bfloat16 arrays, because XLA:CPU computes bfloat16 in
float32: `fused_adam`'s update of one vocabulary chunk of a bfloat16 moment became a conversion of
the whole buffer to float32 and back, per chunk (2 GiB of temporaries and 7x the step time for a
GPT-2-small lens), and a bitcast to uint16 at the step's edges is a copy of the buffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array, lax

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults (and torch.optim.Adam's)
MU, NU = 0, 1  # which moment a rounding is for (its own bits)
DTYPES = ("float32", "bfloat16")  # what `jaxinterp lens train --adam-moments` offers


def _mix(x: Array) -> Array:
    """A 32-bit integer hash (Wellons' "lowbias32": full avalanche, a few multiplies and shifts)."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def leaf_seed(leaf: int, moment: int, count: Array) -> Array:
    """The uint32 seed of one leaf's rounding for one moment at Adam step `count` (1, 2, ...)."""
    c = jnp.asarray(count).astype(jnp.uint32)
    return _mix(c * np.uint32(0x9E3779B9) + np.uint32((leaf * 2 + moment) * 0x85EBCA6B % 2**32))


def random_bits(seed: Array, shape: tuple[int, ...], start: Array | int = 0) -> Array:
    """uint32 bits [shape] for the elements of columns start ... start + shape[-1] - 1 of a leaf: a
    hash of each row's (leading axes') index, plus the column, hashed again.

    Only the small [..., 1] row hash is independent of `start`: a full-size index that is the same
    in every chunk was hoisted out of `fused_adam`'s loop by XLA and kept as a 0.28 GiB buffer.
    """
    if not shape:
        return _mix(seed)
    rows = jnp.arange(int(np.prod(shape[:-1])), dtype=jnp.uint32).reshape(shape[:-1] + (1,))
    col = lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1) + jnp.asarray(start).astype(jnp.uint32)
    return _mix(_mix(rows ^ seed) + col)


def _round_bits(x: Array, bits: Array) -> Array:
    """float32 x -> the uint16 bit pattern of x in bfloat16, rounded stochastically (`stochastic_round`)."""
    u = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return ((u + (bits & np.uint32(0xFFFF))) >> 16).astype(jnp.uint16)


def stochastic_round(x: Array, bits: Array) -> Array:
    """float32 x -> bfloat16, rounded away from zero with probability (dropped low 16 bits) / 2^16.

    Adding 16 uniform bits below the kept ones and truncating is that rounding, also across a power
    of two (the next bfloat16 is 2^16 further in the bit pattern either way); infinities and NaNs
    stay what they are, and a value above bfloat16's largest may round to infinity, as it should.
    """
    return lax.bitcast_convert_type(_round_bits(x, bits), jnp.bfloat16)


def load(a: Array) -> Array:
    """A stored moment (float32, or uint16 bfloat16 bits) in the dtype it is computed in."""
    if a.dtype == jnp.uint16:
        return lax.bitcast_convert_type(a.astype(jnp.uint32) << 16, jnp.float32)
    return a.astype(wide(a))


def store(x: Array, like: Array, seed: Array, start: Array | int = 0) -> Array:
    """A moment computed in `wide(like)`, stored as `like` is: bfloat16 bits stochastically rounded,
    else as is."""
    if like.dtype == jnp.uint16:
        return _round_bits(x, random_bits(seed, x.shape, start))
    return x.astype(like.dtype)


def wide(a) -> jnp.dtype:
    """The dtype a moment is computed in: float32, or wider if the moment is."""
    return jnp.float32 if a.dtype == jnp.uint16 else jnp.promote_types(jnp.float32, a.dtype)


def scale_by_adam() -> optax.GradientTransformation:
    """optax.scale_by_adam (default b1, b2, eps) with bfloat16 moments (held as uint16 bits), rounded
    stochastically."""

    def init(params):
        zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.uint16)  # noqa: E731  (the bits of bfloat16 0.0)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
                                      nu=jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        g, treedef = jax.tree.flatten(grads)
        mu, nu = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        new_mu, new_nu, updates = [], [], []
        for i, (g_i, m, v) in enumerate(zip(g, mu, nu)):
            g_i = g_i.astype(wide(m))
            m = store((1 - B1) * g_i + B1 * load(m), m, leaf_seed(i, MU, count))
            v = store((1 - B2) * (g_i * g_i) + B2 * load(v), v, leaf_seed(i, NU, count))
            new_mu.append(m)
            new_nu.append(v)
            updates.append(direction(m, v, count).astype(g_i.dtype))
        unflat = lambda xs: jax.tree.unflatten(treedef, xs)  # noqa: E731
        return unflat(updates), optax.ScaleByAdamState(count=count, mu=unflat(new_mu), nu=unflat(new_nu))

    return optax.GradientTransformation(init, update)


def direction(m: Array, v: Array, count: Array) -> Array:
    """Adam's bias-corrected step direction m_hat / (sqrt(v_hat) + eps), in float32 (or wider)."""
    m_hat = load(m) / (1 - B1 ** count).astype(wide(m))
    v_hat = load(v) / (1 - B2 ** count).astype(wide(v))
    return m_hat / (jnp.sqrt(v_hat) + EPS)


def adam(lr: float) -> optax.GradientTransformation:
    """optax.adam(lr) with bfloat16 moments: the same state layout, half the state's bytes."""
    return optax.chain(scale_by_adam(), optax.scale_by_learning_rate(lr))


def optimizer(lr: float, moments: str = "float32") -> optax.GradientTransformation:
    """Adam at `lr` with its moments in `moments` ("float32": optax.adam itself; "bfloat16")."""
    if moments not in DTYPES:
        raise ValueError(f"moments: expected one of {DTYPES}, got {moments!r}")
    return optax.adam(lr) if moments == "float32" else adam(lr)
