"""`merge(method, models, base=..., parameters=...)`: any mergekit method on params pytrees.

Inputs are ordered as mergekit orders them: the models as given, then the base model. For each
leaf, parameters are resolved by name (filters) and layer position (gradients), checked, and the
method's kernel runs on that leaf alone. Everything is validated for every leaf before any leaf
is merged.

    merged = merge("ties", [ft_a, ft_b], base=pretrained,
                   parameters={"density": 0.5, "weight": [0.2, 1.0]},    # gradient over layers
                   model_parameters=[{"weight": {"filter": "mlp", "value": 2.0}}, None])
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Mapping, NamedTuple, Sequence

import jax

from jaxinterp.checks import check_seed
from jaxinterp.merge import params as _params
from jaxinterp.merge import registry, tree


class Plan(NamedTuple):
    """A validated merge: per tensor name, its resolved (shared, per-input) parameters."""

    method: str
    base_index: int | None
    resolved: dict[str, tuple[dict, list[dict]]]


def check_contract(spec: registry.MethodSpec, n_models: int, has_base: bool, arg: str = "base") -> None:
    if spec.base == "required" and not has_base:
        raise ValueError(f"{arg}: merge_method {spec.name!r} needs a base model, got none")
    if spec.base == "ignored" and has_base:
        raise ValueError(f"{arg}: merge_method {spec.name!r} does not use a base model; list it among "
                         f"the models instead")
    n_inputs = n_models + int(has_base)
    checks = [("inputs", n_inputs, spec.min_inputs, spec.max_inputs),
              ("non-base models", n_models, spec.min_non_base or 0, spec.max_non_base)]
    for what, n, lo, hi in checks:
        if n < lo or (hi is not None and n > hi):
            want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise ValueError(f"models: merge_method {spec.name!r} takes {want} {what}, got {n}")


def plan(method: str, names: Sequence[str], *, n_models: int, has_base: bool,
         parameters: Mapping[str, Any] | None = None,
         model_parameters: Sequence[Mapping[str, Any] | None] | None = None,
         model_names: Sequence[str] | None = None) -> Plan:
    """Validates the method, parameters and values for every tensor name; nothing is computed."""
    spec = registry.get(method)
    check_contract(spec, n_models, has_base)
    if model_parameters is not None and not isinstance(model_parameters, (list, tuple)):
        raise ValueError(f"model_parameters: expected a list with one mapping (or None) per model, got "
                         f"{type(model_parameters).__name__} {model_parameters!r}")
    if model_parameters is not None and len(model_parameters) != n_models:
        raise ValueError(f"model_parameters: expected {n_models} entries (one per model), "
                         f"got {len(model_parameters)}")
    _params.check_names(spec, parameters, "parameters", per_model=False)
    mps = list(model_parameters or [None] * n_models)
    for i, mp in enumerate(mps):
        _params.check_names(spec, mp, f"models[{i}].parameters", per_model=True)
    if has_base:
        mps.append(None)
    base_index = n_models if has_base and spec.base != "ignored" else None
    L = _params.num_layers(names)
    resolved = {}
    for name in names:
        shared, per_input = _params.resolve(spec, tensor_name=name, t=_params.layer_t(name, L),
                                            global_params=parameters, model_params=mps,
                                            base_index=base_index, model_names=model_names)
        _params.check_values(spec, shared, per_input, f"parameters for {name}")
        resolved[name] = (shared, per_input)
    return Plan(method, base_index, resolved)


def tensor_key(seed: int, name: str) -> jax.Array:
    """The random key of one tensor: the same name and seed give the same DARE/DELLA mask."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def merge(method: str, models: Sequence[Any], *, base: Any = None,
          parameters: Mapping[str, Any] | None = None,
          model_parameters: Sequence[Mapping[str, Any] | None] | None = None, seed: int = 0) -> Any:
    """Merges params pytrees leaf by leaf with mergekit's `method` (see the module docstring).

    Args:
      method: a mergekit method name (`registry.METHODS`).
      models: the non-base models, pytrees of identical structure and shapes.
      base: the base model (required by task-vector methods, optional for nuslerp/multislerp).
      parameters: global settings (scalars, per-layer lists, {value, filter} conditions).
      model_parameters: per-model settings, one mapping (or None) per model; they win over globals.
      seed: random methods (dare_*, della*) draw their masks from (seed, tensor name).
    Returns:
      the merged pytree, with the structure of the base (or first model); each leaf in the inputs'
      common dtype (the base's when all agree; float32 for a bfloat16 base with float32 models, as
      mergekit writes it).
    """
    if not isinstance(models, (list, tuple)) or not models:
        raise ValueError(f"models: expected a non-empty list of params trees, got {type(models).__name__}")
    check_seed(seed)
    trees = list(models) + ([base] if base is not None else [])
    tree.check_same_structure(trees, "models" if base is None else "models+[base]")
    leaves = [tree.named_leaves(t) for t in trees]
    names = list(leaves[0])
    p = plan(method, names, n_models=len(models), has_base=base is not None, parameters=parameters,
             model_parameters=model_parameters)
    ref_i = len(trees) - 1 if base is not None else 0
    buffers = _check_buffers(leaves, names, ref_i)
    floats = [n for n in names if n not in buffers]
    # per leaf: the static parameters key the compilation; weights, t and lambda go in traced, so a
    # sweep over them reuses one compiled merge
    split = [registry.split_traced(method, *p.resolved[n]) for n in floats]
    cfgs = tuple(s[:3] for s in split)
    keys = jax.numpy.stack([tensor_key(seed, n) for n in floats]) if floats else None
    outs, bads = _tree_fn(method, p.base_index, cfgs)(tuple(tuple(lv[n] for lv in leaves) for n in floats), keys,
                                                      tuple(s[3] for s in split))
    for n, bad in zip(floats, bads):
        registry.raise_if_bad(method, bad, n)
    merged = dict(zip(floats, outs), **buffers)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(trees[ref_i]), [merged[n] for n in names])


