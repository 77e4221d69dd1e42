"""Review findings (session 13) on the Attention Lens package: each test failed before its fix."""

import re

import numpy as np
import pytest

from jaxinterp.lens import data, lenses, train


def _examples():
    return [np.array([5, 20, 7], np.int32), np.array([3, 4], np.int32), np.array([9, 1, 2, 8], np.int32)]


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_a_checkpoint_folder_that_is_a_file_is_refused_before_training(tiny_processed, tmp_path, monkeypatch, where):
    """It trained save_every steps, then failed with NotADirectoryError inside orbax's writer thread
    (and its threads then logged timeouts); the file is left as it was."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    (tmp_path / "f").write_text("keep")
    ckpt = tmp_path / "f" if where == "file" else tmp_path / "f" / "ck"
    ran = []
    monkeypatch.setattr(train, "_driver_step", lambda *a, **k: ran.append(1))
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=8, save_every=1)
    f = tmp_path / "f"
    msg = f"ckpt_dir: expected a folder, got the file {f}" if where == "file" else \
        f"ckpt_dir: cannot write into {ckpt}: {f} is not a folder"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        train.train(params, cfg, lc, data.Batches(_examples(), 2, 8), tc, ckpt_dir=ckpt, progress=False)
    assert not ran and (tmp_path / "f").read_text() == "keep"


@pytest.mark.parametrize("name, config, match", [
    ("l.safetensors", lenses.LensConfig(1, 4, 64, 50), r"lens params 'W': expected shape [4, 64, 50] (heads 4, "
                                                       r"d_model 64, vocab 50), got [4, 64, 97]"),
    ("l.safetensors", lenses.LensConfig(1, 4, 64, 97, "shared"), r"lens params 'W': expected shape [64, 97] "
                                                                 r"(heads 4, d_model 64, vocab 97), got [4, 64, 97]"),
    ("l.st", lenses.LensConfig(1, 4, 64, 97), None),
])
def test_save_lens_refuses_what_load_lens_cannot_read(tiny_processed, tmp_path, name, config, match):
    """save_lens wrote params of other shapes than their config (or under another suffix, which
    load_lens reads as a PyTorch file) without a word: the file was written, and refused on loading."""
    from jaxinterp.lens import io

    params, cfg = tiny_processed
    lens = lenses.init(*lenses.unembedding(params, cfg), lenses.lens_config_for(cfg, 1))
    if match is None:
        match = (f"path: expected a .safetensors file name (load_lens reads other suffixes as PyTorch files), "
                 f"got {tmp_path / name}")
    with pytest.raises(ValueError, match=f"^{re.escape(match)}$"):
        io.save_lens(tmp_path / name, lens, config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("example, kw, match", [
    (np.array([1.7, 2.2]), {}, "data: expected each example to be a 1-D array of integer token ids, got example 3 of "
                               "shape [2] and dtype float64"),
    (np.array([[1, 2], [3, 4]]), {}, "data: expected each example to be a 1-D array of integer token ids, got "
                                     "example 3 of shape [2, 2] and dtype int64"),
    (np.array([True, False]), {}, "data: expected each example to be a 1-D array of integer token ids, got "
                                  "example 3 of shape [2] and dtype bool"),
    (np.array([1, 2]), {"batch_size": 2.5}, "batch_size: expected a positive integer, got 2.5"),
    (np.array([1, 2]), {"pad_id": 1.5}, "pad_id: expected an integer token id, got 1.5"),
])
def test_batches_refuse_examples_that_are_not_token_ids(example, kw, match):
    """Float ids were truncated into the int32 batch (1.7 -> token 1, trained on silently), a 2-D
    example failed inside numpy at its first batch, a float batch size in np.full."""
    with pytest.raises(ValueError, match=f"^{re.escape(match)}$"):
        data.Batches(_examples() + [example], kw.get("batch_size", 2), 8, pad_id=kw.get("pad_id", 0)).batch(0)


def test_batches_take_lists_and_empty_examples():
    """Python lists and an empty example (all padding, weight 0 in the loss) are still taken."""
    batch = data.Batches([[5, 20, 7], [], np.array([3], np.int64)], 3, 4, seed=0).batch(0)
    rows = sorted(tuple(t[m > 0].tolist()) for t, m in zip(batch.tokens, batch.mask))
    assert rows == [(), (3,), (5, 20, 7)]


@pytest.mark.parametrize("kw, match", [
    ({"chunk": 2.5}, "chunk: expected a positive integer (columns per chunk), got 2.5"),
    ({"chunk": "8"}, "chunk: expected a positive integer (columns per chunk), got '8'"),
    ({"compute_dtype": "int8"}, "compute_dtype: expected None or a floating dtype such as 'bfloat16', got 'int8'"),
    ({"compute_dtype": "bf16"}, "compute_dtype: expected None or a floating dtype such as 'bfloat16', got 'bf16'"),
])
def test_objective_refuses_a_bad_chunk_or_compute_dtype_when_made(kw, match):
    """A chunk of 2.5 was refused only when the step was traced (after the checkpoint folder was
    made), '8' was a TypeError, and an int8 compute dtype trained on truncated activations."""
    from jaxinterp.lens import objective as obj

    with pytest.raises(ValueError, match=f"^{re.escape(match)}$"):
        obj.Objective(**kw)


def test_a_compute_dtype_given_as_a_jax_type_checkpoints(tiny_processed, tmp_path):
    """Objective(compute_dtype=jnp.bfloat16) trained, then failed at the first checkpoint: its JSON
    record of the objective could not hold the type. It is held by name, as --bf16 gives it, and a
    resume with the name resumes."""
    import jax.numpy as jnp

    from jaxinterp.lens import objective as obj

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    o = obj.Objective(compute_dtype=jnp.bfloat16)
    assert o == obj.Objective(compute_dtype="bfloat16") and o.compute_dtype == "bfloat16"
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=8, save_every=1)
    b = data.Batches(_examples(), 2, 8)
    part = train.train(params, cfg, lc, b, tc, objective=o, ckpt_dir=tmp_path, progress=False, stop_after=1)
    rest = train.train(params, cfg, lc, b, tc, objective=obj.Objective(compute_dtype="bfloat16"), ckpt_dir=tmp_path,
                       progress=False)
    assert (part.steps, rest.start_step, rest.steps) == (1, 1, 2) and np.isfinite(part.losses + rest.losses).all()


def test_lens_config_for_takes_numpy_integer_layers(tiny_processed):
    """A layer from np.arange (a sweep over layers) was refused: 'expected an integer in [0, 3) ...,
    got 1'; True was taken as layer 1."""
    _, cfg = tiny_processed
    for L in np.arange(cfg.n_layer):
        lc = lenses.lens_config_for(cfg, L)
        assert lc == lenses.lens_config_for(cfg, int(L)) and type(lc.layer) is int
    with pytest.raises(ValueError, match=re.escape("layer: expected an integer in [0, 3) (the model has 3 blocks), "
                                                   "got True")):
        lenses.lens_config_for(cfg, True)


