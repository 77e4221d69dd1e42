"""Bad input raises ValueError naming what was expected and what came, before any compute."""

import json
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
    (dict(mode="scale"), "mode must be one of"),
    (dict(mode="add"), "needs a value"),
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
    ({"model_type": "llama"}, "model_type 'llama'"),
    ({"add_cross_attention": True}, "add_cross_attention"),
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
    with pytest.raises(ValueError, match="must be integers"):
        gpt2.forward(params, jnp.zeros((1, 4)), config=config)


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"model folder {tmp_path / 'nowhere'} does not exist"):
        load_gpt2(tmp_path / "nowhere")
