"""Every (layer, tau, prompt) of a memory-injection sweep in one compiled call.

The work has a shape the naive loop ignores: the layers below the injection layer L do not depend
on L or tau, and block L's attention does not either (the memory is added to its output). So:

1. one base pass per prompt caches resid_mid (= resid_pre + attn_out) of every block, and the
   answer's probability before injection;
2. for each L, every (tau, prompt) pair is a row of one big batch: resid_mid[L] + tau * memory,
   block L's MLP, blocks L+1 .. n-2 in full, and of block n-1 only what the last position needs
   (keys and values at every position; query, W_O and MLP at the last one);
3. only the last position is unembedded, and only log p(answer) = logit[answer] - logsumexp, which
   comes back as it is (p = exp(log p) on the host: a float32 p underflows, its log does not).

Rows are processed in chunks of about `chunk_tokens` tokens by one `lax.scan` over all (L, chunk)
pairs; the blocks come from stacked weights indexed by the traced layer number, so one block body
is compiled whatever the number of layers. Prompts are left-padded to buckets of `bucket` tokens
(so the last real token is always at position P-1); each bucket is one scan in the same jit.

Axis names: N prompts, n layers, P positions, D d_model, V vocabulary, nL layers swept, nT taus,
C chunks, c rows per chunk.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxinterp import fingerprint
from jaxinterp.checks import is_integer
from jaxinterp.inject import layers as ly
from jaxinterp.transformer.gpt2 import GPT2Config, check_dtype

DEFAULT_TAUS = tuple(float(t) for t in range(1, 16))  # the paper's tweak factors 1..15


class SweepResult(NamedTuple):
    layers: np.ndarray  # [nL] injection layers
    taus: np.ndarray  # [nT] as given (float64; a float32 sweep applies them rounded to float32)
    p_before: np.ndarray  # [N] p(answer) on the obscure prompt
    p_after: np.ndarray  # [nL, nT, N] p(answer) with the memory injected
    p_explicit: np.ndarray | None  # [N] p(answer) on the explicit prompt (None if not given)
    # log p(answer), as computed (p = exp of these): a float32 p underflows to 0 below ~1e-45 (log p
    # < -103), the log-probability does not, so ratios of p are taken from these (`metrics`).
    # None in a result built without them.
    logp_before: np.ndarray | None = None  # [N]
    logp_after: np.ndarray | None = None  # [nL, nT, N]


class _Group(NamedTuple):
    """One bucket of prompts, left-padded to P positions (device arrays)."""

    tokens: Array  # [Ng, P] int32
    mask: Array  # [Ng, P] int32, 1 real 0 pad
    answer: Array  # [Ng] int32
    memory: Array  # [Ng, n, D] (one memory for all layers is broadcast: one program for both kinds)
    where: Array  # [Ng, P] float32 (float64 for a float64 model), 1 where the memory is injected
    chunk_layer: Array  # [C] int32
    chunk_prompt: Array  # [C, c] int32, index into the group
    chunk_tau: Array  # [C, c] float32 (float64 for a float64 model)


class _Plain(NamedTuple):
    tokens: Array  # [Ng, P]
    mask: Array
    answer: Array


_TRACES = [0]  # incremented each time the core is traced (tests check that a second call reuses it)


def _base(w: ly.Stacked, tokens: Array, mask: Array, answer: Array, *, config: GPT2Config) -> tuple[Array, Array]:
    """resid_mid of every block [n, Ng, P, D] and log p(answer) at the last position [Ng]."""
    allowed = ly.allowed_keys(mask)

    def step(x, i):
        wi = ly.layer(w, i)
        mid = x + ly.attention(wi, x, allowed, i, config=config)
        return mid + ly.mlp(wi, mid, config=config), mid

    x, mids = jax.lax.scan(step, ly.embed(w, tokens, mask), jnp.arange(config.n_layer))
    return mids, ly.answer_logprob(w, x[:, -1], answer, config=config)


def _injected(w: ly.Stacked, g: _Group, mids: Array, *, config: GPT2Config) -> Array:
    """log p(answer) for every row of every chunk: [C, c]."""
    n = config.n_layer

    def chunk(_, ch):
        L, pidx, tau = ch
        mask = g.mask[pidx]  # (c, P)
        m = g.memory[pidx, L]  # (c, D)
        x = mids[L, pidx] + tau[:, None, None] * g.where[pidx][:, :, None] * m[:, None, :]  # (c, P, D)
        wL = ly.layer(w, L)

        def last_layer(x):  # L == n-1: only the last position's MLP is left
            xl = x[:, -1]
            return xl + ly.mlp(wL, xl, config=config)

        def upper_layers(x):
            x = x + ly.mlp(wL, x, config=config)
            allowed = ly.allowed_keys(mask)
            x = jax.lax.fori_loop(L + 1, n - 1, lambda i, x: ly.block(ly.layer(w, i), x, allowed, i, config=config), x)
            return ly.last_block(ly.layer(w, n - 1), x, mask, n - 1, config=config)

        x_last = jax.lax.cond(L == n - 1, last_layer, upper_layers, x)
        return None, ly.answer_logprob(w, x_last, g.answer[pidx], config=config)

    _, logp = jax.lax.scan(chunk, None, (g.chunk_layer, g.chunk_prompt, g.chunk_tau))
    return logp


def _prepare(params: dict, groups: tuple[_Group, ...], explicit: tuple[_Plain, ...], *, config: GPT2Config):
    """The stacked weights, resid_mid [n, Ng, P, D] and log p_before [Ng] per group, log p(answer) per
    explicit group."""
    w = ly.stack(params, config)
    mids, before = [], []
    for g in groups:
        m, logp = _base(w, g.tokens, g.mask, g.answer, config=config)
        mids.append(m)
        before.append(logp)
    return w, mids, before, [_base(w, e.tokens, e.mask, e.answer, config=config)[1] for e in explicit]


def _core(params: dict, groups: tuple[_Group, ...], explicit: tuple[_Plain, ...], *, config: GPT2Config):
    """log p(answer): before [Ng] and after [C, c] per group, explicit [Ng] per explicit group."""
    _TRACES[0] += 1
    w, mids, before, expl = _prepare(params, groups, explicit, config=config)
    return before, [_injected(w, g, m, config=config) for g, m in zip(groups, mids)], expl


@functools.cache
def _core_jit():
    return jax.jit(_core, static_argnames=("config",))


# The same work in steps, for progress and resuming (`run(..., progress=True)` / `state=`): one call for
# the base passes, then one per (bucket, injection layer). A layer's chunks have the same shapes for
# every layer, so each bucket compiles one step program; the cost is moving resid_mid between calls.

def _bases(params: dict, groups: tuple[_Group, ...], explicit: tuple[_Plain, ...], *, config: GPT2Config):
    """`_prepare` as a step of its own (the stacked weights come back once, for the layer steps)."""
    _TRACES[0] += 1
    return _prepare(params, groups, explicit, config=config)


def _layer_step(w: ly.Stacked, g: _Group, mids: Array, *, config: GPT2Config) -> Array:
    _TRACES[0] += 1
    return _injected(w, g, mids, config=config)


@functools.cache
def _steps_jit():
    return (jax.jit(_bases, static_argnames=("config",)), jax.jit(_layer_step, static_argnames=("config",)))


# ----------------------------------------------------------------------------------------------
# Planning (numpy, outside jit): buckets, padding, chunks.

def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _buckets(lengths: Sequence[int], bucket: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        out.setdefault(_round_up(n, bucket), []).append(i)
    return dict(sorted(out.items()))


def _left_pad(seqs: Sequence[np.ndarray], P: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((n_rows, P), np.int32)
    mask = np.zeros((n_rows, P), np.int32)
    for r in range(n_rows):
        s = seqs[r] if r < len(seqs) else seqs[0]  # filler rows repeat the first prompt
        tokens[r, P - len(s):] = s
        mask[r, P - len(s):] = 1
    return tokens, mask


def _chunks(n_prompts: int, n_slots: int, layers: Sequence[int], taus: np.ndarray, P: int, chunk_tokens: int):
    """Rows (tau, prompt) per layer, cut into equal chunks: layer [C], prompt [C, c], tau [C, c],
    and the (layer index, tau index, prompt index, valid) of every row for scattering back.

    C and c follow from the group's padded row count `n_slots`, not from the `n_prompts` real prompts,
    so every prompt count that pads to the same rows has the same shapes (one program). The real
    rows come first; the rest (at most n_slots - n_prompts per tau, plus < 1 chunk row) are invalid
    and their results are dropped."""
    rows_cap = len(taus) * n_slots
    per_chunk_max = max(1, chunk_tokens // P)
    n_ch = math.ceil(rows_cap / per_chunk_max)
    c = math.ceil(rows_cap / n_ch)
    rows = len(taus) * n_prompts
    t_idx = np.repeat(np.arange(len(taus)), n_prompts)
    p_idx = np.tile(np.arange(n_prompts), len(taus))
    pad = n_ch * c - rows
    t_idx = np.concatenate([t_idx, np.zeros(pad, int)])
    p_idx = np.concatenate([p_idx, np.zeros(pad, int)])
    valid = np.arange(n_ch * c) < rows
    tau_rows = np.where(valid, taus[t_idx], 0.0).astype(taus.dtype)
    C = n_ch * len(layers)
    return (np.repeat(np.asarray(layers, np.int32), n_ch),
            np.tile(p_idx.reshape(n_ch, c), (len(layers), 1)).astype(np.int32),
            np.tile(tau_rows.reshape(n_ch, c), (len(layers), 1)),
            (np.repeat(np.arange(len(layers)), n_ch * c).reshape(C, c),
             np.tile(t_idx.reshape(n_ch, c), (len(layers), 1)),
             np.tile(p_idx.reshape(n_ch, c), (len(layers), 1)),
             np.tile(valid.reshape(n_ch, c), (len(layers), 1))))


def _work_dtype(config: GPT2Config) -> type:
    return np.float64 if jnp.dtype(config.dtype) == jnp.float64 else np.float32


def check_tokens(seqs, config: GPT2Config, what: str) -> list[np.ndarray]:
    """The prompts `what` as int32 arrays; ValueError naming the row of an empty one, ids outside the
    vocabulary or more tokens than the context (needs only the config: the CLI checks before loading)."""
    if len(seqs) == 0:
        raise ValueError(f"{what}: expected at least one prompt, got none")
    out = []
    for i, s in enumerate(seqs):
        s = np.asarray(s)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"{what}: row {i}: expected a non-empty 1-D list of token ids, got shape {list(s.shape)}")
        if not np.issubdtype(s.dtype, np.integer):
            raise ValueError(f"{what}: row {i}: expected integer token ids, got dtype {s.dtype}")
        if s.min() < 0 or s.max() >= config.vocab_size:
            raise ValueError(f"{what}: row {i}: ids must lie in [0, {config.vocab_size}), got {s.min()}..{s.max()}")
        if s.size > config.n_positions:
            raise ValueError(f"{what}: row {i}: {s.size} tokens, the model takes at most {config.n_positions}")
        out.append(s.astype(np.int32))
    return out


def check_answers(answers, n: int, config: GPT2Config) -> np.ndarray:
    """The answers' first tokens [n] as an array; ValueError unless they are n integer ids in the vocabulary
    (needs only the config: the CLI checks before loading)."""
    a = np.asarray(answers)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"answers: expected {n} token ids in [0, {config.vocab_size}), got shape {list(a.shape)} "
                         f"of dtype {a.dtype}")
    bad = np.nonzero((a < 0) | (a >= config.vocab_size))[0]
    if bad.size:
        raise ValueError(f"answers: expected {n} token ids in [0, {config.vocab_size}), got id {int(a[bad[0]])} "
                         f"in row {int(bad[0])}")
    return a


def _positions_mask(positions, seqs: list[np.ndarray]) -> list[np.ndarray]:
    if positions is None:
        return [np.ones(len(s), np.float32) for s in seqs]
    if len(positions) != len(seqs):
        raise ValueError(f"positions: expected one list per prompt ({len(seqs)}), got {len(positions)}")
    out = []
    for i, (pos, s) in enumerate(zip(positions, seqs)):
        arr = np.asarray(pos)
        if arr.size and (arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer)):
            # Indices, unlike the [P] boolean masks of `injection`: a mask [F, F, F, T] read as indices
            # injected at positions 0 and 1, and 2.7 became 2.
            raise ValueError(f"positions: row {i}: expected a list of integer positions (indices into the "
                             f"prompt), got {arr.dtype} values of shape {list(arr.shape)}")
        w = np.zeros(len(s), np.float32)
        for p in pos:
            if not -len(s) <= int(p) < len(s):
                raise ValueError(f"positions: row {i}: position {p} outside the prompt's {len(s)} tokens")
            w[int(p)] = 1.0
        out.append(w)
    return out


class Plan(NamedTuple):
    """A sweep's padded, bucketed inputs (device arrays) and how to scatter its outputs back."""

    groups: tuple  # _Group per bucket
    plain: tuple  # _Plain per bucket of explicit prompts
    books: list  # per group: (prompt indices, (layer idx, tau idx, prompt idx, valid) per row)
    plain_idx: list
    layers: np.ndarray
    taus: np.ndarray  # in the sweep's dtype, as applied
    n_prompts: int
    tau_values: np.ndarray | None = None  # [nT] float64, as given: the result's labels (None: `taus`)


