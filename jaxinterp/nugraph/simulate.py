"""A physics-shaped simulation of neutrino interactions in a MicroBooNE-like TPC (numpy, seeded, fast).

Not GEANT4: a few lines of physics per particle type, chosen so the hit classes NuGraph2 learns look
and behave as they do in the detector.

- Muons and charged pions (MIP): long tracks, multiple Coulomb scattering (Highland formula,
  X0 = 14 cm), range and dE/dx from the Bethe formula for argon (`stopping`: the residual range sets
  dE/dx, at least 2.1 MeV/cm); a stopping mu- decays to a Michel electron (10-53 MeV) 26% of the
  time (the rest are captured by the argon nucleus: 0.567 us against the free 2.197 us lifetime), a
  stopping pion gives a Michel 40% of the time (pi+ -> mu+ -> e+); a pion may be absorbed, leaving
  short proton stubs.
- Protons (HIP): short tracks whose dE/dx climbs to a Bragg peak; recombination (modified box
  model) quenches their charge.
- Electrons and photons (shower): a branching cascade: above 30 MeV an electron radiates a photon of
  10-60% of its energy after an exponential path of mean 0.7 X0; a photon flies an exponential gap (9/7 X0) and converts to e+e-;
  below 30 MeV an electron ranges out with strong scattering. Photons under 2 MeV Compton scatter
  away from the shower into isolated blobs labelled diffuse.
- Diffuse: isolated low-energy blobs around the vertex (de-excitation gammas, neutrons).
- Background (label -1): cosmic muons crossing the interaction's region at random times (with
  delta rays), and electronics noise hits.

Events are as a reconstruction slice sees them: the interaction plus what overlaps its region.
Event `i` of `simulate(n, seed=s)` is drawn from `default_rng([s, i])` alone, so it does not depend
on n. Seeds are below 2**32: numpy reads a larger one as two words (`[s + 2**32 j, i]` is `[s, j, i]`),
so event 0 of seed s + 2**32 j would be event j of seed s. Class labels: MIP 0, HIP 1, shower 2,
michel 3, diffuse 4, background -1.

Axis names: D deposits, K steps of one track, H hits of a plane, S space points.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from jaxinterp import checks
from jaxinterp.nugraph import detector as det_mod
from jaxinterp.nugraph import stopping
from jaxinterp.nugraph.event import PLANES
from jaxinterp.nugraph.hdf5 import EVENT_CLASSES, RawEvent, RawPlane

MIP, HIP, SHOWER, MICHEL, DIFFUSE, BACKGROUND = 0, 1, 2, 3, 4, -1
M_MU, M_PI, M_PI0, M_P, M_E = 105.658, 139.570, 134.977, 938.272, 0.511  # MeV
X0_CM = 14.0
MIP_DEDX = 2.1  # MeV/cm
# a stopped mu- in argon decays rather than being captured with probability tau_Ar / tau_free
MU_MINUS_DECAY_FRACTION = 0.567 / 2.197


@dataclasses.dataclass(frozen=True)
class SimConfig:
    detector: det_mod.Detector = det_mod.Detector()
    mean_energy_gev: float = 1.0  # neutrino energy ~ Gamma(2, mean/2)
    max_energy_gev: float = 4.0
    event_class_probs: tuple[float, ...] = (0.2, 0.5, 0.05, 0.25)  # cc_nue, cc_numu, cc_nutau, nc
    mean_cosmics: float = 0.7  # crossing the event's region
    noise_hits_per_plane: float = 8.0
    mean_diffuse_blobs: float = 8.0  # + 10 per GeV of neutrino energy
    step_cm: float = 0.2
    slice_margin_cm: float = 20.0
    sp_efficiency: float = 0.4
    ghost_fraction: float = 0.08
    min_hits_per_plane: int = 3
    max_hits_per_plane: int | None = None  # redraw events with more particle hits in a plane (noise comes on top)

    def __post_init__(self):
        """ValueError naming the field for a setting the simulation cannot use (checked before any event)."""
        def need(ok: bool, field: str, expected: str):
            if not ok:
                raise ValueError(f"SimConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        def finite(v) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v))

        need(isinstance(self.detector, det_mod.Detector) and len(self.detector.plane_angles_deg) == len(PLANES),
             "detector", f"a detector.Detector with {len(PLANES)} wire planes ({', '.join(PLANES)})")

        for field in ("mean_energy_gev", "max_energy_gev", "step_cm"):
            need(finite(getattr(self, field)) and getattr(self, field) > 0, field, "a positive finite number")
        # a longer step leaves wires a track crosses without charge, and past 14 cm (30 MeV of MIP loss)
        # a shower's electron steps through more energy than it has: negative energies, NaN directions
        need(self.step_cm <= self.detector.wire_pitch_cm, "step_cm",
             f"a tracking step of at most the detector's wire pitch ({self.detector.wire_pitch_cm:g} cm)")
        for field in ("mean_cosmics", "noise_hits_per_plane", "mean_diffuse_blobs", "slice_margin_cm"):
            need(finite(getattr(self, field)) and getattr(self, field) >= 0, field, "a non-negative finite number")
        need(finite(self.sp_efficiency) and 0 < self.sp_efficiency <= 1, "sp_efficiency", "a fraction in (0, 1]")
        need(finite(self.ghost_fraction) and 0 <= self.ghost_fraction <= 1, "ghost_fraction", "a fraction in [0, 1]")
        probs = np.asarray(self.event_class_probs, float)
        need(probs.shape == (len(EVENT_CLASSES),) and bool(np.isfinite(probs).all()) and probs.min() >= 0
             and abs(probs.sum() - 1) < 1e-6, "event_class_probs",
             f"{len(EVENT_CLASSES)} non-negative probabilities ({', '.join(EVENT_CLASSES)}) summing to 1")
        need(checks.is_integer(self.min_hits_per_plane) and self.min_hits_per_plane >= 0,
             "min_hits_per_plane", "a non-negative integer")
        need(self.max_hits_per_plane is None or (checks.is_integer(self.max_hits_per_plane)
                                                 and self.max_hits_per_plane >= self.min_hits_per_plane),
             "max_hits_per_plane", f"None or an integer >= min_hits_per_plane ({self.min_hits_per_plane})")


class _Deposits:
    """Collects deposits (position, charge, owner) and the owners' class and instance."""

    def __init__(self):
        self.xyz, self.q, self.owner = [], [], []
        self.cls, self.inst = [], []

    def new_owner(self, cls: int, inst: int) -> int:
        self.cls.append(cls)
        self.inst.append(inst)
        return len(self.cls) - 1

    def add(self, xyz: np.ndarray, q: np.ndarray, owner: int) -> None:
        if len(q):
            self.xyz.append(xyz)
            self.q.append(q)
            self.owner.append(np.full(len(q), owner, np.int64))

    def arrays(self):
        if not self.q:
            return np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64)
        return np.concatenate(self.xyz), np.concatenate(self.q), np.concatenate(self.owner)


