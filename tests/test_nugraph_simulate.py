"""The LArTPC simulation: seeded, valid graphs, the classes it promises, its limits, its CLI."""

from __future__ import annotations

import numpy as np
import pytest

from jaxinterp.nugraph import detector, hdf5, simulate
from jaxinterp.nugraph.event import PLANES, validate

SMALL = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.6, max_hits_per_plane=250)


@pytest.fixture(scope="module")
def events():
    return simulate.simulate(12, seed=5, config=SMALL)


def test_seeded_and_independent_of_count(events):
    again = simulate.simulate(3, seed=5, config=SMALL)
    for a, b in zip(events[:3], again):
        for p in PLANES:
            np.testing.assert_array_equal(a.planes[p].pos, b.planes[p].pos)
            np.testing.assert_array_equal(a.planes[p].edge_index_nexus, b.planes[p].edge_index_nexus)
    other = simulate.simulate(1, seed=6, config=SMALL)[0]
    assert other.planes["y"].pos.shape != events[0].planes["y"].pos.shape or \
        not np.array_equal(other.planes["y"].pos, events[0].planes["y"].pos)


def test_events_are_valid_graphs(events):
    norm = hdf5.compute_norm(events)
    for raw in events:
        assert hdf5.check_event(raw) is None
        ev = hdf5.to_event(raw, norm)
        validate(ev)
        for i, p in enumerate(PLANES):
            rp = raw.planes[p]
            n = rp.pos.shape[0]
            assert SMALL.min_hits_per_plane <= n <= SMALL.max_hits_per_plane
            # hits ordered by (wire, time); positions on the wire grid
            wire = np.round(rp.pos[:, 0] / 0.3)
            assert np.all(np.diff(wire) >= 0)
            np.testing.assert_allclose(rp.pos[:, 0], wire * 0.3, atol=1e-4)
            # planar edges: both directions, no duplicates, no self loops
            e = rp.edge_index_plane
            pairs = set(map(tuple, e.T))
            assert len(pairs) == e.shape[1] and all((j, i) in pairs for i, j in pairs)
            assert np.all(e[0] != e[1])
            # each space point has exactly one hit in each plane
            assert np.array_equal(np.sort(rp.edge_index_nexus[1]), np.arange(raw.num_sp))
            assert np.all(rp.x[:, 0] > detector.Detector().threshold_adc)
            assert np.all(rp.x[:, 1] > 0)


def test_class_mix_covers_every_label():
    evs = simulate.simulate(30, seed=11, config=simulate.SimConfig(max_hits_per_plane=600))
    y = np.concatenate([e.planes[p].y_semantic for e in evs for p in PLANES])
    labels, counts = np.unique(y, return_counts=True)
    assert labels.tolist() == [-1, 0, 1, 2, 3, 4]
    frac = dict(zip(labels.tolist(), counts / counts.sum()))
    assert 0.1 < frac[-1] < 0.5 and frac[0] > 0.15 and frac[2] > 0.05 and frac[3] > 0.001
    # protons are heavily ionising: their hits carry more charge than MIP hits
    x = np.concatenate([e.planes[p].x for e in evs for p in PLANES])
    assert np.median(x[y == 1, 0]) > 1.5 * np.median(x[y == 0, 0])


def test_space_points_and_ghosts():
    rng = np.random.default_rng(0)
    dep_hits = [np.array([0, 0, 1, 1, 2, -1]), np.array([0, 0, 1, 2, 2, 0]), np.array([0, 1, 1, 2, 3, 3])]
    ticks = [np.array([10.0, 20.0, 30.0]), np.array([10.0, 20.0, 30.0]), np.array([10.0, 11.0, 20.0, 30.0])]
    sp = detector.space_points(dep_hits, ticks, efficiency=1.0, ghost_fraction=0.0, rng=rng)
    # deposit 5 misses plane u; the rest give 5 distinct triples
    assert sp.hits.tolist() == [[0, 0, 0], [0, 0, 1], [1, 1, 1], [1, 2, 2], [2, 2, 3]]
    assert not sp.ghost.any()
    # only plane y has two hits close in time (ticks 10, 11): a ghost swaps one for the other, and
    # the one swap that is not itself a true triple is (1, 1, 1) -> (1, 1, 0)
    seen = set()
    for seed in range(20):
        sp = detector.space_points(dep_hits, ticks, efficiency=1.0, ghost_fraction=1.0,
                                   rng=np.random.default_rng(seed))
        seen |= set(map(tuple, sp.hits[sp.ghost].tolist()))
        assert len(sp.hits) == len(np.unique(sp.hits, axis=0))
    assert seen == {(1, 1, 0)}


@pytest.mark.parametrize("kw, message", [
    (dict(n=-1), "n: expected a non-negative number"),
    (dict(n=1, seed=-1), r"seed: expected an integer in \[0, 2\*\*32\) \(.*\), got -1"),
    (dict(n=1, config=simulate.SimConfig(min_hits_per_plane=5000, max_hits_per_plane=5001), max_tries=2),
     "no event within the size limits after 2 tries"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        simulate.simulate(**kw)


@pytest.mark.parametrize("field, value, message", [
    ("step_cm", 0.0, "a positive finite number"),  # was a ZeroDivisionError deep in the tracking
    ("mean_energy_gev", float("nan"), "a positive finite number"),
    ("mean_cosmics", -1.0, "a non-negative finite number"),
    ("noise_hits_per_plane", float("inf"), "a non-negative finite number"),
    ("sp_efficiency", 0.0, r"a fraction in \(0, 1\]"),  # was "no event within the size limits" after 100 tries
    ("ghost_fraction", 1.5, r"a fraction in \[0, 1\]"),
    ("event_class_probs", (0.5, 0.3, 0.2), "4 non-negative probabilities .* summing to 1"),
    ("event_class_probs", (0.5, 0.5, 0.5, 0.5), "4 .* summing to 1"),
    ("event_class_probs", (1.2, -0.2, 0.0, 0.0), "4 non-negative probabilities"),
    ("min_hits_per_plane", -5, "a non-negative integer"),
    ("max_hits_per_plane", 2, r"None or an integer >= min_hits_per_plane \(3\)"),
])
def test_bad_sim_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"SimConfig.{field}: expected {message}"):
        simulate.SimConfig(**{field: value})


def test_simulate_command_writes_a_readable_file(tmp_path, capsys, monkeypatch):
    from jaxinterp import cli
    from jaxinterp.cli import main

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])  # only ours

    out = tmp_path / "sim.gnn.h5"
    assert main(["nugraph", "simulate", "--events", "6", "--out", str(out), "--seed", "3",
                 "--mean-energy", "0.3", "--max-hits", "200"]) == 0
    info = hdf5.read_info(out)
    assert sum(len(v) for v in info.samples.values()) == 6 and len(info.samples["test"]) == 1
    events, res = hdf5.load_events(out)
    assert len(events) == 6 and res.skipped_line() == "skipped 0 events"
    assert "wrote 6 events" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it before anything runs
        main(["nugraph", "simulate", "--events", "0", "--out", str(tmp_path / "x.h5")])
    assert exit_.value.code == 2 and not (tmp_path / "x.h5").exists()
    assert "argument --events: expected a positive integer, got 0" in capsys.readouterr().err
