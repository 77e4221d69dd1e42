"""Review 18, GPT-2 / lens / inject I/O: expanded views in torch checkpoints, float64 without x64, CSV
line ends, duplicate word-list columns, bools as layers."""

from __future__ import annotations

import collections
import re
import tracemalloc

import numpy as np
import pytest
from test_torch_pickle import Storage, Tensor, _global, fake_torch, write  # noqa: F401 (a fixture)

from jaxinterp import torch_pickle


# ----------------------------------------------------------------------------------------------
# 1. torch_pickle: an expanded (stride 0) view of a huge shape was copied densely

def test_expanded_view_of_a_huge_shape_is_refused_by_name_before_any_copy(tmp_path, fake_torch):
    """A stride-0 view stays inside its storage, so it passed the bounds check and
    np.ascontiguousarray asked for its dense size: here 3 TiB from a storage of 768 floats (a
    MemoryError at best, at worst the machine's memory). Now a ValueError naming the tensor, its shape
    and its bytes, and nothing of that size is allocated (tracemalloc sees numpy's buffers)."""
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(768, dtype=np.float32))
    size = (2**20, 2**10, 768)
    state = collections.OrderedDict(ok=Tensor(storage, 0, (768,), (1,)), bomb=Tensor(storage, 0, size, (0, 0, 1)))
    path = write(tmp_path / "bomb.pt", {"state_dict": state})
    dense = 2**30 * 768 * 4
    message = (f"{path}: tensor ['state_dict']['bomb']: a view of shape {list(size)} and stride [0, 0, 1] would "
               f"take {dense} bytes (3,072.0 GiB) as a dense array, from a storage of 3072 bytes: expected at most "
               f"the larger of its storage and 268435456 bytes (torch_pickle.MAX_EXPANDED_BYTES) for an expanded or "
               f"overlapping view; the file is corrupt or crafted")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            torch_pickle.load_state_dict(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**22, peak  # the file's few KiB and the reader's objects, not the view's bytes


def test_overlapping_view_beyond_the_bound_is_refused_and_nested_places_are_named(tmp_path, fake_torch,
                                                                                    monkeypatch):
    """Not only stride 0: overlapping strides (1, 1) make a [n, n] view of a 2n storage. The bound is
    torch_pickle.MAX_EXPANDED_BYTES (lowered here, so the test reads small arrays)."""
    monkeypatch.setattr(torch_pickle, "MAX_EXPANDED_BYTES", 1024)
    storage = Storage(_global("torch", "FloatStorage"), "0", np.arange(64, dtype=np.float32))
    path = write(tmp_path / "o.ckpt", {"epoch": 1, "lists": [0, {"w": Tensor(storage, 0, (32, 32), (1, 1))}]})
    with pytest.raises(ValueError, match=re.escape(f"{path}: tensor ['lists'][1]['w']: a view of shape [32, 32] "
                                                   "and stride [1, 1] would take 4096 bytes")):
        torch_pickle.load(path)
    # at the bound, or within the storage's own size, it loads as numpy reads the same view
    ok = write(tmp_path / "ok.pt", {"a": Tensor(storage, 0, (16, 16), (1, 1)), "b": Tensor(storage, 0, (4, 16), (16, 1))})
    got = torch_pickle.load_state_dict(ok)
    data = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(got["a"], np.lib.stride_tricks.as_strided(data, (16, 16), (4, 4)))
    np.testing.assert_array_equal(got["b"], data.reshape(4, 16))


def test_small_broadcast_still_loads_equal_to_numpy(tmp_path, fake_torch):
    """A legitimately expanded buffer ([1024, 768] of a [768] bias, 3 MiB) reads as before."""
    data = np.linspace(-1, 1, 768, dtype=np.float32)
    storage = Storage(_global("torch", "FloatStorage"), "0", data)
    path = write(tmp_path / "b.pt", collections.OrderedDict(bias=Tensor(storage, 0, (1024, 768), (0, 1))))
    got = torch_pickle.load_state_dict(path)["bias"]
    assert got.shape == (1024, 768) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.broadcast_to(data, (1024, 768)))


