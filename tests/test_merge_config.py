"""mergekit YAML configs and the streaming safetensors merge; every bad-input error has a case."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.merge import checkpoint, config
from jaxinterp.merge.tree_merge import merge

NAMES = {"wte.weight": (6, 4), "h.0.mlp.c_fc.weight": (4, 8), "h.0.attn.c_attn.weight": (4, 12),
         "h.1.mlp.c_fc.weight": (4, 8), "h.1.attn.c_attn.weight": (4, 12), "ln_f.bias": (4,)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    rng = np.random.default_rng(0)
    out = []
    for j in range(3):
        d = root / f"m{j}"
        d.mkdir()
        save_file({k: rng.normal(size=s).astype(np.float32) for k, s in NAMES.items()}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "id": j}))
        out.append(d)
    return out


def write_cfg(tmp_path, text):
    p = tmp_path / "cfg.yml"
    p.write_text(text)
    return p


def test_yaml_merge_matches_in_memory_merge(ckpts, tmp_path):
    cfg = write_cfg(tmp_path, f"""
merge_method: ties
base_model: {ckpts[0]}
models:
  - model: {ckpts[0]}
  - model: {ckpts[1]}
    parameters: {{weight: [0.2, 1.0], density: 0.5}}
  - model: {ckpts[2]}
    parameters: {{weight: {{filter: mlp, value: 0.7}}, density: 0.6}}
