"""Review 14 (GPT-2 weights and lenses): a config.json and weights that a crash between their two
writes left disagreeing, wpe's initialisation, the resumed learning rate, read-out prompt ids, and
the file named by a damaged lens's error."""

import dataclasses
import json

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
