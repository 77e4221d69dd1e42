"""Review 16b: NuGraph2 HDF5 extra fields checked before writing (and by datasize), name lists that are
not pynuml's 1-D string arrays, and the nugraph commands' bad input."""

from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pytest

from jaxinterp.nugraph import hdf5
from test_nugraph_hdf5 import FIXTURE, _copy_fixture

# --- write_events / datasize: extra fields h5py cannot store, or would store renamed -------------

BAD_EXTRA = [
    # (extra, the field named, the message's tail); before: an AttributeError from datasize, a TypeError
    # from h5py inside the atomic write, or (the empty name) a field read back renamed 'f26'
    ({1: np.int64(1)}, "1", r"expected a non-empty string as the field's name, got int 1"),
    ({b"u/q": np.int64(1)}, "b'u/q'", r"expected a non-empty string as the field's name, got bytes b'u/q'"),
    ({"": np.int64(1)}, "''", r"expected a non-empty string as the field's name, got str ''"),
    ({"u/q": np.array([1, "x"], dtype=object)}, "'u/q'", r"expected an array of numbers, booleans or byte strings "
                                                       r"\(a tensor, as pynuml stores\), got dtype object"),
    ({"u/q": None}, "'u/q'", r"got dtype object \(NoneType\)"),
    ({"u/q": np.array(["ab", "c"])}, "'u/q'", r"got dtype <U2 \(ndarray\)"),
    ({"u/q": "hello"}, "'u/q'", r"got dtype <U5 \(str\)"),
    ({"u/q": np.array(["2020-01-01"], dtype="M8[D]")}, "'u/q'", r"got dtype datetime64\[D\]"),
    ({"u/q": np.zeros(2, dtype=[("a", "<i4")])}, "'u/q'", r"got dtype \[\('a', '<i4'\)\]"),
]


@pytest.mark.parametrize("extra, field, message", BAD_EXTRA)
def test_bad_extra_field_is_refused_before_writing(tmp_path, extra, field, message):
    events = hdf5.read_events(FIXTURE).events
    events[1] = events[1]._replace(extra={"u/fine": np.ones(3, np.float32), **extra})
    target = tmp_path / "out.gnn.h5"
    target.write_bytes(b"previous content")
    with pytest.raises(ValueError, match=re.escape(f"events: event 'r1_sr1_evt1', extra field {field}: ") + ".*" + message):
        hdf5.write_events(target, events)
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.gnn.h5"]


def test_extra_that_is_not_a_mapping_is_refused(tmp_path):
    events = hdf5.read_events(FIXTURE).events
    events[0] = events[0]._replace(extra=[("u/q", np.int64(1))])
    with pytest.raises(ValueError, match=re.escape("events: event 'r1_sr1_evt0', extra: expected a mapping of "
                                                   "field names to arrays, got list")):
        hdf5.write_events(tmp_path / "x.gnn.h5", events)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("extra, field, message", [
    *BAD_EXTRA,
    # counted twice before, silently (and written nowhere: write_events refuses it)
    ({"u/x": np.ones((3, 2), np.float32)}, "'u/x'", "expected extra fields other than the standard ones"),
    ({"y_nexus_sp/edge_index": np.int64(1)}, "'y_nexus_sp/edge_index'", "expected extra fields other than"),
])
def test_datasize_refuses_what_write_events_refuses(extra, field, message):
    ev = hdf5.read_events(FIXTURE).events[2]
    bad = ev._replace(extra=extra)
    with pytest.raises(ValueError, match=re.escape(f"event 'r1_sr1_evt2', extra field {field}: ") + ".*" + message):
        hdf5.datasize(bad)


@pytest.mark.parametrize("value", [np.array([True, False, True]), np.array([1 + 2j]), np.array([b"ab", b"c"]),
                                   np.ones(2, np.float16), np.uint8(7), [1, 2]])
def test_extra_fields_h5py_stores_still_round_trip_and_count(tmp_path, value):
    events = hdf5.read_events(FIXTURE).events
    base = hdf5.datasize(events[0])
    events[0] = events[0]._replace(extra={"é/q": value})
    assert hdf5.datasize(events[0]) == base + np.asarray(value).nbytes
    back = {e.name: e for e in hdf5.read_events(hdf5.write_events(tmp_path / "x.gnn.h5", events)).events}
    got = back["r1_sr1_evt0"].extra["é/q"]
    assert got.dtype == np.asarray(value).dtype and got.tolist() == np.asarray(value).tolist()


