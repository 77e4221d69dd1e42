"""mergekit's `slices:` form: passthrough layer stacking and a method over aligned slices, on tiny
GPT-2-named checkpoints; every bad-input error before any file is read."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.merge import checkpoint, config
from jaxinterp.merge.tree_merge import merge

LAYER = {"ln_1.weight": (4,), "attn.c_attn.weight": (4, 12), "mlp.c_fc.weight": (4, 8)}


def _tensors(rng, n_layer, layer=LAYER):
    """A GPT-2-shaped checkpoint of n_layer blocks, each with the tensors of `layer` (name -> shape)."""
    t = {"transformer.wte.weight": rng.normal(size=(6, 4)), "transformer.ln_f.weight": rng.normal(size=(4,))}
    for i in range(n_layer):
        t.update({f"transformer.h.{i}.{k}": rng.normal(size=s) for k, s in layer.items()})
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    out = []
    for j in range(2):
        d = root / f"m{j}"
        d.mkdir()
        save_file(_tensors(rng, 4), str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 4, "id": j}))
        out.append(d)
    return out


def _run(tmp_path, text):
    (tmp_path / "cfg.yml").write_text(text)
    r = checkpoint.run_yaml(tmp_path / "cfg.yml", tmp_path / "out", progress=False)
    return r, load_file(str(tmp_path / "out" / "model.safetensors"))


def test_passthrough_stacks_layer_ranges(ckpts, tmp_path):
    a, b = ckpts
    r, got = _run(tmp_path, f"""
merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {b}, layer_range: [1, 4]}}]
""")
    A, B = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for out_layer, (src, layer) in enumerate([(A, 0), (A, 1), (A, 2), (B, 1), (B, 2), (B, 3)]):
        for k in LAYER:
            np.testing.assert_array_equal(got[f"transformer.h.{out_layer}.{k}"], src[f"transformer.h.{layer}.{k}"])
    np.testing.assert_array_equal(got["transformer.wte.weight"], A["transformer.wte.weight"])  # first slice
    np.testing.assert_array_equal(got["transformer.ln_f.weight"], B["transformer.ln_f.weight"])  # last slice
    assert r.n_tensors == 2 + 6 * len(LAYER) and len(got) == r.n_tensors
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["n_layer"] == 6 and hf["id"] == 0
    assert "slices:" in (tmp_path / "out" / "mergekit_config.yml").read_text()


def test_slerp_over_aligned_slices_uses_slice_relative_t(ckpts, tmp_path):
    a, b = ckpts
    _, got = _run(tmp_path, f"""
merge_method: slerp
base_model: {a}
slices:
  - sources: [{{model: {a}, layer_range: [0, 2]}}, {{model: {b}, layer_range: [2, 4]}}]
