"""The restricted torch checkpoint reader on files written here without torch: the zip layout torch.save
uses (`<name>/data.pkl` + `<name>/data/<key>`), pickles naming torch's globals, storages by persistent
id. The official fixtures (NuGraph2 .ckpt, a LensA .pt) are read in their own tests; these cover the
storage kinds, strided views, parameters, and every refusal."""

from __future__ import annotations

import collections
import io
import pickle
import re
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxinterp import torch_pickle


def _stand_in(module: str, name: str):
    def stand_in(*args):
        raise AssertionError("never called: the reader maps the name to its own function")
    stand_in.__module__, stand_in.__qualname__ = module, name
    return stand_in


def _global(module: str, name: str):
    """An object that pickles as the global `module.name` (what torch's own objects pickle as); the
    fake_torch fixture installs the modules."""
    return getattr(sys.modules[module], name)


class Storage:
    """A torch storage: written to the zip as raw bytes, referenced from the pickle by persistent id."""

    def __init__(self, kind, key: str, data: np.ndarray):
        self.kind, self.key, self.data = kind, key, data


class Tensor:
    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple, rebuild="_rebuild_tensor_v2"):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return _global("torch._utils", self.rebuild), self.args


class Parameter:
    def __init__(self, tensor: Tensor):
        self.tensor = tensor

    def __reduce__(self):
        return _global("torch._utils", "_rebuild_parameter"), (self.tensor, False, collections.OrderedDict())


class Foreign:
    def __reduce__(self):
        return _global("shady", "run"), ("echo pwned",)


class _Pickler(pickle.Pickler):
    def __init__(self, file, storages):
        super().__init__(file, protocol=2)
        self.storages = storages

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages.append(obj)
            return ("storage", obj.kind, obj.key, "cpu", obj.data.size)
        if isinstance(obj, tuple) and obj and obj[0] == "raw-pid":
            return obj[1]
        return None


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named torch and torch._utils, so that pickle can name their globals (no torch needed)."""
    names = {"torch": [*torch_pickle._STORAGE_DTYPES, *torch_pickle._TORCH_DTYPES, "UntypedStorage"],
             "torch._utils": ["_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter"], "shady": ["run"]}
    for module, attrs in names.items():
        fake = types.ModuleType(module)
        for a in attrs:
            setattr(fake, a, _stand_in(module, a))
        monkeypatch.setitem(sys.modules, module, fake)


def write(path, obj, *, prefix="archive", extra: dict[str, bytes] | None = None):
    buf, storages = io.BytesIO(), []
    _Pickler(buf, storages).dump(obj)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        for s in {s.key: s for s in storages}.values():  # a storage shared by several tensors: one file
            z.writestr(f"{prefix}/data/{s.key}", s.data.tobytes())
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("kind,dtype", [
    ("FloatStorage", np.float32), ("DoubleStorage", np.float64), ("HalfStorage", np.float16),
    ("BFloat16Storage", ml_dtypes.bfloat16), ("LongStorage", np.int64), ("BoolStorage", np.bool_),
    ("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16), ("int8", np.int8),  # torch >= 2: dtype objects
])
def test_storage_kinds_come_back_with_their_dtype(tmp_path, fake_torch, kind, dtype):
    data = (np.arange(12) % 3).astype(dtype)
    t = Tensor(Storage(_global("torch", kind), "0", data), 0, (3, 4), (4, 1))
    got = torch_pickle.load_state_dict(write(tmp_path / "a.pt", collections.OrderedDict(w=t)))
    assert got["w"].dtype == np.dtype(dtype) and got["w"].shape == (3, 4)
    np.testing.assert_array_equal(got["w"], data.reshape(3, 4))


def test_views_offsets_scalars_parameters_and_lightning_layout(tmp_path, fake_torch):
    data = np.arange(24, dtype=np.float32)
    store = Storage(_global("torch", "FloatStorage"), "7", data)
    state = collections.OrderedDict(
        transposed=Tensor(store, 0, (4, 6), (1, 4)),  # a .T view of a [6, 4] tensor
        offset=Tensor(store, 10, (2, 3), (3, 1), rebuild="_rebuild_tensor"),
        scalar=Tensor(store, 5, (), ()),
        param=Parameter(Tensor(store, 0, (24,), (1,))))
    # pickled at protocol 2, as torch.save does: sets are written as __builtin__.set
    ckpt = {"epoch": 3, "state_dict": state, "hparams": {"planes": ("u", "v", "y")}, "tags": {1, 2}, "frozen": frozenset("ab")}
    got = torch_pickle.load_state_dict(write(tmp_path / "m.ckpt", ckpt, prefix="m"))
    np.testing.assert_array_equal(got["transposed"], data.reshape(6, 4).T)
    np.testing.assert_array_equal(got["offset"], data[10:16].reshape(2, 3))
    assert got["scalar"].shape == () and got["scalar"] == 5.0
    np.testing.assert_array_equal(got["param"], data)
    whole = torch_pickle.load(tmp_path / "m.ckpt")
    assert whole["epoch"] == 3 and whole["tags"] == {1, 2} and whole["frozen"] == frozenset("ab") and whole["hparams"]["planes"] == ("u", "v", "y")


def test_a_foreign_global_is_refused_by_name_and_never_called(tmp_path, fake_torch):
    path = write(tmp_path / "evil.pt", {"state_dict": {"w": Foreign()}})
    # the message names the file too (a folder of checkpoints: which one)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: refusing to load global shady\.run from a torch checkpoint: only tensors and "
                                         r"plain containers are read \(no code from the file is run\)$"):
        torch_pickle.load(path)


@pytest.mark.parametrize("offset, size, stride, match", [
    # each message whole: the view that came (offset, size, stride) and the element it reaches or what
    # was expected (the matches were a few words, which any of these messages would pass)
    (0, (50, 2000), (2000, 1), "reaches element 99999"),  # read far past the data
    (0, (4, 64), (64, 1), "reaches element 255"),
    (3, (2,), (1,), "reaches element 4"),
    (4, (), (), "reaches element 4"),  # a 0-d tensor past the end
    (-1, (), (), "bad geometry"),  # would read from the end
    (0, (2, 2), (-1, 1), "bad geometry"),  # negative strides walk before the data
    (0, (2, 2), (1,), "bad geometry"),
    (0, (2.0,), (1,), "bad geometry"),
])
def test_views_outside_their_storage_are_refused(tmp_path, fake_torch, offset, size, stride, match):
    """Offsets, sizes and strides come from the file; a view that reaches beyond its storage's data
    (which used to segfault or copy heap memory into the tensor) is a ValueError."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(4, dtype=np.float32))
    path = write(tmp_path / "x.pt", {"w": Tensor(storage, offset, size, stride)})
    # the file and the tensor's place are named too (review 18: they were not)
    if match == "bad geometry":
        message = (f"{path}: tensor ['w']: expected a non-negative integer offset and sizes and strides of one "
                   f"length, got offset {offset!r}, size {size!r}, stride {stride!r}")
    else:
        message = (f"{path}: tensor ['w']: a view of size {size} and stride {stride} at offset {offset} {match} of a "
                   f"storage of 4 elements: the file is corrupt or crafted")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        torch_pickle.load_state_dict(path)


