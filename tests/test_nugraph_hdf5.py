"""The processed NuGraph HDF5 format: the pynuml-written fixture, round trips, bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from jaxinterp.nugraph import hdf5
from jaxinterp.nugraph.event import PLANES, SEMANTIC_CLASSES, validate

FIXTURE = Path(__file__).parent / "fixtures" / "nugraph2_events.gnn.h5"


def _same_raw(a: hdf5.RawEvent, b: hdf5.RawEvent) -> None:
    assert (a.name, a.num_sp, a.y) == (b.name, b.num_sp, b.y)
    for p in PLANES:
        for field in hdf5.RawPlane._fields:
            va, vb = getattr(a.planes[p], field), getattr(b.planes[p], field)
            assert va.dtype == vb.dtype and va.shape == vb.shape and np.array_equal(va, vb), (a.name, p, field)
    assert a.extra.keys() == b.extra.keys()


def test_fixture_reads():
    info = hdf5.read_info(FIXTURE)
    assert info.planes == PLANES and info.semantic_classes == SEMANTIC_CLASSES
    assert info.event_classes == hdf5.EVENT_CLASSES
    assert [len(info.samples[s]) for s in hdf5.SPLITS] == [6, 1, 1]
    res = hdf5.read_events(FIXTURE)
    assert len(res.events) == 8 and res.skipped_line() == "skipped 0 events"
    with h5py.File(FIXTURE) as f:
        rec = f["dataset/r1_sr1_evt0"][()]
    ev0 = res.events[0]
    assert ev0.num_sp == 34 and ev0.y == int(rec["evt/y"])
    np.testing.assert_array_equal(ev0.planes["y"].pos, rec["y/pos"])
    np.testing.assert_array_equal(ev0.planes["u"].edge_index_nexus, rec["u_nexus_sp/edge_index"])
    # event 3, plane v: pynuml stored the empty nexus tensor as a scalar 0
    ev3 = res.events[3]
    assert ev3.planes["v"].edge_index_nexus.shape == (2, 0) and ev3.planes["v"].edge_index_nexus.dtype == np.int64
    # /datasize/train is what nugraph's generate_samples counted
    by_name = {e.name: e for e in res.events}
    assert [hdf5.datasize(by_name[n]) for n in info.samples["train"]] == info.datasize.tolist()


def test_every_fixture_record_reads_as_stored():
    """Every field of every event against the record h5py reads (the test above looks at event 0's
    y/pos and u nexus only; the round trip below writes back what was read, so a reader and writer
    that mix up two fields alike would pass it)."""
    res = hdf5.read_events(FIXTURE)
    with h5py.File(FIXTURE) as f:
        keys = list(f["dataset"])
        assert [e.name for e in res.events] == keys
        for ev, key in zip(res.events, keys):
            rec = f["dataset"][key][()]
            assert (ev.run, ev.subrun, ev.event) == tuple(int(rec[f"metadata/{m}"]) for m in ("run", "subrun", "event"))
            assert ev.num_sp == int(rec["sp/num_nodes"]) and ev.y == int(rec["evt/y"])
            for p in PLANES:
                got = ev.planes[p]
                stored = {"pos": f"{p}/pos", "x": f"{p}/x", "id": f"{p}/id", "y_semantic": f"{p}/y_semantic",
                          "y_instance": f"{p}/y_instance", "edge_index_plane": f"{p}_plane_{p}/edge_index",
                          "edge_index_nexus": f"{p}_nexus_sp/edge_index"}
                for field, name in stored.items():
                    want = rec[name]
                    if want.ndim == 0:  # pynuml's empty tensor (event 3, plane v nexus)
                        assert int(want) == 0 and getattr(got, field).size == 0, (key, p, field)
                        continue
                    np.testing.assert_array_equal(getattr(got, field), want, err_msg=f"{key} {p} {field}")
                assert len(got.pos) > 0 and got.edge_index_plane.shape[1] > 0, (key, p)  # not vacuous


def test_fixture_to_event_normalises_like_nugraph():
    info = hdf5.read_info(FIXTURE)
    events, res = hdf5.load_events(FIXTURE, "train")
    assert [e.name for e in events] == list(info.samples["train"])
    assert len(events) == len(res.events) == 6
    for raw, ev in zip(res.events, events):  # every event and plane (measured 3.0e-7 relative at most)
        validate(ev)
        for p in PLANES:
            mean, std = info.norm[p]
            expect = (np.concatenate([raw.planes[p].pos, raw.planes[p].x], 1).astype(np.float64) - mean) / std
            np.testing.assert_allclose(ev.planes[p].x, expect, rtol=1e-6, atol=1e-6, err_msg=f"{ev.name} {p}")
            assert ev.planes[p].x.dtype == np.float32
    # the norm the file holds is the mean/std over all hits (nugraph's generate_norm)
    norm = hdf5.compute_norm(hdf5.read_events(FIXTURE).events)
    for p in PLANES:
        np.testing.assert_allclose(norm[p], info.norm[p], rtol=1e-5)


def test_fixture_round_trip_is_identical(tmp_path):
    info = hdf5.read_info(FIXTURE)
    res = hdf5.read_events(FIXTURE)
    out = hdf5.write_events(tmp_path / "rt.gnn.h5", res.events, splits=info.samples, norm=info.norm)
    with h5py.File(FIXTURE) as a, h5py.File(out) as b:
        assert sorted(a["dataset"]) == sorted(b["dataset"])
        for name in a["dataset"]:
            ra, rb = a["dataset"][name][()], b["dataset"][name][()]
            assert ra.dtype == rb.dtype, name  # same fields, order, shapes, dtypes (empty -> scalar 0)
            for field in ra.dtype.names:
                assert np.array_equal(ra[field], rb[field]), (name, field)
        for key in ("planes", "semantic_classes", "event_classes", "samples/train", "samples/validation",
                    "samples/test", "datasize/train", "norm/u", "norm/v", "norm/y"):
            assert np.array_equal(a[key][()], b[key][()]), key
            assert a[key].dtype == b[key].dtype, key
    back = hdf5.read_events(out)
    for x, y in zip(res.events, back.events):
        _same_raw(x, y)


def _tiny_events(n=4):
    from jaxinterp.nugraph import simulate

    cfg = simulate.SimConfig(mean_energy_gev=0.25, max_energy_gev=0.4, max_hits_per_plane=150)
    return simulate.simulate(n, seed=7, config=cfg)


def test_simulated_round_trip(tmp_path):
    events = _tiny_events()
    out = hdf5.write_events(tmp_path / "sim.gnn.h5", events)
    info = hdf5.read_info(out)
    assert sum(len(v) for v in info.samples.values()) == len(events)
    back = hdf5.read_events(out)
    for x, y in zip(events, sorted(back.events, key=lambda e: e.event)):
        _same_raw(x, y)
    # no temporary file left beside it
    assert sorted(os.listdir(tmp_path)) == ["sim.gnn.h5"]


# --- bad input --------------------------------------------------------------------------------


def _copy_fixture(tmp_path, edit=None) -> Path:
    dst = tmp_path / "f.gnn.h5"
    dst.write_bytes(FIXTURE.read_bytes())
    if edit:
        with h5py.File(dst, "r+") as f:
            edit(f)
    return dst


def _edit_field(f, name, field, change=None):
    """Rewrites the record /dataset/{name} with `field` replaced by change(old value), or dropped."""
    rec = f[f"dataset/{name}"][()]
    values = {n: np.asarray(rec[n]) for n in rec.dtype.names}
    if change is None:
        del values[field]
    else:
        values[field] = np.asarray(change(values[field].copy()))
    new = np.zeros((), dtype=np.dtype([(n, v.dtype, v.shape) for n, v in values.items()]))
    for n, v in values.items():
        new[n] = v
    del f[f"dataset/{name}"]
    f.create_dataset(f"dataset/{name}", data=new)


def _replace_norm(plane, value):
    def edit(f):
        del f[f"norm/{plane}"]
        f.create_dataset(f"norm/{plane}", data=value)

    return edit


@pytest.mark.parametrize("case, edit, message", [
    ("missing planes", lambda f: f.__delitem__("planes"), "missing dataset '/planes'"),
    ("missing norm", lambda f: f.__delitem__("norm/v"), "missing dataset '/norm/v'"),
    ("missing event", lambda f: f.__delitem__("dataset/r1_sr1_evt2"), "missing dataset '/dataset/r1_sr1_evt2'"),
    ("missing field", lambda f: _edit_field(f, "r1_sr1_evt1", "v/pos"),
     "event 'r1_sr1_evt1', plane 'v': missing field 'v/pos'"),
    ("norm shape", _replace_norm("u", np.ones((2, 3))), r"'/norm/u': expected shape \[2, 4\] \(mean, std\), got \[2, 3\]"),
    ("norm zero std", _replace_norm("v", [[0, 0, 0, 0], [1, 0, 1, 1]]), r"'/norm/v': expected std .* > 0, got \[1.0, 0.0"),
    ("norm negative std", _replace_norm("y", [[0, 0, 0, 0], [1, 1, -1, 1]]), r"'/norm/y': expected std .* > 0"),
    ("norm nan", _replace_norm("u", [[np.nan, 0, 0, 0], [1, 1, 1, 1]]), r"'/norm/u': expected finite values"),
    ("norm inf", _replace_norm("u", [[0, 0, 0, 0], [1, np.inf, 1, 1]]), r"'/norm/u': expected finite values"),
    ("norm strings", _replace_norm("v", np.full((2, 4), b"1.0")), r"'/norm/v': expected numbers, got dtype \|S3"),
])
def test_bad_file_contents(tmp_path, case, edit, message):
    path = _copy_fixture(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        hdf5.load_events(path, "train")


def _set_at(index, value):
    def change(v):
        v[index] = value
        return v

    return change


# Corrupt records inside a readable file: always a ValueError naming the file, event, plane and field
# (skip-and-count is for well-formed events NuGraph2 cannot use, see the test below). Event 0 holds
# 42, 41 and 101 hits in planes u, v, y and 34 space points.
@pytest.mark.parametrize("field, change, message", [
    ("u/x", lambda v: np.concatenate([v, v[:, :1]], 1), r"expected shape \[42, 2\] \(42 hits, as 'u/pos'\), got \[42, 3\]"),
    ("v/pos", lambda v: v[:, :1], r"expected shape \[41, 2\] \(41 hits, as 'v/pos'\), got \[41, 1\]"),
    ("y/y_semantic", lambda v: v[:-1], r"expected shape \[101\] \(101 hits, as 'y/pos'\), got \[100\]"),
    ("u/id", lambda v: v[:3], r"expected shape \[42\] .* got \[3\]"),
    ("u/x", lambda v: v.astype("S8"), r"expected numbers \(<f4\), got dtype \|S8"),
    ("v/y_semantic", lambda v: v.astype("S2"), r"expected integers \(<i8\), got dtype \|S2"),
    ("v/y_semantic", lambda v: v.astype(np.float32), r"expected integers \(<i8\), got dtype float32"),
    ("y_plane_y/edge_index", lambda v: v.astype("S4"), r"expected integers \(<i8\), got dtype \|S4"),
    ("y/x", _set_at((5, 1), np.nan), r"expected finite values, got NaN or inf at 1 of 101 hits \(first: hit 5\)"),
    ("u/pos", _set_at((7, 0), np.inf), r"expected finite values, got NaN or inf at 1 of 42 hits \(first: hit 7\)"),
    ("u/y_semantic", _set_at(3, 5), r"labels must lie in \[-1, 4\] .* got 5"),
    ("u/y_semantic", _set_at(3, -2), r"labels must lie in \[-1, 4\] .* got -2"),
    ("u_plane_u/edge_index", _set_at((0, 4), 42), r"row 0 \(hits\) index 42 out of range \[0, 42\)"),
    ("v_plane_v/edge_index", _set_at((1, 0), -1), r"row 1 \(hits\) index -1 out of range \[0, 41\)"),
    ("y_nexus_sp/edge_index", _set_at((1, 2), 34), r"row 1 \(space points\) index 34 out of range \[0, 34\)"),
    ("y_nexus_sp/edge_index", _set_at((0, 2), 101), r"row 0 \(hits\) index 101 out of range \[0, 101\)"),
    ("u_plane_u/edge_index", lambda v: np.concatenate([v, v[:1]]), r"expected shape \[2, E\], got \[3, 226\]"),
    ("u_nexus_sp/edge_index", lambda v: v.ravel(), r"expected shape \[2, E\], got \[68\]"),
])
def test_corrupt_plane_field(tmp_path, field, change, message):
    path = _copy_fixture(tmp_path, lambda f: _edit_field(f, "r1_sr1_evt0", field, change))
    plane = field[0]
    where = re.escape(f"{path}: event 'r1_sr1_evt0', plane '{plane}', field '{field}': ")
    for read in (hdf5.read_events, hdf5.load_events):
        with pytest.raises(ValueError, match=where + message):
            read(path)


@pytest.mark.parametrize("field, value, message", [
    ("sp/num_nodes", np.bytes_(b"34"), r"expected an integer, got dtype \|S2"),
    ("sp/num_nodes", np.float64(34.0), r"expected an integer, got dtype float64"),
    ("sp/num_nodes", np.int64(-1), r"expected a count >= 0, got -1"),
    ("evt/y", np.int64(4), r"expected -1 or an index into event_classes \[0, 4\), got 4"),
    ("evt/y", np.int64(-2), r"expected -1 or an index .* got -2"),
])
def test_corrupt_event_field(tmp_path, field, value, message):
    path = _copy_fixture(tmp_path, lambda f: _edit_field(f, "r1_sr1_evt0", field, lambda v: value))
    with pytest.raises(ValueError, match=re.escape(f"{path}: event 'r1_sr1_evt0', field '{field}': ") + message):
        hdf5.read_events(path)


def test_raw_events_need_no_splits_or_norm(tmp_path):
    def strip(f):
        del f["samples"], f["norm"], f["datasize"]

    path = _copy_fixture(tmp_path, strip)
    assert len(hdf5.read_events(path).events) == 8  # raw records: fine
    with pytest.raises(ValueError, match="missing dataset '/samples/train'"):
        hdf5.read_events(path, "train")
    with pytest.raises(ValueError, match="missing dataset '/norm/u'"):
        hdf5.load_events(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "absent"])
def test_unreadable_file(tmp_path, damage):
    path = tmp_path / "bad.gnn.h5"
    if damage == "truncate":
        data = FIXTURE.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(ValueError, match="no such file" if damage == "absent" else "truncated or corrupt"):
        hdf5.read_events(path)


def _empty_plane(ev: hdf5.RawEvent) -> hdf5.RawEvent:
    rp = ev.planes["v"]
    empty = hdf5.RawPlane(rp.pos[:0], rp.x[:0], rp.id[:0], rp.y_semantic[:0], rp.y_instance[:0],
                          np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64))
    return ev._replace(planes={**ev.planes, "v": empty})


def _no_space_points(ev: hdf5.RawEvent) -> hdf5.RawEvent:
    planes = {p: rp._replace(edge_index_nexus=np.zeros((2, 0), np.int64)) for p, rp in ev.planes.items()}
    return ev._replace(planes=planes, num_sp=0)


def test_unusable_events_are_skipped_and_counted(tmp_path):
    res = hdf5.read_events(FIXTURE)
    events = list(res.events)
    events[1] = _empty_plane(events[1])
    events[4] = _no_space_points(events[4])
    path = hdf5.write_events(tmp_path / "odd.gnn.h5", events)
    # the empty plane is stored as scalar-0 fields, as pynuml does, and reads back empty
    with h5py.File(path) as f:
        assert f["dataset/r1_sr1_evt1"].dtype["v/pos"].shape == ()
    back = hdf5.read_events(path)
    assert len(back.events) == 6
    assert back.skipped == {"empty plane": ["r1_sr1_evt1"], "no space points": ["r1_sr1_evt4"]}
    assert back.skipped_line() == "skipped 2 events (1 empty plane, 1 no space points)"
    with pytest.raises(ValueError, match="event 'r1_sr1_evt1': empty plane"):
        hdf5.read_events(path, on_bad="error")
    with pytest.raises(ValueError, match="on_bad: expected 'skip' or 'error'"):
        hdf5.read_events(path, on_bad="ignore")
    with pytest.raises(ValueError, match="split: expected one of"):
        hdf5.read_events(path, "valid")


@pytest.mark.parametrize("case, change, message", [
    ("no events", lambda evs: [], "expected at least one event"),
    ("duplicate", lambda evs: [evs[0], evs[0]], "must be unique, 'r1_sr1_evt0' repeats"),
    ("edge out of range", lambda evs: [evs[0]._replace(planes={**evs[0].planes, "u": evs[0].planes["u"]._replace(
        edge_index_plane=evs[0].planes["u"].edge_index_plane + 1000)})],
     r"plane 'u', field 'u_plane_u/edge_index': row 0 \(hits\) index 1041 out of range \[0, 42\)"),
    ("nan feature", lambda evs: [evs[0]._replace(planes={**evs[0].planes, "v": evs[0].planes["v"]._replace(
        x=np.where(np.arange(41)[:, None] == 2, np.nan, evs[0].planes["v"].x))})],
     r"plane 'v', field 'v/x': expected finite values, got NaN or inf at 1 of 41 hits \(first: hit 2\)"),
    ("label out of range", lambda evs: [evs[0]._replace(planes={**evs[0].planes, "u": evs[0].planes["u"]._replace(
        y_semantic=evs[0].planes["u"].y_semantic + 5)})], r"field 'u/y_semantic': labels must lie in \[-1, 4\]"),
    ("short labels", lambda evs: [evs[0]._replace(planes={**evs[0].planes, "y": evs[0].planes["y"]._replace(
        y_semantic=evs[0].planes["y"].y_semantic[:-1])})], r"field 'y/y_semantic': expected shape \[101\]"),
    ("missing plane", lambda evs: [evs[0]._replace(planes={"u": evs[0].planes["u"], "v": evs[0].planes["v"]})],
     "missing plane 'y'"),
])
def test_write_rejects_bad_events_before_writing(tmp_path, case, change, message):
    events = change(hdf5.read_events(FIXTURE).events)
    target = tmp_path / "out.gnn.h5"
    target.write_bytes(b"previous content")
    with pytest.raises(ValueError, match=message):
        hdf5.write_events(target, events)
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.gnn.h5"]


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "out.gnn.h5"
    target.write_bytes(b"previous content")
    events = hdf5.read_events(FIXTURE).events
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def crash_after_three(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed while writing")
        return real(self, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        hdf5.write_events(target, events)
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.gnn.h5"]


_GOOD = np.array([[0.0] * 4, [1.0] * 4], np.float32)  # mean row, std row


@pytest.mark.parametrize("case, plane, value, message", [
    ("missing plane", "v", None, r"plane 'v' is missing"),
    ("flat", "u", _GOOD.ravel(), r"norm\['u'\]: expected shape \[2, 4\] \(mean, std\), got \[8\]"),
    ("transposed", "y", _GOOD.T, r"norm\['y'\]: expected shape \[2, 4\] \(mean, std\), got \[4, 2\]"),
    ("nan mean", "u", [[np.nan, 0, 0, 0], [1, 1, 1, 1]], r"norm\['u'\]: expected finite values"),
    ("inf std", "v", [[0, 0, 0, 0], [1, np.inf, 1, 1]], r"norm\['v'\]: expected finite values"),
    ("zero std", "y", [[0, 0, 0, 0], [1, 1, 0, 1]], r"norm\['y'\]: expected std .* > 0, got \[1.0, 1.0, 0.0, 1.0\]"),
    ("negative std", "u", [[0, 0, 0, 0], [1, -2, 1, 1]], r"norm\['u'\]: expected std .* > 0"),
])
def test_write_rejects_bad_norm_before_opening_the_file(tmp_path, case, plane, value, message):
    res = hdf5.read_events(FIXTURE)
    norm = dict(hdf5.read_info(FIXTURE).norm)
    if value is None:
        del norm[plane]
    else:
        norm[plane] = np.asarray(value)
    with pytest.raises(ValueError, match=message):
        hdf5.write_events(tmp_path / "out.gnn.h5", res.events, norm=norm)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kw, message", [
    (dict(splits={"train": ["r1_sr1_evt0"], "test": ["r1_sr1_evt0"]}),
     r"splits\['test'\]: event 'r1_sr1_evt0' is already in splits\['train'\]"),
    (dict(splits={"train": ["r1_sr1_evt1", "r1_sr1_evt1"]}), r"splits\['train'\]: event 'r1_sr1_evt1' is already in"),
    (dict(splits={"train": ["r1_sr1_evt0"], "val": ["r1_sr1_evt1"]}), r"splits: expected keys among .* got \['val'\]"),
    (dict(splits={"train": ["r1_sr1_evt0", "r1_sr1_evt1"]}, datasizes=[10]),
     r"datasizes: expected 2 non-negative integers .* got shape \[1\]"),
    (dict(splits={"train": ["r1_sr1_evt0"]}, datasizes=[-3]), r"datasizes: expected 1 non-negative integers"),
])
def test_write_rejects_splits_that_leak_or_get_lost(tmp_path, kw, message):
    """An event in two splits would be trained on and tested on; an unknown split name would drop
    its events silently; /datasize/train must pair with the training events for the sampler."""
    events = hdf5.read_events(FIXTURE).events
    with pytest.raises(ValueError, match=message):
        hdf5.write_events(tmp_path / "out.gnn.h5", events, **kw)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("limit", [-1, 2.5, True])
def test_read_limit_must_be_a_count(limit):
    with pytest.raises(ValueError, match="limit: expected None or a non-negative integer"):
        hdf5.read_events(FIXTURE, limit=limit)
    assert len(hdf5.read_events(FIXTURE, limit=0).events) == 0


def test_events_are_named_by_their_key_when_metadata_is_absent(tmp_path):
    """The metadata fields are optional (0 when absent): names come from the /dataset key, so such
    events keep distinct names (eval's displays, a write-back) instead of all being r0_sr0_evt0."""
    def drop_metadata(f):
        for name in f["dataset"]:
            for m in ("run", "subrun", "event"):
                _edit_field(f, name, f"metadata/{m}")

    path = _copy_fixture(tmp_path, drop_metadata)
    events = hdf5.read_events(path).events
    with h5py.File(path) as f:
        assert [e.name for e in events] == list(f["dataset"]) and {e.run for e in events} == {0}
    info = hdf5.read_info(path)
    back = hdf5.write_events(tmp_path / "back.gnn.h5", events, splits=info.samples, norm=info.norm)
    assert list(hdf5.read_info(back).samples["train"]) == list(info.samples["train"])
