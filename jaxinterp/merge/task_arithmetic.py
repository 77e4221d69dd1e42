"""Generalized task arithmetic: task_arithmetic, ties, dare_*, breadcrumbs*, della*.

mergekit's `GeneralizedTaskArithmeticMerge.merge_group`, for one tensor:

    tau_i  = sparsify(theta_i - theta_base)            (unweighted; rescaled when `rescale`)
    d_i    = w_i tau_i
    sign consensus (ties-like methods): s = sign(sum_i d_i) with 0 counted as +,
        m_i = [sign(d_i) == s]                         (a zero entry never agrees)
        mixed = sum_i m_i d_i,  divisor = sum_i m_i w_i   (0 -> 1)
    otherwise: mixed = sum_i d_i, divisor = sum_i w_i   (|.| < 1e-8 -> 1)
    mixed /= divisor  when `normalize`;  mixed *= lambda;  result = theta_base + mixed

Axis names: N inputs that are not the base; the tensor's own axes are kept as they come.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxinterp.merge import sparsify as _sp


class GTAVariant(NamedTuple):
    consensus: bool  # TIES sign election ("sum" method)
    sparsification: str | None  # a name in sparsify.sparsify, or None
    default_normalize: bool
    default_rescale: bool


# mergekit's registry (merge_methods/registry.py), method name -> variant.
GTA_VARIANTS = {
    "task_arithmetic": GTAVariant(False, None, False, False),
    "ties": GTAVariant(True, "magnitude", True, False),
    "dare_ties": GTAVariant(True, "random", False, True),
    "dare_linear": GTAVariant(False, "random", False, True),
    "breadcrumbs": GTAVariant(False, "magnitude_outliers", False, False),
    "breadcrumbs_ties": GTAVariant(True, "magnitude_outliers", False, False),
    "della": GTAVariant(True, "della_magprune", True, True),
    "della_linear": GTAVariant(False, "della_magprune", False, True),
}


def sign_consensus_mask(deltas: jax.Array, method: str = "sum") -> jax.Array:
    """`[N, ...]` bool: entries whose sign equals the elected sign (`sum` of values or `count` of signs)."""
    sign = jnp.sign(deltas)
    votes = deltas.sum(0) if method == "sum" else sign.sum(0)
    majority = jnp.where(votes >= 0, 1.0, -1.0).astype(sign.dtype)
    return sign == majority


def gta_merge(base: jax.Array, others: list[jax.Array], *, variant: GTAVariant,
              weights: list[float], densities: list[float], normalize: bool, rescale: bool,
              lam: float = 1.0, gammas: list[float] | None = None,
              epsilons: list[float] | None = None, key: jax.Array | None = None) -> jax.Array:
    """One tensor of a generalized-task-arithmetic merge (see the module docstring)."""
    if not others:
        return base
    dtype = base.dtype
    work = jnp.float64 if dtype == jnp.float64 else jnp.float32
    b = base.astype(work)
    taus = []
    for i, x in enumerate(others):
        tau = x.astype(work) - b
        if variant.sparsification:
            tau = _sp.sparsify(
                tau, variant.sparsification, density=densities[i], rescale=rescale,
                gamma=gammas[i] if gammas else 0.01, epsilon=epsilons[i] if epsilons else 0.15,
                key=None if key is None else jax.random.fold_in(key, i))
        taus.append(tau)
    return gta_combine(b, taus, weights, consensus=variant.consensus, normalize=normalize, lam=lam).astype(dtype)


def _total(xs: list):
    return functools.reduce(operator.add, xs)


def gta_combine(b: jax.Array, taus: list[jax.Array], weights, *, consensus: bool, normalize: bool,
                lam=1.0) -> jax.Array:
    """`b + lam * mixed` from the sparsified task vectors `taus` (work dtype). Elementwise, so the
    streaming checkpoint merge runs it on flat chunks of a tensor (`stream.py`).

    Written as Python sums over the N models, not a stacked [N, ...] array reduced over axis 0:
    XLA:CPU ran the stacked form of the sign consensus at ~23 ns per entry and this one at ~1.2
    (2-core EPYC, 3 models, 2**18-entry chunks)."""
    work = b.dtype
    w = [jnp.asarray(weights[i], work) for i in range(len(taus))]
    deltas = [t * wi for t, wi in zip(taus, w)]
    if consensus:  # sign of the sum (0 counts as +); a zero delta never agrees
        majority = jnp.where(_total(deltas) >= 0, 1.0, -1.0).astype(work)
        masks = [(jnp.sign(d) == majority).astype(work) for d in deltas]
        mixed = _total([d * m for d, m in zip(deltas, masks)])
        divisor = _total([wi * m for wi, m in zip(w, masks)])
        divisor = jnp.where(divisor == 0, 1.0, divisor)
    else:
        mixed = _total(deltas)
        divisor = _total(w)
        divisor = jnp.where(jnp.abs(divisor) < 1e-8, 1.0, divisor)
    if normalize:
        mixed = mixed / divisor
    mixed = mixed * lam  # lam may be traced (a per-layer value); times 1.0 is exact
    return b + mixed
