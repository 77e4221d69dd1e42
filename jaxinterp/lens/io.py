"""Lens files: jaxinterp's own (safetensors + JSON metadata) and LensA state dicts saved by the
PyTorch code (msakarvadia/AttentionLens: `linears.{h}.weight` [V, D], `linears.{h}.bias` [V], as a
.pt state dict, a pickled LensA module's state dict, or a Lightning .ckpt whose `state_dict` holds
them under the prefix `attn_lens.`), read without torch.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxinterp import atomic
from jaxinterp.checks import is_integer
from jaxinterp.lens.lenses import LensConfig, check_params

_LINEAR = re.compile(r"^(.*\.)?linears\.(\d+)\.(weight|bias)$")


def save_lens(path: str | os.PathLike, lens: dict, config: LensConfig, *, extra: dict | None = None) -> Path:
    """Writes the lens params and its config to one .safetensors file (atomically). ValueError, before
    anything is written, for another suffix (load_lens would read it as a PyTorch file), params
    that do not have the config's shapes (the file could not be loaded) or an `extra` (a dict stored
    as JSON metadata) that JSON cannot hold."""
    from safetensors.numpy import save_file

    if Path(path).suffix != ".safetensors":
        raise ValueError(f"path: expected a .safetensors file name (load_lens reads other suffixes as PyTorch "
                         f"files), got {path}")
    check_params(lens, config)
    meta = {"lens_config": json.dumps({**config.__dict__}), "extra": _extra_json(extra)}
    with atomic.atomic_path(path) as tmp:
        # safetensors writes a non-contiguous array's memory as is (silently wrong): copy to C order.
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in lens.items()}, str(tmp), metadata=meta)
    return Path(path)


def _extra_json(extra: dict | None) -> str:
    """`extra` as the JSON object stored in the lens file; ValueError naming the key whose value (or the
    key itself) JSON cannot hold (json.dumps raised a TypeError that named neither key nor file)."""
    if extra is None:
        return "{}"
    if not isinstance(extra, dict):
        raise ValueError(f"extra: expected a dict of JSON-serialisable values, got {type(extra).__name__}")
    for key, value in extra.items():
        try:
            json.dumps({key: value})
        except (TypeError, ValueError) as e:  # ValueError: a circular reference
            raise ValueError(f"extra: expected JSON-serialisable keys and values, got key {key!r} (a "
                             f"{type(value).__name__} value), which JSON cannot hold: {e}") from None
    return json.dumps(extra)


def load_lens(path: str | os.PathLike, *, model_config=None, layer: int | None = None) -> tuple[dict, LensConfig]:
    """Reads a lens: jaxinterp's .safetensors, or a PyTorch LensA .pt/.ckpt (which does not record its
    layer: pass `layer`). With `model_config` (a GPT2Config, or any object with n_layer, n_head, n_embd
    and vocab_size), checks that the lens fits that model (ValueError if not); a .safetensors lens is
    checked from its header, before its tensors are read."""
    path = Path(path)
    if layer is not None and (not is_integer(layer) or layer < 0):
        # bool is an int: True matched a layer-1 .safetensors lens (True == 1), silently
        raise ValueError(f"layer: expected a non-negative integer (or None: the layer a .safetensors lens records), "
                         f"got {layer!r}")
    if not path.is_file():
        raise ValueError(f"lens: {path} does not exist")
    if path.suffix == ".safetensors":
        lens, config = _read_own(path, model_config=model_config, layer=layer)
    else:
        lens, config = from_torch_state_dict(_torch_state_dict(path), layer=layer)
    check_params(lens, config)
    if model_config is not None:
        check_fits(config, model_config, source=str(path))
    return lens, config


class _Header(NamedTuple):
    shape: tuple[int, ...]  # what `check_params` reads of a tensor not yet loaded


def _read_own(path: Path, *, model_config, layer: int | None) -> tuple[dict, LensConfig]:
    """A jaxinterp .safetensors lens: metadata, layer, fit and tensor shapes are checked from the
    header, so a lens for another model fails before its (up to GBs of) tensors are read."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), "np")
    except Exception as e:  # noqa: BLE001 -- safetensors' SafetensorError is no ValueError: a traceback
        raise ValueError(f"lens: {path} is not a readable safetensors file: {e}") from e
    with handle as f:
        meta = f.metadata() or {}
        if "lens_config" not in meta:
            raise ValueError(f"lens: {path} is a safetensors file without jaxinterp lens metadata")
        try:
            fields = json.loads(meta["lens_config"])
            config = LensConfig(**fields)
        # TypeError: missing or unknown fields; ValueError: JSON's, or LensConfig's for a bad field
        # (a kind or layer that names no file: 'kind: expected one of ...')
        except (TypeError, ValueError) as e:
            raise ValueError(f"lens: {path}: expected lens_config metadata with the fields of LensConfig "
                             f"(layer, n_head, d_model, vocab_size, kind), got {meta['lens_config'][:200]!r} "
                             f"({e})") from e
        if layer is not None and layer != config.layer:
            raise ValueError(f"layer: the lens {path} is for layer {config.layer}, got layer {layer}")
        if model_config is not None:
            check_fits(config, model_config, source=str(path))
        check_params({k: _Header(tuple(f.get_slice(k).get_shape())) for k in f.keys()}, config)
        return {k: f.get_tensor(k) for k in f.keys()}, config


