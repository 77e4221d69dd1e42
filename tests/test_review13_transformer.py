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


def test_save_gpt2_writes_the_tokenizers_bos_and_eos_ids(tmp_path, tiny_raw):
    """config.json said bos_token_id = eos_token_id = 0 for every model: for GPT-2 that is '!', and
    transformers' generate() stops at the config's eos. Now the tokenizer's ids, or none without one
    (transformers' default, GPT-2's 50256)."""
    from types import SimpleNamespace

    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw

    class Tok(SimpleNamespace):
        def save_pretrained(self, folder):
            pass

    save_gpt2(params, config, tmp_path / "with", tokenizer=Tok(bos_token_id=50256, eos_token_id=50256))
    hf = json.loads((tmp_path / "with" / "config.json").read_text())
    assert (hf["bos_token_id"], hf["eos_token_id"]) == (50256, 50256)
    save_gpt2(params, config, tmp_path / "without")
    hf = json.loads((tmp_path / "without" / "config.json").read_text())
    assert "bos_token_id" not in hf and "eos_token_id" not in hf
    assert load_gpt2(tmp_path / "without")[1] == config


@pytest.mark.parametrize("change,match", [
    (dict(n_layer=2), r"n_layer 2, n_embd 64, vocab_size 97, tie_word_embeddings True\): missing \[\], unexpected "
                      r"\['h_2/attn/c_attn/bias', 'h_2/attn/c_attn/kernel', 'h_2/attn/c_proj/bias'\], wrong shape \[\]$"),
    (dict(n_positions=16), r"n_layer 3, n_embd 64, vocab_size 97, tie_word_embeddings True\): missing \[\], unexpected "
                           r"\[\], wrong shape \['wpe/embedding: expected \[16, 64\], got \[32, 64\]'\]$"),
    (dict(tie_word_embeddings=False), r"n_layer 3, n_embd 64, vocab_size 97, tie_word_embeddings False\): missing "
                                      r"\['lm_head/bias', 'lm_head/kernel'\], unexpected \[\], wrong shape \[\]$"),
])
def test_save_gpt2_refuses_params_of_another_config_before_writing(tmp_path, tiny_raw, change, match):
    """save_gpt2 wrote any params under any config: the folder's config.json and weights disagreed,
    and load_gpt2 refused what had been saved. Now a ValueError, and no folder."""
    import dataclasses

    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"params do not fit the config \(" + match):
        save_gpt2(params, dataclasses.replace(config, **change), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_gpt2_refuses_a_folder_holding_another_checkpoint(tmp_path, tiny_raw):
    """Saved into a sharded model's folder, model.safetensors sat beside the shards and load_gpt2
    refused the folder (each tensor in two files). Now refused before writing; saving over a
    model.safetensors of an earlier save still works."""
    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({k: v for k, v in STATE.items() if "h.0." in k}, str(folder / "model-00001-of-00002.safetensors"))
    with pytest.raises(ValueError, match=r"sharded: expected a folder without other \*.safetensors checkpoints to "
                                         r"save into \(load_gpt2 reads them all\), got "
                                         r"\['model-00001-of-00002.safetensors'\]$"):
        save_gpt2(params, config, folder)
    assert not (folder / "model.safetensors").exists() and not (folder / "config.json").exists()
    save_gpt2(params, config, tmp_path / "again")
    save_gpt2(params, config, tmp_path / "again")
    assert load_gpt2(tmp_path / "again")[1] == config


@pytest.mark.parametrize("kwargs,match", [
    # Python's slice of the blocks: -1 ran only the last block, 5 of 3 none, both silently
    (dict(start=-1), r"blocks: expected 0 <= start <= stop <= n_layer \(3\), got start -1, stop None$"),
    (dict(start=5), r"blocks: expected 0 <= start <= stop <= n_layer \(3\), got start 5, stop None$"),
    (dict(start=2, stop=1), r"blocks: expected 0 <= start <= stop <= n_layer \(3\), got start 2, stop 1$"),
    (dict(stop=1.0), r"blocks: expected 0 <= start <= stop <= n_layer \(3\), got start 0, stop 1.0$"),
    # names these blocks never meet were missing from the cache, silently
    (dict(stop=1, names=("blocks.2.hook_attn_out",)),
     r"blocks: names must be hook points of blocks 0..0, got \['blocks.2.hook_attn_out'\]$"),
    (dict(names=("hook_embed",)), r"blocks: names must be hook points of blocks 0..2, got \['hook_embed'\]$"),
    (dict(names=("blocks.1.attn.hook_zz",)), r"unknown hook name 'blocks.1.attn.hook_zz'"),
])
def test_network_slice_refuses_blocks_and_names_it_does_not_run(tiny_raw, kwargs, match):
    params, config = tiny_raw
    resid = np.zeros((1, 4, config.n_embd), np.float32)
    with pytest.raises(ValueError, match=match):
        gpt2.blocks(params, resid, np.ones((1, 4), np.int32), config=config, **kwargs)


def test_network_slices_still_compose_and_capture(tiny_raw, gpt2_ref):
    params, config = tiny_raw
    tokens = gpt2_ref["tokens"].astype(np.int32)
    mask = np.ones_like(tokens)
    resid = gpt2.embed(params, tokens, mask, config=config)
    resid, cache = gpt2.blocks(params, resid, mask, config=config, stop=2, names=["blocks.1.hook_attn_out"])
    resid, _ = gpt2.blocks(params, resid, mask, config=config, start=2, stop=3)
    _, want = gpt2.run_with_cache(params, tokens, config=config, names=["blocks.1.hook_attn_out"])
    np.testing.assert_allclose(cache["blocks.1.hook_attn_out"], want["blocks.1.hook_attn_out"], atol=1e-6, rtol=0)  # measured 1.5e-8
    np.testing.assert_allclose(gpt2.unembed(params, resid, config=config), gpt2_ref["hf_logits"], atol=6e-7, rtol=0)


def test_init_compiles_once_per_config():
    """init jitted a new lambda on every call, so every call compiled again (GPT-2 small: ~2 s of
    its ~5 s on two busy cores)."""
    config = gpt2.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2)
    first = gpt2.init(jax.random.PRNGKey(0), config)
    jitted = gpt2._init_jit(config)
    size = jitted._cache_size()
    second = gpt2.init(jax.random.PRNGKey(1), config)
    assert gpt2._init_jit(config) is jitted and jitted._cache_size() == size == 1
    assert not np.array_equal(first["wte"]["embedding"], second["wte"]["embedding"])  # a new key, new weights
    np.testing.assert_array_equal(gpt2.init(jax.random.PRNGKey(0), config)["h_1"]["mlp"]["c_fc"]["kernel"],
                                  first["h_1"]["mlp"]["c_fc"]["kernel"])


