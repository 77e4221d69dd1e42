"""Review findings (session 11) on the Attention Lens package: each test failed before its fix."""

import re

import numpy as np
import pytest

from jaxinterp.lens import data, lenses, train


def _examples():
    return [np.array([5, 20, 7], np.int32), np.array([3, 4], np.int32), np.array([9, 1, 2, 8], np.int32)]


def test_a_pad_id_outside_the_vocabulary_does_not_change_training(tiny_processed):
    """Padding is masked, yet a pad id past the vocabulary (a tokenizer's added pad token) embedded as
    NaN, and NaN values times 0 attention weight made every loss and the whole lens NaN."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=8)
    runs = [train.train(params, cfg, lc, data.Batches(_examples(), 2, 8, pad_id=pad), tc, progress=False)
            for pad in (0, cfg.vocab_size)]
    assert np.isfinite(runs[1].losses).all()
    assert runs[1].losses == runs[0].losses
    for k in runs[0].lens:
        np.testing.assert_array_equal(runs[1].lens[k], runs[0].lens[k])


@pytest.mark.parametrize("bad_id", [97, 200, -3])
def test_token_ids_outside_the_vocabulary_are_refused_before_anything_is_written(tiny_processed, tmp_path, bad_id):
    """They trained to NaN losses and a NaN lens (checkpointed) without a word."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    ex = _examples() + [np.array([1, bad_id, 2], np.int32)]
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match=rf"batches: expected token ids in \[0, 97\).*got ids from {min(bad_id, 1)} "
                                         rf"to {max(bad_id, 20)}"):
        train.train(params, cfg, lc, data.Batches(ex, 2, 8), tc, ckpt_dir=tmp_path / "ck", progress=False)
    assert not (tmp_path / "ck").exists()


def test_last_mode_reads_the_last_real_token_of_left_padded_rows(tiny_processed, gpt2_ref):
    """rows() takes a mask with padding on either side (as the GPT-2 forward does), but "last" took
    position mask.sum() - 1: for a left-padded row, a padding position (or the first real token),
    weighted 1 in the loss."""
    import jax.numpy as jnp

    from jaxinterp.lens import objective as obj

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    o = obj.Objective("last", chunk=32)
    ids = gpt2_ref["tokens"][:1, :6].astype(np.int32)
    pad = np.full((1, 4), 11, np.int32)
    right = obj.rows(params, jnp.asarray(np.concatenate([ids, pad], 1)), jnp.asarray([[1] * 6 + [0] * 4]),
                     model_config=cfg, lens_config=lc, objective=o)
    left = obj.rows(params, jnp.asarray(np.concatenate([pad, ids], 1)), jnp.asarray([[0] * 4 + [1] * 6]),
                    model_config=cfg, lens_config=lc, objective=o)
    # measured 3.3e-9, 0 and 0 (were held to 1e-6, 1e-6 and 1e-5)
    np.testing.assert_allclose(left.result, gpt2_ref["tl/blocks.1.attn.hook_result"][:1, 5], rtol=0, atol=1e-7)
    np.testing.assert_allclose(left.result, right.result, rtol=0, atol=1e-7)
    np.testing.assert_allclose(left.target, right.target, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(left.weight, [1.0])


def test_a_byte_order_mark_is_not_text(tmp_path):
    """Files saved by Windows editors start with a UTF-8 BOM: a .jsonl was refused ('line 1 is not
    JSON'), a .txt trained on '\\ufeff' + its first line, and a --words list lost its first word
    ('\\ufefftoxic' matches no token), so that head's word-list score came out low."""
    from jaxinterp.lens import readout

    (tmp_path / "d.jsonl").write_text('{"text": "w1 w2"}\n{"text": "w3"}\n', encoding="utf-8-sig")
    (tmp_path / "d.txt").write_text("w1 w2\nw3\n", encoding="utf-8-sig")
    (tmp_path / "words.txt").write_text("Toxic\nword\n", encoding="utf-8-sig")
    assert data.read_texts(tmp_path / "d.jsonl") == ["w1 w2", "w3"]
    assert data.read_texts(tmp_path / "d.txt") == ["w1 w2", "w3"]
    words = readout.read_words(tmp_path / "words.txt")
    assert words == {"toxic", "word"}
    np.testing.assert_array_equal(readout.word_share([[" toxic", "x"], ["word", " Toxic"]], words), [0.5, 1.0])


@pytest.mark.parametrize("field,value,match", [
    ("lr", float("inf"), "lr: expected a positive finite learning rate, got inf"),
    ("lr", float("nan"), "lr: expected a positive finite learning rate, got nan"),
    ("lr", 0.0, "lr: expected a positive finite"),
    ("steps", 2.5, "steps: expected a positive integer, got 2.5"),
    ("batch_size", 1.5, "batch_size: expected a positive integer, got 1.5"),
    ("save_every", True, "save_every: expected a positive integer, got True"),
    ("seed", -1, "seed: expected a non-negative integer, got -1"),
    ("seed", 0.5, "seed: expected a non-negative integer, got 0.5"),
])
def test_train_config_refuses_what_it_cannot_train_with(field, value, match):
    """lr = inf trained every weight to NaN (inf * 0 at the untouched columns), steps = 2.5 passed
    int() and failed in range() after the checkpoint folder was made, a negative seed failed in the
    first batch."""
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**{field: value})


