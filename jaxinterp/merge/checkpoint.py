"""Merging Hugging Face safetensors checkpoints tensor by tensor (the `jaxinterp merge yaml` path).

Order of work, so that mistakes surface before any weight is read:
  1. the YAML config (method, parameter names, models/base contract)   -> config.from_dict
  2. every model's safetensors header (names, shapes, dtypes; no data)  -> same names and shapes
  3. every tensor's resolved parameters and value ranges                 -> merge.plan
  4. the output header is written, then for each tensor: read it from every model (safe_open reads
     one tensor), merge it, append its bytes. Peak memory stays near one tensor per model.

The output is one `model.safetensors` (written under a temporary name, then renamed), with the
config/tokenizer files of one input (`side_source`) and the `mergekit_config.yml`. Once they
are in place, the shards of an earlier merge into the same folder (`model-00001-of-00003.safetensors`,
`model.safetensors.index.json`) are removed: a loader that follows the index (vLLM keeps only the
files its weight_map names) or globs `*.safetensors` would read the old weights. Nothing else is:
config/tokenizer files of an earlier run that this merge does not rewrite (its source lacks them)
stay, and are reported (`MergeResult.kept_side_files`, the CLI's tokenizer line).
"""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
import os
import re
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxinterp import atomic
from jaxinterp.merge import config as _config

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              # buffers, not weights (BERT's position_ids, masks): copied, never merged
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_FLOATS = {"float64", "float32", "float16", "bfloat16"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
               "tokenizer.model", "chat_template.jinja")  # sentencepiece (Llama, Mistral), newer chat templates


class TensorInfo(NamedTuple):
    file: Path
    shape: tuple[int, ...]
    dtype: str  # numpy name


def safetensors_files(ref: str) -> list[Path]:
    p = Path(ref)
    if p.is_file() and p.suffix == ".safetensors":
        return [p]
    if p.is_dir():
        files = atomic.visible_files(p, "*.safetensors")  # not a killed write's hidden temporary
        if files:
            return files
        raise ValueError(f"model {ref!r}: expected a folder with *.safetensors files, found none")
    raise ValueError(f"model {ref!r}: expected a local folder or .safetensors file (nothing is downloaded)")


