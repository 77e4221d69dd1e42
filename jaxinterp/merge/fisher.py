"""Data-aware merges: Fisher merging and RegMean.

* Fisher merging (Matena & Raffel 2022): theta = sum_i w_i F_i theta_i / sum_i w_i F_i per entry,
  F_i the diagonal Fisher of model i, E_x[(d log p(y|x) / d theta)^2] with y the label
  (empirical Fisher) or drawn from the model. As in the paper's code with favor_target_model=False
  (its default floors the first model's F only), each F is floored at `eps` (1e-6; max(F, eps), so
  an entry no model's data touched gets the weighted mean); every F must be finite and >= 0. With
  `normalize` (the code's `normalize_fishers`; off by default, the paper's formula), w_i is divided
  by the L2 norm of model i's whole Fisher, so no model dominates by the scale of its Fisher alone.
* RegMean (Jin et al. 2023): for each linear layer with kernel W_i [in, out] and the Gram matrix of
  its inputs G_i = X_i^T X_i [in, in], W = (sum_i G~_i)^{-1} sum_i G~_i W_i, where
  G~ = alpha G + (1 - alpha) diag(G) (alpha 0.9 by default) regularises the inverse. Leaves
  without a Gram matrix are averaged (as `soups.uniform_soup`: integer leaves copied when equal).
  Each G_i must be a Gram matrix by its values too (finite, symmetric, diagonal >= 0: X itself is
  refused) and is used in float32.

Axis names: N examples, C classes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.checks import is_integer
from jaxinterp.merge import tree


def diagonal_fisher(logits_fn: Callable[[Any, jax.Array], jax.Array], params: Any, inputs: jax.Array, *,
                    labels: jax.Array | None = None, key: jax.Array | None = None, chunk: int = 32) -> Any:
    """Diagonal Fisher of `logits_fn(params, x [N, ...]) -> [N, C]`, as a tree like params.

    With `labels`, the empirical Fisher; otherwise labels are sampled from the model with `key`.
    One gradient per example, squared, summed in float32 and averaged: `chunk` examples' gradients
    are vmapped at a time (a scan over chunks), so memory holds `chunk` gradients, not N (all N at
    once took N copies of the params: 1.1 GB of temporaries for 1024 examples of a 0.3M-parameter
    MLP, 0.5 GB per example for GPT-2 small).
    """
    if labels is None and key is None:
        raise ValueError("labels/key: expected labels [N] (empirical Fisher) or a key to sample them, got neither")
    if not is_integer(chunk) or chunk < 1:
        raise ValueError(f"chunk: expected a positive number of examples per vmapped chunk, got {chunk!r}")
    shape = getattr(inputs, "shape", None)
    if shape is not None and (len(shape) == 0 or shape[0] == 0):  # the mean over no example: NaN Fishers
        raise ValueError(f"inputs: expected at least one example [N >= 1, ...], got shape {tuple(shape)}")
    if labels is None:
        from jaxinterp.merge.landscape import check_key

        check_key(key)
        labels = jax.random.categorical(key, logits_fn(params, inputs))
    else:
        _check_labels(labels, jax.eval_shape(logits_fn, params, inputs).shape)
    return _fisher(logits_fn, params, inputs, jnp.asarray(labels), chunk=min(int(chunk), int(np.shape(inputs)[0])))


def _check_labels(labels: Any, logits_shape: tuple[int, ...]) -> None:
    """ValueError unless labels are integers [N] in [0, C) for logits [N, C]: an index out of range
    is clamped (or wraps, when negative) under jit, which gave another class's gradient, silently."""
    if len(logits_shape) != 2:
        raise ValueError(f"logits_fn: expected logits [N, C] for inputs [N, ...], got shape {tuple(logits_shape)}")
    n, c = logits_shape
    shape, dtype = tuple(np.shape(labels)), getattr(labels, "dtype", np.asarray(labels).dtype)
    if shape != (n,) or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"labels: expected integer class indices [{n}] (one per input), got shape {shape} "
                         f"and dtype {dtype}")
    if not isinstance(labels, jax.core.Tracer) and n:
        lo, hi = int(np.min(labels)), int(np.max(labels))
        if lo < 0 or hi >= c:
            raise ValueError(f"labels: expected class indices in [0, {c}) for logits of {c} classes, got values "
                             f"in [{lo}, {hi}]")