@pytest.mark.parametrize("argv,match", [
    (["--prompt", "w1", "--cache", "blocks.0.attn.hook_zz"], "unknown hook name 'blocks.0.attn.hook_zz'"),
    (["--prompt", ""], "prompt '' tokenises to nothing"),
])
def test_gpt2_run_refuses_bad_input_before_reading_the_weights(monkeypatch, capsys, argv, match):
    """A misspelt --cache name or an empty prompt was refused only after the whole model had been
    read (for a hub name, downloaded)."""
    from jaxinterp import cli
    from jaxinterp.transformer import weights

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were read before the input was checked")

    monkeypatch.setattr(weights, "load_gpt2", no_load)
    monkeypatch.setattr("jaxinterp.transformer.load_gpt2", no_load, raising=False)
    assert cli.main(["gpt2", "run", "--model", str(TINY_GPT2), *argv]) == 2
    assert match in capsys.readouterr().err


def test_process_weights_returns_params_on_the_device(tiny_raw, gpt2_ref):
    """process_weights returned numpy params: every jitted call then copied the whole model to the
    device again (GPT-2 small's forward of 8 tokens on a CPU: 0.27 s, 0.04 s with jax arrays), as
    load_gpt2 did before it put them on the device."""
    from jaxinterp.transformer import process_weights

    params, config = process_weights(*tiny_raw)
    leaves = jax.tree.leaves(params)
    assert leaves and all(isinstance(x, jax.Array) and x.dtype == np.float32
                          and x.devices() == {jax.devices()[0]} for x in leaves)
    np.testing.assert_allclose(gpt2.forward(params, gpt2_ref["tokens"].astype(np.int32), config=config),
                               gpt2_ref["tl_logits"], atol=6e-7, rtol=0)


