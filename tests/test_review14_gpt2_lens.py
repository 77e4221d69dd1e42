"""Review 14 (GPT-2 weights and lenses): a config.json and weights that a crash between their two
writes left disagreeing, wpe's initialisation, the resumed learning rate, read-out prompt ids, and
the file named by a damaged lens's error."""

import dataclasses
import json
import re

import numpy as np
import pytest

from jaxinterp import atomic
from jaxinterp.transformer import gpt2, load_gpt2
from jaxinterp.transformer.weights import save_gpt2

from conftest import TINY_GPT2


# ----------------------------------------------------------------------------------------------
# save_gpt2: config.json and model.safetensors belong together

def _untied(params, config):
    """The same model with its own lm_head (a copy of wte.T): what process_weights also yields."""
    untied = dict(params, lm_head={"kernel": np.asarray(params["wte"]["embedding"]).T + 0.5,
                                   "bias": np.zeros(config.vocab_size, np.float32)})
    return untied, dataclasses.replace(config, tie_word_embeddings=False)


def test_a_crash_between_the_weights_and_config_json_is_refused_on_load(tmp_path, tiny_raw, monkeypatch):
    """save_gpt2 renamed the weights, then config.json, into place: a crash between the two left the
    untied weights of the new model beside the old (tied) config.json, and load_gpt2 read the pair as
    the tied model, its lm_head silently ignored."""
    params, config = tiny_raw
    folder = save_gpt2(params, config, tmp_path / "m")  # a tied model saved there before
    untied, uconfig = _untied(params, config)

    def crash(path, text):
        raise KeyboardInterrupt  # killed after the weights' rename, before config.json's

    monkeypatch.setattr(atomic, "write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        save_gpt2(untied, uconfig, folder)
    monkeypatch.undo()
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True  # the old one
    with pytest.raises(ValueError, match=r"config\.json and .*model\.safetensors do not belong together.*"
                                         r"tie_word_embeddings: model\.safetensors False, config\.json True"):
        load_gpt2(folder)
    # the save run again completes the pair
    save_gpt2(untied, uconfig, folder)
    p2, c2 = load_gpt2(folder)
    assert c2 == uconfig
    np.testing.assert_array_equal(p2["lm_head"]["kernel"], untied["lm_head"]["kernel"])


def test_weights_saved_before_the_config_was_recorded_still_load(tmp_path, tiny_raw):
    """Folders saved by earlier versions (and Hugging Face's own) carry no recorded config: loaded as before."""
    from safetensors.numpy import load_file, save_file

    params, config = tiny_raw
    folder = save_gpt2(params, config, tmp_path / "old")
    save_file(load_file(folder / "model.safetensors"), str(folder / "model.safetensors"), metadata={"format": "pt"})
    p2, c2 = load_gpt2(folder)
    assert c2 == config
    np.testing.assert_array_equal(p2["wte"]["embedding"], params["wte"]["embedding"])
    assert load_gpt2(TINY_GPT2)[1].n_layer == 3  # the fixture, written by transformers


def test_a_damaged_recorded_config_is_a_clear_error(tmp_path, tiny_raw):
    from safetensors.numpy import load_file, save_file

    params, config = tiny_raw
    folder = save_gpt2(params, config, tmp_path / "m")
    save_file(load_file(folder / "model.safetensors"), str(folder / "model.safetensors"),
              metadata={"format": "pt", "jaxinterp_config": "{not json"})
    with pytest.raises(ValueError, match=r"model\.safetensors: expected 'jaxinterp_config' metadata holding a "
                                         r"GPT-2 config\.json, got '\{not json'"):
        load_gpt2(folder)


def test_an_unreadable_weights_file_names_itself(tmp_path, tiny_raw):
    params, config = tiny_raw
    folder = save_gpt2(params, config, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_gpt2(folder)


# ----------------------------------------------------------------------------------------------
# init: Hugging Face's initialisation

def test_init_draws_wpe_like_hugging_face():
    """HF GPT2PreTrainedModel._init_weights: every nn.Embedding (wte and wpe) normal(initializer_range
    = 0.02); wpe was drawn with 0.01."""
    import jax

    config = gpt2.GPT2Config(vocab_size=256, n_positions=256, n_embd=64, n_layer=2, n_head=2)
    p = gpt2.init(jax.random.key(0), config)
    # 16384 draws each: the sample std's standard error is 0.02 / sqrt(2 * 16384) = 1.1e-4
    for name in ("wte", "wpe"):
        assert abs(float(np.std(np.asarray(p[name]["embedding"]))) - 0.02) < 5e-4, name


# ----------------------------------------------------------------------------------------------
# lens training: resuming with the same learning rate

class _WordTokenizer:
    """'w5 w7' -> [5, 7] (ids mod 97: the tiny model's vocabulary)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(w[1:]) % 97 for w in t.split()] for t in texts]}


def _batches():
    from jaxinterp.lens import data

    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(1, 96, rng.integers(1, 10))) for _ in range(12)]
    return data.Batches(data.tokenize(texts, _WordTokenizer(), 10), 2, 10, seed=1)


@pytest.mark.parametrize("first,then", [(np.float32(1e-3), 1e-3), (1e-3, np.float32(1e-3))])
def test_resume_takes_the_same_learning_rate_in_float32_or_float64(tiny_processed, tmp_path, first, then):
    """TrainConfig(lr=np.float32(1e-3)) recorded 0.0010000000474974513: resuming the run with lr 1e-3
    (the same update: Adam applies lr in float32) was refused as 'another run'. A different rate is
    still refused."""
    from jaxinterp.lens import lenses, train

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=10, save_every=1, seed=1, lr=first)
    whole = train.train(params, cfg, lc, _batches(), tc, progress=False)
    train.train(params, cfg, lc, _batches(), tc, ckpt_dir=tmp_path, progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"holds another run.*lr: checkpoint 0\.001.*, this run 0\.0011"):
        train.train(params, cfg, lc, _batches(), dataclasses.replace(tc, lr=1.1e-3), ckpt_dir=tmp_path,
                    progress=False)
    rest = train.train(params, cfg, lc, _batches(), dataclasses.replace(tc, lr=then), ckpt_dir=tmp_path,
                       progress=False)
    assert (rest.start_step, rest.steps) == (1, 2)
    assert rest.losses == whole.losses[1:]
    for k in whole.lens:
        np.testing.assert_array_equal(rest.lens[k], whole.lens[k])


def test_resume_refuses_a_learning_rate_one_float32_step_away(tiny_processed, tmp_path):
    from jaxinterp.lens import lenses, train

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=10, save_every=1, seed=1, lr=1e-3)
    train.train(params, cfg, lc, _batches(), tc, ckpt_dir=tmp_path, progress=False, stop_after=1)
    near = float(np.nextafter(np.float32(1e-3), np.float32(1)))
    with pytest.raises(ValueError, match="holds another run.*lr: checkpoint 0.001, this run"):
        train.train(params, cfg, lc, _batches(), dataclasses.replace(tc, lr=near), ckpt_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------------------------
# lens read-out and files: bad input

@pytest.mark.parametrize("kw,match", [
    ({"ids": [5, True]}, r"prompt: expected integer token ids in \[0, 97\), got \[True\]"),
    ({"ids": [np.bool_(False), 5]}, r"prompt: expected integer token ids in \[0, 97\), got \[np.False_\]"),
    ({"k": True}, r"k: expected 1 <= k <= 97, got True"),
    ({"k": 2.5}, r"k: expected 1 <= k <= 97, got 2.5"),
])
def test_read_out_refuses_bools_and_fractions(tiny_processed, monkeypatch, kw, match):
    """True passed as a token id (read as id 1) and as k (one token shown); 2.5 as k failed inside jit."""
    from jaxinterp.lens import lenses, readout

    monkeypatch.setattr(readout, "_head_topk_jit", lambda: pytest.fail("computed before the bad input was refused"))
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    lens = {k: np.zeros(s, np.float32) for k, s in lc.shapes().items()}
    with pytest.raises(ValueError, match=match):
        readout.head_topk(params, cfg, lens, lc, **{"ids": [1, 2, 3], **kw})
    if "ids" in kw:
        with pytest.raises(ValueError, match=match):
            readout.check_prompt(kw["ids"], cfg)


@pytest.mark.parametrize("fields,match", [
    ({"layer": 1, "n_head": 4, "d_model": 64, "vocab_size": 97, "kind": "bogus"}, r"kind: expected one of"),
    ({"layer": -1, "n_head": 4, "d_model": 64, "vocab_size": 97}, r"layer: expected a non-negative integer"),
])
def test_a_lens_file_with_a_bad_config_field_names_the_file(tmp_path, fields, match):
    """LensConfig's own error ('kind: expected one of ...') came out alone, naming no file."""
    from safetensors.numpy import save_file

    from jaxinterp.lens.io import load_lens

    path = tmp_path / "damaged.safetensors"
    save_file({"W": np.zeros((4, 64, 97), np.float32), "b": np.zeros((4, 97), np.float32)}, str(path),
              metadata={"lens_config": json.dumps(fields), "extra": "{}"})
    with pytest.raises(ValueError, match=rf"lens: .*damaged\.safetensors: expected lens_config metadata .*{match}"):
        load_lens(path)


def test_a_checkpoint_with_a_bad_lens_config_names_the_folder(tiny_processed, tmp_path):
    from jaxinterp.lens import lenses, train

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    tc = train.TrainConfig(steps=1, batch_size=2, seq_len=10, seed=1)
    train.train(params, cfg, lc, _batches(), tc, ckpt_dir=tmp_path / "ck", progress=False)
    metas = [p for p in (tmp_path / "ck").rglob("*") if p.is_file() and '"lens_config"' in p.read_text(errors="ignore")]
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    meta["lens_config"]["kind"] = "bogus"
    metas[0].write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"ckpt_dir: .*ck step 1: expected lens_config metadata .*kind: expected one of"):
        train.restore_lens(tmp_path / "ck")


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_batches_refuse_a_seed_that_is_no_non_negative_integer(seed):
    """Batches took any seed; batch() then failed with numpy's 'expected non-negative integer' (-1),
    a TypeError (1.5), or drew seed 1's batches (True)."""
    from jaxinterp.lens import data

    with pytest.raises(ValueError, match=rf"^seed: expected an integer in \[0, 2\*\*32\)( \(.*\))?, got {re.escape(repr(seed))}$"):
        data.Batches([np.arange(3)], 2, 4, seed=seed)
    assert data.Batches([np.arange(3)], 2, 4, seed=np.int64(2)).seed == 2
