"""Review 18, the torch checkpoint reader and the prompt CSVs: compressed storages that expand past what
the pickle says (zip bombs), view errors that named neither file nor tensor, prompt columns given twice."""

from __future__ import annotations

import collections
import io
import re
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from test_torch_pickle import _Pickler, Storage, Tensor, _global, fake_torch, write  # noqa: F401 (a fixture)

from jaxinterp import torch_pickle

MiB = 2**20


def _deflated_zip(path, obj, entries: dict[str, bytes | int], *, prefix="archive"):
    """A torch zip of `obj`, every entry deflated; an int entry is that many zero bytes, written in
    chunks (so the test never holds them): what a zip bomb holds, a few KiB compressed."""
    buf = io.BytesIO()
    _Pickler(buf, []).dump(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{prefix}/data.pkl", buf.getvalue())
        for name, data in entries.items():
            if isinstance(data, int):
                with z.open(name, "w") as f:
                    for _ in range(data // MiB):
                        f.write(bytes(MiB))
            else:
                z.writestr(name, data)
    return path


def _peak(fn):
    """(what fn raised or returned, the peak bytes Python allocated meanwhile; numpy's buffers count)."""
    tracemalloc.start()
    try:
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 (handed back to the test)
            got = e
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _lie_about_size(path, name: str, size: int, crc: int | None = None):
    """Rewrites the zip's headers (local and central) of `name` to say it holds `size` bytes (and, if
    given, that their CRC-32 is `crc`), whatever its compressed stream expands to."""
    data = bytearray(path.read_bytes())
    # (signature, crc, size, name length, name) offsets: local headers, then central records
    for sig, crc_at, size_at, len_at, name_at in ((b"PK\x03\x04", 14, 22, 26, 30), (b"PK\x01\x02", 16, 24, 28, 46)):
        at = 0
        while (at := data.find(sig, at)) >= 0:
            n = struct.unpack_from("<H", data, at + len_at)[0]
            if data[at + name_at:at + name_at + n] == name.encode():
                struct.pack_into("<I", data, at + size_at, size)
                if crc is not None:
                    struct.pack_into("<I", data, at + crc_at, crc)
            at += 4
    path.write_bytes(bytes(data))
    return path


# ----------------------------------------------------------------------------------------------
# 1. a storage was read whole, whatever size its compressed zip entry expanded to

def test_a_storage_entry_larger_than_the_pickle_says_is_refused_before_it_is_read(tmp_path, fake_torch):
    """The pickle says storage 0 holds 16 floats; the archive's entry, deflated to a few KiB, expands to
    64 MiB. archive.read took all of it (a zip bomb: any size, from a small file) and the tensor read its
    first 16 floats, silently. Now the declared size is checked against numel * itemsize first."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.zeros(16, np.float32))
    path = _deflated_zip(tmp_path / "bomb.pt", {"w": Tensor(storage, 0, (16,), (1,))}, {"archive/data/0": 64 * MiB})
    assert path.stat().st_size < MiB
    got, peak = _peak(lambda: torch_pickle.load_state_dict(path))
    message = (f"torch checkpoint {path}: storage archive/data/0 holds {64 * MiB} bytes in the archive, expected 64 "
               f"(the pickle's 16 elements of float32; a corrupt or crafted file)")
    assert isinstance(got, ValueError) and str(got) == message, got
    assert peak < 4 * MiB, peak  # the entry was not read


@pytest.mark.parametrize("kind,numel,size,expected", [
    ("FloatStorage", 16, 32, 64),  # a truncated storage: the view's bounds error said nothing of the file
    ("DoubleStorage", 2, 24, 16),
    ("UntypedStorage", 8, 4, 8),  # torch >= 2 writes untyped storages with numel in bytes
    ("float32", 1, 8, 4),  # a dtype object as the storage type (numel in elements)
])
def test_a_storage_entry_of_another_size_is_refused_naming_both_sizes(tmp_path, fake_torch, kind, numel, size,
                                                                      expected):
    data = np.zeros(numel, np.uint8 if kind == "UntypedStorage" else np.float64 if kind == "DoubleStorage" else np.float32)
    storage = Storage(_global("torch", kind), "0", data)
    path = _deflated_zip(tmp_path / "x.pt", {"w": Tensor(storage, 0, (1,), (1,))}, {"archive/data/0": bytes(size)})
    name = {"FloatStorage": "float32", "DoubleStorage": "float64", "UntypedStorage": "uint8", "float32": "float32"}[kind]
    message = (f"torch checkpoint {path}: storage archive/data/0 holds {size} bytes in the archive, expected "
               f"{expected} (the pickle's {numel} elements of {name}; a corrupt or crafted file)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        torch_pickle.load_state_dict(path)


def test_a_header_that_lies_about_the_size_does_not_bypass_the_bound(tmp_path, fake_torch):
    """The zip's headers say 64 bytes (what the pickle expects) while the deflated stream expands to
    64 MiB: zipfile stops at the declared size and its CRC check fails, a BadZipFile traceback; now a
    ValueError naming the storage. With the CRC of the first 64 bytes forged too, the read stops at
    64 bytes: the tensor is those bytes, and nothing of the stream's size is held."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.zeros(16, np.float32))
    obj = {"w": Tensor(storage, 0, (16,), (1,))}
    path = _deflated_zip(tmp_path / "lie.pt", obj, {"archive/data/0": 64 * MiB})
    _lie_about_size(path, "archive/data/0", 64)
    got, peak = _peak(lambda: torch_pickle.load_state_dict(path))
    assert isinstance(got, ValueError), repr(got)
    assert re.fullmatch(rf"torch checkpoint {re.escape(str(path))}: storage archive/data/0 cannot be read \(BadZipFile: "
                        r"Bad CRC-32 for file 'archive/data/0'; a corrupt or crafted file\)", str(got)), str(got)
    assert peak < 4 * MiB, peak

    forged = _lie_about_size(_deflated_zip(tmp_path / "forged.pt", obj, {"archive/data/0": 64 * MiB}),
                             "archive/data/0", 64, crc=zlib.crc32(bytes(64)))
    got, peak = _peak(lambda: torch_pickle.load_state_dict(forged))
    assert isinstance(got, dict), repr(got)
    np.testing.assert_array_equal(got["w"], np.zeros(16, np.float32))
    assert peak < 4 * MiB, peak


@pytest.mark.parametrize("numel", [None, -1, True, 2.0, "16"])
def test_a_persistent_id_without_a_usable_numel_is_refused(tmp_path, fake_torch, numel):
    """The size bound comes from the persistent id's numel, which torch always writes; one without it
    (or with a negative, bool or non-integer one) was read whole, whatever the archive held."""
    pid = ("storage", _global("torch", "FloatStorage"), "0", "cpu") + (() if numel is None else (numel,))
    path = write(tmp_path / "x.pt", {"w": ("raw-pid", pid)},
                 extra={"archive/data/0": np.zeros(16, np.float32).tobytes()})
    rest = "" if numel is None else f", {numel!r}"
    message = (rf"^{re.escape(str(path))}: unexpected persistent id \('storage', <jaxinterp\.torch_pickle\._StorageType "
               rf"object at 0x[0-9a-f]+>, '0', 'cpu'{re.escape(rest)}\) in the torch checkpoint, expected "
               + re.escape("('storage', <storage type>, <key>, <location>, <numel>)") + "$")
    with pytest.raises(ValueError, match=message):
        torch_pickle.load(path)


def test_a_compressed_byteorder_record_is_read_bounded(tmp_path, fake_torch):
    """`<name>/byteorder` was read whole too: 'little' and 64 MiB of zeros, deflated, took 64 MiB, and
    its repr went into the message."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.zeros(4, np.float32))
    path = tmp_path / "b.pt"
    buf = io.BytesIO()
    _Pickler(buf, []).dump({"w": Tensor(storage, 0, (4,), (1,))})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", bytes(16))
        with z.open("archive/byteorder", "w") as f:
            f.write(b"little")
            for _ in range(64):
                f.write(bytes(MiB))
    got, peak = _peak(lambda: torch_pickle.load(path))
    assert isinstance(got, ValueError) and str(got) == (
        f"{path}: expected byteorder 'little' or 'big' in archive/byteorder, got {'little' + chr(0) * 10!r}"), got
    assert peak < 4 * MiB, peak


def test_honest_deflated_and_shared_storages_still_read(tmp_path, fake_torch):
    """Deflated entries of the right size (torch writes them stored; other zip tools may not) and a
    storage shared by two tensors read as before."""
    data = np.arange(12, dtype=np.float32)
    storage = Storage(_global("torch", "FloatStorage"), "0", data)
    state = collections.OrderedDict(a=Tensor(storage, 0, (3, 4), (4, 1)), b=Tensor(storage, 4, (4,), (1,)))
    path = _deflated_zip(tmp_path / "ok.pt", state, {"archive/data/0": data.tobytes(), "archive/byteorder": b"little"})
    got = torch_pickle.load_state_dict(path)
    np.testing.assert_array_equal(got["a"], data.reshape(3, 4))
    np.testing.assert_array_equal(got["b"], data[4:8])


# ----------------------------------------------------------------------------------------------
# 2. a view outside its storage (or built on no storage) was refused naming neither file nor tensor

@pytest.mark.parametrize("offset,size,stride,why", [
    (0, (8, 2), (2, 1), "a view of size (8, 2) and stride (2, 1) at offset 0 reaches element 15 of a storage of 4 "
                        "elements: the file is corrupt or crafted"),
    (-1, (2,), (1,), "expected a non-negative integer offset and sizes and strides of one length, got offset -1, "
                     "size (2,), stride (1,)"),
    (0, (2, 2), (1,), "expected a non-negative integer offset and sizes and strides of one length, got offset 0, "
                      "size (2, 2), stride (1,)"),
])
def test_a_bad_view_names_the_file_and_the_tensors_place(tmp_path, fake_torch, offset, size, stride, why):
    """The message was 'tensor: a view of ... reaches element 15 ...': which of a Lightning checkpoint's
    hundreds of tensors, in which file of a folder of them, it did not say."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(4, dtype=np.float32))
    state = collections.OrderedDict(ok=Tensor(storage, 0, (4,), (1,)), **{"encoder.w": Tensor(storage, offset, size, stride)})
    path = write(tmp_path / "m.ckpt", {"epoch": 2, "state_dict": state})
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: tensor ['state_dict']['encoder.w']: {why}") + "$"):
        torch_pickle.load_state_dict(path)


class _RawReduce:
    """Pickles as `torch._utils.<name>(*args)`, args pickled as given (a dict where a storage belongs)."""

    def __init__(self, name: str, *args):
        self.name, self.args = name, args

    def __reduce__(self):
        return _global("torch._utils", self.name), self.args


def test_a_tensor_built_on_no_storage_names_its_place_and_a_refused_storage_is_the_cause(tmp_path, fake_torch):
    path = write(tmp_path / "n.pt", {"opt": [{"w": _RawReduce("_rebuild_tensor_v2", {"x": 1}, 0, (2,), (1,))}]})
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: tensor ['opt'][0]['w']: expected a storage and "
                                                         "tuples of sizes and strides, got dict, (2,), (1,)") + "$"):
        torch_pickle.load(path)
    # a refused tensor passed as the storage of another (and wrapped in a Parameter): the first refusal
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(4, dtype=np.float32))
    inner = Tensor(storage, 2, (3,), (1,))
    outer = _RawReduce("_rebuild_parameter", _RawReduce("_rebuild_tensor_v2", inner, 0, (1,), (1,)), False,
                       collections.OrderedDict())
    path = write(tmp_path / "p.pt", collections.OrderedDict(p=outer))
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: tensor ['p']: a view of size (3,) and stride (1,) "
                                                         "at offset 2 reaches element 4 of a storage of 4 elements")):
        torch_pickle.load_state_dict(path)


