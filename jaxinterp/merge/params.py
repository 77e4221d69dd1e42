"""Parameter settings as mergekit reads them: scalars, per-layer gradients, tensor-name filters.

A setting is one of
  * a scalar (bool, int, float, str; numpy scalars and 0-d arrays too);
  * a list of numbers, a gradient over layers: at layer position t in [0, 1] (t = layer / (L - 1),
    t = 1 when L == 1, t = 0 outside the layers: embeddings, final norm, LM head), with
    s = t (len - 1), i0 = int(s): (1 - (s - i0)) v[i0] + (s - i0) v[min(i0 + 1, len - 1)];
    a list of booleans or strings picks v[int(t (len - 1))]; a 1-D array is read as a list;
  * a dict {"value": setting, "filter": substring} or a list of them: the first whose filter is
    absent, "*", or a substring of the tensor name applies (none applying means "not set").

Precedence (mergekit's ConfigReader): a model's own parameters, then (in the `slices:` form) the
slice's, then the global ones, each consulted only when the one before sets nothing for the tensor;
shared parameters come from the slice's and the global ones only. Unset parameters take the
method's default, and a required one with no value is an error.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxinterp.merge.registry import MISSING, MethodSpec, ParamSpec

# Layer index in a tensor name: HF (`model.layers.3.`, `transformer.h.3.`, `h.3.`), Flax (`h_3.`),
# TransformerLens (`blocks.3.`), BERT-style (`layer.3.`).
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)[._](\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def with_layer(name: str, layer: int) -> str:
    """`name` with its layer index replaced (`transformer.h.3.attn` -> `transformer.h.7.attn`)."""
    m = _LAYER_RE.search(name)
    if m is None:
        raise ValueError(f"with_layer: {name!r} has no layer index")
    return name[:m.start(1)] + str(layer) + name[m.end(1):]


# Tensors outside the layers that come after them: mergekit's post_weights (the final norm and the
# LM head of Llama/Mistral/Qwen/Gemma, GPT-2, GPT-NeoX, MPT/Mamba, ChatGLM, phi) and TransformerLens'
# ln_final / unembed. The rest outside the layers (embeddings) are pre weights.
_POST_RE = re.compile(r"(^|\.)(ln_f|norm|norm_f|final_norm|final_layer_norm|final_layernorm|lm_head|embed_out|"
                      r"output_layer|ln_final|unembed)(\.|$)")


def is_post(name: str) -> bool:
    """Whether a tensor outside the layers is one of the post weights (final norm, LM head)."""
    return layer_index(name) is None and _POST_RE.search(name) is not None


def layer_t(name: str, num_layers: int) -> float:
    """mergekit's gradient position of a tensor: idx / (L - 1) in the layers (1 when L == 1), 0
    outside them, for the embeddings and the final norm / LM head alike (mergekit 0.1.5's
    `plan_module` reads both with t = 0; releases before its modules read the post weights at 1)."""
    idx = layer_index(name)
    if idx is None:
        return 0.0
    return idx / (num_layers - 1) if num_layers > 1 else 1.0


def num_layers(names: Sequence[str]) -> int:
    idx = [i for i in map(layer_index, names) if i is not None]
    return max(idx) + 1 if idx else 0


def _plain(v: Any) -> Any:
    """numpy and concrete jax values as Python ones: np.float32(0.5) or np.int64(1) (a sweep's values,
    an entry of np.linspace), a 0-d array, and a 1-D array as a gradient list. They were refused as
    'expected a scalar, a list or a condition, got np.float32(0.25)'."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (np.ndarray, jax.Array)) and not isinstance(v, jax.core.Tracer) and v.ndim <= 1:
        return v.tolist()
    return v


def _is_scalar(v: Any) -> bool:
    return isinstance(_plain(v), (bool, int, float, str))


def _coerce(v: Any, spec: ParamSpec, where: str) -> Any:
    v = _plain(v)
    if spec.kind is bool:
        if isinstance(v, bool):
            return v
    elif spec.kind is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    elif isinstance(v, str):
        try:
            return float(v)  # YAML reads "1e-5" as a string; mergekit's validator accepts it
        except ValueError:
            pass
    article = "an" if spec.kind is int else "a"
    raise ValueError(f"{where}: expected {article} {spec.kind.__name__}, got {v!r}")