parameters: {{weight: 0.3}}
out_dtype: bfloat16
""")
    r = checkpoint.run_yaml(cfg, tmp_path / "out", progress=False)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert r.n_tensors == len(NAMES) and set(got) == set(NAMES)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id"] == 0  # from the base
    assert (tmp_path / "out" / "mergekit_config.yml").is_file()
    trees = [load_file(str(d / "model.safetensors")) for d in ckpts]
    want = merge("ties", [trees[1], trees[2]], base=trees[0], parameters={"weight": 0.3},
                 model_parameters=[{"weight": [0.2, 1.0], "density": 0.5},
                                   {"weight": {"filter": "mlp", "value": 0.7}, "density": 0.6}])
    for k in NAMES:
        # keys of a flat dict with dots become nested paths; compare by name
        w = want[k]
        assert got[k].dtype.name == "bfloat16"
        # the bfloat16 rounding of the float32 merge, to one bfloat16 ulp (2^-7 relative at most): measured
        # equal; the bound was rtol 1e-2 + atol 1e-2 against the float32 merge, which passed any element 0.01 off
        want_bf16 = np.asarray(w, np.float32).astype(got[k].dtype).astype(np.float32)
        np.testing.assert_allclose(got[k].astype(np.float32), want_bf16, rtol=2**-7, atol=0, err_msg=k)


def test_config_round_trips_through_yaml(ckpts):
    d = {"merge_method": "slerp", "base_model": str(ckpts[0]),
         "models": [{"model": str(ckpts[1])}], "parameters": {"t": [0.0, 0.5, 1.0]}, "dtype": "float32"}
    cfg = config.from_dict(d)
    assert config.from_dict(__import__("yaml").safe_load(config.to_yaml(cfg))) == cfg


def test_a_base_listed_for_linear_is_one_of_the_models():
    """linear has no base: a base_model that is also listed among the models is merged as one of them
    (mergekit accepts this config; it was refused with 'list it among the models', which it was)."""
    cfg = config.from_dict({"merge_method": "linear", "base_model": "a",
                            "models": [{"model": "a", "parameters": {"weight": 0.3}},
                                       {"model": "b", "parameters": {"weight": 0.7}}]})
    assert cfg.base_model is None and [(m.model, m.parameters) for m in cfg.models] == [
        ("a", {"weight": 0.3}), ("b", {"weight": 0.7})]


# each message whole, expected and got (the matches were a word or two: "unknown keys", "shared parameter")
TIES_PARAMETERS = "(its parameters: int8_mask, normalize, rescale, lambda, weight, density)"
BAD_CONFIGS = [
    ("method", {"merge_method": "tiess", "models": ["a"]},
     "merge_method: expected one of ['arcee_fusion', 'breadcrumbs', 'breadcrumbs_ties', 'dare_linear', 'dare_ties', "
     "'della', 'della_linear', 'karcher', 'linear', 'model_stock', 'multislerp', 'nearswap', 'nuslerp', 'passthrough', "
     "'sce', 'slerp', 'task_arithmetic', 'ties'], got 'tiess'"),
    ("parameter", {"merge_method": "ties", "models": ["a", "b"], "parameters": {"densty": 0.5}},
     f"config.parameters.densty: unknown parameter for merge_method 'ties' {TIES_PARAMETERS}"),
    ("no base", {"merge_method": "ties", "models": ["a", "b"]},
     "config.base_model: merge_method 'ties' needs a base model, got none"),
    ("only the base", {"merge_method": "ties", "models": ["b"], "base_model": "b"},
     "models: merge_method 'ties' takes at least 1 non-base models, got 0"),
    ("unused base", {"merge_method": "linear", "models": ["a"], "base_model": "b"},
     "config.base_model: merge_method 'linear' does not use a base model; list it among the models instead"),
    ("slerp inputs", {"merge_method": "slerp", "models": ["a", "b"], "base_model": "c", "parameters": {"t": 0.5}},
     "models: merge_method 'slerp' takes exactly 2 inputs, got 3"),
    ("another method's parameter", {"merge_method": "ties", "models": ["a"], "base_model": "b", "parameters": {"t": 0.5}},
     f"config.parameters.t: unknown parameter for merge_method 'ties' {TIES_PARAMETERS}"),
    ("shared per model", {"merge_method": "ties", "models": [{"model": "a", "parameters": {"lambda": 2}}], "base_model": "b"},
     "config.models[0].parameters.lambda: a shared parameter of 'ties'; set it in the global parameters, not per model"),
    ("dtype", {"merge_method": "ties", "models": ["a"], "base_model": "b", "dtype": "float8"},
     "config.dtype: expected one of float32, float16, bfloat16, float64, got 'float8'"),
    ("no models", {"merge_method": "ties", "models": [], "base_model": "b"},
     "config.models: expected a non-empty list of {model: PATH}, got []"),
    ("unknown key", {"merge_method": "ties", "modelz": ["a"]},
     "config: unknown keys ['modelz'] (known: ['base_model', 'chat_template', 'dtype', 'merge_method', 'models', "
     "'modules', 'name', 'out_dtype', 'parameters', 'slices', 'tokenizer', 'tokenizer_source'])"),
    ("empty slice", {"merge_method": "ties", "slices": [{}]},
     "config.slices[0]: expected {sources: [{model: PATH, layer_range: [A, B]}, ...]}, got {}"),
    ("modules", {"merge_method": "ties", "modules": {"text": {}}},
     "config.modules: per-module configurations are not supported; use `models:` or `slices:`"),
    ("no method", {"models": ["a"]}, "config.merge_method: required, got nothing"),
    ("condition", {"merge_method": "ties", "models": ["a"], "base_model": "b", "parameters": {"weight": [{"valu": 1}]}},
     "config.parameters.weight[0]: expected a condition {value, filter}, got keys ['valu']"),
]


@pytest.mark.parametrize("d,msg", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_reported_before_any_file_is_opened(d, msg):
    # the model paths do not exist: the config error must come first
    with pytest.raises(ValueError, match=re.escape(msg) + "$"):
        config.from_dict(d)


def test_bad_value_for_one_filtered_tensor_stops_before_writing(ckpts, tmp_path):
    cfg = write_cfg(tmp_path, f"""
merge_method: ties
base_model: {ckpts[0]}
models:
  - model: {ckpts[1]}
    parameters: {{weight: 1.0, density: [{{filter: ln_f, value: 1.5}}, {{value: 0.5}}]}}
