"""Hook points with TransformerLens names, and interventions as data.

Every activation the GPT-2 module computes passes through a named hook point. At a hook point two
things may happen, both decided before tracing:

* capture: if the full name (e.g. ``blocks.3.attn.hook_result``) is among the names asked for, the
  value is sown into linen's ``intermediates`` collection. Names not asked for cost nothing.
* intervention: each `Intervention` whose site matches (``attn.hook_result``) rewrites the value.
  An intervention is a pytree of arrays (its layer index too), so a stack of them is vmapped as one
  compiled call; only its site and mode are static.

Axis names: B batch, P positions (Q queries, K keys), H heads, D d_model, E d_head, M d_mlp.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

# Sites inside block L (full name "blocks.{L}.{site}") and the layout of the activation there.
#   "bpd": [B, P, width]       "bphd": [B, P, H, width]       "bhqk": [B, H, Q, K]
BLOCK_SITES: dict[str, str] = {
    "hook_resid_pre": "bpd",
    "ln1.hook_scale": "bpd",
    "ln1.hook_normalized": "bpd",
    "attn.hook_q": "bphd",
    "attn.hook_k": "bphd",
    "attn.hook_v": "bphd",
    "attn.hook_attn_scores": "bhqk",
    "attn.hook_pattern": "bhqk",
    "attn.hook_z": "bphd",
    "attn.hook_result": "bphd",
    "hook_attn_out": "bpd",
    "hook_resid_mid": "bpd",
    "ln2.hook_scale": "bpd",
    "ln2.hook_normalized": "bpd",
    "mlp.hook_pre": "bpd",
    "mlp.hook_post": "bpd",
    "hook_mlp_out": "bpd",
    "hook_resid_post": "bpd",
}
# Sites outside the blocks: their full name is the site.
GLOBAL_SITES: dict[str, str] = {
    "hook_embed": "bpd",
    "hook_pos_embed": "bpd",
    "ln_final.hook_scale": "bpd",
    "ln_final.hook_normalized": "bpd",
}
LAYOUTS: dict[str, str] = BLOCK_SITES | GLOBAL_SITES
MODES = ("add", "replace", "zero", "mean")
NO_LAYER = -1  # the `layer` of an intervention at a global site


def hook_names(n_layer: int) -> list[str]:
    """Every hook name of a GPT-2 with `n_layer` blocks, in the order the forward pass meets them."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layer):
        names += [f"blocks.{layer}.{site}" for site in BLOCK_SITES]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


def split_name(name: str) -> tuple[str, int]:
    """'blocks.3.attn.hook_z' -> ('attn.hook_z', 3); 'hook_embed' -> ('hook_embed', NO_LAYER).

    Raises ValueError for a name that is no hook point of GPT-2 (any size).
    """
    if name in GLOBAL_SITES:
        return name, NO_LAYER
    parts = name.split(".", 2)
    # The layer as the model writes it ("3", not "03" or a non-ASCII digit): capture matches names
    # exactly, so any other spelling would pass here and never be captured.
    if (len(parts) == 3 and parts[0] == "blocks" and parts[1].isascii() and parts[1].isdigit()
            and parts[1] == str(int(parts[1])) and parts[2] in BLOCK_SITES):
        return parts[2], int(parts[1])
    raise ValueError(f"unknown hook name {name!r}: expected one of {sorted(GLOBAL_SITES)} or "
                     f"'blocks.<layer>.<site>' with site in {sorted(BLOCK_SITES)}")


def check_names(names: Sequence[str], n_layer: int) -> tuple[str, ...]:
    """Validates hook names against a model with `n_layer` blocks; returns them as a sorted tuple."""
    # a tuple first: a generator was used up by the checks below and nothing was captured
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        _, layer = split_name(name)
        if layer >= n_layer:
            raise ValueError(f"hook name {name!r}: layer {layer} out of range, the model has {n_layer} blocks")
    return tuple(sorted(set(names)))


@flax.struct.dataclass
class Intervention:
    """Rewrites the activation at one hook site (of one block, chosen by the array `layer`).

    mode "add":     x + scale * value
    mode "replace": value (where selected), x elsewhere
    mode "zero":    0 (where selected)
    mode "mean":    the mean over the batch of x at each position (takes no value), where selected;
                    only rows where the model's attention_mask is 1 at that position count (padding
                    stays out of the mean; a position padded in every row keeps its values; at
                    attention scores and patterns, a key counts where it is real too, and a row's own
                    padded keys keep their values, so no real query reads a pad token). Without a
                    mask (all rows real, or the `gpt2.unembed` slice, which takes none) every row counts.
                    To ablate with a data-set mean, use "replace" with that mean as `value`.

    `value` broadcasts against one example's activation (e.g. [D], [P, D], [H, D], [P, H, D]) or
    against the batch ([B, P, D]). `positions` [P] and `heads` [H] are boolean masks selecting where
    the intervention applies (all when None); heads only at per-head sites.
    """

    site: str = flax.struct.field(pytree_node=False)
    mode: str = flax.struct.field(pytree_node=False)
    layer: Array  # [] int32; NO_LAYER at global sites
    value: Array | None
    scale: Array  # [] float
    positions: Array | None  # [P] bool
    heads: Array | None  # [H] bool
    # [B, P] the forward's attention mask (1 real, 0 padding): set by the model (`with_mask`) for "mean"
    attention_mask: Array | None = None