def test_train_config_still_takes_numpy_integers():
    tc = train.TrainConfig(steps=np.int64(3), batch_size=np.int32(2), seed=np.int64(0), lr=np.float32(1e-3))
    assert (tc.steps, tc.batch_size, tc.seed, tc.lr) == (3, 2, 0, float(np.float32(1e-3)))
    assert all(type(getattr(tc, f)) is int for f in ("steps", "batch_size", "seed")) and type(tc.lr) is float


def _safetensors_with_meta(path, lens_config_text):
    from safetensors.numpy import save_file

    save_file({"W": np.zeros((4, 64, 97), np.float32), "b": np.zeros((4, 97), np.float32)}, str(path),
              metadata={"lens_config": lens_config_text, "extra": "{}"})
    return path


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b"not a safetensors file"), "is not a readable safetensors file"),
    (lambda p: p.write_bytes(b""), "is not a readable safetensors file"),
    (lambda p: _safetensors_with_meta(p, '{"n_head": 4, "d_model": 64, "vocab_size": 97}'),
     "expected lens_config metadata with the fields of LensConfig"),
    (lambda p: _safetensors_with_meta(p, '{"layer": 1, "n_head": 4, "d_model": 64, "vocab_size": 97, "x": 1}'),
     "expected lens_config metadata"),
    (lambda p: _safetensors_with_meta(p, '{"layer": 1,'), "expected lens_config metadata"),
])
def test_a_damaged_lens_file_is_a_value_error(tmp_path, tiny_processed, capsys, make, match):
    """A truncated or foreign .safetensors raised safetensors' SafetensorError (not a ValueError: `lens
    show` printed a traceback), metadata without a field a TypeError."""
    from jaxinterp.cli import main
    from jaxinterp.lens import io

    from conftest import TINY_GPT2

    path = tmp_path / "lens.safetensors"
    make(path)
    with pytest.raises(ValueError, match=match):
        io.load_lens(path, model_config=tiny_processed[1])
    assert main(["lens", "show", "--model", str(TINY_GPT2), "--lens", str(path), "--prompt", "w1 w2"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("weight", [np.zeros(97), np.zeros((2, 97, 64)), np.array(3.0)])
def test_a_torch_lens_whose_weight_is_not_a_matrix(weight):
    """It failed with Python's 'not enough / too many values to unpack', naming neither the tensor nor
    the shape expected."""
    from jaxinterp.lens import io

    state = {"attn_lens.linears.0.weight": weight, "attn_lens.linears.0.bias": np.zeros(97)}
    match = r"linears.0.weight: expected shape \[V, D\].*got " + re.escape(str(list(weight.shape)))
    with pytest.raises(ValueError, match=match):
        io.from_torch_state_dict(state, layer=1)


def test_a_shared_lens_trains_and_leaves_the_model_alone(tiny_processed):
    """lenses.init returned the model's own float32 W_U and b_U as the shared lens (jnp.asarray does not
    copy), so the train step, which donates the lens, failed on every run ('Attempt to use a buffer
    that was previously donated': `jaxinterp lens train --kind shared` always crashed), and would
    have overwritten the model's unembedding where the donation went through."""
    import jax
    import optax

    from jaxinterp.lens import objective as obj

    params, cfg = tiny_processed
    W_U, b_U = lenses.unembedding(params, cfg)
    before = np.asarray(W_U).copy(), np.asarray(b_U).copy()
    lc = lenses.lens_config_for(cfg, 1, "shared")
    lens = lenses.init(W_U, b_U, lc)
    np.testing.assert_array_equal(lens["W"], before[0])
    batches = data.Batches(_examples(), 2, 8)
    got = train.train(params, cfg, lc, batches, train.TrainConfig(steps=2, batch_size=2, seq_len=8), progress=False)
    W_U, b_U = lenses.unembedding(params, cfg)
    np.testing.assert_array_equal(W_U, before[0])
    np.testing.assert_array_equal(b_U, before[1])
    # the plain step (jax.grad + optax.adam), undonated
    tx = optax.adam(1e-3)
    step = jax.jit(train.make_step(cfg, lc, obj.Objective(), tx, 1))
    state = train.TrainState(lens, tx.init(lens))
    for i in range(2):
        b = batches.batch(i)
        state, _ = step(state, params, b.tokens, b.mask, np.ones(2, np.float32))
    for k in lens:
        assert np.abs(np.asarray(got.lens[k]) - before[0 if k == "W" else 1]).max() > 1e-4, k
        np.testing.assert_allclose(got.lens[k], state.lens[k], rtol=0, atol=1e-7, err_msg=k)  # measured 3.7e-9


@pytest.mark.parametrize("make", [None, "file", "empty"])
def test_restore_lens_from_no_checkpoint_writes_nothing(tmp_path, make):
    """restore_lens on a mistyped path created that folder, parents and all (orbax's manager does by
    default), and only then said it held no checkpoint."""
    path = tmp_path / "runs" / "ck"
    if make == "file":
        path.parent.mkdir()
        path.write_text("x")
    elif make == "empty":
        path.mkdir(parents=True)
    want = {None: "does not exist", "file": "is a file", "empty": "holds no checkpoint"}[make]
    with pytest.raises(ValueError, match=f"ckpt_dir: .*{want}"):
        train.restore_lens(path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        {None: [], "file": ["runs", "runs/ck"], "empty": ["runs", "runs/ck"]}[make]


def test_a_checkpoint_past_the_asked_steps_reports_its_own_step(tiny_processed, tmp_path):
    """Resuming a folder whose checkpoint is at step 3 with steps=2 returned that 3-step lens as
    TrainResult.steps == 2 (and `lens train` saved it with "steps": 2 in its metadata)."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(_examples(), 2, 8)
    tc = train.TrainConfig(steps=3, batch_size=2, seq_len=8, save_every=1)
    done = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False)
    again = train.train(params, cfg, lc, batches, train.TrainConfig(steps=2, batch_size=2, seq_len=8, save_every=1),
                        ckpt_dir=tmp_path, progress=False)
    assert (again.start_step, again.steps, again.losses) == (3, 3, [])
    for k in done.lens:
        np.testing.assert_array_equal(again.lens[k], done.lens[k])


@pytest.mark.parametrize("k", [2.0, 2.5, True, "3"])
def test_top_k_refuses_a_k_that_is_not_an_integer(k):
    """k = 2.0 passed `1 <= k <= V` and failed inside lax.top_k with a TypeError about shapes, or, below
    the chunk width, was blamed on `chunk`; True was taken as 1."""
    import jax.numpy as jnp

    from jaxinterp.kernels import chunked_vocab as cv

    x, W, b = jnp.ones((2, 3)), jnp.ones((3, 10)), jnp.zeros(10)
    for chunk in (1, 4):
        with pytest.raises(ValueError, match=r"k: expected an integer with 1 <= k <= V = 10, got " + re.escape(repr(k))):
            cv.top_k([x], [W], b, k, chunk=chunk)
    assert cv.top_k([x], [W], b, np.int64(3), chunk=4).indices.shape == (2, 3)


def test_batches_refuse_an_example_longer_than_the_sequence(tiny_processed, tmp_path):
    """Batches took examples longer than seq_len; the first batch holding one failed inside numpy
    ('could not broadcast input array from shape (12,) into shape (8,)'), after train() had made its
    checkpoint folder and compiled the step."""
    ex = _examples() + [np.arange(12, dtype=np.int32)]
    with pytest.raises(ValueError, match=r"data: expected examples of at most seq_len = 8 tokens .*got example 3 of 12"):
        data.Batches(ex, 2, 8)
    with pytest.raises(ValueError, match="seq_len: expected a positive integer, got 0"):
        data.Batches(_examples(), 2, 0)
    assert data.Batches(ex, 2, 12).batch(0).tokens.shape == (2, 12)
