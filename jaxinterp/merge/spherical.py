"""Spherical merges with mergekit's exact rules: slerp, nuslerp, multislerp, karcher.

* slerp (`merge_methods/slerp.py`): the whole tensor is one vector; each side is divided by its
  norm (a norm <= 1e-8 counts as 1), `dot` clamped to [-1, 1]; |dot| > 0.9995 -> lerp; otherwise
  `sin((1-t) theta)/sin theta * v0 + sin(t theta)/sin theta * v1` on the raw (unnormalised) tensors.
* nuslerp (`nuslerp.py`): t = w_1 / (w_0 + w_1) (0.5 when |sum| < 1e-6); flattened by default,
  else along the last axis (row-wise: along axis 0); colinear when 1 - cos^2 <= 1e-16; with a base,
  on the task vectors.
* multislerp (`multislerp.py`): barycentric interpolation on the sphere through the tangent space
  at the weighted mean of the unit vectors, scaled back by the weighted mean norm.
* karcher (`karcher.py`): Riemannian (Karcher) mean of the unit vectors, 10 iterations, tol 1e-5,
  scaled by the weighted mean norm; equal weights over every input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _work(x: jax.Array):
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def slerp(t: float | jax.Array, v0: jax.Array, v1: jax.Array, *, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> jax.Array:
    """Spherical interpolation from v0 (t=0, the base) to v1 (t=1), whole tensor as one vector."""
    work = _work(v0)
    a = v0.reshape(-1).astype(work)
    b = v1.reshape(-1).astype(work)
    t = jnp.asarray(t, work)
    if a.size == 0:
        return v0
    na = jnp.linalg.norm(a)
    nb = jnp.linalg.norm(b)
    na = jnp.where(na > eps, na, 1.0)
    nb = jnp.where(nb > eps, nb, 1.0)
    dot = jnp.clip(jnp.sum((a / na) * (b / nb)), -1, 1)
    linear = jnp.abs(dot) > dot_threshold
    theta = jnp.arccos(jnp.where(linear, 0.0, dot))
    sin_theta = jnp.where(linear, 1.0, jnp.sin(theta))
    ca = jnp.where(linear, 1 - t, jnp.sin((1 - t) * theta) / sin_theta)
    cb = jnp.where(linear, t, jnp.sin(t * theta) / sin_theta)
    return (ca * a + cb * b).astype(v0.dtype).reshape(v0.shape)


def nuslerp(t: float, v0: jax.Array, v1: jax.Array, *, row_wise: bool = False, flatten: bool = True,
            eps: float = 1e-8) -> jax.Array:
    """mergekit's `nuslerp` on two tensors (no base)."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = jnp.swapaxes(v0, 0, -1), jnp.swapaxes(v1, 0, -1)

    def unit(x):
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-7)

    cos = jnp.clip(jnp.sum(unit(v0) * unit(v1), axis=-1, keepdims=True), -1, 1)
    colinear = (1 - cos**2) <= eps**2
    theta = jnp.arccos(jnp.where(colinear, 0.0, cos))
    sin_theta = jnp.where(colinear, 1.0, jnp.sin(theta))
    res = (jnp.sin((1 - t) * theta) * v0 + jnp.sin(t * theta) * v1) / sin_theta
    res = jnp.where(colinear, (1 - t) * v0 + t * v1, res)
    if row_wise and not flatten:
        res = jnp.swapaxes(res, 0, -1)
    return res.reshape(shape)


def nuslerp_merge(others: list[jax.Array], weights: list[float], base: jax.Array | None = None, *,
                  row_wise: bool = False, flatten: bool = True) -> jax.Array:
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base is None:
        return nuslerp(t, others[0], others[1], row_wise=row_wise, flatten=flatten)
    return base + nuslerp(t, others[0] - base, others[1] - base, row_wise=row_wise, flatten=flatten)


def multislerp(others: list[jax.Array], weights: list[float], base: jax.Array | None = None, *,
               normalize_weights: bool = True, eps: float = 1e-8) -> jax.Array:
    """mergekit's multislerp. Raises ValueError where mergekit does (a zero weighted mean of > 2)."""
    if len(others) == 1:
        return others[0]
    x = jnp.stack(others)
    if base is not None:
        x = x - base
    flat = x.reshape(x.shape[0], -1)
    w = jnp.asarray(weights, x.dtype)
    if normalize_weights:
        w = w / w.sum()
    norms = jnp.linalg.norm(flat, axis=-1, keepdims=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = jnp.linalg.norm(mean)
    if float(mean_norm) < eps:
        if x.shape[0] == 2:
            res = x[0] * w[0] + x[1] * w[1]
            return res + base if base is not None else res
        raise ValueError("multislerp: the weighted sum of the unit task vectors is zero (antipodal "
                         "inputs with balancing weights); choose different weights")
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdims=True)
    tangent = ((units - dots * mean) * w[:, None]).sum(0)
    tnorm = jnp.linalg.norm(tangent) + eps
    res = mean * jnp.cos(tnorm) + tangent * (jnp.sin(tnorm) / tnorm)
    res = (res * (norms[:, 0] * w).sum()).reshape(x.shape[1:])
    return res + base if base is not None else res


def karcher(tensors: list[jax.Array], alphas: list[float] | None = None, *, max_iter: int = 10,
            tol: float = 1e-5) -> jax.Array:
    """Weighted Karcher mean on the unit sphere, scaled by sum_i alpha_i ||x_i|| (mergekit's rule)."""
    if len(tensors) == 1:
        return tensors[0]
    if alphas is None:
        alphas = [1.0 / len(tensors)] * len(tensors)
    work = _work(tensors[0])
    norms = [jnp.linalg.norm(x.astype(work)) for x in tensors]
    units = [jnp.zeros_like(x) if float(n) == 0.0 else (x / n).astype(x.dtype)
             for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        return jnp.zeros_like(tensors[0])
    va = [alphas[i] for i in valid]
    va = [a / sum(va) for a in va]
    vu = [units[i] for i in valid]
    mean = sum(a * u for a, u in zip(va, vu))
    mn = jnp.linalg.norm(mean.astype(work))
    mean = vu[0] if float(mn) < tol else (mean / mn).astype(mean.dtype)
    for _ in range(max_iter):
        tangent = jnp.zeros_like(mean)
        for a, u in zip(va, vu):
            dot = jnp.clip(jnp.vdot(mean.reshape(-1), u.reshape(-1)), -1.0, 1.0)
            theta = jnp.arccos(dot)
            if float(theta) < tol:
                continue
            tangent = tangent + a * (theta / jnp.sin(theta)) * (u - dot * mean)
        tn = jnp.linalg.norm(tangent.astype(work))
        if float(tn) < tol:
            break
        mean = (jnp.cos(tn) * mean + jnp.sin(tn) * (tangent / tn)).astype(mean.dtype)
        un = jnp.linalg.norm(mean.astype(work))
        if float(un) > tol:
            mean = (mean / un).astype(mean.dtype)
    scale = sum(a * n for a, n in zip(alphas, norms))
    return (scale * mean).astype(tensors[0].dtype)