def _recombination(dedx: np.ndarray) -> np.ndarray:
    """Modified box model (ArgoNeuT): fraction of ionisation charge that survives."""
    b = 0.3 * dedx
    return np.log(0.93 + b) / b


_range_cm = stopping.csda_range_cm
_kinetic = stopping.kinetic_mev


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _walk(rng, start, direction, length, mass, step, det, *, dedx_const: float | None = None):
    """A charged track: step points [K,3], charge [K], whether it stopped inside, end point and direction.

    dE/dx follows the residual range (Bragg peak at the end); the direction random-walks with the
    Highland angle of the momentum left at each step.
    """
    k = max(int(np.ceil(length / step)), 1)
    resid = length - (np.arange(k) + 0.5) * (length / k)
    t = _kinetic(resid, mass)
    p = np.sqrt(t * t + 2 * t * mass)
    beta_p = p * p / (t + mass)
    theta0 = 13.6 / np.maximum(beta_p, 1e-3) * np.sqrt(step / X0_CM)
    kicks = rng.normal(size=(k, 3)) * np.minimum(theta0, 0.6)[:, None]
    dirs = _unit(np.asarray(direction, float)[None, :] + np.cumsum(kicks, axis=0))
    pts = np.asarray(start, float)[None, :] + np.cumsum(dirs * (length / k), axis=0)
    if dedx_const is None:
        dedx = np.maximum(_kinetic(resid + 0.5, mass) - _kinetic(resid - 0.5, mass), MIP_DEDX)
    else:
        dedx = np.full(k, dedx_const)
    dedx = np.minimum(dedx, 40.0)
    de = dedx * (length / k) * rng.gamma(6.0, 1 / 6.0, k)  # Landau-like fluctuations
    inside = det.inside(pts)
    stop = k if inside.all() else int(np.argmin(inside))
    q = de * _recombination(dedx)
    end = pts[stop - 1] if stop else np.asarray(start, float)
    return pts[:stop], q[:stop], stop == k, end, dirs[max(stop - 1, 0)]


