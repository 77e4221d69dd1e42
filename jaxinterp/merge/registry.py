"""Every mergekit method by name: its parameters (scope, default), its input contract, its kernel.

Scopes follow mergekit: `shared` (one value per tensor, from the global parameters), `input`
(one per input model, base included), `non_base` (one per input that is not the base). Defaults are
mergekit 0.1.5's (`merge_methods/registry.py` and each method's signature).

`merge_tensor` runs one method on one tensor; it is jitted per (method, static parameters), so the
same layer shapes and values across a model reuse one compiled kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.merge import simple, spherical
from jaxinterp.merge.task_arithmetic import GTA_VARIANTS, gta_merge

MISSING = object()


@dataclass(frozen=True)
class ParamSpec:
    name: str
    scope: str  # "shared" | "input" | "non_base"
    default: Any = MISSING
    kind: type = float  # float | bool | int (None allowed when the default is None)

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: tuple[ParamSpec, ...]
    base: str = "ignored"  # "required" | "optional" | "ignored"
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int | None = None
    max_non_base: int | None = None

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)


def _gta_spec(name: str) -> MethodSpec:
    v = GTA_VARIANTS[name]
    ps = [ParamSpec("int8_mask", "shared", False, bool), ParamSpec("normalize", "shared", v.default_normalize, bool),
          ParamSpec("rescale", "shared", v.default_rescale, bool), ParamSpec("lambda", "shared", 1.0),
          ParamSpec("weight", "non_base"), ParamSpec("density", "non_base", 1.0)]
    if v.sparsification == "magnitude_outliers":
        ps.append(ParamSpec("gamma", "non_base", 0.01))
    if v.sparsification == "della_magprune":
        ps.append(ParamSpec("epsilon", "non_base", 0.15))
    # at least one model beside the base: with none there is no task vector to merge (the kernels
    # would fail deep inside; mergekit returns the base unchanged), so a config listing only the base
    # is refused up front
    return MethodSpec(name, tuple(ps), base="required", min_non_base=1)


METHODS: dict[str, MethodSpec] = {name: _gta_spec(name) for name in GTA_VARIANTS}
METHODS.update({
    "linear": MethodSpec("linear", (ParamSpec("weight", "input"), ParamSpec("normalize", "shared", True, bool))),
    "slerp": MethodSpec("slerp", (ParamSpec("t", "shared"),), base="required", min_inputs=2, max_inputs=2),
    "nuslerp": MethodSpec("nuslerp", (ParamSpec("weight", "non_base"),
                                      ParamSpec("nuslerp_row_wise", "shared", False, bool),
                                      ParamSpec("nuslerp_flatten", "shared", True, bool)),
                          base="optional", min_non_base=2, max_non_base=2),
    "multislerp": MethodSpec("multislerp", (ParamSpec("weight", "non_base"),
                                            ParamSpec("normalize_weights", "shared", True, bool),
                                            ParamSpec("eps", "shared", 1e-8)),
                             base="optional", min_non_base=1),
    "karcher": MethodSpec("karcher", (ParamSpec("max_iter", "shared", 10, int), ParamSpec("tol", "shared", 1e-5)),
                          ),
    "model_stock": MethodSpec("model_stock", (ParamSpec("filter_wise", "shared", False, bool),),
                              base="required", min_inputs=3),
    "sce": MethodSpec("sce", (ParamSpec("int8_mask", "shared", False, bool), ParamSpec("select_topk", "shared", 1.0)),
                      base="required"),
    "nearswap": MethodSpec("nearswap", (ParamSpec("t", "shared"),), base="required", min_inputs=2, max_inputs=2),
    "arcee_fusion": MethodSpec("arcee_fusion", (), base="required", min_inputs=2, max_inputs=2),
    "passthrough": MethodSpec("passthrough", (ParamSpec("scale", "input", None),), max_inputs=1),
})

RANDOM_METHODS = frozenset({"dare_ties", "dare_linear", "della", "della_linear"})
CAN_BE_BAD = frozenset({"multislerp"})  # kernels whose `bad` output can be true


def get(method: str) -> MethodSpec:
    if not isinstance(method, str) or method not in METHODS:  # a list was 'unhashable type' (TypeError)
        raise ValueError(f"merge_method: expected one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method]


def _kernel(method: str, inputs: list[jax.Array], base_index: int | None, shared: dict,
            per_input: list[dict], key: jax.Array | None) -> jax.Array | tuple[jax.Array, jax.Array]:
    base = inputs[base_index] if base_index is not None else None
    others = [x for i, x in enumerate(inputs) if i != base_index]
    nb = [p for i, p in enumerate(per_input) if i != base_index]
    if method in GTA_VARIANTS:
        return gta_merge(base, others, variant=GTA_VARIANTS[method], weights=[p["weight"] for p in nb],
                         densities=[p["density"] for p in nb], normalize=shared["normalize"],
                         rescale=shared["rescale"], lam=shared["lambda"],
                         gammas=[p["gamma"] for p in nb] if "gamma" in nb[0] else None,
                         epsilons=[p["epsilon"] for p in nb] if "epsilon" in nb[0] else None, key=key)
    if method == "linear":
        return simple.linear(inputs, [p["weight"] for p in per_input], normalize=shared["normalize"])
    if method == "slerp":
        return spherical.slerp(shared["t"], base, others[0])
    if method == "nuslerp":
        return spherical.nuslerp_merge(others, [p["weight"] for p in nb], base,
                                       row_wise=shared["nuslerp_row_wise"], flatten=shared["nuslerp_flatten"])
    if method == "multislerp":
        return spherical.multislerp(others, [p["weight"] for p in nb], base,
                                    normalize_weights=shared["normalize_weights"], eps=shared["eps"])
    if method == "karcher":
        return spherical.karcher(inputs, max_iter=shared["max_iter"], tol=shared["tol"])
    if method == "model_stock":
        return simple.model_stock(base, others, filter_wise=shared["filter_wise"])
    if method == "sce":
        return simple.sce(base, others, select_topk=shared["select_topk"])
    if method == "nearswap":
        return simple.nearswap(base, others[0], t=shared["t"])
    if method == "arcee_fusion":
        return simple.arcee_fusion(base, others[0])
    if method == "passthrough":
        return simple.passthrough(inputs[0], scale=per_input[0].get("scale"))
    raise ValueError(f"merge_method: no kernel for {method!r}")


def _freeze(d: dict) -> tuple:
    return tuple(sorted(d.items()))


# the GTA family, linear, slerp, multislerp, karcher and arcee_fusion cast to float32 themselves
_IN_FLOAT32 = frozenset({"model_stock", "sce", "nuslerp", "nearswap"})


def kernel_checked(method: str, inputs: list[jax.Array], base_index: int | None, shared: dict,
                   per_input: list[dict], key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(merged tensor, bad): `bad` flags inputs that mergekit rejects mid-merge (multislerp)."""
    if inputs[0].size == 0:  # nothing to merge: arcee_fusion's quantiles indexed an empty sort
        # (IndexError) and multislerp called the zero norms of 3 empty task vectors antipodal
        return inputs[base_index if base_index is not None else 0], jnp.bool_(False)
    dtype = inputs[0].dtype
    if method in _IN_FLOAT32 and dtype in (jnp.bfloat16, jnp.float16):
        # in bfloat16 (as mergekit computes them) model_stock left 19% of the entries off the rounded
        # float64 result, nuslerp 4% (up to 10% off); BUILD_NOTES says these compute in float32
        y = _kernel(method, [x.astype(jnp.float32) for x in inputs], base_index, shared, per_input, key)
        return y.astype(dtype), jnp.bool_(False)
    y = _kernel(method, inputs, base_index, shared, per_input, key)
    return y if isinstance(y, tuple) else (y, jnp.bool_(False))