def sweep(params: dict, prompts: Sequence[Sequence[int]], memories: Array, layers: Sequence[int] | None = None,
          taus: Sequence[float] = DEFAULT_TAUS, *, config: GPT2Config, answers: Sequence[int],
          explicit: Sequence[Sequence[int]] | None = None, positions: Sequence[Sequence[int]] | None = None,
          bucket: int = 8, chunk_tokens: int = 2048, progress: bool = False,
          state: str | os.PathLike | None = None, keep_state: bool = False) -> SweepResult:
    """p(answer) for every injection layer x tau x prompt, in one compiled call.

    Args:
      params: GPT-2 params (processed, as `load_gpt2(..., process_weights=True)` returns, as the paper).
      prompts: N token-id sequences (BOS first), of any lengths up to n_positions.
      memories: [N, D] memory vectors (`memory_vectors`), or [N, n, D] one per layer ("layer" kind).
      layers: injection layers (default all); taus: scales (default 1..15).
      answers: [N] the answer's first token id.
      explicit: N explicit prompts (token ids) for p_explicit, optional.
      positions: per prompt, the positions (indices into its tokens, negatives from the end) that
        receive the memory; None means every position (the paper).
      bucket: prompts are left-padded to a multiple of this; chunk_tokens: rows per scan step x P.
      progress, state: run in steps with a progress bar, saving finished layers to the file `state`
        to resume an interrupted sweep (see `run`); keep_state: leave the finished state in place
        (a caller with more work after this sweep removes it once all is done).

    Returns: SweepResult with p_before [N], p_after [nL, nT, N], p_explicit [N] or None, and the
    log-probabilities logp_before [N], logp_after [nL, nT, N] they are exp of.
    """
    return run(params, plan(prompts, memories, layers, taus, config=config, answers=answers, explicit=explicit,
                            positions=positions, bucket=bucket, chunk_tokens=chunk_tokens), config=config,
               progress=progress, state=state, keep_state=keep_state)


