"""Review 17 of the GPT-2 transformer, its loaders and the helpers around them."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from safetensors.numpy import load_file, save_file

from jaxinterp.transformer import load_gpt2

from conftest import TINY_GPT2

STATE = load_file(str(TINY_GPT2 / "model.safetensors"))
CONFIG = json.loads((TINY_GPT2 / "config.json").read_text())


def folder_with(tmp_path, state, name="model", **config):
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**CONFIG, **config}))
    save_file(state, str(out / "model.safetensors"))
    return out


class _Counted:
    """safe_open that counts the tensors read through it (get_tensor, get_tensors)."""

    reads: list = []
    real = safetensors.safe_open

    def __init__(self, *args, **kwargs):
        self._f = _Counted.real(*args, **kwargs)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def get_tensor(self, name):
        _Counted.reads.append(name)
        return self._f.get_tensor(name)

    def get_tensors(self):
        _Counted.reads.append("*")
        return self._f.get_tensors()


@pytest.fixture
def counted_reads(monkeypatch):
    """The names of the tensors load_gpt2 reads from then on (through safetensors, or weights._read)."""
    from jaxinterp.transformer import weights

    _Counted.reads = []
    monkeypatch.setattr(safetensors, "safe_open", _Counted)
    monkeypatch.setattr(safetensors.numpy, "safe_open", _Counted)
    real = getattr(weights, "_read", None)
    if real is not None:
        def counted(file, specs):
            for name, tensor in real(file, specs):
                _Counted.reads.append(name)
                yield name, tensor

        monkeypatch.setattr(weights, "_read", counted)
    return _Counted.reads


_PEAK = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from jaxinterp.transformer import load_gpt2

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    jnp.zeros(1).block_until_ready()
    # the peak so far is the parent's too (ru_maxrss and VmHWM survive fork and exec): reset to now
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = status("VmRSS")
    params, _ = load_gpt2(sys.argv[1], process_weights=len(sys.argv) > 2)
    jax.block_until_ready(params)
    print(json.dumps({"start": start, "peak": status("VmHWM"), "end": status("VmRSS")}))
""")


def _random_checkpoint(folder, V=8192, D=512, L=6):
    """A GPT-2 checkpoint of random float32 weights (V=8192, D=512, L=6: 92 MB, wte 17 of it)."""
    rng = np.random.default_rng(0)
    config = {**CONFIG, "vocab_size": V, "n_embd": D, "n_layer": L, "n_head": 8, "n_positions": 64}
    state = {"transformer.wte.weight": rng.standard_normal((V, D), np.float32),
             "transformer.wpe.weight": rng.standard_normal((64, D), np.float32),
             "transformer.ln_f.weight": np.ones(D, np.float32), "transformer.ln_f.bias": np.zeros(D, np.float32)}
    for layer in range(L):
        for kind, shape in {"ln_1.weight": (D,), "ln_1.bias": (D,), "ln_2.weight": (D,), "ln_2.bias": (D,),
                            "attn.c_attn.weight": (D, 3 * D), "attn.c_attn.bias": (3 * D,),
                            "attn.c_proj.weight": (D, D), "attn.c_proj.bias": (D,),
                            "mlp.c_fc.weight": (D, 4 * D), "mlp.c_fc.bias": (4 * D,),
                            "mlp.c_proj.weight": (4 * D, D), "mlp.c_proj.bias": (D,)}.items():
            state[f"transformer.h.{layer}.{kind}"] = rng.standard_normal(shape, np.float32)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return (folder / "model.safetensors").stat().st_size


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads the peak resident size from /proc (Linux)")
@pytest.mark.parametrize("process,most", [(False, 1.3), (True, 2.7)])
def test_load_gpt2_peak_memory_is_near_the_checkpoint_not_twice_it(tmp_path, process, most):
    """load_gpt2 read every file whole (load_file: the file mapped, its pages resident, every tensor
    copied out of them, then copied again by jax) and converted afterwards: its peak resident memory
    was 2.0x the checkpoint above the start; with process_weights=True 3.2x (the raw weights kept to
    the end beside the processed ones). Now headers first, then tensor by tensor into aligned buffers
    that jax takes as they are: 1.05x; processed, each raw block freed once processed: 2.1-2.4x (old 3.2x)."""
    size = _random_checkpoint(tmp_path / "big")
    out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "big"), *(["process"] if process else [])],
                         capture_output=True, text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["peak"] - got["start"]) / size < most, (got, size)