# ----------------------------------------------------------------------------------------------
# 2. a float64 compute dtype under 32-bit JAX computed in float32, silently

X64_OFF = ("compute_dtype: expected jax_enable_x64 on for float64 values (jax.config.update('jax_enable_x64', "
           "True) or JAX_ENABLE_X64=1), got it off: they would silently be float32; enable x64 or ask for float32")


def _lens_case(dtype):
    from jaxinterp.lens.lenses import LensConfig
    from jaxinterp.lens.objective import Rows

    rng = np.random.default_rng(0)
    lc = LensConfig(0, 2, 4, 10)
    lens = {"W": rng.normal(size=(2, 4, 10)), "b": rng.normal(size=(2, 10))}
    r = Rows(rng.normal(size=(3, 2, 4)), None, rng.normal(size=(3, 10)), np.ones(3))
    import jax.numpy as jnp

    as_dtype = lambda t: {k: jnp.asarray(v, dtype) for k, v in t.items()}  # noqa: E731
    return lc, as_dtype(lens), Rows(*(None if a is None else jnp.asarray(a, dtype) for a in r))


@pytest.mark.parametrize("dtype", ["float64", np.float64, "f8"])
def test_float64_compute_dtype_without_x64_is_refused(dtype):
    """Objective(compute_dtype="float64") was accepted with x64 off and the lens matmuls ran in float32
    (astype(float64) is float32 there, a UserWarning at most)."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.kernels import chunked_vocab
    from jaxinterp.lens import objective as obj

    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="^" + re.escape(X64_OFF) + "$"):
            obj.Objective(compute_dtype=dtype)
        lc, lens, r = _lens_case(jnp.float32)
        xs, Ws, b = [r.result.reshape(3, 8)], [lens["W"].reshape(8, 10)], lens["b"].sum(0)
        for f in (lambda: chunked_vocab.kl_div(xs, Ws, b, r.target, chunk=4, compute_dtype=dtype),
                  lambda: chunked_vocab.kl_div_stats(xs, Ws, b, r.target, chunk=4, compute_dtype=dtype),
                  lambda: chunked_vocab.logsumexp(xs, Ws, b, chunk=4, compute_dtype=dtype),
                  lambda: chunked_vocab.top_k(xs, Ws, b, 2, chunk=4, compute_dtype=dtype)):
            with pytest.raises(ValueError, match="^" + re.escape(X64_OFF) + "$"):
                f()
        # an objective made with x64 on, used with it off: refused when the loss is traced
        with jax.enable_x64(True):
            o = obj.Objective(compute_dtype=dtype, chunk=4)
        with pytest.raises(ValueError, match="^" + re.escape(X64_OFF) + "$"):
            obj.loss(lens, r, lens_config=lc, objective=o)
        # bfloat16 and float32 are unaffected
        assert obj.Objective(compute_dtype="bfloat16").compute_dtype == "bfloat16"
        assert obj.Objective(compute_dtype="float32").compute_dtype == "float32"


def test_float64_compute_dtype_with_x64_computes_in_float64():
    import jax
    import jax.numpy as jnp

    from jaxinterp.lens import objective as obj

    with jax.enable_x64(True):
        o = obj.Objective(compute_dtype="float64", chunk=4)
        assert o.compute_dtype == "float64"
        lc, lens, r = _lens_case(jnp.float64)
        v = obj.loss(lens, r, lens_config=lc, objective=o)
        ref = obj.loss_reference(lens, r, lens_config=lc, objective=o)
        assert v.dtype == jnp.float64
        np.testing.assert_allclose(v, ref, rtol=1e-13, atol=0)


# ----------------------------------------------------------------------------------------------
# 3. CSV line ends: the lens table ended lines with CRLF, inject's CSVs with LF

def test_lens_csv_ends_lines_with_lf_like_inject(tmp_path):
    from jaxinterp import atomic
    from jaxinterp.inject import outputs
    from jaxinterp.lens import readout

    rows = readout.rows_for_table(1, [["a", "b,c"]], [["d", 'e"f']], np.array([0.5]))
    lens = atomic.write_text(tmp_path / "lens.csv", readout.csv_text(["layer", "head", "lens", "logit", "score"], rows))
    inject = atomic.write_text(tmp_path / "inject.csv", outputs._csv([["row", "p"], [0, "0.5"]]))
    for path, lines in ((lens, 2), (inject, 2)):
        raw = path.read_bytes()
        assert raw.endswith(b"\n") and not raw.endswith(b"\r\n") and b"\r" not in raw, raw
        assert raw.count(b"\n") == lines
    assert lens.read_bytes() == b"layer,head,lens,logit,score\n1,0,\"'a' 'b,c'\",\"'d' 'e\"\"f'\",0.5\n"


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_csv_readers_take_lf_and_crlf_alike(tmp_path, end):
    from jaxinterp.inject import data as dt

    prompts = tmp_path / "p.csv"
    prompts.write_bytes(end.join(["explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer",
                                  'w1,"w2, w3",w4,w5,w6', "w7,w8,w9,w10,w11", ""]).encode())
    ps = dt.load_prompts(prompts)
    assert ps.obscure == ["w2, w3", "w8"] and ps.answer == ["w6", "w11"]
    words = tmp_path / "w.csv"
    words.write_bytes(("\ufeff" + end.join(["Nouns,Verbs", "time,be", "year,", ""])).encode())
    assert dt.load_top_words(words) == {"Nouns": ["time", "year"], "Verbs": ["be"]}


# ----------------------------------------------------------------------------------------------
# 4. load_top_words merged two columns of one name

@pytest.mark.parametrize("text,name,columns", [
    ("Nouns,Verbs,Nouns\ntime,be,year\n", "Nouns", [1, 3]),
    (" Verbs ,Nouns,Verbs\nbe,time,have\n", "Verbs", [1, 3]),  # names are stripped: the same after it
    ("Nouns,,\ntime,x,y\n", "", [2, 3]),  # two unnamed columns holding words
])
def test_top_words_with_a_repeated_column_name_is_refused(tmp_path, text, name, columns):
    from jaxinterp.inject import data as dt

    path = tmp_path / "w.csv"
    path.write_text(text)
    message = (f"{path}: column {name!r} appears 2 times in the header (columns {columns}); expected each word type "
               f"once (their words would be merged)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        dt.load_top_words(path)


def test_top_words_trailing_empty_columns_still_read(tmp_path):
    from jaxinterp.inject import data as dt

    path = tmp_path / "w.csv"
    path.write_text("Nouns,Verbs,,\ntime,be,,\nyear,,,\n")  # a spreadsheet's export
    assert dt.load_top_words(path) == {"Nouns": ["time", "year"], "Verbs": ["be"], "": []}


# ----------------------------------------------------------------------------------------------
# 5. load_lens took layer=True as layer 1

@pytest.mark.parametrize("layer", [True, False, np.bool_(True), 1.0, -1, "1"])
def test_load_lens_refuses_a_layer_that_is_no_integer(tmp_path, layer):
    """A lens saved for layer 1 loaded with layer=True (True == 1 passed the comparison with the layer
    it records); False, 1.0 and -1 went on to other messages or none. Refused before the file is read."""
    from jaxinterp.lens import io, lenses

    lc = lenses.LensConfig(1, 2, 4, 10)
    path = io.save_lens(tmp_path / "l.safetensors", {"W": np.zeros((2, 4, 10)), "b": np.zeros((2, 10))}, lc)
    message = (f"layer: expected a non-negative integer (or None: the layer a .safetensors lens records), "
               f"got {layer!r}")
    for p in (path, tmp_path / "missing.pt"):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            io.load_lens(p, layer=layer)
    assert io.load_lens(path, layer=np.int64(1))[1] == lc and io.load_lens(path)[1] == lc
