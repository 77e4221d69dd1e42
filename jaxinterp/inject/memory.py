"""Memory vectors and their injection into attention outputs (Sakarvadia et al. 2023).

A memory is the text of the entity a multi-hop prompt leaves implicit ("George Washington" for
"The first president of the United States fought in the"). Its token ids (no BOS, each distinct id
once) form a multi-hot vector over the vocabulary, which the processed unembedding maps back into
the residual stream: memory = multi_hot @ W_U.T, as the paper did. Alternatives: multi_hot @ W_E,
or the memory string's own `hook_attn_out` at the injection layer ("layer encoding").

The injection adds tau * memory to `blocks.L.hook_attn_out` at every position (the paper), at
chosen positions, or to one head's `hook_result` (the paper's hook; the heads are summed linearly,
so which head receives it does not change the output).

Axis names: N memories, D d_model, V vocabulary, n layers, P positions, H heads.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxinterp.checks import is_integer
from jaxinterp.transformer import gpt2
from jaxinterp.transformer.gpt2 import GPT2Config
from jaxinterp.transformer.hooks import Intervention, intervene

KINDS = ("unembed", "embed", "layer")


def _check_ids(ids, config: GPT2Config, what: str = "memory ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D list of token ids, got shape {list(ids.shape)} "
                         "(an empty memory carries nothing to inject)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what}: expected integer token ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise ValueError(f"{what}: ids must lie in [0, {config.vocab_size}), got {ids.min()}..{ids.max()}")
    return ids


def unembedding(params: dict, config: GPT2Config) -> tuple[Array, Array]:
    """(W_U [D, V], b_U [V]): lm_head after weight processing, else the tied wte.T."""
    if config.tie_word_embeddings:
        return params["wte"]["embedding"].T, jnp.zeros((config.vocab_size,), jnp.float32)
    return params["lm_head"]["kernel"], params["lm_head"]["bias"]


def memory_vector(params: dict, ids: Sequence[int], *, config: GPT2Config, kind: str = "unembed") -> Array:
    """The memory vector [D] of the token ids `ids` (no BOS).

    kind "unembed": multi_hot @ W_U.T (the paper); "embed": multi_hot @ W_E. For "layer" (one vector
    per layer) use `layer_encodings`.
    """
    if kind not in ("unembed", "embed"):
        raise ValueError(f"kind must be 'unembed' or 'embed' here (use layer_encodings for 'layer'), got {kind!r}")
    return memory_vectors(params, [ids], config=config, kind=kind)[0]


# "unembed"/"embed" memories: multi_hot @ W is the sum of W's rows (columns of W_U) at the distinct
# ids, so it is computed as a gather and a masked sum, every memory in one call; memories and their
# distinct-id counts are padded to multiples of 8 (one program for any set of short memories).
HOT_BUCKET = 8


def _hot_vectors(table: Array, ids: Array, weight: Array, *, axis: int) -> Array:
    """ids, weight [N, K] (weight 0 on padding) -> [N, D]: sum_k weight W[ids] (rows of a [V, D]
    table at axis 0, columns of a [D, V] one at axis 1)."""
    rows = jnp.take(table, ids, axis=axis)  # [N, K, D] or [D, N, K]
    if axis == 1:
        return jnp.einsum("dnk,nk->nd", rows, weight)
    return jnp.einsum("nkd,nk->nd", rows, weight)


_hot_vectors_jit = jax.jit(_hot_vectors, static_argnames=("axis",))


# "layer" memories run right-padded with a mask, LAYER_ROWS to a forward, their lengths (BOS
# included) rounded up to a multiple of LAYER_BUCKET: one program for memories of 1..7 tokens, one
# more per further 8, whatever their number. Right padding leaves the real positions exact (a real
# query never sees a later key, and positions count real tokens).
LAYER_ROWS = 8
LAYER_BUCKET = 8


def layer_encoding(params: dict, ids: Sequence[int], *, config: GPT2Config, bos_id: int | None = None) -> Array:
    """[n, D]: the memory string's own `blocks.L.hook_attn_out` at its last position, for every L.

    `ids` is the memory's token sequence (order matters here); `bos_id`, when given, is prepended
    (TransformerLens prepends BOS when it runs a string). One memory of `layer_encodings`.
    """
    return layer_encodings(params, [ids], config=config, bos_id=bos_id)[0]


def layer_sequences(ids_list: Sequence[Sequence[int]], *, config: GPT2Config,
                    bos_id: int | None = None) -> list[np.ndarray]:
    """The token sequences `layer_encodings` runs (`bos_id` first, when given), checked: ValueError
    naming the row of an empty memory, ids outside the vocabulary, or a sequence longer than the context.
    Needs only the config, so a caller can check memories before the model's weights are read."""
    if len(ids_list) == 0:
        raise ValueError("memories: expected at least one memory, got none")
    if bos_id is not None and (not is_integer(bos_id)
                               or not 0 <= bos_id < config.vocab_size):
        # an id outside the vocabulary is clamped by the embedding gather: a wrong memory, no error
        raise ValueError(f"bos_id: expected a token id in [0, {config.vocab_size}), got {bos_id!r}")
    seqs = []
    for row, ids in enumerate(ids_list):
        try:
            ids = _check_ids(ids, config)
        except ValueError as e:
            raise ValueError(f"memory of row {row}: {e}") from None
        seq = np.concatenate([[bos_id], ids]) if bos_id is not None else ids
        if seq.size > config.n_positions:
            raise ValueError(f"memory of row {row}: {seq.size} tokens{' with BOS' if bos_id is not None else ''}, "
                             f"the model takes at most n_positions={config.n_positions}")
        seqs.append(seq)
    return seqs


