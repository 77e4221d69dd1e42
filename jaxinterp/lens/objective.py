"""What a lens is trained on: GPT-2's head outputs at one layer, its own final distribution, and the
KL between that distribution and the lens's.

Modes (which rows of the batch a loss counts):

* "last" (the paper's): the last real token of each example. The original code took position -1
  of right-padded batches, which for short lines is a padding position; here it is the last real one.
* "all": every real (non-padding) position, each row weighted equally.
* "per_head": like "last", but each head's lens alone against the model, summed over heads (so each
  head's lens gets the gradient it would get if trained alone).

The GPT-2 forward runs without gradients (the model is frozen); the lens side never forms [N, V]
logits (`jaxinterp.kernels.chunked_vocab`). Only the target distribution is [N, V], once per row,
not per head.

Axis names: B batch, P positions, N rows, H heads, D d_model, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxinterp.checks import check_x64
from jaxinterp.kernels import chunked_vocab
from jaxinterp.lens import lenses
from jaxinterp.lens.lenses import LensConfig
from jaxinterp.transformer import gpt2

MODES = ("last", "all", "per_head")


@dataclasses.dataclass(frozen=True)
class Objective:
    mode: str = "last"
    chunk: int = chunked_vocab.DEFAULT_CHUNK
    compute_dtype: str | None = None  # "bfloat16" (or jnp.bfloat16): lens matmul inputs in bf16 (sums stay float32)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {self.mode!r}")
        # checked when made, not when the step is traced (after a checkpoint folder was created): a width
        # of 2.5 failed there, and an integer compute dtype (int8) truncated the activations silently
        object.__setattr__(self, "chunk", chunked_vocab.check_chunk(self.chunk))
        if self.compute_dtype is not None:
            try:
                dtype = jnp.dtype(self.compute_dtype)
            except TypeError:
                dtype = None
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"compute_dtype: expected None or a floating dtype such as 'bfloat16', "
                                 f"got {self.compute_dtype!r}")
            check_x64(dtype, "compute_dtype")  # float64 under 32-bit JAX computed in float32, silently
            # by name: checkpoints record the objective as JSON (jnp.bfloat16 itself failed at the first save)
            object.__setattr__(self, "compute_dtype", dtype.name)


class Rows(NamedTuple):
    """What the lens loss needs for N rows (examples or positions)."""

    result: Array  # [N, H, D] blocks.L.attn.hook_result
    resid_pre: Array | None  # [N, D] blocks.L.hook_resid_pre (for the "resid" lens)
    target: Array  # [N, V] the model's own next-token logits
    weight: Array  # [N] 1 for rows that count, 0 for padding


def rows(model_params: dict, tokens: Array, mask: Array, *, model_config, lens_config: LensConfig,
         objective: Objective, example_weight: Array | None = None) -> Rows:
    """One GPT-2 forward (no gradient): tokens [B, P], mask [B, P] (1 real, 0 pad) -> Rows.

    `example_weight` [B] zeroes whole examples (padding examples added to fill a device batch).
    """
    L = lens_config.layer
    # Padding is masked, but its token still goes through the embedding: a pad id outside the vocabulary
    # (a tokenizer's added pad token) embedded as NaN, and NaN values times 0 attention made every row NaN.
    tokens = jnp.where(mask > 0, tokens, 0)
    names = (f"blocks.{L}.attn.hook_result",) + ((f"blocks.{L}.hook_resid_pre",) if lens_config.needs_resid else ())
    resid = gpt2.embed(model_params, tokens, mask, config=model_config)
    final, cache = gpt2.blocks(model_params, resid, mask, config=model_config, names=names)
    result = cache[names[0]]  # (B, P, H, D)
    resid_pre = cache[names[1]] if lens_config.needs_resid else None
    B, P = tokens.shape
    ew = jnp.ones((B,), jnp.float32) if example_weight is None else example_weight.astype(jnp.float32)
    if objective.mode == "all":
        sel = lambda a: a.reshape((B * P,) + a.shape[2:])  # noqa: E731
        weight = (mask.astype(jnp.float32) * ew[:, None]).reshape(B * P)
    else:
        # the last real token, where the padding is (mask.sum() - 1 is a padding position of a left-padded row)
        last = P - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=-1)
        sel = lambda a: a[jnp.arange(B), last]  # noqa: E731
        weight = ew * (mask.sum(-1) > 0)
    target = gpt2.unembed(model_params, sel(final), config=model_config)
    out = Rows(sel(result), None if resid_pre is None else sel(resid_pre), target, weight)
    return jax.lax.stop_gradient(out)


def loss(lens: dict, r: Rows, *, lens_config: LensConfig, objective: Objective) -> Array:
    """Weighted mean over rows of KL(model || lens) (per_head: summed over heads)."""
    cd = None if objective.compute_dtype is None else jnp.dtype(objective.compute_dtype)
    # The rows are constants (the model is frozen): no gradient to them is computed.
    kl = lambda xs, Ws, b: chunked_vocab.kl_div(xs, Ws, b, r.target, chunk=objective.chunk,  # noqa: E731
                                                compute_dtype=cd, wrt_inputs=False)
    denom = jnp.maximum(r.weight.sum(), 1.0)
    if objective.mode == "per_head":
        per = lenses.per_head(kl, lens, r.result, r.resid_pre, lens_config)  # (H, N)
        return (per * r.weight).sum() / denom
    xs, Ws, b = lenses.summed_terms(lens, r.result, r.resid_pre, lens_config)
    return (kl(xs, Ws, b) * r.weight).sum() / denom


def loss_reference(lens: dict, r: Rows, *, lens_config: LensConfig, objective: Objective) -> Array:
    """The same loss with full logits (every head's [N, V]), for tests."""
    logp = jax.nn.log_softmax(r.target, -1)
    H = lens_config.n_head
    W = lens["W"] if lens_config.kind != "shared" else jnp.broadcast_to(lens["W"], (H,) + lens["W"].shape)
    b = lens["b"] if lens_config.kind != "shared" else jnp.broadcast_to(lens["b"], (H,) + lens["b"].shape)
    head_logits = jnp.einsum("nhd,hdv->nhv", r.result, W) + b  # (N, H, V)
    if lens_config.kind == "resid":
        head_logits = head_logits + (r.resid_pre @ lens["W_resid"])[:, None]
    kl = lambda z: (jnp.exp(logp) * (logp - jax.nn.log_softmax(z, -1))).sum(-1)  # noqa: E731
    denom = jnp.maximum(r.weight.sum(), 1.0)
    if objective.mode == "per_head":
        return (jax.vmap(kl, in_axes=1, out_axes=0)(head_logits) * r.weight).sum() / denom
    if lens_config.kind == "resid":  # the resid term counts once, not once per head
        head_logits = head_logits - (r.resid_pre @ lens["W_resid"])[:, None] * (H - 1) / H
    return (kl(head_logits.sum(1)) * r.weight).sum() / denom
