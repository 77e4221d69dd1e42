"""`jaxinterp merge ...` through `cli.main`: mergekit's tokenizer keys, and `barrier` end to end."""

import json
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from jaxinterp import cli
from jaxinterp.merge import checkpoint, config, mlp
from jaxinterp.merge import cli as merge_cli

from test_merge_config import ckpts, write_cfg  # noqa: F401 (ckpts is a fixture)

# --- tokenizer_source, tokenizer, chat_template --------------------------------------------------

REFUSED = [  # (top-level keys, error); every one would change the embedding matrices in mergekit
    ({"tokenizer_source": "union"}, r"config.tokenizer_source: expected 'base' or nothing .* got 'union'"),
    ({"tokenizer_source": "org/other-model"}, r"config.tokenizer_source: expected 'base'.* got 'org/other-model'"),
    ({"tokenizer": {"source": "base", "tokens": {"<|im_start|>": {"source": "org/chat-model"}}}},
     r"config.tokenizer: not supported .*added tokens.* got \{'source': 'base'"),
    ({"tokenizer": {"source": "union", "pad_to_multiple_of": 64}}, r"config.tokenizer: not supported"),
    ({"chat_template": ["chatml"]}, r"config.chat_template: expected a template name or Jinja string, "
                                    r"got \['chatml'\]"),
]


def models_form(base, a, b, **top):
    return {"merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(a)}, {"model": str(b)}], "parameters": {"weight": 0.5}, **top}


def slices_form(base, a, b, **top):
    return {"merge_method": "task_arithmetic", "base_model": str(base), "parameters": {"weight": 0.5},
            "slices": [{"sources": [{"model": str(m), "layer_range": [0, 2]} for m in (a, b, base)]}], **top}


def run_yaml_cli(tmp_path, d, out):
    return cli.main(["merge", "yaml", str(write_cfg(tmp_path, yaml.safe_dump(d))), "--out", str(out), "--quiet"])


@pytest.fixture(scope="module")
def base_with_tokenizer(ckpts, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("base")
    for f in ("model.safetensors", "config.json"):
        shutil.copyfile(ckpts[0] / f, d / f)
    (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "a"}))
    return d


