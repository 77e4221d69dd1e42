"""Review 18: the LArTPC data path (atomic writes through links and of long names, `nugraph simulate`)."""

from __future__ import annotations

import os

import pytest

from jaxinterp import atomic
from test_review14_nugraph import _cli


# ---------------------------------------------------------------------------------------------
# atomic writes


@pytest.mark.parametrize("write", [
    lambda p: atomic.write_text(p, "new"),
    lambda p: _by_name(p, b"new"),
], ids=["write_text", "atomic_path"])
def test_a_write_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path, write):
    """The temporary was renamed onto the link itself: the link became a regular file with the new
    content and its target kept the old one."""
    real = tmp_path / "data" / "metrics.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "latest.json"
    link.symlink_to(os.path.join("data", "metrics.json"))  # relative, as `ln -s` makes them
    write(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("data", "metrics.json")
    assert real.read_text() == "new" and link.read_text() == "new"
    assert (real.stat().st_mode & 0o777) == 0o600  # the target's permissions kept
    assert sorted(os.listdir(tmp_path)) == ["data", "latest.json"]  # no temporary left anywhere
    assert os.listdir(real.parent) == ["metrics.json"]


def _by_name(path, data: bytes):
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def test_a_chain_of_links_and_a_dangling_link_are_written_through(tmp_path):
    real = tmp_path / "real.txt"
    (tmp_path / "b").symlink_to(real)  # dangling: open(path, "w") creates the target
    (tmp_path / "a").symlink_to(tmp_path / "b")
    atomic.write_text(tmp_path / "a", "first")
    assert real.read_text() == "first" and (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    atomic.write_text(tmp_path / "a", "second")
    assert real.read_text() == "second" and sorted(os.listdir(tmp_path)) == ["a", "b", "real.txt"]


def test_a_symbolic_link_loop_is_a_value_error_and_nothing_is_written(tmp_path):
    (tmp_path / "x").symlink_to(tmp_path / "y")
    (tmp_path / "y").symlink_to(tmp_path / "x")
    with pytest.raises(ValueError, match="symbolic link loop"):
        atomic.write_text(tmp_path / "x", "data")
    assert sorted(os.listdir(tmp_path)) == ["x", "y"] and (tmp_path / "x").is_symlink()


@pytest.mark.parametrize("name", ["a" * 251 + ".npy", "é" * 125 + ".h5", "b." + "c" * 253])
def test_a_target_name_near_the_length_limit_is_written(tmp_path, name):
    """The temporary was '.{name}.{8 hex}.tmp{suffix}': 18 bytes and the suffix over the name, so a
    name the file system takes (<= 255 bytes) failed on its temporary with ENAMETOOLONG."""
    assert len(os.fsencode(name)) <= 255
    target = tmp_path / name
    with atomic.atomic_path(target) as tmp:
        assert len(os.fsencode(tmp.name)) <= 80
        assert tmp.name.startswith(".") and ".tmp" in tmp.name
        if len(os.fsencode(target.suffix)) <= 16:  # a format's suffix is kept for writers that read it
            assert tmp.suffix == target.suffix
        tmp.write_bytes(b"long name")
    assert target.read_bytes() == b"long name" and os.listdir(tmp_path) == [name]


def test_temporary_names_are_random_beside_the_target(tmp_path):
    seen = set()
    for _ in range(20):
        with atomic.atomic_path(tmp_path / "out.bin") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
            seen.add(tmp.name)
            tmp.write_bytes(b"x")
    assert len(seen) == 20


# ---------------------------------------------------------------------------------------------
# nugraph simulate --run


def test_simulate_run_help_says_it_only_names_the_events(capsys):
    """--run only renames events (r{R}_sr1_evt{i}): the same --seed with another --run is the same
    events. That stays (held-out sets and shipped metrics depend on which events a seed makes); the
    help said only 'run number of the events', which reads as another set of events."""
    from jaxinterp import cli

    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["nugraph", "simulate", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width
    assert ("--run RUN run number written into the events' metadata and names (r{run}_sr1_evt{i}); it only names "
            "them: the events depend on --seed alone, so the same --seed with another --run gives the same "
            "events under other names (use another --seed for new events)") in text


def test_the_same_seed_with_another_run_gives_the_same_events_renamed():
    import numpy as np

    from jaxinterp.nugraph import simulate

    cfg = simulate.SimConfig(max_hits_per_plane=150)
    a, b = simulate.simulate(2, seed=3, config=cfg, run=1), simulate.simulate(2, seed=3, config=cfg, run=9)
    assert [e.name for e in a] == ["r1_sr1_evt0", "r1_sr1_evt1"]
    assert [e.name for e in b] == ["r9_sr1_evt0", "r9_sr1_evt1"]
    for ea, eb in zip(a, b):
        assert (ea.num_sp, ea.y, ea.event) == (eb.num_sp, eb.y, eb.event)
        for p in ea.planes:
            for x, y in zip(ea.planes[p], eb.planes[p]):
                np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------
# nugraph simulate streams its events to the file


SIM_ARGS = ["--seed", "4", "--max-hits", "200", "--run", "7"]


def _numpy_norm(events, planes):
    """The norm as `compute_norm` computed it before the streaming one: float64 mean and std of every
    hit of the plane at once (numpy's two passes), then float32."""
    import numpy as np

    norm = {}
    for p in planes:
        feats = np.concatenate([np.concatenate([e.planes[p].pos, e.planes[p].x], 1) for e in events]).astype(np.float64)
        std = feats.std(axis=0)
        norm[p] = np.stack([feats.mean(axis=0), np.where(std > 0, std, 1.0)]).astype(np.float32)
    return norm


def _datasets(path) -> dict:
    """Every dataset of an HDF5 file: name -> (dtype, shape, value)."""
    import h5py

    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, (obj.dtype, obj.shape, obj[()]))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same_datasets(a: dict, b: dict):
    import numpy as np

    assert sorted(a) == sorted(b)
    for name in a:
        (da, sa, va), (db, sb, vb) = a[name], b[name]
        assert (da, sa) == (db, sb), name
        if da.names:  # an event's compound record: field by field, bit for bit
            for field in da.names:
                np.testing.assert_array_equal(va[field], vb[field], err_msg=f"{name} {field}")
        else:
            np.testing.assert_array_equal(va, vb, err_msg=name)


def test_simulate_writes_the_file_the_in_memory_writer_writes(tmp_path, monkeypatch, capsys):
    """The streamed command's file, dataset by dataset, is the one writing the list of all events
    wrote (the old command): the same events, splits, data sizes, and the norm numpy computes over
    all hits at once (here equal to the last float32 bit; `NormStats` says when it may differ by 1 ulp)."""
    from jaxinterp.nugraph import hdf5, simulate

    out = tmp_path / "sim.gnn.h5"
    assert _cli(["nugraph", "simulate", "--events", "30", "--out", str(out), *SIM_ARGS], monkeypatch) == 0
    printed = capsys.readouterr().out
    events = simulate.simulate(30, seed=4, config=simulate.SimConfig(max_hits_per_plane=200), run=7)
    ref = hdf5.write_events(tmp_path / "ref.gnn.h5", events, norm=_numpy_norm(events, hdf5.PLANES))
    _assert_same_datasets(_datasets(out), _datasets(ref))
    stats = simulate.summary(events)
    assert f"wrote 30 events to {out} (train 28, validation 1, test 1)" in printed
    assert "class mix of hits: " + ", ".join(f"{k} {v:.1%}" for k, v in stats.class_mix.items()) in printed


def test_simulate_writes_each_event_before_making_the_next(tmp_path, monkeypatch):
    """`nugraph simulate` kept every event in a list until the end (the norm and the splits were computed
    over the list): memory grew without bound with --events. Now event i is in the file before event
    i + 1 is simulated."""
    import h5py

    from jaxinterp.nugraph import simulate

    log = []
    make, create = simulate.simulate_event, h5py.Group.create_dataset

    def made(rng, cfg, *, event=0, **kw):
        ev = make(rng, cfg, event=event, **kw)
        if ev is not None:
            log.append(("made", event))
        return ev

    def created(self, name, *a, **kw):
        if name.startswith("dataset/"):
            log.append(("written", int(name.rsplit("evt", 1)[1])))
        return create(self, name, *a, **kw)

    monkeypatch.setattr(simulate, "simulate_event", made)
    monkeypatch.setattr(h5py.Group, "create_dataset", created)
    assert _cli(["nugraph", "simulate", "--events", "5", "--out", str(tmp_path / "s.h5"), *SIM_ARGS], monkeypatch) == 0
    assert log == [(what, i) for i in range(5) for what in ("made", "written")]


# ---------------------------------------------------------------------------------------------
# hdf5.write_event_stream, simulate.stream


def _fixture():
    from conftest import FIXTURES
    from jaxinterp.nugraph import hdf5

    path = FIXTURES / "nugraph2_events.gnn.h5"
    return hdf5.read_info(path), hdf5.read_events(path).events


def test_write_event_stream_writes_what_write_events_writes(tmp_path):
    from jaxinterp.nugraph import hdf5

    info, events = _fixture()
    names = [e.name for e in events]
    for splits in (info.samples, None):
        a = hdf5.write_events(tmp_path / "list.h5", events, splits=splits)
        b = hdf5.write_event_stream(tmp_path / "stream.h5", iter(events), names, splits=splits)
        _assert_same_datasets(_datasets(a), _datasets(b))
    norm = hdf5.compute_norm(iter(events))  # any iterable, once through
    for p in hdf5.PLANES:
        np_norm = _numpy_norm(events, hdf5.PLANES)[p]
        assert norm[p].tobytes() == np_norm.tobytes(), (p, norm[p], np_norm)


def _generator(events, log):
    for ev in events:
        log.append(ev.name)
        yield ev


def test_write_event_stream_checks_names_and_splits_before_taking_an_event(tmp_path):
    from jaxinterp.nugraph import hdf5

    _, events = _fixture()
    names = [e.name for e in events]
    target = tmp_path / "out.h5"
    cases = [([], None, "names: expected the names of at least one event, got none"),
             ([names[0], names[0]], None, f"must be unique, {names[0]!r} repeats"),
             (["a/b"], None, "usable as an HDF5 dataset name"),
             (names, {"train": ["nope"]}, r"splits\['train'\]: names not among the events: \['nope'\]"),
             (names, {"training": names}, "splits: expected keys among")]
    for lst, splits, message in cases:
        log = []
        with pytest.raises(ValueError, match=message):
            hdf5.write_event_stream(target, _generator(events, log), lst, splits=splits)
        assert log == [] and os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="expected a file name to write, got the folder"):
        hdf5.write_event_stream(tmp_path, iter(events), names)


def _bad_x(ev):
    import numpy as np

    p = next(iter(ev.planes))
    x = ev.planes[p].x.copy()
    x[0, 0] = np.nan
    return ev._replace(planes={**ev.planes, p: ev.planes[p]._replace(x=x)})


@pytest.mark.parametrize("case", ["order", "fewer", "more", "malformed"])
def test_write_event_stream_refuses_events_the_names_did_not_announce_and_keeps_the_old_file(tmp_path, case):
    from jaxinterp.nugraph import hdf5

    _, events = _fixture()
    names = [e.name for e in events]
    stream, message = {
        "order": (events[1:2] + events[:1] + events[2:], f"expected event 0 named {names[0]!r} \\(names' order\\), "
                                                           f"got {names[1]!r}"),
        "fewer": (events[:-1], f"expected {len(events)} events \\(as names lists\\), got {len(events) - 1}"),
        "more": (events + [events[0]._replace(event=999, key="extra")], f"expected {len(events)} events "
                                                                         f"\\(as names lists\\), got more"),
        "malformed": (events[:2] + [_bad_x(events[2])] + events[3:], f"event {names[2]!r}, plane"),
    }[case]
    target = tmp_path / "out.h5"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match=message):
        hdf5.write_event_stream(target, iter(stream), names)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.h5"]


