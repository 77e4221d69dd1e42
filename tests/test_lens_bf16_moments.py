"""Adam with bfloat16 moments (`jaxinterp.lens.bf16_moments`, `lens train --adam-moments bfloat16`):
the rounding is unbiased, nu follows its float32 value where round-to-nearest stalls, the fused step
stores the same moments as the whole-gradient step, and a run trains, resumes and checks as the
float32 one does."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.lens import bf16_moments as bm, data, lenses, train

from test_lens_fused_adam import plain_and_fused_steps
from test_lens_train import WordTokenizer, _cli, _texts
from conftest import TINY_GPT2


def test_stochastic_rounding_is_unbiased():
    """Over all 2^16 values of the random bits, the mean of the rounded value is x exactly: also
    just below a power of two (rounding up crosses it), for negative x and subnormals."""
    x = np.array([0.1, -3.7, 1.0 - 2**-20, 2**-130, 1e-3, 12345.678], np.float32)
    bits = jnp.arange(2**16, dtype=jnp.uint32)[:, None]
    r = np.asarray(jax.jit(jax.vmap(lambda b: bm.stochastic_round(jnp.asarray(x), jnp.broadcast_to(b, x.shape))))(bits))
    assert r.dtype == jnp.bfloat16
    np.testing.assert_array_equal(r.astype(np.float64).mean(0), x.astype(np.float64))
    lo = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))  # each x has two neighbours at most
    assert all(len(np.unique(r[:, i])) <= 2 for i in range(len(x))) and np.isfinite(lo).all()
    special = jnp.asarray([np.inf, -np.inf, np.nan], jnp.float32)
    out = np.asarray(bm.stochastic_round(special, jnp.full((3,), 0xFFFF, jnp.uint32)).astype(jnp.float32))
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2])


def test_random_bits_of_a_chunk_are_the_whole_leafs():
    """The fused step rounds a vocabulary chunk at a time: its bits must be the whole leaf's bits of
    those columns, or the two steps would store different moments."""
    seed = bm.leaf_seed(2, bm.NU, jnp.asarray(7))
    whole = np.asarray(bm.random_bits(seed, (3, 5, 97)))
    chunk = np.asarray(bm.random_bits(seed, (3, 5, 40), jnp.asarray(57)))
    np.testing.assert_array_equal(chunk, whole[..., 57:])
    other = np.asarray(bm.random_bits(bm.leaf_seed(2, bm.MU, jnp.asarray(7)), (3, 5, 97)))
    assert (other != whole).mean() > 0.99  # each moment, leaf and step has bits of its own
    top = np.bincount((whole.ravel() >> 28).astype(np.int64), minlength=16)  # uniform in the top 4 bits
    assert top.min() > 0.7 * whole.size / 16


def _nu_after(rounding, steps=3000):
    """The stored nu after `steps` Adam steps on a constant gradient g, and g^2 (1 - b2^steps)."""
    g = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, 4096), jnp.float32)

    def body(nu, t):  # nu: the uint16 bits of the stored bfloat16 values
        new = (1 - bm.B2) * g * g + bm.B2 * bm.load(nu)
        if rounding == "stochastic":
            return bm.store(new, nu, bm.leaf_seed(0, bm.NU, t)), None
        return jax.lax.bitcast_convert_type(new.astype(jnp.bfloat16), jnp.uint16), None

    nu, _ = jax.lax.scan(body, jnp.zeros(4096, jnp.uint16), jnp.arange(1, steps + 1))
    return np.asarray(bm.load(nu), np.float64), np.asarray(g, np.float64) ** 2 * (1 - bm.B2 ** steps)


def test_nu_follows_float32_only_when_rounded_stochastically():
    """Round-to-nearest drops nu's increments once (1 - b2) g^2 is below half an ulp of nu: nu stops
    at about a third of its value. Stochastic rounding keeps each entry within a few percent, and the
    mean over entries within a fraction of a percent."""
    nu, exact = _nu_after("stochastic")
    rel = nu / exact - 1
    assert abs(rel.mean()) < 3e-3 and np.abs(rel).max() < 0.2, (rel.mean(), np.abs(rel).max())
    stalled, _ = _nu_after("nearest")
    assert (stalled / exact).max() < 0.6  # the failure the stochastic rounding is for


@pytest.mark.parametrize("kind,mode", [("lensa", "last"), ("resid", "all")])
def test_fused_step_stores_the_plain_steps_moments(tiny_processed, gpt2_ref, kind, mode):
    """The fused Adam step against jax.grad + bf16_moments.adam, three steps, a vocabulary that does
    not divide into chunks (the overlapping last chunk must not round twice)."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1, kind)
    lens = lenses.init(*lenses.unembedding(params, cfg), lc)
    a, b = plain_and_fused_steps(params, cfg, lc, lens, gpt2_ref, mode, "bfloat16")  # V = 97: chunks at 0, 40, 57
    for k in lens:
        for m_b, m_a in ((b.opt_state[0].mu[k], a.opt_state[0].mu[k]), (b.opt_state[0].nu[k], a.opt_state[0].nu[k])):
            assert m_a.dtype == m_b.dtype == jnp.uint16  # bfloat16 bits
            m_a, m_b = np.asarray(bm.load(m_a)), np.asarray(bm.load(m_b))
            # the same bits round the same float32 value the same way; the two programs' float32
            # gradients differ in the last bits, which moves a rounding to the neighbour now and then
            # (one bfloat16 ulp, 2^-7 relative at most)
            same = m_a == m_b
            assert same.mean() > 0.99, (k, same.mean())
            np.testing.assert_allclose(m_b, m_a, rtol=2**-7, atol=0)
        moved = np.abs(np.asarray(a.lens[k]) - np.asarray(lens[k])).max()
        assert moved > 1e-3, f"{k} did not train"
        assert np.abs(np.asarray(b.lens[k]) - np.asarray(a.lens[k])).max() <= 1e-2 * moved, k


