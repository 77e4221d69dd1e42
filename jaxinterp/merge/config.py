"""mergekit YAML configurations: read, validate completely, write back.

Supported (the `models:` form of mergekit's MergeConfiguration):

    merge_method: ties
    base_model: path/to/base            # a local HF folder or a .safetensors file
    models:
      - model: path/to/a
        parameters: {density: 0.5, weight: [0.2, 1.0]}
      - model: path/to/b
        parameters: {weight: {filter: mlp, value: 0.7}}
    parameters: {normalize: true}
    dtype: float32                      # computation dtype (inputs are cast to it)
    out_dtype: bfloat16                 # saved dtype (default: dtype, else the inputs')

The `slices:` form (layer ranges stacked, e.g. passthrough frankenmerges) is read by
`jaxinterp.merge.slices`; `modules:` is rejected with a clear message. Models are local paths:
nothing is downloaded. A model given both as base_model and in models is the base (for methods
without a base, such as linear, it is one of the models, as in mergekit); the two are compared as
paths (`model_key`: `./m`, `m/` and /abs/m are one folder), not as text.

Tokenizer keys. jaxinterp writes tensors; the output folder gets the tokenizer files of the model
that `checkpoint.side_source` names (the base_model as written, else the first model) as they
are. So `tokenizer_source: base` (mergekit: the base model's vocabulary; with inputs of one
shared vocabulary, no tensor changes) and `chat_template` (written
by mergekit into tokenizer_config.json, never into a tensor) are accepted, and the template is not
applied. `tokenizer_source: union` or a model, and a `tokenizer:` section (source, added tokens,
pad_to_multiple_of), make mergekit resize or re-order the embedding and LM-head matrices: they are
refused, so that no merge silently differs from mergekit's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from jaxinterp.merge import params as _params
from jaxinterp.merge import registry

DTYPES = ("float32", "float16", "bfloat16", "float64")
_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "tokenizer", "chat_template", "name", "slices", "modules"}


class ModelEntry(NamedTuple):
    model: str
    parameters: dict | None


class MergeConfig(NamedTuple):
    merge_method: str
    models: tuple[ModelEntry, ...]  # the non-base models, in config order
    base_model: str | None
    parameters: dict | None
    dtype: str | None
    out_dtype: str | None
    # the config's base_model when the method has none and merges it as one of the models (linear
    # with the base listed): base_model is then None, but this model still gives the output its
    # config and tokenizer files (`checkpoint.side_source`), and to_dict writes it back
    listed_base: str | None = None


def _dtype(v: Any, field: str) -> str | None:
    if v is None:
        return None
    if v not in DTYPES:
        raise ValueError(f"{field}: expected one of {', '.join(DTYPES)}, got {v!r}")
    return v


def check_tokenizer(d: dict) -> None:
    """ValueError for the mergekit tokenizer keys that would change tensors (module doc)."""
    src = d.get("tokenizer_source")
    if src is not None and src != "base":
        raise ValueError(f"config.tokenizer_source: expected 'base' or nothing (the tokenizer files of "
                         f"the base model are copied as they are); 'union' or a model's tokenizer "
                         f"would resize or re-order the embedding matrices, which jaxinterp does not "
                         f"do, got {src!r}")
    if d.get("tokenizer") is not None:
        raise ValueError(f"config.tokenizer: not supported (its source, added tokens and padding "
                         f"change the embedding matrices); leave it out or use tokenizer_source: "
                         f"base, got {d['tokenizer']!r}")
    tmpl = d.get("chat_template")
    if tmpl is not None and not isinstance(tmpl, str):
        raise ValueError(f"config.chat_template: expected a template name or Jinja string, got {tmpl!r}")


def model_key(model: str) -> str:
    """What identifies a model path: its resolved path (symlinks, `.`, `..`, the working directory)
    when it exists, so `./m`, `m/`, `/abs/m` and a link to it are one model; else the normalised
    text (a name not on this disk is compared as written, up to `./` and trailing slashes)."""
    return os.path.realpath(model) if os.path.exists(model) else os.path.normpath(model)


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two model paths name the same model (`model_key`); None matches nothing."""
    return a is not None and b is not None and (a == b or model_key(a) == model_key(b))


def check_once(seen: dict[str, tuple[int, str]], model: str, i: int, where: str, what: str, in_what: str = "") -> None:
    """ValueError if `model` (as `model_key`) is already in `seen` (else it is added): mergekit
    refuses duplicate merge inputs; merged twice, a model's task vector would count double."""
    key = model_key(model)
    if key in seen:
        j, first = seen[key]
        alias = f"as {model!r}; " if model != first else ""
        raise ValueError(f"{where}: expected each model once{in_what}, got {first!r} again ({alias}first at {what}[{j}])")
    seen[key] = (i, model)


