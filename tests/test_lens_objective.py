"""Lens objective on the tiny GPT-2: parity with TransformerLens's kl_init, every kind and mode against
the full-logits reference (values and gradients), padding, and the jitted step compiling once."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.lens import lenses, objective as obj, train

LAYER = 1
STATIC = ("model_config", "lens_config", "objective")
rows = jax.jit(obj.rows, static_argnames=STATIC)
loss = jax.jit(obj.loss, static_argnames=STATIC[1:])
grads = {f: jax.jit(jax.value_and_grad(f), static_argnames=STATIC[1:]) for f in (obj.loss, obj.loss_reference)}


@pytest.fixture(scope="module")
def model(tiny_processed):
    return tiny_processed


def _init(model, kind):
    params, cfg = model
    lc = lenses.lens_config_for(cfg, LAYER, kind)
    return lc, lenses.init(*lenses.unembedding(params, cfg), lc)


def test_initial_lens_gives_transformerlens_kl_init(model, gpt2_ref):
    params, cfg = model
    lc, lens = _init(model, "lensa")
    tokens = jnp.asarray(gpt2_ref["tokens"], jnp.int32)
    o = obj.Objective("last", chunk=32)  # 97 = 3 chunks of 32 and an overlapping last one
    r = rows(params, tokens, jnp.ones_like(tokens), model_config=cfg, lens_config=lc, objective=o)
    # measured 3.7e-9 on head outputs of at most 0.024 (1e-4 would pass a head's output zeroed)
    np.testing.assert_allclose(r.result, gpt2_ref[f"tl/blocks.{LAYER}.attn.hook_result"][:, -1], atol=1e-7)
    kl = loss(lens, r, lens_config=lc, objective=o)
    np.testing.assert_allclose(kl, gpt2_ref["lens/kl_init"], rtol=1e-4, atol=0)


# every kind and every mode, without the whole product (test time)
@pytest.mark.parametrize("kind,mode", [("lensa", "last"), ("lensa", "all"), ("lensa", "per_head"),
                                       ("shared", "last"), ("shared", "per_head"), ("resid", "per_head")])
def test_loss_and_gradient_match_full_logits(model, kind, mode, gpt2_ref):
    params, cfg = model
    lc, lens = _init(model, kind)
    rng = np.random.default_rng(0)
    lens = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32), lens)
    tokens = jnp.asarray(gpt2_ref["tokens"], jnp.int32)
    mask = jnp.asarray([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)  # second example right-padded
    o = obj.Objective(mode, chunk=40)
    r = rows(params, tokens, mask, model_config=cfg, lens_config=lc, objective=o)
    f = lambda fn: grads[fn](lens, r, lens_config=lc, objective=o)  # noqa: E731
    (v, g), (v_ref, g_ref) = f(obj.loss), f(obj.loss_reference)
    # The KL is a difference of O(10) log-normalisers: float32 rounding alone is ~1e-6 absolute
    # (the float64 check below pins the formula itself).
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=2e-6)
    for k in g:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-4, atol=1e-6)
    # float64, every case: measured at most 3.5e-14 relative on the loss and 2.5e-15 of each gradient
    # tensor's largest entry (the bounds were rtol 1e-10 / 1e-8, for one case only)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), t)  # noqa: E731
        r64, lens64 = f64(r), f64(lens)
        (v, g), (v_ref, g_ref) = [jax.value_and_grad(fn)(lens64, r64, lens_config=lc, objective=o)
                                  for fn in (obj.loss, obj.loss_reference)]
        np.testing.assert_allclose(v, v_ref, rtol=1e-12, atol=0)
        for k in g:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=0, atol=1e-13 * float(np.abs(g_ref[k]).max()), err_msg=k)


def test_padding_is_masked(model, gpt2_ref):
    """Example 1 is example 0's first 6 tokens, right-padded with junk: by causality its rows must be
    example 0's rows at positions 0..5, and its padding rows must not count."""
    params, cfg = model
    lc, _ = _init(model, "lensa")
    full = gpt2_ref["tokens"][:1].astype(np.int32)
    padded = np.concatenate([full[:, :6], [[50, 51, 52, 53]]], 1).astype(np.int32)
    tokens = jnp.asarray(np.concatenate([full, padded]))
    mask = jnp.asarray([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)
    r = rows(params, tokens, mask, model_config=cfg, lens_config=lc, objective=obj.Objective("last"))
    np.testing.assert_allclose(r.result[1], gpt2_ref[f"tl/blocks.{LAYER}.attn.hook_result"][0, 5], atol=1e-7)
    np.testing.assert_allclose(r.target[1] - r.target[1].mean(), gpt2_ref["tl_logits"][0, 5] -
                               gpt2_ref["tl_logits"][0, 5].mean(), atol=5e-7)  # measured 1.2e-7
    r = rows(params, tokens, mask, model_config=cfg, lens_config=lc, objective=obj.Objective("all"))
    np.testing.assert_allclose(r.result[10:16], r.result[:6], rtol=0, atol=1e-7)  # measured 0 (was 1e-5)
    np.testing.assert_array_equal(r.weight, np.asarray(mask).reshape(-1))


def test_accumulation_equals_one_big_batch_and_step_compiles_once(model, gpt2_ref):
    params, cfg = model
    lc, lens = _init(model, "lensa")
    tx = optax.adam(1e-3)
    tokens = jnp.asarray(np.concatenate([gpt2_ref["tokens"]] * 2), jnp.int32)  # E = 4
    mask = jnp.ones_like(tokens)
    w = jnp.ones((4,), jnp.float32)
    o = obj.Objective("last", chunk=64)
    outs = []
    for accum in (1, 2):
        step = jax.jit(train.make_step(cfg, lc, o, tx, accum))
        state = train.TrainState(lens, tx.init(lens))
        state, loss = step(state, params, tokens, mask, w)
        state, loss2 = step(state, params, tokens, mask, w)
        assert step._cache_size() == 1  # the second call reused the compiled step
        outs.append((loss, state.lens))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    for k in lens:
        np.testing.assert_allclose(outs[0][1][k], outs[1][1][k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("call,match", [
    # each message whole, expected and got (the matches were a word or two: "layer: expected", "W_U, b_U")
    (lambda cfg: lenses.lens_config_for(cfg, 3), r"layer: expected an integer in \[0, 3\) \(the model has 3 blocks\), got 3$"),
    (lambda cfg: lenses.lens_config_for(cfg, -1), r"layer: expected an integer in \[0, 3\) \(the model has 3 blocks\), got -1$"),
    (lambda cfg: lenses.lens_config_for(cfg, 1, "lensb"), r"kind: expected one of \['lensa', 'shared', 'resid'\], got 'lensb'$"),
    (lambda cfg: obj.Objective("first"), r"mode: expected one of \['last', 'all', 'per_head'\], got 'first'$"),
    (lambda cfg: lenses.init(jnp.zeros((64, 50)), jnp.zeros(50), lenses.lens_config_for(cfg, 1)),
     r"W_U, b_U: expected shapes \[64, 97\] and \[97\], got \[64, 50\] and \[50\]$"),
    (lambda cfg: lenses.check_params({"W": jnp.zeros((4, 64, 50)), "b": jnp.zeros((4, 50))},
                                     lenses.lens_config_for(cfg, 1)),
     r"lens params 'W': expected shape \[4, 64, 97\] \(heads 4, d_model 64, vocab 97\), got \[4, 64, 50\]$"),
    (lambda cfg: train.TrainConfig(accum=0), "accum: expected a positive integer, got 0$"),
])
def test_bad_input(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model[1])
