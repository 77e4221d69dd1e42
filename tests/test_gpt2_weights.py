"""Checkpoint round trip, presets, tokenizer, data-parallel logits."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxinterp.transformer import PRESETS, gpt2, load_gpt2, load_tokenizer
from jaxinterp.transformer.weights import save_gpt2

from conftest import TINY_GPT2


def test_save_then_load_reads_back_the_same_params_and_logits(tmp_path, tiny_raw, gpt2_ref):
    params, config = tiny_raw
    save_gpt2(params, config, tmp_path / "copy")
    params2, config2 = load_gpt2(tmp_path / "copy")
    assert config2 == config
    tokens = gpt2_ref["tokens"].astype(np.int32)
    np.testing.assert_array_equal(gpt2.forward(params2, tokens, config=config2), gpt2.forward(params, tokens, config=config))


def test_processed_params_round_trip_with_an_untied_unembedding(tmp_path, tiny_processed, gpt2_ref):
    params, config = tiny_processed
    assert not config.tie_word_embeddings and params["lm_head"]["kernel"].shape == (64, 97)
    # A processed model has a non-zero unembedding bias, which a HF checkpoint cannot hold.
    with pytest.raises(ValueError, match="lm_head has a non-zero bias, which a HF GPT-2 checkpoint cannot hold$"):
        save_gpt2(params, config, tmp_path / "p")
    assert not (tmp_path / "p" / "model.safetensors").exists()  # refused before anything was written


def test_presets_have_the_published_sizes():
    import jax

    sizes = {name: sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda c=c: gpt2.init(jax.random.PRNGKey(0), c))))
             for name, c in PRESETS.items() if name in ("gpt2", "distilgpt2")}
    assert sizes == {"gpt2": 124_439_808, "distilgpt2": 81_912_576}


def test_tokenizer_of_the_tiny_model():
    """The fixture's word-level vocabulary: <|endoftext|> 0 (also unk, bos, eos, pad), then w0..w95
    as 1..96. ("the" is no word of it: the check was only that its ids were below 97, which the
    unknown token 0 always is.)"""
    import json

    tok = load_tokenizer(TINY_GPT2)
    vocab = json.loads((TINY_GPT2 / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(tok) == len(vocab) == 97
    assert tok("w1 w2 w95")["input_ids"] == [vocab["w1"], vocab["w2"], vocab["w95"]] == [2, 3, 96]
    assert tok("the")["input_ids"] == [0] and tok("w0 w96")["input_ids"] == [1, 0]  # unknown words
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 0
    assert tok.decode([2, 3, 96]) == "w1 w2 w95"


def test_data_parallel_logits_equal_single_device(tmp_path, gpt2_ref):
    np.save(tmp_path / "tokens.npy", np.tile(gpt2_ref["tokens"].astype(np.int32), (2, 1)))  # batch 4
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from jaxinterp import parallel
        from jaxinterp.transformer import gpt2, load_gpt2
        assert jax.device_count() == 4, jax.devices()
        params, config = load_gpt2({str(TINY_GPT2)!r}, process_weights=True)
        tokens = np.load({str(tmp_path / 'tokens.npy')!r})
        mesh = parallel.make_mesh()
        sharded = parallel.shard_batch(tokens, mesh)
        assert len(sharded.sharding.device_set) == 4
        logits = jax.jit(lambda p, t: gpt2.forward(p, t, config=config))(parallel.replicate(params, mesh), sharded)
        assert len(logits.sharding.device_set) == 4
        single = gpt2.forward(params, tokens, config=config)
        np.save({str(tmp_path / 'out.npy')!r}, np.asarray(logits) - np.asarray(single))
    """)
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.abs(np.load(tmp_path / "out.npy")).max() < 2e-6  # measured 1.2e-7 (1e-5 before)