def _as_list(values, name: str, what: str) -> list:
    if isinstance(values, (str, bytes)) or (hasattr(values, "__array__") and np.ndim(values) != 1):
        raise ValueError(f"{name}: expected a list of {what}, got {values!r}")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{name}: expected a list of {what}, got {values!r}") from None


def plan(prompts, memories, layers=None, taus=DEFAULT_TAUS, *, config: GPT2Config, answers, explicit=None,
         positions=None, bucket: int = 8, chunk_tokens: int = 2048) -> Plan:
    """Checks the inputs of `sweep` (ValueError naming the argument and row) and pads them into buckets."""
    check_dtype(config)  # a float64 config under 32-bit JAX: refused here as in the model
    seqs = check_tokens(prompts, config, "prompts")
    N = len(seqs)
    # a float bucket failed in numpy's padding ('float' object cannot be interpreted as an integer), a scalar
    # tau or layer in list() (not iterable): TypeErrors from inside; True was a bucket of 1
    if not (is_integer(bucket) and is_integer(chunk_tokens)) or bucket < 1 or chunk_tokens < 1:
        raise ValueError(f"bucket and chunk_tokens: expected positive integers, got {bucket!r}, {chunk_tokens!r}")
    layers = list(range(config.n_layer)) if layers is None else _as_list(layers, "layers", "injection layers")
    taus = _as_list(taus, "taus", "scales")
    if not layers:
        raise ValueError("layers: expected at least one layer, got none")
    for L in layers:
        if not is_integer(L) or not 0 <= int(L) < config.n_layer:
            raise ValueError(f"layers: layer {L!r} out of range, the model has {config.n_layer} blocks (0..{config.n_layer - 1})")
    # float64 for a float64 model (x64 on): the taus, memories and probabilities of float32 were 1e-7 off
    # its own float64 forward; float32 otherwise
    work = _work_dtype(config)
    if np.asarray(taus).dtype.kind not in "iuf":  # numpy read ["2"] as 2.0, [True] as 1.0
        raise ValueError(f"taus: expected a non-empty list of finite numbers, got {taus!r}")
    taus_given = np.asarray(taus, np.float64)
    with np.errstate(over="ignore"):
        taus_arr = taus_given.astype(work)
    if taus_given.ndim != 1 or taus_given.size == 0 or not np.all(np.isfinite(taus_arr)):  # 1e39: inf in float32
        raise ValueError(f"taus: expected a non-empty list of finite numbers, got {taus!r}")
    # numpy until the groups are built: eager jnp ops here would compile once per prompt count
    memories = np.asarray(memories, work)
    if memories.ndim == 2:
        memories = memories[:, None]
    if memories.ndim != 3 or memories.shape[0] != N or memories.shape[1] not in (1, config.n_layer) \
            or memories.shape[2] != config.n_embd:
        raise ValueError(f"memories: expected shape [{N}, {config.n_embd}] or [{N}, {config.n_layer}, {config.n_embd}], "
                         f"got {list(memories.shape)}")
    bad = np.nonzero(~np.isfinite(memories).all(axis=(1, 2)))[0]
    if bad.size:  # a NaN memory made that prompt's every cell NaN, and the aggregates with it
        raise ValueError(f"memories: expected finite values, got NaN or inf in the memory of row {int(bad[0])}")
    memories = np.broadcast_to(memories, (N, config.n_layer, config.n_embd))
    answers = check_answers(answers, N, config)
    expl = None if explicit is None else check_tokens(explicit, config, "explicit")
    if expl is not None and len(expl) != N:
        raise ValueError(f"explicit: expected one explicit prompt per prompt ({N}), got {len(expl)}")
    where = _positions_mask(positions, seqs)

    groups, books = [], []
    for P, idx in _buckets([len(s) for s in seqs], bucket).items():
        P = min(P, config.n_positions)
        # Prompt counts round up to 8 rows, and the chunks below are sized from those rows: one
        # program for every count in a block of 8, at most 7 wasted prompts' rows per bucket.
        n_rows = _round_up(len(idx), 8)
        tokens, mask = _left_pad([seqs[i] for i in idx], P, n_rows)
        wh = np.zeros((n_rows, P), work)
        for r, i in enumerate(idx):
            wh[r, P - len(seqs[i]):] = where[i]
        sel = np.concatenate([idx, np.full(n_rows - len(idx), idx[0])])
        ch_layer, ch_prompt, ch_tau, book = _chunks(len(idx), n_rows, layers, taus_arr, P, chunk_tokens)
        groups.append(_Group(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(answers[sel], jnp.int32),
                             jnp.asarray(memories[sel]), jnp.asarray(wh), jnp.asarray(ch_layer),
                             jnp.asarray(ch_prompt), jnp.asarray(ch_tau)))
        books.append((idx, book))
    plain, plain_idx = [], []
    if expl is not None:
        for P, idx in _buckets([len(s) for s in expl], bucket).items():
            P = min(P, config.n_positions)
            n_rows = _round_up(len(idx), 8)
            tokens, mask = _left_pad([expl[i] for i in idx], P, n_rows)
            sel = np.concatenate([idx, np.full(n_rows - len(idx), idx[0])])
            plain.append(_Plain(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(answers[sel], jnp.int32)))
            plain_idx.append(idx)

    return Plan(tuple(groups), tuple(plain), books, plain_idx, np.asarray(layers), taus_arr, N, taus_given)


