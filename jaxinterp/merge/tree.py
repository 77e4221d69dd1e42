"""Params pytrees as flat name -> array maps, and structure checks between trees.

Names join the pytree path with dots (`h_0.attn.c_attn.kernel`), so mergekit's substring filters
(`attn`, `mlp`) and layer detection (`h_3.`, `layers.3.`) read Flax trees and HF checkpoints alike.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_names(tree: Any) -> list[str]:
    return [".".join(_key_str(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def natural_key(name: str) -> tuple:
    """Sort key reading each run of digits as a number: `Dense_2` < `Dense_10` (as text, `Dense_10`
    came first, so the permutation spec of a 12-layer MLP chained its layers out of order)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def natural_sorted(names: Any) -> list[str]:
    """Layer names in layer order (`natural_key`)."""
    return sorted(names, key=natural_key)


def named_leaves(tree: Any) -> dict[str, Any]:
    """{dotted name: leaf}; ValueError when two leaves join to one name ({'a.b': x, 'a': {'b': y}}):
    the dict kept one, so a shape difference at the other passed the structure check and merges
    failed later with 'Too few leaves for PyTreeDef'."""
    out: dict[str, Any] = {}
    paths: dict[str, tuple] = {}  # formatted (keystr) only for the error: named_leaves runs on every merge input
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(_key_str(k) for k in path)
        if name in out:
            raise ValueError(f"params: expected leaf names that stay distinct joined with dots, got {name!r} for "
                             f"two leaves, at {jax.tree_util.keystr(paths[name])} and {jax.tree_util.keystr(path)}")
        out[name], paths[name] = leaf, path
    return out


def check_same_structure(trees: Sequence[Any], arg: str = "models", *, limit: int = 5) -> None:
    """ValueError naming the first differing paths (missing, extra, or differently shaped leaves)."""
    ref = named_leaves(trees[0])
    for i, t in enumerate(trees[1:], start=1):
        other = named_leaves(t)
        diffs = []
        for name in ref:
            if name not in other:
                diffs.append(f"{name} (missing in {arg}[{i}])")
            elif np.shape(ref[name]) != np.shape(other[name]):
                diffs.append(f"{name} (shape {tuple(np.shape(ref[name]))} in {arg}[0], "
                             f"{tuple(np.shape(other[name]))} in {arg}[{i}])")
        diffs += [f"{name} (only in {arg}[{i}])" for name in other if name not in ref]
        if not diffs and jax.tree_util.tree_structure(t) != jax.tree_util.tree_structure(trees[0]):
            diffs.append("(same leaf names, different container types)")
        if diffs:
            more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
            raise ValueError(f"{arg}: expected trees of the same structure and shapes; {arg}[0] and "
                             f"{arg}[{i}] differ at " + "; ".join(diffs[:limit]) + more)


def leaf_dtype(x: Any) -> np.dtype:  # without copying a device array to the host
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def mean_leaf(xs: Sequence[Any], name: str, arg: str = "models") -> Any:
    """The mean of one leaf over several trees, summed in float32 (float64 for float64 leaves) and
    returned in the leaves' common dtype: a running sum in bfloat16 rounds at every model (40
    bfloat16 models: 2.3% off, 63% of the entries not the rounded mean). Integer and boolean
    leaves are buffers (step counters, position ids): copied when equal in every tree, else a
    ValueError naming the leaf (their mean is no buffer of any of them)."""
    dtypes = [leaf_dtype(x) for x in xs]
    if not all(jax.numpy.issubdtype(d, jax.numpy.inexact) for d in dtypes):  # bfloat16 is not a numpy inexact
        check_same_buffer(xs, name, ith=arg + "[{}]")
        return xs[0]
    # numpy float64 leaves without jax_enable_x64 are float32 to JAX: say so, not warn of a truncation
    dtype = jax.numpy.result_type(*map(jax.dtypes.canonicalize_dtype, dtypes))
    work = np.float64 if dtype == np.float64 else np.float32
    return (sum(jax.numpy.asarray(x, work) for x in xs) / len(xs)).astype(dtype)


def check_same_buffer(xs: Sequence[Any], name: str, *, each: str = "tree", ith: str = "models[{}]",
                      not_what: str = "averaged") -> None:
    """ValueError unless the integer or boolean leaf `name` has the same dtype and values in every x
    (`ith` formats the index of the differing one)."""
    ys = [np.asarray(x) for x in xs]
    for i, y in enumerate(ys[1:], start=1):
        if y.dtype != ys[0].dtype or not np.array_equal(y, ys[0]):
            raise ValueError(f"{name}: expected the same values in every {each} for a {ys[0].dtype} leaf (a "
                             f"buffer, copied, not {not_what}); {ith.format(i)} differs from {ith.format(0)} "
                             f"({y.dtype} {y.ravel()[:4].tolist()}... vs {ys[0].ravel()[:4].tolist()}...)")


def is_traced(x: Any) -> bool:
    """Whether x is a tracer (under jit, vmap or grad): it has a shape and dtype but no values."""
    return isinstance(x, jax.core.Tracer)


def check_buffers(trees: Sequence[Any], arg: str, *, not_what: str = "averaged") -> None:
    """ValueError unless every integer or boolean leaf (a buffer) holds the same values in every tree:
    paths and planes between models take the buffers as they are, never between them. A leaf that
    is a tracer in any tree (the caller is being traced) has no values to compare: it is skipped."""
    leaves = [named_leaves(t) for t in trees]
    for name, x in leaves[0].items():
        if not jax.numpy.issubdtype(leaf_dtype(x), jax.numpy.inexact):
            xs = [lv[name] for lv in leaves]
            if not any(map(is_traced, xs)):
                check_same_buffer(xs, name, ith=arg + "[{}]", not_what=not_what)


def check_still_buffers(origin: Any, directions: Sequence[Any], args: Sequence[str]) -> None:
    """ValueError unless every direction is zero on each integer or boolean leaf of `origin` (a buffer:
    points origin + a d1 + b d2 keep origin's, so a nonzero entry there would be dropped silently).
    Tracers are skipped, as in `check_buffers`."""
    ref = named_leaves(origin)
    for d, arg in zip(directions, args):
        for name, y in named_leaves(d).items():
            x = ref[name]
            if jax.numpy.issubdtype(leaf_dtype(x), jax.numpy.inexact) or is_traced(x) or is_traced(y):
                continue
            v = np.asarray(y)
            if np.any(v != 0):
                raise ValueError(f"{arg}: expected zero at {name}, a {leaf_dtype(x)} leaf of origin (a buffer, "
                                 f"kept, not moved along a direction), got {np.count_nonzero(v)} nonzero "
                                 f"entries ({v.ravel()[:4].tolist()}...)")
