"""GPT-2 blocks on stacked weights, indexable by a traced layer number.

The sweep runs "blocks L+1 .. n-1" for every injection layer L inside one `lax.scan`; with the
weights of all blocks stacked on a leading axis, one compiled block body serves every layer (a
`fori_loop` with a traced start), which keeps compile time flat in the number of layers. The maths
is `jaxinterp.transformer.gpt2`'s, written for arrays instead of linen modules; the parity tests
compare the two.

Axis names: n layers, B rows (prompt x tau), P positions (Q queries, K keys), H heads, E d_head,
D d_model, M d_mlp, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxinterp.transformer.gpt2 import ACTIVATIONS, GPT2Config


class Stacked(NamedTuple):
    """GPT-2 params with the blocks stacked on a leading layer axis n."""

    ln1_w: Array  # [n, D]
    ln1_b: Array  # [n, D]
    w_qkv: Array  # [n, D, 3D]  Q|K|V, head-major columns
    b_qkv: Array  # [n, 3D]
    w_o: Array  # [n, D, D]
    b_o: Array  # [n, D]
    ln2_w: Array  # [n, D]
    ln2_b: Array  # [n, D]
    w_fc: Array  # [n, D, M]
    b_fc: Array  # [n, M]
    w_proj: Array  # [n, M, D]
    b_proj: Array  # [n, D]
    lnf_w: Array  # [D]
    lnf_b: Array  # [D]
    w_u: Array  # [D, V]
    b_u: Array  # [V]
    w_e: Array  # [V, D]
    w_pos: Array  # [n_positions, D]


def stack(params: dict, config: GPT2Config) -> Stacked:
    """Stacks the per-block params `h_{i}` (works on arrays and on tracers), in float32 (float64 for a
    float64 config, which would otherwise be swept in float32)."""
    dt = config.compute_dtype
    h = [params[f"h_{i}"] for i in range(config.n_layer)]

    def s(*path):
        out = []
        for blk in h:
            x = blk
            for p in path:
                x = x[p]
            out.append(jnp.asarray(x, dt))
        return jnp.stack(out)

    if config.tie_word_embeddings:
        w_u = jnp.asarray(params["wte"]["embedding"], dt).T
        b_u = jnp.zeros((config.vocab_size,), dt)
    else:
        w_u, b_u = params["lm_head"]["kernel"], params["lm_head"]["bias"]
    return Stacked(
        s("ln_1", "scale"), s("ln_1", "bias"), s("attn", "c_attn", "kernel"), s("attn", "c_attn", "bias"),
        s("attn", "c_proj", "kernel"), s("attn", "c_proj", "bias"), s("ln_2", "scale"), s("ln_2", "bias"),
        s("mlp", "c_fc", "kernel"), s("mlp", "c_fc", "bias"), s("mlp", "c_proj", "kernel"), s("mlp", "c_proj", "bias"),
        jnp.asarray(params["ln_f"]["scale"], dt), jnp.asarray(params["ln_f"]["bias"], dt), jnp.asarray(w_u, dt),
        jnp.asarray(b_u, dt), jnp.asarray(params["wte"]["embedding"], dt), jnp.asarray(params["wpe"]["embedding"], dt))


def layer(w: Stacked, i: Array | int) -> Stacked:
    """The weights of block i (i may be traced); the global leaves are passed through."""
    per_block = Stacked._fields[:12]
    return w._replace(**{f: jax.lax.dynamic_index_in_dim(getattr(w, f), i, keepdims=False) for f in per_block})


def layer_norm(x: Array, w: Array, b: Array, eps: float) -> Array:
    x = x - x.mean(-1, keepdims=True)
    return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + eps) * w + b


def allowed_keys(mask: Array) -> Array:
    """mask [B, P] (1 real, 0 pad) -> [B, 1, Q, K] bool: causal and real keys only."""
    P = mask.shape[-1]
    return jnp.tril(jnp.ones((P, P), bool))[None, None] & mask[:, None, None, :].astype(bool)


def embed(w: Stacked, tokens: Array, mask: Array) -> Array:
    """tokens [B, P] -> resid_pre of block 0 [B, P, D]; positions count real tokens (left padding)."""
    positions = jnp.clip(jnp.cumsum(mask, axis=-1) - 1, 0, None)
    return w.w_e[tokens] + w.w_pos[positions]


def _scale(config: GPT2Config, i) -> Array:
    """Block i's attention scale, as `gpt2.Attention` forms it: in Python floats, rounded once to the
    compute dtype (a float32 scale put a float64 sweep 1e-8 off its own model for d_head 12 or
    inverse-layer scaling); one entry per layer, indexed by the traced i."""
    scales = []
    for layer in range(config.n_layer):
        s = 1.0
        if config.scale_attn_weights:
            s /= config.d_head ** 0.5
        if config.scale_attn_by_inverse_layer_idx:
            s /= layer + 1
        scales.append(s)
    return jnp.asarray(np.asarray(scales), config.compute_dtype)[i]


def attention(w: Stacked, x: Array, allowed: Array, i, *, config: GPT2Config) -> Array:
    """Block i's attention output (hook_attn_out) for resid_pre x [B, P, D] -> [B, P, D]."""
    B, P, D = x.shape
    H, E = config.n_head, config.d_head
    h = layer_norm(x, w.ln1_w, w.ln1_b, config.layer_norm_epsilon)
    qkv = (h @ w.w_qkv + w.b_qkv).reshape(B, P, 3, H, E)
    # Heads folded into the batch axis: XLA:CPU runs [B*H] small matmuls much faster this way than
    # as a dot with two batch axes (measured 6x on [1590, 16, 12, 64]).
    q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))  # 3 x (B, H, P, E)
    scores = jnp.einsum("bhqe,bhke->bhqk", q, k) * _scale(config, i)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    z = jnp.einsum("bhqk,bhke->bqhe", jax.nn.softmax(scores, axis=-1), v).reshape(B, P, D)
    return z @ w.w_o + w.b_o


