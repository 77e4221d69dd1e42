"""Read PyTorch checkpoints (`torch.save` zip files: .pt, Lightning .ckpt) without torch.

A torch checkpoint is a zip holding `<name>/data.pkl` and one raw file per tensor storage
(`<name>/data/<key>`). Unpickling it with `pickle` would run whatever globals it names, so this
reader rebuilds only tensors (as numpy arrays) and plain containers, and refuses every other global
with a ValueError that names it.
"""

from __future__ import annotations

import collections
import io
import lzma
import math
import os
import pickle
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

# A view is copied into a dense array. One that reads each element of its storage at most once is never
# larger than the storage; a larger one is expanded (stride 0, torch's `expand`) or overlapping, which
# real checkpoints hold only as small broadcasts (a mask, a [1024, 768] of a [768] bias). From a file,
# such a view can ask for any size (terabytes from a storage of one float, before the copy fails), so one
# whose dense size exceeds both its storage's bytes and this bound is refused by name before any copy.
MAX_EXPANDED_BYTES = 2**28  # 256 MiB

# data.pkl holds only containers, names and numbers (tensors' data are separate entries): a few KiB to a
# few MiB. Read from a compressed zip entry, it can expand to any size, and the pickle itself can ask for
# that many bytes (a BINBYTES8 of any length), so a larger declared size is refused before it is read.
MAX_PICKLE_BYTES = 2**28  # 256 MiB

# What zipfile raises for an entry it cannot read, by reading it or at open: a CRC that does not match (a
# header that lies about the size), a broken deflate (zlib.error), bzip2 (OSError) or lzma stream, a
# truncated one (EOFError), a compression method it lacks (NotImplementedError), encryption (RuntimeError).
# Every entry read (data.pkl, byteorder, each storage) turns these into a ValueError naming the file and
# the entry.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, NotImplementedError, RuntimeError)

# torch storage classes -> numpy dtype (the legacy `torch.FloatStorage` form, written by every
# torch since 1.6, and the dtype objects that newer pickles pass to `UntypedStorage`).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16",
                 "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
                 "bool": np.bool_}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


class _DType:
    def __init__(self, name: str):
        self.name = name


def _np_dtype(dtype):
    if dtype == "bfloat16":
        import ml_dtypes  # comes with jax

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray | _Refused:
    # the view's geometry comes from the file: it must stay inside the storage's data (as_strided
    # would otherwise read memory beyond it, or crash), whatever the file says. A view that does not is
    # refused, not raised here: the tensor's key in the state dict is not known yet, so `load` names
    # the tensor's place and the file (see _Refused)
    if isinstance(storage, _Refused):  # a refused tensor passed as the storage of another
        return storage
    if not isinstance(storage, np.ndarray) or not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        return _Refused(f"expected a storage and tuples of sizes and strides, got {type(storage).__name__}, "
                        f"{size!r}, {stride!r}")
    if storage.ndim != 1 or storage.strides[0] != storage.itemsize:
        # a tensor built here, passed as the storage of another: [offset:] then skipped rows, not
        # elements, so a view past its end passed the check below and copied heap memory
        return _Refused(f"expected a storage (its data, one contiguous axis), got an array of shape "
                        f"{list(storage.shape)} and strides {list(storage.strides)}")
    size, stride = tuple(size), tuple(stride)
    numbers = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
        return _Refused(f"expected a non-negative integer offset and sizes and strides of one length, "
                        f"got offset {offset!r}, size {size!r}, stride {stride!r}")
    if 0 in size:
        try:
            return np.zeros(size, storage.dtype)
        except ValueError as e:  # torch holds [0, 2**62] (no bytes); numpy bounds a shape's nominal bytes
            return _Refused(f"a view of shape {list(size)} holds no elements, but numpy cannot make an array of "
                            f"that shape ({e}): the file is corrupt or crafted")
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= storage.size:
        return _Refused(f"a view of size {size} and stride {stride} at offset {offset} reaches element {last} of a "
                        f"storage of {storage.size} elements: the file is corrupt or crafted")
    if not size:
        return np.array(storage[offset])  # a 0-d array, not a numpy scalar
    itemsize = storage.dtype.itemsize
    dense = math.prod(size) * itemsize
    if dense > max(storage.nbytes, MAX_EXPANDED_BYTES):
        # refused before the copy below asks for the bytes
        return _Refused(f"a view of shape {list(size)} and stride {list(stride)} would take {dense} bytes "
                        f"({dense / 2**30:,.1f} GiB) as a dense array, from a storage of {storage.nbytes} bytes: "
                        f"expected at most the larger of its storage and {MAX_EXPANDED_BYTES} bytes "
                        f"(torch_pickle.MAX_EXPANDED_BYTES) for an expanded or overlapping view; the file is "
                        f"corrupt or crafted")
    # an axis of one element never steps: its stride, any number in the file (2**62 overflowed numpy's
    # C long), is not passed on
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride)))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _Refused:
    """Stands, while the file is read, for a tensor whose view was refused (its geometry, its storage,
    its dense size); `load` names the tensor's place and the file, and raises."""

    def __init__(self, reason: str):
        self.reason = reason