def _run(params, cfg, tmp=None, **kw):
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(data.tokenize(_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(**{"steps": 6, "batch_size": 2, "seq_len": 12, "seed": 3, "save_every": 1, **kw})
    return lc, batches, tc


def test_bf16_moments_train_as_float32_moments_do(tiny_processed):
    """The same run with bfloat16 moments: the losses within 1% and the lens's update within a few
    percent of the float32-moment run's (the moments are rounded to 8 bits, unbiasedly)."""
    params, cfg = tiny_processed
    lc, batches, tc = _run(params, cfg)
    f32 = train.train(params, cfg, lc, batches, tc, progress=False)
    b16 = train.train(params, cfg, lc, batches, dataclasses.replace(tc, adam_moments="bfloat16"), progress=False)
    assert b16.losses != f32.losses  # the rounded moments did run
    np.testing.assert_allclose(b16.losses, f32.losses, rtol=1e-3)  # measured 3.4e-5 (was 1e-2)
    start = np.asarray(lenses.init(*lenses.unembedding(params, cfg), lc)["W"])
    d32, d16 = f32.lens["W"] - start, b16.lens["W"] - start
    rel = np.linalg.norm(d16 - d32) / np.linalg.norm(d32)
    assert rel < 0.05, rel  # measured 2.5e-3
    assert b16.losses[-1] < b16.losses[0]


def test_bf16_moment_run_resumes_exactly_and_checks_the_dtype(tiny_processed, tmp_path):
    params, cfg = tiny_processed
    lc, batches, tc = _run(params, cfg, steps=3, adam_moments="bfloat16")
    whole = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "a", progress=False)
    train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False, stop_after=2)
    rest = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False)
    assert rest.start_step == 2 and rest.losses == whole.losses[2:]
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])
    # a float32-moment run does not resume a bfloat16-moment checkpoint (nor the other way)
    with pytest.raises(ValueError, match="holds another run.*adam_moments: checkpoint 'bfloat16', this run 'float32'"):
        train.train(params, cfg, lc, batches, dataclasses.replace(tc, adam_moments="float32", steps=4),
                    ckpt_dir=tmp_path / "a", progress=False)


def test_checkpoint_from_before_the_setting_resumes_as_float32(tiny_processed, tmp_path):
    """Checkpoints written before `adam_moments` existed ran float32 moments: they resume with it."""
    params, cfg = tiny_processed
    lc, batches, tc = _run(params, cfg, steps=2)
    train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False, stop_after=1)
    metas = [p for p in (tmp_path / "1").rglob("*") if p.is_file() and p.read_bytes().startswith(b"{")
             and b'"batches_seen"' in p.read_bytes()]
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    assert meta["train_config"].pop("adam_moments") == "float32"
    metas[0].write_text(json.dumps(meta))
    assert train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False).start_step == 1
    with pytest.raises(ValueError, match="adam_moments: checkpoint 'float32', this run 'bfloat16'"):
        train.train(params, cfg, lc, batches, dataclasses.replace(tc, adam_moments="bfloat16", steps=3),
                    ckpt_dir=tmp_path, progress=False)


