"""NuGraph2 predict: equals apply per event, compiles once per bucket, data-parallel, orbax params."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxinterp.nugraph import checkpoint, graph, model, predict as predict_mod
from jaxinterp.nugraph.event import PLANES
from test_nugraph_graph import random_event

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)


@pytest.fixture(scope="module")
def params():
    return model.init(jax.random.PRNGKey(0), TINY)


def _events(seed, count):
    rng = np.random.default_rng(seed)
    return [random_event(rng, tuple(rng.integers(5, 14, 3)), int(rng.integers(2, 5)), f"e{i}") for i in range(count)]


def test_predict_equals_apply_per_event_and_does_not_recompile(params):
    events = _events(0, 5)
    preds = predict_mod.predict(params, events, config=TINY, batch_size=4)
    assert len(preds) == 5
    sizes = graph.pick_sizes(events)  # each event alone, all padded alike: one vmapped compilation
    singles = graph.stack([graph.pad_batch([ev], sizes) for ev in events])
    outs = jax.jit(jax.vmap(lambda b: model.apply(params, b, config=TINY)))(singles)
    for k, (ev, pred) in enumerate(zip(events, preds)):
        for pi, p in enumerate(PLANES):
            n = ev.planes[p].x.shape[0]
            np.testing.assert_allclose(pred.semantic[p], jax.nn.softmax(outs.x_semantic[k, pi, :n]), atol=2e-6)
            np.testing.assert_allclose(pred.filter[p], outs.x_filter[k, pi, :n], atol=2e-6)
            np.testing.assert_allclose(pred.semantic[p].sum(-1), 1.0, atol=1e-5)
    # the same buckets again (other events of similar size): no new trace, no new compilation
    traces, cached = predict_mod._trace_count[0], predict_mod.forward(TINY)._cache_size()
    predict_mod.predict(params, _events(1, 4), config=TINY, batch_size=4)
    assert graph.pick_sizes(_events(1, 4)) == graph.pick_sizes(events[:4])
    assert predict_mod._trace_count[0] == traces
    assert predict_mod.forward(TINY)._cache_size() == cached


def test_official_checkpoint_through_predict_gives_the_official_outputs():
    """The production path end to end on the official fixtures: the Lightning checkpoint (float32)
    read without torch, the fixture events, `predict`'s buckets and normal compilation, against the
    official float64 outputs (the other predict tests compare predict with apply on a random tiny
    model). Measured 5.9e-8 (filter) and 4.5e-8 (class probabilities)."""
    import jax.nn

    from test_nugraph_reference import FIXTURES, REF, reference_event

    ckpt = checkpoint.load_official_checkpoint(FIXTURES / "nugraph2_reference.ckpt")
    preds = predict_mod.predict(ckpt.params, [reference_event(0), reference_event(1)], config=ckpt.config,
                                batch_size=2)
    assert len(preds) == 2
    for i, pred in enumerate(preds):
        for p in PLANES:
            assert pred.filter[p].shape == REF[f"ev{i}/{p}/x_filter"].shape
            np.testing.assert_allclose(pred.filter[p], REF[f"ev{i}/{p}/x_filter"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(pred.semantic[p], jax.nn.softmax(REF[f"ev{i}/{p}/x_semantic"]), rtol=0,
                                       atol=1e-6)


def test_predict_bad_batch_size(params):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        predict_mod.predict(params, _events(0, 1), config=TINY, batch_size=0)


def test_orbax_round_trip(params, tmp_path):
    path = checkpoint.save_params(tmp_path / "params", params)
    back = checkpoint.load_params(path, config=TINY)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not hold NuGraph2 params"):
        checkpoint.load_params(path, config=model.NuGraph2Config())
    with pytest.raises(ValueError, match="no checkpoint at"):
        checkpoint.load_params(tmp_path / "missing")


def test_save_params_replaces_a_checkpoint_and_nothing_else(params, tmp_path):
    """orbax's own overwrite deletes the target folder first: whatever a user's folder held, or the
    old checkpoint before the new one is whole. save_params refuses anything but a checkpoint and
    keeps the old one until the new one is complete."""
    path = checkpoint.save_params(tmp_path / "params", params)
    doubled = jax.tree.map(lambda a: a * 2, params)
    checkpoint.save_params(path, doubled)
    for a, b in zip(jax.tree.leaves(checkpoint.load_params(path, config=TINY)), jax.tree.leaves(doubled)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["params"]  # no temporary folder left

    import orbax.checkpoint as ocp

    def killed(self, *a, **kw):
        raise KeyboardInterrupt("killed while writing")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ocp.PyTreeCheckpointer, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_params(path, params)
    np.testing.assert_array_equal(jax.tree.leaves(checkpoint.load_params(path))[0], jax.tree.leaves(doubled)[0])
    assert sorted(os.listdir(tmp_path)) == ["params"]

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "notes.txt").write_text("years of work")
    (tmp_path / "afile").write_text("x")
    for target in (mine, tmp_path / "afile"):
        with pytest.raises(ValueError, match="expected a new path or an orbax checkpoint folder"):
            checkpoint.save_params(target, params)
    assert (mine / "notes.txt").read_text() == "years of work" and (tmp_path / "afile").read_text() == "x"


def test_data_parallel_over_four_devices_matches_one(tmp_path):
    """In a subprocess with 4 host devices: predict sharded over 4 equals predict on 1 device."""
    script = textwrap.dedent("""
        import sys, jax, numpy as np
        sys.path.insert(0, sys.argv[1])
        from test_nugraph_predict import TINY, _events
        from jaxinterp import parallel
        from jaxinterp.nugraph import model, predict as pm
        assert len(jax.devices()) == 4
        params = model.init(jax.random.PRNGKey(0), TINY)
        events = _events(0, 7)
        many = pm.predict(params, events, config=TINY, batch_size=7)
        one = pm.predict(params, events, config=TINY, batch_size=7, mesh=parallel.make_mesh(jax.devices()[:1]))
        batch = pm.prepare(events, config=TINY)
        assert batch.x.shape[0] == 4 and len(batch.x.sharding.device_set) == 4
        err = max(float(np.abs(a.semantic[p] - b.semantic[p]).max()) for a, b in zip(many, one) for p in a.semantic)
        err = max(err, max(float(np.abs(a.filter[p] - b.filter[p]).max()) for a, b in zip(many, one) for p in a.filter))
        assert err < 1e-6, err  # measured 3.0e-8 (1e-5 before)
        # chunks of 3, 3 and 1 events over 4 devices: some devices get no event at all
        short = pm.predict(params, events, config=TINY, batch_size=3)
        assert len(short) == len(events)
        for a, b in zip(short, one):
            for p in a.semantic:
                np.testing.assert_allclose(a.semantic[p], b.semantic[p], rtol=0, atol=1e-6)
                np.testing.assert_allclose(a.filter[p], b.filter[p], rtol=0, atol=1e-6)
        print("ok", err)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(__file__)
    res = subprocess.run([sys.executable, "-c", script, tests_dir], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok" in res.stdout


def test_a_stream_compiles_once_per_hit_bucket(params, monkeypatch):
    """The padded sizes of a chunk follow its hit bucket alone: chunks whose other sizes (edges,
    space points) land in other buckets share one compilation, widened to hold them all."""
    monkeypatch.setattr(predict_mod, "_SIZES", {})
    rng = np.random.default_rng(11)
    events = [random_event(rng, tuple(rng.integers(3, 40, 3)), int(rng.integers(1, 30)), f"s{i}") for i in range(40)]
    chunks = [events[i:i + 2] for i in range(0, len(events), 2)]
    needed = [graph.pick_sizes(c) for c in chunks]
    hit_buckets = {n.hits for n in needed}
    assert len(set(needed)) > len(hit_buckets)  # the combinations a size per field would compile

    traces = predict_mod._trace_count[0]
    preds = predict_mod.predict(params, events, config=TINY, batch_size=2)
    assert predict_mod._trace_count[0] - traces <= len(hit_buckets)
    assert set(predict_mod._SIZES) == {(PLANES, 1, h) for h in hit_buckets}
    for size, need in zip(predict_mod._bucket_sizes(needed, PLANES, 1), needed):
        assert size.hits == need.hits and all(s >= n for s, n in zip(size, need))
    # the same events, one by one: bigger padding changes nothing but float rounding
    alone = [predict_mod.predict(params, [e], config=TINY)[0] for e in events[:4]]
    for a, b in zip(alone, preds[:4]):
        for p in PLANES:
            np.testing.assert_allclose(a.semantic[p], b.semantic[p], atol=2e-6)
            np.testing.assert_allclose(a.filter[p], b.filter[p], atol=2e-6)
