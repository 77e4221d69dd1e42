"""Reading PyTorch `.pt`/`.ckpt` files without torch: a restricted unpickler over the zip archive.

`torch.save` writes a zip holding `<name>/data.pkl` (the object graph) and `<name>/data/<key>`
(raw storage bytes). The pickle names a few globals to rebuild tensors; unpickling any other
global could run arbitrary code, so every global outside a small allow-list is refused with a
ValueError that names it. Tensors come back as numpy arrays (a copy, laid out by their strides).
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not size:
        return storage[storage_offset].copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: str):
        import io

        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._path = archive, prefix, path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return ("storage_type", name)
        raise ValueError(f"{self._path}: refusing to unpickle global {module}.{name}: only tensors, "
                         f"storages and OrderedDict are allowed in a checkpoint read without torch")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ValueError(f"{self._path}: unsupported persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        if not (isinstance(storage_type, tuple) and storage_type[0] == "storage_type"):
            raise ValueError(f"{self._path}: unsupported storage type {storage_type!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        dtype = _STORAGE_DTYPES[storage_type[1]]
        if dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 exactly
            return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))


def read_torch_checkpoint(path: str | Path) -> Any:
    """The object `torch.save` wrote to `path` (zip format), tensors as numpy arrays."""
    path = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as e:
        raise ValueError(f"{path}: not a torch zip checkpoint ({e})") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one '<name>/data.pkl' in the archive, found {pkls}")
        prefix = pkls[0][: -len("/data.pkl")]
        order = f"{prefix}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise ValueError(f"{path}: byte order {archive.read(order)!r} is not supported (expected little)")
        return _Unpickler(archive.read(pkls[0]), archive, prefix, path).load()


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint by name: its `state_dict` entry (Lightning) or the top-level dict."""
    obj = read_torch_checkpoint(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}")
    return dict(obj)