def _find_refused(obj: Any) -> tuple[str, _Refused] | None:
    """(where, refused) of the first _Refused in what the unpickler built (`['state_dict']['w']`), or None.
    Walks every container it can build (dicts with an OrderedDict's attributes, lists, tuples, sets),
    once each: a pickle can make a container hold itself."""
    todo, seen = [("", obj)], set()
    while todo:
        where, o = todo.pop()
        if isinstance(o, _Refused):
            return where, o
        if id(o) in seen or not isinstance(o, (dict, list, tuple, set, frozenset)):
            continue
        seen.add(id(o))
        if isinstance(o, dict):
            items = [(f"{where}[{k!r}]", v) for k, v in o.items()] + [(f"{where} (a key)", k) for k in o]
            items += [(f"{where}.{k}", v) for k, v in getattr(o, "__dict__", {}).items()]  # a state dict's _metadata
        elif isinstance(o, (list, tuple)):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(o)]
        else:
            items = [(f"{where} (a set member)", v) for v in o]
        todo.extend(reversed(items))
    return None


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    # torch.save pickles at protocol 2, where Python 3 writes builtins under their Python 2 name
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}


class _Unpickler(pickle._Unpickler):  # Python's unpickler, not C's: its BUILD can be restricted
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: Path):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
        self.refused: _Refused | None = None  # the first tensor refused, wherever it ends up
        self._storages: dict[str, tuple[np.dtype, int, np.ndarray]] = {}  # key -> (dtype, numel, data)

    def load_build(self):
        # BUILD sets an object's state: its __setstate__, or each entry as an attribute. torch's
        # pickles use it for a state dict's `_metadata` (an OrderedDict's attributes); on the reader's
        # own functions, storage types or arrays, a file set their attributes for every later load
        # (_rebuild_tensor.__name__, __defaults__) or rebuilt an array with another shape and dtype.
        state, inst = self.stack[-1], self.stack[-2]
        if not (type(inst) is collections.OrderedDict and isinstance(state, dict)
                and all(isinstance(k, str) for k in state)):
            raise ValueError(f"{self._path}: refusing to set the state of a {type(inst).__name__} from a torch "
                             f"checkpoint: only an OrderedDict's attributes (a state dict's _metadata) are read")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def load_reduce(self):
        super().load_reduce()
        if isinstance(self.stack[-1], _Refused) and self.refused is None:
            self.refused = self.stack[-1]  # named by `load`, even if the pickle drops the tensor again

    dispatch[pickle.REDUCE[0]] = load_reduce

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(name)
        if module == "torch" and name == "UntypedStorage":
            return _StorageType(np.uint8)
        raise ValueError(f"{self._path}: refusing to load global {module}.{name} from a torch checkpoint: only tensors and "
                         f"plain containers are read (no code from the file is run)")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], (_StorageType, _DType)) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and not isinstance(pid[4], bool) and pid[4] >= 0):
            raise ValueError(f"{self._path}: unexpected persistent id {pid!r} in the torch checkpoint, expected "
                             f"('storage', <storage type>, <key>, <location>, <numel>)")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        dtype = _np_dtype(_TORCH_DTYPES[storage_type.name] if isinstance(storage_type, _DType) else storage_type.dtype)
        name = f"{self._prefix}/data/{key}"
        if key in self._storages:
            # a storage shared by several tensors (tied weights, views) is read once, as torch does: read
            # per reference, a compressed entry was expanded again for each (a file naming it a thousand
            # times asked for a thousand copies)
            seen_dtype, seen_numel, data = self._storages[key]
            if (seen_dtype, seen_numel) != (dtype, numel):
                raise ValueError(f"torch checkpoint {self._path}: storage {name} is named as {seen_numel} elements of "
                                 f"{seen_dtype.name} and as {numel} of {dtype.name}, expected one storage type and "
                                 f"size (torch.save writes them so; a corrupt or crafted file)")
            return data
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise ValueError(f"torch checkpoint {self._path}: the pickle names storage {name}, which the "
                             f"archive does not hold (a truncated or corrupt file)") from None
        # The pickle says how many elements the storage holds (torch reads numel * itemsize bytes); the
        # zip entry, compressed, can expand to any size (a zip bomb), so its declared size is checked
        # before it is read, and the read is bounded whatever the zip's headers say.
        expected = numel * dtype.itemsize
        if info.file_size % dtype.itemsize:
            raise ValueError(f"torch checkpoint {self._path}: storage {name} holds {info.file_size} bytes, "
                             f"expected a multiple of {dtype.itemsize} ({dtype.name}; a truncated or corrupt file)")
        if info.file_size != expected:
            raise ValueError(f"torch checkpoint {self._path}: storage {name} holds {info.file_size} bytes in the "
                             f"archive, expected {expected} (the pickle's {numel} elements of {dtype.name}; a "
                             f"corrupt or crafted file)")
        try:
            with self._archive.open(info) as f:
                raw = f.read(expected + 1)
        except _ZIP_ERRORS as e:
            raise ValueError(f"torch checkpoint {self._path}: storage {name} cannot be read ({type(e).__name__}: "
                             f"{e}; a corrupt or crafted file)") from e
        if len(raw) != expected:
            raise ValueError(f"torch checkpoint {self._path}: storage {name} holds {len(raw)} bytes, expected "
                             f"{expected} (the pickle's {numel} elements of {dtype.name}; a corrupt or crafted file)")
        if self._byteorder != sys.byteorder and dtype.itemsize > 1:
            # written on a machine of the other byte order (torch swaps on load too); swapped as
            # unsigned integers of the item's width, which also covers bfloat16
            data = np.frombuffer(raw, dtype=np.dtype(f"u{dtype.itemsize}")).byteswap().view(dtype)
            data.flags.writeable = False  # shared by the tensors of this storage, as numpy's view of bytes is
        else:
            data = np.frombuffer(raw, dtype=dtype)
        if numel:
            # an empty storage is not shared, as torch.load keeps only allocated ones by key: torch.save
            # checks the dtypes of tensors sharing a storage only where it is allocated, so one empty
            # storage can come back named as two dtypes (`{'f': e, 'i': e.view(torch.int32)}`)
            self._storages[key] = (dtype, numel, data)
        return data