def _scatter_dir(rng, d, sigma):
    return _unit(np.asarray(d) + rng.normal(size=3) * sigma)


def _em_cascade(rng, dep, start, direction, energy, *, photon, cls, inst, cfg):
    """Electromagnetic shower of an electron or photon of `energy` MeV (see module docstring)."""
    det = cfg.detector
    owner = dep.new_owner(cls, inst)
    diffuse_owner = None
    queue = [(np.asarray(start, float), _unit(np.asarray(direction, float)), float(energy), photon)]
    # A shower takes ~0.1 particles per MeV; a fixed cap of 2000 cut showers above ~20 GeV short
    # (40 GeV kept half its charge), so the cap grows with the energy, 10x above that need.
    depth_limit = 2000 + int(energy)
    n = 0
    while queue and n < depth_limit:
        pos, d, e, is_photon = queue.pop()
        n += 1
        if is_photon:
            gap = rng.exponential(9 / 7 * X0_CM)
            pos = pos + d * gap
            if not det.inside(pos):
                continue
            if e < 2.0:  # Compton electron far from the shower: an isolated blob
                if diffuse_owner is None:
                    diffuse_owner = dep.new_owner(DIFFUSE if cls == SHOWER else cls, -1)
                dep.add(pos[None, :], np.array([e * _recombination(np.array(4.0))]), diffuse_owner)
                continue
            if e < 8.0:  # Compton scatter: one electron takes most of it
                queue.append((pos, _scatter_dir(rng, d, 0.5), e * rng.uniform(0.4, 0.9), False))
                continue
            f = rng.uniform(0.15, 0.85)
            sig = min(0.6, 1.0 / np.sqrt(e))
            queue.append((pos, _scatter_dir(rng, d, sig), e * f, False))
            queue.append((pos, _scatter_dir(rng, d, sig), e * (1 - f), False))
            continue
        if e <= 30.0:  # range out
            length = max(e / MIP_DEDX, 0.05)
            pts, q, _, _, _ = _walk(rng, pos, d, length, M_E, min(cfg.step_cm, length), det, dedx_const=MIP_DEDX)
            dep.add(pts, q, owner)
            continue
        seg = min(rng.exponential(X0_CM * 0.7), (e - 25.0) / MIP_DEDX)
        seg = max(seg, cfg.step_cm)
        pts, q, ok, end, dend = _walk(rng, pos, d, seg, M_E * e / 10, cfg.step_cm, det, dedx_const=MIP_DEDX)
        dep.add(pts, q, owner)
        if not ok:
            continue
        e_left = e - MIP_DEDX * seg
        eg = e_left * rng.uniform(0.1, 0.6)
        queue.append((end, _scatter_dir(rng, dend, 1.0 / np.sqrt(max(eg, 1.0))), eg, True))
        queue.append((end, _scatter_dir(rng, dend, 0.5 / np.sqrt(e_left)), e_left - eg, False))


def _michel(rng, dep, pos, cfg, *, cls=MICHEL, inst=-1):
    e = 52.8 * rng.beta(3.0, 1.4)
    _em_cascade(rng, dep, pos, _unit(rng.normal(size=3)), e, photon=False, cls=cls, inst=inst, cfg=cfg)