def _check_buffers(leaves: list[dict[str, Any]], names: Sequence[str], ref_i: int) -> dict[str, Any]:
    """{name: leaf} of the integer and boolean leaves, copied from input `ref_i`. They are buffers
    (step counters, position ids, masks), not weights: as mergekit's copy_non_floating_buffer and
    `merge yaml`, they are copied when every input holds the same values, else refused by name."""
    out = {}
    for n in names:
        if all(jax.numpy.issubdtype(tree.leaf_dtype(lv[n]), jax.numpy.inexact) for lv in leaves):
            continue
        tree.check_same_buffer([lv[n] for lv in leaves], n, each="input", ith="input {}", not_what="merged")
        out[n] = leaves[ref_i][n]
    return out


@functools.lru_cache(maxsize=64)
def _tree_fn(method: str, base_index: int | None, cfgs: tuple):
    """One compiled call merging every leaf (per leaf in `cfgs`: static shared and per-input
    parameters and the keys of the traced ones, whose values come in `leaf_dyn`)."""

    def run(leaf_inputs, keys, leaf_dyn):
        outs, bads = [], []
        for i, (inputs, (shared, per_input, dyn_keys), dyn) in enumerate(zip(leaf_inputs, cfgs, leaf_dyn)):
            sh, pi = registry.with_traced(shared, per_input, dyn_keys, dyn)
            # inputs of mixed dtypes are merged and returned in their common one (mergekit's
            # promoted_dtype, and what it writes; `merge yaml` does the same)
            work = jax.numpy.result_type(*inputs)
            xs = [x.astype(work) for x in inputs]
            y, bad = registry.kernel_checked(method, xs, base_index, sh, pi, keys[i])
            outs.append(y.astype(work))
            bads.append(bad)
        return outs, bads

    return jax.jit(run)