def layer_encodings(params: dict, ids_list: Sequence[Sequence[int]], *, config: GPT2Config,
                    bos_id: int | None = None) -> Array:
    """[N, n, D]: `layer_encoding` of every memory, in batches of LAYER_ROWS right-padded rows.

    Equal to running each memory alone at its own shape [1, len (+1)] (up to float rounding), but
    compiled once per length bucket instead of once per distinct memory length.
    """
    seqs = layer_sequences(ids_list, config=config, bos_id=bos_id)
    P = min(-(-max(s.size for s in seqs) // LAYER_BUCKET) * LAYER_BUCKET, config.n_positions)
    n_rows = -(-len(seqs) // LAYER_ROWS) * LAYER_ROWS
    tokens = np.zeros((n_rows, P), np.int32)  # filler rows: all padding, their output dropped
    mask = np.zeros((n_rows, P), np.int32)
    last = np.zeros((n_rows,), np.int32)
    for r, seq in enumerate(seqs):
        tokens[r, :seq.size], mask[r, :seq.size], last[r] = seq, 1, seq.size - 1
    fn = _layer_encodings_jit()
    out = [np.asarray(fn(params, tokens[i:i + LAYER_ROWS], mask[i:i + LAYER_ROWS], last[i:i + LAYER_ROWS],
                         config=config)) for i in range(0, n_rows, LAYER_ROWS)]
    # device_put, not jnp.asarray: the latter compiles a copy program for every new shape [N, n, D]
    return jax.device_put(np.concatenate(out)[:len(seqs)])


def _layer_encodings(params: dict, tokens: Array, mask: Array, last: Array, *, config: GPT2Config) -> Array:
    """tokens, mask [B, P] right-padded, last [B] -> hook_attn_out at `last` of every block [B, n, D]."""
    names = tuple(f"blocks.{i}.hook_attn_out" for i in range(config.n_layer))
    resid = gpt2.embed(params, tokens, mask, config=config)  # (B, P, D); no unembedding needed
    _, cache = gpt2.blocks(params, resid, mask, config=config, names=names)
    rows = jnp.arange(tokens.shape[0])
    return jnp.stack([cache[n][rows, last] for n in names], axis=1)  # (B, n, D)


@functools.cache
def _layer_encodings_jit():
    return jax.jit(_layer_encodings, static_argnames=("config",))


def check_memories(ids_list: Sequence[Sequence[int]], *, config: GPT2Config, kind: str = "unembed",
                   bos_id: int | None = None) -> list[np.ndarray]:
    """`memory_vectors`' checks of its memories, from the config alone (a caller checks them before the
    model's weights are read): ValueError naming the row of an empty memory, ids outside the vocabulary
    (and, for "layer", a sequence longer than the context). Returns the sequences as checked."""
    if kind not in KINDS:
        raise ValueError(f"memory kind must be one of {KINDS}, got {kind!r}")
    if len(ids_list) == 0:
        raise ValueError("memories: expected at least one memory, got none")
    if kind == "layer":
        return layer_sequences(ids_list, config=config, bos_id=bos_id)
    out = []
    for row, ids in enumerate(ids_list):
        try:
            out.append(_check_ids(ids, config))
        except ValueError as e:
            raise ValueError(f"memory of row {row}: {e}") from None
    return out


def memory_vectors(params: dict, ids_list: Sequence[Sequence[int]], *, config: GPT2Config, kind: str = "unembed",
                   bos_id: int | None = None) -> Array:
    """One memory per prompt: [N, D] for "unembed"/"embed", [N, n, D] for "layer"."""
    if kind == "layer":  # checked there (layer_sequences, as check_memories does)
        return layer_encodings(params, ids_list, config=config, bos_id=bos_id)
    # a repeated token counts once
    distinct = [np.unique(ids) for ids in check_memories(ids_list, config=config, kind=kind)]
    n = -(-len(distinct) // HOT_BUCKET) * HOT_BUCKET
    k = -(-max(d.size for d in distinct) // HOT_BUCKET) * HOT_BUCKET
    hot_ids, weight = np.zeros((n, k), np.int32), np.zeros((n, k), np.float32)
    for r, d in enumerate(distinct):
        hot_ids[r, :d.size], weight[r, :d.size] = d, 1.0
    if kind == "unembed":
        table, axis = unembedding(params, config)[0], 1
    else:
        table, axis = params["wte"]["embedding"], 0
    out = _hot_vectors_jit(table, hot_ids, weight, axis=axis)
    return jax.device_put(np.asarray(out)[:len(distinct)])  # device_put: no copy program per count


def injection(memory: Array, layer: int, tau: float | Array, *, positions: Array | None = None,
              head: int | None = None, n_head: int | None = None) -> Intervention:
    """The intervention `blocks.{layer}.hook_attn_out += tau * memory` (at `positions` [P] bool if given).

    With `head`, the memory goes into that head's `attn.hook_result` instead (the paper's hook);
    `n_head` is then required to build the head mask.
    """
    memory = jnp.asarray(memory)
    if memory.ndim != 1:
        raise ValueError(f"memory: expected one vector [d_model], got shape {list(memory.shape)}")
    # NaN made every logit NaN; a string ("2") failed inside the intervention with a TypeError
    if not isinstance(tau, jax.core.Tracer) and (np.asarray(tau).dtype.kind not in "iuf"
                                                 or not np.all(np.isfinite(np.asarray(tau, np.float64)))):
        raise ValueError(f"tau: expected a finite number, got {tau!r}")
    if head is None:
        return intervene(f"blocks.{layer}.hook_attn_out", memory, scale=tau, positions=positions)
    if n_head is None or not is_integer(head) or not 0 <= head < n_head:
        # head=True indexed the head mask as a boolean: the memory went into every head (n_head times)
        raise ValueError(f"head: expected an int in [0, n_head) with n_head given, got head={head!r}, n_head={n_head}")
    heads = np.zeros(n_head, bool)
    heads[head] = True
    return intervene(f"blocks.{layer}.attn.hook_result", memory, scale=tau, positions=positions, heads=heads)


def check_layer(layer: int, config: GPT2Config, what: str = "layer") -> int:
    if not is_integer(layer) or not 0 <= int(layer) < config.n_layer:
        raise ValueError(f"{what}: expected an int in [0, {config.n_layer}) (the model has {config.n_layer} blocks), "
                         f"got {layer!r}")
    return int(layer)


def inject_logits(params: dict, tokens: Array, memory: Array, *, config: GPT2Config, layer: int, tau: float,
                  positions: Array | None = None, head: int | None = None,
                  attention_mask: Array | None = None) -> Array:
    """Logits [B, P, V] of GPT-2 on `tokens` [B, P] with the memory injected at `layer` (one run).

    The straightforward path (one forward through `jaxinterp.transformer`); `sweep` computes the
    same numbers for many layers and taus at once.
    """
    check_layer(layer, config)
    iv = injection(memory, layer, tau, positions=positions, head=head, n_head=config.n_head)
    return gpt2.forward(params, tokens, config=config, attention_mask=attention_mask, interventions=(iv,))