def compile_plan(params: dict, p: Plan, *, config: GPT2Config):
    """Compiles the sweep for `p`'s shapes ahead of time (for timing compilation apart)."""
    return _core_jit().lower(params, p.groups, p.plain, config=config).compile()


def run(params: dict, p: Plan, *, config: GPT2Config, compiled=None, progress: bool = False,
        state: str | os.PathLike | None = None, keep_state: bool = False) -> SweepResult:
    """Runs a planned sweep and scatters the probabilities back per prompt.

    By default one compiled call (`compiled` from `compile_plan` if given). With `progress` (a tqdm bar
    on stderr) or `state` (a file), it runs in steps instead, one per (bucket, injection layer), with
    the same numbers: after every step the finished layers are saved atomically to `state`, and a run
    given the state of an interrupted run of the same plan and weights skips them (a state of another
    plan or model is ignored and replaced; the file is removed at the end, unless `keep_state`: then a
    run of the same plan again computes nothing but the base passes).
    """
    if progress or state is not None:
        if compiled is not None:
            raise ValueError("compiled: a precompiled sweep runs in one call; leave progress and state off")
        before, after, ex = _run_steps(params, p, config=config, progress=progress, state=state,
                                       keep_state=keep_state)
    elif compiled is not None:
        before, after, ex = compiled(params, p.groups, p.plain)
    else:
        before, after, ex = _core_jit()(params, p.groups, p.plain, config=config)
    books, plain_idx, layers, taus_arr, N = p.books, p.plain_idx, p.layers, p.taus, p.n_prompts
    expl = p.plain or None

    logp_before = np.zeros(N, taus_arr.dtype)
    logp_after = np.zeros((len(layers), len(taus_arr), N), taus_arr.dtype)
    for (idx, (li, ti, pi, valid)), b, a in zip(books, before, after):
        idx = np.asarray(idx)
        logp_before[idx] = np.asarray(b)[:len(idx)]
        logp_after[li[valid], ti[valid], idx[pi[valid]]] = np.asarray(a)[valid]
    p_explicit = None
    if expl is not None:
        p_explicit = np.zeros(N, taus_arr.dtype)
        for idx, e in zip(plain_idx, ex):
            p_explicit[np.asarray(idx)] = np.exp(np.asarray(e)[:len(idx)])
    # the taus as given label the result: float32's 0.1 (0.10000000149) is not the 0.1 asked for, and it
    # was the tau of the best cells and of summary.json
    labels = taus_arr if p.tau_values is None else p.tau_values
    return SweepResult(np.asarray(layers), labels, np.exp(logp_before), np.exp(logp_after), p_explicit,
                       logp_before, logp_after)


