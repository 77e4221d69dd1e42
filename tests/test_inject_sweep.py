"""The compiled sweep against the one-run-at-a-time path, its aggregates, and bad input."""

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxinterp.inject.memory import inject_logits, memory_vectors
from jaxinterp.inject.metrics import aggregate, percent_increase, trimmed_mean
from jaxinterp.inject import sweep as sweep_module
from jaxinterp.inject.sweep import SweepResult, sweep, sweep_flops, trace_count
from jaxinterp.transformer import PRESETS, forward, load_gpt2

FIX = Path(__file__).parent / "fixtures"
TAUS = [1.0, 3.0, 7.5]


@pytest.fixture(scope="module")
def setup():
    params, config = load_gpt2(FIX / "tiny_gpt2", process_weights=True)
    rng = np.random.default_rng(0)
    # lengths 4, 9, 6: two buckets of 8 positions, and rows that need left padding
    prompts = [np.concatenate([[0], rng.integers(1, 97, size=n - 1)]).astype(np.int32) for n in (4, 9, 6)]
    explicit = [np.concatenate([[0], rng.integers(1, 97, size=n - 1)]).astype(np.int32) for n in (6, 4, 9)]
    answers = rng.integers(1, 97, size=3)
    mems = memory_vectors(params, [rng.integers(1, 97, size=k) for k in (1, 3, 2)], config=config)
    res = sweep(params, prompts, mems, None, TAUS, config=config, answers=answers, explicit=explicit)
    return params, config, prompts, explicit, answers, mems, res


def _p(logits, answer):
    return float(jax.nn.softmax(logits[0, -1])[answer])


def test_sweep_matches_one_run_each(setup):
    params, config, prompts, explicit, answers, mems, res = setup
    assert res.p_after.shape == (3, 3, 3)
    for i, tok in enumerate(prompts):
        assert res.p_before[i] == pytest.approx(_p(forward(params, tok[None], config=config), answers[i]), rel=1e-5)
        assert res.p_explicit[i] == pytest.approx(_p(forward(params, explicit[i][None], config=config), answers[i]), rel=1e-5)
        for li, L in enumerate(res.layers):
            for ti, tau in enumerate(TAUS):
                ref = _p(inject_logits(params, tok[None], mems[i], config=config, layer=int(L), tau=tau), answers[i])
                assert res.p_after[li, ti, i] == pytest.approx(ref, rel=2e-5), (L, tau, i)


def test_second_call_does_not_recompile_and_positions(setup):
    params, config, prompts, explicit, answers, mems, res = setup
    n = trace_count()
    # same shapes, other taus and injection at the last position only: data, not a new program
    last = [[-1]] * 3
    res2 = sweep(params, prompts, mems, None, [2.0, 4.0, 6.0], config=config, answers=answers, explicit=explicit,
                 positions=last)
    assert trace_count() == n
    pos = np.zeros(len(prompts[1]), bool)
    pos[-1] = True
    ref = _p(inject_logits(params, prompts[1][None], mems[1], config=config, layer=1, tau=4.0, positions=pos), answers[1])
    assert res2.p_after[1, 1, 1] == pytest.approx(ref, rel=2e-5)


def test_layer_memories_and_layer_order(setup):
    """Per-layer memories ("layer" kind) and layers in any order; same shapes, so no new program."""
    params, config, prompts, explicit, answers, mems, res = setup
    n = trace_count()
    per_layer = memory_vectors(params, [[5, 6], [7], [8, 9]], config=config, kind="layer", bos_id=0)
    r = sweep(params, prompts, per_layer, [2, 0, 1], TAUS, config=config, answers=answers, explicit=explicit)
    assert trace_count() == n and r.p_after.shape == (3, 3, 3)
    for li, L in enumerate([2, 0]):
        ref = _p(inject_logits(params, prompts[0][None], per_layer[0, L], config=config, layer=L, tau=3.0), answers[0])
        assert r.p_after[li, 1, 0] == pytest.approx(ref, rel=2e-5)


def test_prompt_counts_share_one_program(setup):
    """9, 10 and 11 prompts of one length pad to the same 16 rows, and the chunks are sized from those
    rows (the padded ones marked invalid): one program for the three counts, the same numbers."""
    params, config = setup[:2]
    rng = np.random.default_rng(1)
    prompts = [np.concatenate([[0], rng.integers(1, 97, size=11)]).astype(np.int32) for _ in range(11)]
    answers = rng.integers(1, 97, size=11)
    mems = memory_vectors(params, [rng.integers(1, 97, size=2) for _ in range(11)], config=config)
    layers, taus = [0, 1, 2], [1.0, 2.0]
    n = trace_count()
    results = {N: sweep(params, prompts[:N], mems[:N], layers, taus, config=config, answers=answers[:N])
               for N in (9, 10, 11)}
    assert trace_count() == n + 1
    for i, tok in enumerate(prompts):
        for li, L in enumerate(layers):
            for ti, tau in enumerate(taus):
                ref = _p(inject_logits(params, tok[None], mems[i], config=config, layer=L, tau=tau), answers[i])
                for N, r in results.items():
                    if i < N:
                        assert r.p_after.shape == (3, 2, N)
                        assert r.p_after[li, ti, i] == pytest.approx(ref, rel=2e-5), (N, L, tau, i)