def check_setting(setting: Any, where: str) -> None:
    """Raises ValueError if `setting` is not a scalar, a gradient list, or filter conditions."""
    setting = _plain(setting)
    if _is_scalar(setting):
        return
    if isinstance(setting, Mapping):
        extra = set(setting) - {"value", "filter"}
        if "value" not in setting or extra:
            raise ValueError(f"{where}: expected a condition {{value, filter}}, got keys {sorted(setting)}")
        if setting.get("filter") is not None and not isinstance(setting["filter"], str):
            raise ValueError(f"{where}.filter: expected a string, got {setting['filter']!r}")
        check_setting(setting["value"], f"{where}.value")
        return
    if isinstance(setting, (list, tuple)):
        if not setting:
            raise ValueError(f"{where}: expected a non-empty list, got []")
        if all(_is_scalar(e) for e in setting):
            return
        for i, e in enumerate(setting):
            if not isinstance(e, Mapping):
                raise ValueError(f"{where}[{i}]: expected scalars (a gradient) or conditions "
                                 f"{{value, filter}}, got {e!r}")
            check_setting(e, f"{where}[{i}]")
        return
    raise ValueError(f"{where}: expected a scalar, a list or a condition, got {setting!r}")


def evaluate(setting: Any, spec: ParamSpec, *, tensor_name: str, t: float, where: str) -> Any:
    """The value of one setting for one tensor at layer position t (None: not set here)."""
    setting = _plain(setting)
    if isinstance(setting, Mapping):
        setting = [setting]
    if _is_scalar(setting):
        return _coerce(setting, spec, where)
    if all(_is_scalar(e) for e in setting):
        values = [_coerce(e, spec, where) for e in setting]
        if spec.kind is bool or not all(isinstance(v, (int, float)) for v in values):
            return values[int(t * (len(values) - 1))]
        s = t * (len(values) - 1)
        i0 = int(s)
        i1 = min(len(values) - 1, i0 + 1)
        frac = s - i0
        return _coerce((1 - frac) * values[i0] + frac * values[i1], spec, where)
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate(cond["value"], spec, tensor_name=tensor_name, t=t, where=where)
    return None


def check_names(spec: MethodSpec, settings: Mapping[str, Any] | None, where: str, *, per_model: bool) -> None:
    """Unknown parameter names and misplaced scopes are errors (mergekit would ignore them)."""
    if settings is not None and not isinstance(settings, Mapping):  # a list of pairs was an AttributeError
        raise ValueError(f"{where}: expected a mapping of parameter names to settings, got {type(settings).__name__} "
                         f"{settings!r}")
    for name, setting in (settings or {}).items():
        p = spec.param(name)
        if p is None:
            known = ", ".join(q.name for q in spec.params) or "none"
            raise ValueError(f"{where}.{name}: unknown parameter for merge_method {spec.name!r} "
                             f"(its parameters: {known})")
        if per_model and p.scope == "shared":
            raise ValueError(f"{where}.{name}: a shared parameter of {spec.name!r}; set it in the "
                             f"global parameters, not per model")
        check_setting(setting, f"{where}.{name}")


