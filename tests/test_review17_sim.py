"""Review 17: the LArTPC simulation, its hit finding and the planar edges built from its hits."""

from __future__ import annotations


import numpy as np
import pytest

from jaxinterp.nugraph import detector, edges, simulate


def _reference_edges(pos: np.ndarray) -> np.ndarray:
    """Both directions of every side of qhull's jittered triangles, as a set, sorted by (target, source)."""
    from scipy.spatial import Delaunay

    pairs = set()
    for a, b, c in Delaunay(pos, qhull_options="QJ").simplices.tolist():
        for j, i in ((a, b), (b, c), (c, a)):
            if j != i:
                pairs |= {(j, i), (i, j)}
    return np.array(sorted(pairs, key=lambda e: (e[1], e[0])), np.int64).reshape(-1, 2).T


@pytest.mark.parametrize("n, wires", [(5, 2), (4, 1000), (40, 6), (500, 80), (2000, 400)])
def test_delaunay_edges_are_every_triangle_side_both_ways_sorted_by_target(n, wires):
    rng = np.random.default_rng(n)
    pos = np.stack([rng.integers(0, wires, n) * 0.3, rng.uniform(0, 300, n)], 1)  # hits share wires
    got = edges.delaunay_edges(pos)
    assert got.dtype == np.int64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _reference_edges(pos))


def test_read_plane_splits_a_long_pulse_without_merging_it_into_the_next_wire():
    # hits were numbered by np.unique(pulse * 100000 + chunk): with a short max_hit_ticks a pulse's
    # 100000th chunk took the next pulse's number, so a deposit on wire 0 and one on wire 1 made one hit
    det = detector.Detector(tick_cm=1.0, max_hit_ticks=2.0 ** -10, diffusion_l_cm2_per_tick=0.0,
                            diffusion_t_cm2_per_tick=0.0, threshold_adc=0.0, noise_adc=0.0)
    x = np.concatenate([np.arange(0.0, 100.0, 4.0), [100000 * 2.0 ** -10], [10.0]])  # ticks after the trigger
    z = np.concatenate([np.full(26, 0.15), [0.45]])  # wire 0 (a pulse of 26 chunks), then wire 1
    xyz = np.stack([x, np.zeros(27), z], 1)
    r = detector.read_plane(det, 2, xyz, np.ones(27), np.arange(27), np.random.default_rng(0))
    assert r.wire.tolist() == [0] * 26 + [1]
    np.testing.assert_array_equal(r.dep_hit, np.arange(27))  # one deposit per hit, in (wire, time) order
    np.testing.assert_allclose(r.tick, det.trigger_tick + x)
    np.testing.assert_array_equal(r.owner, np.arange(27))


def _shower_charge_fraction(energy_mev: float, seed: int) -> float:
    dep = simulate._Deposits()
    simulate._em_cascade(np.random.default_rng(seed), dep, np.array([128.0, 0.0, 100.0]), np.array([0.0, 0.0, 1.0]),
                         energy_mev, photon=False, cls=simulate.SHOWER, inst=1, cfg=simulate.SimConfig())
    return float(dep.arrays()[1].sum() / energy_mev)


def test_a_high_energy_shower_keeps_all_its_particles():
    # the cascade stopped after 2000 particles: a 40 GeV electron (the command allows a mean of 20 GeV,
    # at most 80) left 35% of its energy as charge instead of the ~70% of a 1 GeV one
    low = np.mean([_shower_charge_fraction(1000.0, s) for s in range(3)])
    high = _shower_charge_fraction(40000.0, 0)
    assert 0.6 < low < 0.8 and high > 0.95 * low