def _fingerprint(params: dict, p: Plan, config: GPT2Config) -> str:
    """What a saved state must match: the config, every weight and every input array of the plan.
    The weights are hashed too: memories come from the embedding or unembedding alone, so two models
    that share them (a fine-tune with frozen embeddings, a merge) give the same plan (~0.3 s a
    GPT-2 small)."""
    # "logp": the saved values are log-probabilities (states of before they were, holding p, are
    # another sweep's and replaced, not read as log p)
    h = fingerprint.update(hashlib.sha256(b"logp" + repr(config).encode()), (params, p.groups, p.plain))
    h.update(np.asarray(p.layers).tobytes() + p.taus.tobytes())
    return h.hexdigest()


def _check_state_path(path: Path) -> None:
    """Refuses a state path that cannot be written before anything is computed (the first save, after
    the base passes and a layer, failed on it)."""
    if path.exists() and not path.is_file():
        raise ValueError(f"state: expected a file name, got {str(path)!r} (a folder or other non-file)")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"state: expected a file name in a folder, got {str(path)!r} ({str(folder)!r} is a file)")


def _run_steps(params: dict, p: Plan, *, config: GPT2Config, progress: bool, state, keep_state: bool = False):
    from tqdm import tqdm

    from jaxinterp import atomic

    nL = len(p.layers)
    if state is not None:
        _check_state_path(Path(state))
    key = _fingerprint(params, p, config) if state is not None else None  # hashing the weights costs time
    done = np.zeros((len(p.groups), nL), bool)
    after = [np.zeros(np.shape(g.chunk_tau), p.taus.dtype) for g in p.groups]  # log p [C, c] per group, layer-major
    if state is not None and Path(state).is_file():
        try:
            with np.load(state) as z:
                if str(z["fingerprint"]) == key:
                    done = z["done"].copy()
                    after = [z[f"after_{i}"].copy() for i in range(len(p.groups))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            # not replaced: it may be the user's own file, named by mistake
            raise ValueError(f"state: expected a sweep state file (or a new name), got {str(state)!r}, which is "
                             f"not one ({type(e).__name__}: {e})") from None
    bases, layer_step = _steps_jit()
    w, mids, before, ex = bases(params, p.groups, p.plain, config=config)
    bar = tqdm(total=done.size, initial=int(done.sum()), desc="injection sweep (bucket x layer)", unit="step", disable=not progress)
    for gi, g in enumerate(p.groups):
        # sliced on the host: slicing the device arrays would compile a slice program per layer
        ch_layer, ch_prompt, ch_tau = (np.asarray(a) for a in (g.chunk_layer, g.chunk_prompt, g.chunk_tau))
        n_ch = len(ch_layer) // nL  # chunks of one layer (the same for every layer)
        for li in range(nL):
            if done[gi, li]:
                continue
            rows = slice(li * n_ch, (li + 1) * n_ch)
            one = g._replace(chunk_layer=ch_layer[rows], chunk_prompt=ch_prompt[rows], chunk_tau=ch_tau[rows])
            after[gi][rows] = np.asarray(layer_step(w, one, mids[gi], config=config))
            done[gi, li] = True
            if state is not None:
                buf = io.BytesIO()
                np.savez(buf, fingerprint=key, done=done, **{f"after_{i}": a for i, a in enumerate(after)})
                atomic.write_bytes(state, buf.getvalue())
            bar.update(1)
    bar.close()
    if state is not None and not keep_state:
        Path(state).unlink(missing_ok=True)
    return before, after, ex


def trace_count() -> int:
    """How many times the sweep core has been traced (compiled) in this process."""
    return _TRACES[0]


def sweep_flops(config: GPT2Config, lengths: Sequence[int], layers: Sequence[int], n_taus: int,
                explicit_lengths: Sequence[int] = ()) -> float:
    """The useful FLOPs of a sweep (real tokens only, no padding, matmuls and attention):
    the base pass of every prompt (and explicit prompt), and per (layer L, tau, prompt) block L's MLP,
    blocks L+1..n-2, the last block's keys and values (plus its last position) and one unembedding."""
    D, M, V, n = config.n_embd, config.d_mlp, config.vocab_size, config.n_layer
    mlp = 4 * D * M  # per token
    full = 8 * D * D + mlp  # per token: QKV, W_O, MLP

    def attn(T):  # q.k and pattern.v over the causal pairs
        return 2 * D * T * (T + 1)

    def base(T):
        return n * (T * full + attn(T)) + 2 * D * V

    total = float(sum(base(T) for T in lengths) + sum(base(T) for T in explicit_lengths))
    for T in lengths:
        for L in layers:
            if L == n - 1:
                f = mlp
            else:
                f = T * mlp + (n - 2 - L) * (T * full + attn(T))
                f += T * 4 * D * D + 4 * D * D + 4 * D * T + mlp  # last block: K, V everywhere; Q, W_O, MLP at the end
            total += n_taus * (f + 2 * D * V)
    return total