def test_empty_and_edge_views_read(tmp_path, fake_torch):
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(4, dtype=np.float32))
    path = write(tmp_path / "x.pt", {"empty": Tensor(storage, 4, (0, 3), (3, 1)), "last": Tensor(storage, 3, (), ()),
                                     "expanded": Tensor(storage, 1, (2, 3), (0, 1))})
    got = torch_pickle.load_state_dict(path)
    assert got["empty"].shape == (0, 3) and float(got["last"]) == 3.0
    np.testing.assert_array_equal(got["expanded"], [[1, 2, 3], [1, 2, 3]])  # stride 0: torch's expand


@pytest.mark.parametrize("case,match", [
    # each message whole, with the file ({path}) and what it holds (the matches were a few words)
    ("missing", "torch checkpoint {path} does not exist"),
    ("not-zip", "{path} is not a torch zip checkpoint (torch.save since 1.6): File is not a zip file"),
    ("two-pickles", "{path}: expected one <name>/data.pkl in the archive, found 2"),
    ("bad-pid", "{path}: unexpected persistent id 'tensor-0' in the torch checkpoint, expected "
                "('storage', <storage type>, <key>, <location>, <numel>)"),
    # these said "got dict", not what the dict held: now its keys, the entry that is not a tensor
    ("no-key", "{path}: expected a dict with key 'weights', got dict with keys ['state_dict']"),
    ("not-tensors", "{path}: expected a mapping of names to tensors, got dict with 'b': float"),
    ("not-a-dict", "{path}: expected a mapping of names to tensors, got list"),
])
def test_bad_files(tmp_path, fake_torch, case, match):
    path, key = tmp_path / "x.pt", None
    if case == "not-zip":
        path.write_bytes(pickle.dumps({"w": 1}))  # a legacy (pre-1.6) torch.save is a bare pickle
    elif case == "two-pickles":
        write(path, {}, extra={"other/data.pkl": pickle.dumps({})})
    elif case == "bad-pid":
        write(path, {"w": ("raw-pid", "tensor-0")})
    elif case == "no-key":
        write(path, {"state_dict": {}}, prefix="x")
        key = "weights"
    elif case == "not-tensors":
        write(path, {"w": Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(1, np.float32)), 0, (), ()),
                     "b": 1.5})
    elif case == "not-a-dict":
        write(path, [1.5])
    with pytest.raises(ValueError, match="^" + re.escape(match.replace("{path}", str(path))) + "$"):
        torch_pickle.load_state_dict(path, key=key)