""")
    with pytest.raises(ValueError, match=r"ln_f.bias.*density of input 0 must be in \(0, 1\], got 1.5"):
        checkpoint.run_yaml(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("params,msg", [
    ({"density": 0.0, "weight": 1.0}, r"density of input 0 must be in \(0, 1\], got 0.0"),
    ({"density": 0.9, "epsilon": 0.15, "weight": 1.0},
     r"parameters for w: della needs density \+- epsilon in \(0, 1\), got density 0.9 and epsilon 0.15 for input 0$"),
    ({"density": 0.1, "epsilon": 0.15, "weight": 1.0},
     r"parameters for w: della needs density \+- epsilon in \(0, 1\), got density 0.1 and epsilon 0.15 for input 0$"),
])
def test_density_errors(params, msg):
    x = {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match=msg):
        merge("della", [x], base=x, parameters=params)


@pytest.mark.parametrize("make_b,msg", [
    (lambda: {"a": np.ones(3), "b": np.ones(3)}, r"differ at b \(only in models\[1\]\)$"),
    (lambda: {"a": np.ones(4)}, r"differ at a \(shape \(3,\) in models\[0\], \(4,\) in models\[1\]\)$"),
    (lambda: {"c": np.ones(3)}, r"differ at a \(missing in models\[1\]\); c \(only in models\[1\]\)$"),
])
def test_tree_structure_errors_name_first_differing_paths(make_b, msg):
    with pytest.raises(ValueError, match=r"models: expected trees of the same structure and shapes; models\[0\] and "
                                         r"models\[1\] " + msg):
        merge("linear", [{"a": np.ones(3)}, make_b()], parameters={"weight": 1.0})


def test_missing_required_parameter_and_zero_weights():
    x = {"w": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="parameters.weight: merge_method 'ties' requires it for input 0: w, and none was given$"):
        merge("ties", [x], base=x)
    with pytest.raises(ValueError, match=r"parameters for w: linear with normalize needs weights that do not sum to 0, got \[1.0, -1.0\]$"):
        merge("linear", [x, x], model_parameters=[{"weight": 1.0}, {"weight": -1.0}])


def test_checkpoint_mismatch_and_missing_model(ckpts, tmp_path):
    other = tmp_path / "odd"
    other.mkdir()
    save_file({"wte.weight": np.zeros((6, 4), np.float32)}, str(other / "model.safetensors"))
    missing = "; ".join(f"{k} (missing in {other})" for k in sorted(NAMES) if k != "wte.weight")
    with pytest.raises(ValueError, match=re.escape(f"models: expected checkpoints with the same tensors and shapes; "
                                                   f"{ckpts[0]} and {other} differ at {missing}") + "$"):
        checkpoint.check_indices([checkpoint.read_index(str(ckpts[0])), checkpoint.read_index(str(other))],
                                 [str(ckpts[0]), str(other)])
    with pytest.raises(ValueError, match=re.escape(f"model '{tmp_path / 'nope'}': expected a local folder or "
                                                   ".safetensors file (nothing is downloaded)") + "$"):
        checkpoint.read_index(str(tmp_path / "nope"))


def test_cli_check_and_bad_yaml(ckpts, tmp_path, capsys):
    from jaxinterp.cli import main

    cfg = write_cfg(tmp_path, f"merge_method: linear\nmodels:\n  - model: {ckpts[1]}\n  - model: {ckpts[2]}\n"
                              "parameters: {weight: 1.0}\n")
    assert main(["merge", "check", str(cfg)]) == 0
    bad = write_cfg(tmp_path, "merge_method: [unclosed\n")
    assert main(["merge", "yaml", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_truncated_checkpoint_is_an_error_and_writes_nothing(ckpts, tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (ckpts[1] / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:-40])  # the header is whole, the last tensor is not
    cfg = write_cfg(tmp_path, f"merge_method: linear\nmodels:\n  - model: {ckpts[0]}\n  - model: {cut}\n"
                              "parameters: {weight: 1.0}\n")
    with pytest.raises(ValueError, match="model.safetensors is truncated: its header needs"):
        checkpoint.run_yaml(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # found from the headers, before the output folder


def test_a_file_cut_short_after_its_header_was_read_is_an_error_not_a_crash(ckpts, tmp_path):
    """Inputs are memory-mapped a tensor at a time; a file truncated after the headers were checked
    (another process rewriting it) would fault on the mapping (SIGBUS kills the process). The reader
    checks the size before each mapping."""
    import shutil

    src = tmp_path / "m"
    shutil.copytree(ckpts[0], src)
    index = checkpoint.read_index(str(src))
    readers = checkpoint._Readers()
    name = max(index, key=lambda n: int(np.prod(index[n].shape)))
    whole = readers.get(index[name], name)
    np.testing.assert_array_equal(whole, load_file(str(ckpts[0] / "model.safetensors"))[name])
    with open(src / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    last = max(index, key=lambda n: readers._open[index[n].file][2][n]["data_offsets"][1])
    with pytest.raises(ValueError, match=f"tensor {last} is truncated"):
        readers.get(index[last], last)
    readers.close()


@pytest.mark.parametrize("method", ["task_arithmetic", "slerp"])
def test_mixed_dtypes_merge_in_the_widest(ckpts, tmp_path, method):
    """A float32 base with a bfloat16 fine-tune (no dtype configured): the merge computes in float32,
    as torch's promotion does in mergekit, and writes the base's float32; it used to round every
    input to the first model's bfloat16 first (an error of ~7% of the task vector)."""
    import ml_dtypes

    base = load_file(str(ckpts[0] / "model.safetensors"))
    tuned = {k: (v + 0.01 * np.random.default_rng(1).normal(size=v.shape)).astype(ml_dtypes.bfloat16)
             for k, v in base.items()}
    d = tmp_path / "tuned_bf16"
    d.mkdir()
    save_file(tuned, str(d / "model.safetensors"))
    cfg = write_cfg(tmp_path, f"""
merge_method: {method}
base_model: {ckpts[0]}
models:
  - model: {d}
parameters: {{weight: 0.5, t: 0.5}}
""".replace("weight: 0.5, t: 0.5", "weight: 0.5" if method == "task_arithmetic" else "t: 0.5"))
    checkpoint.run_yaml(cfg, tmp_path / "out", progress=False)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    params = {"weight": 0.5} if method == "task_arithmetic" else {"t": 0.5}
    want = merge(method, [{k: v.astype(np.float32) for k, v in tuned.items()}], base=base, parameters=params)
    for k in NAMES:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], np.asarray(want[k]), rtol=1e-6, atol=1e-6)
        assert not np.array_equal(got[k], got[k].astype(ml_dtypes.bfloat16).astype(np.float32))  # not bf16-rounded