def test_no_tensor_is_read_before_the_checkpoint_is_checked(tmp_path, counted_reads):
    """Every tensor was read (the whole checkpoint in memory) before the names and shapes were checked:
    a checkpoint missing one tensor, or with one of the wrong shape, was refused only after reading
    all of it. Now from the headers alone."""
    missing = folder_with(tmp_path, {k: v for k, v in STATE.items() if k != "transformer.h.1.mlp.c_proj.weight"},
                          name="missing")
    with pytest.raises(ValueError, match=r"checkpoint is missing 1 tensor\(s\), first: h_1/mlp/c_proj/kernel"):
        load_gpt2(missing)
    shape = folder_with(tmp_path, {**STATE, "transformer.wpe.weight": np.zeros((16, 64), np.float32)}, name="shape")
    with pytest.raises(ValueError, match=r"tensor 'transformer.wpe.weight': expected shape \[32, 64\], got \[16, 64\]"):
        load_gpt2(shape)
    ints = folder_with(tmp_path, {**STATE, "transformer.h.0.ln_1.weight": np.ones(64, np.int32)}, name="ints")
    with pytest.raises(ValueError, match="tensor 'transformer.h.0.ln_1.weight': expected floating-point weights, "
                                         "got dtype int32"):
        load_gpt2(ints)
    assert counted_reads == []
    params, _ = load_gpt2(TINY_GPT2)  # and a good one reads each weight once, no more
    assert sorted(counted_reads) == sorted(STATE)


@pytest.mark.parametrize("code,dtype", [("F8_E4M3", ml_dtypes.float8_e4m3fn), ("F8_E5M2", ml_dtypes.float8_e5m2)])
def test_a_float8_checkpoint_loads_as_its_float32_values(tmp_path, tiny_raw, code, dtype):
    """safetensors writes float8 tensors that its numpy reader cannot read: load_gpt2 failed with an
    AttributeError from inside it ("module 'numpy' has no attribute 'float8_e4m3fn'")."""
    name = "transformer.h.0.attn.c_attn.weight"
    folder = folder_with(tmp_path, {**STATE, name: STATE[name].astype(dtype)})
    params, config = load_gpt2(folder)
    got = params["h_0"]["attn"]["c_attn"]["kernel"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, STATE[name].astype(dtype).astype(np.float32))
    np.testing.assert_array_equal(params["wte"]["embedding"], tiny_raw[0]["wte"]["embedding"])


def test_a_dtype_without_a_reader_is_refused_by_name(tmp_path, counted_reads):
    """A tensor of a safetensors dtype that has no numpy type here (F8_E8M0, a scale format): refused
    from the header, naming it, not with an AttributeError or KeyError from inside the reader."""
    folder = folder_with(tmp_path, STATE)
    state = {k: v for k, v in STATE.items() if k != "transformer.ln_f.bias"}
    header, offset, data = {}, 0, b""
    for k, v in state.items():
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset, data = offset + v.nbytes, data + v.tobytes()
    header["transformer.ln_f.bias"] = {"dtype": "F8_E8M0", "shape": [64], "data_offsets": [offset, offset + 64]}
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data + bytes(64))
    with pytest.raises(ValueError, match=r"tensor 'transformer.ln_f.bias' in model.safetensors: expected weights "
                                         r"of dtype F64, F32, F16, BF16, F8_E4M3, F8_E5M2, got F8_E8M0$"):
        load_gpt2(folder)
    assert counted_reads == []