def check_file(path: str | os.PathLike) -> Path:
    """`path` as a Path if it names a file, else a ValueError (a folder, or nothing there)."""
    path = Path(path)
    if path.is_dir():  # it said "does not exist"
        raise ValueError(f"torch checkpoint {path} is a folder, expected a file (a torch.save .pt or Lightning .ckpt)")
    if not path.is_file():
        raise ValueError(f"torch checkpoint {path} does not exist")
    return path


def load(path: str | os.PathLike, *, data: bytes | None = None) -> Any:
    """Unpickles a torch zip checkpoint; tensors come back as numpy arrays.

    `data`: the file's bytes, already read (a caller that also hashes them reads the file once);
    `path` then only names it in messages."""
    path = Path(path)
    if data is None:
        check_file(path)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data: expected the bytes of {path}, got {type(data).__name__}")
    try:
        archive = zipfile.ZipFile(path if data is None else io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a torch zip checkpoint (torch.save since 1.6): {e}") from e
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one <name>/data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("/data.pkl")]
        # the byte order of the storages (torch >= 2.1 records it; older files are little-endian, as
        # torch assumes when the record is missing); read bounded, as a compressed entry can expand to
        # any size and "little" is six bytes
        byteorder = "little"
        if f"{prefix}/byteorder" in archive.namelist():
            try:
                with archive.open(f"{prefix}/byteorder") as f:
                    byteorder = f.read(16).decode("ascii", "replace")
            except _ZIP_ERRORS as e:
                raise ValueError(f"{path}: {prefix}/byteorder cannot be read ({type(e).__name__}: {e}; a corrupt "
                                 f"file)") from e
        if byteorder not in ("little", "big"):
            raise ValueError(f"{path}: expected byteorder 'little' or 'big' in {prefix}/byteorder, got {byteorder!r}")
        size = archive.getinfo(pkls[0]).file_size
        if size > MAX_PICKLE_BYTES:
            raise ValueError(f"{path}: {pkls[0]} holds {size} bytes, expected at most {MAX_PICKLE_BYTES} "
                             f"(torch_pickle.MAX_PICKLE_BYTES; a torch pickle holds only containers, names and "
                             f"numbers: a corrupt or crafted file)")
        try:
            with archive.open(pkls[0]) as f:
                unpickler = _Unpickler(f, archive, prefix, byteorder, path)
                obj = unpickler.load()
        except (pickle.UnpicklingError, struct.error, TypeError, KeyError, AttributeError, IndexError,
                *_ZIP_ERRORS) as e:
            # a truncated or crafted pickle: what broke inside the unpickler, or in zipfile opening or
            # reading the entry
            raise ValueError(f"{path}: {pkls[0]} is no readable torch pickle (a truncated or corrupt file): "
                             f"{type(e).__name__}: {e}") from e
    found = _find_refused(obj)
    if found is None and unpickler.refused is not None:
        found = ("(one the pickle built, then dropped)", unpickler.refused)
    if found is not None:
        where, r = found
        raise ValueError(f"{path}: tensor {where or '(the whole file)'}: {r.reason}")
    return obj


def load_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
    """The name -> array mapping of a .pt state dict or of a Lightning .ckpt's `state_dict`."""
    obj = load(path)
    if key is None:
        key = "state_dict" if isinstance(obj, dict) and "state_dict" in obj else None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            # the keys it has (it said only "got dict")
            got = f"dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}: expected a dict with key {key!r}, got {got}")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a mapping of names to tensors, got {type(obj).__name__}")
    bad = [(k, v) for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:  # the entry that is not a tensor (it said only "got dict")
        raise ValueError(f"{path}: expected a mapping of names to tensors, got dict with {bad[0][0]!r}: "
                         f"{type(bad[0][1]).__name__}")
    return dict(obj)
