"""Review 17 of the NuGraph2 package: each test pins one defect found and fixed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from test_review14_nugraph import _cli
from test_review16b_nugraph import tiny_set

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("config, message", [
    ({"planes": ["u", "v", "y"]}, r"expected a NuGraph2Config \(a frozen, hashable dataclass\), got dict"),
    (["u", "v"], r"expected a NuGraph2Config \(a frozen, hashable dataclass\), got list"),
    ("64/16", r"expected a NuGraph2Config \(a frozen, hashable dataclass\), got str"),
    ("unhashable", r"expected a hashable NuGraph2Config .* got NuGraph2Config\(.*unhashable type: 'list'"),
])
def test_forward_refuses_a_config_it_cannot_key(config, message):
    """predict.forward(config) was an lru_cache: a dict config raised its bare TypeError "unhashable
    type: 'dict'", and a hashable non-config (a string) got a jitted forward that failed only when
    called. Now a ValueError says a (frozen, hashable) NuGraph2Config was expected and what came."""
    from jaxinterp.nugraph import predict
    from jaxinterp.nugraph.model import NuGraph2Config

    if config == "unhashable":
        config = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
        object.__setattr__(config, "planes", ["u", "v", "y"])  # replaced in place, past __post_init__
    with pytest.raises(ValueError, match=message):
        predict.forward(config)


def test_forward_is_still_built_once_per_config():
    from jaxinterp.nugraph import predict
    from jaxinterp.nugraph.model import NuGraph2Config

    a = predict.forward(NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1))
    assert predict.forward(NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)) is a
    assert predict.forward() is predict.forward(NuGraph2Config())


def test_convert_reads_the_checkpoint_once(tmp_path, monkeypatch, capsys):
    """`nugraph convert` read the .ckpt twice: torch_pickle opened it to load, then read_bytes read it
    again for the recorded converted_from_sha256 (twice the I/O, and a file replaced in between was
    recorded with a hash of bytes it had not loaded). Now load_official_checkpoint reads it once,
    loads those bytes and returns their sha256, which convert records."""
    import builtins
    import hashlib
    import io
    import json

    ckpt_path, h5 = FIXTURES / "nugraph2_reference.ckpt", FIXTURES / "nugraph2_events.gnn.h5"
    opened = []
    for module in (io, builtins):
        real = module.open

        def counting(file, *args, _real=real, **kw):
            if isinstance(file, (str, Path)) and Path(file).resolve() == ckpt_path.resolve():
                opened.append(str(file))
            return _real(file, *args, **kw)

        monkeypatch.setattr(module, "open", counting)
    out = tmp_path / "official"
    assert _cli(["nugraph", "convert", str(ckpt_path), str(out), "--norm", str(h5)], monkeypatch) == 0
    assert len(opened) == 1, opened
    meta = json.loads((out / "model.json").read_text())
    assert meta["converted_from_sha256"] == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()


def test_official_checkpoint_carries_the_hash_of_what_it_loaded(tmp_path):
    from jaxinterp.nugraph import checkpoint

    ckpt_path = FIXTURES / "nugraph2_reference.ckpt"
    import hashlib

    got = checkpoint.load_official_checkpoint(ckpt_path)
    assert got.sha256 == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"torch checkpoint .* is a folder, expected a file"):
        checkpoint.load_official_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"torch checkpoint .*missing.ckpt does not exist"):
        checkpoint.load_official_checkpoint(tmp_path / "missing.ckpt")


def test_torch_pickle_loads_bytes_already_read():
    from jaxinterp import torch_pickle

    ckpt_path = FIXTURES / "nugraph2_reference.ckpt"
    a = torch_pickle.load(ckpt_path)["state_dict"]
    b = torch_pickle.load(ckpt_path, data=ckpt_path.read_bytes())["state_dict"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"data: expected the bytes of .*nugraph2_reference.ckpt, got str"):
        torch_pickle.load(ckpt_path, data="not bytes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """6 small events (train 4, validation 1, test 1), a tiny model folder (init params), the raw events."""
    return tiny_set(tmp_path_factory.mktemp("tiny"))


def _eval(path, params, out, *extra):
    return ["nugraph", "eval", str(path), "--params", str(params), "--out", str(out), "--displays", "0",
            "--split", "all", *extra]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_eval_of_a_file_changed_at_the_same_path_is_another_evaluation(tiny, tmp_path, monkeypatch, capsys):
    """`nugraph eval` recorded its input file by path alone (metrics.json `inputs`), so an evaluation of a
    file rewritten at the same path (other events) counted as the same evaluation and replaced the
    first one's results. `inputs` now holds the file's size and mtime_ns too: the same file again
    still repeats into its folder; a changed one is refused before anything is written."""
    import json
    import os
    import shutil

    from jaxinterp.nugraph import hdf5

    src, params, raws = tiny
    path = tmp_path / "data.gnn.h5"
    shutil.copyfile(src, path)
    out = tmp_path / "eval"
    assert _cli(_eval(path, params, out), monkeypatch) == 0
    first = json.loads((out / "metrics.json").read_text())
    st = path.stat()
    assert first["inputs"]["file"] == str(path.resolve())
    assert _cli(_eval(path, params, out), monkeypatch) == 0  # the same file again: the same evaluation
    assert json.loads((out / "metrics.json").read_text())["inputs"] == first["inputs"]
    capsys.readouterr()
    before = _snapshot(out)
    # the file rewritten at the same path with fewer events
    hdf5.write_events(path, raws[:3], splits={"train": [raws[0].name], "validation": [raws[1].name],
                                              "test": [raws[2].name]})
    assert _cli(_eval(path, params, out), monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"out: {out} holds the results of another evaluation" in err, err
    assert _snapshot(out) == before
    # the same bytes with another mtime: refused too (a stat, no hash: the check stays cheap)
    shutil.copyfile(src, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _cli(_eval(path, params, out), monkeypatch) == 2
    assert _snapshot(out) == before
    assert (first["inputs"]["file_size"], first["inputs"]["file_mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def test_eval_refuses_a_file_that_changes_while_it_is_read(tiny, tmp_path, monkeypatch, capsys):
    """The size and mtime recorded are taken before the events are read: a file rewritten meanwhile
    would be recorded with a stamp of bytes other than those evaluated; it is refused instead."""
    import os
    import shutil

    from jaxinterp.nugraph import hdf5

    src, params, _ = tiny
    path = tmp_path / "data.gnn.h5"
    shutil.copyfile(src, path)
    real = hdf5.read_events

    def read_then_touch(*a, **kw):
        got = real(*a, **kw)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return got

    monkeypatch.setattr(hdf5, "read_events", read_then_touch)
    out = tmp_path / "eval"
    assert _cli(_eval(path, params, out), monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"file: {path} changed while it was read" in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("quick", [True, False])
def test_demo_events_hold_every_class(quick):
    """The demo's NuGraph2 section simulated its events with seed 2024, whose quick 3 events had no
    Michel hits: the Michel row of its table said n/a (no efficiency without true hits). Its seed
    (demo_events.SEED) now gives true hits of every class, quick (3 events) and full (8)."""
    from jaxinterp.nugraph import demo_events, evaluate

    classes = evaluate.load_model().config.semantic_classes
    raws = demo_events.raw_events(quick=quick)
    assert len(raws) == (3 if quick else 8)
    y = np.concatenate([np.asarray(r.planes[p].y_semantic).ravel() for r in raws for p in r.planes])
    counts = np.bincount(y[y >= 0], minlength=len(classes))
    assert (counts > 0).all(), dict(zip(classes, counts.tolist()))


def test_demo_section_has_a_figure_for_every_class(tmp_path):
    """The quick section's class table: an efficiency for every class (Michel's said n/a)."""
    import re

    from jaxinterp.nugraph import demo_events, evaluate

    sec = demo_events.section(tmp_path, quick=True)
    for c in evaluate.load_model().config.semantic_classes:
        row = re.search(rf"<tr><td>{c}</td><td>([^<]*)</td><td>([^<]*)</td></tr>", sec.html)
        assert row is not None and row.group(1) != "n/a", (c, row and row.group(0))
    assert f"(seed {demo_events.SEED})" in sec.html


def _labelled_event(y_value: int):
    from jaxinterp.nugraph import simulate
    from jaxinterp.nugraph.hdf5 import compute_norm, to_event

    raw = simulate.simulate(1, seed=3, config=simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5,
                                                                  max_hits_per_plane=40))[0]
    e = to_event(raw, compute_norm([raw]))
    u = e.planes["u"]
    y = np.where(np.asarray(u.y_semantic) >= 0, 0, -1)
    y[0] = y_value
    planes = {**e.planes, "u": u._replace(y_semantic=y)}
    return e._replace(planes=planes, name="e0")


def test_labels_are_checked_against_the_model_classes_before_it_runs(monkeypatch):
    """event.validate checked labels against the default five classes whatever the model's config:
    with a 3-class model a label 3 or 4 passed, the model ran over the whole set, and only the metrics
    refused it ("y: labels must lie in [-1, 2]", naming no event); with a 6-class model a valid label 5
    was refused. Labels are now checked against the config's classes (predict, evaluate, train)."""
    import jax

    from jaxinterp.nugraph import evaluate, model, predict
    from jaxinterp.nugraph.model import NuGraph2Config

    three = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1, semantic_classes=("a", "b", "c"))
    m = evaluate.Model(model.init(jax.random.key(0), three), three, {}, {})
    ran = []
    real = predict.prepare
    monkeypatch.setattr(predict, "prepare", lambda *a, **k: (ran.append(1), real(*a, **k))[1])
    with pytest.raises(ValueError, match=r"event 'e0', plane 'u', field 'y_semantic': labels must lie in "
                                         r"\[-1, 2\] \(-1 background, then \['a', 'b', 'c'\]\), got 4"):
        evaluate.evaluate(m, [_labelled_event(4)])
    assert not ran  # refused before any batch was padded for the model
    with pytest.raises(ValueError, match=r"labels must lie in \[-1, 2\] .*got 3"):
        predict.predict(m.params, [_labelled_event(3)], config=three)
    assert not ran
    six = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1,
                         semantic_classes=("MIP", "HIP", "shower", "michel", "diffuse", "other"))
    m6 = evaluate.Model(model.init(jax.random.key(0), six), six, {}, {})
    got = evaluate.evaluate(m6, [_labelled_event(5)])  # a label of the sixth class: refused before
    assert got.counts.semantic[5].sum() == 1


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_convert_refuses_a_checkpoint_with_non_finite_weights(value, tmp_path, monkeypatch):
    """convert wrote a checkpoint holding NaN or inf (a diverged run's) into model.npz, which every
    `eval`, `train --init` and `widen` then refused (load_model: "expected finite values"). convert
    now refuses it, naming the official entry, before anything is written."""
    from jaxinterp import torch_pickle
    from jaxinterp.nugraph import checkpoint, evaluate

    ckpt_path, h5 = FIXTURES / "nugraph2_reference.ckpt", FIXTURES / "nugraph2_events.gnn.h5"
    obj = torch_pickle.load(ckpt_path)
    sd = dict(obj["state_dict"])
    w = np.array(sd["encoder.net.u.0.net.2.weight"], copy=True)
    w[0, 1] = value
    sd["encoder.net.u.0.net.2.weight"] = w
    edited = {**obj, "state_dict": sd}
    monkeypatch.setattr(checkpoint.torch_pickle, "load", lambda path, **_: edited)
    out = tmp_path / "official"
    with pytest.raises(ValueError, match=r"state_dict\['encoder.net.u.0.net.2.weight'\]: expected finite values, "
                                         r"got 1 non-finite of \d+ .*nothing was written"):
        checkpoint.convert(ckpt_path, out, norm_file=h5)
    assert not out.exists()
    monkeypatch.undo()
    checkpoint.convert(ckpt_path, out, norm_file=h5)  # the file as it is converts
    assert evaluate.load_model(out).config == checkpoint.load_official_checkpoint(ckpt_path).config