@pytest.mark.parametrize("process", [False, True])
def test_an_untied_checkpoint_comes_back_on_the_device(tmp_path, tiny_raw, process):
    """lm_head.weight [V, D] is transposed into its kernel [D, V] (an aligned copy) and its bias is zeros;
    every leaf a float32 jax array on the default device, processed or not."""
    head = np.random.default_rng(1).standard_normal((97, 64)).astype(np.float32)
    folder = folder_with(tmp_path, {**STATE, "lm_head.weight": head}, tie_word_embeddings=False)
    params, config = load_gpt2(folder, process_weights=process)
    assert not config.tie_word_embeddings
    for leaf in jax.tree.leaves(params):
        assert isinstance(leaf, jax.Array) and leaf.dtype == np.float32 and leaf.devices() == {jax.devices()[0]}
    if not process:
        np.testing.assert_array_equal(params["lm_head"]["kernel"], head.T)
        np.testing.assert_array_equal(params["lm_head"]["bias"], np.zeros(97, np.float32))
        for got, want in zip(jax.tree.leaves({k: v for k, v in params.items() if k != "lm_head"}),
                             jax.tree.leaves(tiny_raw[0])):
            np.testing.assert_array_equal(got, want)


def test_a_sharded_checkpoint_loads_tensor_by_tensor(tmp_path, tiny_raw):
    """Two shards, a bfloat16 one among them: the same params as the whole float32 file (bf16-rounded)."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(TINY_GPT2 / "config.json", folder)
    names = sorted(STATE)
    save_file({k: STATE[k] for k in names[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: STATE[k].astype(ml_dtypes.bfloat16) for k in names[1::2]},
              str(folder / "model-00002-of-00002.safetensors"))
    params, _ = load_gpt2(folder)
    want = load_gpt2(TINY_GPT2)[0]
    from jaxinterp.transformer.weights import hf_path

    rounded = {hf_path(k): k in names[1::2] for k in names}
    flat = {tuple(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
        key = tuple(str(getattr(p, "key", p)) for p in path)
        expect = np.asarray(leaf)
        if rounded[key]:
            expect = expect.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(flat[key], expect)


# ----------------------------------------------------------------------------------------------
# torch_pickle: pickles written by hand, opcode by opcode (what a crafted file can hold)

def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _int(n: int) -> bytes:
    return b"J" + n.to_bytes(4, "little", signed=True)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _torch_zip(path, pkl: bytes, storages: dict[str, bytes] = {}):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + pkl + b".")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


_STORAGE = b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str("0") + _str("cpu") + _int(16) + b"tQ"
_REBUILD = b"ctorch._utils\n_rebuild_tensor_v2\n"


def test_a_tensor_passed_as_a_storage_cannot_read_past_its_end(tmp_path):
    """_rebuild_tensor took any numpy array as the storage, a [4, 4] tensor it had built too: [offset:]
    then skipped rows, not elements, so offset 3 and size 13 passed the bounds check (3 + 12 < 16) and
    copied 9 floats of heap memory past the data into the tensor."""
    from jaxinterp import torch_pickle

    inner = _REBUILD + _tuple(_STORAGE, _int(0), _tuple(_int(4), _int(4)), _tuple(_int(4), _int(1))) + b"R"
    outer = _REBUILD + _tuple(inner, _int(3), _tuple(_int(13)), _tuple(_int(1))) + b"R"
    path = _torch_zip(tmp_path / "x.pt", outer, {"0": np.arange(16, dtype=np.float32).tobytes()})
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: tensor \(the whole file\): expected a storage "
                                         r"\(its data, one contiguous axis\), got an array of shape \[4, 4\] and "
                                         r"strides \[16, 4\]$"):
        torch_pickle.load(path)
    # the same views on the storage itself read as before
    inner = _REBUILD + _tuple(_STORAGE, _int(3), _tuple(_int(13)), _tuple(_int(1))) + b"R"
    got = torch_pickle.load(_torch_zip(tmp_path / "y.pt", inner, {"0": np.arange(16, dtype=np.float32).tobytes()}))
    np.testing.assert_array_equal(got, np.arange(3, 16, dtype=np.float32))


@pytest.mark.parametrize("target", [
    b"ctorch._utils\n_rebuild_tensor_v2\n",  # the reader's own function, for every later load
    b"ctorch._utils\n_rebuild_parameter\n",
    b"ctorch\nFloatStorage\n",
    b"ccollections\nOrderedDict\n",  # the class, not an instance
])
def test_build_cannot_set_attributes_of_the_readers_objects(tmp_path, target):
    """BUILD (an object's state, set entry by entry with setattr) ran on whatever the pickle named: a file
    renamed torch_pickle._rebuild_tensor (and could set its __defaults__, __kwdefaults__, __dict__) for
    the rest of the process. Only an OrderedDict instance's attributes (a state dict's _metadata) are set."""
    from jaxinterp import torch_pickle

    before = {f: (getattr(f, "__name__"), getattr(f, "__defaults__"), dict(f.__dict__))
              for f in (torch_pickle._rebuild_tensor, torch_pickle._rebuild_parameter)}
    pkl = target + b"N}" + _str("__name__") + _str("pwned") + b"s\x86b"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'x.pt'))}: refusing to set the state of a "
                                         r"\w+ from a torch checkpoint: only an OrderedDict's attributes"):
        torch_pickle.load(_torch_zip(tmp_path / "x.pt", pkl))
    after = {f: (getattr(f, "__name__"), getattr(f, "__defaults__"), dict(f.__dict__)) for f in before}
    assert after == before


def test_a_state_dicts_metadata_is_still_read(tmp_path):
    """What torch writes with BUILD: an OrderedDict state dict carrying its _metadata attribute."""
    from jaxinterp import torch_pickle

    tensor = _REBUILD + _tuple(_STORAGE, _int(0), _tuple(_int(2)), _tuple(_int(1))) + b"R"
    od = (b"ccollections\nOrderedDict\n)R" + _str("w") + tensor + b"s}" + _str("_metadata")
          + b"ccollections\nOrderedDict\n)R" + b"sb")
    got = torch_pickle.load_state_dict(_torch_zip(tmp_path / "x.pt", od, {"0": np.arange(16, dtype=np.float32).tobytes()}))
    np.testing.assert_array_equal(got["w"], [0, 1])


@pytest.mark.parametrize("pkl,storages,why", [
    (b"}" + _str("a") + b"K", {}, "EOFError"),  # truncated
    (b"\x00garbage", {}, "KeyError"),
    (b"c__builtin__\nset\n]]a\x85R", {}, "TypeError: unhashable type: 'list'"),
    (b"ccollections\nOrderedDict\nK\x01\x85R", {}, "TypeError: 'int' object is not iterable"),
])
def test_a_malformed_pickle_is_a_value_error_naming_the_file(tmp_path, pkl, storages, why):
    """A truncated or crafted data.pkl raised what broke inside the unpickler (UnpicklingError, EOFError,
    KeyError, TypeError), naming no file; a ValueError now."""
    from jaxinterp import torch_pickle

    path = _torch_zip(tmp_path / "x.pt", pkl, storages)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: archive/data.pkl is no readable torch pickle "
                                         rf"\(a truncated or corrupt file\): {re.escape(why)}"):
        torch_pickle.load(path)


def test_a_storage_of_a_partial_element_is_refused_by_name(tmp_path):
    """A storage file whose size is no multiple of its dtype's (a truncated file): numpy's 'buffer size
    must be a multiple of element size', naming neither file nor storage."""
    from jaxinterp import torch_pickle

    tensor = _REBUILD + _tuple(_STORAGE, _int(0), _tuple(_int(1)), _tuple(_int(1))) + b"R"
    path = _torch_zip(tmp_path / "x.pt", tensor, {"0": bytes(7)})
    with pytest.raises(ValueError, match=rf"^torch checkpoint {re.escape(str(path))}: storage archive/data/0 holds 7 "
                                         r"bytes, expected a multiple of 4 \(float32; a truncated or corrupt file\)$"):
        torch_pickle.load(path)