@pytest.mark.parametrize("step", [0.31, 1.0, 20.0])
def test_a_tracking_step_longer_than_the_wire_pitch_is_refused(step):
    # 20 cm was taken: a shower electron of 31 MeV stepped 20 cm (42 MeV of loss), leaving a negative
    # energy and NaN directions (numpy's 'invalid value encountered in sqrt')
    with pytest.raises(ValueError, match=r"^SimConfig.step_cm: expected a tracking step of at most the detector's "
                                         rf"wire pitch \(0.3 cm\), got {step}$"):
        simulate.SimConfig(step_cm=step)


def test_a_step_up_to_the_wire_pitch_still_simulates():
    import warnings

    assert simulate.SimConfig(detector=detector.Detector(wire_pitch_cm=0.5), step_cm=0.5).step_cm == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN on the way
        ev = simulate.simulate(1, seed=0, config=simulate.SimConfig(step_cm=0.3, mean_energy_gev=0.3,
                                                                     max_energy_gev=0.6))[0]
    assert all(np.isfinite(rp.pos).all() and rp.pos.shape[0] >= 3 for rp in ev.planes.values())


@pytest.mark.parametrize("seed", [2**32, 2**32 + 5, 3 * 2**32 + 5, 2**70])
def test_a_seed_numpy_reads_as_two_words_is_refused(seed):
    with pytest.raises(ValueError, match=r"^seed: expected an integer in \[0, 2\*\*32\) .* got " + str(seed) + "$"):
        simulate.simulate(1, seed=seed)


def test_seeds_below_two_to_the_32_draw_their_own_events():
    # what the refused seeds did: event 0 of seed 5 + 3 * 2**32 was event 3 of seed 5
    assert np.random.default_rng([5 + 3 * 2**32, 0]).random() == np.random.default_rng([5, 3]).random()
    cfg = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5, max_hits_per_plane=80)
    a, b = simulate.simulate(1, seed=2**32 - 1, config=cfg)[0], simulate.simulate(1, seed=0, config=cfg)[0]
    assert not np.array_equal(a.planes["y"].pos[:3], b.planes["y"].pos[:3])


def test_simulate_command_refuses_a_large_seed_before_writing(tmp_path, capsys, monkeypatch):
    from jaxinterp import cli
    from jaxinterp.cli import main

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    out = tmp_path / "sim.gnn.h5"
    assert main(["nugraph", "simulate", "--events", "2", "--out", str(out), "--seed", str(2**32 + 1)]) == 2
    assert not out.exists() and "seed: expected an integer in [0, 2**32)" in capsys.readouterr().err



def test_noise_hits_lie_inside_the_readout_window():
    # noise was drawn up to the last hit's tick + 1: where the readout's end cut an event's tracks,
    # noise hits lay past it (tick 2000.77 of a 2000-tick readout)
    det = detector.Detector(trigger_tick=0.0, readout_ticks=2000)
    cfg = simulate.SimConfig(detector=det, noise_hits_per_plane=2000.0, mean_energy_gev=0.3, max_energy_gev=0.6)
    ticks = [rp.pos[:, 1] / det.tick_cm for ev in simulate.simulate(12, seed=0, config=cfg)
             for rp in ev.planes.values()]
    assert max(t.max() for t in ticks) > 1999  # events reach the end of the readout
    assert all(t.min() >= 0 and t.max() < det.readout_ticks for t in ticks)


def test_diffuse_blobs_at_a_face_of_the_tpc_stay_inside():
    # each blob's 1-3 points are spread 0.15 cm around it after the blob was placed inside: a blob at
    # the anode put charge behind it (x < 0, ticks before the trigger), one at the top above the TPC
    cfg = simulate.SimConfig()
    det = cfg.detector
    for center in ([0.0, 0.0, 500.0], [128.0, det.height_cm / 2, 500.0], [128.0, 0.0, det.length_cm]):
        dep = simulate._Deposits()
        simulate._blobs(np.random.default_rng(0), dep, np.array(center), 3000, cfg, spread_cm=0.5)
        xyz, q, _ = dep.arrays()
        assert xyz.shape[0] > 3000 and det.inside(xyz).all()