def test_a_folder_with_one_empty_file_is_read(tmp_path):
    """Each file of a folder was read as a data set of its own: one empty (or blank) shard refused
    the whole folder ('data: .../b.txt holds no text'). A folder of nothing but blank files is still
    refused, naming the folder."""
    (tmp_path / "a.txt").write_text("w1 w2\n\nw3\n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.jsonl").write_text('{"text": "w4"}\n{"text": "  "}\n')
    assert data.read_texts(tmp_path) == ["w1 w2", "w3", "w4"]
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("\n \n")
    (blank / "b.jsonl").write_text("")
    with pytest.raises(ValueError, match=f"^{re.escape(f'data: {blank} holds no text (empty file or only blank lines)')}$"):
        data.read_texts(blank)


def test_a_lens_config_of_numpy_integers_checkpoints_and_saves(tiny_processed, tmp_path):
    """LensConfig(np.int64(1), ...) trained, then failed at the first checkpoint (and save_lens)
    with 'Object of type int64 is not JSON serializable'."""
    from jaxinterp.lens import io

    params, cfg = tiny_processed
    lc = lenses.LensConfig(np.int64(1), np.int64(cfg.n_head), cfg.n_embd, np.int32(cfg.vocab_size))
    assert lc == lenses.lens_config_for(cfg, 1) and all(type(v) is int for v in (lc.layer, lc.n_head, lc.vocab_size))
    tc = train.TrainConfig(steps=1, batch_size=2, seq_len=8)
    r = train.train(params, cfg, lc, data.Batches(_examples(), 2, 8), tc, ckpt_dir=tmp_path / "ck", progress=False)
    assert train.restore_lens(tmp_path / "ck")[1] == lc
    assert io.load_lens(io.save_lens(tmp_path / "l.safetensors", r.lens, lc))[1] == lc