# ----------------------------------------------------------------------------------------------
# parallel

_TWO_AXES = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import Mesh
    from jaxinterp import parallel

    out = {}
    for axes, shape in ((("data", "model"), (2, 2)), (("model", "data"), (2, 2)), (("data", "model"), (4, 1))):
        mesh = Mesh(np.asarray(jax.devices()).reshape(shape), axes)
        try:
            out[str(shape) + str(axes)] = ["ok", parallel.padded_size(6, mesh)]
        except ValueError as e:
            out[str(shape) + str(axes)] = ["ValueError", str(e)]
    print(json.dumps(out))
""")


def test_a_mesh_whose_data_axis_is_not_all_its_devices_is_refused():
    """check_mesh took any mesh with a "data" axis, but padded_size, shard_batch and their callers
    (nugraph prepare, merge landscape) split a batch into mesh.devices.size parts while the sharding
    splits it over "data" alone: on a ("data", "model") 2 x 2 mesh padded_size(6) was 8, shard_batch
    refused 6 rows, and 8 rows put 4 on each device (callers expected 2). A size-1 other axis is fine."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _TWO_AXES], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    message = ("padded_size: mesh: expected a mesh whose axis 'data' spans all its devices (parallel.make_mesh), "
               "got axes {}")
    assert got == {"(2, 2)('data', 'model')": ["ValueError", message.format("{'data': 2, 'model': 2}")],
                   "(2, 2)('model', 'data')": ["ValueError", message.format("{'model': 2, 'data': 2}")],
                   "(4, 1)('data', 'model')": ["ok", 8]}