@pytest.mark.parametrize("case,match", [
    # processed params (their lm_head, wte centred, ln_f folded) under the tied config they came from:
    # the unembedding used wte, logits 0.11 from TransformerLens's
    ("processed_tied", r"n_layer 3, n_embd 64, vocab_size 97, tie_word_embeddings True\): missing \[\], unexpected "
                       r"\['lm_head/bias', 'lm_head/kernel'\], wrong shape \[\]$"),
    # 3-layer params under a 2-layer config: two blocks ran
    ("two_layers", r"n_layer 2, n_embd 64, vocab_size 97, tie_word_embeddings True\): missing \[\], unexpected "
                   r"\['h_2/attn/c_attn/bias', 'h_2/attn/c_attn/kernel', 'h_2/attn/c_proj/bias'\], wrong shape \[\]$"),
    ("raw_untied", r"n_layer 3, n_embd 64, vocab_size 97, tie_word_embeddings False\): missing "
                   r"\['lm_head/bias', 'lm_head/kernel'\], unexpected \[\], wrong shape \[\]$"),
    ("narrow_wte", r"n_layer 3, n_embd 64, vocab_size 97, tie_word_embeddings True\): missing \[\], unexpected \[\], wrong shape \['wte/embedding: expected \[97, 64\], got \[97, 32\]'\]$"),
])
def test_forward_refuses_params_of_another_config(tiny_raw, tiny_processed, gpt2_ref, case, match):
    """linen reads the parameters it needs and ignores the rest, so params that did not fit the
    config ran silently as another model."""
    import dataclasses

    (raw, config), (processed, processed_config) = tiny_raw, tiny_processed
    params, config = {
        "processed_tied": (processed, config), "two_layers": (raw, dataclasses.replace(config, n_layer=2)),
        "raw_untied": (raw, processed_config),
        "narrow_wte": ({**raw, "wte": {"embedding": np.zeros((97, 32), np.float32)}}, config)}[case]
    with pytest.raises(ValueError, match=r"params do not fit the config \(" + match):
        gpt2.forward(params, gpt2_ref["tokens"].astype(np.int32), config=config)


def test_forward_takes_params_as_a_frozen_dict_under_jit_and_vmap(tiny_raw, gpt2_ref):
    from flax.core import freeze

    params, config = tiny_raw
    tokens = gpt2_ref["tokens"].astype(np.int32)
    want = gpt2.forward(params, tokens, config=config)
    np.testing.assert_array_equal(gpt2.forward(freeze(params), tokens, config=config), want)
    both = jax.tree.map(lambda a: np.stack([a, a]), params)  # two models, as merge interpolates them
    got = jax.jit(jax.vmap(lambda p: gpt2.forward(p, tokens, config=config)))(both)
    np.testing.assert_allclose(got[1], want, atol=1e-6, rtol=0)


