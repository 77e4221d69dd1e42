"""`jaxinterp lens train|show` on bad input: a layer out of range, a lens for another vocabulary or
width, empty data, a prompt longer than the context, a chunk width of 0. Each fails with a clear
error (exit status 2, what was expected and what came) before the model's weights are read and
before anything is written."""

import json
import re

import numpy as np
import pytest

import jaxinterp.transformer
from jaxinterp.lens import io, lenses

from conftest import FIXTURES, TINY_GPT2  # the tiny GPT-2: 3 layers, 4 heads, d_model 64, vocab 97, 32 positions


def _run(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `jaxinterp ...`; argparse's own errors exit via SystemExit."""
    from jaxinterp.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture
def no_weights(monkeypatch):
    """Fails the test if the model's weights would be loaded."""
    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(jaxinterp.transformer, "load_gpt2", refuse)
    return monkeypatch


def _lens_file(path, config: lenses.LensConfig):
    """A jaxinterp lens file of `config`'s shapes (zeros: only its shapes matter here)."""
    return io.save_lens(path, {k: np.zeros(s, np.float32) for k, s in config.shapes().items()}, config)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "w1 w2 w3"}) + "\n")
    (tmp_path / "empty.txt").write_text("\n  \n")
    return {
        "{data}": tmp_path / "d.jsonl",
        "{empty}": tmp_path / "empty.txt",
        "{vocab50}": _lens_file(tmp_path / "vocab50.safetensors", lenses.LensConfig(1, 4, 64, 50)),
        "{width32}": _lens_file(tmp_path / "width32.safetensors", lenses.LensConfig(1, 4, 32, 97)),
        "{layer5}": _lens_file(tmp_path / "layer5.safetensors", lenses.LensConfig(5, 4, 64, 97)),
        "{fits}": _lens_file(tmp_path / "fits.safetensors", lenses.LensConfig(1, 4, 64, 97)),
        "{torch}": FIXTURES / "lens_tiny_layer1.pt",
    }


TRAIN = [  # argv after `lens train --model TINY --out OUT`, the error expected
    (["--layer", 3, "--data", "{data}"], r"layer: expected an integer in \[0, 3\) \(the model has 3 blocks\), got 3"),
    (["--layer", -1, "--data", "{data}"], r"layer: expected an integer in \[0, 3\) .*got -1"),
    (["--layer", 1, "--data", "{empty}"], r"data: .*empty.txt holds no text"),
    (["--layer", 1, "--data", "{data}", "--seq-len", 33],
     r"seq_len: expected at most the model's n_positions = 32, got 33"),
]


@pytest.mark.parametrize("argv,match", TRAIN)
def test_train_refuses_before_loading_the_model(capsys, tmp_path, files, no_weights, argv, match):
    out = tmp_path / "out"
    code, err = _run(capsys, "lens", "train", "--model", TINY_GPT2, "--out", out, *[files.get(a, a) for a in argv])
    assert code == 2 and re.search(match, err), err
    assert not out.exists()


SHOW = [  # argv after `lens show --model TINY --csv CSV --heatmap PNG`, the error expected
    (["--lens", "{vocab50}", "--prompt", "w1"], r"made for heads 4, d_model 64, vocab 50, but the model has heads 4, "
                                                r"d_model 64, vocab 97"),
    (["--lens", "{width32}", "--prompt", "w1"], r"made for heads 4, d_model 32, vocab 97, but the model has heads 4, "
                                                r"d_model 64"),
    (["--lens", "{layer5}", "--prompt", "w1"], r"layer 5 out of range, the model has 3 blocks"),
    (["--lens", "{torch}", "--layer", 7, "--prompt", "w1"], r"layer 7 out of range, the model has 3 blocks"),
    (["--lens", "{fits}", "--layer", 2, "--prompt", "w1"], r"layer: the lens .* is for layer 1, got layer 2"),
    (["--lens", "{fits}", "{torch}", "--layer", 1, "--prompt", "w1"],
     r"expected one lens per layer, got layers \[1, 1\]"),
    (["--lens", "{fits}", "--prompt", "w1", "--score-k", 98], r"k, score-k: expected at most the model's "
                                                              r"vocab_size = 97, got 10 and 98"),
    (["--lens", "{fits}", "--prompt", " ".join(["w1"] * 33)], r"prompt: 33 tokens is longer than the model's "
                                                              r"context of 32 positions"),
]


@pytest.mark.parametrize("argv,match", SHOW)
def test_show_refuses_before_loading_the_model(capsys, tmp_path, files, no_weights, argv, match):
    csv, png = tmp_path / "t.csv", tmp_path / "h.png"
    code, err = _run(capsys, "lens", "show", "--model", TINY_GPT2, "--csv", csv, "--heatmap", png,
                     *[files.get(a, a) for a in argv])
    assert code == 2 and re.search(match, err), err
    assert not csv.exists() and not png.exists()


OPTIONS = [  # (subcommand, option, value): argparse refuses it, naming the option
    ("show", "--chunk", 0), ("show", "--chunk", -8), ("show", "--k", 0), ("show", "--score-k", -1),
    ("show", "--chunk", "x"),
    ("train", "--chunk", 0), ("train", "--steps", 0), ("train", "--batch-size", 0), ("train", "--accum", 0),
    ("train", "--seq-len", -4), ("train", "--save-every", 0),
]


@pytest.mark.parametrize("command,option,value", OPTIONS)
def test_non_positive_integer_options(capsys, tmp_path, files, no_weights, command, option, value):
    out = tmp_path / "out"
    argv = (["--lens", files["{fits}"], "--prompt", "w1", "--csv", out] if command == "show" else
            ["--layer", 1, "--data", files["{data}"], "--out", out])
    code, err = _run(capsys, "lens", command, "--model", TINY_GPT2, *argv, option, value)
    assert code == 2
    assert re.search(rf"argument {option}: expected a positive integer, got '?{value}'?", err), err
    assert not out.exists()


def test_show_heatmap_path_that_cannot_be_written(capsys, tmp_path, files, no_weights):
    """--heatmap under a file (not a folder): refused by argparse before any work; it failed with a
    FileExistsError traceback after the model ran and the CSV was written."""
    (tmp_path / "a_file").write_text("x")
    csv = tmp_path / "t.csv"
    code, err = _run(capsys, "lens", "show", "--model", TINY_GPT2, "--lens", files["{fits}"], "--prompt", "w1",
                     "--csv", csv, "--heatmap", tmp_path / "a_file" / "h.png")
    assert code == 2 and re.search(r"argument --heatmap: .*a_file is not a folder", err), err
    assert not csv.exists()