# ----------------------------------------------------------------------------------------------
# a save killed midway

_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import safetensors.numpy
    from jaxinterp.transformer.weights import load_gpt2, save_gpt2

    def half_then_killed(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a safetensors file")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # as a power cut or the OOM killer would stop it

    params, config = load_gpt2(sys.argv[1])
    safetensors.numpy.save_file = half_then_killed
    save_gpt2(params, config, sys.argv[2])
""")


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="SIGKILL")
def test_a_save_killed_midway_leaves_the_folder_loadable_and_saveable(tmp_path, tiny_raw):
    """atomic_path's temporary file (".model.safetensors.<random>.tmp.safetensors") stays behind when
    the process is killed while writing it, and pathlib's glob("*.safetensors") matches names with a
    leading dot: load_gpt2 then read it ("is not a readable safetensors file") and save_gpt2 refused the
    folder ("without other *.safetensors checkpoints"). The old model loads and the folder saves again."""
    from jaxinterp.transformer.weights import save_gpt2

    folder = save_gpt2(*tiny_raw, tmp_path / "model")
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(TINY_GPT2), str(folder)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == -9, proc.stderr
    assert [f.name for f in folder.iterdir() if f.name.startswith(".model.safetensors.")]  # the leftover
    params, config = load_gpt2(folder)
    assert config == tiny_raw[1]
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(tiny_raw[0])):
        np.testing.assert_array_equal(got, want)
    save_gpt2(params, config, folder)
    assert load_gpt2(folder)[1] == config


@pytest.mark.parametrize("key,value", [("tie_word_embeddings", "false"), ("scale_attn_weights", "no"),
                                       ("scale_attn_by_inverse_layer_idx", 1), ("tie_word_embeddings", None)])
def test_a_config_flag_that_is_no_boolean_is_refused(tmp_path, key, value):
    """GPT2Config checked its sizes, epsilon, activation and dtype but not its three flags: a config.json
    with "tie_word_embeddings": "false" loaded as a tied model ("false" is truthy), "scale_attn_weights":
    "no" as a scaled one, silently."""
    folder = folder_with(tmp_path, STATE, **{key: value})
    with pytest.raises(ValueError, match=rf"^{key} must be true or false, got {re.escape(repr(value))}$"):
        load_gpt2(folder)
    from jaxinterp.transformer import GPT2Config

    assert GPT2Config(tie_word_embeddings=np.bool_(False)).tie_word_embeddings == False  # noqa: E712 -- numpy's bool


def test_process_weights_refuses_params_of_another_config(tiny_raw):
    """process_weights read h_0 .. h_{n_layer-1} and the top-level weights by name: 3-layer params under
    a 2-layer config came back as a 2-layer model (the third block dropped silently), params lacking a
    block raised KeyError('h_1')."""
    import dataclasses

    from jaxinterp.transformer import process_weights

    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"^params do not fit the config \(n_layer 2, .*unexpected \['h_2/"):
        process_weights(params, dataclasses.replace(config, n_layer=2))
    with pytest.raises(ValueError, match=r"^params do not fit the config \(n_layer 3, .*missing \['h_1/"):
        process_weights({k: v for k, v in params.items() if k != "h_1"}, config)


def test_the_stride_of_a_one_element_axis_is_not_used(tmp_path):
    """An axis of size 1 never steps, so torch allows it any stride; the file's 2**62 went to as_strided
    times the item size and failed with an OverflowError ('Python int too large to convert to C long')."""
    from jaxinterp import torch_pickle

    big = b"\x8a\x10" + (2**62).to_bytes(16, "little", signed=True)
    tensor = _REBUILD + _tuple(_STORAGE, _int(1), _tuple(_int(1), _int(3)), _tuple(big, _int(1))) + b"R"
    got = torch_pickle.load(_torch_zip(tmp_path / "x.pt", tensor, {"0": np.arange(16, dtype=np.float32).tobytes()}))
    np.testing.assert_array_equal(got, [[1, 2, 3]])


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ml_dtypes.bfloat16])
def test_each_float_checkpoint_dtype_loads_as_its_float32_values(tmp_path, dtype):
    """The tensor-by-tensor reader views each tensor's bytes in its own dtype and converts into float32:
    the values numpy's astype gives, a transposed untied lm_head too."""
    head = np.random.default_rng(2).standard_normal((97, 64)).astype(np.float32)
    state = {k: v.astype(dtype) for k, v in {**STATE, "lm_head.weight": head}.items()}
    params, _ = load_gpt2(folder_with(tmp_path, state, tie_word_embeddings=False))
    np.testing.assert_array_equal(params["lm_head"]["kernel"], state["lm_head.weight"].astype(np.float32).T)
    np.testing.assert_array_equal(params["h_1"]["mlp"]["c_fc"]["kernel"],
                                  state["transformer.h.1.mlp.c_fc.weight"].astype(np.float32))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}


