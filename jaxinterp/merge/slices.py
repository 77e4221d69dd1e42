"""mergekit's `slices:` form: the output's layers stacked from layer ranges of the inputs.

    merge_method: passthrough            # a "frankenmerge": layers 0-8 of a, then 4-12 of b
    slices:
      - sources: [{model: path/to/a, layer_range: [0, 8]}]
      - sources: [{model: path/to/b, layer_range: [4, 12]}]

    merge_method: slerp                  # any method over aligned slices
    base_model: path/to/a
    slices:
      - sources:
          - {model: path/to/a, layer_range: [0, 12]}
          - {model: path/to/b, layer_range: [0, 12]}
    parameters: {t: [0, 0.5, 1]}

As mergekit plans it (`mergekit/plan.py`): the sources of a slice must span equally many layers;
output layers are numbered on from slice to slice; within a slice, layer idx of n is merged with
the parameters at gradient position t = idx / (n - 1) (t = 1 when n = 1); tensors outside the
layers come from the first slice's sources (embeddings) or the last slice's (the final norm and
the LM head: `params.is_post`), at t = 0 (mergekit 0.1.5; older releases read the post weights at
t = 1). A source that is the base model is the slice's base input. A parameter is looked up in
the source's settings, then the slice's, then the global ones, each only when the one before sets
nothing for the tensor (e.g. its filters all miss); as in mergekit, a source's (per-input)
parameters are evaluated on the name of the tensor read from it (`h.5.` of a source read at layer
5), the shared ones on the output name.

`plan_jobs` turns a validated config and the inputs' safetensors indices into one job per output
tensor, which `checkpoint` runs like the `models:` form's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxinterp.merge import params as _params
from jaxinterp.merge import registry

_SLICE_KEYS = {"sources", "parameters"}
_SOURCE_KEYS = {"model", "layer_range", "parameters"}


class Source(NamedTuple):
    model: str
    layer_range: tuple[int, int]  # [start, end): layers start..end-1
    parameters: dict | None


class Slice(NamedTuple):
    sources: tuple[Source, ...]
    parameters: dict | None


class SliceConfig(NamedTuple):
    merge_method: str
    slices: tuple[Slice, ...]
    base_model: str | None
    parameters: dict | None
    dtype: str | None
    out_dtype: str | None

    @property
    def refs(self) -> list[str]:
        """Every input, in order of first appearance."""
        return list(dict.fromkeys(s.model for sl in self.slices for s in sl.sources))


class Job(NamedTuple):
    """One output tensor: which input tensors, merged with which resolved parameters."""

    out_name: str
    inputs: tuple[tuple[str, str], ...]  # (model ref, tensor name), the base (if any) last
    shared: dict
    per_input: list[dict]
    base_index: int | None


def _mapping(v: Any, where: str) -> dict | None:
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"{where}: expected a mapping, got {v!r}")
    return v


def from_dict(d: dict, *, dtype: str | None, out_dtype: str | None) -> SliceConfig:
    """Validates the `slices:` form (structure, layer ranges, method and parameter names)."""
    from jaxinterp.merge.config import check_once, same_model
    from jaxinterp.merge.tree_merge import check_contract

    spec = registry.get(d["merge_method"])
    if d.get("models"):
        raise ValueError("config: give either models: or slices:, not both")
    base = d.get("base_model")
    if base is not None and not (isinstance(base, str) and base):  # '' was dropped by to_yaml
        raise ValueError(f"config.base_model: expected a path string, got {base!r}")
    g = _mapping(d.get("parameters"), "config.parameters")
    _params.check_names(spec, g, "config.parameters", per_model=False)
    raw = d["slices"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"config.slices: expected a non-empty list of {{sources: [...]}}, got {raw!r}")
    slices = []
    for i, sl in enumerate(raw):
        where = f"config.slices[{i}]"
        if not isinstance(sl, dict) or set(sl) - _SLICE_KEYS or not isinstance(sl.get("sources"), list) \
                or not sl["sources"]:
            raise ValueError(f"{where}: expected {{sources: [{{model: PATH, layer_range: [A, B]}}, ...]}}, got {sl!r}")
        sp = _mapping(sl.get("parameters"), f"{where}.parameters")
        _params.check_names(spec, sp, f"{where}.parameters", per_model=False)
        sources = []
        seen: dict[str, tuple[int, str]] = {}
        for j, s in enumerate(sl["sources"]):
            w = f"{where}.sources[{j}]"
            if not isinstance(s, dict) or set(s) - _SOURCE_KEYS or not isinstance(s.get("model"), str) \
                    or not s["model"]:
                raise ValueError(f"{w}: expected {{model: PATH, layer_range: [A, B], parameters: {{...}}}}, got {s!r}")
            check_once(seen, s["model"], j, w, "sources", " in a slice")
            lr = s.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) for x in lr)
                    and 0 <= lr[0] < lr[1]):
                raise ValueError(f"{w}.layer_range: expected [start, end] with 0 <= start < end, got {lr!r}")
            p = _mapping(s.get("parameters"), f"{w}.parameters")
            _params.check_names(spec, p, f"{w}.parameters", per_model=True)
            sources.append(Source(s["model"], (lr[0], lr[1]), p))
        spans = {s.layer_range[1] - s.layer_range[0] for s in sources}
        if len(spans) != 1:
            raise ValueError(f"{where}.sources: every source of a slice must span the same number of layers, "
                             f"got {[list(s.layer_range) for s in sources]}")
        # a method without a base (linear, karcher, passthrough) merges a source that is the base as
        # one of its models, with its own parameters (mergekit's contract drops the base for them)
        n_base = sum(same_model(s.model, base) for s in sources) if spec.base != "ignored" else 0
        if base is not None and not n_base and spec.base != "ignored":
            # mergekit refuses it too ("Base input is not present in merge inputs"); for nuslerp and
            # multislerp (base optional) the slice would be merged on the raw weights, not on task vectors
            raise ValueError(f"{where}.sources: expected the base_model {base!r} among the sources of every "
                             f"slice (merge_method {spec.name!r} uses it), got {[s.model for s in sources]}")
        check_contract(spec, len(sources) - n_base, n_base > 0, arg=f"{where} (base_model)")
        slices.append(Slice(tuple(sources), sp))
    refs = list(dict.fromkeys(s.model for sl in slices for s in sl.sources))
    if spec.base == "ignored" and base is not None and not any(same_model(r, base) for r in refs):
        # as the models: form refuses it (check_contract): such a base was kept silently, merged into
        # no tensor, only as the tokenizer source. A base among the sources of some slice is an input
        # (a passthrough frankenmerge of it); mergekit ignores the base for these methods per slice
        raise ValueError(f"config.base_model: merge_method {spec.name!r} does not use a base model and {base!r} "
                         f"is in no slice's sources (got {refs}); list it among a slice's sources instead")
    return SliceConfig(d["merge_method"], tuple(slices), base, g, dtype, out_dtype)


def _layer_names(index: dict, layer: int, ref: str) -> dict[str, str]:
    """{the name at layer 0: name} of one layer's tensors (the key matches a tensor across layers)."""
    out = {_params.with_layer(name, 0): name for name in index if _params.layer_index(name) == layer}
    if not out:
        raise ValueError(f"layer_range: model {ref!r} has no layer {layer}")
    return out


