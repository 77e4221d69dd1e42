"""The checkpoint merge's fast path: whole-tensor statistics in numpy, then ONE compiled
elementwise kernel run over fixed-size flat chunks of every tensor.

Why (measured on the 2-core CPU, GPT-2 small, BUILD_NOTES / notes/merge.md): jitting each method
per tensor shape cost ~23 compiles (~5.5 s), and TIES's top-k by 32 bisection passes over the
float bits cost ~22 s for base + 3 models. Here:

* TIES / breadcrumbs thresholds: `np.partition` (introselect, O(n), ~60 ms for the 38.6M-entry
  embedding) gives the k-th largest magnitude; entries equal to it are kept by flat index up to a
  cut, so exactly k survive, the same entries as `sparsify.top_k_mask`.
* DARE masks: numpy's Philox-free default generator (PCG64), seeded by (seed, crc32(name), model
  index): ~10x cheaper on the CPU than threefry. Same distribution as `tree_merge.merge`'s
  jax.random masks, not the same bits.
* L1 norms (DARE's rescale) and slerp's norms and dot: numpy reductions in float32, dot products
  by blocks (`dot`): one float32 BLAS sdot over a whole 38.6M-entry tensor was 4.5e-4 off, which
  put slerp's output 2.9e-5 off (250 ulps; the in-memory `spherical.slerp` 6.6e-8).
* The rest is elementwise: `chunk`-entry slices (default 2**18) of every input go through a kernel
  that takes the per-tensor numbers (weights, thresholds, cut, rescale factors, slerp
  coefficients, chunk offset) as traced scalars, so one compile per kernel configuration serves
  every tensor. Tensors longer than a chunk end with a chunk that overlaps the previous one (no
  padding copy); shorter ones are zero-padded to a power of two (>= 1024), so GPT-2 needs three
  chunk lengths.

Axis names: n entries of one flattened tensor, C entries of a chunk, N models that are not the base.
Methods without an elementwise form (della, nuslerp, karcher, ...) are not handled here
(`supported`); the caller runs `registry.merge_tensor` on them.
"""

from __future__ import annotations

import functools
import threading
import zlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.merge import simple
from jaxinterp.merge.task_arithmetic import GTA_VARIANTS, GTAVariant, gta_combine

CHUNK = 1 << 18
_MIN_BUCKET = 1 << 10
_RESCALE_EPS = 1e-7  # as sparsify.rescale_l1
_POSINF = np.float32(3.0e38)  # as sparsify.top_k_mask: inf magnitudes count as 3e38, NaN as 0
STREAM_METHODS = frozenset({"linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
                            "breadcrumbs", "breadcrumbs_ties"})


class Piece(NamedTuple):
    """Output entries [offset + lo, offset + hi) of the flat tensor are `compute()[lo:hi]`.

    `compute` runs the chunk's kernel when called: XLA:CPU runs calls of this size inline in the
    calling thread, so the checkpoint merge calls them from a second thread (overlapping reading
    and the numpy statistics of the next tensor with this one's kernels)."""

    offset: int
    compute: Callable[[], jax.Array]  # -> [C] in the output dtype
    lo: int
    hi: int


def supported(method: str, dtype: str, n: int) -> bool:
    return method in STREAM_METHODS and dtype in ("float32", "float16", "bfloat16") and n < 2**31 - 2 * CHUNK


# ----------------------------------------------------------------------------- statistics (numpy)


def _magnitudes(tau: np.ndarray) -> np.ndarray:
    """|tau| in place (it becomes the partition scratch), NaN -> 0 and inf -> 3e38 like top_k_mask."""
    mag = np.abs(tau, out=tau)
    if not np.isfinite(mag.max(initial=0)):
        np.nan_to_num(mag, copy=False, nan=0.0, posinf=_POSINF)
    return mag


def topk_threshold(scratch: np.ndarray, k: int, magnitudes) -> tuple[np.float32, int]:
    """(thr, cut): entry j of the flat tensor is among its k largest magnitudes (ties by lowest
    index, as `sparsify.top_k_mask`) iff mag > thr or (mag == thr and j <= cut).

    `scratch` is a copy of the magnitudes that gets partitioned in place; `magnitudes()` gives them
    again in flat order, needed only when entries equal to the threshold must be split by index.
    """
    n = scratch.size
    if k <= 0:
        return np.float32(np.inf), -1
    if k >= n:
        return np.float32(-1.0), n
    scratch.partition(n - k)
    thr = scratch[n - k]
    if not np.count_nonzero(scratch[:n - k] == thr):
        return thr, n  # every entry equal to thr is among the top k
    room = k - int(np.count_nonzero(scratch[n - k:] > thr))
    return thr, int(np.flatnonzero(magnitudes() == thr)[room - 1])


class _Scratch:
    """Grow-only float32 buffers reused across tensors (fresh 150 MB arrays cost page faults)."""

    def __init__(self):
        self.bufs: dict[int, np.ndarray] = {}

    def __call__(self, which: int, n: int) -> np.ndarray:
        if self.bufs.get(which, np.empty(0, np.float32)).size < n:
            self.bufs[which] = np.empty(n, np.float32)
        return self.bufs[which][:n]