# --- /planes, /semantic_classes, /event_classes, /samples/{split}: 1-D arrays of strings ----------

_STR = h5py.string_dtype("utf-8")


def _replace_dataset(key, data, dtype=None):
    def edit(f):
        del f[key]
        if data is h5py.Empty:
            f.create_dataset(key, data=h5py.Empty(_STR))
        else:
            f.create_dataset(key, data=data, dtype=dtype)
    return edit


@pytest.mark.parametrize("key, data, dtype, got", [
    # read as a one-element list before: planes ('u',), a training split of one event, silently
    ("planes", "u", _STR, "the scalar b'u'"),
    ("samples/train", "r1_sr1_evt0", _STR, "the scalar b'r1_sr1_evt0'"),
    ("samples/validation", "r1_sr1_evt6", _STR, "the scalar b'r1_sr1_evt6'"),
    ("semantic_classes", np.bytes_(b"MIP"), None, "the scalar np.bytes_(b'MIP')"),
    ("event_classes", "cc_nue", _STR, "the scalar b'cc_nue'"),
    # read row by row as "[b'u' b'v']" before
    ("planes", np.array([["u", "v"], ["y", "w"]], dtype=object), _STR, "shape [2, 2]"),
    # numbers read as their digits before
    ("samples/test", np.array([7, 8]), None, "dtype int64 [7, 8]"),
    ("semantic_classes", np.arange(5.0), None, "dtype float64 [0.0, 1.0, 2.0, 3.0, 4.0]"),
    # a null dataspace read as the name 'Empty(dtype=...)'
    ("samples/test", h5py.Empty, None, "the scalar Empty(dtype="),
])
def test_name_list_that_is_not_a_1d_string_array_is_a_value_error(tmp_path, key, data, dtype, got):
    path = _copy_fixture(tmp_path, _replace_dataset(key, data, dtype))
    message = re.escape(f"{path}: '/{key}': expected a 1-D array of strings (as pynuml writes it), got {got}")
    with pytest.raises(ValueError, match=message):
        hdf5.read_info(path)
    with pytest.raises(ValueError, match=message):
        hdf5.read_events(path, "test")


def test_name_list_of_invalid_utf8_is_a_value_error(tmp_path):
    path = _copy_fixture(tmp_path, _replace_dataset("planes", np.array([b"u", b"\xff", b"y"]), None))
    with pytest.raises(ValueError, match=re.escape(f"{path}: '/planes': expected UTF-8 strings, got b'\\xff'")):
        hdf5.read_info(path)


@pytest.mark.parametrize("key, data, dtype, want", [
    ("planes", np.array([b"u", b"v", b"y"]), None, ("u", "v", "y")),  # fixed-length byte strings
    ("samples/test", np.array([], dtype=object), _STR, ()),  # an empty split, as write_events writes it
    ("samples/test", np.array(["r1_sr1_evt7"], dtype=object), _STR, ("r1_sr1_evt7",)),
])
def test_one_dimensional_string_arrays_still_read(tmp_path, key, data, dtype, want):
    info = hdf5.read_info(_copy_fixture(tmp_path, _replace_dataset(key, data, dtype)))
    assert (info.planes if key == "planes" else info.samples["test"]) == want


# --- the nugraph commands: an --out folder holding another command's files, empty splits -----------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from jaxinterp.nugraph import simulate  # noqa: E402

_TINY = ["--planar-features", "8", "--nexus-features", "4", "--iterations", "1"]
FIXTURES = Path(__file__).parent / "fixtures"


def tiny_set(folder):
    """6 small events: train 4, validation 1, test 1 (its only event), written to folder/tiny.gnn.h5, and a
    model folder (init params): (file, model folder, raw events)."""
    import jax

    from jaxinterp.nugraph import model, train
    from jaxinterp.nugraph.model import NuGraph2Config

    cfg = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5, max_hits_per_plane=60)
    raws = simulate.simulate(6, seed=5, config=cfg)
    names = [e.name for e in raws]
    path = hdf5.write_events(folder / "tiny.gnn.h5", raws,
                             splits={"train": names[:4], "validation": names[4:5], "test": names[5:]})
    mc = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
    train.save_model(folder / "model", model.init(jax.random.key(0), mc), mc, hdf5.compute_norm(raws),
                     {"command": "test"})
    return path, folder / "model", raws


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("tiny"))[:2]


