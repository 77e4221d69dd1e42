"""Hugging Face GPT-2 checkpoints <-> params, and TransformerLens-style weight processing.

The checkpoint's names map one to one onto the params tree (`transformer.h.3.attn.c_attn.weight`
-> `h_3/attn/c_attn/kernel`); HF's Conv1D stores [in, out], the layout of a kernel here, so nothing
is transposed. Every tensor's name and shape is checked against the config before anything is
built; the only names skipped are the causal-mask buffers old checkpoints carry (`attn.bias`,
`attn.masked_bias`) and a tied `lm_head.weight`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import flax.traverse_util
import jax
import numpy as np

from jaxinterp import atomic
from jaxinterp.transformer.gpt2 import ACTIVATIONS, GPT2Config, check_dtype, check_params, param_shapes

_BUFFERS = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_BLOCK = re.compile(r"^h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)$")
_TOP = {"wte.weight": ("wte", "embedding"), "wpe.weight": ("wpe", "embedding"),
        "ln_f.weight": ("ln_f", "scale"), "ln_f.bias": ("ln_f", "bias")}
# safetensors metadata key: the config.json (config_to_hf's, without token ids) that save_gpt2 wrote
# the weights with. The two files are renamed into place one after the other; a crash between them
# left new weights beside the old config.json, which loaded (a tied config ignores an untied lm_head).
_SAVED_CONFIG = "jaxinterp_config"
# safetensors metadata key: {file name: sha256} of the tokenizer files save_gpt2 wrote after the weights.
# A crash before they were all renamed into place left the new model beside the old tokenizer (other
# token ids, silently); load_tokenizer refuses tokenizer files that are not the recorded ones.
_SAVED_TOKENIZER = "jaxinterp_tokenizer"


def config_from_hf(hf: Mapping[str, Any]) -> GPT2Config:
    """GPT2Config from a Hugging Face `config.json` dict; rejects options this model does not implement."""
    if not isinstance(hf, Mapping):
        raise ValueError(f"a GPT-2 config.json must hold a JSON object, got {type(hf).__name__}")
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in hf]
    if missing:
        raise ValueError(f"GPT-2 config is missing {missing}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"expected a GPT-2 config (model_type 'gpt2'), got model_type {hf.get('model_type')!r}")
    if hf.get("add_cross_attention", False):
        raise ValueError("add_cross_attention=True (encoder-decoder GPT-2) is not supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"activation_function {act!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    return GPT2Config(
        vocab_size=hf["vocab_size"], n_positions=hf.get("n_positions", 1024), n_embd=hf["n_embd"],
        n_layer=hf["n_layer"], n_head=hf["n_head"], n_inner=hf.get("n_inner"), activation_function=act,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        scale_attn_weights=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def config_to_hf(config: GPT2Config, *, tokenizer=None) -> dict[str, Any]:
    """A Hugging Face `config.json` dict; its bos/eos token ids are the tokenizer's when one is given,
    else left out (transformers then takes GPT-2's 50256)."""
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
          "n_positions": config.n_positions, "n_embd": config.n_embd, "n_layer": config.n_layer,
          "n_head": config.n_head, "n_inner": config.n_inner, "activation_function": config.activation_function,
          "layer_norm_epsilon": config.layer_norm_epsilon, "scale_attn_weights": config.scale_attn_weights,
          "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
          "tie_word_embeddings": config.tie_word_embeddings}
    # Not a fixed 0: for GPT-2 that is '!', where transformers' generate() would stop.
    for key in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, key, None) is not None:
            hf[key] = int(getattr(tokenizer, key))
    return hf


def hf_path(name: str) -> tuple[str, ...] | None:
    """The params path of a HF tensor name, or None for a buffer that carries no weight."""
    full, name = name, name.removeprefix("transformer.")
    if name in _TOP:
        return _TOP[name]
    if name == "lm_head.weight":
        return ("lm_head", "kernel")
    if _BUFFERS.match(name):
        return None
    m = _BLOCK.match(name)
    if not m:
        raise ValueError(f"unexpected tensor {full!r} in the GPT-2 checkpoint")
    layer, mod, kind = m.groups()
    leaf = {"ln_1": {"weight": "scale"}, "ln_2": {"weight": "scale"}}.get(mod, {}).get(kind, "kernel" if kind == "weight" else "bias")
    return (f"h_{layer}", *mod.split("."), leaf)


