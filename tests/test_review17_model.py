"""Review 17 of the NuGraph2 network (model, jraph form, widen, losses, message passing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_nugraph_hdf5 import _set_at as _set
from test_review14_nugraph import _cli

from jaxinterp.nugraph import model

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_init_returns_every_leaf_in_the_dtype_asked_for(dtype, x64):
    """init scaled each leaf by a numpy float64 bound, which is not weakly typed: every kernel and bias
    came back float64 under jax_enable_x64 (a float32 training run then ran in float64) and float32 for
    bfloat16/float16 params; only the temperatures had the dtype asked for."""
    with jax.enable_x64(x64):
        params = model.init(jax.random.PRNGKey(0), TINY, dtype=dtype)
    assert {str(a.dtype) for a in jax.tree.leaves(params)} == {jnp.dtype(dtype).name}
    # the same values with and without x64: the bound is rounded to dtype either way
    with jax.enable_x64(not x64):
        other = model.init(jax.random.PRNGKey(0), TINY, dtype=dtype)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _tiny_params(dtype=np.float32):
    return jax.tree.map(lambda a: np.asarray(a).astype(dtype), model.init(jax.random.PRNGKey(0), TINY))


@pytest.mark.parametrize("kwargs", [dict(factor=np.int64(2)), dict(noise=np.float64(0.01)),
                                    dict(factor=np.int32(3), noise=np.float32(0.02))])
def test_widen_keeps_the_params_dtype_for_numpy_scalars(kwargs):
    """numpy scalars are not weakly typed (NEP 50): factor=np.int64(2) made every divided kernel
    float64 and noise=np.float64 every jittered one, beside float32 leaves. Now the same float32
    params as Python numbers give."""
    from jaxinterp.nugraph.widen import widen

    params = _tiny_params()
    got, wide = widen(params, TINY, **kwargs)
    want, _ = widen(params, TINY, **{k: v.item() for k, v in kwargs.items()})
    assert {a.dtype for a in jax.tree.leaves(got)} == {np.dtype(np.float32)}
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_widen_with_noise_keeps_bfloat16_params_bfloat16():
    from jaxinterp.nugraph.widen import widen

    got, _ = widen(_tiny_params(jnp.bfloat16), TINY, noise=0.05)  # jittered kernels were float32
    assert {a.dtype for a in jax.tree.leaves(got)} == {np.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), r"widen: seed must be an integer >= 0, got -1"),  # numpy's own ValueError
    (dict(seed=1.5), r"widen: seed must be an integer >= 0, got 1.5"),  # numpy's TypeError
    (dict(noise=True), r"widen: noise must be a finite number >= 0, got True"),  # taken as noise 1.0
])
def test_widen_refuses_a_bad_seed_or_a_boolean_noise(kwargs, message):
    from jaxinterp.nugraph.widen import widen

    with pytest.raises(ValueError, match=message):
        widen(_tiny_params(), TINY, **kwargs)




def _save_small(folder, seed):
    from jaxinterp.nugraph.event import PLANES
    from jaxinterp.nugraph.train import save_model

    norm = {p: np.stack([np.zeros(4), np.ones(4)]).astype(np.float32) for p in PLANES}
    save_model(folder, jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(seed), TINY)), TINY, norm)


def test_widen_repeated_through_another_path_to_the_same_model_is_a_repeat(tmp_path, monkeypatch, capsys):
    """widen recorded --params as given: the same model widened again into the same folder through
    another path (relative instead of absolute, or its model.npz) was refused as 'another model'.
    Now a repeat is the same model bytes under the same settings; another model is still refused."""
    import json

    _save_small(tmp_path / "small", 0)
    out = tmp_path / "wide"
    assert _cli(["nugraph", "widen", "--params", str(tmp_path / "small"), "--out", str(out)], monkeypatch) == 0
    first = (out / "model.npz").read_bytes()
    monkeypatch.chdir(tmp_path)
    for params in ("small", "small/model.npz", "./small/"):
        assert _cli(["nugraph", "widen", "--params", params, "--out", "wide"], monkeypatch) == 0, capsys.readouterr().err
        assert (out / "model.npz").read_bytes() == first
        desc = json.loads((out / "model.json").read_text())
        assert desc["widened_from"] == f"{(tmp_path / 'small').resolve()} (factor 2, noise 0.0, seed 0)"
        assert desc["widen_settings"] == {"factor": 2, "noise": 0.0, "seed": 0}
    capsys.readouterr()
    _save_small(tmp_path / "small", 1)  # another model at the same path
    assert _cli(["nugraph", "widen", "--params", "small", "--out", "wide"], monkeypatch) == 2
    assert "out: wide holds ['model.npz', 'model.json'] of another model" in " ".join(capsys.readouterr().err.split())
    assert (out / "model.npz").read_bytes() == first
    _save_small(tmp_path / "small", 0)
    assert _cli(["nugraph", "widen", "--params", "small", "--out", "wide", "--seed", "1"], monkeypatch) == 2
    assert (out / "model.npz").read_bytes() == first


def test_write_outputs_keeps_every_display_in_the_folder_one_file_per_event(tmp_path):
    """write_outputs named a display display_{event name}.png as given: a name holding '/' wrote into a
    subfolder, one with '../' outside the output folder, and two names differing only there overwrote
    one file. Now each event gets its own file directly in the folder."""
    from jaxinterp.nugraph import evaluate
    from test_nugraph_graph import random_event

    rng = np.random.default_rng(5)
    names = ["run1/evt2", "../../escape", "a_b", "a/b", ""]
    events = [random_event(rng, name=n) for n in names]
    m = evaluate.Model(_tiny_params(), TINY, {}, {})
    result = evaluate.evaluate(m, events)
    out = tmp_path / "deep" / "out"
    written = evaluate.write_outputs(out, m, events, result, displays=len(events))
    shown = [p.name for p in written if p.name.startswith("display_")]
    assert shown == ["display_run1_evt2.png", "display_.._.._escape.png", "display_a_b.png", "display_a_b_2.png",
                     "display_event.png"]
    assert all(p.parent == out and p.is_file() for p in written)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == \
        sorted(f"deep/out/{p.name}" for p in written)


def _edit(batch, field, fn):
    a = np.array(getattr(batch, field))
    return batch._replace(**{field: fn(a)})




@pytest.mark.parametrize("field, fn, message", [
    # an index outside its node set: the neighbour gather clamped it to the padding hit, the segment
    # sums dropped it; the real hits' outputs changed by ~2e-3, silently
    ("plane_neighbours", _set((0, 0, 0), 64 + 3), r"batch.plane_neighbours: index 67 out of range \[-1, 64\)"),
    ("plane_neighbours", _set((1, 2, 0), -2), r"batch.plane_neighbours: index -2 out of range \[-1, 64\)"),
    ("plane_senders", _set((2, 0), 64), r"batch.plane_senders: index 64 out of range \[0, 64\)"),
    ("nexus_sp", _set((0, -1), 16 + 2), r"batch.nexus_sp: index 18 out of range \[0, 16\)"),
    ("down_hits", _set((1, 0), -1), r"batch.down_hits: index -1 out of range \[0, 64\)"),
    ("down_hits", lambda a: a[:, ::-1], r"batch.down_hits must be sorted ascending within each plane"),
    # shapes that do not fit batch.x: TypeErrors from a broadcast deep inside
    ("plane_neighbours", lambda a: a[:, :10], r"batch.plane_neighbours must have shape \[P, N, K\] \(P = 3, N = 64 "
                                              r"from batch.x.*got \[3, 10, 8\]"),
    ("down_sp", lambda a: a[:, :5], r"batch.down_sp must have shape \[P, X\] .*got \[3, 5\]"),
    ("plane_receivers", lambda a: a[:2], r"batch.plane_receivers must have shape \[P, E\] .*got \[2, 16\]"),
])
def test_apply_refuses_a_batch_whose_indices_do_not_fit(field, fn, message):
    from jaxinterp.nugraph import graph
    from test_nugraph_graph import random_event

    batch = graph.pad_batch([random_event(np.random.default_rng(0))])
    assert batch.sizes[:4] == (64, 16, 16, 16)
    params = model.init(jax.random.PRNGKey(0), TINY)
    with pytest.raises(ValueError, match="apply: " + message):
        model.apply(params, _edit(batch, field, fn), config=TINY)
    model.apply(params, batch, config=TINY)  # the batch as pad_batch built it


def test_train_from_init_params_leaves_the_callers_arrays_alive(tmp_path):
    """train(init_params=...) took float32 jax arrays with jnp.asarray, which returns them as they are,
    and the train step donates its state: the first step deleted the caller's params ('Array has been
    deleted'). Now the run starts from a copy; the caller's arrays are unchanged."""
    from jaxinterp.nugraph import hdf5, simulate, train

    cfg = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5, max_hits_per_plane=60)
    events = simulate.simulate(5, seed=21, config=cfg)
    names = [e.name for e in events]
    path = hdf5.write_events(tmp_path / "tiny.gnn.h5", events, splits={"train": names[:4], "validation": names[4:],
                                                                          "test": []})
    start = model.init(jax.random.PRNGKey(1), TINY)
    before = jax.tree.map(np.array, start)
    res = train.train(path, tmp_path / "run", config=train.TrainConfig(epochs=1, batch_size=4), model_config=TINY,
                      progress=False, log=lambda s: None, init_params=start, limit_val=0)
    assert res.finished and res.steps == 1
    assert not any(a.is_deleted() for a in jax.tree.leaves(start))
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert any(not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(before)))


@pytest.mark.parametrize("edit", [
    dict(sp=64.5),  # padded to 65 space points (np.arange(64.5)), silently
    dict(nodes=(64.0, 64, 64)),  # taken as 64
    dict(edges=(True, 64, 128)),  # a boolean budget of 1
    dict(graphs="8"),  # numpy's UFuncTypeError
    dict(nodes=(64, 64)),  # a plane short: 'budgets too small' with no word of the planes
])
def test_batch_graphs_refuses_sizes_that_are_not_jraph_sizes(edit):
    from jaxinterp.nugraph import jraph_batch
    from test_nugraph_graph import random_event

    events = [random_event(np.random.default_rng(0))]
    sizes = jraph_batch.pick_jraph_sizes(events)._replace(nodes=(64, 64, 64), edges=(128, 128, 128))
    with pytest.raises(ValueError, match=r"batch_graphs: sizes: expected a jraph_batch.JraphSizes \(nodes, edges, nexus: 3 "
                                         r"integers each, one per plane \['u', 'v', 'y'\]; sp, graphs: integers\), got"):
        jraph_batch.batch_graphs(events, sizes._replace(**edit))
    with pytest.raises(ValueError, match=r"batch_graphs: sizes: .*got \(\(64, 64, 64\)"):  # four fields
        jraph_batch.batch_graphs(events, tuple(sizes)[:4])
    assert jraph_batch.batch_graphs(events, tuple(sizes)).sizes == sizes  # a plain tuple of integers, as before
    assert jraph_batch.batch_graphs(events, sizes._replace(sp=np.int64(32))).sizes.sp == 32


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, TINY), {}, r"init: rng: expected one PRNG key \(jax.random.key\(seed\) or PRNGKey\(seed\)\), got int"),
    ((jax.random.split(jax.random.PRNGKey(0)), TINY), {}, r"init: rng: expected one PRNG key .*got \w+ uint32 \[2, 2\]"),
    ((jax.random.PRNGKey(0), {"planar_features": 8}), {}, r"init: config: expected a NuGraph2Config, got dict"),
    ((jax.random.PRNGKey(0), TINY), {"dtype": "int32"}, r"init: dtype: expected a floating-point dtype, got 'int32'"),
    ((jax.random.PRNGKey(0), TINY), {"dtype": "nope"}, r"init: dtype: expected a floating-point dtype, got 'nope'"),
    # with x64 off: float32 params with a warning at most
    ((jax.random.PRNGKey(0), TINY), {"dtype": jnp.float64}, r"init: dtype: expected jax_enable_x64 on for float64"),
])
def test_init_refuses_what_it_cannot_build(args, kwargs, message):
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=message):
            model.init(*args, **kwargs)
    assert jax.tree.leaves(model.init(jax.random.key(0), TINY))[0].dtype == jnp.float32  # both kinds of key
    with jax.enable_x64(True):
        assert jax.tree.leaves(model.init(jax.random.PRNGKey(0), TINY, dtype=jnp.float64))[0].dtype == jnp.float64


@pytest.mark.parametrize("form", ["apply", "apply_graphs"])
def test_forwards_refuse_a_config_or_batch_of_another_type(form):
    """model.apply and jraph_model.apply_graphs given a config dict or string, or a batch of another
    type, failed with AttributeErrors from inside ('dict' object has no attribute 'planes')."""
    from jaxinterp.nugraph import graph, jraph_batch, jraph_model
    from test_nugraph_graph import random_event

    events = [random_event(np.random.default_rng(0))]
    params = model.init(jax.random.PRNGKey(0), TINY)
    fn, batch, kind = ((model.apply, graph.pad_batch(events), r"graph.GraphBatch \(graph.pad_batch\)") if form == "apply"
                       else (jraph_model.apply_graphs, jraph_batch.batch_graphs(events),
                             r"jraph_batch.JraphBatch \(jraph_batch.batch_graphs\)"))
    for config, got in (({"planar_features": 8}, "dict"), ("tiny", "str")):
        with pytest.raises(ValueError, match=rf"{form}: config: expected a NuGraph2Config, got {got}"):
            fn(params, batch, config=config)
    other = graph.pad_batch(events) if form == "apply_graphs" else jraph_batch.batch_graphs(events)
    for bad in ("batch", other):
        with pytest.raises(ValueError, match=rf"{form}: batch: expected a {kind}, got {type(bad).__name__}"):
            fn(params, bad, config=TINY)
    jax.jit(lambda b: fn(params, b, config=TINY))(batch)  # the batch type survives jit


@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("with_initial", [False, True])
def test_message_passing_drops_int64_receivers_beyond_int32(mean, with_initial):
    """Under x64, XLA's scatter wrapped int64 receiver ids of 2**32 and more into range (2**33 -> row 0,
    2**32 + 1 -> row 1): the reference summed such edges into those rows and the fast form counted them
    in the mean's degree. Both now drop them, as any receiver outside [0, N)."""
    from jaxinterp.kernels.message_passing import gather_segment_sum, gather_segment_sum_reference

    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        v = jnp.asarray(rng.normal(size=(2, 3, 4, 2)))
        w = jnp.asarray(rng.uniform(size=(2, 3, 5)))
        snd = jnp.asarray([[0, 1, 2, 3, 0], [3, 2, 1, 0, 1]], jnp.int64)
        rcv = jnp.asarray([[-2**32, 0, 1, 2**32 + 1, 2**33], [0, 0, 2, 2, 2**34]], jnp.int64)
        keep = np.asarray(rcv >= 0) & np.asarray(rcv < 3)
        init = jnp.asarray(rng.normal(size=(2, 3, 3, 2))) if with_initial else None
        # the same edges with the out-of-range ones weighted 0 and sent to a receiver in range
        want = gather_segment_sum_reference(v, jnp.where(jnp.asarray(keep)[:, None], w, 0.0), snd,
                                            jnp.where(jnp.asarray(keep), rcv, 0), 3, initial=init)
        if mean:
            deg = np.maximum(np.stack([np.bincount(np.asarray(rcv)[b][keep[b]], minlength=3) for b in range(2)]), 1)
            base = 0.0 if init is None else init
            want = (want - base) / deg[:, None, :, None] + base
        for fn in (gather_segment_sum, gather_segment_sum_reference):
            got = fn(v, w, snd, rcv, 3, mean=mean, initial=init)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=fn.__name__)


def test_evaluate_events_of_no_events_and_a_bad_batch_size():
    """train.evaluate_events([]) built its SizePolicy first, whose max() over no event was a bare
    'max() arg is an empty sequence' (the NaN loss it meant for no batch never came), and batch_size=0
    was range()'s 'arg 3 must not be zero'."""
    from jaxinterp.nugraph import train

    params = model.init(jax.random.PRNGKey(0), TINY)
    counts, loss = train.evaluate_events(params, [], TINY)
    assert np.isnan(loss) and counts.semantic.shape == (TINY.num_classes, TINY.num_classes)
    assert counts.semantic.sum() == 0 and counts.filter.sum() == 0
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"evaluate_events: batch_size: expected an integer >= 1, got {bad!r}"):
            train.evaluate_events(params, [], TINY, batch_size=bad)
