"""The fused Adam step (`jaxinterp.lens.fused_adam`) against jax.grad + optax.adam, step by step, for
every lens kind and both summed-lens modes, with a vocabulary that does not divide into chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.lens import fused_adam, lenses, objective as obj, train

LAYER = 1


def plain_and_fused_steps(params, cfg, lc, lens, gpt2_ref, mode, moments, compute_dtype=None):
    """Three steps of jax.grad + Adam (moments "float32": optax.adam; "bfloat16": bf16_moments) and of
    the fused step from the same start: their states (a, b); the losses checked equal on the way."""
    tokens = jnp.asarray(gpt2_ref["tokens"], jnp.int32)
    mask = jnp.asarray([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)  # second example right-padded
    weight = jnp.ones((2,), jnp.float32)
    o = obj.Objective(mode, chunk=40, compute_dtype=compute_dtype)  # V = 97: chunks at 0, 40, 57 (overlapping)
    lr = 1e-2  # large enough that three steps move every weight well past rounding
    tx = train.optimizer(lr, moments)
    plain = jax.jit(train.make_step(cfg, lc, o, tx, 1))
    fused = jax.jit(train.make_step(cfg, lc, o, tx, 1, fused_adam_lr=lr), donate_argnums=(0,))
    a = train.TrainState(lens, tx.init(lens))
    b = jax.tree.map(jnp.copy, a)
    for _ in range(3):
        a, loss_a = plain(a, params, tokens, mask, weight)
        b, loss_b = fused(b, params, tokens, mask, weight)
        np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=2e-6)
    return a, b


@pytest.mark.parametrize("kind,mode,compute_dtype", [
    ("lensa", "last", None), ("lensa", "all", None), ("shared", "all", None), ("resid", "last", None),
    # bfloat16 inputs to the matmuls, float32 accumulation: the fused gradient is formed as the plain
    # backward forms it (it was rounded to bfloat16 whole, 5-8% off in weight movement)
    ("lensa", "last", "bfloat16"), ("resid", "all", "bfloat16"),
])
def test_fused_step_equals_grad_then_optax_adam(tiny_processed, gpt2_ref, kind, mode, compute_dtype):
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, LAYER, kind)
    lens = lenses.init(*lenses.unembedding(params, cfg), lc)
    a, b = plain_and_fused_steps(params, cfg, lc, lens, gpt2_ref, mode, "float32", compute_dtype)
    for k in lens:
        moved = np.abs(np.asarray(a.lens[k]) - np.asarray(lens[k])).max()
        assert moved > 1e-3, f"{k} did not train"
        if compute_dtype is None:
            np.testing.assert_allclose(b.lens[k], a.lens[k], rtol=1e-5, atol=1e-6, err_msg=k)
        else:  # a bf16 rounding of dz may flip between the two programs' fusions: judged against how far
            # the weights moved (measured <= 5e-5 of it; the whole-gradient rounding gave 5-11%)
            assert np.abs(np.asarray(b.lens[k]) - np.asarray(a.lens[k])).max() <= 2e-4 * moved, k
            for m_b, m_a in ((b.opt_state[0].mu[k], a.opt_state[0].mu[k]), (b.opt_state[0].nu[k], a.opt_state[0].nu[k])):
                assert np.abs(np.asarray(m_b) - np.asarray(m_a)).max() <= 2e-3 * np.abs(np.asarray(m_a)).max(), k
            continue
        np.testing.assert_allclose(b.opt_state[0].mu[k], a.opt_state[0].mu[k], rtol=2e-6, atol=1e-8, err_msg=k)
        np.testing.assert_allclose(b.opt_state[0].nu[k], a.opt_state[0].nu[k], rtol=2e-6, atol=1e-12, err_msg=k)
    assert int(b.opt_state[0].count) == int(a.opt_state[0].count) == 3


def test_fused_step_refuses_per_head(tiny_processed):
    _, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, LAYER)
    with pytest.raises(ValueError, match="supports objectives 'last' and 'all', got 'per_head'"):
        train.make_step(cfg, lc, obj.Objective("per_head"), optax.adam(1e-3), 1, fused_adam_lr=1e-3)
    assert not fused_adam.supports(obj.Objective("last"), shard_vocab=True)