# safetensors' dtype codes, by the numpy dtype of the tensors (BF16 and F8: ml_dtypes')
_FLOAT_CODES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_OTHER_CODES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
                "I32": "int32", "U64": "uint64", "I64": "int64", "C64": "complex64"}


def _plan(specs: Mapping[str, tuple[tuple[int, ...], str, bool]],
          config: GPT2Config) -> dict[str, tuple[tuple[str, ...], bool]]:
    """{HF name: (params path, transposed)} of the tensors to read, from each one's (shape, dtype name,
    is floating) alone: every expected tensor present with its shape, nothing unknown. The checks of
    params_from_state_dict and load_gpt2, which makes them from the files' headers before reading any."""
    expected = param_shapes(config)
    plan: dict[str, tuple[tuple[str, ...], bool]] = {}
    source: dict[tuple[str, ...], str] = {}
    for name, (shape, dtype, floating) in specs.items():
        path = hf_path(name)
        if path is None:
            continue
        if not floating:
            raise ValueError(f"tensor {name!r}: expected floating-point weights, got dtype {dtype}")
        transposed = path == ("lm_head", "kernel")
        if transposed:
            if config.tie_word_embeddings:
                # the same matrix as wte (HF ties it on load), but its shape must still be one
                if tuple(shape) != (config.vocab_size, config.n_embd):
                    raise ValueError(f"tensor {name!r}: expected shape {[config.vocab_size, config.n_embd]} "
                                     f"(tied to wte), got {list(shape)}")
                continue
            shape = tuple(reversed(shape))  # nn.Linear [V, D] -> kernel [D, V]
        if path not in expected:
            raise ValueError(f"tensor {name!r} does not belong to a GPT-2 with {config.n_layer} layers")
        if path in source:  # "transformer.wte.weight" and "wte.weight": one of them would be dropped silently
            raise ValueError(f"tensors {source[path]!r} and {name!r} are the same weight ({'/'.join(path)}); "
                             "expected one of them")
        if tuple(shape) != tuple(expected[path]):
            raise ValueError(f"tensor {name!r}: expected shape {list(expected[path])}, got {list(shape)}")
        plan[name], source[path] = (path, transposed), name
    # an untied lm_head's bias: zeros when its kernel is there (nn.Linear has none)
    missing = [p for p in expected if p not in source and not (p == ("lm_head", "bias") and ("lm_head", "kernel") in source)]
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), first: {'/'.join(missing[0])} "
                         f"(shape {list(expected[missing[0]])})")
    return plan


def _converted(tensor, transposed: bool) -> np.ndarray:
    tensor = np.asarray(tensor, np.float32)  # float32 weights: no copy
    return tensor.T if transposed else tensor


def _unflat_plan(flat: dict, config: GPT2Config, place=np.asarray) -> dict:
    if ("lm_head", "bias") in param_shapes(config):
        flat.setdefault(("lm_head", "bias"), place(np.zeros(config.vocab_size, np.float32)))
    return _unflat(flat)


def params_from_state_dict(state: Mapping[str, np.ndarray], config: GPT2Config) -> dict:
    """Params from HF tensors; every expected tensor present with its shape, nothing unknown."""
    # jax's issubdtype: numpy's says bfloat16 (ml_dtypes, as safetensors reads BF16) is no float
    dtypes = {name: np.asarray(t).dtype for name, t in state.items()}
    plan = _plan({name: (tuple(np.shape(t)), dtypes[name], jax.dtypes.issubdtype(dtypes[name], np.floating))
                  for name, t in state.items()}, config)
    return _unflat_plan({path: _converted(state[name], t) for name, (path, t) in plan.items()}, config)


def state_dict_from_params(params: Mapping, config: GPT2Config) -> dict[str, np.ndarray]:
    """HF tensor names -> arrays (the inverse of params_from_state_dict). Raises ValueError for
    params that are not those of a GPT-2 of `config` (a checkpoint that load_gpt2 would refuse)."""
    check_params(params, config)
    out = {}
    for path, leaf in _flat(params).items():
        top, *rest = path
        if top == "lm_head":
            if rest == ["kernel"]:
                out["lm_head.weight"] = np.asarray(leaf).T
            elif np.any(np.asarray(leaf)):
                raise ValueError("lm_head has a non-zero bias, which a HF GPT-2 checkpoint cannot hold")
            continue
        inverse = {v: k for k, v in _TOP.items()}
        if tuple(path) in inverse:
            out["transformer." + inverse[tuple(path)]] = np.asarray(leaf)
            continue
        layer = top.split("_")[1]
        *mods, leaf_name = rest
        kind = "weight" if leaf_name in ("kernel", "scale") else "bias"
        out[f"transformer.h.{layer}.{'.'.join(mods)}.{kind}"] = np.asarray(leaf)
    return out


