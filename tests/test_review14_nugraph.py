"""Review 14 of the NuGraph2 package (convert, metrics, training, evaluation): each test pins one
defect found and fixed."""

from __future__ import annotations

import re
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


def _cli(argv, monkeypatch):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    try:
        return cli.main(argv)
    except SystemExit as exc:  # usage errors
        return exc.code


def test_converted_checkpoint_is_a_model_that_eval_reads(tmp_path, monkeypatch, capsys):
    """`nugraph convert` wrote orbax params, which `nugraph eval --params` (model.npz + model.json with
    the config and the feature norm) could not read: the official model was unusable by eval/predict.
    Now it writes that model folder, with the checkpoint's config and the norm of `--norm FILE.gnn.h5`,
    and eval on it computes what the checkpoint's own params compute."""
    import json

    import jax

    from jaxinterp.nugraph import checkpoint, evaluate, hdf5, predict

    ckpt_path, h5 = FIXTURES / "nugraph2_reference.ckpt", FIXTURES / "nugraph2_events.gnn.h5"
    out, orbax = tmp_path / "official", tmp_path / "orbax"
    assert _cli(["nugraph", "convert", str(ckpt_path), str(out), "--norm", str(h5), "--orbax", str(orbax)],
                monkeypatch) == 0
    assert "360,890 parameters" in capsys.readouterr().out
    ckpt = checkpoint.load_official_checkpoint(ckpt_path)
    got = evaluate.load_model(out)
    assert got.config == ckpt.config and got.meta["converted_from"] == str(ckpt_path)
    norm = hdf5.read_info(h5).norm
    assert set(got.norm) == set("uvy") and all(np.array_equal(got.norm[p], norm[p]) for p in "uvy")
    for a, b, c in zip(jax.tree.leaves(got.params), jax.tree.leaves(ckpt.params),
                       jax.tree.leaves(checkpoint.load_params(orbax, config=ckpt.config))):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    # eval on the folder: the figures of the checkpoint's params on the file's events, normalised by its norm
    assert _cli(["nugraph", "eval", str(h5), "--params", str(out), "--split", "all", "--displays", "0",
                 "--out", str(tmp_path / "eval")], monkeypatch) == 0
    metrics_json = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    events = [hdf5.to_event(r, norm) for r in hdf5.read_events(h5, None).events]
    want = evaluate.evaluate(evaluate.Model(ckpt.params, ckpt.config, norm, {}), events)
    assert metrics_json["semantic_counts"] == want.counts.semantic.tolist()
    assert metrics_json["filter_counts"] == want.counts.filter.tolist()
    assert metrics_json["semantic_counts"] != np.zeros((5, 5)).tolist()
    ours = predict.predict(got.params, evaluate.to_events(hdf5.read_events(h5, None).events, got), config=got.config)
    for a, b in zip(ours, want.predictions, strict=True):
        for p in "uvy":
            np.testing.assert_array_equal(a.semantic[p], b.semantic[p])
            np.testing.assert_array_equal(a.filter[p], b.filter[p])


def _h5_copy(tmp_path, edit):
    import shutil

    import h5py

    path = tmp_path / "edited.gnn.h5"
    shutil.copy(FIXTURES / "nugraph2_events.gnn.h5", path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _drop_plane_y(f):
    del f["planes"]
    f["planes"] = np.array([b"u", b"v"])


@pytest.mark.parametrize("case, message", [
    ("no --norm", "the following arguments are required: --norm"),
    ("no norm in the file", "missing dataset '/norm/v'"),
    ("a plane short", r"holds a feature norm for planes \['u', 'v'\], the checkpoint's model needs one for each of "
                      r"\['u', 'v', 'y'\] \(missing \['y'\]\)"),
    ("out a file", "argument out: expected a folder, got the file"),
])
def test_convert_refuses_before_writing(case, message, tmp_path, monkeypatch, capsys):
    norm = {"no --norm": lambda: None, "no norm in the file": lambda: _h5_copy(tmp_path, lambda f: f.__delitem__("norm/v")),
            "a plane short": lambda: _h5_copy(tmp_path, _drop_plane_y),
            "out a file": lambda: FIXTURES / "nugraph2_events.gnn.h5"}[case]()
    out = tmp_path / "model"
    if case == "out a file":
        out.write_text("mine")
    argv = ["nugraph", "convert", str(FIXTURES / "nugraph2_reference.ckpt"), str(out)]
    before = sorted(tmp_path.rglob("*"))
    assert _cli(argv + (["--norm", str(norm)] if norm else []), monkeypatch) == 2
    assert re.search(message, " ".join(capsys.readouterr().err.split()))
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_model_without_a_norm_says_how_to_get_one(tmp_path, monkeypatch):
    """eval of a model folder without a feature norm (a hand-made model.json, or one written before
    convert took --norm) is refused naming the norm and how a converted checkpoint gets one."""
    import json

    from jaxinterp.nugraph import evaluate

    out = tmp_path / "m"
    assert _cli(["nugraph", "convert", str(FIXTURES / "nugraph2_reference.ckpt"), str(out), "--norm",
                 str(FIXTURES / "nugraph2_events.gnn.h5")], monkeypatch) == 0
    desc = json.loads((out / "model.json").read_text())
    desc["norm"] = None
    (out / "model.json").write_text(json.dumps(desc))
    with pytest.raises(ValueError, match=r"missing or not an object: \['norm'\].*an official checkpoint carries "
                                         r"none: `jaxinterp nugraph convert CKPT OUT --norm FILE.gnn.h5`"):
        evaluate.load_model(out)


@pytest.mark.parametrize("value, message", [
    (np.nan, r"entry 'encoder/u/bias': expected finite values, got 1 non-finite of \d+ \(a diverged training run\?\)"),
    (np.inf, r"entry 'encoder/u/bias': expected finite values, got 1 non-finite"),
    ("int", r"entry 'encoder/u/bias': expected floating-point values, got dtype int64"),
])
def test_model_with_non_finite_params_is_refused(value, message, tmp_path):
    """A model folder whose params hold a NaN (a diverged run saves one) loaded without a word, and
    eval printed numbers for it: every score NaN, argmax class 0, no hit kept (shipped model with one
    NaN bias: MIP efficiency 100%, filter efficiency 0%). load_model now refuses it, naming the entry."""
    import jax

    from jaxinterp.nugraph import evaluate
    from jaxinterp.nugraph.train import save_model

    shipped = evaluate.load_model()
    params = jax.tree.map(np.array, shipped.params)
    bias = params["encoder"]["u"]["bias"]
    if value == "int":
        params["encoder"]["u"]["bias"] = bias.astype(np.int64)
    else:
        bias[0, 0] = value
    save_model(tmp_path, params, shipped.config, shipped.norm)
    with pytest.raises(ValueError, match=message):
        evaluate.load_model(tmp_path)