def test_output_dtype_and_config_follow_mergekit(ckpts, tmp_path):
    """A bfloat16 base with a float32 fine-tune and no dtype configured: mergekit computes in the
    common float32 and writes float32; this wrote the base's bfloat16 (0.008 off mergekit 0.1.5, a
    review finding). With an out_dtype, the output config.json's torch_dtype says it, as mergekit's does."""
    import ml_dtypes

    base = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(str(ckpts[0] / "model.safetensors")).items()}
    d = tmp_path / "base_bf16"
    d.mkdir()
    save_file(base, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "torch_dtype": "bfloat16"}))
    text = f"merge_method: task_arithmetic\nbase_model: {d}\nmodels:\n  - model: {ckpts[1]}\n" \
           "parameters: {weight: 0.5}\n"
    checkpoint.run_yaml(write_cfg(tmp_path, text), tmp_path / "out", progress=False)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    tuned = load_file(str(ckpts[1] / "model.safetensors"))
    for k in NAMES:
        assert got[k].dtype == np.float32
        b = base[k].astype(np.float32)
        np.testing.assert_allclose(got[k], b + 0.5 * (tuned[k] - b), rtol=1e-6, atol=1e-6)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"  # base's, untouched
    checkpoint.run_yaml(write_cfg(tmp_path, text + "out_dtype: float16\n"), tmp_path / "out16", progress=False)
    assert all(v.dtype == np.float16 for v in load_file(str(tmp_path / "out16" / "model.safetensors")).values())
    assert json.loads((tmp_path / "out16" / "config.json").read_text())["torch_dtype"] == "float16"