@pytest.mark.parametrize("y", [np.array([0.0, 1.0, -1.0]), np.array([0.7, 1.0, -1.0]), np.array([True, False, True])])
def test_counts_refuse_labels_that_are_not_integers(y):
    """metrics.Counts.add took float labels to numpy's bincount: a bare TypeError ("Cannot cast array
    data from dtype('float64')"); booleans were counted as classes 0 and 1. Now a ValueError says
    integer labels were expected and which dtype came."""
    from jaxinterp.nugraph import metrics

    counts = metrics.Counts.zeros(5)
    with pytest.raises(ValueError, match=rf"y: expected integer labels in \[-1, 4\], got dtype {y.dtype}"):
        counts.add(y, np.eye(5)[:3], np.full(3, 0.9))
    got = counts.add(np.array([0, 1, -1]), np.eye(5)[:3], np.full(3, 0.9))  # integers as before
    assert got.semantic.trace() == 2 and got.filter.tolist() == [[0, 1], [0, 2]]


@pytest.mark.parametrize("sizes", ["float", "three", "text", "none inside"])
def test_pad_batch_refuses_sizes_that_are_not_batch_sizes(sizes):
    """graph.pad_batch took `sizes` as given: a float size failed in numpy ("'float' object cannot be
    interpreted as an integer"), three sizes or a string in BatchSizes ("missing 1 required positional
    argument"), both TypeErrors. Now a ValueError, as predict.prepare's (one check for both)."""
    from jaxinterp.nugraph import graph

    e = _labelled_event(0)
    s = graph.pick_sizes([e])
    bad = {"float": (float(s.hits), *s[1:]), "three": tuple(s[:3]), "text": "abc",
           "none inside": (s.hits, None, s.nexus, s.sp)}[sizes]
    with pytest.raises(ValueError, match=r"pad_batch: sizes: expected a graph.BatchSizes \(integers \['hits', "
                                         r"'edges', 'nexus', 'sp', 'slots'\], slots optional\), got "):
        graph.pad_batch([e], bad)
    assert graph.pad_batch([e], tuple(s)[:4]).sizes == s  # four integers: slots by default, as before