def _resolve(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"expected a folder holding config.json and *.safetensors, got the file {path}")
    if path.is_absolute() or str(name_or_path).startswith((".", "~")) or str(name_or_path).count("/") > 1:
        raise ValueError(f"model folder {path} does not exist (and it is no Hugging Face hub name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), allow_patterns=[
            "config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab.json", "merges.txt"]))
    except Exception as e:  # noqa: BLE001 -- any hub failure becomes one clear message
        raise ValueError(f"{str(name_or_path)!r} is neither a local folder nor a downloadable Hugging Face "
                         f"model ({type(e).__name__}: {e})") from e


def read_config(name_or_path: str | os.PathLike) -> tuple[Path, GPT2Config]:
    """(folder, GPT2Config) of a model from its config.json alone, for checks that must come before its
    weights are read (the sizes are those of the processed model too)."""
    folder = _resolve(name_or_path)
    if not (folder / "config.json").is_file():  # a folder of that name: "no config.json", not IsADirectoryError
        raise ValueError(f"{folder} has no config.json")
    try:
        hf = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:  # a ValueError already, but one that does not say which file
        raise ValueError(f"{folder / 'config.json'} is not valid JSON: {e}") from e
    return folder, config_from_hf(hf)


def load_gpt2(name_or_path: str | os.PathLike, *, process_weights: bool = False,
              dtype: str = "float32") -> tuple[dict, GPT2Config]:
    """Reads a Hugging Face GPT-2 (local folder or hub name): returns (params, config), the params
    as jax arrays on the default device.

    process_weights=True applies TransformerLens's processing (`process_weights` below), as the
    Attention Lens and memory-injection papers did.
    """
    check_dtype(dataclasses.replace(GPT2Config(), dtype=dtype))  # before any file is read or downloaded
    folder, config = read_config(name_or_path)
    config = dataclasses.replace(config, dtype=dtype)
    files = _checkpoint_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no *.safetensors file (PyTorch .bin checkpoints are not read)")
    for f in files:  # from the headers, before any tensor is read
        _check_saved_config(f, config)
    specs, where = _headers(files, folder)
    plan = _plan(specs, config)
    # Tensor by tensor, each read into an aligned buffer of its own that a CPU's jax array takes
    # without a copy (load_file: the mapped file's pages, which count as the process's memory, and
    # a copy of each tensor, then jax's copy of that: loading peaked at 2.0x the checkpoint; now
    # 1.0x on a CPU), converted when it must be, put on the device and dropped. On the device: numpy params
    # would be copied host -> accelerator on every call of a jitted function (on a CPU too: GPT-2
    # small's forward of 8 tokens took 0.27 s with numpy params, 0.04 s with these). Processing
    # reads numpy params (no second copy on the accelerator) and puts its own there.
    place = np.asarray if process_weights else jax.device_put
    flat = {}
    for f in files:
        for name, tensor in _read(f, {n: specs[n] for n in plan if where[n] == f.name}):
            path, transposed = plan[name]
            flat[path] = place(_aligned_float32(tensor, transposed))
            del tensor
    params = _unflat_plan(flat, config, place)
    del flat
    return _process(params, config) if process_weights else (params, config)


def _headers(files: list[Path], folder: Path) -> tuple[dict, dict[str, str]]:
    """({name: (shape, dtype name, is floating)}, {name: file name}) of every tensor in `files`, from
    their headers alone; ValueError for a tensor in two files or of a dtype not read here (F8_E8M0, F4)."""
    from safetensors import safe_open

    specs: dict[str, tuple[tuple[int, ...], str, bool]] = {}
    where: dict[str, str] = {}
    for file in files:
        with safe_open(str(file), "np") as f:
            for name in f.keys():
                if name in where:  # a stale full checkpoint beside shards: one copy would win silently
                    raise ValueError(f"tensor {name!r} is in both {where[name]} and {file.name}; expected each "
                                     f"tensor in one *.safetensors file of {folder}")
                view = f.get_slice(name)
                code = view.get_dtype()
                if code not in _FLOAT_CODES and code not in _OTHER_CODES:
                    raise ValueError(f"tensor {name!r} in {file.name}: expected weights of dtype "
                                     f"{', '.join(_FLOAT_CODES)}, got {code}")
                specs[name] = (tuple(view.get_shape()), _FLOAT_CODES.get(code) or _OTHER_CODES[code],
                               code in _FLOAT_CODES)
                where[name] = file.name
    return specs, where


