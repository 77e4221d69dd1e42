"""Review 14 leftovers: sce's top-k count, slices' unmatched tensors, stale side files of an earlier
merge, inject's --layers range message, torch checkpoint messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


# --- 1. sce: k = int(density * count) in float32, as mergekit (torch: int64 tensor * float -> float32)

@pytest.mark.parametrize("density,n,want", [
    (0.7, 90, 63),    # float64: 0.7 * 90 = 62.999999999999993 -> 62; float32: 63.0 -> 63
    (0.65, 180, 116),  # float64: 117.00000000000001 -> 117; float32: 116.99999 -> 116
    (0.5, 90, 45),     # both agree
])
@pytest.mark.parametrize("x64", [False, True])
def test_sce_topk_count_is_computed_in_float32_as_mergekit(density, n, want, x64):
    import jax
    import jax.numpy as jnp

    from jaxinterp.merge import simple

    assert int(np.float32(np.float32(density) * np.float32(n))) == want  # the figure mergekit gets
    rng = np.random.default_rng(0)
    dtype = np.float64 if x64 else np.float32
    with jax.enable_x64(x64):
        taus = jnp.asarray(rng.normal(size=(2, n)).astype(dtype))
        mask = simple.sce_topk_mask(taus, density)
        assert mask.dtype == taus.dtype
        assert int(np.asarray(mask).sum()) == want
        # the kept entries are those of largest variance
        var = np.var(np.asarray(taus), axis=0)
        assert set(np.flatnonzero(np.asarray(mask))) == set(np.argsort(-var, kind="stable")[:want])
        # and the merge keeps them: the other entries come out as the base's
        base = jnp.zeros(n, dtype)
        out = np.asarray(simple.sce(base, [base + taus[0], base + taus[1]], select_topk=density))
        assert np.count_nonzero(out) <= want and not out[np.asarray(mask) == 0].any()


# --- 2. slices: a layer tensor only the slice's later sources hold was dropped from the output

def _ckpt(folder, n_layer, extra=(), config=None):
    """A GPT-2-named checkpoint of n_layer blocks; `extra`: (layer, name) tensors added."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(len(str(folder)))
    t = {"transformer.wte.weight": rng.normal(size=(6, 4)), "transformer.ln_f.weight": rng.normal(size=(4,))}
    for i in range(n_layer):
        t.update({f"transformer.h.{i}.ln_1.weight": rng.normal(size=(4,)),
                  f"transformer.h.{i}.mlp.c_fc.weight": rng.normal(size=(4, 8))})
    for i, name in extra:
        t[f"transformer.h.{i}.{name}"] = rng.normal(size=(4,))
    folder.mkdir(parents=True)
    save_file({k: v.astype(np.float32) for k, v in t.items()}, str(folder / "model.safetensors"))
    if config is not None:
        import json

        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("extra_in,msg", [
    # b holds a tensor a lacks: it was silently left out of the output
    ("b", "slices: transformer.h.3.ln_2.weight of '{b}' has no counterpart in '{a}', the slice's first source "
          "(whose layer 1 tensors name the output's); expected the same tensors in every source"),
    # a holds a tensor b lacks: refused before too (the message is unchanged)
    ("a", "slices: transformer.h.1.ln_2.weight has no counterpart in '{b}'"),
])
def test_slices_refuse_a_layer_tensor_the_first_source_lacks(tmp_path, extra_in, msg):
    import re

    from jaxinterp.merge import checkpoint

    a = _ckpt(tmp_path / "a", 3, extra=[(1, "ln_2.weight")] if extra_in == "a" else [])
    b = _ckpt(tmp_path / "b", 4, extra=[(3, "ln_2.weight")] if extra_in == "b" else [])
    (tmp_path / "cfg.yml").write_text(f"""
merge_method: linear
slices:
  - sources: [{{model: {a}, layer_range: [0, 2]}}, {{model: {b}, layer_range: [2, 4]}}]
parameters: {{weight: 1.0}}
""")
    with pytest.raises(ValueError, match="^" + re.escape(msg.format(a=a, b=b)) + "$"):
        checkpoint.run_yaml(tmp_path / "cfg.yml", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written


# --- 3. a merge into a folder of an earlier merge: the earlier run's tokenizer files stay, said so

def _merge_cli(tmp_path, text, out, name):
    from jaxinterp import cli

    (tmp_path / name).write_text(text)
    return cli.main(["merge", "yaml", str(tmp_path / name), "--out", str(out), "--quiet"])


def test_side_files_of_an_earlier_merge_are_reported_and_left_unedited(tmp_path, capsys):
    import json

    a = _ckpt(tmp_path / "a", 4, config={"model_type": "gpt2", "n_layer": 4})
    (a / "tokenizer.json").write_text('{"model": "a"}')
    (a / "vocab.json").write_text('{"x": 0}')
    b = _ckpt(tmp_path / "b", 4)  # weights only: no config, no tokenizer
    out = tmp_path / "out"
    first = f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 4]}}]\n"
    assert _merge_cli(tmp_path, first, out, "first.yml") == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == (f"tokenizer: copied unchanged from {a} (tokenizer.json, vocab.json); "
                    f"jaxinterp writes merged tensors only")
    before = {f: (out / f).read_bytes() for f in ("config.json", "tokenizer.json", "vocab.json")}
    assert json.loads(before["config.json"])["n_layer"] == 4

    second = f"merge_method: passthrough\nslices:\n  - sources: [{{model: {b}, layer_range: [0, 2]}}]\n"
    assert _merge_cli(tmp_path, second, out, "second.yml") == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # it said "none written" while a's tokenizer stayed beside b's weights
    assert line == (f"tokenizer: none written ({b} has no tokenizer files); config.json, tokenizer.json, vocab.json "
                    f"in {out} remain from an earlier run, not written by this merge (loaders read them with these "
                    f"weights: remove them if they do not fit); jaxinterp writes merged tensors only")
    # never removed (they may be the user's), and the earlier config is not edited (it set n_layer 2 in a's)
    assert {f: (out / f).read_bytes() for f in before} == before