def mlp(w: Stacked, x: Array, *, config: GPT2Config) -> Array:
    """hook_mlp_out for resid_mid x [..., D]."""
    h = layer_norm(x, w.ln2_w, w.ln2_b, config.layer_norm_epsilon)
    return ACTIVATIONS[config.activation_function](h @ w.w_fc + w.b_fc) @ w.w_proj + w.b_proj


def block(w: Stacked, x: Array, allowed: Array, i, *, config: GPT2Config) -> Array:
    """Block i (w already indexed at i): resid_pre [B, P, D] -> resid_post."""
    x = x + attention(w, x, allowed, i, config=config)
    return x + mlp(w, x, config=config)


def last_block(w: Stacked, x: Array, mask: Array, i, *, config: GPT2Config) -> Array:
    """Block i for the last position only: resid_pre [B, P, D] -> resid_post at position P-1 [B, D].

    Keys and values need every position; the query, W_O and the MLP only the last one (the answer
    is read there), which saves most of the last block's work.
    """
    B, P, D = x.shape
    H, E = config.n_head, config.d_head
    h = layer_norm(x, w.ln1_w, w.ln1_b, config.layer_norm_epsilon)
    kv = (h @ w.w_qkv[:, D:] + w.b_qkv[D:]).reshape(B, P, 2, H, E)
    q = (h[:, -1] @ w.w_qkv[:, :D] + w.b_qkv[:D]).reshape(B, H, E)
    scores = jnp.einsum("bhe,bkhe->bhk", q, kv[:, :, 0]) * _scale(config, i)
    scores = jnp.where(mask[:, None, :].astype(bool), scores, jnp.finfo(jnp.float32).min)
    z = jnp.einsum("bhk,bkhe->bhe", jax.nn.softmax(scores, axis=-1), kv[:, :, 1]).reshape(B, D)
    x_last = x[:, -1] + z @ w.w_o + w.b_o
    return x_last + mlp(w, x_last, config=config)


def answer_logprob(w: Stacked, x_last: Array, answer: Array, *, config: GPT2Config) -> Array:
    """log p(answer) at the last position: x_last [B, D], answer [B] ids -> [B].

    Only the answer's logit and the logsumexp over V are needed, never a full softmax.
    """
    h = layer_norm(x_last, w.lnf_w, w.lnf_b, config.layer_norm_epsilon)
    logits = h @ w.w_u + w.b_u  # (B, V)
    return jnp.take_along_axis(logits, answer[:, None], axis=1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)