def _main(argv, monkeypatch):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fill(folder: Path, files: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return _snapshot(folder)


EVAL_METRICS = json.dumps({"semantic_counts": [[1]], "split": "test", "inputs": {"file": "other.gnn.h5"}})
MODEL_JSON = json.dumps({"config": {}, "norm": {}, "converted_from": "official.ckpt"})


@pytest.mark.parametrize("files, held", [
    ({"metrics.json": EVAL_METRICS, "confusion_semantic_by_truth.png": "png"}, "['metrics.json']"),
    ({"model.npz": "npz", "model.json": MODEL_JSON}, "['model.npz', 'model.json']"),  # a convert/widen folder
])
def test_train_refuses_a_folder_of_another_command(tiny, tmp_path, monkeypatch, capsys, files, held):
    """Without run.json it was taken for a new run: an eval's metrics.json was replaced by the validation
    history at the first epoch's end, a converted or widened model by the run's model at its end."""
    path, _ = tiny
    out = tmp_path / "taken"
    before = _fill(out, files)
    assert _main(["nugraph", "train", str(path), "--out", str(out), "--epochs", "1", "--batch-size", "4", *_TINY],
                 monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"out_dir: {out} holds {held} but no run.json: the files of another command" in err
    assert _snapshot(out) == before  # nothing written, no run.json


def test_train_names_a_run_json_that_is_not_json(tiny, tmp_path, monkeypatch, capsys):
    path, _ = tiny
    before = _fill(tmp_path / "run", {"run.json": "{half"})
    assert _main(["nugraph", "train", str(path), "--out", str(tmp_path / "run"), "--batch-size", "4", *_TINY],
                 monkeypatch) == 2
    assert f"out_dir: {tmp_path / 'run' / 'run.json'} is not valid JSON" in capsys.readouterr().err
    assert _snapshot(tmp_path / "run") == before


def _edited_copy(src, dst: Path, edit) -> Path:
    """A copy of the processed file `src` at `dst`, with `edit(h5py.File)` applied to it."""
    dst.write_bytes(Path(src).read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_train_without_validation_needs_no_validation_split(tiny, tmp_path, monkeypatch, capsys):
    """--limit-val 0 ("no validation") still read /samples/validation: a file without one was refused."""
    from jaxinterp.nugraph import train
    from jaxinterp.nugraph.model import NuGraph2Config

    path, _ = tiny
    nov = _edited_copy(path, tmp_path / "noval.gnn.h5", lambda f: f.__delitem__("samples/validation"))
    logs = []
    res = train.train(nov, tmp_path / "run", config=train.TrainConfig(epochs=1, batch_size=4), max_steps=0,
                      model_config=NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1), limit_val=0,
                      progress=False, log=logs.append)
    assert res.steps == 0 and "validation: 0 events (skipped 0 events)" in logs[0]
    assert (tmp_path / "run" / "run.json").exists()
    # validation asked for: still an error, before anything is written
    assert _main(["nugraph", "train", str(nov), "--out", str(tmp_path / "run2"), *_TINY], monkeypatch) == 2
    assert "missing dataset '/samples/validation'" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def _eval(path, params, out, *extra):
    return ["nugraph", "eval", str(path), "--params", str(params), "--out", str(out), "--displays", "1", *extra]


@pytest.mark.parametrize("files, what", [
    # a training run's folder: its metrics.json (the validation history) was replaced
    ({"run.json": "{}", "metrics.json": json.dumps([{"epoch": 0}]), "model.npz": "npz"},
     "is a `nugraph train` run folder (it holds run.json), whose metrics.json is the run's validation history"),
    ({"run.json": "{}"}, "is a `nugraph train` run folder (it holds run.json)"),  # a run not yet validated
    ({"metrics.json": json.dumps([{"epoch": 0}])},
     "holds ['metrics.json'] (a training run's validation history), which this evaluation would overwrite"),
    ({"display_r1_sr1_evt5.png": "mine"}, "holds ['display_r1_sr1_evt5.png'] (not an evaluation's)"),
    ({"metrics.json": "{not json"}, "holds ['metrics.json'] (not an evaluation's)"),
    # another evaluation's results (another file): replaced before
    ({"metrics.json": EVAL_METRICS, "confusion_filter_by_truth.png": "png"},
     "holds the results of another evaluation (inputs {'file': 'other.gnn.h5'}), this one's are"),
])
def test_eval_refuses_a_folder_holding_other_results(tiny, tmp_path, monkeypatch, capsys, files, what):
    path, params = tiny
    out = tmp_path / "taken"
    before = _fill(out, files)
    assert _main(_eval(path, params, out, "--split", "all"), monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"out: {out} {what}" in err, err
    assert _snapshot(out) == before


def test_eval_repeats_into_its_own_folder_but_not_another_split(tiny, tmp_path, monkeypatch, capsys):
    path, params = tiny
    out = tmp_path / "eval"
    assert _main(_eval(path, params, out, "--split", "all"), monkeypatch) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["inputs"]["split"] == "all" and first["inputs"]["file"] == str(Path(path).resolve())
    assert _main(_eval(path, params, out, "--split", "all"), monkeypatch) == 0  # the same evaluation again
    again = json.loads((out / "metrics.json").read_text())
    assert again["semantic_counts"] == first["semantic_counts"] and again["inputs"] == first["inputs"]
    capsys.readouterr()
    before = _snapshot(out)
    assert _main(_eval(path, params, out, "--split", "validation"), monkeypatch) == 2  # replaced 'all''s before
    assert "holds the results of another evaluation" in capsys.readouterr().err
    assert _snapshot(out) == before
    # a model folder holds none of eval's files: its results may go beside the model
    mine = tmp_path / "model"
    _fill(mine, {})
    for f in ("model.npz", "model.json"):
        (mine / f).write_bytes((params / f).read_bytes())
    assert _main(_eval(path, mine, mine, "--split", "test"), monkeypatch) == 0
    assert (mine / "metrics.json").exists() and (mine / "model.npz").exists()


def test_eval_of_a_split_without_events_names_the_file_and_split(tiny, tmp_path, monkeypatch, capsys):
    path, params = tiny
    def no_test_events(f):
        del f["samples/test"]
        f.create_dataset("samples/test", data=np.array([], dtype=object), dtype=_STR)

    empty = _edited_copy(path, tmp_path / "empty_test.gnn.h5", no_test_events)
    out = tmp_path / "eval"
    assert _main(_eval(empty, params, out, "--split", "test"), monkeypatch) == 2
    assert (f"file: {empty}: expected at least one event to evaluate in split 'test', got none (skipped 0 events)"
            in capsys.readouterr().err)
    assert not out.exists()


def _trained_like(folder: Path) -> dict:
    return _fill(folder, {"run.json": "{}", "model.npz": "the run's", "model.json": "{}"})


def test_widen_refuses_a_run_folder_or_another_model(tiny, tmp_path, monkeypatch, capsys):
    _, params = tiny
    run = tmp_path / "run"
    before = _trained_like(run)
    assert _main(["nugraph", "widen", "--params", str(params), "--out", str(run)], monkeypatch) == 2
    assert f"out: {run} is a `nugraph train` run folder (it holds run.json)" in capsys.readouterr().err
    assert _snapshot(run) == before  # the run's model was replaced before
    wide = tmp_path / "wide"
    assert _main(["nugraph", "widen", "--params", str(params), "--out", str(wide)], monkeypatch) == 0
    assert _main(["nugraph", "widen", "--params", str(params), "--out", str(wide)], monkeypatch) == 0  # the same again
    capsys.readouterr()
    before = _snapshot(wide)
    assert _main(["nugraph", "widen", "--params", str(params), "--out", str(wide), "--factor", "3"], monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"out: {wide} holds ['model.npz', 'model.json'] of another model" in err and "factor 2" in err
    assert _snapshot(wide) == before


def test_convert_refuses_a_run_folder_or_another_model(tmp_path, monkeypatch, capsys):
    ckpt, h5 = FIXTURES / "nugraph2_reference.ckpt", FIXTURES / "nugraph2_events.gnn.h5"
    run = tmp_path / "run"
    before = _trained_like(run)
    assert _main(["nugraph", "convert", str(ckpt), str(run), "--norm", str(h5)], monkeypatch) == 2
    assert f"out: {run} is a `nugraph train` run folder" in capsys.readouterr().err
    assert _snapshot(run) == before
    other = tmp_path / "other"
    before = _fill(other, {"model.npz": "npz", "model.json": json.dumps({"widened_from": "x"})})
    assert _main(["nugraph", "convert", str(ckpt), str(other), "--norm", str(h5)], monkeypatch) == 2
    assert f"out: {other} holds ['model.npz', 'model.json'] of another model" in capsys.readouterr().err
    assert _snapshot(other) == before


@pytest.mark.parametrize("model_planes", [("u", "v"), ("u", "v", "y", "w"), ("u", "w", "y")])
def test_eval_refuses_a_model_of_other_planes(tiny, tmp_path, monkeypatch, capsys, model_planes):
    """A model of planes u, v ran on a u, v, y file's u and v alone, its figures leaving plane y's hits
    out, silently; the others failed on the first event ("no plane(s) ['w']"), naming neither file nor model."""
    import jax

    from jaxinterp.nugraph import model, train
    from jaxinterp.nugraph.model import NuGraph2Config

    path, _ = tiny
    mc = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1, planes=model_planes)
    norm = hdf5.read_info(path).norm
    norm = {p: norm.get(p, norm["u"]) for p in model_planes}
    train.save_model(tmp_path / "m", model.init(jax.random.key(0), mc), mc, norm)
    out = tmp_path / "eval"
    assert _main(_eval(path, tmp_path / "m", out, "--split", "all"), monkeypatch) == 2
    assert (f"file: {path} has planes ['u', 'v', 'y'], the model takes planes {list(model_planes)} (--params; the "
            "same planes expected)") in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


# --- predict / prepare: arguments that are not what they take --------------------------------------


def _params_and_event():
    import jax

    from jaxinterp.nugraph import model
    from jaxinterp.nugraph.model import NuGraph2Config
    from test_nugraph_graph import random_event

    mc = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
    return model.init(jax.random.key(0), mc), mc, random_event(np.random.default_rng(0), (4, 5, 6), 2, "a")


@pytest.mark.parametrize("entry, case, message", [
    # before: AttributeError 'NoneType' object has no attribute 'planes'
    ("predict", "config None", "predict: config: expected a NuGraph2Config, got NoneType"),
    ("predict", "config dict", "predict: config: expected a NuGraph2Config, got dict"),
    ("prepare", "config None", "prepare: config: expected a NuGraph2Config, got NoneType"),
    # before: read as the Event's fields, "events must be Event tuples, got dict"
    ("predict", "one event", "predict: events: expected a list of Events, got a single Event 'a' (use [event])"),
    ("prepare", "one event", "prepare: events: expected a list of Events, got a single Event 'a' (use [event])"),
    # before: TypeError 'NoneType' object is not iterable
    ("predict", "events None", "predict: events: expected a list of Events, got NoneType"),
    # before: AttributeError 'int' object has no attribute 'name'
    ("prepare", "an int", "prepare: events must be Event tuples, got int at index 0"),
    # before: TypeError BatchSizes.__new__() missing 2 required positional arguments
    ("prepare", "sizes short", "prepare: sizes: expected a graph.BatchSizes (integers ['hits', 'edges', 'nexus', "
                               "'sp', 'slots'], slots optional), got (64, 8)"),
    ("prepare", "sizes float", "prepare: sizes: expected a graph.BatchSizes"),
])
def test_predict_and_prepare_name_bad_arguments(entry, case, message):
    from jaxinterp.nugraph import predict

    params, mc, ev = _params_and_event()
    events = {"one event": ev, "events None": None, "an int": [1]}.get(case, [ev])
    config = {"config None": None, "config dict": {"planar_features": 8}}.get(case, mc)
    sizes = {"sizes short": (64, 8), "sizes float": (64.0, 8, 8, 8)}.get(case)
    with pytest.raises(ValueError, match=re.escape(message)):
        if entry == "predict":
            predict.predict(params, events, config=config)
        else:
            predict.prepare(events, config=config, sizes=sizes)


def test_prepare_still_takes_four_or_five_sizes():
    from jaxinterp.nugraph import graph, predict

    _, mc, ev = _params_and_event()
    need = graph.pick_sizes([ev], planes=mc.planes)
    for sizes in (need, tuple(need)[:4], list(need)):
        assert predict.prepare([ev], config=mc, sizes=sizes).x.shape[1] == need.hits


# --- evaluate / to_events / write_outputs / train: arguments that are not what they take ------------


def _tiny_model():
    from jaxinterp.nugraph import evaluate

    params, mc, ev = _params_and_event()
    return evaluate.Model(params, mc, {p: np.array([[0.0] * 4, [1.0] * 4], np.float32) for p in mc.planes}, {}), ev


@pytest.mark.parametrize("case, message", [
    # before: AttributeError 'dict' object has no attribute 'planes' (the Event read as its fields)
    ("one event", "evaluate: events: expected a list of Events, got a single Event 'a' (use [event])"),
    ("an int", "evaluate: events must be Event tuples, got int at index 1"),
    ("model None", "model: expected an evaluate.Model (as load_model returns it), got NoneType"),
])
def test_evaluate_names_bad_arguments(case, message):
    from jaxinterp.nugraph import evaluate

    m, ev = _tiny_model()
    events = {"one event": ev, "an int": [ev, 1]}.get(case, [ev])
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate.evaluate(None if case == "model None" else m, events)


@pytest.mark.parametrize("raws, message", [
    ([1], "raws: expected hdf5.RawEvent records (read_events'), got int at index 0"),
    (None, "raws: expected a list of hdf5.RawEvent, got NoneType"),
    ("r1_sr1_evt0", "raws: expected a list of hdf5.RawEvent, got str"),
])
def test_to_events_names_bad_arguments(raws, message):
    from jaxinterp.nugraph import evaluate

    m, _ = _tiny_model()
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate.to_events(raws, m)
    one = hdf5.read_events(FIXTURE).events[0]
    with pytest.raises(ValueError, match=re.escape("raws: expected a list of hdf5.RawEvent, got RawEvent")):
        evaluate.to_events(one, m)
    assert len(evaluate.to_events(iter([one]), m)) == 1


@pytest.mark.parametrize("displays", [-1, 1.5, "2"])
def test_write_outputs_refuses_a_display_count_that_is_not_one(tmp_path, displays):
    """-1 drew every display but the last (a slice [:-1]); 1.5 and '2' were TypeErrors from the slice."""
    from jaxinterp.nugraph import evaluate

    m, ev = _tiny_model()
    res = evaluate.EvalResult(None, None, [], 0.0)  # refused before any of it is read
    with pytest.raises(ValueError, match=re.escape(f"displays: expected a non-negative integer, got {displays!r}")):
        evaluate.write_outputs(tmp_path / "out", m, [ev], res, displays=displays)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw, message", [
    ({"config": {"epochs": 1}}, "config: expected a TrainConfig, got dict"),
    ({"model_config": None}, "model_config: expected a NuGraph2Config, got NoneType"),
])
def test_train_names_a_config_of_another_type(tmp_path, kw, message):
    """An AttributeError after the file was read, before."""
    from jaxinterp.nugraph import train

    with pytest.raises(ValueError, match=re.escape(message)):
        train.train(FIXTURE, tmp_path / "run", progress=False, log=lambda s: None, **kw)
    assert not (tmp_path / "run").exists()


# --- read_info: an event in two splits, or twice in one -------------------------------------------


@pytest.mark.parametrize("key, names, message", [
    # trained on and tested on: the test figures were inflated, silently
    ("samples/test", ["r1_sr1_evt7", "r1_sr1_evt0"], "'/samples/test' lists event 'r1_sr1_evt0', already in "
                                                     "'/samples/train'"),
    ("samples/validation", ["r1_sr1_evt6", "r1_sr1_evt6"], "'/samples/validation' lists event 'r1_sr1_evt6', "
                                                           "already in '/samples/validation'"),
])
def test_split_lists_that_overlap_are_a_value_error(tmp_path, key, names, message):
    path = _copy_fixture(tmp_path, _replace_dataset(key, np.array(names, dtype=object), _STR))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}; expected each event in at most one split")):
        hdf5.read_events(path, "train")
    with pytest.raises(ValueError, match=re.escape(message)):
        hdf5.read_info(path)


# --- eval --params: a model.json whose config or norm is not one -----------------------------------


@pytest.mark.parametrize("change, message", [
    ({"config": {"planar_features": "8"}}, "config: NuGraph2Config.planar_features: expected an integer >= 1, got '8'"),
    ({"config": {"planes": "uvy"}}, "config: NuGraph2Config.planes: expected a non-empty list of distinct names"),
    # numpy's "could not convert string to float: 'abc'", naming neither file nor plane, before
    ({"norm": {"u": "abc"}}, "norm['u']: expected a [2, 4] (mean, std) array of numbers, got abc"),
])
def test_eval_params_with_a_bad_config_or_norm_names_the_file(tiny, tmp_path, monkeypatch, capsys, change, message):
    path, params = tiny
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.npz").write_bytes((params / "model.npz").read_bytes())
    desc = json.loads((params / "model.json").read_text())
    for k, v in change.items():
        desc[k].update(v)
    (folder / "model.json").write_text(json.dumps(desc))
    out = tmp_path / "eval"
    assert _main(_eval(path, folder, out), monkeypatch) == 2
    assert f"params: {folder / 'model.json'} {message}" in capsys.readouterr().err
    assert not out.exists()