@pytest.mark.parametrize("kw, match", [
    ({"layer": -1}, "layer: expected a non-negative integer, got -1"),
    ({"layer": 1.0}, "layer: expected a non-negative integer, got 1.0"),
    ({"n_head": 2.5}, "n_head: expected a positive integer, got 2.5"),
    ({"vocab_size": 0}, "vocab_size: expected a positive integer, got 0"),
])
def test_lens_config_refuses_what_is_not_a_count(kw, match):
    with pytest.raises(ValueError, match=f"^{re.escape(match)}$"):
        lenses.LensConfig(**{"layer": 1, "n_head": 4, "d_model": 64, "vocab_size": 97, **kw})


def test_log_softmax_at_forms_its_logits_in_the_normalisers_compute_dtype():
    """With compute_dtype=bfloat16 the normaliser came from bfloat16 matmul inputs but the logits at
    `ids` from float32 ones: the top token's log-probability came out +0.0068 (p > 1), 0.079 off the
    log-softmax of the bfloat16-input logits (measured; float32 logits of magnitude ~30)."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.kernels import chunked_vocab as cv

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 256)) * 3, jnp.float32)
    W = jnp.asarray(rng.normal(size=(256, 1000)) * 0.3, jnp.float32)
    b = jnp.asarray(rng.normal(size=1000), jnp.float32)
    ids = jnp.asarray(np.argsort(-np.asarray(x @ W + b), axis=1)[:, :3].astype(np.int32))
    for cd in (None, jnp.bfloat16):
        dt = cd or jnp.float32
        z = jnp.matmul(x.astype(dt), W.astype(dt), preferred_element_type=jnp.float32) + b
        want = jnp.take_along_axis(jax.nn.log_softmax(z, -1), ids, 1)
        got = cv.log_softmax_at((x,), (W,), b, ids, chunk=128, compute_dtype=cd)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=str(cd))  # measured <= 2e-5
        assert (np.asarray(got) <= 0).all()


@pytest.mark.parametrize("seq_len", [-1, 0, 2.0])
def test_tokenize_refuses_a_sequence_length_that_is_not_positive(seq_len):
    """tokenize(texts, tok, -1) cut every text's last token silently (x[:-1]); 0 said 'no text gives
    any token'; 2.0 failed inside the slice with a TypeError."""
    from test_lens_train import WordTokenizer

    assert [e.tolist() for e in data.tokenize(["w1 w2 w3", "w4"], WordTokenizer(), 2)] == [[1, 2], [4]]
    with pytest.raises(ValueError, match=f"^{re.escape(f'seq_len: expected a positive integer, got {seq_len!r}')}$"):
        data.tokenize(["w1 w2 w3", "w4"], WordTokenizer(), seq_len)


RESTORE_SCRIPT = """
import json, sys
import jax, numpy as np
from jaxinterp.transformer import gpt2
from jaxinterp.lens import data, lenses, train
cfg = gpt2.GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4)
lc = lenses.lens_config_for(cfg, 1)
out = {"devices": len(jax.devices())}
for split in (False, True):
    ck = sys.argv[2] + f"/split{int(split)}"
    if sys.argv[1] == "train":
        rng = np.random.default_rng(0)
        ex = [rng.integers(0, 97, rng.integers(1, 12)).astype(np.int32) for _ in range(12)]
        tc = train.TrainConfig(steps=2, batch_size=4, seq_len=12, shard_vocab=split)
        r = train.train(gpt2.init(jax.random.key(0), cfg), cfg, lc, data.Batches(ex, 4, 12), tc, ckpt_dir=ck,
                        progress=False)
        np.save(ck + ".W.npy", r.lens["W"])
    else:
        lens, config = train.restore_lens(ck)
        out[f"split{int(split)}"] = [config == lc, lens["W"].shape == (4, 32, 97),
                                     bool(np.array_equal(lens["W"], np.load(ck + ".W.npy")))]
print("RESULT" + json.dumps(out))
"""


def test_restore_lens_reads_a_checkpoint_written_on_another_number_of_devices(tmp_path):
    """A data-parallel run's checkpoint (lens replicated over 4 devices, or split along the
    vocabulary) read back on one device was orbax's 'Topology mismatch detected' ValueError: the
    lens of any multi-device run could not be read on another machine."""
    import json
    import os
    import subprocess
    import sys

    def run(what, devices):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, what, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.split("RESULT", 1)[1])

    assert run("train", 4)["devices"] == 4
    assert run("restore", 1) == {"devices": 1, "split0": [True, True, True], "split1": [True, True, True]}


