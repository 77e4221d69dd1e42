"""Stopping power and CSDA range of heavy charged particles in liquid argon (numpy).

The mean energy loss is the Bethe formula with the Sternheimer density-effect correction, using the
PDG's constants for liquid argon (Z/A = 18/39.948, I = 188.0 eV, rho = 1.396 g/cm^3; density
effect -C = 5.2146, x0 = 0.2, x1 = 3.0, a = 0.19559, k = 3.0). The continuous-slowing-down range is its
inverse integrated over kinetic energy; below 2 MeV per proton mass, where the Bethe formula loses
its shell and Barkas corrections, the range follows Bragg-Kleeman (R = 0.0031 cm T^1.7 for protons).

One table is built for the proton; any other mass M uses the scaling of ranges with velocity,
R(T, M) = (M / M_p) R_p(T M_p / M): exact but for the mass in the largest energy transfer to an
electron, which shortens a muon's range by 0.15% at 500 MeV and 0.5% at 3 GeV. This
makes a 500 MeV muon range out in ~2.2 m (a Bragg-Kleeman power law extrapolated from protons gives
5.5 m) and a minimum-ionising particle lose ~2.1 MeV/cm.

Names: T kinetic energy (MeV), R range (cm), M mass (MeV).
"""

from __future__ import annotations

import functools

import numpy as np

M_P = 938.272  # proton mass, MeV
M_E = 0.51100  # electron mass, MeV
K_BETHE = 0.307075  # 4 pi N_A r_e^2 m_e c^2, MeV cm^2 / mol
Z_OVER_A = 18.0 / 39.948  # argon, mol / g
RHO_LAR = 1.396  # g / cm^3
I_LAR = 188.0e-6  # mean excitation energy, MeV
# Sternheimer density-effect parameters of liquid argon (PDG atomic and nuclear properties)
_C_BAR, _X0, _X1, _A, _K = 5.2146, 0.2, 3.0, 0.19559, 3.0
# below this proton-equivalent kinetic energy the range is Bragg-Kleeman's
_T_JOIN = 2.0
_BK_ALPHA, _BK_POWER = 0.0031, 1.7


def _density_effect(bg: np.ndarray) -> np.ndarray:
    x = np.log10(bg)
    two_ln10_x = 2 * np.log(10) * x
    mid = two_ln10_x - _C_BAR + _A * np.power(np.clip(_X1 - x, 0, None), _K)
    return np.where(x >= _X1, two_ln10_x - _C_BAR, np.where(x >= _X0, mid, 0.0))


def dedx_mev_per_cm(t: np.ndarray | float, mass: float) -> np.ndarray:
    """Mean energy loss -dE/dx (MeV/cm) of a singly charged particle of kinetic energy `t` in LAr."""
    t = np.asarray(t, np.float64)
    gamma = 1 + t / mass
    beta2 = 1 - 1 / gamma ** 2
    bg2 = beta2 * gamma ** 2
    w_max = 2 * M_E * bg2 / (1 + 2 * gamma * M_E / mass + (M_E / mass) ** 2)
    log_term = 0.5 * np.log(2 * M_E * bg2 * w_max / I_LAR ** 2)
    return K_BETHE * Z_OVER_A * RHO_LAR / beta2 * (log_term - beta2 - _density_effect(np.sqrt(bg2)) / 2)


@functools.lru_cache(maxsize=1)
def _proton_table() -> tuple[np.ndarray, np.ndarray]:
    """log T and log R of protons on a grid from T_JOIN to 1e6 MeV."""
    log_t = np.linspace(np.log(_T_JOIN), np.log(1e6), 20001)
    f = np.exp(log_t) / dedx_mev_per_cm(np.exp(log_t), M_P)  # dR / dlog T
    r = _BK_ALPHA * _T_JOIN ** _BK_POWER + np.concatenate(
        [[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(log_t))])
    return log_t, np.log(r)


def csda_range_cm(t: np.ndarray | float, mass: float) -> np.ndarray:
    """Range (cm) of a particle of mass `mass` and kinetic energy `t` (MeV) in liquid argon."""
    log_t, log_r = _proton_table()
    tp = np.maximum(np.asarray(t, np.float64), 0.0) * (M_P / mass)
    low = _BK_ALPHA * np.power(tp, _BK_POWER)
    high = np.exp(np.interp(np.log(np.maximum(tp, _T_JOIN)), log_t, log_r))
    return (mass / M_P) * np.where(tp < _T_JOIN, low, high)


def kinetic_mev(r: np.ndarray | float, mass: float) -> np.ndarray:
    """Kinetic energy (MeV) that ranges out in `r` cm of liquid argon: the inverse of `csda_range_cm`."""
    log_t, log_r = _proton_table()
    rp = np.maximum(np.asarray(r, np.float64), 1e-6) * (M_P / mass)
    low = np.power(rp / _BK_ALPHA, 1 / _BK_POWER)
    high = np.exp(np.interp(np.log(np.maximum(rp, np.exp(log_r[0]))), log_r, log_t))
    return (mass / M_P) * np.where(rp < np.exp(log_r[0]), low, high)