@pytest.mark.parametrize("change", ["shape", "span"])
def test_a_file_replaced_between_its_header_and_its_tensors_is_refused(tmp_path, monkeypatch, change):
    """The tensors are read after the headers were checked; a file replaced in between (another save
    renamed into place) is refused by name, whether a tensor's shape changed or only its byte span (which
    safe_open had checked for the first file, not the second: numpy's 'cannot reshape' came)."""
    from jaxinterp.transformer import weights

    folder = folder_with(tmp_path, STATE)
    real = weights._headers
    name = "transformer.h.0.ln_1.bias"

    def then_replaced(files, folder_):
        out = real(files, folder_)
        header, offset, data = {}, 0, b""
        for k, v in STATE.items():
            v = v.reshape(1, -1) if (k == name and change == "shape") else v
            span = v.nbytes + (8 if (k == name and change == "span") else 0)
            header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + span]}
            offset, data = offset + span, data + v.tobytes() + bytes(span - v.nbytes)
        raw = json.dumps(header).encode()
        (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return out

    monkeypatch.setattr(weights, "_headers", then_replaced)
    with pytest.raises(ValueError, match=rf"model.safetensors: expected tensor '{re.escape(name)}' of float32 \[64\] "
                                         r"as its header said moments ago, got another file \(replaced while being read\?\)$"):
        load_gpt2(folder)
