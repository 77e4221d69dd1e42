"""Reading lenses out: for each head, the top-k tokens of its lens beside the top-k of the plain logit
lens (x_h @ W_U + b_U) on the same head output, at the prompt's last token; scores over layers x
heads (e.g. the share of a head's top-50 tokens found in a word list, the original's toxic-head
study) as a table, CSV and heatmap.

Axis names: L layers, H heads, k top-k.
"""

from __future__ import annotations

import csv
import functools
import io
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.checks import is_integer
from jaxinterp.kernels import chunked_vocab
from jaxinterp.lens import lenses
from jaxinterp.lens.io import check_fits
from jaxinterp.lens.lenses import LensConfig, check_params
from jaxinterp.transformer import gpt2


class HeadTopK(NamedTuple):
    lens_ids: np.ndarray  # [H, k] the lens's top tokens, best first
    logit_ids: np.ndarray  # [H, k] the plain logit lens's
    lens_logprob: np.ndarray  # [H, k] log-softmax of the lens at those tokens
    logit_logprob: np.ndarray  # [H, k]


def _head_topk(model_params, lens, tokens, mask, last, *, model_config, lens_config: LensConfig, k: int, chunk: int):
    L = lens_config.layer
    names = (f"blocks.{L}.attn.hook_result", f"blocks.{L}.hook_resid_pre")
    resid = gpt2.embed(model_params, tokens, mask, config=model_config)
    _, cache = gpt2.blocks(model_params, resid, mask, config=model_config, stop=L + 1, names=names)
    at_last = lambda a: jax.lax.dynamic_index_in_dim(a, last, axis=1, keepdims=False)  # noqa: E731
    result = at_last(cache[names[0]])  # (1, H, D) at the last real token
    resid_pre = at_last(cache[names[1]]) if lens_config.needs_resid else None

    def top(xs, Ws, b):
        t = chunked_vocab.top_k(xs, Ws, b, k, chunk=chunk)
        return t.indices[0], chunked_vocab.log_softmax_at(xs, Ws, b, t.indices, chunk=chunk)[0]

    lens_ids, lens_lp = lenses.per_head(top, lens, result, resid_pre, lens_config)
    W_U, b_U = lenses.unembedding(model_params, model_config)
    logit_ids, logit_lp = jax.vmap(lambda x: top((x,), (W_U,), b_U))(jnp.moveaxis(result, 1, 0))
    return lens_ids, logit_ids, lens_lp, logit_lp


@functools.cache
def _head_topk_jit():
    # Built on first use, compiled once per (model, lens, k) configuration.
    return jax.jit(_head_topk, static_argnames=("model_config", "lens_config", "k", "chunk"))


def check_prompt(ids: Sequence[int], model_config) -> None:
    if len(ids) == 0:
        raise ValueError("prompt: expected at least one token, got an empty prompt")
    if len(ids) > model_config.n_positions:
        raise ValueError(f"prompt: {len(ids)} tokens is longer than the model's context of "
                         f"{model_config.n_positions} positions")
    # an id past the vocabulary gave NaN scores, a negative one wrapped to another token: both silently
    # not True either: a bool is no token (it read as id 1)
    bad = [i for i in ids if not (is_integer(i) and 0 <= i < model_config.vocab_size)]
    if bad:
        raise ValueError(f"prompt: expected integer token ids in [0, {model_config.vocab_size}), got {bad[:5]}")


def head_topk(model_params: dict, model_config, lens: dict, lens_config: LensConfig, ids: Sequence[int], *,
              k: int = 10, chunk: int = chunked_vocab.DEFAULT_CHUNK) -> HeadTopK:
    """Top-k tokens of every head's lens and of its plain logit lens at the last token of `ids`.

    ValueError, before anything is computed, if the lens does not fit the model (another vocabulary,
    width, head count or a layer the model lacks), the prompt is empty or longer than the context, or
    k or chunk is out of range."""
    check_params(lens, lens_config)
    check_fits(lens_config, model_config, source="given to head_topk")
    check_prompt(ids, model_config)
    if not is_integer(k) or not 1 <= k <= model_config.vocab_size:
        raise ValueError(f"k: expected 1 <= k <= {model_config.vocab_size}, got {k!r}")
    chunked_vocab.check_chunk(chunk)
    # Right-padded to a power of two (at most the context), so prompts of different lengths share a
    # few compiled shapes; causal attention keeps the padding out of the real positions.
    n = len(ids)
    P = min(max(8, 1 << (n - 1).bit_length()), model_config.n_positions)
    tokens = np.zeros((1, P), np.int32)
    tokens[0, :n] = list(ids)
    mask = (np.arange(P) < n).astype(np.int32)[None]
    out = _head_topk_jit()(model_params, lens, jnp.asarray(tokens), jnp.asarray(mask), jnp.int32(n - 1),
                           model_config=model_config, lens_config=lens_config, k=k, chunk=chunk)
    return HeadTopK(*(np.asarray(a) for a in out))


def decode_ids(tokenizer, ids: np.ndarray) -> list:
    """Token strings of an id array (any shape), as nested lists."""
    flat = [tokenizer.decode([int(i)]) for i in np.asarray(ids).reshape(-1)]
    return np.asarray(flat, dtype=object).reshape(np.shape(ids)).tolist()


def word_share(tokens: Sequence[Sequence[str]], words: set[str]) -> np.ndarray:
    """[H] share of each head's tokens whose stripped lower-case form is in `words`."""
    return np.asarray([np.mean([t.strip().lower() in words for t in row]) for row in tokens])


def overlap_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H] share of a's top-k ids also among b's (how far a lens moved from the logit lens)."""
    return np.asarray([len(set(x.tolist()) & set(y.tolist())) / len(x) for x, y in zip(a, b)])


def read_words(path) -> set[str]:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"words: {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:  # a ValueError, but naming neither the file nor what was expected
        raise ValueError(f"words: expected UTF-8 text, got {p} with {e.reason} at byte {e.start}") from e
    words = {w.strip().lower() for w in text.splitlines() if w.strip()}
    if not words:
        raise ValueError(f"words: {p} holds no word")
    return words


def rows_for_table(layer: int, lens_tok: list, logit_tok: list, score: np.ndarray | None = None) -> list[list]:
    out = []
    for h, (a, b) in enumerate(zip(lens_tok, logit_tok)):
        row = [layer, h, " ".join(repr(t) for t in a), " ".join(repr(t) for t in b)]
        out.append(row + ([float(score[h])] if score is not None else []))
    return out


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # the project's line end (csv's default is CRLF), as inject's
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def heatmap(scores: dict[str, np.ndarray], *, title: str, layers: Sequence[int]):
    """A matplotlib figure with one panel per named [L, H] score array (NaN = no lens for that layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 0.45 * len(layers) + 2.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        im = ax.imshow(np.ma.masked_invalid(s), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(s.shape[1]))
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10, y=1.04)
    return fig