def test_network_slices_refuse_params_of_another_config(tiny_raw, tiny_processed):
    """The slices ran params that did not fit the config as forward did: unembed with processed
    params under the tied config used wte and ln_f's identity, blocks of 3-layer params under
    n_layer=2 ran two."""
    import dataclasses

    (raw, config), (processed, _) = tiny_raw, tiny_processed
    resid, mask = np.ones((1, 4, config.n_embd), np.float32), np.ones((1, 4), np.int32)
    prefix = r"params do not fit the config \(n_layer {}, n_embd 64, vocab_size 97, tie_word_embeddings True\): "
    with pytest.raises(ValueError, match=prefix.format(3) + r"missing \[\], unexpected \['lm_head/bias', 'lm_head/kernel'\]"):
        gpt2.unembed(processed, resid, config=config)
    with pytest.raises(ValueError, match=prefix.format(2) + r"missing \[\], unexpected \['h_2/attn/c_attn/bias'"):
        gpt2.blocks(raw, resid, mask, config=dataclasses.replace(config, n_layer=2))
    with pytest.raises(ValueError, match=prefix.format(3) + r"missing \[\], unexpected \['lm_head/bias', 'lm_head/kernel'\]"):
        gpt2.embed(processed, mask, mask, config=config)


@pytest.mark.parametrize("name,shape,why", [
    # it said "expected width 64 in the last axis, got 64" for every one of these
    ("blocks.0.hook_attn_out", (5, 64), r"\[5, 64\] does not broadcast to the activation \[4, 64\] "
                                        r"\(expected 4 or 1 in axis 0, got 5\)$"),
    ("blocks.0.attn.hook_z", (2, 4, 3, 16), r"\[2, 4, 3, 16\] does not broadcast to the activation \[4, 4, 16\] "
                                            r"\(expected 4 or 1 in axis 2, got 3\)$"),
    ("blocks.0.hook_attn_out", (1, 1, 4, 64), r"\[1, 1, 4, 64\] does not broadcast to the activation \[4, 64\] "
                                              r"\(expected at most 2 axes per example, got 4\)$"),
    ("blocks.0.hook_attn_out", (65,), r"\[65\] does not broadcast to the activation \[4, 64\] "
                                      r"\(expected width 64 in the last axis, got 65\)$"),
])
def test_an_intervention_value_that_does_not_broadcast_names_the_axis(tiny_raw, name, shape, why):
    from jaxinterp.transformer import intervene

    params, config = tiny_raw
    with pytest.raises(ValueError, match=r"intervention at '[a-z_.]+': value of shape " + why):
        gpt2.forward(params, np.ones((2, 4), np.int32), config=config, interventions=[intervene(name, np.ones(shape))])


def test_save_gpt2_writes_the_tokenizer_atomically(tmp_path, tiny_raw):
    """The tokenizer was written in place by transformers' save_pretrained: a crash while saving
    over an earlier model left a half-written tokenizer.json. Now each file lands whole, by rename."""
    from pathlib import Path

    from jaxinterp.transformer import load_tokenizer
    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    tok = load_tokenizer(TINY_GPT2)
    save_gpt2(params, config, tmp_path / "m", tokenizer=tok)
    assert load_tokenizer(tmp_path / "m")("w1 w2 w95")["input_ids"] == [2, 3, 96]
    before = (tmp_path / "m" / "tokenizer.json").read_bytes()

    class Crashing:
        bos_token_id = eos_token_id = 0

        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text('{"half": ')
            raise KeyboardInterrupt  # killed while writing

    with pytest.raises(KeyboardInterrupt):
        save_gpt2(params, config, tmp_path / "m", tokenizer=Crashing())
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == before
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("process", [False, True])
def test_loading_drops_each_host_weight_once_it_is_on_the_device(monkeypatch, process):
    """load_gpt2 (and process_weights) put the weights on the device leaf by leaf so that each numpy
    leaf is freed once copied (one tensor more than the model, not two models); since process_weights
    returned device arrays (edab2a7), load_gpt2 kept its own reference to the whole numpy tree while
    they were copied."""
    import weakref

    from jaxinterp.transformer import weights

    put, alive = jax.device_put, []

    def device_put(x, *args, **kwargs):
        if isinstance(x, np.ndarray) and x.size > 1000:  # the weights (ln/bias leaves may be shared views)
            assert all(ref() is None for ref in alive), "an earlier host weight was still held"
            alive.append(weakref.ref(x))
            x = np.array(x)  # a copy: on a CPU jax may keep the array itself (zero-copy), and so keep it alive
        return put(x, *args, **kwargs)

    monkeypatch.setattr(weights.jax, "device_put", device_put)
    params, _ = load_gpt2(TINY_GPT2, process_weights=process)
    assert len(alive) >= 14  # wte, wpe, four matrices a block


