"""Hook points, interventions as data (and vmapped), padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.transformer import gpt2, hook_names, intervene, run_with_cache


@pytest.fixture(scope="module")
def model(tiny_processed, gpt2_ref):
    params, config = tiny_processed
    return params, config, jnp.asarray(gpt2_ref["tokens"], jnp.int32)


def test_every_hook_point_is_captured_with_its_shape(model):
    params, config, tokens = model
    B, P = tokens.shape
    H, D, E, M = config.n_head, config.n_embd, config.d_head, config.d_mlp
    names = hook_names(config.n_layer)
    _, cache = run_with_cache(params, tokens, config=config, names=names)
    assert sorted(cache) == sorted(names)
    expected = {"attn.hook_q": (B, P, H, E), "attn.hook_z": (B, P, H, E), "attn.hook_result": (B, P, H, D),
                "attn.hook_pattern": (B, H, P, P), "attn.hook_attn_scores": (B, H, P, P), "mlp.hook_pre": (B, P, M),
                "mlp.hook_post": (B, P, M), "ln1.hook_scale": (B, P, 1), "hook_resid_mid": (B, P, D)}
    for site, shape in expected.items():
        assert cache[f"blocks.2.{site}"].shape == shape, site
    assert cache["ln_final.hook_normalized"].shape == (B, P, D)
    # hook_result summed over heads plus b_O is hook_attn_out; resid_mid = resid_pre + attn_out.
    # Measured 0.0 for both (values at most 0.33); 1e-5 before, 1e-6 is ~60 float32 ulps of them.
    b_O = params["h_2"]["attn"]["c_proj"]["bias"]
    np.testing.assert_allclose(cache["blocks.2.attn.hook_result"].sum(2) + b_O, cache["blocks.2.hook_attn_out"],
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(cache["blocks.2.hook_resid_pre"] + cache["blocks.2.hook_attn_out"],
                               cache["blocks.2.hook_resid_mid"], atol=1e-6, rtol=0)


def test_add_intervention_matches_manual_residual_edit(model):
    params, config, tokens = model
    mask = jnp.ones_like(tokens)
    vec = jax.random.normal(jax.random.PRNGKey(0), (config.n_embd,))
    logits = gpt2.forward(params, tokens, config=config, interventions=[intervene("blocks.1.hook_attn_out", vec, scale=3.0)])
    # attn_out only enters the residual stream, so adding to attn_out is adding to resid_mid.
    pre = gpt2.embed(params, tokens, mask, config=config)
    pre, _ = gpt2.blocks(params, pre, mask, config=config, stop=1)
    edited = gpt2.blocks(params, pre, mask, config=config, start=1,
                         interventions=[intervene("blocks.1.hook_resid_mid", vec, scale=3.0)])[0]
    # measured 1.2e-7 (1e-4 before, which a scale of 3.0003 instead of 3 passed)
    np.testing.assert_allclose(logits, gpt2.unembed(params, edited, config=config), atol=2e-6, rtol=0)
    assert np.abs(np.asarray(logits) - np.asarray(gpt2.forward(params, tokens, config=config))).max() > 1e-2


def test_vmapped_interventions_equal_one_by_one(model):
    params, config, tokens = model
    vec = jax.random.normal(jax.random.PRNGKey(1), (config.n_embd,))
    ivs = [intervene(f"blocks.{layer}.hook_attn_out", vec, scale=tau) for layer in range(3) for tau in (0.5, 2.0)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *ivs)
    batched = jax.jit(jax.vmap(lambda iv: gpt2.forward(params, tokens, config=config, interventions=(iv,))))(stacked)
    for i, iv in enumerate(ivs):
        # measured 1.8e-7 (1e-4 before)
        np.testing.assert_allclose(batched[i], gpt2.forward(params, tokens, config=config, interventions=[iv]),
                                   atol=2e-6, rtol=0)


def test_zero_ablating_every_head_leaves_only_the_output_bias(model):
    params, config, tokens = model
    _, cache = run_with_cache(params, tokens, config=config, names=("blocks.0.hook_attn_out",),
                              interventions=[intervene("blocks.0.attn.hook_result", mode="zero")])
    b_O = params["h_0"]["attn"]["c_proj"]["bias"]
    np.testing.assert_allclose(cache["blocks.0.hook_attn_out"], np.broadcast_to(b_O, cache["blocks.0.hook_attn_out"].shape), atol=1e-6)


def test_positions_and_heads_select_where_an_intervention_applies(model):
    params, config, tokens = model
    P, H = tokens.shape[1], config.n_head
    positions = jnp.arange(P) == 3
    heads = jnp.arange(H) == 1
    iv = intervene("blocks.1.attn.hook_z", jnp.full((config.d_head,), 7.0), mode="replace", positions=positions, heads=heads)
    _, clean = run_with_cache(params, tokens, config=config, names=("blocks.1.attn.hook_z",))
    _, hit = run_with_cache(params, tokens, config=config, names=("blocks.1.attn.hook_z",), interventions=[iv])
    z0, z1 = np.array(clean["blocks.1.attn.hook_z"]), np.array(hit["blocks.1.attn.hook_z"])
    assert np.all(z1[:, 3, 1] == 7.0)
    z1[:, 3, 1] = z0[:, 3, 1]
    np.testing.assert_array_equal(z0, z1)


def test_mean_ablation_replaces_with_the_batch_mean(model):
    params, config, tokens = model
    name = "blocks.2.mlp.hook_post"
    _, clean = run_with_cache(params, tokens, config=config, names=(name,))
    _, abl = run_with_cache(params, tokens, config=config, names=(name,), interventions=[intervene(name, mode="mean")])
    expect = np.broadcast_to(np.asarray(clean[name]).mean(0, keepdims=True), clean[name].shape)
    np.testing.assert_allclose(abl[name], expect, atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_gives_unpadded_logits_at_real_positions(model, side):
    params, config, tokens = model
    lengths = [6, 10]
    P = 12
    padded = np.zeros((2, P), np.int32)
    mask = np.zeros((2, P), np.int32)
    for b, n in enumerate(lengths):
        sl = slice(P - n, P) if side == "left" else slice(0, n)
        padded[b, sl], mask[b, sl] = np.asarray(tokens[b, :n]), 1
    logits = np.asarray(gpt2.forward(params, padded, config=config, attention_mask=mask))
    for b, n in enumerate(lengths):
        alone = np.asarray(gpt2.forward(params, tokens[b:b + 1, :n], config=config))[0]
        sl = slice(P - n, P) if side == "left" else slice(0, n)
        # Measured 1.2e-7. At 1e-4 padding keys that keep a weight of exp(-12) (an additive mask
        # instead of the causal one's where) passed.
        np.testing.assert_allclose(logits[b, sl], alone, atol=1e-6, rtol=0)
    assert np.all(np.isfinite(logits))  # padding rows too: no NaN from fully masked queries