def _muon(rng, dep, vertex, d, t, inst, cfg, *, cls=MIP, michel_prob=MU_MINUS_DECAY_FRACTION):
    det = cfg.detector
    pts, q, stopped, end, _ = _walk(rng, vertex, d, float(_range_cm(t, M_MU)), M_MU, cfg.step_cm, det)
    dep.add(pts, q, dep.new_owner(cls, inst))
    if stopped and rng.random() < michel_prob:
        _michel(rng, dep, end, cfg, cls=MICHEL if cls != BACKGROUND else BACKGROUND,
                inst=inst + 1000 if inst >= 0 else -1)


def _proton(rng, dep, vertex, d, t, inst, cfg):
    pts, q, _, _, _ = _walk(rng, vertex, d, float(_range_cm(t, M_P)), M_P, cfg.step_cm, cfg.detector)
    dep.add(pts, q, dep.new_owner(HIP, inst))


def _pion(rng, dep, vertex, d, t, inst, cfg, next_inst):
    pts, q, stopped, end, _ = _walk(rng, vertex, d, float(_range_cm(t, M_PI)), M_PI, cfg.step_cm, cfg.detector)
    dep.add(pts, q, dep.new_owner(MIP, inst))
    if not stopped:
        return
    u = rng.random()
    if u < 0.4:  # pi+ -> mu+ (4 mm) -> e+: a Michel at the end
        _michel(rng, dep, end, cfg, inst=inst + 1000)
    elif u < 0.7:  # absorption: nuclear fragments
        for _ in range(rng.integers(1, 3)):
            _proton(rng, dep, end, _unit(rng.normal(size=3)), rng.uniform(10, 60), next_inst(), cfg)


def _blobs(rng, dep, center, n, cfg, *, spread_cm=35.0):
    """Isolated low-energy depositions around `center` (diffuse)."""
    if n == 0:
        return
    owner = dep.new_owner(DIFFUSE, -1)
    r = rng.exponential(spread_cm, n)
    pos = np.asarray(center)[None, :] + _unit(rng.normal(size=(n, 3))) * r[:, None]
    pos = pos[cfg.detector.inside(pos)]
    e = rng.lognormal(np.log(0.8), 0.6, pos.shape[0])
    npts = rng.integers(1, 4, pos.shape[0])
    xyz = np.repeat(pos, npts, axis=0) + rng.normal(0, 0.15, (npts.sum(), 3))
    # the spread can carry a point of a blob at a face out of the TPC: back onto the face (dropping
    # it would shift every later random draw of the event)
    det = cfg.detector
    xyz = np.clip(xyz, [0.0, -det.height_cm / 2, 0.0], [det.drift_cm, det.height_cm / 2, det.length_cm])
    q = np.repeat(e / npts, npts) * _recombination(np.array(4.0))
    dep.add(xyz, q, owner)


def _cosmic(rng, dep, box_lo, box_hi, cfg):
    """A cosmic muon through a random point of the region at a random time (its x is apparent)."""
    det = cfg.detector
    p0 = rng.uniform(box_lo, box_hi)
    cos_zen = rng.power(3.0)  # ~cos^2 zenith distribution
    phi = rng.uniform(0, 2 * np.pi)
    sin_zen = np.sqrt(1 - cos_zen ** 2)
    d = np.array([sin_zen * np.cos(phi), -cos_zen, sin_zen * np.sin(phi)])
    # from the top of the detector down through p0 to the bottom
    s_top = (p0[1] - det.height_cm / 2) / cos_zen
    start = p0 + d * s_top
    length = det.height_cm / cos_zen
    k = int(length / cfg.step_cm)
    pts = start[None, :] + d[None, :] * (np.arange(k)[:, None] + 0.5) * cfg.step_cm
    pts += np.cumsum(rng.normal(size=(k, 3)) * 1e-3, axis=0)
    keep = np.all((pts >= box_lo) & (pts <= box_hi), axis=1)
    de = MIP_DEDX * cfg.step_cm * rng.gamma(6.0, 1 / 6.0, k)
    dep.add(pts[keep], (de * _recombination(np.full(k, MIP_DEDX)))[keep], dep.new_owner(BACKGROUND, -1))
    kept = pts[keep]
    for _ in range(rng.poisson(kept.shape[0] * cfg.step_cm / 60.0)):  # delta rays
        at = kept[rng.integers(kept.shape[0])]
        _em_cascade(rng, dep, at, _unit(rng.normal(size=3)), rng.uniform(3, 25), photon=False,
                    cls=BACKGROUND, inst=-1, cfg=cfg)


