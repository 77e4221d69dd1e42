"""A MicroBooNE-like LArTPC readout: energy deposits -> hits per wire plane -> space points.

Geometry (MicroBooNE): x is the drift coordinate (0..256 cm), y vertical (-116.5..116.5 cm), z along
the beam (0..1037 cm). Three wire planes with 0.3 cm pitch: u and v wires at +-60 degrees from
vertical (induction), y wires vertical (collection, so its wire number measures z). One time tick is
0.5 us, in which electrons drift 0.055 cm.

Deposits are points of ionisation charge (MeV equivalent after recombination). Each plane groups
the charge arriving on a wire into hits the way a hit finder fits pulses: a new hit when the wire
changes, when the charge has a gap in time, or when a pulse grows longer than a few widths. A hit
has the charge-weighted peak time, the integral (ADC) and the rms (ticks: pulse shaping, diffusion
and the spread of its charge); it takes the class of the particle that put the most charge in it.
Space points are the distinct (u, v, y) hit triples that one deposit lands in, thinned by an
efficiency, plus ghosts: a true triple with one plane's hit swapped for another hit at the same time
(the ambiguity real 3D matching suffers from).

Axis names: D deposits, H hits of a plane, K space points.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxinterp import checks


@dataclasses.dataclass(frozen=True)
class Detector:
    drift_cm: float = 256.0
    height_cm: float = 233.0
    length_cm: float = 1037.0
    wire_pitch_cm: float = 0.3
    tick_cm: float = 0.055  # drift per 0.5 us tick at 0.11 cm/us
    plane_angles_deg: tuple[float, ...] = (60.0, -60.0, 0.0)  # u, v, y: wire direction from vertical
    trigger_tick: float = 800.0
    readout_ticks: int = 6400
    adc_per_mev: float = 290.0  # a MIP crossing one 0.3 cm pitch gives ~130 ADC, as in MicroBooNE data
    lifetime_ticks: float = 20000.0  # 10 ms electron lifetime
    shaping_ticks: tuple[float, ...] = (3.0, 3.0, 2.2)  # induction pulses are wider than collection
    diffusion_l_cm2_per_tick: float = 6.2e-6 * 0.5  # D_L = 6.2 cm^2/s
    diffusion_t_cm2_per_tick: float = 16.0e-6 * 0.5  # D_T = 16 cm^2/s
    gap_ticks: float = 5.0  # charge separated by more than this in time is a new hit
    max_hit_ticks: float = 14.0  # a long pulse (track along the drift) is split into hits this long
    threshold_adc: float = 16.0
    noise_adc: float = 3.0
    gain_spread: float = 0.05

    def __post_init__(self):
        """ValueError naming the field for a geometry or readout setting the simulation cannot use."""
        def number(v) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v))

        def need(ok: bool, field: str, expected: str):
            if not ok:
                raise ValueError(f"Detector.{field}: expected {expected}, got {getattr(self, field)!r}")

        for field in ("drift_cm", "height_cm", "length_cm", "wire_pitch_cm", "tick_cm", "adc_per_mev",
                      "lifetime_ticks", "gap_ticks", "max_hit_ticks"):
            v = getattr(self, field)
            need(number(v) and v > 0, field, "a positive finite number")
        for field in ("trigger_tick", "diffusion_l_cm2_per_tick", "diffusion_t_cm2_per_tick", "threshold_adc",
                      "noise_adc", "gain_spread"):
            v = getattr(self, field)
            need(number(v) and v >= 0, field, "a non-negative finite number")
        need(checks.is_integer(self.readout_ticks) and self.readout_ticks > 0, "readout_ticks", "a positive integer")
        angles = self.plane_angles_deg
        need(isinstance(angles, (tuple, list)) and len(angles) > 0 and all(number(a) and abs(a) <= 90 for a in angles),
             "plane_angles_deg", "one wire angle per plane, in degrees from vertical within [-90, 90]")
        shaping = self.shaping_ticks
        need(isinstance(shaping, (tuple, list)) and len(shaping) == len(angles)
             and all(number(t) and t > 0 for t in shaping), "shaping_ticks",
             f"one positive pulse width per plane ({len(angles)}, as plane_angles_deg)")

    def wire_coordinate(self, plane: int, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """cm across the wires of `plane` (0 at the first wire)."""
        a = np.deg2rad(self.plane_angles_deg[plane])
        offset = abs(np.sin(a)) * self.height_cm / 2
        return z * np.cos(a) - y * np.sin(a) + offset

    def num_wires(self, plane: int) -> int:
        a = np.deg2rad(self.plane_angles_deg[plane])
        span = self.length_cm * abs(np.cos(a)) + self.height_cm * abs(np.sin(a))
        return int(span / self.wire_pitch_cm) + 1

    def inside(self, xyz: np.ndarray, margin: float = 0.0) -> np.ndarray:
        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        return ((x >= margin) & (x <= self.drift_cm - margin) & (np.abs(y) <= self.height_cm / 2 - margin)
                & (z >= margin) & (z <= self.length_cm - margin))


class PlaneReadout(NamedTuple):
    wire: np.ndarray  # [H] int
    tick: np.ndarray  # [H] float: peak time
    integral: np.ndarray  # [H] float: ADC
    rms: np.ndarray  # [H] float: ticks
    owner: np.ndarray  # [H] int: particle with the most charge, -1 for noise hits
    dep_hit: np.ndarray  # [D] int: hit each deposit landed in, -1 if none (below threshold, off the plane)


def _segment_starts(new: np.ndarray) -> np.ndarray:
    """For a boolean 'starts a new run' vector, the index where each element's run starts."""
    idx = np.where(new, np.arange(new.size), 0)
    return np.maximum.accumulate(idx)


