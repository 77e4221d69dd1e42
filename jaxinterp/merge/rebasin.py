"""Permutation alignment by weight matching (Ainsworth et al. 2023, "Git Re-Basin").

Hidden units of a network can be permuted without changing its function. Weight matching finds,
for model B, the permutations that bring its weights closest to model A's:

    max_P  sum_l <W_l^A, P_l W_l^B P_{l-1}^T>

by coordinate descent: one permutation at a time, holding the others fixed, the problem is a
linear assignment (`scipy.optimize.linear_sum_assignment`) on A_p = sum over the weights that
permutation p touches of W^A (axis p first, flattened) @ (W^B with the other permutations
applied)^T. Sweeps in random order stop when no permutation improves.

A `PermutationSpec` names, for every leaf, which permutation acts on each axis of a *view* of the
leaf (a reshape: GPT-2's c_attn kernel [D, 3D] is viewed as [D, 3, H, E] so that heads permute as
blocks of E columns in q, k and v together).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxinterp.checks import is_integer
from jaxinterp.merge import tree


class PermutationSpec(NamedTuple):
    axes: dict[str, tuple[str | None, ...]]  # leaf name -> permutation name (or None) per view axis
    views: dict[str, tuple[int, ...]]  # leaf name -> view shape (absent: the leaf's own shape)


def _perm_to_axes(spec: PermutationSpec) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for name, axes in spec.axes.items():
        for ax, p in enumerate(axes):
            if p is not None:
                out.setdefault(p, []).append((name, ax))
    return out


def _view(spec: PermutationSpec, name: str, w: np.ndarray) -> np.ndarray:
    return w.reshape(spec.views[name]) if name in spec.views else w


def _few(names: list, k: int = 4) -> str:
    """The first k names, then how many more: "['a', 'b', 'c', 'd'] and 144 more"."""
    return f"{names[:k]}" + (f" and {len(names) - k} more" if len(names) > k else "")


def check_spec(spec: PermutationSpec, params: Any) -> dict[str, int]:
    """Sizes of each permutation; ValueError for unknown leaves or inconsistent sizes."""
    if not isinstance(spec, PermutationSpec):  # a bare axes dict was an AttributeError on .axes
        raise ValueError(f"spec: expected a PermutationSpec(axes, views), got {type(spec).__name__}")
    # a view of a leaf not named in axes is never used: a typo in its key left the leaf it meant
    # unviewed (its axes then counted against the leaf's own shape, or it went unchecked), silently
    for field in ("axes", "views"):
        if not isinstance(getattr(spec, field), dict):
            raise ValueError(f"spec.{field}: expected a dict leaf name -> tuple, got {type(getattr(spec, field)).__name__}")
    unknown = sorted(set(spec.views) - set(spec.axes), key=str)
    if unknown:  # the first few names of each and a count: GPT-2 small's spec permutes 72 leaves
        raise ValueError(f"spec.views: keys {_few(unknown)} name no leaf of spec.axes; expected views only for "
                         f"the permuted leaves (known: {_few(sorted(spec.axes, key=str))})")
    leaves = tree.named_leaves(params)
    sizes: dict[str, int] = {}
    for name, axes in spec.axes.items():
        if name not in leaves:
            raise ValueError(f"spec: leaf {name!r} is not in params (params have e.g. {list(leaves)[:4]})")
        w = leaves[name]
        shape = spec.views.get(name, np.shape(w))
        if int(np.prod(shape)) != int(np.prod(np.shape(w))):
            raise ValueError(f"spec.views[{name!r}]: view {shape} does not fit shape {np.shape(w)}")
        if len(axes) != len(shape):
            raise ValueError(f"spec.axes[{name!r}]: expected {len(shape)} entries (one per axis of "
                             f"{shape}), got {len(axes)}")
        for ax, p in enumerate(axes):
            if p is None:
                continue
            if sizes.setdefault(p, shape[ax]) != shape[ax]:
                raise ValueError(f"spec: permutation {p!r} has size {sizes[p]} elsewhere but axis {ax} of "
                                 f"{name!r} has {shape[ax]}")
    return sizes


def check_init(init: dict[str, Any], sizes: dict[str, int], arg: str = "init") -> dict[str, np.ndarray]:
    """init as arrays; ValueError (naming `arg`) unless it holds exactly the spec's permutations, each
    a permutation of range(its size)."""
    if not isinstance(init, dict):
        raise ValueError(f"{arg}: expected a dict permutation name -> indices, got {type(init).__name__}")
    missing, unknown = sorted(set(sizes) - set(init)), sorted(set(init) - set(sizes))
    if missing or unknown:  # the first few of each and a count: GPT-2 small's spec has 24 permutations
        raise ValueError(f"{arg}: expected one permutation for each of {_few(sorted(sizes))}, got {_few(sorted(init))} "
                         f"(missing {_few(missing)}, not in the spec {_few(unknown)})")
    perms = {p: np.asarray(v) for p, v in init.items()}
    for p, n in sizes.items():
        if perms[p].shape != (n,) or not np.issubdtype(perms[p].dtype, np.integer):
            raise ValueError(f"{arg}[{p!r}]: expected a permutation of range({n}), got an array of shape "
                             f"{perms[p].shape} and dtype {perms[p].dtype}")
        absent = np.setdiff1d(np.arange(n), perms[p])
        if absent.size:
            raise ValueError(f"{arg}[{p!r}]: expected a permutation of range({n}), got one without indices "
                             f"{absent[:5].tolist()}")
    return perms


def _permuted(spec: PermutationSpec, perms: dict[str, np.ndarray], name: str, w: np.ndarray,
              except_axis: int | None = None) -> np.ndarray:
    w = _view(spec, name, w)
    for ax, p in enumerate(spec.axes[name]):
        if p is not None and ax != except_axis:
            w = np.take(w, perms[p], axis=ax)
    return w


def apply_permutation(spec: PermutationSpec, perms: dict[str, np.ndarray], params: Any) -> Any:
    """params with every permuted axis reordered (`perms[p][i]`: which unit of params goes to i).

    The spec and perms are checked first (ValueError): a spec leaf missing from params (a typo would
    leave that tensor unpermuted, so the result would compute another function) or a perm that is
    missing, of the wrong size, or not a permutation.
    """
    perms = check_init(perms, check_spec(spec, params), "perms")
    leaves = tree.named_leaves(params)
    out = []
    for name, w in leaves.items():
        if name in spec.axes:
            arr = np.asarray(w)
            out.append(jax.numpy.asarray(_permuted(spec, perms, name, arr).reshape(arr.shape), dtype=arr.dtype))
        else:
            out.append(w)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), out)


class MatchResult(NamedTuple):
    perms: dict[str, np.ndarray]
    params: Any  # params_b permuted to align with params_a
    sweeps: int


def weight_matching(spec: PermutationSpec, params_a: Any, params_b: Any, *, max_iter: int = 100,
                    seed: int = 0, init: dict[str, np.ndarray] | None = None) -> MatchResult:
    """Permutations of params_b's units that maximise its inner product with params_a."""
    from scipy.optimize import linear_sum_assignment

    if not is_integer(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive number of sweeps, got {max_iter!r}")
    # the sweep order is drawn from seed: None (fresh OS entropy) gave other permutations on each
    # call, silently, and 1.5 a TypeError from numpy
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer (the sweeps' order is drawn from it), got {seed!r}")
    tree.check_same_structure([params_a, params_b], "params_a/params_b")
    sizes = check_spec(spec, params_a)
    perms = {p: np.arange(n) for p, n in sizes.items()} if init is None else check_init(init, sizes)
    a = {k: np.asarray(v, np.float64) for k, v in tree.named_leaves(params_a).items() if k in spec.axes}
    b = {k: np.asarray(v, np.float64) for k, v in tree.named_leaves(params_b).items() if k in spec.axes}
    for arg, ws in (("params_a", a), ("params_b", b)):  # scipy: 'matrix contains invalid numeric entries'
        for k, w in ws.items():
            if not np.isfinite(w).all():
                raise ValueError(f"{arg}: expected finite weights in every permuted leaf, got "
                                 f"{w[~np.isfinite(w)][0]} in {k}")
    p2a = _perm_to_axes(spec)
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        progress = False
        for p in rng.permutation(names):
            n = sizes[p]
            cost = np.zeros((n, n))
            for name, ax in p2a[p]:
                wa = np.moveaxis(_view(spec, name, a[name]), ax, 0).reshape(n, -1)
                wb = np.moveaxis(_permuted(spec, perms, name, b[name], except_axis=ax), ax, 0).reshape(n, -1)
                cost += wa @ wb.T
            _, ci = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(n), perms[p]].sum()
            new = cost[np.arange(n), ci].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perms[p] = ci
        if not progress:
            break
    return MatchResult(perms, apply_permutation(spec, perms, params_b), sweeps)


# ----------------------------------------------------------------------------- specs


def _check_layers(arg: str, names: Any) -> list[str]:
    """names as a list; ValueError for a string (read letter by letter) or a name given twice (its
    leaves' permutations were overwritten by the second entry: another function, silently)."""
    if not isinstance(names, str):
        names = list(names)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{arg}: expected a list of layer names, got {names!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{arg}: expected each layer once, got {twice} more than once in {names}")
    return names


def _check_no_bias(no_bias, layers: list[str]) -> set[str]:
    unknown = sorted(set(no_bias) - set(layers))
    if isinstance(no_bias, str) or unknown:  # a typo would ask for a bias the layer lacks, or skip one it has
        raise ValueError(f"no_bias: expected a list of layer names among {layers}, got {no_bias!r}")
    return set(no_bias)


def mlp_permutation_spec(layer_names: list[str], *, kernel: str = "kernel", bias: str = "bias",
                         no_bias: list[str] = ()) -> PermutationSpec:
    """Dense stack (Flax kernels [in, out]): the outputs of every layer but the last are permuted.
    Layers in `no_bias` have no bias leaf (Flax's use_bias=False)."""
    layer_names = _check_layers("layer_names", layer_names)
    skip = _check_no_bias(no_bias, layer_names)
    axes = {}
    for i, layer in enumerate(layer_names):
        p_in = f"P_{i - 1}" if i > 0 else None
        p_out = f"P_{i}" if i < len(layer_names) - 1 else None
        axes[f"{layer}.{kernel}"] = (p_in, p_out)
        if layer not in skip:
            axes[f"{layer}.{bias}"] = (p_out,)
    return PermutationSpec(axes, {})


def cnn_permutation_spec(conv_names: list[str], dense_names: list[str], *, norm_names: dict[str, str] | None = None,
                         kernel: str = "kernel", bias: str = "bias", no_bias: list[str] = ()) -> PermutationSpec:
    """Conv stack (Flax kernels [kh, kw, in, out]) then global pooling then a dense stack.

    `norm_names` maps a conv name to the norm layer after it (its scale and bias share the conv's
    output permutation; BatchNorm running statistics live outside params and must be permuted the
    same way by the caller, or recomputed). Layers in `no_bias` have no bias leaf (use_bias=False,
    as convs before a BatchNorm usually are: the spec asked for their bias and was refused).
    """
    axes = {}
    conv_names, dense_names = _check_layers("conv_names", conv_names), _check_layers("dense_names", dense_names)
    _check_layers("conv_names + dense_names", conv_names + dense_names)
    layers = [(n, "conv") for n in conv_names] + [(n, "dense") for n in dense_names]
    skip = _check_no_bias(no_bias, [n for n, _ in layers])
    unknown = sorted(set(norm_names or {}) - {n for n, _ in layers})
    if unknown:  # a typo would leave that norm layer unpermuted: another function, silently
        raise ValueError(f"norm_names: expected keys among the conv and dense layers {[n for n, _ in layers]}, "
                         f"got {unknown}")
    for i, (layer, kind) in enumerate(layers):
        p_in = f"P_{i - 1}" if i > 0 else None
        p_out = f"P_{i}" if i < len(layers) - 1 else None
        axes[f"{layer}.{kernel}"] = (None, None, p_in, p_out) if kind == "conv" else (p_in, p_out)
        if layer not in skip:
            axes[f"{layer}.{bias}"] = (p_out,)
        if norm_names and layer in norm_names:
            axes[f"{norm_names[layer]}.scale"] = (p_out,)
            axes[f"{norm_names[layer]}.bias"] = (p_out,)
    return PermutationSpec(axes, {})


def gpt2_permutation_spec(n_layer: int, n_head: int, n_embd: int, d_mlp: int | None = None) -> PermutationSpec:
    """GPT-2 (jaxinterp.transformer layout): per layer, attention heads and MLP neurons.

    Heads: c_attn kernel [D, 3D] viewed [D, 3, H, E] (q, k, v of head h move together), its bias
    [3, H, E], c_proj kernel [D, D] viewed [H, E, D]. Neurons: c_fc kernel [D, M] axis 1 and bias,
    mlp c_proj kernel [M, D] axis 0. The residual stream is left unpermuted.
    """
    del d_mlp  # neuron permutations take their size from the params
    E = n_embd // n_head
    axes, views = {}, {}
    for i in range(n_layer):
        h, m = f"P_head_{i}", f"P_mlp_{i}"
        pre = f"h_{i}"
        axes[f"{pre}.attn.c_attn.kernel"] = (None, None, h, None)
        views[f"{pre}.attn.c_attn.kernel"] = (n_embd, 3, n_head, E)
        axes[f"{pre}.attn.c_attn.bias"] = (None, h, None)
        views[f"{pre}.attn.c_attn.bias"] = (3, n_head, E)
        axes[f"{pre}.attn.c_proj.kernel"] = (h, None, None)
        views[f"{pre}.attn.c_proj.kernel"] = (n_head, E, n_embd)
        axes[f"{pre}.mlp.c_fc.kernel"] = (None, m)
        axes[f"{pre}.mlp.c_fc.bias"] = (m,)
        axes[f"{pre}.mlp.c_proj.kernel"] = (m, None)
    return PermutationSpec(axes, views)
