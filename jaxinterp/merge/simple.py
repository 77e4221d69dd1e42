"""mergekit's remaining per-tensor methods: linear, model_stock, sce, nearswap, arcee_fusion, passthrough.

* linear: sum_i w_i x_i, divided by sum_i w_i when `normalize` (default true).
* model_stock: cos = mean pairwise cosine of task vectors (whole tensor, or per row with
  `filter_wise`), t = N cos / (1 + (N-1) cos) (t = 0 where |denominator| < 1e-6),
  result = t * mean(x_i) + (1 - t) * base.
* sce: optional top-k by variance across models (`select_topk`), TIES sign mask, each task vector
  weighted by its mean square (normalised over models; equal when all are 0), divided by the kept
  weight (0 -> 1).
* nearswap: w = clamp(t / |base - x|, 0, 1) (1 where equal; t > 0), result = w x + (1 - w) base.
* arcee_fusion: importance = |x - base| * KL(softmax(x) || softmax(base)) per row (last axis);
  keep the update where importance >= median + 1.5 IQR (quantiles by index floor(q (n - 1))); in
  float32 for bfloat16/float16 inputs, returned in their dtype.
* passthrough: the single input, times `scale` when given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp.merge.task_arithmetic import sign_consensus_mask


def linear(tensors: list[jax.Array], weights: list[float], *, normalize: bool = True) -> jax.Array:
    dtype = tensors[0].dtype
    work = jnp.float64 if dtype == jnp.float64 else jnp.float32
    res = sum(jnp.asarray(w, work) * x.astype(work) for w, x in zip(weights, tensors))
    if normalize:
        res = res / jnp.asarray(sum(weights), work)
    return res.astype(dtype)


def model_stock(base: jax.Array, others: list[jax.Array], *, filter_wise: bool = False) -> jax.Array:
    shape = base.shape
    if filter_wise:  # a vector, or a 0-d scalar (its norm over the last axis failed), is one row
        w0 = base.reshape(1, -1) if base.ndim <= 1 else base
        ws = [w.reshape(1, -1) if base.ndim <= 1 else w for w in others]
    else:
        w0 = base.reshape(-1)
        ws = [w.reshape(-1) for w in others]
    offs = [w - w0 for w in ws]
    coss = []
    for i, a in enumerate(offs):
        for b in offs[i + 1:]:
            den = jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-6)
            coss.append(jnp.clip((a * b).sum(-1) / den, -1, 1))
    cos = jnp.stack(coss).mean(0)[..., None]
    n = len(ws)
    den = 1 + (n - 1) * cos
    singular = jnp.abs(den) < 1e-6
    t = jnp.where(singular, 0.0, n * cos / jnp.where(singular, 1.0, den))
    avg = sum(ws) / n
    return (t * avg + (1 - t) * w0).reshape(shape)


def sce_weights(taus: jax.Array) -> jax.Array:
    """Each task vector's mean square over their sum; equal weights only when the sum is 0 (mergekit's
    `get_sce_weight`). A cut at 1e-6 made every merge of fine-tunes with small task vectors (mean
    squares ~1e-8, common for LLMs) an unweighted mean."""
    w = jnp.square(taus).reshape(taus.shape[0], -1).mean(1)
    s = w.sum()
    return jnp.where(s == 0, jnp.ones_like(w) / w.shape[0], w / jnp.where(s == 0, 1, s))


def sce_topk_mask(taus: jax.Array, density: float) -> jax.Array:
    """1 on the `int(nonzero(var) * density)` entries (the product in float32) of largest variance across models."""
    if density <= 0:
        return jnp.zeros(taus.shape[1:], taus.dtype)
    if density >= 1:
        return jnp.ones(taus.shape[1:], taus.dtype)
    var = jnp.var(taus, axis=0)
    # traced: k varies with the data. In float32 whatever the tensors' dtype, as mergekit's
    # `int(density * count_nonzero(var))`: torch promotes an int64 tensor times a Python float to its
    # default float32. Under x64 (float64 merges) this was float64: 0.7 of 90 gave 62, mergekit 63.
    k = (jnp.count_nonzero(var).astype(jnp.float32) * jnp.float32(density)).astype(jnp.int32)
    # top-k with a traced k: rank by a stable descending sort of the variance
    order = jnp.argsort(-var.reshape(-1), stable=True)
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
    return (ranks < k).reshape(var.shape).astype(taus.dtype)


def sce(base: jax.Array, others: list[jax.Array], *, select_topk: float = 1.0) -> jax.Array:
    if not others:
        return base
    taus = jnp.stack([x - base for x in others])
    if select_topk < 1:
        taus = taus * sce_topk_mask(taus, select_topk)[None]
    mask = sign_consensus_mask(taus).astype(taus.dtype)
    w = sce_weights(taus).reshape((-1,) + (1,) * base.ndim)
    ew = w * mask
    # divisor 0 -> 1, as mergekit: a floor of 1e-6 shrank the update of an entry where only models of
    # small weight agree (the others' task vector 0 there) to a fraction of it
    divisor = ew.sum(0)
    return base + (taus * ew).sum(0) / jnp.where(divisor == 0, 1, divisor)


def nearswap(base: jax.Array, other: jax.Array, *, t: float) -> jax.Array:
    # t / |base - other| unfloored, 1 where they are equal (mergekit's nan_to_num of t / 0): a floor of
    # 1e-6 on the difference halved the weight of entries 5e-7 apart for t = 1e-8
    diff = jnp.abs(base - other)
    w = jnp.where(diff == 0, 1.0, jnp.clip(t / jnp.where(diff == 0, 1, diff), 0, 1))
    # t comes in as a traced float32 (registry._TRACED), which promotes bfloat16/float16 inputs
    return (w * other + (1 - w) * base).astype(base.dtype)


def arcee_fusion_importance(x: jax.Array, base: jax.Array) -> jax.Array:
    eps = 1e-8
    p = jax.nn.softmax(x, axis=-1) + eps
    q = jax.nn.softmax(base, axis=-1) + eps
    kl = jnp.sum(p * jnp.log(p / q), axis=-1, keepdims=True)
    return jnp.abs(x - base) * kl


def arcee_fusion(base: jax.Array, other: jax.Array) -> jax.Array:
    if base.ndim == 0:  # a scalar is a row of one entry (its softmax over the last axis failed)
        return arcee_fusion(base.reshape(1), other.reshape(1)).reshape(())
    # in float32 (float64 kept), as linear, slerp and the task-arithmetic family, then rounded once:
    # in bfloat16 the softmaxes, the KL and the threshold rounded (another set of entries kept) and
    # base + (other - base) rounded the difference, so a kept entry was not the other model's value
    dtype = base.dtype
    work = jnp.float64 if dtype == jnp.float64 else jnp.float32
    b, x = base.astype(work), other.astype(work)
    imp = arcee_fusion_importance(x, b)
    # mergekit samples 1M entries (with replacement) above 1M; we use every entry (deterministic)
    s = jnp.sort(imp.reshape(-1))
    idx = [int(q * (s.size - 1)) for q in (0.25, 0.5, 0.75)]
    q1, med, q3 = s[idx[0]], s[idx[1]], s[idx[2]]
    mask = (imp >= med + 1.5 * (q3 - q1)).astype(work)
    return (b + (x - b) * mask).astype(dtype)


def passthrough(x: jax.Array, *, scale: float | None = None) -> jax.Array:
    return x if scale is None else x * scale