def _neutrino(rng, dep, cfg) -> tuple[int, np.ndarray]:
    """Primary particles of one interaction; returns the event class index and the vertex."""
    det = cfg.detector
    evt = int(rng.choice(len(EVENT_CLASSES), p=cfg.event_class_probs))
    e_nu = min(rng.gamma(2.0, cfg.mean_energy_gev / 2), cfg.max_energy_gev) * 1000  # MeV
    vertex = np.array([rng.uniform(10, det.drift_cm - 10), rng.uniform(-det.height_cm / 2 + 10, det.height_cm / 2 - 10),
                       rng.uniform(10, det.length_cm - 10)])
    ybj = rng.beta(1.2, 2.5)
    e_lep, e_had = e_nu * (1 - ybj), e_nu * ybj
    counter = iter(range(1, 10_000))

    def next_inst():
        return next(counter)

    def forward(sig):
        return _unit(np.array([rng.normal(0, sig), rng.normal(0, sig), 1.0]))

    name = EVENT_CLASSES[evt]
    if name == "cc_numu":
        _muon(rng, dep, vertex, forward(0.6), max(e_lep - M_MU, 20.0), next_inst(), cfg)
    elif name == "cc_nue":
        _em_cascade(rng, dep, vertex, forward(0.5), e_lep, photon=False, cls=SHOWER, inst=next_inst(), cfg=cfg)
    elif name == "cc_nutau":  # the tau decays at the vertex: a muon or an electron, plus a pion
        if rng.random() < 0.5:
            _muon(rng, dep, vertex, forward(0.8), max(0.4 * e_lep - M_MU, 20.0), next_inst(), cfg)
        else:
            _em_cascade(rng, dep, vertex, forward(0.8), 0.4 * e_lep, photon=False, cls=SHOWER, inst=next_inst(), cfg=cfg)
        _pion(rng, dep, vertex, forward(1.0), 0.3 * e_lep, next_inst(), cfg, next_inst)
    n_p = 1 + rng.poisson(0.5 + 1.5 * e_had / 1000)
    n_pi = rng.poisson(1.0 * e_had / 1000 + (0.3 if name == "nc" else 0.0))
    n_pi0 = rng.poisson(0.5 * e_had / 1000 + (0.3 if name == "nc" else 0.0))
    share = rng.dirichlet(np.ones(n_p + n_pi + n_pi0)) * e_had
    for i in range(n_p):
        t = float(np.clip(share[i] * 0.7, 5.0, 800.0))
        _proton(rng, dep, vertex, _unit(rng.normal(size=3) + [0, 0, 0.5]), t, next_inst(), cfg)
    for i in range(n_pi):
        t = float(np.clip(share[n_p + i] - M_PI * 0.3, 15.0, 1500.0))
        _pion(rng, dep, vertex, _unit(rng.normal(size=3) + [0, 0, 0.7]), t, next_inst(), cfg, next_inst)
    for i in range(n_pi0):
        e = max(share[n_p + n_pi + i], M_PI0)
        a = rng.uniform(0.2, 0.8)
        d0 = _unit(rng.normal(size=3) + [0, 0, 0.7])
        for frac, sgn in ((a, 1), (1 - a, -1)):
            dg = _scatter_dir(rng, d0, 0.8 * sgn)
            _em_cascade(rng, dep, vertex, dg, e * frac, photon=True, cls=SHOWER, inst=next_inst(), cfg=cfg)
    _blobs(rng, dep, vertex, rng.poisson(cfg.mean_diffuse_blobs + 10 * e_nu / 1000), cfg)
    return evt, vertex