_LOCAL = threading.local()  # one scratch per thread that prepares tensors; kernels never see it


def _SCRATCH(which: int, n: int) -> np.ndarray:  # noqa: N802
    if not hasattr(_LOCAL, "scratch"):
        _LOCAL.scratch = _Scratch()
    return _LOCAL.scratch(which, n)


def _rng(seed: int, name: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode()), i])


_DOT_BLOCK = 1 << 14


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """<a, b> of flat float32 arrays: float32 BLAS dot products of 16K-entry blocks, summed in float64.
    One sdot over n entries accumulates in float32 lanes, its error growing with n (4.5e-4 relative
    for 38.6M entries, 3.7e-6 for 4M); by blocks 1.5e-10, at ~1.3x the time (14 ms for 38.6M)."""
    n = a.size
    return float(sum(float(np.dot(a[i:i + _DOT_BLOCK], b[i:i + _DOT_BLOCK])) for i in range(0, n, _DOT_BLOCK)))


def _l1_factor(before: float, after: float) -> np.float32:
    ok = before >= _RESCALE_EPS and after >= _RESCALE_EPS
    return np.float32(before) / np.float32(after) if ok else np.float32(1.0)


# ----------------------------------------------------------------------------- kernels (one compile per config)


def _in_top(mag, thr, cut, idx):
    return (mag > thr) | ((mag == thr) & (idx <= cut))


@functools.partial(jax.jit, static_argnames=("variant", "normalize", "rescale", "dtype", "out_dtype"))
def _gta_chunk(base, others, masks, w, lam, thr, cut, scale, offset, *, variant: GTAVariant, normalize: bool,
               rescale: bool, dtype: str, out_dtype: str):
    """[C] chunk of a generalized-task-arithmetic merge; thr/cut [N, 2], scale [N], w [N]."""
    b = base.astype(jnp.float32)
    idx = offset + jnp.arange(b.shape[0], dtype=jnp.int32)
    taus = []
    for i, x in enumerate(others):
        tau = x.astype(jnp.float32) - b
        sp = variant.sparsification
        if sp in ("magnitude", "magnitude_outliers"):
            mag = jnp.nan_to_num(jnp.abs(tau), posinf=3.0e38)
            keep = _in_top(mag, thr[i, 0], cut[i, 0], idx)
            if sp == "magnitude_outliers":
                keep = keep & ~_in_top(mag, thr[i, 1], cut[i, 1], idx)
        elif sp == "random":
            keep = masks[i]
        if sp:
            tau = tau * keep.astype(jnp.float32)
            if rescale:
                tau = tau * scale[i]
        taus.append(tau)
    y = gta_combine(b, taus, w, consensus=variant.consensus, normalize=normalize, lam=lam)
    return y.astype(dtype).astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("normalize", "dtype", "out_dtype"))
def _linear_chunk(xs, w, *, normalize: bool, dtype: str, out_dtype: str):
    return simple.linear(list(xs), [w[i] for i in range(len(xs))], normalize=normalize).astype(dtype).astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("dtype", "out_dtype"))
def _slerp_chunk(a, b, ca, cb, *, dtype: str, out_dtype: str):
    # spherical.slerp's last line, with ca/cb from the whole tensor (slerp_coefficients)
    return (ca * a.astype(jnp.float32) + cb * b.astype(jnp.float32)).astype(dtype).astype(out_dtype)


# ----------------------------------------------------------------------------- chunking