def intervene(name: str, value: Array | None = None, *, mode: str = "add", scale: float | Array = 1.0,
              positions: Array | None = None, heads: Array | None = None) -> Intervention:
    """Builds an Intervention at the hook point `name` (a TransformerLens name).

    Example: add 3 times a memory vector to layer 5's attention output at every position:
        intervene("blocks.5.hook_attn_out", memory, scale=3.0)
    """
    site, layer = split_name(name)
    if mode not in MODES:
        raise ValueError(f"intervention mode must be one of {MODES}, got {mode!r}")
    if mode in ("add", "replace") and value is None:
        raise ValueError(f"intervention mode {mode!r} at {name!r} needs a value, got None")
    # modes that take no value or scale ignored them: a data-set mean given to "mean" ablated with the
    # batch's mean instead, a scale given to "replace" wrote the value unscaled, silently
    if mode in ("zero", "mean") and value is not None:
        raise ValueError(f"intervention mode {mode!r} at {name!r} takes no value (to write a given vector, "
                         f"use mode 'replace'), got a value of shape {list(np.shape(value))}")
    if (mode != "add" and not isinstance(scale, jax.core.Tracer)
            and not (np.ndim(scale) == 0 and np.asarray(scale) == 1)):
        raise ValueError(f"scale at {name!r}: mode {mode!r} takes no scale (only 'add' scales its value), "
                         f"got {scale!r}")
    # A NaN reaches every later position's logits (attention mixes it in): refused while concrete.
    # Infinities are not: -inf replacing attention scores is how a key is masked.
    if (mode in ("add", "replace") and not isinstance(value, jax.core.Tracer)
            and bool(jnp.isnan(jnp.asarray(value)).any())):
        raise ValueError(f"value at {name!r}: expected no NaN entries, got {int(jnp.isnan(jnp.asarray(value)).sum())}")
    if mode == "add" and not isinstance(scale, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(scale))):
        raise ValueError(f"scale at {name!r}: expected a finite number, got {scale!r}")
    layout = LAYOUTS[site]
    if heads is not None and layout == "bpd":
        raise ValueError(f"a head mask applies only at per-head sites; {name!r} has no head axis")
    for what, m in (("positions", positions), ("heads", heads)):
        # Masks, not indices: casting [3, 0, 0, 0] to bool would select position 0, not 3.
        if m is not None and not isinstance(m, jax.core.Tracer) and np.asarray(m).dtype != bool:
            bad = np.setdiff1d(np.asarray(m), [0, 1])
            if bad.size:
                raise ValueError(f"{what} at {name!r}: expected a boolean mask (True/False or 0/1 per "
                                 f"{'position' if what == 'positions' else 'head'}), got values {bad[:5].tolist()} "
                                 "(indices? use e.g. np.arange(P) == i)")
    return Intervention(
        site=site, mode=mode, layer=jnp.asarray(layer, jnp.int32),
        value=None if value is None else jnp.asarray(value),
        scale=jnp.asarray(scale, jnp.result_type(float)),  # float64 with x64 on: 0.1 was float32's 0.1000000015
        positions=None if positions is None else jnp.asarray(positions, bool),
        heads=None if heads is None else jnp.asarray(heads, bool),
    )


def site_shape(site: str, *, n_positions: int, n_embd: int, n_head: int, d_head: int, d_mlp: int) -> tuple[int, ...]:
    """The shape of one example's activation at `site` (without the batch axis), for P = n_positions."""
    width = {"mlp.hook_pre": d_mlp, "mlp.hook_post": d_mlp, "attn.hook_result": n_embd,
             "ln1.hook_scale": 1, "ln2.hook_scale": 1, "ln_final.hook_scale": 1}.get(site, n_embd)
    layout = LAYOUTS[site]
    if layout == "bphd":
        return (n_positions, n_head, width if site == "attn.hook_result" else d_head)
    if layout == "bhqk":
        return (n_head, n_positions, n_positions)
    return (n_positions, width)