def raise_if_bad(method: str, bad, name: str) -> None:
    if bool(bad):
        raise ValueError(f"{name}: {method} got inputs whose weighted mean direction is zero (antipodal "
                         f"task vectors with balancing weights); choose different weights")


# Parameters that enter only as numbers in arithmetic: passed traced, so per-layer gradients of
# them (slerp's t over 12 layers, a weight ramp) reuse one compiled kernel per shape.
_TRACED = {"weight", "t", "lambda"}
_TRACED_METHODS = frozenset(GTA_VARIANTS) | {"linear", "slerp", "nearswap"}


def _split(method: str, shared: dict, per_input: list[dict]):
    if method not in _TRACED_METHODS:
        return shared, per_input, {}
    dyn = {}
    s2 = {k: (None if k in _TRACED else v) for k, v in shared.items()}
    for k in shared:
        if k in _TRACED:
            dyn[("s", k)] = shared[k]
    p2 = []
    for i, p in enumerate(per_input):
        p2.append({k: (None if k in _TRACED else v) for k, v in p.items()})
        for k in p:
            if k in _TRACED:
                dyn[(i, k)] = p[k]
    return s2, p2, dyn


def split_traced(method: str, shared: dict, per_input: list[dict]) -> tuple[tuple, tuple, tuple, tuple]:
    """(frozen static shared, frozen static per-input, traced keys, their float values): the static
    parts key a compilation cache; the values go in as arguments."""
    s2, p2, dyn = _split(method, shared, per_input)
    keys = tuple(dyn)
    # float64 where arrays may be (a float64 merge would otherwise take weights rounded to float32);
    # every kernel casts them to its work dtype
    ftype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return _freeze(s2), tuple(_freeze(p) for p in p2), keys, tuple(jnp.asarray(dyn[k], ftype) for k in keys)


def with_traced(shared: tuple, per_input: tuple, dyn_keys: tuple, dyn_vals) -> tuple[dict, list[dict]]:
    """The parameter dicts of `split_traced`'s parts, traced values put back (inside a jit)."""
    sh, pi = dict(shared), [dict(p) for p in per_input]
    for (where, k), v in zip(dyn_keys, dyn_vals):
        (sh if where == "s" else pi[where])[k] = v
    return sh, pi


@functools.lru_cache(maxsize=256)
def _jitted(method: str, base_index: int | None, shared: tuple, per_input: tuple, dyn_keys: tuple):
    def run(inputs, key, dyn_vals):
        sh, pi = with_traced(shared, per_input, dyn_keys, dyn_vals)
        return kernel_checked(method, list(inputs), base_index, sh, pi, key)

    return jax.jit(run)


def merge_tensor(method: str, inputs: list[jax.Array], *, base_index: int | None, shared: dict,
                 per_input: list[dict], key: jax.Array | None = None, name: str = "tensor") -> jax.Array:
    """One output tensor of `method` from its inputs (base at `base_index`) and resolved parameters."""
    if key is None:
        key = jax.random.PRNGKey(0)
    s2, p2, dyn_keys, dyn_vals = split_traced(method, shared, per_input)
    y, bad = _jitted(method, base_index, s2, p2, dyn_keys)(tuple(inputs), key, dyn_vals)
    if method in CAN_BE_BAD:  # reading `bad` waits for the kernel: only where it can be true
        raise_if_bad(method, bad, name)
    return y