def test_a_bad_view_the_pickle_drops_again_is_still_refused(tmp_path, fake_torch):
    """A bad tensor that the pickle builds and then pops off its stack is in no container: it was a
    ValueError when it was built, and stays one (the place says it was dropped)."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(4, dtype=np.float32))
    buf = io.BytesIO()
    _Pickler(buf, []).dump(Tensor(storage, 3, (2,), (1,)))
    pkl = buf.getvalue()
    assert pkl.endswith(b".")
    good = io.BytesIO()
    _Pickler(good, []).dump({"w": 1})
    # the bad tensor, POP, then a plain dict as the whole result (protocol 2's header dropped from the second)
    data = pkl[:-1] + b"0" + good.getvalue()[2:]
    path = tmp_path / "d.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: tensor (one the pickle built, then dropped): a view "
                                                         "of size (2,) and stride (1,) at offset 3 reaches element 4")):
        torch_pickle.load(path)


# ----------------------------------------------------------------------------------------------
# 3. a prompt CSV naming one column twice: the first was read, the other ignored silently

_PROMPT_ROW = "w1 w2,w3 w4,w5,w6,w7"


@pytest.mark.parametrize("header,row,why", [
    # both 2WMH spellings, holding different sentences: which one is the prompt?
    ("explicit_sentence,obscure_sent,explicit_entity,obscure_entity,answer,obscure_sentence",
     _PROMPT_ROW + ",w8 w9", "column 'obscure_sentence' is given 2 times in the header ('obscure_sent' in column 2, "
                             "'obscure_sentence' in column 6); expected one column named one of ['obscure_sentence', "
                             "'obscure_sent']"),
    # a name repeated (two files' columns pasted side by side), spaces around a name included
    ("explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer, answer ",
     _PROMPT_ROW + ",w10", "column 'answer' is given 2 times in the header ('answer' in column 5, 'answer' in "
                           "column 6); expected one column named one of ['answer']"),
    # the optional column too
    (",explicit_sent,obscure_sent,explicit_entity,obscure_entity,obscure_entity,answer",
     "0,w1,w2,w3,w4,w5,w6", "column 'obscure_entity' is given 2 times in the header ('obscure_entity' in column 5, "
                            "'obscure_entity' in column 6); expected one column named one of ['obscure_entity']"),
])
def test_a_prompt_column_given_twice_is_refused_naming_the_columns(tmp_path, header, row, why):
    from jaxinterp.inject import data as dt

    path = tmp_path / "p.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {why}") + "$"):
        dt.load_prompts(path)


def test_columns_the_reader_does_not_read_may_repeat(tmp_path):
    """Only the columns read are checked: two unnamed index columns or two fact columns still load."""
    from jaxinterp.inject import data as dt

    path = tmp_path / "p.csv"
    path.write_text(",,explicit_sent,obscure_sent,explicit_entity,obscure_entity,fact,fact,answer\n"
                    "0,0,w1 w2,w3,w4,w5,a,b,w6\n")
    got = dt.load_prompts(path)
    assert (got.explicit, got.obscure, got.memory, got.obscure_entity, got.answer) == (
        ["w1 w2"], ["w3"], ["w4"], ["w5"], ["w6"])


# ----------------------------------------------------------------------------------------------
# 4. a storage shared by several tensors was read (and expanded) once per tensor

@pytest.mark.parametrize("byteorder", [b"little", b"big"])
def test_a_shared_storage_is_read_once(tmp_path, fake_torch, byteorder):
    """torch reads each storage once (by key); the reader read it again for every tensor naming it, so
    one deflated 8 MiB entry named by 20 tensors took 160 MiB (a file naming it a thousand times, any
    multiple of the size check above). Values as before, and the tensors share one read-only buffer."""
    n = 2 * MiB  # float32 elements: 8 MiB
    data = np.arange(n, dtype=np.float32)
    storage = Storage(_global("torch", "FloatStorage"), "0", data)
    state = collections.OrderedDict((f"t{i}", Tensor(storage, 0, (n,), (1,))) for i in range(20))
    state["tail"] = Tensor(storage, n - 4, (2, 2), (1, 2))  # a copied (transposed) view of the same storage
    raw = data.tobytes() if byteorder == b"little" else data.byteswap().tobytes()
    path = _deflated_zip(tmp_path / "s.pt", state, {"archive/data/0": raw, "archive/byteorder": byteorder})
    del raw
    got, peak = _peak(lambda: torch_pickle.load_state_dict(path))
    assert isinstance(got, dict), repr(got)
    assert peak < 24 * MiB, peak  # the entry, its swapped copy, zipfile's buffers: not 20 copies
    for i in range(20):
        np.testing.assert_array_equal(got[f"t{i}"], data)
        assert not got[f"t{i}"].flags.writeable
    np.testing.assert_array_equal(got["tail"], [[n - 4, n - 2], [n - 3, n - 1]])


def test_one_storage_named_with_two_types_or_sizes_is_refused(tmp_path, fake_torch):
    """torch.save refuses to save one storage as two dtypes; a file that names it so is crafted."""
    data = np.arange(4, dtype=np.float32)
    a = Storage(_global("torch", "FloatStorage"), "0", data)
    b = Storage(_global("torch", "IntStorage"), "0", data.view(np.int32))
    path = write(tmp_path / "x.pt", collections.OrderedDict(a=Tensor(a, 0, (4,), (1,)), b=Tensor(b, 0, (4,), (1,))))
    with pytest.raises(ValueError, match="^" + re.escape(
            f"torch checkpoint {path}: storage archive/data/0 is named as 4 elements of float32 and as 4 of int32, "
            "expected one storage type and size (torch.save writes them so; a corrupt or crafted file)") + "$"):
        torch_pickle.load_state_dict(path)


# ----------------------------------------------------------------------------------------------
# 5. data.pkl itself, deflated, could expand to any size, and the pickle ask for all of it

def test_a_pickle_entry_larger_than_the_bound_is_refused_before_it_is_read(tmp_path, fake_torch, monkeypatch):
    """A BINBYTES8 of 64 MiB of zeros, deflated to a few KiB: the unpickler read all of it (any size, from
    a small file). The bound is torch_pickle.MAX_PICKLE_BYTES (lowered here, so the test stays small)."""
    monkeypatch.setattr(torch_pickle, "MAX_PICKLE_BYTES", 32 * MiB, raising=False)  # (old code: none)
    path = tmp_path / "p.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w") as f:
            f.write(b"\x80\x04\x8e" + (64 * MiB).to_bytes(8, "little"))
            for _ in range(64):
                f.write(bytes(MiB))
            f.write(b".")
    got, peak = _peak(lambda: torch_pickle.load(path))
    size = 3 + 8 + 64 * MiB + 1
    assert isinstance(got, ValueError) and str(got) == (
        f"{path}: archive/data.pkl holds {size} bytes, expected at most {32 * MiB} (torch_pickle.MAX_PICKLE_BYTES; "
        "a torch pickle holds only containers, names and numbers: a corrupt or crafted file)"), type(got).__name__
    assert peak < 4 * MiB, peak
    # within the bound, the same kind of pickle reads (bytes are plain data)
    small = tmp_path / "s.pt"
    with zipfile.ZipFile(small, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x04\x8e" + (16).to_bytes(8, "little") + bytes(16) + b".")
    assert torch_pickle.load(small) == bytes(16)


# ----------------------------------------------------------------------------------------------
# 6. a data.pkl entry zipfile could not read (a bad CRC) was a BadZipFile traceback

def test_a_pickle_entry_with_a_bad_crc_is_a_value_error_naming_the_file(tmp_path, fake_torch):
    path = write(tmp_path / "c.pt", {"epoch": 1})
    with zipfile.ZipFile(path) as z:
        size = z.getinfo("archive/data.pkl").file_size
    _lie_about_size(path, "archive/data.pkl", size, crc=0)  # the true size, a CRC that does not match
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: archive/data.pkl is no readable torch pickle (a "
                                                         "truncated or corrupt file): BadZipFile: Bad CRC-32 for file "
                                                         "'archive/data.pkl'") + "$"):
        torch_pickle.load(path)


def test_a_byteorder_record_with_a_bad_crc_is_a_value_error_naming_the_file(tmp_path, fake_torch):
    path = write(tmp_path / "c.pt", {"epoch": 1}, extra={"archive/byteorder": b"little"})
    _lie_about_size(path, "archive/byteorder", 6, crc=0)
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: archive/byteorder cannot be read (BadZipFile: Bad "
                                                         "CRC-32 for file 'archive/byteorder'; a corrupt file)") + "$"):
        torch_pickle.load(path)