def simulate_event(rng: np.random.Generator, cfg: SimConfig, *, event: int = 0, run: int = 1, subrun: int = 1,
                   planes: Sequence[str] = PLANES) -> RawEvent | None:
    """One event as the processed HDF5 record holds it, or None if it fails `cfg`'s size limits."""
    from jaxinterp.nugraph.edges import delaunay_edges

    det = cfg.detector
    if isinstance(planes, str) or len(planes) != len(det.plane_angles_deg) or len(set(planes)) != len(planes):
        # two names read two planes, and space points (three planes) failed with an IndexError
        raise ValueError(f"planes: expected {len(det.plane_angles_deg)} distinct names, one per detector plane "
                         f"(angles {list(det.plane_angles_deg)}), got {planes!r}")
    dep = _Deposits()
    evt, vertex = _neutrino(rng, dep, cfg)
    xyz, _, _ = dep.arrays()
    if xyz.shape[0] == 0:
        return None
    lo = np.maximum(xyz.min(0) - cfg.slice_margin_cm, [0, -det.height_cm / 2, 0])
    hi = np.minimum(xyz.max(0) + cfg.slice_margin_cm, [det.drift_cm, det.height_cm / 2, det.length_cm])
    for _ in range(rng.poisson(cfg.mean_cosmics)):
        _cosmic(rng, dep, lo, hi, cfg)
    xyz, q, owner = dep.arrays()
    cls, inst = np.asarray(dep.cls), np.asarray(dep.inst)

    readouts = [det_mod.read_plane(det, i, xyz, q, owner, rng) for i in range(len(planes))]
    for i, r in enumerate(readouts):
        if r.wire.size < cfg.min_hits_per_plane:
            return None
        if cfg.max_hits_per_plane is not None and r.wire.size > cfg.max_hits_per_plane:
            return None
    sp = det_mod.space_points([r.dep_hit for r in readouts], [r.tick for r in readouts],
                              efficiency=cfg.sp_efficiency, ghost_fraction=cfg.ghost_fraction, rng=rng)
    if sp.hits.shape[0] == 0:  # NuGraph2 readers skip such events; draw another instead
        return None
    raw_planes, next_id = {}, 0
    for i, (p, r) in enumerate(zip(planes, readouts)):
        wlo, whi = int(r.wire.min()), int(r.wire.max()) + 1
        # noise in the hits' window, inside the readout (ticks past its end were noise nothing reads)
        noise = det_mod.noise_hits(det, i, rng.poisson(cfg.noise_hits_per_plane), (wlo, whi),
                                   (float(r.tick.min()), min(float(r.tick.max()) + 1, det.readout_ticks)), rng)
        wire = np.concatenate([r.wire, noise.wire])
        tick = np.concatenate([r.tick, noise.tick])
        n_true = r.wire.size
        order = np.lexsort((tick, wire))  # hits sorted by (wire, time), as a hit finder emits them
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        own = np.concatenate([r.owner, noise.owner])[order]
        y_sem = np.where(own >= 0, cls[np.maximum(own, 0)], BACKGROUND)
        y_inst = np.where(own >= 0, inst[np.maximum(own, 0)], -1)
        pos = np.stack([wire * det.wire_pitch_cm, tick * det.tick_cm], 1)[order].astype(np.float32)
        feats = np.stack([np.concatenate([r.integral, noise.integral]),
                          np.concatenate([r.rms, noise.rms])], 1)[order].astype(np.float32)
        sp_hits = inverse[:n_true][sp.hits[:, i]] if sp.hits.shape[0] else np.zeros(0, np.int64)
        nexus = np.stack([sp_hits, np.arange(sp.hits.shape[0])]).astype(np.int64)
        plane_edges = np.asarray(delaunay_edges(pos), np.int64).reshape(2, -1)
        ids = np.arange(next_id, next_id + order.size, dtype=np.int64)
        next_id += order.size
        raw_planes[p] = RawPlane(pos, feats, ids, y_sem.astype(np.int64), y_inst.astype(np.int64),
                                 plane_edges, nexus)
    return RawEvent(raw_planes, int(sp.hits.shape[0]), run, subrun, event, evt)