@pytest.mark.parametrize("form", [models_form, slices_form], ids=["models", "slices"])
@pytest.mark.parametrize("top,msg", REFUSED, ids=["union", "model", "added-tokens", "tokenizer-union", "template-list"])
def test_tokenizer_keys_that_change_tensors_are_refused_before_anything_is_written(
        ckpts, tmp_path, capsys, form, top, msg):  # noqa: F811
    config.from_dict(form(*ckpts))  # valid without the key
    d = form(*ckpts, **top)
    with pytest.raises(ValueError, match=msg):
        config.from_dict(d)
    assert run_yaml_cli(tmp_path, d, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxinterp merge: error: config.") and re.search(msg, err)
    assert not (tmp_path / "out").exists()


NO_TEMPLATE, NOT_APPLIED = "", "; chat_template not applied"
ACCEPTED = [  # (top-level keys, the end of the tokenizer line)
    ({}, NO_TEMPLATE),
    ({"tokenizer_source": "base"}, NO_TEMPLATE),
    ({"tokenizer": None, "tokenizer_source": None}, NO_TEMPLATE),
    ({"chat_template": "chatml"}, NOT_APPLIED),
    ({"tokenizer_source": "base", "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}, NOT_APPLIED),
]


@pytest.mark.parametrize("top,tail", ACCEPTED, ids=["absent", "base", "nulls", "chatml", "base+jinja"])
def test_accepted_tokenizer_keys_leave_the_tensors_as_without_them(ckpts, base_with_tokenizer, tmp_path,  # noqa: F811
                                                                   capsys, top, tail):
    args = (base_with_tokenizer, ckpts[1], ckpts[2])
    checkpoint.run_config(config.from_dict(models_form(*args)), tmp_path / "plain", progress=False)
    assert run_yaml_cli(tmp_path, models_form(*args, **top), tmp_path / "out") == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == (f"tokenizer: copied unchanged from {base_with_tokenizer} (tokenizer.json, "
                    f"tokenizer_config.json); jaxinterp writes merged tensors only{tail}")
    got, want = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("out", "plain"))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    for f in ("tokenizer.json", "tokenizer_config.json"):  # as they were: the chat template is not added
        assert (tmp_path / "out" / f).read_bytes() == (base_with_tokenizer / f).read_bytes()


def test_tokenizer_line_without_tokenizer_files(ckpts, tmp_path, capsys):  # noqa: F811
    d = {"merge_method": "linear", "models": [str(ckpts[1]), str(ckpts[2])], "parameters": {"weight": 1.0}}
    assert run_yaml_cli(tmp_path, d, tmp_path / "out") == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"tokenizer: none written ({ckpts[1]} has no tokenizer files); jaxinterp writes merged tensors only")


# --- train-mlp and barrier -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlps(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlps")
    paths = [root / f"{s}.safetensors" for s in (1, 2)]
    for seed, p in zip((1, 2), paths):
        assert cli.main(["merge", "train-mlp", "--seed", str(seed), "--steps", "30", "--out", str(p)]) == 0
    return paths


def test_barrier_writes_paths_whose_ends_are_the_two_models(mlps, tmp_path, capsys):
    png, js = tmp_path / "path.png", tmp_path / "path.json"
    assert cli.main(["merge", "barrier", *map(str, mlps), "--align", "--num", "5",
                     "--png", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = json.loads(js.read_text())
    assert set(r["paths"]) == {"naive", "weight matching"}
    d = mlp.load_digits()
    batch = (jnp.asarray(d.x_test), jnp.asarray(d.y_test))
    la, lb = (float(mlp.loss(merge_cli._load_mlp(str(p)), batch)) for p in mlps)
    for name, p in r["paths"].items():
        alphas, losses = np.array(p["alphas"]), np.array(p["losses"])
        np.testing.assert_allclose(alphas, np.linspace(0, 1, 5), atol=1e-7)
        # alpha 1 of "weight matching" is B permuted: the same function, so the same loss
        # measured: ends 6.2e-8 relative, barriers 1.5e-8 absolute (were held to 1e-5)
        np.testing.assert_allclose([losses[0], losses[-1]], [la, lb], rtol=1e-6)
        assert p["barrier_mean"] == pytest.approx(losses.max() - (la + lb) / 2, rel=0, abs=3e-7)
        assert p["barrier_chord"] == pytest.approx(np.max(losses - ((1 - alphas) * la + alphas * lb)),
                                                   rel=0, abs=3e-7)
        assert p["barrier_mean"] >= 0 and p["barrier_chord"] >= 0  # the ends are on the path
        assert f"{name}: barrier (max - mean of ends) {p['barrier_mean']:.4f}" in out


@pytest.mark.parametrize("which,extra,msg", [
    ("missing-a", [], r"model: expected a .safetensors file written by `merge train-mlp`, got '.*nope.safetensors'"),
    ("ok", ["--num", "1"], r"num: expected at least 2 alphas \(the two endpoints\), got 1"),
])
def test_barrier_bad_input_exits_2_and_writes_nothing(mlps, tmp_path, capsys, which, extra, msg):
    a = str(tmp_path / "nope.safetensors") if which == "missing-a" else str(mlps[0])
    png, js = tmp_path / "path.png", tmp_path / "path.json"
    assert cli.main(["merge", "barrier", a, str(mlps[1]), "--png", str(png), "--json", str(js), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxinterp merge: error: ") and re.search(msg, err)
    assert not png.exists() and not js.exists()


def test_merge_without_a_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main(["merge"]) == 2
    assert "barrier" in capsys.readouterr().out