def _read(file: Path, specs: Mapping[str, tuple[tuple[int, ...], str, bool]]):
    """Yields (name, numpy tensor) for each tensor of `specs` (from _headers) in `file`, each read into a
    fresh buffer aligned to 64 bytes: jax's CPU client takes such an array as it is, without a copy."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))  # safe_open has checked it (offsets inside the file, sizes)
        for name, (shape, dtype, _) in specs.items():
            info = header.get(name, {})
            begin, end = info.get("data_offsets", (0, -1))
            if (_FLOAT_CODES.get(info.get("dtype")) != dtype or tuple(info.get("shape", ())) != shape
                    or end - begin != int(np.prod(shape)) * jax.numpy.dtype(dtype).itemsize or begin < 0):
                raise ValueError(f"{file}: expected tensor {name!r} of {dtype} {list(shape)} as its header said "
                                 "moments ago, got another file (replaced while being read?)")
            f.seek(8 + n + begin)
            data = _aligned(end - begin)
            if f.readinto(data) != end - begin:
                raise ValueError(f"{file}: expected {end - begin} bytes of tensor {name!r}, got the end of the file")
            yield name, data.view(jax.numpy.dtype(dtype)).reshape(shape)  # ml_dtypes' bfloat16, float8 too


def _aligned(nbytes: int) -> np.ndarray:
    """A new uint8 buffer of `nbytes` whose data starts at a multiple of 64 bytes (XLA's CPU alignment)."""
    buf = np.empty(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + nbytes]


def _aligned_float32(tensor: np.ndarray, transposed: bool) -> np.ndarray:
    """`tensor` (transposed) as an aligned, C-ordered float32 array: itself when it is one already."""
    if tensor.dtype == np.float32 and not transposed:
        return tensor
    shape = tensor.shape[::-1] if transposed else tensor.shape
    out = _aligned(int(np.prod(shape)) * 4).view(np.float32).reshape(shape)
    np.copyto(out, tensor.T if transposed else tensor, casting="unsafe")
    return out


def _checkpoint_files(folder: Path) -> list[Path]:
    """The folder's *.safetensors files, sorted, but hidden ones: the temporary file of a save killed
    midway made the folder unloadable and refused by save_gpt2 ('other checkpoints'). Hugging Face
    writes no hidden weights."""
    return atomic.visible_files(folder, "*.safetensors")


def _check_saved_config(file: Path, config: GPT2Config) -> None:
    """ValueError if `file` was saved by save_gpt2 with another config than the config.json beside it
    (files saved before the config was recorded, or by other tools, record none and are not checked)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "np") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 -- safetensors' SafetensorError is no ValueError
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from e
    if _SAVED_CONFIG not in meta:
        return
    config_json = file.parent / "config.json"
    try:
        saved = dataclasses.replace(config_from_hf(json.loads(meta[_SAVED_CONFIG])), dtype=config.dtype)
    except ValueError as e:  # json.JSONDecodeError is one
        raise ValueError(f"{file}: expected {_SAVED_CONFIG!r} metadata holding a GPT-2 config.json, got "
                         f"{meta[_SAVED_CONFIG][:200]!r} ({e})") from e
    if saved != config:
        diff = [f"{k.name}: {file.name} {getattr(saved, k.name)!r}, config.json {getattr(config, k.name)!r}"
                for k in dataclasses.fields(config) if getattr(saved, k.name) != getattr(config, k.name)]
        raise ValueError(f"{config_json} and {file} do not belong together (a save interrupted between the two?): "
                         f"expected the config the weights were saved with, got {'; '.join(diff)}")


def save_gpt2(params: Mapping, config: GPT2Config, folder: str | os.PathLike, *, tokenizer=None) -> Path:
    """Writes config.json and model.safetensors (and the tokenizer, if given) that `load_gpt2` reads.

    Each file is written atomically, the weights first; they record the config they were saved with
    and the digests of the tokenizer's files, and load_gpt2 refuses a config.json, load_tokenizer
    tokenizer files, that disagree (a crash between the renames). Without a tokenizer, the tokenizer
    files already in `folder` are left as they are, unrecorded (not checked)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict_from_params(params, config).items()}
    # load_gpt2 reads every *.safetensors of the folder: beside another checkpoint's (a sharded
    # one's), the model saved here could not be loaded again
    others = [f.name for f in _checkpoint_files(folder) if f.name != "model.safetensors"]
    if others:
        raise ValueError(f"{folder}: expected a folder without other *.safetensors checkpoints to save into "
                         f"(load_gpt2 reads them all), got {others}")
    folder.mkdir(parents=True, exist_ok=True)  # after the checks: a refused model leaves no folder
    meta = {"format": "pt", _SAVED_CONFIG: json.dumps(config_to_hf(config))}
    tok_files: dict[str, bytes] = {}
    if tokenizer is not None:
        # transformers writes its files in place: into a temporary folder (before the weights, whose
        # metadata records their digests; a failing tokenizer leaves the folder as it was), then each
        # file atomically, last
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tokenizer.") as tmp:
            tokenizer.save_pretrained(tmp)
            tok_files = {f.relative_to(tmp).as_posix(): f.read_bytes() for f in sorted(Path(tmp).rglob("*"))
                         if f.is_file()}
        meta[_SAVED_TOKENIZER] = json.dumps({name: hashlib.sha256(b).hexdigest() for name, b in tok_files.items()})
    with atomic.atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    atomic.write_text(folder / "config.json", json.dumps(config_to_hf(config, tokenizer=tokenizer), indent=2))
    for name, data in tok_files.items():
        atomic.write_bytes(folder / name, data)
    return folder