def test_integer_buffers_are_copied_when_equal_and_refused_when_not(tmp_path):
    """BERT-style checkpoints hold int64 position_ids (a buffer): copied with their dtype, never cast
    to out_dtype or merged (they made the whole merge fail with 'expected a floating dtype')."""
    rng = np.random.default_rng(2)
    dirs = []
    for j, pos in enumerate([np.arange(8), np.arange(8), np.arange(8)[::-1].copy()]):
        d = tmp_path / f"bert{j}"
        d.mkdir()
        save_file({"encoder.layer.0.w": rng.normal(size=(3, 3)).astype(np.float32),
                   "embeddings.position_ids": pos.astype(np.int64)[None], "mask": np.array([True, False])},
                  str(d / "model.safetensors"))
        dirs.append(d)
    linear = "merge_method: linear\nparameters: {weight: 1.0}\n"
    cfg = write_cfg(tmp_path, linear + f"models: [{dirs[0]}, {dirs[1]}]\nout_dtype: bfloat16\n")
    checkpoint.run_yaml(cfg, tmp_path / "out", progress=False)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got["embeddings.position_ids"].dtype == np.int64 and got["mask"].dtype == np.bool_
    np.testing.assert_array_equal(got["embeddings.position_ids"], np.arange(8)[None])
    np.testing.assert_array_equal(got["mask"], [True, False])
    assert got["encoder.layer.0.w"].dtype.name == "bfloat16"
    cfg = write_cfg(tmp_path, linear + f"models: [{dirs[0]}, {dirs[2]}]\n")
    with pytest.raises(ValueError, match="embeddings.position_ids: a int64 tensor .* differs between"):
        checkpoint.run_yaml(cfg, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2" / "model.safetensors").exists()


@pytest.mark.parametrize("into", ["base", "model", "file"])
def test_an_output_folder_that_holds_an_input_is_refused_before_anything_is_written(ckpts, tmp_path, into):
    import shutil

    dirs = []  # copies: a merge that wrongly went ahead must not destroy the module's fixture
    for j, d in enumerate(ckpts):
        dirs.append(tmp_path / f"c{j}")
        shutil.copytree(d, dirs[-1])
    single = tmp_path / "single"  # a model given as one .safetensors file
    single.mkdir()
    shutil.copyfile(dirs[2] / "model.safetensors", single / "ft.safetensors")
    cfg = write_cfg(tmp_path, f"merge_method: task_arithmetic\nbase_model: {dirs[0]}\n"
                              f"models: [{dirs[1]}, {single / 'ft.safetensors'}]\nparameters: {{weight: 0.5}}\n")
    out = {"base": dirs[0], "model": dirs[1], "file": single}[into]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"out: expected a folder that holds no input model, got .* which holds "
                                         r"(model|ft)\.safetensors of model"):
        checkpoint.run_yaml(cfg, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten, nothing added
    checkpoint.run_yaml(cfg, tmp_path / "out", progress=False)  # a folder of its own is fine
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_crash_while_copying_the_side_files_leaves_the_previous_ones_whole(ckpts, tmp_path, monkeypatch):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(ckpts[0], base)
    (base / "config.json").write_text(json.dumps({"model_type": "gpt2", "pad": list(range(500))}))
    cfg = write_cfg(tmp_path, f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{ckpts[1]}]\n"
                              "parameters: {weight: 0.5}\n")
    out = tmp_path / "out"
    checkpoint.run_yaml(cfg, out, progress=False)
    good = (out / "config.json").read_bytes()

    def dies_half_way(src, dst, **_):  # a kill or a full disk during the copy
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read(100))
        raise OSError("simulated crash while copying")

    monkeypatch.setattr(shutil, "copyfile", dies_half_way)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.run_yaml(cfg, out, progress=False)
    assert (out / "config.json").read_bytes() == good
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_tensor_in_two_files_of_one_model_is_refused(tmp_path):
    save_file({"h.0.w": np.zeros((2, 2), np.float32)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    save_file({"h.0.w": np.ones((3, 3), np.float32)}, str(tmp_path / "model.safetensors"))  # a stale copy
    with pytest.raises(ValueError, match=r"tensor h.0.w is in both model-00001-of-00001.safetensors and "
                                         r"model.safetensors; expected each tensor in one file"):
        checkpoint.read_index(str(tmp_path))