def read_plane(det: Detector, plane: int, xyz: np.ndarray, q: np.ndarray, owner: np.ndarray,
               rng: np.random.Generator) -> PlaneReadout:
    """Hits of one plane from deposits xyz [D,3] with charge q [D] (MeV eq.) owned by particles owner [D]."""
    x = xyz[:, 0]
    drift_ticks = np.maximum(x, 0.0) / det.tick_cm
    q = q * np.exp(-drift_ticks / det.lifetime_ticks)
    sig_l = np.sqrt(2 * det.diffusion_l_cm2_per_tick * drift_ticks) / det.tick_cm  # ticks
    sig_t = np.sqrt(2 * det.diffusion_t_cm2_per_tick * drift_ticks)  # cm
    w = det.wire_coordinate(plane, xyz[:, 1], xyz[:, 2]) + rng.normal(0, 1, x.size) * sig_t
    t = det.trigger_tick + x / det.tick_cm + rng.normal(0, 1, x.size) * 0.5 * sig_l
    wire = np.floor(w / det.wire_pitch_cm).astype(np.int64)
    ok = (wire >= 0) & (wire < det.num_wires(plane)) & (t >= 0) & (t < det.readout_ticks) & (q > 0)
    dep_hit = np.full(x.size, -1, np.int64)
    empty = PlaneReadout(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64), dep_hit)
    sel = np.flatnonzero(ok)
    if sel.size == 0:
        return empty
    order = sel[np.lexsort((t[sel], wire[sel]))]
    ws, ts = wire[order], t[order]
    new_pulse = np.ones(order.size, bool)
    new_pulse[1:] = (ws[1:] != ws[:-1]) | (ts[1:] - ts[:-1] > det.gap_ticks)
    chunk = np.floor((ts - ts[_segment_starts(new_pulse)]) / det.max_hit_ticks).astype(np.int64)
    # a hit starts with each pulse and each chunk of it; numbered in (wire, time) order (a key
    # pulse * 100000 + chunk merged a chunk >= 100000 with the next pulse's first hit, on another wire)
    new_hit = new_pulse.copy()
    new_hit[1:] |= chunk[1:] != chunk[:-1]
    hit = np.cumsum(new_hit) - 1
    nh = hit[-1] + 1
    qs = q[order]
    qsum = np.bincount(hit, qs, nh)
    tpk = np.bincount(hit, qs * ts, nh) / qsum
    var = np.bincount(hit, qs * (ts - tpk[hit]) ** 2, nh) / qsum
    sig_hit = np.bincount(hit, qs * sig_l[order], nh) / qsum
    rms = np.sqrt(det.shaping_ticks[plane] ** 2 + sig_hit ** 2 + var) * rng.lognormal(0, 0.05, nh)
    integral = qsum * det.adc_per_mev * rng.lognormal(0, det.gain_spread, nh) + rng.normal(0, det.noise_adc, nh)
    # the particle with the most charge in each hit
    pair, pair_idx = np.unique(hit * (owner.max() + 1) + owner[order], return_inverse=True)
    pair_q = np.bincount(pair_idx, qs, pair.size)
    pair_hit, pair_owner = pair // (owner.max() + 1), pair % (owner.max() + 1)
    best = np.lexsort((-pair_q, pair_hit))
    first = np.ones(best.size, bool)
    first[1:] = pair_hit[best][1:] != pair_hit[best][:-1]
    hit_owner = np.empty(nh, np.int64)
    hit_owner[pair_hit[best][first]] = pair_owner[best][first]
    hit_wire = np.zeros(nh, np.int64)
    hit_wire[hit] = ws
    keep = integral > det.threshold_adc
    new_index = np.where(keep, np.cumsum(keep) - 1, -1)
    dep_hit[order] = new_index[hit]
    return PlaneReadout(hit_wire[keep], tpk[keep], integral[keep], rms[keep], hit_owner[keep], dep_hit)