@pytest.mark.parametrize("name", ["shard.txt", "shard.jsonl"])
def test_a_file_that_is_not_utf8_is_named(tmp_path, name):
    """A UTF-16 (or Latin-1) file among the data failed with "'utf-8' codec can't decode byte 0xff
    in position 0", naming neither the file nor what was expected."""
    (tmp_path / "a.txt").write_text("w1 w2\n")
    (tmp_path / name).write_bytes("w3 w4\n".encode("utf-16"))
    want = f"data: expected UTF-8 text, got {tmp_path / name} with invalid start byte at byte 0"
    for source in (tmp_path / name, tmp_path):
        with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
            data.read_texts(source)


def test_a_word_list_that_is_not_utf8_is_named(tmp_path):
    """`lens show --words` of a UTF-16 list failed with "'utf-8' codec can't decode byte 0xff", no file named."""
    from jaxinterp.lens import readout

    (tmp_path / "words.txt").write_bytes("toxic\nword\n".encode("utf-16"))
    want = f"words: expected UTF-8 text, got {tmp_path / 'words.txt'} with invalid start byte at byte 0"
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        readout.read_words(tmp_path / "words.txt")


def test_show_takes_an_own_lens_beside_a_pytorch_lens_of_another_layer(tmp_path, capsys):
    """--layer names the PyTorch files' layer (they do not record it), but it was checked against
    every .safetensors lens too: an own lens of layer 0 beside a PyTorch lens of layer 1 was refused
    ('layer: the lens ... is for layer 0, got layer 1'). With .safetensors lenses alone it still
    checks their layer."""
    from jaxinterp.cli import main
    from jaxinterp.lens import io

    from conftest import FIXTURES, TINY_GPT2

    own = io.save_lens(tmp_path / "l0.safetensors", {"W": np.zeros((4, 64, 97), np.float32),
                                                     "b": np.zeros((4, 97), np.float32)}, lenses.LensConfig(0, 4, 64, 97))
    csv = tmp_path / "t.csv"
    assert main(["lens", "show", "--model", str(TINY_GPT2), "--lens", str(own), str(FIXTURES / "lens_tiny_layer1.pt"),
                 "--layer", "1", "--prompt", "w5 w6", "--k", "2", "--csv", str(csv)]) == 0
    assert [r.split(",")[:2] for r in csv.read_text().splitlines()[1:]] == [[str(L), str(h)] for L in (0, 1)
                                                                            for h in range(4)]
    capsys.readouterr()
    assert main(["lens", "show", "--model", str(TINY_GPT2), "--lens", str(own), "--layer", "1", "--prompt", "w5"]) == 2
    assert capsys.readouterr().err == f"jaxinterp lens: error: layer: the lens {own} is for layer 0, got layer 1\n"


@pytest.mark.parametrize("blocker", ["lens_layer1.safetensors/", "checkpoints"])
def test_train_cli_refuses_a_blocked_output_before_loading_the_model(tmp_path, capsys, monkeypatch, blocker):
    """A folder at OUT/lens_layer<L>.safetensors made the final rename fail after every step had run
    (IsADirectoryError, the trained lens lost but for its checkpoint); a file at OUT/checkpoints
    failed once the model was loaded. Both are refused before the weights are read."""
    import jaxinterp.transformer
    from jaxinterp.cli import main

    from conftest import TINY_GPT2

    (tmp_path / "d.txt").write_text("w1 w2 w3\nw4 w5\n")
    out = tmp_path / "out"
    out.mkdir()
    if blocker.endswith("/"):
        (out / blocker).mkdir()
        want = f"out: expected {out / blocker.rstrip('/')} to be free for the lens file, got a folder there"
    else:
        (out / blocker).write_text("")
        want = f"out: expected {out / blocker} to be a folder of checkpoints, got a file"

    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the bad output was refused")

    monkeypatch.setattr(jaxinterp.transformer, "load_gpt2", refuse)
    capsys.readouterr()
    assert main(["lens", "train", "--model", str(TINY_GPT2), "--layer", "1", "--data", str(tmp_path / "d.txt"),
                 "--out", str(out), "--steps", "1", "--seq-len", "8", "--batch-size", "2", "--no-progress"]) == 2
    assert capsys.readouterr().err == f"jaxinterp lens: error: {want}\n"