def test_stream_checks_its_arguments_when_called_and_yields_simulates_events():
    import numpy as np

    from jaxinterp.nugraph import simulate

    for kw, message in (({"n": -1}, "n: expected a non-negative number of events"),
                        ({"n": 2, "run": -1}, "run: expected a non-negative integer"),
                        ({"n": 2, "config": None}, "config: expected a simulate.SimConfig")):
        with pytest.raises(ValueError, match=message):
            simulate.stream(**kw)  # not only once iterated
    cfg = simulate.SimConfig(max_hits_per_plane=150)
    got, want = list(simulate.stream(3, seed=2, config=cfg)), simulate.simulate(3, seed=2, config=cfg)
    assert [e.name for e in got] == [e.name for e in want] == ["r1_sr1_evt0", "r1_sr1_evt1", "r1_sr1_evt2"]
    for a, b in zip(got, want):
        for p in a.planes:
            np.testing.assert_array_equal(a.planes[p].x, b.planes[p].x)


def test_summary_stats_are_the_summary_over_all_hits_at_once():
    import numpy as np

    from jaxinterp.nugraph import simulate
    from jaxinterp.nugraph.event import SEMANTIC_CLASSES

    _, events = _fixture()
    got = simulate.summary(iter(events))
    y = np.concatenate([e.planes[p].y_semantic for e in events for p in e.planes])
    names = ["background"] + list(SEMANTIC_CLASSES)
    assert got.class_mix == {names[k + 1]: float(np.mean(y == k)) for k in range(-1, len(SEMANTIC_CLASSES))}
    hits = np.array([np.mean([e.planes[p].pos.shape[0] for p in e.planes]) for e in events])
    np.testing.assert_array_equal(got.hits_percentiles, np.percentile(hits, [0, 10, 50, 90, 100]))
    np.testing.assert_array_equal(got.space_points, [e.num_sp for e in events])
    with pytest.raises(ValueError, match="expected at least one event to summarise"):
        simulate.summary(iter([]))
