"""Review 13 of the GPT-2 implementation, weight loading and the helpers around them."""

import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.transformer import gpt2, load_gpt2

from conftest import TINY_GPT2

STATE = load_file(str(TINY_GPT2 / "model.safetensors"))


def test_a_bfloat16_checkpoint_loads_as_its_float32_values(tmp_path, tiny_raw, gpt2_ref):
    """safetensors reads BF16 tensors as ml_dtypes.bfloat16, which numpy's issubdtype does not count
    as floating: every bfloat16 checkpoint was refused ('expected floating-point weights, got dtype
    bfloat16'). float16 ones loaded."""
    folder = tmp_path / "bf16"
    folder.mkdir()
    shutil.copy(TINY_GPT2 / "config.json", folder)
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in STATE.items()}, str(folder / "model.safetensors"))
    params, config = load_gpt2(folder)
    assert config == tiny_raw[1]
    rounded = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32), tiny_raw[0])
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(rounded)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    tokens = gpt2_ref["tokens"].astype(np.int32)
    np.testing.assert_array_equal(gpt2.forward(params, tokens, config=config),
                                  gpt2.forward(rounded, tokens, config=config))


def test_hook_names_given_as_a_generator_are_captured(tiny_raw):
    """check_names iterated the names to check them, then again to return them: a generator came
    back empty and run_with_cache captured nothing, silently."""
    params, config = tiny_raw
    tokens = np.array([[1, 2, 3, 4]], np.int32)
    _, cache = gpt2.run_with_cache(params, tokens, config=config,
                                   names=(f"blocks.{layer}.attn.hook_z" for layer in range(3)))
    _, want = gpt2.run_with_cache(params, tokens, config=config,
                                  names=[f"blocks.{layer}.attn.hook_z" for layer in range(3)])
    assert sorted(cache) == sorted(want) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.2.attn.hook_z"]
    for name in want:
        np.testing.assert_array_equal(cache[name], want[name])


def test_a_model_folder_without_a_tokenizer_is_refused_by_load_tokenizer(tmp_path):
    """From a folder with config.json and weights but no tokenizer files (what save_gpt2 writes
    without tokenizer=), transformers built a GPT-2 tokenizer with an empty vocabulary: every prompt
    became [] silently ('jaxinterp gpt2 run' then said the prompt 'tokenises to nothing')."""
    from jaxinterp.transformer import load_tokenizer

    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY_GPT2 / name, folder)
    with pytest.raises(ValueError, match=r"no_tokenizer: expected a tokenizer \(tokenizer.json, or vocab.json and "
                                         r"merges.txt\), got a folder without one \(its tokenizer would have an "
                                         r"empty vocabulary\)"):
        load_tokenizer(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_GPT2 / name, folder)
    assert load_tokenizer(folder)("w1 w2")["input_ids"] == [2, 3]