def test_without_explicit(setup):
    params, config, prompts, explicit, answers, mems, res = setup
    r = sweep(params, prompts[:1], mems[:1], [1], [3.0], config=config, answers=answers[:1])
    assert r.p_explicit is None and r.p_after[0, 0, 0] == pytest.approx(res.p_after[1, 1, 0], rel=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layers=[3]), r"layers: layer 3 out of range, the model has 3 blocks"),
    (dict(layers=[-1]), "layers: layer -1 out of range"),
    (dict(layers=[]), "layers: expected at least one"),
    (dict(taus=[]), "taus: expected a non-empty"),
    (dict(memories=np.zeros((2, 64))), r"memories: expected shape \[3, 64\]"),
    (dict(answers=[1, 2]), "answers: expected 3 token ids"),
    (dict(prompts=[[0, 1], [], [2]]), "prompts: row 1: expected a non-empty"),
    (dict(prompts=[]), "prompts: expected at least one"),
    (dict(prompts=[[0, 1], [0, 200], [2]]), r"prompts: row 1: ids must lie in \[0, 97\)"),
    (dict(positions=[[0], [0], [12]]), "positions: row 2: position 12 outside"),
    (dict(explicit=[[0, 1]]), "explicit: expected one explicit prompt per prompt"),
])
def test_bad_input(setup, kwargs, match):
    params, config, prompts, explicit, answers, mems, res = setup
    args = dict(prompts=[[0, 1], [0, 2, 3], [0, 4]], memories=np.zeros((3, 64)), layers=None, taus=[1.0],
                answers=[1, 2, 3])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sweep(params, args.pop("prompts"), args.pop("memories"), args.pop("layers"), args.pop("taus"),
              config=config, **args)


def test_aggregates():
    before = np.array([0.1, 0.2, 0.5, 0.01, 0.4])
    after = np.array([[[0.2, 0.2, 0.25, 0.03, 0.4]], [[0.1, 0.3, 0.6, 0.01, 0.8]]])  # 2 layers x 1 tau
    res = SweepResult(np.array([4, 7]), np.array([2.0], np.float32), before, after, None)
    pct = percent_increase(res)
    np.testing.assert_allclose(pct[0, 0], [100, 0, -50, 200, 0])
    agg = aggregate(res, trim=0.2)
    assert agg.mean[0, 0] == pytest.approx(50.0) and agg.median[0, 0] == pytest.approx(0.0)
    assert agg.trimmed_mean[0, 0] == pytest.approx(100 / 3)  # drops -50 and 200
    assert agg.best["mean"].layer == 4 and agg.best["median"].layer == 7 and agg.best["median"].tau == 2.0
    assert trimmed_mean(np.arange(10.0), 0.1) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="trim: expected a fraction"):
        trimmed_mean(np.arange(3.0), 0.5)


def test_flop_count_scales():
    c = PRESETS["gpt2"]
    one = sweep_flops(c, [15], [5], 1)
    assert sweep_flops(c, [15, 15], [5], 1) == pytest.approx(2 * one)
    # more layers above the injection cost more
    assert sweep_flops(c, [15], [0], 1) > sweep_flops(c, [15], [10], 1) > sweep_flops(c, [15], [11], 1)


def test_steps_give_the_one_call_numbers_and_resume(setup, tmp_path, sweep_steps):
    """progress/state run one program per (bucket, layer): the same probabilities as the one call; an
    interrupted run leaves its finished layers in the state file and a second run computes only the rest."""
    params, config, prompts, explicit, answers, mems, res = setup
    args = (params, prompts, mems, None, TAUS)
    kw = dict(config=config, answers=answers, explicit=explicit)
    state = tmp_path / "sweep_state.npz"
    calls = sweep_steps(stop_after=4)  # 2 buckets x 3 layers = 6 steps; stopped after 4
    with pytest.raises(KeyboardInterrupt):
        sweep(*args, **kw, progress=True, state=state)
    assert state.is_file() and int(np.load(state)["done"].sum()) == 4
    calls = sweep_steps()
    r = sweep(*args, **kw, state=state)
    assert len(calls) == 2 and not state.exists()  # the rest only; the state is removed once done
    for got, want in zip(r, res):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    # a state of another sweep (other taus) does not match: it is ignored and every step runs
    calls = sweep_steps(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        sweep(params, prompts, mems, None, [2.0, 4.0, 6.0], **kw, state=state)
    calls = sweep_steps()
    sweep(*args, **kw, state=state)
    assert len(calls) == 6


def test_precompiled_sweep_runs_in_one_call(setup):
    sw = sweep_module
    params, config, prompts, explicit, answers, mems, res = setup
    p = sw.plan(prompts, mems, None, TAUS, config=config, answers=answers)
    with pytest.raises(ValueError, match="compiled: a precompiled sweep runs in one call; leave progress and state off"):
        sw.run(params, p, config=config, compiled=sw.compile_plan(params, p, config=config), progress=True)