def test_bad_moment_dtype():
    with pytest.raises(ValueError, match=r"adam_moments: expected one of \('float32', 'bfloat16'\), got 'float16'"):
        train.TrainConfig(adam_moments="float16")
    with pytest.raises(ValueError, match="moments: expected one of"):
        bm.optimizer(1e-3, "int8")


def test_cli_flag(tmp_path):
    (tmp_path / "d.txt").write_text("\n".join(_texts(8)))
    out = tmp_path / "run"
    assert _cli("lens", "train", "--model", TINY_GPT2, "--layer", 1, "--data", tmp_path / "d.txt", "--out", out,
                "--steps", 1, "--seq-len", 8, "--batch-size", 2, "--adam-moments", "bfloat16", "--no-progress") == 0
    metas = [json.loads(p.read_text()) for p in (out / "checkpoints").rglob("*")
             if p.is_file() and p.read_bytes().startswith(b"{") and b'"batches_seen"' in p.read_bytes()]
    assert [m["train_config"]["adam_moments"] for m in metas] == ["bfloat16"]


def test_state_layout_is_optax_adams():
    """Same tree as optax.adam's state (checkpoints, shardings and the fused step rely on it), half
    the bytes; the stored bits read back as the bfloat16 values, and an update from a zero state is
    optax.adam's (a first step's direction is g / |g| either way)."""
    p = {"W": jnp.zeros((3, 8)), "b": jnp.zeros(8)}
    ours, theirs = bm.adam(1e-3).init(p), optax.adam(1e-3).init(p)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    nbytes = lambda s: sum(x.nbytes for x in jax.tree.leaves(s))  # noqa: E731
    assert nbytes(ours) - 4 == (nbytes(theirs) - 4) // 2  # the int32 count aside
    x = jnp.asarray([0.1, -2.5, 3e-20], jnp.float32)
    bits = bm.store(x, jnp.zeros(3, jnp.uint16), bm.leaf_seed(0, bm.MU, jnp.asarray(1)))
    np.testing.assert_array_equal(bm.load(bits), jax.lax.bitcast_convert_type(bits, jnp.bfloat16).astype(jnp.float32))
    assert np.all(np.abs(np.asarray(bm.load(bits)) - np.asarray(x)) <= 2**-7 * np.abs(np.asarray(x)))
    g = {"W": jnp.linspace(-1, 1, 24).reshape(3, 8), "b": jnp.arange(8.0) - 3.5}
    u_ours, _ = bm.adam(1e-3).update(g, ours, p)
    u_theirs, _ = optax.adam(1e-3).update(g, theirs, p)
    for k in p:
        np.testing.assert_allclose(u_ours[k], u_theirs[k], rtol=2**-7, atol=1e-10)


def test_checkpoint_with_bfloat16_moment_arrays_resumes_exactly(tiny_processed, tmp_path, monkeypatch):
    """The first `--adam-moments bfloat16` (13a107c, in stop 21) stored the moments as bfloat16 arrays;
    today's state holds their uint16 bits, and orbax restoring bfloat16 into uint16 casts the values
    (1e-3 -> 0, -2.5 -> 65534): such a checkpoint is read as bfloat16 and bitcast, resuming exactly."""
    import orbax.checkpoint as ocp

    params, cfg = tiny_processed
    lc, batches, tc = _run(params, cfg, steps=3, adam_moments="bfloat16")
    whole = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "a", progress=False)
    save = ocp.args.StandardSave
    as_bf16 = lambda a: jax.lax.bitcast_convert_type(a, jnp.bfloat16) if a.dtype == jnp.uint16 else a  # noqa: E731
    with monkeypatch.context() as m:  # the old layout: the same tree, bfloat16 moments
        m.setattr(ocp.args, "StandardSave", lambda state: save(jax.tree.map(as_bf16, state)))
        train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False, stop_after=2)
    with ocp.CheckpointManager((tmp_path / "b").absolute(), item_handlers=train._handlers()) as mngr:
        assert train._bf16_moment_arrays(mngr.item_metadata(2)["state"])
    rest = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False)
    assert rest.start_step == 2 and rest.losses == whole.losses[2:]
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])