def _chunks(n: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """(offset, length, lo, hi) per chunk: full chunks, the last one overlapping; or one padded."""
    if n <= chunk:
        return [(0, max(_MIN_BUCKET, 1 << (n - 1).bit_length()), 0, n)]
    out = [(o, chunk, 0, chunk) for o in range(0, n - chunk + 1, chunk)]
    if n % chunk:
        out.append((n - chunk, chunk, chunk - n % chunk, chunk))
    return out


def _slice(x: np.ndarray, off: int, length: int) -> np.ndarray:
    if off + length <= x.size:
        return x[off:off + length]
    out = np.zeros(length, x.dtype)
    out[:x.size - off] = x[off:]
    return out


def slerp_coefficients(t: float, a: np.ndarray, b: np.ndarray, *, dot_threshold: float = 0.9995,
                       eps: float = 1e-8) -> tuple[np.float32, np.float32]:
    """spherical.slerp's (ca, cb) from numpy reductions over the whole tensor (`dot`)."""
    na, nb = float(np.sqrt(dot(a, a))), float(np.sqrt(dot(b, b)))
    na, nb = (na if na > eps else 1.0), (nb if nb > eps else 1.0)
    cos = min(max(dot(a, b) / (na * nb), -1.0), 1.0)
    if abs(cos) > dot_threshold:
        return np.float32(1 - t), np.float32(t)
    theta = np.arccos(cos)
    return np.float32(np.sin((1 - t) * theta) / np.sin(theta)), np.float32(np.sin(t * theta) / np.sin(theta))


def merge_flat(method: str, xs: list[np.ndarray], *, base_index: int | None, shared: dict, per_input: list[dict],
               seed: int, name: str, dtype: str, out_dtype: str, chunk: int | None = None) -> list[Piece]:
    """Prepares the merge of one tensor: the statistics are computed now, the chunks' kernels run
    when each Piece's `compute()` is called. `xs` are the flat inputs in the compute `dtype`
    (base at `base_index`)."""
    n = xs[0].size
    f32 = lambda x: x if x.dtype == np.float32 else x.astype(np.float32)  # noqa: E731
    if method == "linear":
        w = np.asarray([p["weight"] for p in per_input], np.float32)
        run = lambda off, ln: _linear_chunk(tuple(_slice(x, off, ln) for x in xs), w,  # noqa: E731
                                            normalize=bool(shared["normalize"]), dtype=dtype, out_dtype=out_dtype)
    elif method == "slerp":
        a, b = xs[base_index], xs[1 - base_index]
        ca, cb = slerp_coefficients(float(shared["t"]), f32(a), f32(b))
        run = lambda off, ln: _slerp_chunk(_slice(a, off, ln), _slice(b, off, ln), ca, cb,  # noqa: E731
                                           dtype=dtype, out_dtype=out_dtype)
    else:
        run = _gta_runner(method, xs, base_index, shared, per_input, seed, name, dtype, out_dtype, f32)
    return [Piece(off, functools.partial(run, off, ln), lo, hi) for off, ln, lo, hi in _chunks(n, chunk or CHUNK)]


def _gta_runner(method, xs, base_index, shared, per_input, seed, name, dtype, out_dtype, f32):
    variant = GTA_VARIANTS[method]
    base = xs[base_index]
    others = [x for i, x in enumerate(xs) if i != base_index]
    nb = [p for i, p in enumerate(per_input) if i != base_index]
    n, N = base.size, len(others)
    sp, rescale = variant.sparsification, bool(shared["rescale"])
    # column 0 (kept: the top k) -1: keep everything; column 1 (the outliers that breadcrumbs drops
    # from those) +inf: drop nothing, so a model left at density 1 keeps its whole task vector
    thr = np.stack([np.full(N, -1.0, np.float32), np.full(N, np.inf, np.float32)], 1)
    cut = np.stack([np.full(N, n, np.int32), np.full(N, -1, np.int32)], 1)
    scale = np.ones(N, np.float32)
    masks = []
    b32 = f32(base) if sp else None
    for i, x in enumerate(others):
        density = float(nb[i]["density"])
        if not sp or density >= 1:  # sparsify returns the task vector untouched
            if sp == "random":
                masks.append(np.ones(n, bool))
            continue
        tau = np.subtract(f32(x), b32, out=_SCRATCH(0, n))
        if sp == "random":
            u = _rng(seed, name, i).random(n, dtype=np.float32, out=_SCRATCH(1, n))
            m = np.less(u, np.float32(density))
            masks.append(m)
            if rescale:  # L1 norms; a dot with the 0/1 mask is far cheaper than sum(where=)
                np.abs(tau, out=tau)
                np.copyto(u, m)
                scale[i] = _l1_factor(float(tau.sum()), dot(tau, u))
            continue
        mag = _magnitudes(tau)
        again = lambda x=x: _magnitudes(np.subtract(f32(x), b32, out=_SCRATCH(1, n)))  # noqa: E731
        before = float(mag.sum()) if rescale else 0.0
        if sp == "magnitude":
            k = max(1, int(density * n))
            thr[i, 0], cut[i, 0] = topk_threshold(mag, k, again)
            kept = float(mag[n - k:].sum()) if k < n else before
        else:  # magnitude_outliers: ascending ranks [n_bot, n_bot + target) = top(n - n_bot) minus top(that - target)
            target = int(density * n)
            n_bot = max(0, n - target - int(float(nb[i]["gamma"]) * n))
            thr[i, 0], cut[i, 0] = topk_threshold(mag, n - n_bot, again)
            thr[i, 1], cut[i, 1] = topk_threshold(mag, n - n_bot - target, again)
            kept = float(np.sum(np.sort(mag)[n_bot:n_bot + target])) if rescale else 0.0
        if rescale:
            scale[i] = _l1_factor(before, kept)
        del tau, mag
    w = np.asarray([p["weight"] for p in nb], np.float32)
    lam = np.float32(shared["lambda"])
    normalize = bool(shared["normalize"])

    def run(off, ln):
        return _gta_chunk(_slice(base, off, ln), tuple(_slice(x, off, ln) for x in others),
                          tuple(_slice(m, off, ln) for m in masks), w, lam, thr, cut, scale, np.int32(off),
                          variant=variant, normalize=normalize, rescale=rescale and bool(sp), dtype=dtype,
                          out_dtype=out_dtype)

    return run