def test_write_outputs_refuses_a_file_as_its_folder(tiny, tmp_path):
    """evaluate.write_outputs into a path that is a file: check_out_dir let it through (not a folder:
    nothing to lose) and mkdir raised a bare FileExistsError. Now a ValueError, the file untouched."""
    from jaxinterp.nugraph import evaluate, hdf5

    path, params, _ = tiny
    model = evaluate.load_model(params)
    events = evaluate.to_events(hdf5.read_events(path, "test").events, model)
    result = evaluate.evaluate(model, events)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    with pytest.raises(ValueError, match=rf"out: expected a folder for metrics.json and the PNGs, got the file {taken}"):
        evaluate.write_outputs(taken, model, events, result, displays=0)
    assert taken.read_text() == "mine"
    assert len(evaluate.write_outputs(tmp_path / "new", model, events, result, displays=0)) == 5


@pytest.mark.parametrize("hp, message", [
    ({"planes": ["u", "u", "y"]}, r"hyper_parameters: NuGraph2Config.planes: expected a non-empty list of distinct "
                                  r"names, got \('u', 'u', 'y'\)"),
    ({"semantic_classes": ["MIP", ""]}, r"hyper_parameters: NuGraph2Config.semantic_classes: expected a non-empty "
                                        r"list of distinct names"),
    (["planes"], r"hyper_parameters: expected a mapping of names to values, got list"),
])
def test_official_checkpoint_config_errors_name_the_file(hp, message, monkeypatch):
    """A checkpoint whose hyper_parameters NuGraph2Config refuses (a plane named twice, an empty class
    name) raised NuGraph2Config's message, naming no file; hyper_parameters that are a list raised
    dict()'s "dictionary update sequence element #0 ...". Both now name the checkpoint."""
    from jaxinterp import torch_pickle
    from jaxinterp.nugraph import checkpoint

    ckpt_path = FIXTURES / "nugraph2_reference.ckpt"
    obj = torch_pickle.load(ckpt_path)
    edited = {**obj, "hyper_parameters": {**obj["hyper_parameters"], **hp} if isinstance(hp, dict) else hp}
    monkeypatch.setattr(checkpoint.torch_pickle, "load", lambda path, **_: edited)
    with pytest.raises(ValueError, match=re.escape(str(ckpt_path)) + ": " + message):
        checkpoint.load_official_checkpoint(ckpt_path)


