"""Energy loss and range of charged particles in liquid argon, and the simulation's use of them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from jaxinterp.nugraph import simulate, stopping

M_MU, M_P = simulate.M_MU, simulate.M_P


def test_minimum_ionisation_is_the_pdg_value():
    # PDG, atomic and nuclear properties of liquid argon: <dE/dx>_min = 1.508 MeV cm^2/g (x 1.396 g/cm^3)
    t = np.geomspace(10.0, 1e5, 4000)
    dedx = stopping.dedx_mev_per_cm(t, M_MU)
    assert dedx.min() == pytest.approx(1.508 * 1.396, rel=2e-3)
    # at beta gamma ~ 3-4, as for any singly charged particle
    bg = np.sqrt((1 + t / M_MU) ** 2 - 1)
    assert 3.0 < bg[np.argmin(dedx)] < 4.0


def test_range_is_the_integral_of_the_inverse_stopping_power():
    def integral(t, mass, t_join):
        value, _ = quad(lambda e: 1 / float(stopping.dedx_mev_per_cm(e, mass)), t_join, t, limit=200)
        return float(stopping.csda_range_cm(t_join, mass)) + value

    for t in (20.0, 150.0, 500.0, 3000.0):  # the proton table itself: Bragg-Kleeman below 2 MeV
        assert float(stopping.csda_range_cm(t, M_P)) == pytest.approx(integral(t, M_P, 2.0), rel=1e-6)
    # a muon through the velocity scaling of that table: the mass in the largest energy transfer to an
    # electron is the proton's there, which shortens a muon's range by 0.07% at 20 MeV, 0.15% at 500 MeV,
    # 0.47% at 3 GeV (the simulation's neutrinos stop at 4 GeV)
    for t, rel in ((20.0, 1e-3), (150.0, 1e-3), (500.0, 2e-3), (3000.0, 5e-3)):
        exact = integral(t, M_MU, 2.0 * M_MU / M_P)
        assert exact * (1 - rel) < float(stopping.csda_range_cm(t, M_MU)) < exact


def test_kinetic_energy_inverts_the_range_and_ranges_scale_with_mass():
    t = np.array([0.05, 1.0, 5.0, 40.0, 250.0, 1200.0])
    for mass in (M_MU, simulate.M_PI, M_P):
        np.testing.assert_allclose(stopping.kinetic_mev(stopping.csda_range_cm(t, mass), mass), t, rtol=1e-6)
    # equal velocity, equal stopping power: R(T, M) = (M / M_p) R_p(T M_p / M)
    np.testing.assert_allclose(stopping.csda_range_cm(t, M_MU),
                               M_MU / M_P * stopping.csda_range_cm(t * M_P / M_MU, M_P), rtol=1e-12)


def test_a_relativistic_muon_ranges_out_at_minimum_ionising_loss():
    """The power law extrapolated from protons made a 500 MeV muon 554 cm long (0.9 MeV/cm on average).

    Averaged over a stopping track the loss is a little above the minimum (2.1 MeV/cm): the slow end
    near the Bragg peak and, at high energy, the relativistic rise add to it.
    """
    for t in (300.0, 500.0, 1000.0):
        r = float(stopping.csda_range_cm(t, M_MU))
        assert 2.15 < t / r < 2.5
    # protons stay heavily ionising: 100 MeV stops within 8 cm, 7 MeV/cm at the start
    assert 7.0 < float(stopping.csda_range_cm(100.0, M_P)) < 8.5
    assert float(stopping.dedx_mev_per_cm(100.0, M_P)) == pytest.approx(7.3, abs=0.2)


class _Count:
    """A stand-in for the simulation's deposit store that counts new owners by class."""

    def __init__(self):
        self.classes = []

    def new_owner(self, cls, inst):
        self.classes.append(cls)
        return len(self.classes) - 1

    def add(self, xyz, q, owner):
        pass


def test_a_stopped_negative_muon_decays_to_a_michel_26_percent_of_the_time():
    cfg = simulate.SimConfig()
    vertex = np.array([128.0, 0.0, 500.0])  # the middle of the TPC: a 60 MeV muon (~14 cm) stops inside
    rng = np.random.default_rng(0)
    n, michels = 1500, 0
    for _ in range(n):
        dep = _Count()
        simulate._muon(rng, dep, vertex, np.array([0.0, 0.0, 1.0]), 60.0, 1, cfg)
        michels += simulate.MICHEL in dep.classes
    assert simulate.MU_MINUS_DECAY_FRACTION == pytest.approx(0.258, abs=1e-3)
    # binomial: 0.258 +- 0.011 (1 sigma) for 1500 muons
    assert michels / n == pytest.approx(simulate.MU_MINUS_DECAY_FRACTION, abs=0.04)


def test_a_simulated_muon_track_is_as_long_as_its_range():
    cfg = simulate.SimConfig()
    rng = np.random.default_rng(1)
    dep = simulate._Deposits()
    vertex = np.array([128.0, 0.0, 100.0])
    simulate._muon(rng, dep, vertex, np.array([0.0, 0.0, 1.0]), 300.0, 1, cfg, michel_prob=0.0)
    xyz, _, _ = dep.arrays()
    path = np.linalg.norm(np.diff(np.vstack([vertex, xyz]), axis=0), axis=1).sum()
    assert path == pytest.approx(float(stopping.csda_range_cm(300.0, M_MU)), rel=1e-6)
