"""Review 14 of the NuGraph2 package (convert, metrics, training, evaluation): each test pins one
defect found and fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxinterp.nugraph import display, metrics

FIXTURES = Path(__file__).parent / "fixtures"


def test_filter_keeps_a_hit_only_above_the_threshold():
    """torchmetrics' binary metrics (the official filter recall/precision) keep a hit when
    `preds > threshold`; ours kept filter probability 0.5 too (`>=`), counting it as kept signal
    (efficiency) and kept background (purity). A probability of exactly 0.5 is now dropped, as the
    event display draws it, and one just above is kept."""
    y = np.array([0, 1, -1, -1, 2])  # signal, signal, background, background, signal
    sem = np.eye(5)[[0, 1, 0, 0, 2]]
    fil = np.array([0.5, np.nextafter(0.5, 1.0), 0.5, 0.75, 0.25], np.float64)
    c = metrics.Counts.zeros().add(y, sem, fil)
    # rows: true background / signal; columns: dropped / kept
    np.testing.assert_array_equal(c.filter, [[1, 1], [2, 1]])
    m = metrics.compute(c)
    assert m.filter_efficiency == pytest.approx(1 / 3) and m.filter_purity == pytest.approx(1 / 2)
    for dtype in (np.float32, np.float64):  # 0.5 is exact in both
        c = metrics.Counts.zeros().add(np.array([0]), np.eye(5)[[0]], np.array([0.5], dtype))
        np.testing.assert_array_equal(c.filter, [[0, 0], [1, 0]])
    labels = display.predicted_labels(sem, fil)
    np.testing.assert_array_equal(labels, [-1, 1, -1, 0, -1])  # kept where the metrics keep it


def test_adamw_keeps_float32_moments_for_bfloat16_params():
    """optax's Adam keeps its moments in the params' dtype and inject_hyperparams casts b2, eps and
    the weight decay to it: bfloat16 params had bfloat16 moments and b2 = 0.999 rounded to 1, so the
    bias correction divided by 1 - b2^t = 0 and the first update was NaN or nothing. Now the moments
    and hyperparameters are float32, the bfloat16 params train and stay bfloat16, and the moments
    are the float32 run's (from the same bfloat16-rounded start) to bfloat16 gradient precision."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.nugraph import graph, hdf5, model, train
    from jaxinterp.nugraph.model import NuGraph2Config

    tiny = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
    events, _ = hdf5.load_events(FIXTURES / "nugraph2_events.gnn.h5", None, limit=4)
    batch = graph.pad_batch(events, graph.pick_sizes(events))
    total, lr = 10, 1.0  # a large rate, so one step moves bfloat16 params by more than their spacing
    opt, _ = train._optimizer(lr, 0.01, total)
    step = train._train_step(tiny, lr, 0.01, total)
    start = model.init(jax.random.key(0), tiny, dtype=jnp.bfloat16)
    runs = {}
    for dt in (jnp.bfloat16, jnp.float32):
        params = jax.tree.map(lambda a: jnp.array(a, dt), start)  # copies: the step donates them
        state = train.TrainState(params, opt.init(params))
        for _ in range(2):
            state, parts = step(state, batch)
        runs[dt] = state
        assert np.isfinite(float(parts.total))
    bf = runs[jnp.bfloat16]
    adam = bf.opt_state.inner_state[0]
    assert {a.dtype for a in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype(jnp.float32)}
    assert {jnp.asarray(v).dtype for v in bf.opt_state.hyperparams.values()} == {jnp.dtype(jnp.float32)}
    assert {a.dtype for a in jax.tree.leaves(bf.params)} == {jnp.dtype(jnp.bfloat16)}
    moved = [float(np.mean(np.asarray(a, np.float32) != np.asarray(b, np.float32)))
             for a, b in zip(jax.tree.leaves(bf.params), jax.tree.leaves(start))]
    assert all(np.isfinite(np.asarray(a, np.float32)).all() for a in jax.tree.leaves(bf.params))
    assert np.mean(moved) > 0.5  # most entries trained (old: NaN, or left where they were)
    f32 = runs[jnp.float32].opt_state.inner_state[0]
    for a, b in zip(jax.tree.leaves((adam.mu, adam.nu)), jax.tree.leaves((f32.mu, f32.nu))):
        scale = float(np.abs(np.asarray(b)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0.05 * scale)