def test_batches_check_labels_against_the_classes_given():
    """graph.pad_batch and jraph_batch.batch_graphs validated labels against the default five classes:
    a 6-class model's label 5 was refused, and a 3-class model's label 4 passed into pad_batch's batch
    (where the recall loss of a batch holding it is NaN: its cross entropy gathers past the logits). Both take
    the model's classes now (default: the five, as before)."""
    from jaxinterp.nugraph import graph, jraph_batch

    six = ("MIP", "HIP", "shower", "michel", "diffuse", "other")
    e5, e4 = _labelled_event(5), _labelled_event(4)
    assert graph.pad_batch([e5], classes=six).y_semantic.max() == 5
    assert jraph_batch.batch_graphs([e5], classes=six).sizes.sp >= e5.num_sp + 1  # (it carries no labels)
    for build in (graph.pad_batch, jraph_batch.batch_graphs):
        with pytest.raises(ValueError, match=r"event 'e0', plane 'u', field 'y_semantic': labels must lie in "
                                             r"\[-1, 2\] \(-1 background, then \['a', 'b', 'c'\]\), got 4"):
            build([e4], classes=("a", "b", "c"))
        with pytest.raises(ValueError, match=r"labels must lie in \[-1, 4\] .*got 5"):
            build([e5])  # the default five
