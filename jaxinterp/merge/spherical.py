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
    if v0.ndim == 0:  # a scalar is a vector of one entry (its norm over the last axis failed)
        return nuslerp(t, v0.reshape(1), v1.reshape(1), row_wise=row_wise, flatten=flatten, eps=eps).reshape(())
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
               normalize_weights: bool = True, eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """mergekit's multislerp -> (result, bad). `bad` is true where mergekit raises (a zero weighted
    mean of more than two unit vectors); the caller turns it into a ValueError."""
    if len(others) == 1:
        return others[0], jnp.bool_(False)
    # in float32 (as slerp and karcher): in float16 the eps of 1e-8 added to the tangent's norm
    # rounds to 0, so wherever the task vectors are colinear (every 1-entry tensor, a logit scale)
    # the result was sin(0) / 0 = NaN; mergekit computes in the inputs' dtype and has the same NaN
    dtype = others[0].dtype
    x = jnp.stack(others).astype(_work(others[0]))
    if base is not None:
        x = x - base.astype(x.dtype)
    flat = x.reshape(x.shape[0], -1)
    w = jnp.asarray(weights, x.dtype)
    if normalize_weights:
        w = w / w.sum()
    norms = jnp.linalg.norm(flat, axis=-1, keepdims=True)
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = jnp.linalg.norm(mean)
    degenerate = mean_norm < eps
    mean = mean / jnp.where(degenerate, 1.0, mean_norm)
    dots = (units * mean).sum(-1, keepdims=True)
    tangent = ((units - dots * mean) * w[:, None]).sum(0)
    tnorm = jnp.linalg.norm(tangent) + eps
    res = mean * jnp.cos(tnorm) + tangent * (jnp.sin(tnorm) / tnorm)
    res = (res * (norms[:, 0] * w).sum()).reshape(x.shape[1:])
    if x.shape[0] == 2:  # mergekit falls back to linear interpolation of two antipodal inputs
        res = jnp.where(degenerate, x[0] * w[0] + x[1] * w[1], res)
        bad = jnp.bool_(False)
    else:
        bad = degenerate
    return (res + base.astype(res.dtype) if base is not None else res).astype(dtype), bad


def karcher(tensors: list[jax.Array], alphas: list[float] | None = None, *, max_iter: int = 10,
            tol: float = 1e-5) -> jax.Array:
    """Weighted Karcher mean on the unit sphere, scaled by sum_i alpha_i ||x_i|| (mergekit's rule).

    mergekit's Python branches become masks: inputs with norm <= tol drop out (their alpha is 0),
    an input within tol of the mean, or antipodal to it, adds nothing to the tangent, and the iteration freezes once
    the tangent's norm is below tol.
    """
    if len(tensors) == 1:
        return tensors[0]
    if alphas is None:
        alphas = [1.0 / len(tensors)] * len(tensors)
    work = _work(tensors[0])
    shape, dtype = tensors[0].shape, tensors[0].dtype
    x = jnp.stack([t.reshape(-1).astype(work) for t in tensors])  # [N, n]
    a = jnp.asarray(alphas, work)
    norms = jnp.linalg.norm(x, axis=1)  # [N]
    units = x / jnp.where(norms == 0, 1.0, norms)[:, None]
    valid = norms > tol
    va = jnp.where(valid, a, 0.0)
    va = va / jnp.where(va.sum() == 0, 1.0, va.sum())
    mean = va @ units
    mn = jnp.linalg.norm(mean)
    first = units[jnp.argmax(valid)]
    mean = jnp.where(mn < tol, first, mean / jnp.where(mn == 0, 1.0, mn))

    def body(_, carry):
        mean, done = carry
        dot = jnp.clip(units @ mean, -1.0, 1.0)  # [N]
        theta = jnp.arccos(dot)
        # an input antipodal to the mean (dot clipped to -1) adds nothing: its unit - dot * mean is 0
        # in exact arithmetic (mergekit's karcher([x, -x]) is x), but theta / sin(theta) ~ 1e16
        # (float64; ~4e7 in float32) turned the rounding of units and dot into a tangent of norm ~1
        use = valid & (theta >= tol) & (dot > -1)
        coef = jnp.where(use, va * theta / jnp.where(use, jnp.sin(theta), 1.0), 0.0)
        tangent = coef @ (units - dot[:, None] * mean)  # each unit's part off the mean, weighted (mergekit's order)
        tn = jnp.linalg.norm(tangent)
        stop = done | (tn < tol)
        new = jnp.cos(tn) * mean + jnp.sin(tn) * (tangent / jnp.where(tn == 0, 1.0, tn))
        un = jnp.linalg.norm(new)
        new = jnp.where(un > tol, new / jnp.where(un == 0, 1.0, un), new)
        return jnp.where(stop, mean, new), stop

    mean, _ = jax.lax.fori_loop(0, max_iter, body, (mean, jnp.bool_(False)))
    scale = jnp.sum(a * norms)
    out = jnp.where(valid.any(), scale * mean, 0.0)
    return out.reshape(shape).astype(dtype)
