"""Review 18 (r1), the torch checkpoint reader after today's changes: an empty storage that torch shares
between tensors of two dtypes, zip entries that zipfile cannot read, empty views numpy cannot shape."""

from __future__ import annotations

import collections
import io
import re
import struct
import zipfile

import numpy as np
import pytest
from test_torch_pickle import _Pickler, Storage, Tensor, _global, fake_torch, write  # noqa: F401 (a fixture)

from jaxinterp import torch_pickle


def test_an_empty_storage_viewed_as_two_dtypes_loads_as_torch_loads_it(tmp_path, fake_torch):
    """torch.save checks that tensors sharing a storage share its dtype only for an allocated storage
    (`if storage.data_ptr() != 0`), and torch.load caches only non-empty storages by key, so
    `{'f': e, 'i': e.view(torch.int32)}` of `e = torch.empty(0)` is one key named as 0 floats and as
    0 ints: torch loads it; 347089f's cache refused it as a corrupt file."""
    f = Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(0, np.float32)), 0, (0,), (1,))
    i = Tensor(Storage(_global("torch", "IntStorage"), "0", np.zeros(0, np.int32)), 0, (0, 3), (3, 1))
    got = torch_pickle.load_state_dict(write(tmp_path / "e.pt", collections.OrderedDict(f=f, i=i)))
    assert (got["f"].dtype, got["f"].shape) == (np.float32, (0,))
    assert (got["i"].dtype, got["i"].shape) == (np.int32, (0, 3))


def test_a_non_empty_storage_named_with_two_dtypes_is_still_refused(tmp_path, fake_torch):
    a = Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(4, np.float32)), 0, (4,), (1,))
    b = Tensor(Storage(_global("torch", "IntStorage"), "0", np.zeros(4, np.int32)), 0, (4,), (1,))
    with pytest.raises(ValueError, match=r"storage archive/data/0 is named as 4 elements of float32 and as 4 of int32"):
        torch_pickle.load(write(tmp_path / "x.pt", collections.OrderedDict(a=a, b=b)))


# ----------------------------------------------------------------------------------------------
# zip entries zipfile cannot read: f82c75d and f4a4cfd caught a bad CRC or deflate stream in data.pkl and
# byteorder, not what zipfile raises at open (encryption: RuntimeError, an unknown compression method:
# NotImplementedError) nor a broken bzip2 (OSError) or lzma (LZMAError) stream in any entry


def _zip(path, compression):
    data = np.arange(64, dtype=np.float32)
    t = Tensor(Storage(_global("torch", "FloatStorage"), "0", data), 0, (64,), (1,))
    buf = io.BytesIO()
    _Pickler(buf, []).dump(collections.OrderedDict(w=t))
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/data/0", data.tobytes())
    return path


def _damage(path, name: str, how: str):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    if how in ("encrypted", "method 99"):
        # the flags (bit 0: encrypted), then the compression method: at 6 and 8 of the local header, at
        # 8 and 10 of the central record
        centrals = [m.start() for m in re.finditer(re.escape(b"PK\x01\x02"), bytes(data))]
        central = next(c for c in centrals if data[c + 46:c + 46 + len(name)] == name.encode())
        for at, off in ((info.header_offset, 6), (central, 8)):
            if how == "encrypted":
                struct.pack_into("<H", data, at + off, struct.unpack_from("<H", data, at + off)[0] | 1)
            else:
                struct.pack_into("<H", data, at + off + 2, 99)
    else:  # a broken compressed stream: its first bytes (bzip2's 'BZh' magic, lzma's properties) flipped
        start = info.header_offset + 30 + len(name.encode()) + len(info.extra)
        for k in range(4, min(info.compress_size, 12)):
            data[start + k] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how,compression", [("encrypted", zipfile.ZIP_STORED), ("method 99", zipfile.ZIP_STORED),
                                             ("broken bzip2", zipfile.ZIP_BZIP2), ("broken lzma", zipfile.ZIP_LZMA)])
@pytest.mark.parametrize("name", ["archive/data.pkl", "archive/byteorder", "archive/data/0"])
def test_an_entry_zipfile_cannot_read_is_a_value_error_naming_the_file_and_entry(tmp_path, fake_torch, name, how,
                                                                                 compression):
    path = _zip(tmp_path / "a.pt", compression)
    assert torch_pickle.load(path)["w"].shape == (64,)  # whole, it loads
    _damage(path, name, how)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": .*" + re.escape(name) + r"\b.* \("):
        torch_pickle.load(path)


# ----------------------------------------------------------------------------------------------
# an empty view of a shape numpy cannot make ([0, 2**62] of floats: its nominal bytes pass numpy's bound)
# raised numpy's 'array is too big' from inside the unpickler, naming neither the file nor the tensor
# (e9bfe0a routed every other refused view through _Refused)

@pytest.mark.parametrize("size", [(0, 2**62), (2**40, 0, 2**40), (0, 2**63)])
def test_an_empty_view_numpy_cannot_shape_is_refused_naming_file_and_tensor(tmp_path, fake_torch, size):
    t = Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(0, np.float32)), 0, size, (1,) * len(size))
    path = write(tmp_path / "z.pt", {"state_dict": collections.OrderedDict(w=t)})
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: tensor ['state_dict']['w']: a view of shape "
                                                         f"{list(size)} holds no elements, but numpy cannot make")):
        torch_pickle.load(path)


def test_empty_views_numpy_can_shape_still_load(tmp_path, fake_torch):
    t = Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(0, np.float32)), 0, (0, 2**20, 3), (1, 1, 1))
    got = torch_pickle.load(write(tmp_path / "z.pt", {"w": t}))
    assert got["w"].shape == (0, 2**20, 3) and got["w"].dtype == np.float32