def from_dict(d: Any):
    """Validates the structure, method and parameter names (no file is opened): a MergeConfig, or a
    `slices.SliceConfig` for the `slices:` form."""
    if not isinstance(d, dict):
        raise ValueError(f"config: expected a mapping at the top level, got {type(d).__name__}")
    unknown = set(d) - _TOP_KEYS
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)} (known: {sorted(_TOP_KEYS)})")
    check_tokenizer(d)
    if d.get("modules"):
        raise ValueError("config.modules: per-module configurations are not supported; use `models:` or `slices:`")
    if "merge_method" not in d:
        raise ValueError("config.merge_method: required, got nothing")
    spec = registry.get(d["merge_method"])
    if d.get("slices") is not None:
        from jaxinterp.merge import slices

        return slices.from_dict(d, dtype=_dtype(d.get("dtype"), "config.dtype"),
                                out_dtype=_dtype(d.get("out_dtype"), "config.out_dtype"))
    raw = d.get("models")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"config.models: expected a non-empty list of {{model: PATH}}, got {raw!r}")
    base = d.get("base_model")
    if base is not None and not (isinstance(base, str) and base):  # '' was dropped by to_yaml
        raise ValueError(f"config.base_model: expected a path string, got {base!r}")
    entries = []
    seen: dict[str, tuple[int, str]] = {}
    for i, m in enumerate(raw):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, dict) or not isinstance(m.get("model"), str) or not m["model"] \
                or set(m) - {"model", "parameters"}:
            raise ValueError(f"config.models[{i}]: expected {{model: PATH, parameters: {{...}}}}, got {m!r}")
        check_once(seen, m["model"], i, f"config.models[{i}]", "models")
        p = m.get("parameters")
        if p is not None and not isinstance(p, dict):
            raise ValueError(f"config.models[{i}].parameters: expected a mapping, got {p!r}")
        # compared as paths: `./m`, `m/` or the absolute path of m as base_model, with `m` listed,
        # merged the base once more as a model (its task vector zero, its weight counted)
        if same_model(m["model"], base) and spec.base != "ignored":
            continue  # mergekit: the base listed among the models is still the base
        entries.append(ModelEntry(m["model"], p))
    listed_base = None
    if spec.base == "ignored" and base is not None and any(same_model(e.model, base) for e in entries):
        # a method without a base (linear, ...) merges a listed base_model as one of the models
        base, listed_base = None, base
    g = d.get("parameters")
    if g is not None and not isinstance(g, dict):
        raise ValueError(f"config.parameters: expected a mapping, got {g!r}")
    _params.check_names(spec, g, "config.parameters", per_model=False)
    for i, e in enumerate(entries):
        _params.check_names(spec, e.parameters, f"config.models[{i}].parameters", per_model=True)
    from jaxinterp.merge.tree_merge import check_contract

    check_contract(spec, len(entries), base is not None, arg="config.base_model")
    return MergeConfig(d["merge_method"], tuple(entries), base, g, _dtype(d.get("dtype"), "config.dtype"),
                       _dtype(d.get("out_dtype"), "config.out_dtype"), listed_base)


def _unique_key_loader():
    """yaml.SafeLoader refusing a key given twice in one mapping (YAML requires keys to be unique):
    PyYAML, and so mergekit, keep the last silently, so a second `parameters:` block or `{weight: 1,
    weight: 5}` replaced the first without a word. Merge keys (`<<`) may still be overridden."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"expected each key of a mapping once, got {key!r} again (first on line "
                                        f"{seen[key]})", key_node.start_mark)
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return Loader


def read_dict(path: str | Path) -> Any:
    """The YAML file as loaded (a key given twice is refused), not yet validated."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config: expected a YAML file, got {str(path)!r} (no such file)")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())
    except UnicodeDecodeError as e:  # was the codec's message alone, naming no file
        raise ValueError(f"config: expected a UTF-8 YAML file, got {path} with bytes that are not UTF-8 ({e})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config: {path} is not valid YAML: {e}") from None


def read(path: str | Path):
    return from_dict(read_dict(path))


def to_dict(cfg: MergeConfig) -> dict:
    d: dict[str, Any] = {"merge_method": cfg.merge_method}
    if cfg.base_model or cfg.listed_base:
        d["base_model"] = cfg.base_model or cfg.listed_base
    d["models"] = [{"model": m.model, **({"parameters": m.parameters} if m.parameters else {})}
                   for m in cfg.models]
    for k in ("parameters", "dtype", "out_dtype"):
        if getattr(cfg, k):
            d[k] = getattr(cfg, k)
    return d


def to_yaml(cfg: MergeConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
