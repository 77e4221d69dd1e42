"""load_gpt2 on checkpoints laid out as Hugging Face writes them, and every refusal, each before any
weight is used. The files are the tiny fixture's tensors, renamed, reshaped or dropped."""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.transformer import load_gpt2

from conftest import TINY_GPT2

STATE = load_file(str(TINY_GPT2 / "model.safetensors"))
CONFIG = json.loads((TINY_GPT2 / "config.json").read_text())


def folder_with(tmp_path, state, **config):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**CONFIG, **config}))
    save_file(state, str(out / "model.safetensors"))
    return out


def test_names_without_prefix_buffers_and_an_untied_unembedding(tmp_path, tiny_raw):
    state = {k.removeprefix("transformer."): v for k, v in STATE.items()}  # GPT2Model checkpoints have no prefix
    state["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))  # older HF: the causal mask buffer
    state["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    head = np.random.default_rng(0).normal(size=(97, 64)).astype(np.float32)  # nn.Linear [V, D]
    state["lm_head.weight"] = head
    params, config = load_gpt2(folder_with(tmp_path, state, tie_word_embeddings=False))
    assert not config.tie_word_embeddings
    np.testing.assert_array_equal(params["lm_head"]["kernel"], head.T)
    np.testing.assert_array_equal(params["h_2"]["mlp"]["c_fc"]["kernel"], tiny_raw[0]["h_2"]["mlp"]["c_fc"]["kernel"])


@pytest.mark.parametrize("process", [False, True])
def test_params_come_back_on_the_device(process):
    """load_gpt2 returned numpy params: every call of a jitted function then copied the whole model
    to the accelerator again (GPT-2 small: 0.5 GB per call). They are jax arrays on the default device."""
    import jax

    params, _ = load_gpt2(TINY_GPT2, process_weights=process)
    leaves = jax.tree.leaves(params)
    assert leaves and all(isinstance(x, jax.Array) and x.devices() == {jax.devices()[0]} for x in leaves)


def test_a_tied_checkpoint_may_carry_its_lm_head(tmp_path, tiny_raw):
    state = {**STATE, "lm_head.weight": STATE["transformer.wte.weight"]}  # as GPT2LMHeadModel saves it
    params, _ = load_gpt2(folder_with(tmp_path, state))
    assert params.keys() == tiny_raw[0].keys()


def _renamed(old, new):
    return {(new if k == old else k): v for k, v in STATE.items()}


@pytest.mark.parametrize("state,config,match", [
    ({**STATE, "transformer.h.0.attn.q_proj.weight": np.zeros((64, 64), np.float32)}, {},
     "unexpected tensor 'transformer.h.0.attn.q_proj.weight' in the GPT-2 checkpoint"),
    (_renamed("transformer.h.2.ln_1.bias", "transformer.h.3.ln_1.bias"), {},
     "tensor 'transformer.h.3.ln_1.bias' does not belong to a GPT-2 with 3 layers"),
    ({**STATE, "transformer.wpe.weight": np.zeros((16, 64), np.float32)}, {},
     r"tensor 'transformer.wpe.weight': expected shape \[32, 64\], got \[16, 64\]"),
    ({k: v for k, v in STATE.items() if k != "transformer.h.1.mlp.c_proj.weight"}, {},
     r"checkpoint is missing 1 tensor\(s\), first: h_1/mlp/c_proj/kernel \(shape \[256, 64\]\)"),
    (STATE, {"n_layer": 4}, r"missing 12 tensor\(s\), first: h_3/"),
])
def test_checkpoint_that_does_not_fit_its_config(tmp_path, state, config, match):
    with pytest.raises(ValueError, match=match):
        load_gpt2(folder_with(tmp_path, state, **config))


def test_folders_and_names_that_are_no_model(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="expected a folder holding config.json and \\*.safetensors, got the file"):
        load_gpt2(TINY_GPT2 / "config.json")
    with pytest.raises(ValueError, match="does not exist \\(and it is no Hugging Face hub name\\)"):
        load_gpt2(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"model folder relative/nowhere does not exist \(and it is no Hugging Face "
                                         r"hub name\)$"):  # matched "does not exist" alone
        load_gpt2("./relative/nowhere")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{bare} has no config.json") + "$"):
        load_gpt2(bare)
    shutil.copy(TINY_GPT2 / "config.json", bare / "config.json")
    (bare / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds no \*.safetensors file \(PyTorch .bin checkpoints are not read\)"):
        load_gpt2(bare)

    import huggingface_hub

    def offline(repo_id, **kwargs):  # what the hub client raises without a network (no test reaches it)
        raise OSError(f"cannot reach the hub for {repo_id}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="'gpt2-nonexistent' is neither a local folder nor a downloadable Hugging "
                                         "Face model \\(OSError: cannot reach the hub for gpt2-nonexistent\\)"):
        load_gpt2("gpt2-nonexistent")