def simulate(n: int, *, seed: int = 0, config: SimConfig = SimConfig(), run: int = 1, subrun: int = 1,
             progress: bool = False, max_tries: int = 100) -> list[RawEvent]:
    """n simulated events (event numbers 0..n-1); event i depends only on (seed, i) and config."""
    return list(stream(n, seed=seed, config=config, run=run, subrun=subrun, progress=progress, max_tries=max_tries))


def stream(n: int, *, seed: int = 0, config: SimConfig = SimConfig(), run: int = 1, subrun: int = 1,
           progress: bool = False, max_tries: int = 100) -> Iterator[RawEvent]:
    """`simulate`'s events one at a time, as they are made (for more than fit in memory:
    `hdf5.write_event_stream`). The arguments are checked now, before the first event."""
    if not checks.is_integer(n) or n < 0:
        raise ValueError(f"n: expected a non-negative number of events, got {n!r}")
    checks.check_seed(seed)  # default_rng([s + 2**32 * j, 0]) is default_rng([s, j]): another seed's events
    if not checks.is_integer(max_tries) or max_tries < 1:
        raise ValueError(f"max_tries: expected a positive integer, got {max_tries!r}")
    for name, v in (("run", run), ("subrun", subrun)):
        if not checks.is_integer(v) or v < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")
    if not isinstance(config, SimConfig):
        raise ValueError(f"config: expected a simulate.SimConfig, got {type(config).__name__}")
    return _stream(n, seed, config, run, subrun, progress, max_tries)


def _stream(n, seed, config, run, subrun, progress, max_tries) -> Iterator[RawEvent]:
    from tqdm import tqdm

    for i in tqdm(range(n), desc="simulating events", unit="event", disable=not progress):
        rng = np.random.default_rng([seed, i])
        for _ in range(max_tries):
            ev = simulate_event(rng, config, event=i, run=run, subrun=subrun)
            if ev is not None:
                break
        else:
            raise ValueError(f"config: no event within the size limits after {max_tries} tries "
                             f"(min_hits_per_plane={config.min_hits_per_plane}, "
                             f"max_hits_per_plane={config.max_hits_per_plane})")
        yield ev


class Summary(NamedTuple):
    hits_percentiles: np.ndarray  # [5]: p0, p10, p50, p90, p100 of the mean hits per plane of an event
    class_mix: dict  # label name -> fraction of all hits
    space_points: np.ndarray  # [n events]


class SummaryStats:
    """What `summary` needs of each event, gathered as events pass (a few numbers an event, not its hits)."""

    def __init__(self):
        from jaxinterp.nugraph.event import SEMANTIC_CLASSES

        self.names = ["background"] + list(SEMANTIC_CLASSES)
        self.hits, self.space_points = [], []
        self.label_counts = np.zeros(len(self.names), np.int64)  # label + 1 -> hits
        self.label_total = 0  # hits, labelled or not

    def add(self, ev: RawEvent) -> None:
        self.hits.append(np.mean([ev.planes[p].pos.shape[0] for p in ev.planes]))
        self.space_points.append(ev.num_sp)
        for p in ev.planes:
            y = np.asarray(ev.planes[p].y_semantic)
            self.label_counts += np.bincount(y[(y >= -1) & (y < len(self.names) - 1)] + 1,
                                             minlength=len(self.names))[:len(self.names)]
            self.label_total += y.size

    def result(self) -> Summary:
        if not self.hits:  # np.concatenate's "need at least one array" said nothing of what was wrong
            raise ValueError("events: expected at least one event to summarise, got none")
        total = self.label_total
        mix = {name: float(c / total) if total else float("nan") for name, c in zip(self.names, self.label_counts)}
        return Summary(np.percentile(np.array(self.hits), [0, 10, 50, 90, 100]), mix, np.array(self.space_points))


def summary(events: Iterable[RawEvent]) -> Summary:
    """Size distribution and class mix of a set of events (for notes and the simulate command)."""
    stats = SummaryStats()
    for ev in events:
        stats.add(ev)
    return stats.result()