def check_fits(config: LensConfig, model_config, *, source: str = "file") -> None:
    """ValueError if a lens is for another vocabulary, width, head count or a layer the model lacks."""
    want = (model_config.n_head, model_config.n_embd, model_config.vocab_size)
    got = (config.n_head, config.d_model, config.vocab_size)
    if got != want:
        raise ValueError(f"lens {source}: made for heads {got[0]}, d_model {got[1]}, vocab {got[2]}, but the model "
                         f"has heads {want[0]}, d_model {want[1]}, vocab {want[2]}")
    if not 0 <= config.layer < model_config.n_layer:
        raise ValueError(f"lens {source}: layer {config.layer} out of range, the model has {model_config.n_layer} blocks")


def _torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    from jaxinterp import torch_pickle

    return torch_pickle.load_state_dict(path)


def from_torch_state_dict(state: dict[str, np.ndarray], *, layer: int | None) -> tuple[dict, LensConfig]:
    """LensA params from `linears.{h}.weight` [V, D] / `linears.{h}.bias` [V] (any prefix, e.g. the
    Lightning module's `attn_lens.`; other tensors, such as a saved GPT-2, are ignored)."""
    if layer is None:
        raise ValueError("layer: a PyTorch lens file does not record its layer; pass the layer it was trained on")
    heads: dict[int, dict[str, np.ndarray]] = {}
    prefixes: dict[str, str] = {}  # prefix -> a name under it
    for name, value in state.items():
        m = _LINEAR.match(name)
        if m:
            prefixes.setdefault(m.group(1) or "", name)
            heads.setdefault(int(m.group(2)), {})[m.group(3)] = np.asarray(value, np.float32)
    if not heads:
        raise ValueError(f"lens: no `linears.<head>.weight` tensors in the state dict (first names: {list(state)[:5]})")
    if len(prefixes) > 1:
        # two lenses (a list of layers' lenses, an EMA copy): each head's tensors were the last name read
        # of any of them, a mix of lenses, silently
        raise ValueError(f"lens: expected the linears of one lens, got them under {len(prefixes)} prefixes "
                         f"(e.g. {sorted(prefixes.values())[:4]}); save the one lens's state dict alone")
    H = len(heads)
    if sorted(heads) != list(range(H)) or any(set(h) != {"weight", "bias"} for h in heads.values()):
        raise ValueError(f"lens: expected linears.0..{H - 1} each with weight and bias, got heads {sorted(heads)}")
    if heads[0]["weight"].ndim != 2:  # else unpacking its shape failed with 'not enough values to unpack'
        raise ValueError(f"lens: linears.0.weight: expected shape [V, D] (torch Linear's [out, in]), got "
                         f"{list(heads[0]['weight'].shape)}")
    V, D = heads[0]["weight"].shape
    for h, t in heads.items():
        if t["weight"].shape != (V, D) or t["bias"].shape != (V,):
            raise ValueError(f"lens: linears.{h} has weight {list(t['weight'].shape)} and bias {list(t['bias'].shape)}, "
                             f"expected {[V, D]} and {[V]} like head 0")
    W = np.ascontiguousarray(np.stack([heads[h]["weight"].T for h in range(H)]))  # torch Linear stores [out, in]
    b = np.stack([heads[h]["bias"] for h in range(H)])
    return {"W": W, "b": b}, LensConfig(layer, H, D, V, "lensa")