# jitted once at module level with logits_fn static: the Fisher of every model of one shape (one per
# model to merge) reuses one program instead of compiling a fresh closure per call
@functools.partial(jax.jit, static_argnames=("logits_fn", "chunk"))
def _fisher(logits_fn, params, inputs, labels, *, chunk: int):
    def logp(p, x, y):
        return jax.nn.log_softmax(logits_fn(p, x[None])[0])[y]

    def is_float(p):
        return jnp.issubdtype(jnp.result_type(p), jnp.inexact)

    n = inputs.shape[0]
    pad = -n % chunk  # padded with copies of the last example (a real one), masked out of the sum

    def chunks(a):  # [N, ...] -> [n_chunks, chunk, ...]
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        return a.reshape(-1, chunk, *a.shape[1:])

    keep = (jnp.arange(n + pad) < n).reshape(-1, chunk)

    def body(acc, xs):
        x, y, m = xs
        # integer leaves (buffers: step counters, position ids) have no gradient: a Fisher of zeros
        # (jax.grad refused the whole tree: 'grad requires real- or complex-valued inputs')
        g = jax.vmap(jax.grad(logp, allow_int=True), in_axes=(None, 0, 0))(params, x, y)
        add = lambda a, gi, p: a + jnp.sum(jnp.where(m.reshape(-1, *[1] * jnp.ndim(p)),  # noqa: E731
                                                     jnp.square(gi.astype(a.dtype)), 0), 0) if is_float(p) else a
        return jax.tree_util.tree_map(add, acc, g, params), None

    # sums in float32 at least (a bfloat16 running sum over N examples rounds at each)
    zero = jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32)
                                                      if is_float(p) else jnp.float32), params)
    total, _ = jax.lax.scan(body, zero, (chunks(inputs), chunks(labels), keep))
    return jax.tree_util.tree_map(lambda t, p: (t / n).astype(jnp.result_type(p)) if is_float(p) else t, total, params)