def noise_hits(det: Detector, plane: int, n: int, wire_range: tuple[int, int], tick_range: tuple[float, float],
               rng: np.random.Generator) -> PlaneReadout:
    """n isolated electronics-noise hits, uniform in the window: small, narrow pulses."""
    wire = rng.integers(wire_range[0], max(wire_range[1], wire_range[0] + 1), n)
    tick = rng.uniform(tick_range[0], tick_range[1], n)
    integral = det.threshold_adc + rng.exponential(25.0, n)
    rms = np.abs(rng.normal(det.shaping_ticks[plane] * 0.8, 0.6, n)) + 0.5
    return PlaneReadout(wire, tick, integral, rms, np.full(n, -1, np.int64), np.zeros(0, np.int64))


class SpacePoints(NamedTuple):
    hits: np.ndarray  # [K, 3] int: the hit of each space point in planes u, v, y
    ghost: np.ndarray  # [K] bool: not from a single true deposit


def space_points(dep_hits: list[np.ndarray], ticks: list[np.ndarray], *, efficiency: float, ghost_fraction: float,
                 rng: np.random.Generator, match_ticks: float = 3.0) -> SpacePoints:
    """Distinct hit triples shared by a deposit, thinned by `efficiency`, plus ghost triples."""
    dh = np.stack(dep_hits, axis=1)  # [D, 3]
    dh = dh[(dh >= 0).all(axis=1)]
    if dh.shape[0] == 0:
        return SpacePoints(np.zeros((0, 3), np.int64), np.zeros(0, bool))
    true = np.unique(dh, axis=0)
    true = true[rng.random(true.shape[0]) < efficiency]
    n_ghost = rng.binomial(true.shape[0], ghost_fraction) if true.shape[0] else 0
    ghosts = true[rng.integers(0, max(true.shape[0], 1), n_ghost)].copy()
    planes = rng.integers(0, 3, n_ghost)
    for p in range(3):
        rows = np.flatnonzero(planes == p)
        if rows.size == 0:
            continue
        order = np.argsort(ticks[p], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        ts = ticks[p][order]
        own = rank[ghosts[rows, p]]
        lo = np.searchsorted(ts, ts[own] - match_ticks, side="left")
        hi = np.searchsorted(ts, ts[own] + match_ticks, side="right")
        # another hit of this plane within match_ticks of the true one (never the true one itself)
        pick = lo + np.floor(rng.random(rows.size) * (hi - lo - 1)).astype(np.int64)
        pick = pick + (pick >= own)
        has_other = hi - lo > 1
        ghosts[rows[has_other], p] = order[pick[has_other]]
        ghosts[rows[~has_other]] = -1
    ghosts = ghosts[(ghosts >= 0).all(axis=1)]
    n_ghost = ghosts.shape[0]
    all_sp = np.concatenate([true, ghosts])
    is_ghost = np.concatenate([np.zeros(true.shape[0], bool), np.ones(n_ghost, bool)])
    uniq, first = np.unique(all_sp, axis=0, return_index=True)
    return SpacePoints(uniq, is_ghost[first])
