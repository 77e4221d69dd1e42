"""NuGraph2 weights: official PyTorch names <-> jaxinterp params, Lightning checkpoints, orbax.

The official `state_dict` names every per-class Linear `<module>.net.{c}.weight` `[O, I]` (torch
layout) and `.bias` `[O]`; jaxinterp stacks the classes of one ClassLinear into `kernel [C, I, O]`
and `bias [C, O]`. The mapping is explicit and total: every official name is used once, every
shape is checked, and an unknown or missing name is an error (a checkpoint of another
architecture is refused before anything is built).

    official                                        params
    encoder.net.{p}.0                               encoder/{p}
    plane_net.net.{p}.edge_net.0                    plane_net/{p}/edge_net
    plane_net.net.{p}.node_net.{0,2}                plane_net/{p}/node_net_{0,1}
    nexus_net.nexus_net.{0,2}                       nexus_net/nexus_net_{0,1}
    nexus_net.nexus_down.{p}.edge_net.0             nexus_net/nexus_down/{p}/edge_net
    nexus_net.nexus_down.{p}.node_net.{0,2}         nexus_net/nexus_down/{p}/node_net_{0,1}
    semantic_decoder.net.{p}                        semantic_decoder/{p}
    {semantic,filter}_decoder.temp                  {semantic,filter}_decoder/temp
    filter_decoder.net.{p}.0.weight [1, C*F]        filter_decoder/{p}/kernel [C, F] (flattened c-major)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxinterp.nugraph.model import NuGraph2Config, Params, check_params, param_shapes
from jaxinterp import torch_pickle
from jaxinterp.atomic import temporary_stem, write_target


def _class_linears(config: NuGraph2Config) -> list[tuple[str, tuple[str, ...]]]:
    """(official module prefix, params path) of every ClassLinear."""
    out = []
    for p in config.planes:
        out.append((f"encoder.net.{p}.0", ("encoder", p)))
        for net, path in ((f"plane_net.net.{p}", ("plane_net", p)),
                          (f"nexus_net.nexus_down.{p}", ("nexus_net", "nexus_down", p))):
            out += [(f"{net}.edge_net.0", path + ("edge_net",)), (f"{net}.node_net.0", path + ("node_net_0",)),
                    (f"{net}.node_net.2", path + ("node_net_1",))]
        out.append((f"semantic_decoder.net.{p}", ("semantic_decoder", p)))
    out += [("nexus_net.nexus_net.0", ("nexus_net", "nexus_net_0")),
            ("nexus_net.nexus_net.2", ("nexus_net", "nexus_net_1"))]
    return out


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def official_names(config: NuGraph2Config = NuGraph2Config()) -> dict[str, tuple[int, ...]]:
    """Every official state_dict name with its torch shape."""
    shapes = param_shapes(config)
    out = {}
    for prefix, path in _class_linears(config):
        c, i, o = _get(shapes, path)["kernel"]
        for k in range(c):
            out[f"{prefix}.net.{k}.weight"] = (o, i)
            out[f"{prefix}.net.{k}.bias"] = (o,)
    for p in config.planes:
        c, f = shapes["filter_decoder"][p]["kernel"]
        out[f"filter_decoder.net.{p}.0.weight"] = (1, c * f)
        out[f"filter_decoder.net.{p}.0.bias"] = (1,)
    out["semantic_decoder.temp"] = ()
    out["filter_decoder.temp"] = ()
    return out


def from_official(state_dict: dict[str, Any], config: NuGraph2Config = NuGraph2Config(), *,
                  dtype=np.float32) -> Params:
    """Official NuGraph2 `state_dict` (name -> array) -> params. Every name used, every shape checked."""
    expected = official_names(config)
    unknown = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    if unknown or missing:
        raise ValueError(f"state_dict does not match NuGraph2 {config}: unknown names {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}, missing names {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}")
    sd = {}
    for name, shape in expected.items():
        arr = np.asarray(state_dict[name])
        if arr.shape != shape:
            raise ValueError(f"state_dict[{name!r}]: expected shape {list(shape)}, got {list(arr.shape)}")
        sd[name] = arr.astype(dtype)
    params: dict[str, Any] = {}
    for prefix, path in _class_linears(config):
        c = config.num_classes
        _set(params, path + ("kernel",), np.stack([sd[f"{prefix}.net.{k}.weight"].T for k in range(c)]))
        _set(params, path + ("bias",), np.stack([sd[f"{prefix}.net.{k}.bias"] for k in range(c)]))
    for p in config.planes:
        w = sd[f"filter_decoder.net.{p}.0.weight"]
        _set(params, ("filter_decoder", p, "kernel"), w.reshape(config.num_classes, config.planar_features))
        _set(params, ("filter_decoder", p, "bias"), sd[f"filter_decoder.net.{p}.0.bias"].reshape(()))
    params["semantic_decoder"]["temp"] = sd["semantic_decoder.temp"]
    params["filter_decoder"]["temp"] = sd["filter_decoder.temp"]
    return params


def to_official(params: Params, config: NuGraph2Config = NuGraph2Config()) -> dict[str, np.ndarray]:
    """params (or a gradient of them) -> {official name: numpy array in torch layout}."""
    out = {}
    for prefix, path in _class_linears(config):
        leaf = _get(params, path)
        kernel, bias = np.asarray(leaf["kernel"]), np.asarray(leaf["bias"])
        for k in range(config.num_classes):
            out[f"{prefix}.net.{k}.weight"] = kernel[k].T
            out[f"{prefix}.net.{k}.bias"] = bias[k]
    for p in config.planes:
        out[f"filter_decoder.net.{p}.0.weight"] = np.asarray(params["filter_decoder"][p]["kernel"]).reshape(1, -1)
        out[f"filter_decoder.net.{p}.0.bias"] = np.asarray(params["filter_decoder"][p]["bias"]).reshape(1)
    out["semantic_decoder.temp"] = np.asarray(params["semantic_decoder"]["temp"])
    out["filter_decoder.temp"] = np.asarray(params["filter_decoder"]["temp"])
    return out


class OfficialCheckpoint(NamedTuple):
    params: Params
    config: NuGraph2Config
    hyper_parameters: dict[str, Any]
    epoch: int | None
    sha256: str | None = None  # of the .ckpt bytes load_official_checkpoint read (and loaded)


_CONFIG_KEYS = ("in_features", "planar_features", "nexus_features", "num_iters", "planes", "semantic_classes")


def _config_value(path, key: str, value):
    """A NuGraph2Config field from the checkpoint's hyper_parameters: names as a tuple (the model
    may have been built with a list or a tuple), sizes as an int; anything else a ValueError."""
    if key in ("planes", "semantic_classes"):
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"{path}: hyper_parameters[{key!r}] must be a list of names, got {value!r}")
    try:  # 64, 64.0 or "64" as before; not 64.5, True, a list
        n = int(value)
        ok = not isinstance(value, bool) and n >= 1 and (n == value or str(value).strip() == str(n))
    except (TypeError, ValueError):
        ok = False
    if ok:
        return n
    raise ValueError(f"{path}: hyper_parameters[{key!r}] must be a positive integer, got {value!r}")


def load_official_checkpoint(path: str | Path, *, dtype=np.float32) -> OfficialCheckpoint:
    """Reads an official NuGraph2 PyTorch Lightning `.ckpt` (without torch) into params and config,
    with the sha256 of the bytes read (the file is read once: the bytes hashed are the bytes loaded)."""
    import hashlib

    data = torch_pickle.check_file(path).read_bytes()
    obj = torch_pickle.load(path, data=data)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    hp = obj.get("hyper_parameters") or {}
    if not isinstance(hp, dict):  # dict() of a list said "dictionary update sequence element #0 ..."
        raise ValueError(f"{path}: hyper_parameters: expected a mapping of names to values, got {type(hp).__name__}")
    hp = dict(hp)
    for head in ("semantic_head", "filter_head"):
        if head in hp and not hp[head]:
            raise ValueError(f"{path}: hyper_parameters[{head!r}] is False; jaxinterp's NuGraph2 needs "
                             f"both the semantic and the filter heads")
    try:  # NuGraph2Config's own message (names given twice, num_iters 0) named no file
        config = NuGraph2Config(**{k: _config_value(path, k, hp[k]) for k in _CONFIG_KEYS if k in hp})
    except ValueError as e:
        raise ValueError(f"{path}: hyper_parameters: {e}") from None
    try:
        params = from_official(obj["state_dict"], config, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return OfficialCheckpoint(params, config, hp, obj.get("epoch"), hashlib.sha256(data).hexdigest())


def convert(ckpt_path: str | Path, out_dir: str | Path, *, norm_file: str | Path) -> OfficialCheckpoint:
    """Official `.ckpt` -> `out_dir`/model.npz + model.json, the model folder `evaluate.load_model`
    (and `nugraph eval/train --init/widen --params`) reads: params, the config from the checkpoint's
    hyper_parameters, and the feature norm of `norm_file`.

    The norm is required: the network sees features normalised by the (mean, std) per plane of the
    file it was trained on, and the official checkpoint carries none (nugraph reads it from the
    processed HDF5 file, `/norm/{plane}`), so `norm_file` is that file (or one of the same norm).
    Everything is read and checked before anything is written; each file is written atomically.
    """
    from jaxinterp.nugraph import hdf5
    from jaxinterp.nugraph.train import check_model_out, save_model

    info = hdf5.read_info(norm_file, need_samples=False, need_norm=True)  # checks each plane's [2, 4]
    ckpt = load_official_checkpoint(ckpt_path)  # read once: its sha256 is of the bytes it loaded
    # paths resolved and the checkpoint compared by its bytes: as given, a repeat through another path
    # (./sim.gnn.h5, or from another folder) was refused as another model, as widen's was before
    provenance = {"converted_from": str(Path(ckpt_path).resolve()), "epoch": ckpt.epoch,
                  "norm_from": str(Path(norm_file).resolve()), "converted_from_sha256": ckpt.sha256}
    # a NaN or inf (a diverged run's checkpoint) was written into model.npz, which load_model then
    # refused at every eval/train --init/widen, blaming "a diverged training run"
    for name, arr in to_official(ckpt.params, ckpt.config).items():
        if not np.isfinite(arr).all():
            raise ValueError(f"ckpt: {ckpt_path} state_dict[{name!r}]: expected finite values, got "
                             f"{int(arr.size - np.isfinite(arr).sum())} non-finite of {arr.size} (a diverged "
                             f"training run?); nothing was written")
    missing = [p for p in ckpt.config.planes if p not in info.norm]
    if missing:
        raise ValueError(f"norm_file: {norm_file} holds a feature norm for planes {list(info.norm)}, the checkpoint's "
                         f"model needs one for each of {list(ckpt.config.planes)} (missing {missing})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: expected a folder for model.npz and model.json, got the file {out}")
    # a run's or another model's files are not overwritten (the same checkpoint and norm file: a repeat)
    check_model_out(out, provenance, compare=("converted_from_sha256", "norm_from"))
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, ckpt.params, ckpt.config, {p: info.norm[p] for p in ckpt.config.planes}, provenance)
    return ckpt


# ---------------------------------------------------------------------------------------------
# orbax


def check_params_target(path: str | Path) -> Path:
    """The absolute `path` if `save_params` may write there: a new path, or an orbax checkpoint it
    replaces. Anything else (a file, a folder of other things) is a ValueError: orbax's own overwrite
    deletes the whole folder first."""
    path = Path(path).absolute()
    write_target(path)  # a symbolic link loop: a ValueError now, not the loop replaced by the checkpoint
    if path.exists() and not (path.is_dir() and (path / "_CHECKPOINT_METADATA").is_file()):
        raise ValueError(f"{path}: expected a new path or an orbax checkpoint folder to replace, got an existing "
                         f"{'folder that holds no checkpoint' if path.is_dir() else 'file'} (nothing was written)")
    return path


def save_params(path: str | Path, params: Params) -> Path:
    """Saves params with orbax at the absolute `path` (a directory) and returns it.

    Written beside it first, then renamed into place; a checkpoint already at `path` is removed only
    after the new one is complete, so a crash leaves at least one of them whole (`check_params_target`).
    """
    import orbax.checkpoint as ocp

    path = check_params_target(path)
    # a symbolic link is written through: staged beside its target, on the target's file system, and
    # renamed onto the target (renamed onto the link, it became a folder and left the target stale)
    target = write_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{temporary_stem(target)}.", suffix=".tmp", dir=target.parent))
    old = None
    try:
        ocp.PyTreeCheckpointer().save(tmp / "params", params)
        if target.exists():
            old = tmp / "old"
            target.rename(old)
        (tmp / "params").rename(target)
    except BaseException:
        if old is not None and not target.exists():
            old.rename(target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_params(path: str | Path, *, config: NuGraph2Config | None = None) -> Params:
    """Loads params saved by `save_params`; with `config`, checks every leaf's shape against it."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists():
        raise ValueError(f"load_params: no checkpoint at {path}")
    if not path.is_dir():
        raise ValueError(f"load_params: expected an orbax checkpoint folder (as save_params writes), got the file {path}")
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    if meta is None or getattr(meta, "item_metadata", None) is None:
        raise ValueError(f"load_params: expected an orbax checkpoint folder (as save_params writes), got {path}, "
                         f"a folder that holds none")
    # Restore onto this process's first device, as the arrays were saved (one host, no mesh):
    # naming the sharding keeps orbax from guessing it from the saved topology.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          meta.item_metadata.tree)
    params = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
    if config is not None:
        check_params(params, config, where=f"load_params: {path} does not hold NuGraph2 params for {config}")
    return params