def plan_jobs(cfg: SliceConfig, indices: dict[str, dict]) -> tuple[list[Job], int]:
    """(one Job per output tensor, in output order; the number of output layers). Every tensor's
    parameters are resolved and checked here, before any weight is read."""
    from jaxinterp.merge.config import same_model

    spec = registry.get(cfg.merge_method)
    # which sources are the base, once per slice (same_model may look the paths up on disk), not per tensor
    base_sources = [[same_model(s.model, cfg.base_model) for s in sl.sources] for sl in cfg.slices]

    def job(out_name, sl: Slice, in_names: list[str], t: float) -> Job:
        k_slice = cfg.slices.index(sl)
        uses_base = spec.base != "ignored"  # else a source that is the base is one of the models
        is_base = base_sources[k_slice]
        order = [k for k, b in enumerate(is_base) if not b or not uses_base]
        bases = [k for k, b in enumerate(is_base) if b and uses_base]
        order += bases[:1]  # the base input last, once
        base_index = len(order) - 1 if bases else None
        mps = [None if k in bases else sl.sources[k].parameters for k in order]
        refs = [sl.sources[k].model for k in order]
        # per-input parameters read the source's own tensor name (mergekit's resolve_parameters)
        shared, per_input = _params.resolve(spec, tensor_name=out_name, t=t, global_params=cfg.parameters,
                                            model_params=mps, base_index=base_index, model_names=refs,
                                            slice_params=sl.parameters, slice_where=f"slices[{k_slice}].parameters",
                                            input_names=[in_names[k] for k in order])
        _params.check_values(spec, shared, per_input, f"parameters for {out_name}")
        return Job(out_name, tuple(zip(refs, (in_names[k] for k in order))), shared, per_input, base_index)

    first = cfg.slices[0].sources[0]
    outside = [n for n in indices[first.model] if _params.layer_index(n) is None]
    pre = [n for n in outside if not _params.is_post(n)]
    post = [n for n in outside if _params.is_post(n)]
    # the embeddings come from the first slice's sources, the final norm and LM head from the last's:
    # one that lacks it (tied embeddings, no lm_head) was a KeyError from deep inside `prepare`
    for names, sl, which in ((pre, cfg.slices[0], "first"), (post, cfg.slices[-1], "last")):
        for n in names:
            missing = [s.model for s in sl.sources if n not in indices[s.model]]
            if missing:
                raise ValueError(f"slices: {n} (outside the layers, of {first.model!r}) is read from every source "
                                 f"of the {which} slice, and {missing[0]!r} has no such tensor")
    jobs = [job(n, cfg.slices[0], [n] * len(cfg.slices[0].sources), 0.0) for n in pre]
    layer = 0
    for sl in cfg.slices:
        span = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        for idx in range(span):
            t = idx / (span - 1) if span > 1 else 1.0
            names = [_layer_names(indices[s.model], s.layer_range[0] + idx, s.model) for s in sl.sources]
            # the first source's tensors name the output's: one only the others hold was dropped
            # silently (mergekit refuses a required tensor a source lacks, "required but not present")
            for s, n in zip(sl.sources[1:], names[1:]):
                extra = [name for template, name in n.items() if template not in names[0]]
                if extra:
                    raise ValueError(f"slices: {extra[0]} of {s.model!r} has no counterpart in {sl.sources[0].model!r}, "
                                     f"the slice's first source (whose layer {sl.sources[0].layer_range[0] + idx} "
                                     f"tensors name the output's); expected the same tensors in every source")
            for template, name0 in names[0].items():
                missing = [s.model for s, n in zip(sl.sources, names) if template not in n]
                if missing:
                    raise ValueError(f"slices: {name0} has no counterpart in {missing[0]!r}")
                jobs.append(job(_params.with_layer(template, layer), sl, [n[template] for n in names], t))
            layer += 1
    last = cfg.slices[-1]
    jobs += [job(n, last, [n] * len(last.sources), 0.0) for n in post]
    return jobs, layer


def to_yaml(cfg: SliceConfig) -> str:
    import yaml

    d: dict[str, Any] = {"merge_method": cfg.merge_method}
    if cfg.base_model:
        d["base_model"] = cfg.base_model
    d["slices"] = [{"sources": [{"model": s.model, "layer_range": list(s.layer_range),
                                 **({"parameters": s.parameters} if s.parameters else {})} for s in sl.sources],
                    **({"parameters": sl.parameters} if sl.parameters else {})} for sl in cfg.slices]
    for k in ("parameters", "dtype", "out_dtype"):
        if getattr(cfg, k):
            d[k] = getattr(cfg, k)
    return yaml.safe_dump(d, sort_keys=False)