def resolve(spec: MethodSpec, *, tensor_name: str, t: float, global_params: Mapping[str, Any] | None,
            model_params: Sequence[Mapping[str, Any] | None], base_index: int | None,
            model_names: Sequence[str] | None = None, slice_params: Mapping[str, Any] | None = None,
            slice_where: str = "slice.parameters",
            input_names: Sequence[str] | None = None) -> tuple[dict, list[dict]]:
    """(shared values, per-input values) for one tensor; inputs in order, base at base_index.
    `slice_params` (the `slices:` form) sit between a model's own and the global ones.

    As mergekit's `resolve_parameters`: shared values are read for the output `tensor_name`, each
    input's for the name of the tensor read from that input (`input_names`, default the output
    name). The two differ in the `slices:` form, where a source's layer 3 can be output layer 1: a
    filter on `h.3.` then applies to that source's input."""
    outer = ([(slice_params, slice_where)] if slice_params else []) + [(global_params or {}, "parameters")]

    def one(p: ParamSpec, sources: list[tuple[Mapping, str]], label: str, name: str) -> Any:
        for src, where in sources:
            if p.name in src:
                v = evaluate(src[p.name], p, tensor_name=name, t=t, where=f"{where}.{p.name}")
                if v is not None:
                    return v
        if p.default is MISSING:
            raise ValueError(f"parameters.{p.name}: merge_method {spec.name!r} requires it for "
                             f"{label}{name}, and none was given")
        return p.default

    shared = {p.name: one(p, outer, "", tensor_name) for p in spec.params if p.scope == "shared"}
    per_input = []
    for i, mp in enumerate(model_params):
        label = f"{model_names[i]}: " if model_names and i < len(model_names) else f"input {i}: "
        name = input_names[i] if input_names is not None else tensor_name
        srcs = [(mp or {}, f"models[{i}].parameters"), *outer]
        per_input.append({p.name: one(p, srcs, label, name) for p in spec.params
                          if p.scope == "input" or (p.scope == "non_base" and i != base_index)})
    return shared, per_input


def check_values(spec: MethodSpec, shared: dict, per_input: list[dict], where: str) -> None:
    """Value ranges that mergekit would only reject mid-merge (or not at all)."""
    from jaxinterp.merge.task_arithmetic import GTA_VARIANTS

    # a NaN or infinite weight, t, lambda, eps or tol merged every tensor into NaN or inf, silently
    for label, values in [("", shared)] + [(f" of input {i}", p) for i, p in enumerate(per_input)]:
        for k, v in values.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{where}: {k}{label} must be a finite number, got {v}")
    if spec.name in GTA_VARIANTS:
        for i, p in enumerate(per_input):
            if "density" not in p:
                continue
            d = p["density"]
            if not 0 < d <= 1:
                raise ValueError(f"{where}: density of input {i} must be in (0, 1], got {d}")
            if "epsilon" in p and d < 1 and not (0 < d - p["epsilon"] and d + p["epsilon"] < 1):
                raise ValueError(f"{where}: della needs density +- epsilon in (0, 1), got density {d} "
                                 f"and epsilon {p['epsilon']} for input {i}")
            if "gamma" in p and not 0 <= p["gamma"] <= 1:
                raise ValueError(f"{where}: gamma of input {i} must be in [0, 1], got {p['gamma']}")
    # karcher's theta / sin(theta) at theta = 0 and multislerp's x / (|x| + eps) at x = 0 are 0 / 0
    # without a positive tol / eps: every entry of the tensor NaN, silently (mergekit's too)
    if spec.name == "karcher" and not (shared["tol"] > 0 and shared["max_iter"] >= 0):
        raise ValueError(f"{where}: karcher needs tol > 0 and max_iter >= 0, got tol {shared['tol']} and "
                         f"max_iter {shared['max_iter']}")
    if spec.name == "multislerp" and not shared["eps"] > 0:
        raise ValueError(f"{where}: multislerp needs eps > 0, got {shared['eps']}")
    if spec.name == "nearswap" and not shared["t"] > 0:  # t <= 0 returned the base silently
        raise ValueError(f"{where}: nearswap needs a similarity threshold t > 0 (as mergekit), got {shared['t']}")
    if spec.name == "sce" and not 0 <= shared["select_topk"] <= 1:
        raise ValueError(f"{where}: select_topk must be in [0, 1], got {shared['select_topk']}")
    if spec.name == "linear" and shared["normalize"] and abs(sum(p["weight"] for p in per_input)) < 1e-12:
        raise ValueError(f"{where}: linear with normalize needs weights that do not sum to 0, got "
                         f"{[p['weight'] for p in per_input]}")
    if spec.name == "multislerp" and shared["normalize_weights"]:
        ws = [p["weight"] for p in per_input if "weight" in p]  # the base has none
        if len(ws) > 1 and abs(sum(ws)) < 1e-12:  # w / sum(w): every entry NaN, silently
            raise ValueError(f"{where}: multislerp with normalize_weights needs weights that do not sum to 0, "
                             f"got {ws}")
