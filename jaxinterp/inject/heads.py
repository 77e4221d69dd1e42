"""Per-head analysis: what each attention head writes at the last position, read as tokens.

For a prompt, every head's `hook_result` at the last position (after W_O, before the head sum) is
mapped to vocabulary logits by a lens and its top-k tokens are listed: the heads whose top tokens
hold the bridge entity on the explicit prompt, and lack it on the obscure one, are where a memory
is missing. The default lens is the logit lens as the paper applied it (`x @ W_U + b_U`, no final
layer norm); any callable `lens(layer, vectors [H, D]) -> logits [H, V]` can replace it, e.g. a
trained Attention Lens.

Axis names: n layers, H heads, D d_model, V vocabulary, k top tokens.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxinterp.checks import is_integer
from jaxinterp.inject.memory import unembedding
from jaxinterp.transformer import gpt2
from jaxinterp.transformer.gpt2 import GPT2Config

Lens = Callable[[int, Array], Array]


class HeadTokens(NamedTuple):
    ids: np.ndarray  # [n, H, k] top token ids of each head
    logits: np.ndarray  # [n, H, k] their lens logits


def logit_lens(params: dict, config: GPT2Config) -> Lens:
    W_U, b_U = unembedding(params, config)
    return lambda layer, x: x @ W_U + b_U


# Prompts are left-padded to a multiple of HEAD_BUCKET positions (with an attention mask, so the real
# positions are exact): one compiled forward per bucket instead of one per prompt length.
HEAD_BUCKET = 8


def head_outputs(params: dict, tokens: Sequence[int], *, config: GPT2Config, position: int = -1) -> Array:
    """[n, H, D]: every head's hook_result at `position` of the prompt `tokens`, run as given: BOS is
    the caller's choice (the reference's `interpret_attn.py` ran GPT-2 prompts without it; the demo
    passes it, as its toy model was trained with it)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens: expected a non-empty 1-D list of token ids, got shape {list(tokens.shape)}")
    n = tokens.size
    if n > config.n_positions:
        raise ValueError(f"tokens: {n} tokens, the model takes at most n_positions={config.n_positions}")
    if not is_integer(position) or not -n <= position < n:
        # jnp indexing clamps: position 10 of a 4-token prompt read the last position's heads
        raise ValueError(f"position: expected an index into the prompt's {n} tokens (-{n}..{n - 1}), got {position!r}")
    P = min(-(-n // HEAD_BUCKET) * HEAD_BUCKET, config.n_positions)
    padded, mask = np.zeros((1, P), tokens.dtype), np.zeros((1, P), np.int32)
    padded[0, P - n:], mask[0, P - n:] = tokens, 1
    names = tuple(f"blocks.{i}.attn.hook_result" for i in range(config.n_layer))
    _, cache = gpt2.run_with_cache(params, padded, config=config, names=names, attention_mask=mask)
    at = P - n + int(position) % n
    return jnp.stack([cache[name][0, at] for name in names])


def head_top_tokens(params: dict, tokens: Sequence[int], *, config: GPT2Config, k: int = 10,
                    lens: Lens | None = None, position: int = -1) -> HeadTokens:
    """Top-k tokens of each head's output through `lens` (default: the logit lens)."""
    if not is_integer(k) or not 1 <= k <= config.vocab_size:
        raise ValueError(f"k: expected an int in 1..{config.vocab_size}, got {k!r}")
    lens = lens or logit_lens(params, config)
    out = head_outputs(params, tokens, config=config, position=position)
    vals, ids = zip(*(jax.lax.top_k(lens(i, out[i]), k) for i in range(config.n_layer)))
    return HeadTokens(np.asarray(jnp.stack(ids)), np.asarray(jnp.stack(vals)))


def heads_with_tokens(top: HeadTokens, ids: Sequence[int]) -> list[tuple[int, int]]:
    """(layer, head) pairs whose top-k holds any of `ids` (e.g. the memory's tokens)."""
    hit = np.isin(top.ids, np.asarray(list(ids))).any(-1)
    return [(int(a), int(b)) for a, b in zip(*np.nonzero(hit))]