def fisher_merge(models: Sequence[Any], fishers: Sequence[Any], *, weights: Sequence[float] | None = None,
                 eps: float = 1e-6, normalize: bool = False) -> Any:
    """sum_i w_i max(F_i, eps) theta_i / sum_i w_i max(F_i, eps), leaf by leaf, computed in float32
    (float64 for float64 models) and returned in the models' dtype.

    With `normalize`, w_i / ||F_i||_2 (the norm over every leaf of F_i) in place of w_i.
    """
    if not models:
        raise ValueError("models: expected at least one model, got none")
    if len(models) != len(fishers):
        raise ValueError(f"fishers: expected one Fisher per model ({len(models)}), got {len(fishers)}")
    if weights is not None and len(weights) != len(models):
        raise ValueError(f"weights: expected one weight per model ({len(models)}), got {len(weights)}")
    tree.check_same_structure(list(models) + list(fishers), "models+fishers")
    w = [1.0 / len(models)] * len(models) if weights is None else [float(x) for x in weights]
    # the merge is a weighted mean per entry: a negative weight or a zero sum divides by ~0 (inf/nan)
    if not all(np.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights: expected finite non-negative weights with a positive sum, got {w}")
    if not 0 < eps < np.inf:  # eps = 0 makes 0 / 0 wherever every Fisher is 0
        raise ValueError(f"eps: expected a positive finite floor for the Fishers, got {eps!r}")
    _check_fishers(fishers)
    if normalize:
        norms = [_l2_norm(jax.tree_util.tree_leaves(f)) for f in fishers]
        if not all(0 < n < np.inf for n in norms):
            raise ValueError(f"fishers: expected Fishers of positive finite norm to normalize by, got norms {norms}")
        w = [wi / n for wi, n in zip(w, norms)]

    def one(name, *leaves):
        ps, fs = leaves[: len(models)], leaves[len(models):]
        dtype = jnp.result_type(*ps)
        if not jnp.issubdtype(dtype, jnp.inexact) or not all(jnp.issubdtype(tree.leaf_dtype(p), jnp.inexact) for p in ps):
            return tree.mean_leaf(ps, name)  # a buffer: copied when equal (its weighted mean was truncated)
        # in float32: bfloat16 products and running sums (bfloat16 Fishers of bfloat16 models) put
        # 5 models' merge 1.6% off, half of the entries other than the rounded weighted mean
        work = jnp.float64 if dtype == jnp.float64 else jnp.float32
        fs = [jnp.maximum(jnp.asarray(f, work), eps) for f in fs]
        num = sum(wi * f * jnp.asarray(p, work) for wi, f, p in zip(w, fs, ps))
        den = sum(wi * f for wi, f in zip(w, fs))
        return (num / den).astype(dtype)

    names = tree.leaf_names(models[0])
    leaves = [jax.tree_util.tree_leaves(t) for t in [*models, *fishers]]
    out = [one(n, *(lv[i] for lv in leaves)) for i, n in enumerate(names)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(models[0]), out)


def _l2_norm(leaves) -> float:
    """||F||_2 over every leaf, scaled by the largest |entry| first: squared in float32, Fishers of
    entries below ~1e-23 (small gradients of a well-trained model) underflowed to a norm of 0 and were
    refused, and above ~1e19 overflowed to inf."""
    xs = [jnp.asarray(x) for x in leaves if np.size(x)]
    xs = [x.astype(jnp.float64 if x.dtype == jnp.float64 else jnp.float32) for x in xs]
    if not xs:
        return 0.0
    top = float(max(jnp.max(jnp.abs(x)) for x in xs))
    if not 0 < top < np.inf:
        return top
    return top * float(jnp.sqrt(sum(jnp.sum(jnp.square(x / jnp.asarray(top, x.dtype))) for x in xs)))


def _check_fishers(fishers: Sequence[Any]) -> None:
    """ValueError unless every entry of every Fisher is finite and >= 0 (a mean of squared gradients):
    a nan or inf entry made that entry of the merge nan, and a negative one was floored to eps,
    silently; negative entries are what the models themselves look like, passed as their Fishers.
    Tracers (a call under an outer jit) have no values to compare and are skipped."""
    for i, f in enumerate(fishers):
        for name, x in tree.named_leaves(f).items():
            if tree.is_traced(x) or not np.size(x):
                continue
            lo, hi = float(jnp.min(x)), float(jnp.max(x))
            if not (0 <= lo and hi < np.inf):  # nan fails both
                bad = "nan" if np.isnan(lo) or np.isnan(hi) else (lo if lo < 0 else hi)
                raise ValueError(f"fishers[{i}]: expected a diagonal Fisher, finite and >= 0 at every entry (a "
                                 f"mean of squared gradients), got {bad} in {name}")


def gram(x: jax.Array) -> jax.Array:
    """X^T X over every leading axis: x [..., in] -> [in, in], in float32 (float64 kept).

    x must be a real array of at least one axis: a scalar was an IndexError, a list an
    AttributeError, and complex inputs lost their imaginary parts to the cast (a warning only)."""
    shape, dtype = np.shape(x), getattr(x, "dtype", None)
    real = dtype is not None and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    if not real or len(shape) < 1:
        raise ValueError(f"x: expected a real array [..., d_in] of a linear layer's inputs, got "
                         f"{type(x).__name__} of shape {tuple(shape)} and dtype {dtype}")
    work = jax.dtypes.canonicalize_dtype(jnp.float64) if dtype == jnp.float64 else jnp.float32
    x2 = jnp.asarray(x).reshape(-1, shape[-1]).astype(work)
    return x2.T @ x2


def _check_grams(i: int, g: Any, leaves: dict[str, Any]) -> dict[str, jax.Array]:
    """grams[i] as {name: array}; ValueError naming the model and layer unless it maps kernel leaves
    [d_in, d_out] to real matrices [d_in, d_in] (None, a list of the wrong shape or a string was an
    AttributeError on .shape). Nested lists of numbers of the right shape are taken as arrays."""
    if not isinstance(g, Mapping):
        raise ValueError(f"grams[{i}]: expected a mapping kernel leaf name -> Gram matrix [d_in, d_in] (one per "
                         f"linear layer), got {type(g).__name__}")
    out = {}
    for name, G in g.items():
        if name not in leaves:
            raise ValueError(f"grams[{i}]: {name!r} is not a leaf of the models")
        kernel = tuple(np.shape(leaves[name]))
        din = kernel[0] if kernel else 0
        want = f"[{din}, {din}] for a kernel {kernel}"
        if len(kernel) != 2:
            raise ValueError(f"grams[{i}][{name!r}]: expected a kernel [d_in, d_out] (a linear layer's) to have a "
                             f"Gram matrix, got a leaf of shape {kernel}")
        if not hasattr(G, "shape") or not hasattr(G, "dtype"):
            try:
                arr = np.asarray(G)
            except (TypeError, ValueError):  # a ragged list
                arr = None
            if arr is None or arr.dtype.kind not in "iuf":
                raise ValueError(f"grams[{i}][{name!r}]: expected a Gram matrix X^T X (an array {want}), got "
                                 f"{type(G).__name__} {G!r:.60}")
            G = arr
        if not (jnp.issubdtype(G.dtype, jnp.floating) or jnp.issubdtype(G.dtype, jnp.integer)):
            raise ValueError(f"grams[{i}][{name!r}]: expected a real Gram matrix X^T X {want}, got dtype {G.dtype}")
        if tuple(G.shape) != (din, din):
            raise ValueError(f"grams[{i}][{name!r}]: expected {want}, got {tuple(G.shape)}")
        # in float32 (float64 kept): alpha G + (1 - alpha) diag(G) and the sum over models in
        # bfloat16 rounded the system RegMean solves (its solution 0.5% off, silently)
        work = jax.dtypes.canonicalize_dtype(jnp.float64) if G.dtype == jnp.float64 else jnp.float32
        out[name] = jnp.asarray(G, work)
        _check_gram_values(i, name, out[name], G.dtype)
    return out


@jax.jit
def _gram_stats(g: jax.Array) -> jax.Array:
    """[all finite, max |G - G^T|, max |G|, min diag(G)] in one pass on the device (3072 x 3072: 10 ms
    where numpy in float64 took 90)."""
    return jnp.stack([jnp.all(jnp.isfinite(g)).astype(g.dtype), jnp.max(jnp.abs(g - g.T)), jnp.max(jnp.abs(g)),
                      jnp.min(jnp.diag(g))])


def _check_gram_values(i: int, name: str, G: jax.Array, given: Any) -> None:
    """ValueError unless G is a Gram matrix X^T X by its values: finite, symmetric and with a diagonal
    >= 0 (sums of squares). X [N, d_in] itself, passed with N == d_in, has the right shape and was
    solved against as a Gram matrix: a wrong merge, silently. Symmetry is checked to sqrt(eps) of the
    Gram's dtype (float32: 3.5e-4) relative to its largest entry, room for the rounding of float32 sums
    accumulated in any order (X^T X of a batch is symmetric only up to it); `given` is the dtype the
    Gram came in, G the float32 (or float64) array it became.
    Tracers are skipped."""
    if tree.is_traced(G) or not np.size(G):
        return
    finite, asym_max, scale, diag_min = np.asarray(_gram_stats(G), np.float64).tolist()
    if finite and not asym_max > 0 and not diag_min < 0:
        return  # the common case: nothing read back but four numbers
    g = np.asarray(G, np.float64)
    where = f"grams[{i}][{name!r}]"
    if not finite:
        bad = tuple(int(j) for j in np.argwhere(~np.isfinite(g))[0])
        raise ValueError(f"{where}: expected a finite Gram matrix X^T X, got {g[bad]} at {bad}")
    # the coarser of the given dtype and the one checked (float64 given, float32 without x64)
    rtol = float(np.sqrt(max(jnp.finfo(G.dtype).eps, jnp.finfo(given).eps if jnp.issubdtype(given, jnp.floating)
                             else 0.0)))
    if asym_max > rtol * scale:
        asym = np.abs(g - g.T)
        r, c = (int(j) for j in np.unravel_index(np.argmax(asym), asym.shape))
        raise ValueError(f"{where}: expected a symmetric Gram matrix X^T X [d_in, d_in] (to {rtol:.2g} of its "
                         f"largest entry, {scale:.4g}), got G[{r}, {c}] = {g[r, c]:.6g} and G[{c}, {r}] = "
                         f"{g[c, r]:.6g}; pass X^T X (fisher.gram(X)), not the inputs X")
    d = np.diag(g)
    if diag_min < 0:
        k = int(np.argmin(d))
        raise ValueError(f"{where}: expected a Gram matrix X^T X, whose diagonal (sums of squares) is >= 0, "
                         f"got G[{k}, {k}] = {d[k]:.6g}")


def regmean(models: Sequence[Any], grams: Sequence[Mapping[str, jax.Array]], *, alpha: float = 0.9) -> Any:
    """RegMean over models; `grams[i][leaf_name]` is G_i [in, in] for the kernel leaf `leaf_name`."""
    if not models:
        raise ValueError("models: expected at least one params tree, got none")
    # a mapping (one model's grams, or {model: grams}) was iterated by its keys: an AttributeError
    if isinstance(grams, Mapping) or not isinstance(grams, Sequence):
        raise ValueError(f"grams: expected a list with one mapping (kernel leaf name -> Gram matrix [d_in, d_in]) "
                         f"per model, got {type(grams).__name__}")
    if len(models) != len(grams):
        raise ValueError(f"grams: expected one mapping per model ({len(models)}), got {len(grams)}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    tree.check_same_structure(list(models), "models")
    leaves = [tree.named_leaves(m) for m in models]
    grams = [_check_grams(i, g, leaves[0]) for i, g in enumerate(grams)]
    # a leaf with a Gram matrix in some models only would be averaged as if it had none; the model
    # named is the one lacking it (grams[0] lacking a layer blamed grams[1], which had it)
    given = [n for n in leaves[0] if any(n in g for g in grams)]
    for i, g in enumerate(grams):
        missing = [n for n in given if n not in g]
        if missing:
            j = next(k for k, h in enumerate(grams) if missing[0] in h)
            more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
            raise ValueError(f"grams[{i}]: expected Gram matrices for the same leaves in every model, got none for "
                             f"{missing[:4]}{more} (grams[{j}] has {missing[0]!r})")
    out = []
    for name in leaves[0]:
        if all(name in g for g in grams):
            Gs = [alpha * g[name] + (1 - alpha) * jnp.diag(jnp.diag(g[name])) for g in grams]
            lhs = sum(Gs)
            rhs = sum(G @ lv[name].astype(jnp.float32) for G, lv in zip(Gs, leaves))
            # an input feature that never varies from 0 (a blank pixel) has a zero row and column:
            # decouple it and give its weights the plain average instead of a singular solve
            dead = jnp.diag(lhs) <= 0
            lhs = lhs + jnp.diag(dead.astype(lhs.dtype))
            mean_w = sum(lv[name].astype(jnp.float32) for lv in leaves) / len(leaves)
            rhs = jnp.where(dead[:, None], mean_w, rhs)
            # the models' common dtype, as the averaged leaves (model 0's rounded the others' float32)
            dtype = jnp.result_type(*(tree.leaf_dtype(lv[name]) for lv in leaves))
            out.append(jnp.linalg.solve(lhs, rhs).astype(dtype))
        else:
            out.append(tree.mean_leaf([lv[name] for lv in leaves], name))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(models[0]), out)
