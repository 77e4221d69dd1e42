"""Bad input raises ValueError naming what was expected and what came, before any compute."""

import json
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.transformer import gpt2, intervene, load_gpt2, run_with_cache
from jaxinterp.transformer.weights import config_from_hf

from conftest import TINY_GPT2


def test_token_id_beyond_the_vocabulary(tiny_raw):
    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"\[0, 97\).*got ids from 0 to 97"):
        gpt2.forward(params, np.array([[0, 97]]), config=config)


def test_sequence_longer_than_n_positions(tiny_raw):
    params, config = tiny_raw
    with pytest.raises(ValueError, match="length 33: n_positions is only 32"):
        gpt2.forward(params, np.zeros((1, 33), np.int32), config=config)


@pytest.mark.parametrize("name,match", [
    ("blocks.1.attn.hook_nonsense", "unknown hook name 'blocks.1.attn.hook_nonsense'"),
    ("hook_resid_pre", "unknown hook name 'hook_resid_pre'"),
    ("blocks.7.hook_resid_pre", "layer 7 out of range, the model has 3 blocks"),
    # A layer spelt otherwise than the model writes it was accepted, then never captured.
    ("blocks.01.hook_resid_pre", "unknown hook name 'blocks.01.hook_resid_pre'"),
    ("blocks.\u0661.hook_resid_pre", "unknown hook name 'blocks.\u0661.hook_resid_pre'"),
])
def test_unknown_hook_name(tiny_raw, name, match):
    params, config = tiny_raw
    with pytest.raises(ValueError, match=match):
        run_with_cache(params, np.zeros((1, 4), np.int32), config=config, names=[name])


@pytest.mark.parametrize("name,shape,match", [
    ("blocks.1.hook_attn_out", (65,), "expected width 64 in the last axis, got 65"),
    ("blocks.1.attn.hook_z", (64,), "expected width 16 in the last axis, got 64"),
    ("blocks.1.mlp.hook_pre", (64,), "expected width 256 in the last axis, got 64"),
    ("blocks.1.hook_attn_out", (5, 64), r"does not broadcast to the activation \[4, 64\]"),
])
def test_intervention_of_the_wrong_width(tiny_raw, name, shape, match):
    params, config = tiny_raw
    with pytest.raises(ValueError, match=match):
        gpt2.forward(params, np.zeros((1, 4), np.int32), config=config, interventions=[intervene(name, np.ones(shape))])


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="scale"), r"intervention mode must be one of \('add', 'replace', 'zero', 'mean'\), got 'scale'$"),
    (dict(mode="add"), "intervention mode 'add' at 'blocks.0.hook_attn_out' needs a value, got None$"),
    (dict(mode="zero", heads=np.ones(4, bool)), "head mask applies only at per-head sites"),
])
def test_malformed_intervention(kwargs, match):
    with pytest.raises(ValueError, match=match):
        intervene("blocks.0.hook_attn_out", **kwargs)


def test_intervention_masks_of_the_wrong_length(tiny_raw):
    params, config = tiny_raw
    iv = intervene("blocks.0.attn.hook_result", mode="zero", heads=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"heads mask must have shape \[4\], got \[3\]"):
        gpt2.forward(params, np.zeros((1, 4), np.int32), config=config, interventions=[iv])
    iv = intervene("blocks.0.hook_attn_out", mode="zero", positions=np.ones(5, bool))
    with pytest.raises(ValueError, match=r"positions mask must have shape \[4\], got \[5\]"):
        gpt2.forward(params, np.zeros((1, 4), np.int32), config=config, interventions=[iv])


def test_attention_mask_of_another_shape(tiny_raw):
    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of tokens \[1, 4\], got \[1, 5\]"):
        gpt2.forward(params, np.zeros((1, 4), np.int32), config=config, attention_mask=np.ones((1, 5)))


def _checkpoint_without(tmp_path, edit):
    folder = tmp_path / "ckpt"
    shutil.copytree(TINY_GPT2, folder)
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_checkpoint_missing_a_tensor(tmp_path):
    folder = _checkpoint_without(tmp_path, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\), first: h_1/mlp/c_fc/bias \(shape \[256\]\)"):
        load_gpt2(folder)


def test_checkpoint_tensor_of_the_wrong_shape(tmp_path):
    def edit(t):
        t["transformer.h.0.attn.c_attn.weight"] = np.zeros((64, 191), np.float32)
    with pytest.raises(ValueError, match=r"'transformer.h.0.attn.c_attn.weight': expected shape \[64, 192\], got \[64, 191\]"):
        load_gpt2(_checkpoint_without(tmp_path, edit))


def test_checkpoint_with_an_unknown_tensor(tmp_path):
    def edit(t):
        t["transformer.h.0.attn.rotary.weight"] = np.zeros((2,), np.float32)
    with pytest.raises(ValueError, match="unexpected tensor 'transformer.h.0.attn.rotary.weight'"):
        load_gpt2(_checkpoint_without(tmp_path, edit))