def _check_saved_tokenizer(folder: Path) -> None:
    """ValueError if the weights in `folder` were saved by save_gpt2 with a tokenizer whose files are not
    the ones there now (folders without the record, and unreadable weights, which load_gpt2 reports,
    are not checked)."""
    from safetensors import safe_open

    for file in _checkpoint_files(folder):
        try:
            with safe_open(str(file), "np") as f:
                recorded = (f.metadata() or {}).get(_SAVED_TOKENIZER)
        except Exception:  # noqa: BLE001 -- SafetensorError: not this check's to report
            continue
        if recorded is None:
            continue
        try:
            digests = json.loads(recorded)
            if not isinstance(digests, dict):
                raise ValueError(f"a JSON {type(digests).__name__}")
        except ValueError as e:  # json.JSONDecodeError is one
            raise ValueError(f"{file}: expected {_SAVED_TOKENIZER!r} metadata holding a JSON object of tokenizer "
                             f"file digests, got {recorded[:200]!r} ({e})") from e
        differ = []
        for name, digest in sorted(digests.items()):
            path = folder / name
            if not path.is_file():
                differ.append(f"{name} missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                differ.append(f"{name} another file")
        if differ:
            raise ValueError(f"the tokenizer files in {folder} and {file.name} do not belong together (a save "
                             f"interrupted between them?): expected the tokenizer the weights were saved with, "
                             f"got {'; '.join(differ)}; save the model and its tokenizer again")


def load_tokenizer(name_or_path: str | os.PathLike):
    """transformers' AutoTokenizer for a local folder or hub name. ValueError if the folder's weights
    record other tokenizer files than those beside them (`save_gpt2` interrupted before they were in place)."""
    # Only tokenizers are used from transformers: its advice that PyTorch is missing is noise here.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    folder = path if path.is_dir() else _resolve(name_or_path)
    _check_saved_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    if not tok.vocab_size:
        # transformers builds a GPT-2 tokenizer with an empty vocabulary from a folder without one
        # (a config.json is enough): every text would become no tokens at all
        raise ValueError(f"{folder}: expected a tokenizer (tokenizer.json, or vocab.json and merges.txt), "
                         f"got a folder without one (its tokenizer would have an empty vocabulary)")
    return tok


def process_weights(params: Mapping, config: GPT2Config) -> tuple[dict, GPT2Config]:
    """TransformerLens's default processing: fold_ln, center_writing_weights, center_unembed,
    fold_value_biases. Returns new params and a config with an untied unembedding.

    The logits change only by a constant per position (softmax is unchanged). Layer norms keep
    their place with weight 1 and bias 0 (TransformerLens's LNPre), so the architecture is the same.
    Computed in float64, returned in float32 as jax arrays on the default device; one block at a
    time, so the float64 copy is a block's, not the model's (whole, loading GPT-2 small with this
    processing peaked 2.6 GB above the start, a block at a time 1.45 GB). In load_gpt2 each raw part
    is also freed once processed (a random 92 MB checkpoint: peak 3.2x its size above the start ->
    2.1-2.4x; 1.05x without processing).
    """
    # params of another config: a third block under a 2-layer config was dropped silently, a missing
    # one a KeyError
    check_params(params, config)
    return _processed(dict(params), config)  # a new top-level dict: the caller's keeps its leaves


def _processed(params: dict, config: GPT2Config) -> tuple[dict, GPT2Config]:
    """process_weights, popping each part from `params` once processed: when they are the only
    references (load_gpt2's), the raw weights are freed as the processed ones are made, not kept
    to the end beside them."""
    D = config.n_embd

    def f64(tree: Mapping) -> dict:  # new containers, new arrays
        return jax.tree.map(lambda a: np.array(a, np.float64), dict(tree))

    def done(tree: dict) -> dict:  # float32 on the device, leaf by leaf
        return jax.tree.map(lambda a: jax.device_put(np.asarray(a, np.float32)), tree)

    def fold(ln: dict, lin_w: np.ndarray, lin_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (n * w + b) @ W + c = n @ (w[:, None] * W) + (b @ W + c); then centre W over its input
        # axis: the normalised input has zero mean, so this changes nothing but makes it explicit.
        b = lin_b + ln["bias"] @ lin_w
        W = ln["scale"][:, None] * lin_w
        ln["scale"], ln["bias"] = np.ones(D), np.zeros(D)
        W -= W.mean(0, keepdims=True)  # in place: for the unembedding each copy is [D, V] float64
        return W, b

    out = {}
    for i in range(config.n_layer):
        blk = f64(params.pop(f"h_{i}"))
        attn, mlp = blk["attn"], blk["mlp"]
        attn["c_attn"]["kernel"], attn["c_attn"]["bias"] = _fold_qkv(fold, blk["ln_1"], attn["c_attn"], D)
        mlp["c_fc"]["kernel"], mlp["c_fc"]["bias"] = fold(blk["ln_2"], mlp["c_fc"]["kernel"], mlp["c_fc"]["bias"])
        # center_writing_weights: what writes to the residual stream has zero mean over d_model.
        for lin in (attn["c_proj"], mlp["c_proj"]):
            lin["kernel"] = lin["kernel"] - lin["kernel"].mean(-1, keepdims=True)
            lin["bias"] = lin["bias"] - lin["bias"].mean()
        # fold_value_biases: sum_k pattern[q, k] = 1, so b_V passes through attention unchanged.
        b_V = attn["c_attn"]["bias"][2 * D:]
        attn["c_proj"]["bias"] = attn["c_proj"]["bias"] + b_V @ attn["c_proj"]["kernel"]
        attn["c_attn"]["bias"] = np.concatenate([attn["c_attn"]["bias"][:2 * D], np.zeros(D)])
        out[f"h_{i}"] = done(blk)
        del blk, attn, mlp

    ln_f = f64(params.pop("ln_f"))
    if config.tie_word_embeddings:
        W_U, b_U = np.array(params["wte"]["embedding"], np.float64).T, np.zeros(config.vocab_size)
    else:
        head = params.pop("lm_head")
        W_U, b_U = np.array(head["kernel"], np.float64), np.array(head["bias"], np.float64)
        del head
    W_U, b_U = fold(ln_f, W_U, b_U)
    # center_unembed: softmax is invariant to a constant over the vocabulary.
    W_U -= W_U.mean(-1, keepdims=True)
    out["lm_head"] = done({"kernel": W_U, "bias": b_U - b_U.mean()})
    out["ln_f"] = done(ln_f)
    del W_U
    for emb in ("wte", "wpe"):
        e = np.array(params.pop(emb)["embedding"], np.float64)
        e -= e.mean(-1, keepdims=True)
        out[emb] = done({"embedding": e})
        del e
    return out, dataclasses.replace(config, tie_word_embeddings=False)


def _fold_qkv(fold, ln: dict, c_attn: dict, D: int) -> tuple[np.ndarray, np.ndarray]:
    """Folds ln_1 into W_Q, W_K and W_V, each centred over d_model on its own."""
    folded = [fold(dict(ln), c_attn["kernel"][:, j * D:(j + 1) * D], c_attn["bias"][j * D:(j + 1) * D]) for j in range(3)]
    ln["scale"], ln["bias"] = np.ones(D), np.zeros(D)
    return np.concatenate([W for W, _ in folded], 1), np.concatenate([b for _, b in folded])


_process = _processed  # load_gpt2's keyword process_weights shadows that name there; its params are its own


def _flat(tree: Mapping) -> dict[tuple[str, ...], Any]:
    return flax.traverse_util.flatten_dict(tree)


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict:
    return flax.traverse_util.unflatten_dict(dict(flat))
