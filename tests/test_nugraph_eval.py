"""Evaluation: metrics by hand, confusion matrices and displays, model files, the eval command, the demo."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from jaxinterp.nugraph import display, evaluate, hdf5, metrics, model, simulate, train
from jaxinterp.nugraph.model import NuGraph2Config

TINY = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
PNG = b"\x89PNG\r\n\x1a\n"


# --- metrics --------------------------------------------------------------------------------


def _onehot(pred, c=5):
    return np.eye(c)[np.asarray(pred)]


@pytest.mark.parametrize("y, pred, filt, expect", [
    # all right
    ([0, 1, 2, 3, 4, -1], [0, 1, 2, 3, 4, 0], [1, 1, 1, 1, 1, 0],
     dict(filter_efficiency=1.0, filter_purity=1.0, semantic_efficiency=1.0, semantic_efficiency_macro=1.0)),
    # one MIP called HIP; one background kept; one signal dropped
    ([0, 0, 1, 1, -1, -1], [1, 0, 1, 1, 0, 0], [1, 1, 1, 0.2, 0.9, 0.1],
     dict(filter_efficiency=0.75, filter_purity=0.75, semantic_efficiency=0.75, semantic_efficiency_macro=0.75,
          semantic_purity_macro=(1.0 + 2 / 3) / 2)),
    # the semantic figures ignore the filter and background hits, as the official metrics do
    ([2, 2, -1], [2, 3, 2], [0, 0, 1], dict(filter_efficiency=0.0, filter_purity=0.0, semantic_efficiency=0.5)),
])
def test_metrics_by_hand(y, pred, filt, expect):
    counts = metrics.Counts.zeros().add(np.array(y), _onehot(pred), np.array(filt, float))
    m = metrics.compute(counts)
    for k, v in expect.items():
        assert getattr(m, k) == pytest.approx(v), k
    assert m.semantic_purity == m.semantic_efficiency
    # accumulating in two halves gives the same counts
    h = len(y) // 2
    a = metrics.Counts.zeros().add(np.array(y[:h]), _onehot(pred[:h]), np.array(filt[:h], float))
    b = metrics.Counts.zeros().add(np.array(y[h:]), _onehot(pred[h:]), np.array(filt[h:], float))
    assert np.array_equal((a + b).semantic, counts.semantic) and np.array_equal((a + b).filter, counts.filter)


def test_macro_averages_follow_torchmetrics():
    """torchmetrics' macro: a class with true or predicted hits counts, 0/0 as 0. Here michel has a
    true hit but is never predicted: its purity is 0/0, and it must pull the purity mean down (it
    was left out: 0.875 instead of 0.7); diffuse, predicted but never true, does the same for the
    efficiency mean. The per-class figures stay NaN for display."""
    y = np.array([0, 0, 1, 2, 3, 1])
    pred = np.array([0, 1, 1, 2, 0, 4])
    m = metrics.compute(metrics.Counts.zeros().add(y, _onehot(pred), np.ones(len(y))))
    assert np.isnan(m.purity["michel"]) and np.isnan(m.efficiency["diffuse"])
    # purity per class: MIP 1/2, HIP 1/2, shower 1, michel 0/0 -> 0, diffuse 0/1
    assert m.semantic_purity_macro == pytest.approx((0.5 + 0.5 + 1 + 0 + 0) / 5)
    # efficiency per class: MIP 1/2, HIP 1/2, shower 1, michel 0/1, diffuse 0/0 -> 0
    assert m.semantic_efficiency_macro == pytest.approx((0.5 + 0.5 + 1 + 0 + 0) / 5)
    assert np.isnan(metrics.compute(metrics.Counts.zeros()).semantic_efficiency_macro)


def test_metrics_of_absent_class_is_nan_not_error():
    m = metrics.compute(metrics.Counts.zeros().add(np.array([0, 0]), _onehot([0, 0]), np.ones(2)))
    assert m.efficiency["MIP"] == 1.0 and np.isnan(m.efficiency["michel"]) and m.semantic_efficiency_macro == 1.0


@pytest.mark.parametrize("y, sem, filt, message", [
    (np.array([0, 1]), np.zeros((2, 4)), np.ones(2), r"semantic: expected shape \[2, 5\]"),
    (np.array([0, 1]), np.zeros((2, 5)), np.ones(3), r"filter_prob: expected shape \[2\]"),
    (np.array([0, 7]), np.zeros((2, 5)), np.ones(2), r"y: labels must lie in \[-1, 4\]"),
])
def test_metrics_bad_input(y, sem, filt, message):
    with pytest.raises(ValueError, match=message):
        metrics.Counts.zeros().add(y, sem, filt)


# --- pictures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_and_model(tmp_path_factory):
    cfg = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5, max_hits_per_plane=60)
    raws = simulate.simulate(5, seed=31, config=cfg)
    folder = tmp_path_factory.mktemp("model")
    params = model.init(jax.random.key(1), TINY)
    train.save_model(folder, params, TINY, hdf5.compute_norm(raws), {"command": "test"})
    path = hdf5.write_events(folder / "ev.gnn.h5", raws)
    return raws, folder, path


def test_event_display_and_confusion_figures(events_and_model):
    raws, _, _ = events_and_model
    ev = hdf5.to_event(raws[0], hdf5.compute_norm(raws))
    fig = display.event_display(ev, {p: ev.planes[p].y_semantic for p in "uvy"})
    assert len(fig.axes) == 6
    fig = display.event_display(ev)
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match=r"predicted\['v'\]: expected shape"):
        display.event_display(ev, {"u": ev.planes["u"].y_semantic, "v": np.zeros(1), "y": ev.planes["y"].y_semantic})
    with pytest.raises(ValueError, match="predicted: missing plane"):
        display.event_display(ev, {"u": ev.planes["u"].y_semantic})
    with pytest.raises(ValueError, match="normalise: expected 'truth' or 'prediction'"):
        display.confusion_figure(np.eye(5), normalise="rows")
    with pytest.raises(ValueError, match=r"matrix: expected shape \[5, 5\]"):
        display.confusion_figure(np.eye(4))
    assert display.predicted_labels(np.eye(5)[[1, 2]], np.array([0.9, 0.1])).tolist() == [1, -1]


def test_model_files_round_trip_and_errors(events_and_model, tmp_path):
    _, folder, _ = events_and_model
    m = evaluate.load_model(folder)
    assert m.config == TINY and m.meta["command"] == "test" and m.norm["u"].shape == (2, 4)
    with pytest.raises(ValueError, match=re.escape(f"params: expected model.npz in {tmp_path} (a `nugraph train` run "
                                                   "folder), not found") + "$"):  # matched "expected model.npz in"
        evaluate.load_model(tmp_path)
    other = NuGraph2Config(planar_features=4, nexus_features=4, num_iters=1)
    train.save_model(tmp_path, model.init(jax.random.key(0), other), TINY, m.norm)  # params of another size
    with pytest.raises(ValueError, match="does not hold NuGraph2 params of the config"):
        evaluate.load_model(tmp_path)
    js = tmp_path / "model.json"
    good = json.loads(js.read_text())
    good.pop("npz_sha256")
    for edit, message in [(lambda d: d.pop("norm"), r"must hold the objects 'config' and 'norm'.*\['norm'\]"),
                          (lambda d: d.update(config=[1]), r"missing or not an object: \['config'\]"),
                          (lambda d: d["config"].update(dropout=0.1), r"config has unknown keys \['dropout'\]"),
                          (lambda d: d["norm"].pop("v"), r"norm must hold .* each plane .*; missing or misshapen: \['v'\]"),
                          (lambda d: d["norm"].update(u=[[0, 0], [1, 1]]), r"missing or misshapen: \['u'\]")]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        js.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            evaluate.load_model(tmp_path)
    js.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"params: {js} is not valid JSON (Expecting property name")):
        evaluate.load_model(tmp_path)


def test_model_json_holds_the_hash_of_its_npz(events_and_model, tmp_path):
    import hashlib

    _, folder, _ = events_and_model
    desc = json.loads((folder / "model.json").read_text())
    assert desc["npz_sha256"] == hashlib.sha256((folder / "model.npz").read_bytes()).hexdigest()
    assert "npz_sha256" not in evaluate.load_model(folder).meta
    # a model.json from before the hash loads
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.npz").write_bytes((folder / "model.npz").read_bytes())
    (old / "model.json").write_text(json.dumps({k: v for k, v in desc.items() if k != "npz_sha256"}))
    assert evaluate.load_model(old).config == TINY


def test_save_interrupted_between_the_two_files_is_refused(events_and_model, tmp_path, monkeypatch):
    _, folder, _ = events_and_model
    first = evaluate.load_model(folder)
    train.save_model(tmp_path, first.params, TINY, first.norm, {"command": "first"})

    def killed(*a, **kw):
        raise KeyboardInterrupt("killed between model.npz and model.json")

    monkeypatch.setattr(train.atomic, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        train.save_model(tmp_path, model.init(jax.random.key(5), TINY), TINY, first.norm, {"command": "second"})
    monkeypatch.undo()
    assert json.loads((tmp_path / "model.json").read_text())["command"] == "first"  # the new npz, the old json
    with pytest.raises(ValueError, match=r"model.npz and model.json do not belong together: model.json records "
                                         r"model.npz sha256 [0-9a-f]{64}, the file has [0-9a-f]{64}"):
        evaluate.load_model(tmp_path)
    # saving again makes them a pair
    train.save_model(tmp_path, first.params, TINY, first.norm, {"command": "again"})
    assert evaluate.load_model(tmp_path).meta["command"] == "again"


def test_eval_command_reports_skipped_events(events_and_model, tmp_path, capsys, monkeypatch):
    from jaxinterp import cli

    raws, folder, _ = events_and_model
    rp = raws[0].planes["v"]
    empty = hdf5.RawPlane(rp.pos[:0], rp.x[:0], rp.id[:0], rp.y_semantic[:0], rp.y_instance[:0],
                          np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64))
    path = hdf5.write_events(tmp_path / "odd.gnn.h5", [raws[0]._replace(planes={**raws[0].planes, "v": empty}),
                                                       *raws[1:]])
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    out = tmp_path / "eval"
    assert cli.main(["nugraph", "eval", str(path), "--params", str(folder), "--split", "all", "--out", str(out),
                     "--displays", "0", "--limit", "2"]) == 0
    assert "all: 1 events (skipped 1 events (1 empty plane))" in capsys.readouterr().out
    got = json.loads((out / "metrics.json").read_text())
    assert got["skipped"] == {"empty plane": [raws[0].name], "no space points": []}


def test_eval_command_writes_metrics_and_pictures(events_and_model, tmp_path, capsys, monkeypatch):
    from jaxinterp import cli

    _, folder, path = events_and_model
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    out = tmp_path / "eval"
    assert cli.main(["nugraph", "eval", str(path), "--params", str(folder), "--split", "all", "--out", str(out),
                     "--displays", "2"]) == 0
    printed = capsys.readouterr().out
    assert "filter eff" in printed and "michel" in printed
    got = json.loads((out / "metrics.json").read_text())
    assert got["hits"] == sum(int((r.planes[p].y_semantic >= 0).sum()) for r in events_and_model[0] for p in "uvy")
    assert np.array(got["semantic_counts"]).sum() == got["hits"]
    # the confusion counts and filter figures against predict's outputs counted here in numpy (this
    # checked only that the semantic counts summed to the hits)
    from jaxinterp.nugraph.predict import predict

    m = evaluate.load_model(folder)
    events = evaluate.to_events(hdf5.read_events(path, None).events, m)
    sem, fil = np.zeros((5, 5), int), np.zeros((2, 2), int)
    for e, pr in zip(events, predict(m.params, events, config=m.config), strict=True):
        for p in "uvy":
            y, signal = e.planes[p].y_semantic, e.planes[p].y_semantic >= 0
            np.add.at(sem, (y[signal], np.argmax(pr.semantic[p], -1)[signal]), 1)
            np.add.at(fil, (signal.astype(int), (pr.filter[p] > 0.5).astype(int)), 1)
    assert got["semantic_counts"] == sem.tolist() and got["filter_counts"] == fil.tolist()
    assert got["filter_efficiency"] == pytest.approx(fil[1, 1] / fil[1].sum(), rel=1e-12)
    assert got["filter_purity"] == pytest.approx(fil[1, 1] / fil[:, 1].sum(), rel=1e-12)
    assert got["semantic_efficiency"] == pytest.approx(np.trace(sem) / sem.sum(), rel=1e-12)
    pngs = sorted(f.name for f in out.glob("*.png"))
    assert pngs[:4] == ["confusion_filter_by_prediction.png", "confusion_filter_by_truth.png",
                        "confusion_semantic_by_prediction.png", "confusion_semantic_by_truth.png"]
    assert len([p for p in pngs if p.startswith("display_")]) == 2
    assert all((out / p).read_bytes()[:8] == PNG for p in pngs)
    assert cli.main(["nugraph", "eval", str(path), "--params", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_shipped_model_loads():
    m = evaluate.load_model()
    assert set(m.norm) == {"u", "v", "y"} and "test_metrics" in m.meta and "command" in m.meta
    assert model.num_params(m.params) > 0


def test_demo_section_runs(tmp_path):
    from jaxinterp.nugraph import demo_events

    sec = demo_events.section(tmp_path, quick=True)
    assert "NuGraph2" in sec.title and "data:image/png;base64" in sec.html
    assert len(list((tmp_path / "nugraph").glob("display_*.png"))) == 2
    # the section's figures (its own batch-1 loop) against evaluate.evaluate on the same 3 simulated
    # events, as the table prints them (4 significant digits), the held-out column against model.json
    # and the paper's figures against their sources (this checked only that "0.12" occurred somewhere)
    shipped = evaluate.load_model()
    raws = demo_events.raw_events(quick=True)
    m = evaluate.evaluate(shipped, evaluate.to_events(raws, shipped)).metrics
    held = shipped.meta["test_metrics"]
    paper = {"filter_efficiency": "0.98", "semantic_efficiency": "0.949"}  # arXiv 2403.11872, as the section says
    for label, key in (("filter efficiency", "filter_efficiency"), ("filter purity", "filter_purity"),
                       ("semantic efficiency (hit-weighted)", "semantic_efficiency"),
                       ("semantic efficiency (class mean)", "semantic_efficiency_macro"),
                       ("semantic purity (class mean)", "semantic_purity_macro")):
        row = (f"<tr><td>{label}</td><td>{getattr(m, key):.4g}</td><td>{held[key]:.4g}</td>"
               f"<td>{paper.get(key, 'n/a')}</td></tr>")
        assert row in sec.html, row
    def cell(v):  # a class with no true (predicted) hits has no efficiency (purity): the table says n/a
        return f"{v:.4g}" if np.isfinite(v) else "n/a"

    for c in shipped.config.semantic_classes:
        row = f"<tr><td>{c}</td><td>{cell(m.efficiency[c])}</td><td>{cell(m.purity[c])}</td></tr>"
        assert row in sec.html, row
    assert "<tr><td>paper, official code on a CPU</td><td>0.12</td><td>arXiv 2403.11872</td></tr>" in sec.html


# --- the nugraph commands' options: out-of-range values stop at parsing, naming the option ----------


_SIMULATE = ["nugraph", "simulate", "--events", "2", "--out", "never.gnn.h5"]
_TRAIN = ["nugraph", "train", "never.gnn.h5", "--out", "never_run"]
_EVAL = ["nugraph", "eval", "never.gnn.h5", "--out", "never_eval"]


@pytest.mark.parametrize("argv, option, message", [
    (_SIMULATE + ["--mean-energy", "-1"], "--mean-energy", "expected a positive finite number, got -1"),
    (_SIMULATE + ["--mean-energy", "nan"], "--mean-energy", "expected a positive finite number, got nan"),
    (_SIMULATE + ["--cosmics", "-0.5"], "--cosmics", "expected a non-negative finite number, got -0.5"),
    (_SIMULATE + ["--min-hits", "-1"], "--min-hits", "expected a non-negative integer, got -1"),
    (_TRAIN + ["--max-steps", "-1"], "--max-steps", "expected a positive integer, got -1"),
    (_TRAIN + ["--max-steps", "0"], "--max-steps", "expected a positive integer, got 0"),
    (_TRAIN + ["--limit-train", "-1"], "--limit-train", "expected a positive integer, got -1"),
    (_TRAIN + ["--limit-val", "-1"], "--limit-val", "expected a non-negative integer, got -1"),
    (_TRAIN + ["--balance-frac", "1.5"], "--balance-frac", r"expected a fraction in [0, 1], got 1.5"),
    (_TRAIN + ["--balance-frac", "-0.1"], "--balance-frac", r"expected a fraction in [0, 1], got -0.1"),
    (_TRAIN + ["--weight-decay", "-0.01"], "--weight-decay", "expected a non-negative finite number, got -0.01"),
    (_EVAL + ["--limit", "-1"], "--limit", "expected a positive integer, got -1"),
    (_EVAL + ["--displays", "-1"], "--displays", "expected a non-negative integer, got -1"),
    (_EVAL + ["--limit", "ten"], "--limit", "expected a positive integer, got ten"),
    (_SIMULATE + ["--seed", "-1"], "--seed", "expected a non-negative integer, got -1"),
    (_TRAIN + ["--seed", "-2"], "--seed", "expected a non-negative integer, got -2"),
])
def test_out_of_range_options_are_usage_errors(argv, option, message, tmp_path, capsys, monkeypatch):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # stopped before anything was written


@pytest.mark.parametrize("argv, made, message", [
    (["nugraph", "simulate", "--events", "2", "--out", "taken"], "folder", "--out: expected a file path, got the folder taken"),
    (_EVAL[:3] + ["--out", "taken"], "file", "--out: expected a folder, got the file taken"),
    (_TRAIN[:3] + ["--out", "taken"], "file", "--out: expected a folder, got the file taken"),
    (["nugraph", "simulate", "--events", "2", "--out", "taken/x.gnn.h5"], "file", "cannot write taken/x.gnn.h5: taken is not a folder"),
    (["nugraph", "convert", "ckpt", "taken", "--norm", "x.gnn.h5"], "file", "argument out: expected a folder, got the file taken"),
    (["nugraph", "convert", "ckpt", "out", "--norm", "x.gnn.h5", "--orbax", "taken"], "folder",
     "taken: expected a new path or an orbax checkpoint folder"),
])
def test_output_paths_are_checked_before_any_work(argv, made, message, tmp_path, capsys, monkeypatch):
    """A folder where a file goes (or the reverse) stops the command before it simulates, trains or
    reads anything, and what is there stays as it was (convert: orbax would have deleted the folder)."""
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    monkeypatch.chdir(tmp_path)
    if made == "folder":
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "notes.txt").write_text("mine")
    else:
        (tmp_path / "taken").write_text("mine")
    try:
        code = cli.main(argv)  # a ValueError from the command: printed, status 2
    except SystemExit as exc:  # a usage error from argparse
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    kept = tmp_path / "taken" / "notes.txt" if made == "folder" else tmp_path / "taken"
    assert kept.read_text() == "mine" and len(list(tmp_path.rglob("*"))) == (2 if made == "folder" else 1)


@pytest.mark.parametrize("argv, option, value", [
    (_SIMULATE + ["--cosmics", "0"], "cosmics", 0.0),
    (_TRAIN + ["--balance-frac", "0"], "balance_frac", 0.0),
    (_TRAIN + ["--balance-frac", "1"], "balance_frac", 1.0),
    (_TRAIN + ["--limit-val", "0"], "limit_val", 0),
    (_EVAL + ["--displays", "0"], "displays", 0),
])
def test_option_bounds_are_accepted(argv, option, value, monkeypatch):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    assert getattr(cli.build_parser().parse_args(argv), option) == value


def test_eval_params_help_names_what_load_model_reads(capsys, monkeypatch):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    with pytest.raises(SystemExit):
        cli.main(["nugraph", "eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a folder with model.npz and model.json" in text and "checkpoint" not in text