def test_checkpoint_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text((TINY_GPT2 / "config.json").read_text())
    with pytest.raises(ValueError, match=r"holds no \*.safetensors file"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize("edit,match", [
    ({"model_type": "llama"}, r"expected a GPT-2 config \(model_type 'gpt2'\), got model_type 'llama'$"),
    ({"add_cross_attention": True}, r"add_cross_attention=True \(encoder-decoder GPT-2\) is not supported$"),
    ({"activation_function": "mish"}, "activation_function 'mish' is not supported"),
    ({"n_head": 5}, r"n_embd \(64\) must be divisible by n_head \(5\)"),
])
def test_unsupported_hf_config(edit, match):
    hf = json.loads((TINY_GPT2 / "config.json").read_text()) | edit
    with pytest.raises(ValueError, match=match):
        config_from_hf(hf)


def test_tokens_must_be_two_dimensional_integers(tiny_raw):
    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"shape \[batch, positions\], got shape \[4\]"):
        gpt2.forward(params, np.zeros(4, np.int32), config=config)
    with pytest.raises(ValueError, match="tokens must be integers, got dtype float32$"):
        gpt2.forward(params, jnp.zeros((1, 4)), config=config)


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"model folder {tmp_path / 'nowhere'} does not exist"):
        load_gpt2(tmp_path / "nowhere")


def test_token_ids_past_int32_are_refused_not_wrapped(tiny_raw):
    # With x64 off, jnp.asarray wraps 2**32 + 5 to 5, a valid id: the range is checked on the ids as given.
    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"\[0, 97\).*got ids from 1 to 4294967301"):
        gpt2.forward(params, np.array([[2**32 + 5, 1]], np.int64), config=config)


@pytest.mark.parametrize("mask,match", [
    ([[1, 1, 2, 1]], r"only 0 \(padding\) and 1 \(real token\), got \[2\]"),  # would skip position 2
    ([[0.5, 1, 1, 1]], r"only 0 \(padding\) and 1 \(real token\), got \[0.5\]"),  # int cast: padding
])
def test_attention_mask_of_values_other_than_0_and_1(tiny_raw, mask, match):
    params, config = tiny_raw
    with pytest.raises(ValueError, match=match):
        gpt2.forward(params, np.zeros((1, 4), np.int32), config=config, attention_mask=np.asarray(mask))


def test_attention_mask_as_a_list_like_the_tokens(tiny_raw):
    params, config = tiny_raw
    tokens = [[3, 4, 5, 6]]
    np.testing.assert_array_equal(gpt2.forward(params, tokens, config=config, attention_mask=[[0, 1, 1, 1]]),
                                  gpt2.forward(params, tokens, config=config, attention_mask=np.array([[0, 1, 1, 1]])))


def test_intervention_value_with_another_batch_size(tiny_raw):
    params, config = tiny_raw
    iv = intervene("blocks.1.hook_attn_out", np.ones((3, 4, 64)))
    with pytest.raises(ValueError, match=r"value of shape \[3, 4, 64\] has a batch axis of 3, but the batch holds 2"):
        gpt2.forward(params, np.zeros((2, 4), np.int32), config=config, interventions=[iv])


@pytest.mark.parametrize("edit,match", [
    ({"n_embd": "64"}, "n_embd must be an integer of at least 1, got '64'"),
    ({"n_head": 0}, "n_head must be an integer of at least 1, got 0"),
    ({"n_layer": None}, "n_layer must be an integer of at least 0, got None"),
    ({"vocab_size": -3}, "vocab_size must be an integer of at least 1, got -3"),
    ({"n_positions": 1.5}, "n_positions must be an integer of at least 1, got 1.5"),
    ({"n_inner": True}, "n_inner must be an integer of at least 1, got True"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a positive number, got '1e-5'"),
    ({"n_layer": "DELETE"}, r"GPT-2 config is missing \['n_layer'\]"),
])
def test_malformed_hf_config(edit, match):
    hf = json.loads((TINY_GPT2 / "config.json").read_text()) | edit
    hf = {k: v for k, v in hf.items() if v != "DELETE"}
    with pytest.raises(ValueError, match=match):
        config_from_hf(hf)


def test_hf_config_that_is_no_json_object():
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        config_from_hf([1, 2])


@pytest.mark.parametrize("k", ["-3", "0"])
def test_gpt2_run_refuses_a_top_k_below_one(capsys, k):
    # -3 printed every token but the last 3 (argsort(-p)[:-3]); 0 printed none.
    from jaxinterp.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["gpt2", "run", "--model", str(TINY_GPT2), "--prompt", "the", "--top-k", k])
    assert exit_.value.code == 2
    assert f"argument --top-k: expected a positive integer, got {k}" in capsys.readouterr().err


def test_config_json_that_is_no_json_names_the_file(tmp_path):
    shutil.copy(TINY_GPT2 / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((TINY_GPT2 / "config.json").read_text()[:100])  # cut short
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'} is not valid JSON: Unterminated string")):
        load_gpt2(tmp_path)
