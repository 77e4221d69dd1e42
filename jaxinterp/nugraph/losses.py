"""NuGraph2's training losses, masked for padding (official `DecoderBase.loss`, `RecallLoss`, BCE).

Each decoder d has a learned temperature T_d (initially 0) that balances the tasks:

    L_d = 2 * exp(-T_d) * loss_d + T_d,        total = L_semantic + L_filter

- semantic: RecallLoss (arXiv 2106.14917), `mean over hits of w[y] * CE(logits, y)` with
  `w_c = 1 - recall_c` measured on the batch itself (argmax predictions, no gradient); background
  hits (y = -1) are ignored but still count in the mean (with 0), as in the official code; a class
  absent from the batch has recall 0.
- filter: binary cross entropy of `x_filter` against `y != -1`, logs clamped at -100 like torch.

Means run over the real hits of all planes together (padding masked out).

Axis names: P planes, N hits per plane (padded), C classes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxinterp.nugraph.graph import GraphBatch
from jaxinterp.nugraph.model import Outputs, Params

DECODER_WEIGHT = 2.0  # the official decoders' loss weight


class Losses(NamedTuple):
    total: jax.Array  # [] L_semantic + L_filter
    semantic: jax.Array  # [] 2 exp(-T_s) recall_loss + T_s
    filter: jax.Array  # [] 2 exp(-T_f) bce + T_f


def recall_loss(logits: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """RecallLoss. logits [..., C]; y [...] int (-1 ignored); mask [...] bool (False: padding)."""
    C = logits.shape[-1]
    logits, y, mask = logits.reshape(-1, C), y.reshape(-1), mask.reshape(-1)
    valid = mask & (y >= 0)
    y0 = jnp.where(valid, y, 0)
    onehot = jax.nn.one_hot(y0, C, dtype=logits.dtype) * valid[:, None]
    pred = jnp.argmax(logits, axis=-1)
    true_pos = jnp.sum(onehot * (pred == y0)[:, None], axis=0)  # [C]
    support = jnp.sum(onehot, axis=0)
    # torchmetrics divides in float32 whatever the logits' dtype; so do we, to match it to 1e-8
    recall = jnp.where(support > 0, true_pos.astype(jnp.float32) / jnp.maximum(support, 1).astype(jnp.float32), 0.0)
    weight = jax.lax.stop_gradient((jnp.float32(1.0) - recall).astype(logits.dtype))
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y0[:, None], axis=-1)[:, 0]
    per_hit = jnp.where(valid, weight[y0] * ce, 0.0)
    return jnp.sum(per_hit) / jnp.maximum(jnp.sum(mask), 1)


BCE_EPSILON = 1e-12  # torch's binary_cross_entropy_backward: (p - t) / max(p (1 - p), EPSILON)


@jax.custom_jvp
def _bce_per_hit(prob: jax.Array, target: jax.Array) -> jax.Array:
    log_p = jnp.maximum(jnp.log(prob), -100.0)
    log_q = jnp.maximum(jnp.log1p(-prob), -100.0)
    return -(target * log_p + (1.0 - target) * log_q)


@_bce_per_hit.defjvp
def _bce_per_hit_jvp(primals, tangents):
    # torch's own derivative. Differentiating the clamped logs instead gives 0 * inf = NaN wherever
    # prob is exactly 0 or 1 (a float32 sigmoid is 1.0 from a logit of ~17), on a padding hit too,
    # since jnp.where masks the value but not the NaN in its backward pass.
    prob, target = primals
    d_prob, d_target = tangents
    log_p = jnp.maximum(jnp.log(prob), -100.0)
    log_q = jnp.maximum(jnp.log1p(-prob), -100.0)
    out = -(target * log_p + (1.0 - target) * log_q)
    grad_prob = (prob - target) / jnp.maximum(prob * (1.0 - prob), BCE_EPSILON)
    return out, grad_prob * d_prob + (log_q - log_p) * d_target


def binary_cross_entropy(prob: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """torch.nn.BCELoss (mean, logs clamped at -100) over the hits where mask is True, with torch's
    gradient (finite where prob is 0 or 1)."""
    per_hit = _bce_per_hit(prob, target.astype(prob.dtype))
    return jnp.sum(jnp.where(mask, per_hit, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def loss(params: Params, outputs: Outputs, batch: GraphBatch) -> Losses:
    """The official total loss of one padded batch (temperatures are params['*_decoder']['temp'])."""
    mask = batch.hit_mask
    sem = recall_loss(outputs.x_semantic, batch.y_semantic, mask)
    fil = binary_cross_entropy(outputs.x_filter, (batch.y_semantic != -1).astype(outputs.x_filter.dtype), mask)
    t_s = params["semantic_decoder"]["temp"]
    t_f = params["filter_decoder"]["temp"]
    l_s = DECODER_WEIGHT * jnp.exp(-t_s) * sem + t_s
    l_f = DECODER_WEIGHT * jnp.exp(-t_f) * fil + t_f
    return Losses(l_s + l_f, l_s, l_f)