parameters: {{t: [0.0, 1.0]}}
""")
    A, B = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    # 2 layers in the slice: t = 0 for output layer 0 (all base), t = 1 for output layer 1 (all b)
    for k in LAYER:
        np.testing.assert_allclose(got[f"transformer.h.0.{k}"], A[f"transformer.h.0.{k}"], rtol=1e-6)
        np.testing.assert_allclose(got[f"transformer.h.1.{k}"], B[f"transformer.h.3.{k}"], rtol=1e-5, atol=1e-6)
        mid = merge("slerp", [B[f"transformer.h.3.{k}"]], base=A[f"transformer.h.1.{k}"], parameters={"t": 1.0})
        np.testing.assert_allclose(got[f"transformer.h.1.{k}"], np.asarray(mid), rtol=1e-6)
    np.testing.assert_allclose(got["transformer.wte.weight"], A["transformer.wte.weight"], rtol=1e-6)  # t = 0
    # the final norm comes from the last slice at t = 0 (mergekit 0.1.5), so it is the base's
    np.testing.assert_allclose(got["transformer.ln_f.weight"], A["transformer.ln_f.weight"], rtol=1e-6)
    assert set(got) == {"transformer.wte.weight", "transformer.ln_f.weight"} | {
        f"transformer.h.{i}.{k}" for i in range(2) for k in LAYER}


def test_slice_parameters_fall_back_to_the_global_ones(ckpts):
    """mergekit's ConfigReader: source, then slice, then global, each consulted only when the one
    before sets nothing for the tensor (a slice setting whose filters all miss used to hide the
    global one, so the tensor got the method's default)."""
    from jaxinterp.merge import slices

    a, b = map(str, ckpts)
    cfg = slices.from_dict({
        "merge_method": "ties", "base_model": a, "parameters": {"density": 0.5, "weight": 1.0},
        "slices": [{"sources": [{"model": a, "layer_range": [0, 2]},
                                {"model": b, "layer_range": [0, 2],
                                 "parameters": {"weight": [{"filter": "ln_1", "value": 2.0}]}}],
                    "parameters": {"density": [{"filter": "mlp", "value": 0.3}]}}]}, dtype=None, out_dtype=None)
    jobs, _ = slices.plan_jobs(cfg, {r: checkpoint.read_index(r) for r in (a, b)})
    got = {j.out_name: j.per_input[0] for j in jobs}
    assert got["transformer.h.0.mlp.c_fc.weight"] == {"weight": 1.0, "density": 0.3}  # slice filter hits
    assert got["transformer.h.0.attn.c_attn.weight"] == {"weight": 1.0, "density": 0.5}  # misses: global
    assert got["transformer.h.1.ln_1.weight"] == {"weight": 2.0, "density": 0.5}  # the source's own


@pytest.mark.parametrize("slices,msg", [
    ([{"sources": [{"model": "a", "layer_range": [2, 2]}]}], "layer_range: expected \\[start, end\\]"),
    ([{"sources": [{"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 3]}]}],
     "must span the same number of layers"),
    ([{"sources": [{"model": "a", "layer_rang": [0, 2]}]}], "sources\\[0\\]: expected"),
    ([{"sources": [{"model": "a", "layer_range": [0, 2], "parameters": {"weigth": 1}}]}], "weigth: unknown parameter"),
    ([], "config.slices: expected a non-empty list"),
])
def test_bad_slices_are_reported_before_any_file_is_opened(slices, msg):
    with pytest.raises(ValueError, match=msg):
        config.from_dict({"merge_method": "passthrough", "slices": slices})


def test_layer_range_past_the_model_and_both_forms(ckpts, tmp_path):
    a, _ = ckpts
    cfg = config.from_dict({"merge_method": "passthrough", "slices": [{"sources": [{"model": str(a), "layer_range": [2, 6]}]}]})
    with pytest.raises(ValueError, match=re.escape(f"layer_range: model '{a}' has no layer 4") + "$"):
        checkpoint.run_config(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="either models: or slices:"):
        config.from_dict({"merge_method": "passthrough", "models": [str(a)],
                          "slices": [{"sources": [{"model": str(a), "layer_range": [0, 1]}]}]})
    with pytest.raises(ValueError, match="slices\\[0\\] \\(base_model\\): merge_method .slerp. needs a base model"):
        config.from_dict({"merge_method": "slerp", "parameters": {"t": 0.5},
                          "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}]}]})


def test_cli_check_reports_the_output_layers(ckpts, tmp_path, capsys):
    from jaxinterp import cli

    a, b = ckpts
    (tmp_path / "cfg.yml").write_text(f"merge_method: passthrough\nslices:\n"
                                      f"  - sources: [{{model: {a}, layer_range: [0, 4]}}]\n"
                                      f"  - sources: [{{model: {b}, layer_range: [2, 4]}}]\n")
    assert cli.main(["merge", "check", str(tmp_path / "cfg.yml")]) == 0
    assert "ok: passthrough of 2 checkpoints, 20 tensors, 6 layers" in capsys.readouterr().out