def test_kept_side_files_are_only_those_this_merge_did_not_write(tmp_path):
    from jaxinterp.merge import checkpoint

    a = _ckpt(tmp_path / "a", 2, config={"model_type": "gpt2", "n_layer": 2})
    (a / "tokenizer.model").write_text("sentencepiece")
    c = _ckpt(tmp_path / "c", 2, config={"model_type": "gpt2", "n_layer": 2})
    (c / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    for src, want_copied, want_kept in ((a, ("config.json", "tokenizer.model"), ()),
                                        (c, ("config.json", "tokenizer.json"), ("tokenizer.model",))):
        (tmp_path / "m.yml").write_text(f"merge_method: passthrough\nmodels: [{{model: {src}}}]\n")
        r = checkpoint.run_yaml(tmp_path / "m.yml", out, progress=False)
        assert (r.side_files, r.kept_side_files) == (want_copied, want_kept)


# --- 4. inject sweep --layers: the message gives the valid range (it said "layers count from 0")

PROMPTS = ("explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
           "w1 w2 w3,w4 w5 w6 w7 w8,w9 w10,w4 w5 w6,w11\n")


@pytest.mark.parametrize("layers,got", [([-1], -1), ([0, 3], 3), ([2, 7], 7)])
def test_inject_layers_out_of_range_name_the_valid_range(tmp_path, monkeypatch, layers, got):
    """(review 17: the model's config.json is read once, by read_config, before the weights for every
    model, so the case of a layer count known only once the model was loaded is gone)"""
    import re

    from conftest import TINY_GPT2

    import jaxinterp.transformer as tr
    from jaxinterp.inject import cli as inject_cli
    from jaxinterp.inject import sweep as sw

    def refuse(*a, **k):
        raise AssertionError("reached the model or the sweep before --layers was checked")

    monkeypatch.setattr(sw, "sweep", refuse)
    monkeypatch.setattr(tr, "load_gpt2", refuse)  # the folder's config.json gives the layer count
    (tmp_path / "p.csv").write_text(PROMPTS)
    msg = f"--layers: expected 0..2 for this 3-layer model, got {got}"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        inject_cli.run_sweep(str(TINY_GPT2), str(tmp_path / "p.csv"), str(tmp_path / "out"), layers=layers,
                             taus=[1.0])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config,match", [
    (None, "has no config.json"), ("not json", "config.json is not valid JSON"),
    ('["a list"]', "must hold a JSON object, got list"), ('{"n_layer": "3"}', "GPT-2 config is missing"),
    ('{"n_layer": 0}', "GPT-2 config is missing")])
def test_inject_unreadable_configs_are_the_loaders_errors_before_the_model(tmp_path, monkeypatch, config, match):
    """(review 17: was _local_n_layer's None for these, leaving them to load_gpt2; the one read of
    config.json is now read_config's, load_gpt2's own reader, so the same errors come before the model)"""
    import jaxinterp.transformer as tr
    from jaxinterp.inject import cli as inject_cli

    def refuse(*a, **k):
        raise AssertionError("reached the model before config.json was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    model = tmp_path / "model"
    model.mkdir()
    if config is not None:
        (model / "config.json").write_text(config)
    (tmp_path / "p.csv").write_text(PROMPTS)
    with pytest.raises(ValueError, match=match):
        inject_cli.run_sweep(str(model), str(tmp_path / "p.csv"), str(tmp_path / "out"), taus=[1.0])
    assert not (tmp_path / "out").exists()


# --- 5. torch checkpoints: the persistent id message names the file; a folder is not "missing"

@pytest.mark.parametrize("pid", [("storage",), ("tensor", "0"), "raw"])
def test_torch_bad_persistent_id_names_the_file(tmp_path, pid):
    import io
    import pickle
    import re
    import zipfile

    from jaxinterp import torch_pickle

    class Pid(pickle.Pickler):
        def persistent_id(self, obj):
            return obj[1] if isinstance(obj, tuple) and obj and obj[0] == "pid" else None

    buf = io.BytesIO()
    Pid(buf, protocol=2).dump({"w": ("pid", pid)})
    path = tmp_path / "m.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    msg = (f"{path}: unexpected persistent id {pid!r} in the torch checkpoint, expected "
           f"('storage', <storage type>, <key>, <location>, <numel>)")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        torch_pickle.load(path)


def test_torch_checkpoint_path_that_is_a_folder_is_not_called_missing(tmp_path):
    import re

    from jaxinterp import torch_pickle

    (tmp_path / "run").mkdir()
    for f in (torch_pickle.load, torch_pickle.load_state_dict):
        with pytest.raises(ValueError, match="^" + re.escape(
                f"torch checkpoint {tmp_path / 'run'} is a folder, expected a file (a torch.save .pt or "
                f"Lightning .ckpt)") + "$"):
            f(tmp_path / "run")
        with pytest.raises(ValueError, match="^" + re.escape(f"torch checkpoint {tmp_path / 'gone.pt'} does not exist")
                           + "$"):
            f(tmp_path / "gone.pt")