def check_intervention(iv: Intervention, shape: tuple[int, ...], n_layer: int, *, batch: int | None = None) -> None:
    """Raises ValueError if `iv` cannot apply to an activation of per-example `shape` (see site_shape)
    in a batch of `batch` examples (not checked when None)."""
    where = f"intervention at {iv.site!r}"
    layout = LAYOUTS[iv.site]
    if iv.value is not None:
        v = tuple(iv.value.shape)
        per_example = v[1:] if len(v) == len(shape) + 1 else v
        if batch is not None and len(v) == len(shape) + 1 and v[0] not in (1, batch):
            raise ValueError(f"{where}: value of shape {list(v)} has a batch axis of {v[0]}, "
                             f"but the batch holds {batch} examples")
        bad = [k for k, (a, b) in enumerate(zip(reversed(per_example), reversed(shape)), 1) if a not in (1, b)]
        if len(per_example) > len(shape) or bad:
            if len(per_example) > len(shape):
                why = f"expected at most {len(shape)} axes per example, got {len(per_example)}"
            elif bad[0] == 1:
                why = f"expected width {shape[-1]} in the last axis, got {v[-1]}"
            else:  # the width fits: name the axis that does not (it said 'expected width 64, got 64')
                why = f"expected {shape[-bad[0]]} or 1 in axis {len(v) - bad[0]}, got {v[-bad[0]]}"
            raise ValueError(f"{where}: value of shape {list(v)} does not broadcast to the activation {list(shape)} ({why})")
    n_pos = shape[1] if layout == "bhqk" else shape[0]
    if iv.positions is not None and tuple(iv.positions.shape) != (n_pos,):
        raise ValueError(f"{where}: positions mask must have shape [{n_pos}], got {list(iv.positions.shape)}")
    if iv.heads is not None:
        n_head = shape[0] if layout == "bhqk" else shape[1]
        if tuple(iv.heads.shape) != (n_head,):
            raise ValueError(f"{where}: heads mask must have shape [{n_head}], got {list(iv.heads.shape)}")
    if iv.layer.ndim != 0:
        raise ValueError(f"{where}: layer must be a scalar, got shape {list(iv.layer.shape)}")
    if iv.scale.ndim != 0:  # a [P, 1] scale broadcast into the activation; a [2] one failed inside the trace
        raise ValueError(f"{where}: scale must be a scalar, got shape {list(iv.scale.shape)}")
    if iv.site in BLOCK_SITES and not isinstance(iv.layer, jax.core.Tracer):
        layer = int(np.asarray(iv.layer))
        if not 0 <= layer < n_layer:
            raise ValueError(f"{where}: layer {layer} out of range, the model has {n_layer} blocks")


def with_mask(ivs: Sequence[Intervention], attention_mask: Array) -> tuple[Intervention, ...]:
    """`ivs` with the forward's attention mask [B, P] given to each "mean" intervention without one."""
    return tuple(iv.replace(attention_mask=attention_mask) if iv.mode == "mean" and iv.attention_mask is None
                 else iv for iv in ivs)


def _batch_mean(x: Array, layout: str, mask: Array | None) -> Array:
    """The mean over the batch of x [B, ...] at each position (broadcastable to x), of the rows real there
    under `mask` [B, P]; x itself where no row is. Padding rows hold what the model computed of a pad
    token (or, at attention sites, of no key), which is no activation of the data."""
    if mask is None:
        return x.mean(axis=0, keepdims=True)
    m = mask.astype(bool)
    if layout == "bhqk":  # rows real at the query and the key; a row's own padded keys keep their values
        w = m[:, None, :, None] & m[:, None, None, :]  # (B, 1, Q, K)
    else:
        w = m.reshape(m.shape + (1,) * (x.ndim - 2))
    acc = jnp.promote_types(x.dtype, jnp.float32)
    total = jnp.where(w, x.astype(acc), 0).sum(axis=0, keepdims=True)  # where, not *: -inf scores * 0 is NaN
    count = w.sum(axis=0, keepdims=True)
    mean = jnp.where(count > 0, (total / jnp.maximum(count, 1)).astype(x.dtype), x)
    if layout == "bhqk":
        # another row's attention to a key this row pads would make its real queries read the pad token
        return jnp.where(m[:, None, None, :], mean, x)
    return mean


def apply(ivs: Sequence[Intervention], site: str, layer: int, x: Array) -> Array:
    """Applies every intervention in `ivs` at `site` of block `layer` to the activation `x` [B, ...]."""
    layout = LAYOUTS[site]
    for iv in ivs:
        if iv.site != site:
            continue
        where = _selection(iv, layout, x.shape)  # broadcastable to x, bool
        where = jnp.logical_and(where, iv.layer == layer)
        if iv.mode == "add":
            new = x + (iv.scale * iv.value).astype(x.dtype)
        elif iv.mode == "replace":
            new = jnp.broadcast_to(iv.value.astype(x.dtype), x.shape)
        elif iv.mode == "zero":
            new = jnp.zeros_like(x)
        else:  # "mean"
            new = jnp.broadcast_to(_batch_mean(x, layout, iv.attention_mask), x.shape)
        x = jnp.where(where, new, x)
    return x


def _selection(iv: Intervention, layout: str, shape: tuple[int, ...]) -> Array:
    """A boolean mask broadcastable to `shape` [B, ...]: the positions and heads `iv` selects."""
    mask = jnp.ones((1,) * len(shape), bool)
    if iv.positions is not None:
        if layout == "bhqk":  # positions select query rows
            mask = mask & iv.positions[None, None, :, None]
        elif layout == "bphd":
            mask = mask & iv.positions[None, :, None, None]
        else:
            mask = mask & iv.positions[None, :, None]
    if iv.heads is not None:
        if layout == "bhqk":
            mask = mask & iv.heads[None, :, None, None]
        else:
            mask = mask & iv.heads[None, None, :, None]
    return mask