def _read_header(f: Path, ref: str) -> tuple[int, dict]:
    """(header length, header) of one safetensors file; ValueError for a file that is not one. A Git
    LFS pointer (a clone without `git lfs pull`) announced a header of ~8e18 bytes: MemoryError; an
    empty file was struct.error; a tensor whose byte range does not fit its shape failed mid-merge."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > size - 8:
            lfs = " (it is a Git LFS pointer: run `git lfs pull`)" if head.startswith(b"version ") else ""
            raise ValueError(f"model {ref!r}: {f.name} is not a safetensors file{lfs}: expected an 8-byte header "
                             f"length within its {size} bytes, got {'none' if n is None else n}")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"model {ref!r}: {f.name} is not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"model {ref!r}: {f.name}: expected a JSON object as header, got {type(header).__name__}")
    for name, h in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(h, dict) and isinstance(h.get("shape"), list) and isinstance(h.get("data_offsets"), list)
              and len(h["data_offsets"]) == 2 and h.get("dtype") in _ST_DTYPES
              and all(isinstance(x, int) and x >= 0 for x in h["shape"] + h["data_offsets"]))
        if ok and h["data_offsets"][1] - h["data_offsets"][0] != (
                int(np.prod(h["shape"], dtype=np.int64)) * _np_dtype(_ST_DTYPES[h["dtype"]]).itemsize):
            ok = False
        if not ok and isinstance(h, dict) and isinstance(h.get("dtype"), str) and h["dtype"] not in _ST_DTYPES:
            continue  # an unknown dtype: read_index names it
        if not ok:
            raise ValueError(f"model {ref!r}: {f.name}: tensor {name} has header {h!r}; expected a dtype, a shape "
                             f"and data_offsets [begin, end] spanning exactly the shape's bytes")
    return n, header


def read_file_index(f: Path, ref: str) -> dict[str, TensorInfo]:
    """name -> (file, shape, dtype) of one safetensors file `f` of model `ref`, from its header alone;
    a ValueError for a file that is not one, a dtype not read here, or a truncated file."""
    f = Path(f)
    n, header = _read_header(f, ref)
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        if h["dtype"] not in _ST_DTYPES:
            raise ValueError(f"model {ref!r}: tensor {name} has dtype {h['dtype']}; expected one of "
                             f"{', '.join(_ST_DTYPES)}")
        out[name] = TensorInfo(f, tuple(h["shape"]), _ST_DTYPES[h["dtype"]])
    end = 8 + n + max((h["data_offsets"][1] for k, h in header.items() if k != "__metadata__"), default=0)
    if f.stat().st_size < end:  # found here, before anything is merged or written
        raise ValueError(f"model {ref!r}: {f.name} is truncated: its header needs {end} bytes, "
                         f"the file has {f.stat().st_size}")
    return out


def read_index(ref: str) -> dict[str, TensorInfo]:
    """name -> (file, shape, dtype) from the headers alone."""
    out = {}
    for f in safetensors_files(ref):
        for name, info in read_file_index(f, ref).items():
            if name in out:  # e.g. a stale model.safetensors beside shards: which one is meant is unknown
                raise ValueError(f"model {ref!r}: tensor {name} is in both {out[name].file.name} and {f.name}; "
                                 f"expected each tensor in one file")
            out[name] = info
    return out


def check_indices(indices: list[dict[str, TensorInfo]], refs: list[str], limit: int = 5) -> None:
    ref = indices[0]
    for i, idx in enumerate(indices[1:], start=1):
        diffs = [f"{n} (missing in {refs[i]})" for n in ref if n not in idx]
        diffs += [f"{n} (only in {refs[i]})" for n in idx if n not in ref]
        diffs += [f"{n} (shape {ref[n].shape} in {refs[0]}, {idx[n].shape} in {refs[i]})"
                  for n in ref if n in idx and ref[n].shape != idx[n].shape]
        if diffs:
            more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
            raise ValueError(f"models: expected checkpoints with the same tensors and shapes; "
                             f"{refs[0]} and {refs[i]} differ at " + "; ".join(diffs[:limit]) + more)


class _Readers:
    """Maps one tensor at a time (read-only, MAP_POPULATE) and serves it as a numpy view of the page
    cache: the merge reads the input files' pages in place, with no copy into a buffer of ours.

    One mapping per tensor, not per file: mapped pages that were touched count in the resident set
    until unmapped, so a whole-file mapping would grow to the size of every input over a merge; a
    tensor's mapping goes when the last view of it does (after the writer thread has used it).
    Against positional reads into reused buffers (sessions 2-10) on the GPT-2-small benchmark files,
    in one process, warm page cache: linear 0.71 -> 0.46 s, slerp 0.55 -> 0.42, ties 2.17 -> 1.25,
    dare_ties 2.38 -> 1.44 (the copy out of the page cache was ~0.15 s per GB and contended with
    the kernels for the two cores). A file truncated while a merge maps it would raise SIGBUS; the
    file's size is checked before each mapping."""

    def __init__(self):
        self._open = {}

    def open(self, file) -> None:
        if file not in self._open:
            fh = open(file, "rb")
            (n,) = struct.unpack("<Q", fh.read(8))
            self._open[file] = (fh, 8 + n, json.loads(fh.read(n)))

    def get(self, info: TensorInfo, name: str) -> np.ndarray:
        self.open(info.file)
        fh, start, header = self._open[info.file]
        lo, hi = header[name]["data_offsets"]
        dtype = _np_dtype(info.dtype)
        if hi == lo:
            return np.empty(info.shape, dtype)
        a, b = start + lo, start + hi
        if os.fstat(fh.fileno()).st_size < b:  # a mapping past the end would fault (SIGBUS), not raise
            raise ValueError(f"{info.file}: tensor {name} is truncated (expected {hi - lo} bytes)")
        base = a - a % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(fh.fileno(), b - base, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ, offset=base)
        return np.frombuffer(mm, dtype, (hi - lo) // dtype.itemsize, offset=a - base).reshape(info.shape)

    def close(self):
        for fh, _, _ in self._open.values():
            fh.close()
        self._open.clear()


def _np_dtype(name: str) -> np.dtype:
    import jax.numpy as jnp

    return np.dtype(jnp.dtype(name))  # bfloat16 comes from ml_dtypes through jax


def _common_dtype(infos) -> str:
    """The inputs' common dtype (torch's promotion, as mergekit's arithmetic gets it): what a merge
    computes in without a configured dtype, and what it writes without an out_dtype. A float32
    base is never rounded to a bfloat16 fine-tune's precision, before the merge or after it."""
    import jax.numpy as jnp

    return functools.reduce(lambda a, b: np.dtype(jnp.promote_types(a, b)).name, (i.dtype for i in infos))


def _read_buffer(job, indices, readers) -> list[np.ndarray]:
    """The inputs of an integer or boolean output tensor (a buffer: copied, never merged); a
    ValueError naming it and the first input whose values differ from the first's."""
    infos = [indices[ref][name] for ref, name in job.inputs]
    xs = [readers.get(info, ref_name) for info, (_, ref_name) in zip(infos, job.inputs)]
    differ = [ref for (ref, _), x in zip(job.inputs, xs) if x.shape != xs[0].shape or not np.array_equal(x, xs[0])]
    if differ:
        raise ValueError(f"{job.out_name}: a {infos[0].dtype} tensor (a buffer, not a weight) differs between "
                         f"{job.inputs[0][0]!r} and {differ[0]!r}; it cannot be merged, only copied when equal")
    return xs


def check_buffers(jobs, indices: dict[str, dict[str, TensorInfo]]) -> None:
    """ValueError for an integer or boolean tensor whose values differ between its inputs (`_read_buffer`).
    These few small tensors are read before the output folder is made: found mid-merge, the error
    came after every weight before it had been merged and left the new folders behind, and
    `merge check` said ok."""
    readers = _Readers()
    try:
        for job in jobs:
            if indices[job.inputs[0][0]][job.inputs[0][1]].dtype not in _FLOATS:
                _read_buffer(job, indices, readers)
    finally:
        readers.close()


def _merge_one(job, method, dtype_cfg, indices, readers, out_dtype, seed, read_pool):
    """Reads one output tensor's inputs and dispatches its merge -> list of stream.Piece."""
    import jax

    from jaxinterp.merge import registry, stream
    from jaxinterp.merge import tree_merge as _merge

    infos = [indices[ref][name] for ref, name in job.inputs]
    if infos[0].dtype not in _FLOATS:  # an integer or boolean buffer: the same in every input, copied
        xs = _read_buffer(job, indices, readers)  # checked by check_buffers; again here, as read
        y = np.array(xs[0]).reshape(-1)  # its own copy, not a view of the mapped input
        return [stream.Piece(0, lambda: y, 0, y.size)]
    dtype = dtype_cfg or _common_dtype(infos)
    # one thread per input: mmap releases the GIL while MAP_POPULATE faults the pages in (reads
    # them from disk when the page cache does not hold them), so the inputs come in side by side
    xs = list(read_pool.map(lambda i: readers.get(infos[i], job.inputs[i][1]), range(len(infos))))
    xs = [x if x.dtype == _np_dtype(dtype) else x.astype(_np_dtype(dtype)) for x in xs]
    name, size = job.out_name, xs[0].size
    if stream.supported(method, dtype, size):
        return stream.merge_flat(method, [x.reshape(-1) for x in xs], base_index=job.base_index,
                                 shared=job.shared, per_input=job.per_input, seed=seed, name=name, dtype=dtype,
                                 out_dtype=out_dtype)
    # float64 (configured, or float64 checkpoints) in float64: with JAX's default of 32-bit arrays
    # the kernels computed in float32 and wrote float64 of float32 precision (mergekit computes in
    # float64: entries 1 +- 1e-9 averaged 9e-10 off, their differences lost)
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
        y = registry.merge_tensor(method, xs, base_index=job.base_index, shared=job.shared,
                                  per_input=job.per_input, key=_merge.tensor_key(seed, name), name=name)
        y = np.asarray(y).reshape(-1)  # waits; errors (multislerp's) surface here, in this thread
    return [stream.Piece(0, lambda: y.astype(_np_dtype(out_dtype), copy=False), 0, size)]


def _write(fd: int, start: int, pieces) -> None:
    import os

    for p in pieces:
        v = np.asarray(p.compute())[p.lo:p.hi]
        os.pwrite(fd, memoryview(np.ascontiguousarray(v).view(np.uint8)), start + (p.offset + p.lo) * v.itemsize)


def side_source(cfg) -> str:
    """The input whose config and tokenizer files the output gets, for both config forms alike: the
    config's base_model as written, whether the method merges it as the base or, having none
    (linear, karcher, passthrough), as one of the models; else the first model (`models:`) or the
    first source of the first slice (`slices:`). mergekit's donor model (`base_model or
    referenced_models()[0]`). The `models:` form of a linear merge with its base listed among the
    models took the first model, the `slices:` form the base."""
    from jaxinterp.merge import slices

    if isinstance(cfg, slices.SliceConfig):
        return cfg.base_model or cfg.refs[0]
    return cfg.base_model or cfg.listed_base or cfg.models[0].model


def side_files(cfg, n_layers: int | None) -> tuple[Path, tuple[str, ...], str | None]:
    """(`side_source`, the names of its config/tokenizer files that the output gets, the text of the
    output's config.json when it differs from the source's, else None). Only a config.json this
    merge copies is edited (an earlier run's, where the source has none, is not): its layer count for
    the `slices:` form, its torch_dtype for a configured dtype. Read before anything is written: a
    config.json that is not a JSON object failed after the merged weights were in place."""
    src = Path(side_source(cfg))
    copied = tuple(f for f in _SIDE_FILES if src.is_dir() and (src / f).is_file())
    if not ((n_layers is not None or cfg.out_dtype or cfg.dtype) and "config.json" in copied):
        return src, copied, None
    f = src / "config.json"
    try:
        hf = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: expected the JSON config of model {str(src)!r} (the output's config.json is it, "
                         f"edited), got a file that is not JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{f}: expected a JSON object (the config of model {str(src)!r}), got {type(hf).__name__}")
    for key in ("n_layer", "num_hidden_layers", "num_layers"):
        if key in hf and n_layers is not None:
            hf[key] = n_layers
    if cfg.out_dtype or cfg.dtype:  # as mergekit sets the output config's torch_dtype
        for key in {"torch_dtype"} | ({"dtype"} & hf.keys()):  # newer transformers write "dtype"
            hf[key] = cfg.out_dtype or cfg.dtype
    return src, copied, json.dumps(hf, indent=2)


class MergeResult(NamedTuple):
    out_dir: Path
    n_tensors: int
    n_bytes: int
    side_source: Path  # the model whose config and tokenizer files were copied (`side_source`)
    side_files: tuple[str, ...]  # the names of those files that it had
    removed: tuple[str, ...] = ()  # stale shards and index of an earlier merge into out_dir, removed
    # config/tokenizer files already in out_dir (an earlier run's) that this merge did not write: kept
    # (they may be the user's), reported, since loaders read them beside these weights
    kept_side_files: tuple[str, ...] = ()


# Hugging Face's names of a sharded checkpoint (save_pretrained, mergekit): never written by this merge
_SHARD_RE = re.compile(r"model-\d+-of-\d+\.safetensors|model\.safetensors\.index\.json")


def remove_stale_shards(out_dir: Path) -> tuple[str, ...]:
    """Removes the files of out_dir named as a sharded safetensors checkpoint (shards and index) and
    returns their names; called after the merge's own `model.safetensors` is in place. The inputs'
    files are never among them: `check_out_dir` refused a folder holding any."""
    stale = sorted(f.name for f in out_dir.iterdir() if _SHARD_RE.fullmatch(f.name) and not f.is_dir())
    for name in stale:
        (out_dir / name).unlink()
    return tuple(stale)


def prepare(cfg) -> tuple[list, dict, int | None]:
    """Everything but the weights: (one job per output tensor, {model: index}, output layer count
    for the `slices:` form else None). Reads only headers; every parameter of every tensor is
    resolved and checked, so a bad config fails here, before anything is read or written."""
    from jaxinterp.merge import slices
    from jaxinterp.merge import tree_merge as _merge

    if isinstance(cfg, slices.SliceConfig):
        indices = {r: read_index(r) for r in cfg.refs + ([cfg.base_model] if cfg.base_model else [])}
        jobs, n_layers = slices.plan_jobs(cfg, indices)
        for job in jobs:  # every input of an output tensor must have one shape
            shapes = {indices[r][n].shape for r, n in job.inputs}
            if len(shapes) != 1:
                raise ValueError(f"slices: the inputs of {job.out_name} differ in shape: "
                                 + "; ".join(f"{n} of {r!r} {indices[r][n].shape}" for r, n in job.inputs))
        check_buffer_dtypes(jobs, indices)
        return jobs, indices, n_layers
    refs = [m.model for m in cfg.models] + ([cfg.base_model] if cfg.base_model else [])
    index_list = [read_index(r) for r in refs]
    check_indices(index_list, refs)
    names = list(index_list[0])
    plan = _merge.plan(cfg.merge_method, names, n_models=len(cfg.models), has_base=cfg.base_model is not None,
                       parameters=cfg.parameters, model_parameters=[m.parameters for m in cfg.models],
                       model_names=refs)
    jobs = [slices.Job(n, tuple((r, n) for r in refs), *plan.resolved[n], plan.base_index) for n in names]
    indices = dict(zip(refs, index_list))
    check_buffer_dtypes(jobs, indices)
    return jobs, indices, None


def check_buffer_dtypes(jobs, indices: dict[str, dict[str, TensorInfo]]) -> None:
    """ValueError for an output tensor whose inputs are not all floats and differ in dtype (int32
    position_ids in one model, int64 in another; a float in one, an integer in another). A buffer is
    copied, not merged: its bytes came from the first input while the header took the base's dtype,
    so int32 ids were written into an int64 slot (garbage values, silently)."""
    for job in jobs:
        dtypes = [indices[r][n].dtype for r, n in job.inputs]
        if len(set(dtypes)) > 1 and not set(dtypes) <= _FLOATS:
            got = "; ".join(f"{n} of {r!r} {d}" for (r, n), d in zip(job.inputs, dtypes))
            raise ValueError(f"{job.out_name}: expected one dtype in every input for an integer or boolean "
                             f"tensor (a buffer, copied, not merged), got {got}")


def check_out_dir(out_dir: str | Path, indices: dict[str, dict[str, TensorInfo]]) -> None:
    """ValueError if out_dir holds a file of an input model: the merge would overwrite that model's
    model.safetensors (or sit beside its shards) and its config, so it is refused before anything is written."""
    if isinstance(out_dir, str) and not out_dir:  # Path('') is '.', the working directory
        raise ValueError("out: expected a folder path, got '' (an empty path; pass '.' for the working directory)")
    out = Path(out_dir)
    # a file on the way (out itself, or a parent of a folder to create) was a FileExistsError or a
    # NotADirectoryError from mkdir, after every header had been read and every parameter resolved
    first = next((p for p in (out, *out.parents) if p.exists()), None)
    if first is not None and not first.is_dir():
        raise ValueError(f"out: expected a folder (existing, or one to create), got {str(out_dir)!r}, "
                         + ("which is a file" if first == out else f"under the file {str(first)!r}"))
    if not out.is_dir():
        return
    out = out.resolve()
    for ref, idx in indices.items():
        for f in sorted({i.file for i in idx.values()}):
            if Path(f).resolve().parent == out:
                raise ValueError(f"out: expected a folder that holds no input model, got {str(out_dir)!r}, which "
                                 f"holds {Path(f).name} of model {ref!r}; the merge would overwrite or mix with "
                                 f"its weights, so choose another folder")


def run_config(cfg, out_dir: str | Path, *, seed: int = 0, progress: bool = True) -> MergeResult:
    """Validates everything, then merges the checkpoints of `cfg` (a `config.MergeConfig`, or a
    `slices.SliceConfig`: layers stacked from the sources' layer ranges, the output's config.json
    then gives the new layer count) into out_dir (see module doc)."""
    from jaxinterp.merge import slices
    from jaxinterp.checks import check_seed

    check_seed(seed)  # before any header is read
    jobs, indices, n_layers = prepare(cfg)
    check_out_dir(out_dir, indices)
    check_buffers(jobs, indices)
    text = slices.to_yaml(cfg) if isinstance(cfg, slices.SliceConfig) else _config.to_yaml(cfg)
    return _run_jobs(jobs, indices, cfg, out_dir, text, seed=seed, progress=progress, n_layers=n_layers)


def _run_jobs(jobs, indices: dict, cfg, out_dir, config_yaml: str, *, seed: int, progress: bool,
              n_layers: int | None = None) -> MergeResult:
    """Writes one tensor per job into out_dir/model.safetensors (header first, then tensor by tensor)."""
    import jax.numpy as jnp
    from tqdm import tqdm

    def info(job):  # the tensor that sets the output's shape: the base's, else the first
        ref, name = job.inputs[-1] if job.base_index is not None else job.inputs[0]
        return indices[ref][name]

    # out_dtype, else dtype, else the inputs' common dtype, as mergekit writes its result (a bfloat16
    # base with float32 fine-tunes gives float32; this wrote the base's bfloat16 before session 11)
    out_dtypes = {j.out_name: (cfg.out_dtype or cfg.dtype or _common_dtype([indices[r][n] for r, n in j.inputs]))
                  if info(j).dtype in _FLOATS else info(j).dtype for j in jobs}  # buffers keep their integer dtype

    # header first: every output shape and dtype is known from the inputs' headers
    header, offset = {}, 0
    for j in jobs:
        n, shape = j.out_name, info(j).shape
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(jnp.dtype(out_dtypes[n])).itemsize
        header[n] = {"dtype": _ST_NAMES[out_dtypes[n]], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", "merged_by": "jaxinterp", "merge_method": cfg.merge_method}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)

    src, copied, config_text = side_files(cfg, n_layers)  # a broken config.json fails here, before any write
    out_dir = Path(out_dir)
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
    out_dir.mkdir(parents=True, exist_ok=True)
    readers = _Readers()
    data_start = 8 + len(hbytes)
    written = [out_dir / "model.safetensors", *(out_dir / f for f in copied), out_dir / "mergekit_config.yml"]
    try:
        with atomic.atomic_path(out_dir / "model.safetensors") as tmp, open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(hbytes)))
            fh.write(hbytes)
            fh.truncate(data_start + offset)
            fd = fh.fileno()
            # XLA:CPU runs these kernels inline in the calling thread: a second thread runs them and
            # writes each tensor where the header puts it, while this one reads the next tensor and
            # computes its statistics (at most one tensor waits, so memory stays at ~2 tensors)
            for idx in indices.values():  # open every file here, before reader threads use them
                for f in {i.file for i in idx.values()}:
                    readers.open(f)
            width = max(len(j.inputs) for j in jobs)
            with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=width) as read_pool:
                pending = None
                for job in tqdm(jobs, desc=f"merge {cfg.merge_method}", unit="tensor", disable=not progress):
                    pieces = _merge_one(job, cfg.merge_method, cfg.dtype, indices, readers, out_dtypes[job.out_name],
                                        seed, read_pool)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(_write, fd, data_start + header[job.out_name]["data_offsets"][0], pieces)
                if pending is not None:
                    pending.result()
            fh.flush()
        for f in copied:  # atomically too: a crash mid-copy must not leave a truncated config or tokenizer
            if f == "config.json" and config_text is not None:
                atomic.write_text(out_dir / f, config_text)
                continue
            with atomic.atomic_path(out_dir / f) as tmp:
                shutil.copyfile(src / f, tmp)
        atomic.write_text(out_dir / "mergekit_config.yml", config_yaml)
    except BaseException:
        # an interrupted or failed merge (Ctrl-C, a full disk) left the folders it had made, holding
        # what it had written (weights without their config): in a folder of its own making that goes
        # again, then the folders, deepest first, each only while empty (another writer's files stay)
        if made:
            for p in written:
                with contextlib.suppress(OSError):
                    p.unlink()
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    finally:
        readers.close()
    removed = remove_stale_shards(out_dir)
    kept = tuple(f for f in _SIDE_FILES if f not in copied and (out_dir / f).is_file())
    return MergeResult(out_dir, len(jobs), 8 + len(hbytes) + offset, src, copied, removed, kept)


def run_yaml(config_path: str | Path, out_dir: str | Path, **kw) -> MergeResult:
    """A mergekit YAML file of either form (`models:` or `slices:`)."""
    return run_config(_config.read(config_path), out_dir, **kw)