def test_process_weights_holds_one_block_in_float64_not_the_model(tiny_raw):
    """process_weights copied the whole model to float64, then made the whole float32 result before
    putting it on the device: 3.1 times the model's size in host memory on top of it (GPT-2 small
    loaded with process_weights=True peaked 2.6 GB above the start, 1.45 GB now; gpt2-xl, 12.5 times
    its size, ~33 GB). Now one block at a time (0.59 times here), with the same numbers."""
    import tracemalloc

    from jaxinterp.transformer import process_weights

    config = gpt2.GPT2Config(vocab_size=256, n_positions=16, n_embd=128, n_layer=8, n_head=4)
    params = jax.tree.map(np.asarray, gpt2.init(jax.random.PRNGKey(0), config))
    size = sum(x.nbytes for x in jax.tree.leaves(params))
    process_weights(params, config)  # compile and warm up outside the measurement
    tracemalloc.start()
    try:
        process_weights(params, config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.0 * size, (peak, size)  # measured 0.59 (3.11 before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(value=np.where(np.arange(64) == 3, np.nan, 1.0)),
     r"value at 'blocks.1.hook_attn_out': expected no NaN entries, got 1$"),
    (dict(value=np.full(64, np.nan), mode="replace", positions=np.arange(4) == 2),
     r"value at 'blocks.1.hook_attn_out': expected no NaN entries, got 64$"),
    (dict(value=np.ones(64), scale=float("nan")), r"scale at 'blocks.1.hook_attn_out': expected a finite number, got nan$"),
    (dict(value=np.ones(64), scale=np.inf), r"scale at 'blocks.1.hook_attn_out': expected a finite number, got inf$"),
])
def test_an_intervention_that_would_make_the_logits_nan_is_refused(tiny_raw, kwargs, match):
    """A NaN in the value (or a non-finite scale) went in silently and every logit from that
    position on came out NaN (attention mixes it into later positions)."""
    from jaxinterp.transformer import intervene

    with pytest.raises(ValueError, match=match):
        intervene("blocks.1.hook_attn_out", **kwargs)


def test_minus_infinity_still_masks_attention_scores(tiny_raw, gpt2_ref):
    """-inf replacing attention scores is how a key is masked; it stays allowed (only NaN is refused)."""
    from jaxinterp.transformer import intervene

    params, config = tiny_raw
    tokens = gpt2_ref["tokens"].astype(np.int32)[:, :4]
    scores = np.zeros((config.n_head, 4, 4))
    scores[:, :, 0] = -np.inf  # no query (but the first, which sees only key 0) may attend to key 0
    iv = intervene("blocks.0.attn.hook_attn_scores", scores, mode="add", positions=np.arange(4) > 0)
    logits, cache = gpt2.run_with_cache(params, tokens, config=config, interventions=[iv],
                                        names=["blocks.0.attn.hook_pattern"])
    assert np.isfinite(np.asarray(logits)).all()
    pattern = np.asarray(cache["blocks.0.attn.hook_pattern"])
    assert (pattern[:, :, 1:, 0] == 0).all() and (pattern[:, :, 0, 0] == 1).all()
