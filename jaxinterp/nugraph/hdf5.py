"""The processed NuGraph HDF5 format (`*.gnn.h5`), as pynuml's H5Interface writes it and nugraph reads it.

Layout (pynuml 24.x, nugraph 24.x):

    /dataset/r{run}_sr{subrun}_evt{event}   scalar dataset of a compound type, one field per tensor,
                                            named "store/attr": metadata/run, metadata/subrun,
                                            metadata/event, sp/num_nodes, {p}/pos [N,2] f4,
                                            {p}/x [N,2] f4 (integral, rms), {p}/id, {p}/y_semantic,
                                            {p}/y_instance [N] i8, evt/y, {p}_plane_{p}/edge_index
                                            [2,E] i8, {p}_nexus_sp/edge_index [2,S_p] i8
    /planes, /semantic_classes, /event_classes   variable-length UTF-8 strings
    /samples/{train,validation,test}             event names
    /datasize/train                              bytes of each training event (for batch balancing)
    /norm/{p}                                    [2,4] f4: row 0 mean, row 1 std of (wire cm, time cm,
                                                 integral, rms) over every hit of the file

HDF5 compound types cannot hold a zero-sized dimension, so pynuml stores an empty tensor as the
scalar 0 of its dtype; the reader turns it back into an empty array of the right shape.

The raw record (`RawEvent`) keeps every field exactly as stored, so writing what was read gives the
same file content; `to_event` applies nugraph's transform `x = (cat(pos, x) - mean) / std` and gives
the `Event` the model takes. `write_events` writes a list of events; `write_event_stream` writes events
as they are made (a generator), so memory does not grow with their number.

A corrupt record (a field of the wrong shape or dtype, NaN or inf features, labels or edge indices out
of range; `check_record`) is a ValueError naming the file, event, plane and field, as is a corrupt
`/norm/{p}`; a well-formed event NuGraph2 cannot use (an empty plane, no space points; `check_event`)
is skipped and counted by reason.

Axis names: N hits in a plane, E planar edges, S_p nexus edges of a plane, F = 4 features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from jaxinterp import atomic
from jaxinterp.nugraph.event import (PLANES, SEMANTIC_CLASSES, Event, PlaneHits, check_edge_index, check_finite,
                                     check_labels)

EVENT_CLASSES: tuple[str, ...] = ("cc_nue", "cc_numu", "cc_nutau", "nc")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Per-hit fields of a plane store, with their trailing shape and dtype as pynuml writes them.
_NODE_FIELDS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("pos", (2,), "<f4"), ("x", (2,), "<f4"), ("id", (), "<i8"),
    ("y_semantic", (), "<i8"), ("y_instance", (), "<i8"))
_METADATA = ("run", "subrun", "event")


class RawPlane(NamedTuple):
    """One plane's hits as stored (unnormalised)."""

    pos: np.ndarray  # [N, 2] f4: wire * 0.3 cm, tick * 0.055 cm
    x: np.ndarray  # [N, 2] f4: integral (ADC), rms (ticks)
    id: np.ndarray  # [N] i8: hit number in the original event
    y_semantic: np.ndarray  # [N] i8: -1 background, 0..4 SEMANTIC_CLASSES
    y_instance: np.ndarray  # [N] i8: true particle instance, -1 none
    edge_index_plane: np.ndarray  # [2, E] i8
    edge_index_nexus: np.ndarray  # [2, S_p] i8: row 0 hit, row 1 space point


class RawEvent(NamedTuple):
    """One event record as stored."""

    planes: Mapping[str, RawPlane]
    num_sp: int
    run: int
    subrun: int
    event: int
    y: int = -1  # evt/y: index into event_classes
    extra: Mapping[str, np.ndarray] = {}  # fields this module does not interpret, kept for round trips
    key: str = ""  # the /dataset key it was read from ("" for a new event)

    @property
    def name(self) -> str:
        """The key it was read from, else `r{run}_sr{subrun}_evt{event}` as pynuml names events (a file
        without metadata would otherwise name every event r0_sr0_evt0)."""
        return self.key or event_name(self.run, self.subrun, self.event)


def event_name(run: int, subrun: int, event: int) -> str:
    """`r{run}_sr{subrun}_evt{event}`: a new event's name, as pynuml names events."""
    return f"r{run}_sr{subrun}_evt{event}"


class FileInfo(NamedTuple):
    planes: tuple[str, ...]
    semantic_classes: tuple[str, ...]
    event_classes: tuple[str, ...] | None
    samples: Mapping[str, tuple[str, ...]]  # split -> event names
    datasize: np.ndarray | None  # [n_train] i8
    norm: Mapping[str, np.ndarray]  # plane -> [2, 4] f4


class ReadResult(NamedTuple):
    events: list[RawEvent]
    skipped: Mapping[str, list[str]]  # reason -> event names (see `check_event`)

    def skipped_line(self) -> str:
        n = sum(len(v) for v in self.skipped.values())
        if not n:
            return "skipped 0 events"
        return f"skipped {n} events (" + ", ".join(f"{len(v)} {k}" for k, v in self.skipped.items() if v) + ")"


# ---------------------------------------------------------------------------------------------
# Reading


def _open(path: str | os.PathLike, mode: str = "r"):
    import h5py

    path = Path(path)
    if not path.exists():
        raise ValueError(f"path: no such file {str(path)!r}")
    try:
        return h5py.File(path, mode)
    except OSError as e:  # h5py's message says "truncated file" or "file signature not found"
        raise ValueError(f"path: {str(path)!r} is not a readable HDF5 file (truncated or corrupt?): {e}") from None


# What h5py raises for damaged metadata inside a file it could open (a broken link, header or heap):
# KeyError, RuntimeError or OSError, depending on where the damage lies.
_H5_ERRORS = (OSError, KeyError, RuntimeError)


def _read(f, key: str, where: str | None = None):
    """`f[key][()]`, or None if the file has no `key`; ValueError naming the file and dataset if it cannot
    be read (damaged, or a group or named datatype where a dataset belongs)."""
    import h5py

    where = where or f.filename
    try:
        if key not in f:
            return None
        obj = f[key]
        if not isinstance(obj, h5py.Dataset):
            raise ValueError(f"{where}: '/{key}' is a {type(obj).__name__}, expected a dataset (corrupt file?)")
        return obj[()]
    except _H5_ERRORS as e:
        raise ValueError(f"{where}: dataset '/{key}' cannot be read (truncated or corrupt?): {e}") from None


def _need(f, key: str):
    v = _read(f, key)
    if v is None:
        raise ValueError(f"{f.filename}: missing dataset '/{key}' (expected the processed NuGraph layout)")
    return v


def _strings(values, where: str) -> tuple[str, ...]:
    """A dataset of names as pynuml writes it: a 1-D array of (variable-length UTF-8) strings; anything
    else is a ValueError naming `where` (a scalar string read as a one-element list, numbers as their
    digits, before)."""
    if not isinstance(values, np.ndarray) or values.ndim != 1:  # h5py gives bytes (or a numpy scalar,
        # or h5py.Empty) for a scalar dataset
        got = (f"shape {list(values.shape)}" if isinstance(values, np.ndarray) and values.ndim
               else f"the scalar {values!r}")
        raise ValueError(f"{where}: expected a 1-D array of strings (as pynuml writes it), got {got}")
    if values.dtype.kind not in "OSU" or not all(isinstance(v, (bytes, str)) for v in values):
        raise ValueError(f"{where}: expected a 1-D array of strings (as pynuml writes it), got dtype "
                         f"{values.dtype} {values[:5].tolist()}")
    try:
        return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: expected UTF-8 strings, got {e.object!r} ({e.reason})") from None


def read_info(path: str | os.PathLike, *, need_samples: bool = True, need_norm: bool = True) -> FileInfo:
    """Reads the file's metadata (planes, classes, splits, data sizes, norms); ValueError if absent."""
    with _open(path) as f:
        return _info(f, need_samples=need_samples, need_norm=need_norm)


def _info(f, *, need_samples: bool = True, need_norm: bool = True) -> FileInfo:
    """Metadata; splits and norms may be absent (files before nugraph's generate_samples/norm) when
    the caller does not need them."""
    def names(key: str, need: bool = True) -> tuple[str, ...] | None:  # None: absent (need=False)
        v = _need(f, key) if need else _read(f, key)
        return None if v is None else _strings(v, f"{f.filename}: '/{key}'")

    planes = names("planes")
    semantic = names("semantic_classes")
    event_classes = names("event_classes", need=False)
    samples = {s: names(f"samples/{s}", need=False) or () for s in SPLITS}
    if need_samples and not any(samples.values()):
        raise ValueError(f"{f.filename}: missing dataset '/samples/train' (no sample splits)")
    seen: dict[str, str] = {}
    for s in SPLITS:  # as write_events refuses: an event trained on and tested on inflates the figures
        for n in samples[s]:
            if n in seen:
                raise ValueError(f"{f.filename}: '/samples/{s}' lists event {n!r}, already in '/samples/{seen[n]}'; "
                                 f"expected each event in at most one split, once")
            seen[n] = s
    datasize = _read(f, "datasize/train")
    datasize = np.asarray(datasize) if datasize is not None else None
    norm = {}
    for p in planes:
        n = _read(f, f"norm/{p}")
        if n is None and not need_norm:
            continue
        n = np.asarray(_need(f, f"norm/{p}") if n is None else n)
        _check_norm_plane(n, f"{f.filename}: '/norm/{p}'")
        norm[p] = n
    return FileInfo(planes, semantic, event_classes, samples, datasize, norm)


def _stored_name(p: str, attr: str) -> str:
    """The compound field of a RawPlane attribute, as pynuml names it."""
    return {"edge_index_plane": f"{p}_plane_{p}/edge_index",
            "edge_index_nexus": f"{p}_nexus_sp/edge_index"}.get(attr, f"{p}/{attr}")


def _field(rec, name: str, trailing: tuple[int, ...], dtype: str, where: str) -> np.ndarray:
    if name not in rec.dtype.names:
        raise ValueError(f"{where}: missing field {name!r}")
    v = np.asarray(rec[name])
    # checked before the cast: numpy would parse b"3" into 3 and truncate 0.7 into a label 0
    kinds, what = ("iu", "integers") if np.dtype(dtype).kind == "i" else ("fiu", "numbers")
    if v.dtype.kind not in kinds:
        raise ValueError(f"{where}, field {name!r}: expected {what} ({dtype}), got dtype {v.dtype}")
    if v.ndim == 0:  # pynuml's encoding of an empty tensor is the scalar 0, and only that
        want = "[2, E]" if name.endswith("edge_index") else str(["N", *trailing]).replace("'", "")
        if v != 0:
            raise ValueError(f"{where}, field {name!r}: expected shape {want} or the scalar 0 (pynuml's encoding "
                             f"of an empty tensor), got the scalar {v.item()!r}")
        return np.zeros((2, 0) if name.endswith("edge_index") else (0, *trailing), dtype=dtype)
    return v.astype(dtype, copy=False)


def read_event(f, name: str, *, planes: Sequence[str] = PLANES, semantic_classes: Sequence[str] = SEMANTIC_CLASSES,
               event_classes: Sequence[str] | None = EVENT_CLASSES) -> RawEvent:
    """Reads `/dataset/{name}` from an open h5py file; ValueError naming the event, plane and field if
    malformed (`check_record`). A well-formed event NuGraph2 cannot use is returned (`check_event`)."""
    where = f"{f.filename}: event {name!r}"
    rec = _read(f, f"dataset/{name}", where)
    if rec is None:
        raise ValueError(f"{where}: missing dataset '/dataset/{name}' (listed in the samples, absent from /dataset)")
    if rec.dtype.names is None:
        raise ValueError(f"{where}: expected a compound record, got dtype {rec.dtype}")
    used = set()
    raw_planes = {}
    for p in planes:
        cols = {}
        for attr, trailing, dt in _NODE_FIELDS:
            key = f"{p}/{attr}"
            cols[attr] = _field(rec, key, trailing, dt, f"{where}, plane {p!r}") if (
                attr in ("pos", "x", "y_semantic") or key in rec.dtype.names) else None
            used.add(key)
        n = cols["pos"].shape[0]
        # a per-hit field stored empty (scalar 0) beside one with rows would read as [0, ...] and be
        # blamed on the other field; name the one stored empty
        rows = {a: v.shape[0] for a, v in cols.items() if v is not None and np.ndim(rec[f"{p}/{a}"])}
        for a, v in cols.items():
            if v is not None and not np.ndim(rec[f"{p}/{a}"]) and any(rows.values()):
                ref = "pos" if rows.get("pos") else next(b for b, r in rows.items() if r)
                want = [rows[ref], *dict((f, t) for f, t, _ in _NODE_FIELDS)[a]]
                raise ValueError(f"{where}, plane {p!r}, field '{p}/{a}': expected shape {want} ({rows[ref]} hits, "
                                 f"as '{p}/{ref}'), got the scalar 0 (pynuml's encoding of an empty tensor)")
        for attr in ("id", "y_instance"):  # optional in other pynuml versions
            if cols[attr] is None:
                cols[attr] = np.full(n, -1, np.int64)
        eplane, enexus = (_field(rec, _stored_name(p, a), (), "<i8", f"{where}, plane {p!r}")
                          for a in ("edge_index_plane", "edge_index_nexus"))
        used |= {_stored_name(p, "edge_index_plane"), _stored_name(p, "edge_index_nexus")}
        raw_planes[p] = RawPlane(cols["pos"], cols["x"], cols["id"], cols["y_semantic"], cols["y_instance"],
                                 eplane, enexus)
    scalars = {}
    for key, default in (("sp/num_nodes", None), *((f"metadata/{m}", 0) for m in _METADATA), ("evt/y", -1)):
        used.add(key)
        if key in rec.dtype.names:
            v = np.asarray(rec[key])
            if v.ndim or v.dtype.kind not in "iu":
                raise ValueError(f"{where}, field {key!r}: expected an integer, got dtype {v.dtype} "
                                 f"shape {list(v.shape)}")
            scalars[key] = int(v)
        elif default is None:
            raise ValueError(f"{where}: missing field {key!r}")
        else:
            scalars[key] = default
    extra = {k: np.asarray(rec[k]) for k in rec.dtype.names if k not in used}
    ev = RawEvent(raw_planes, scalars["sp/num_nodes"], scalars["metadata/run"], scalars["metadata/subrun"],
                  scalars["metadata/event"], scalars["evt/y"], extra, name)
    check_record(ev, where, planes=planes, semantic_classes=semantic_classes, event_classes=event_classes)
    return ev


def check_record(ev: RawEvent, where: str, *, planes: Sequence[str] = PLANES,
                 semantic_classes: Sequence[str] = SEMANTIC_CLASSES,
                 event_classes: Sequence[str] | None = EVENT_CLASSES) -> None:
    """ValueError `{where}, plane 'p', field 'f': ...` unless the tensors agree: per-hit fields of [N]
    rows and the stored trailing shape, finite features, labels in range, edge indices [2, E] inside the
    plane's hits (row 0 of the nexus edges) and the space points (row 1).

    The reader and the writer share it: what one refuses the other does not write. These are corrupt
    records, so always an error; a well-formed event NuGraph2 cannot use is `check_event`'s (skipped).
    """
    if ev.num_sp < 0:
        raise ValueError(f"{where}, field 'sp/num_nodes': expected a count >= 0, got {ev.num_sp}")
    n_evt = len(event_classes) if event_classes is not None else None
    if ev.y < -1 or (n_evt is not None and ev.y >= n_evt):
        raise ValueError(f"{where}, field 'evt/y': expected -1 or an index into event_classes "
                         f"[0, {n_evt if n_evt is not None else 'inf'}), got {ev.y}")
    for p in planes:
        if p not in ev.planes:
            raise ValueError(f"{where}: missing plane {p!r}")
        rp, at = ev.planes[p], f"{where}, plane {p!r}"
        n = np.shape(rp.pos)[0] if np.ndim(rp.pos) else 0
        for attr, trailing, _ in _NODE_FIELDS:
            shape = np.shape(getattr(rp, attr))
            if shape != (n, *trailing):
                raise ValueError(f"{at}, field '{p}/{attr}': expected shape {[n, *trailing]} ({n} hits, as "
                                 f"'{p}/pos'), got {list(shape)}")
        for attr in ("pos", "x"):
            check_finite(getattr(rp, attr), at, f"{p}/{attr}")
        check_labels(rp.y_semantic, tuple(semantic_classes), at, f"{p}/y_semantic")
        check_edge_index(rp.edge_index_plane, ((n, "hits"), (n, "hits")), at, _stored_name(p, "edge_index_plane"))
        check_edge_index(rp.edge_index_nexus, ((n, "hits"), (ev.num_sp, "space points")), at,
                         _stored_name(p, "edge_index_nexus"))


def check_event(ev: RawEvent) -> str | None:
    """The reason an event cannot be used by NuGraph2, or None. Reasons: 'empty plane', 'no space points'."""
    if any(rp.pos.shape[0] == 0 for rp in ev.planes.values()):
        return "empty plane"
    if ev.num_sp == 0:
        return "no space points"
    return None


def read_events(path: str | os.PathLike, split: str | None = None, *, names: Iterable[str] | None = None,
                limit: int | None = None, on_bad: str = "skip") -> ReadResult:
    """Reads the events of one split (or the named ones, or all) of a processed NuGraph file.

    Events NuGraph2 cannot use (a plane without hits, no space points; see `check_event`) are skipped
    and counted by reason when `on_bad="skip"` (the default: real files hold a few), or raise a
    ValueError naming the event with `on_bad="error"`.
    """
    if on_bad not in ("skip", "error"):
        raise ValueError(f"on_bad: expected 'skip' or 'error', got {on_bad!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)} or None, got {split!r}")
    if isinstance(names, (str, bytes)):  # list() would read each character as an event name
        raise ValueError(f"names: expected a list of event names, got the single string {names!r} "
                         f"(use names=[{names!r}])")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit: expected None or a non-negative integer, got {limit!r}")
    with _open(path) as f:
        info = _info(f, need_samples=split is not None, need_norm=False)
        if names is not None:
            todo = list(names)
            seen = set()  # a name given twice was read and returned twice (and counted twice by eval)
            for n in filter(lambda n: isinstance(n, str), todo):  # other types: refused when read, below
                if n in seen:
                    raise ValueError(f"names: expected each event name once, got {n!r} {todo.count(n)} times")
                seen.add(n)
        elif split is not None:
            if _read(f, f"samples/{split}") is None:  # absent, not empty: read as no events at all
                raise ValueError(f"{f.filename}: missing dataset '/samples/{split}' (the file has splits "
                                 f"{[s for s in SPLITS if _read(f, f'samples/{s}') is not None]})")
            todo = list(info.samples[split])
        else:
            import h5py

            try:
                group = f["dataset"] if "dataset" in f else None
                if not isinstance(group, h5py.Group):
                    raise ValueError(f"{f.filename}: missing group '/dataset'" + (
                        f" (got a {type(group).__name__})" if group is not None else ""))
                todo = list(group.keys())
            except _H5_ERRORS as e:
                raise ValueError(f"{f.filename}: group '/dataset' cannot be listed (truncated or corrupt?): "
                                 f"{e}") from None
        if limit is not None:
            todo = todo[:limit]
        events, skipped = [], {"empty plane": [], "no space points": []}
        for name in todo:
            ev = read_event(f, name, planes=info.planes, semantic_classes=info.semantic_classes,
                            event_classes=info.event_classes)
            reason = check_event(ev)
            if reason is None:
                events.append(ev)
            elif on_bad == "error":
                raise ValueError(f"{f.filename}: event {name!r}: {reason}")
            else:
                skipped[reason].append(name)
    return ReadResult(events, skipped)


def to_event(raw: RawEvent, norm: Mapping[str, np.ndarray], *, planes: Sequence[str] = PLANES) -> Event:
    """nugraph's PositionFeatures + FeatureNorm: x = (cat(pos, x) - mean) / std per plane, float32.

    A norm that is not a finite [2, 4] (mean, std > 0) for every plane, and pos or x not [N, 2] finite
    numbers, are a ValueError naming the event, plane and field (as `check_record` would)."""
    missing = [p for p in planes if p not in raw.planes]
    if missing:
        raise ValueError(f"event {raw.name!r}: no plane(s) {missing}; the model takes planes {list(planes)}, "
                         f"the event has {list(raw.planes)}")
    try:
        _check_norm(norm, planes)
    except ValueError as e:
        raise ValueError(f"event {raw.name!r}: {e}") from None
    out = {}
    for p in planes:
        rp, at = raw.planes[p], f"event {raw.name!r}, plane {p!r}"
        n = np.shape(rp.pos)[0] if np.ndim(rp.pos) else 0
        for attr, want in (("pos", "wire cm, time cm"), ("x", "integral, rms")):
            if np.shape(getattr(rp, attr)) != (n, 2):
                raise ValueError(f"{at}, field '{p}/{attr}': expected [{n}, 2] ({want}; {n} hits, as '{p}/pos'), "
                                 f"got {list(np.shape(getattr(rp, attr)))}")
            check_finite(getattr(rp, attr), at, f"{p}/{attr}")
        mean, std = np.asarray(norm[p], np.float32)
        x = (np.concatenate([rp.pos, rp.x], axis=1).astype(np.float32) - mean) / std
        out[p] = PlaneHits(x, rp.pos, rp.edge_index_plane, rp.edge_index_nexus, rp.y_semantic)
    return Event(out, int(raw.num_sp), raw.name)


def load_events(path: str | os.PathLike, split: str | None = None, **kw) -> tuple[list[Event], ReadResult]:
    """`read_events` then `to_event` with the file's norms: the Events the model takes, and the raw result."""
    info = read_info(path, need_samples=split is not None)
    res = read_events(path, split, **kw)
    return [to_event(r, info.norm, planes=info.planes) for r in res.events], res


# ---------------------------------------------------------------------------------------------
# Writing


class NormStats:
    """Running count, mean and sum of squared deviations (M2) of cat(pos, x) per plane, in float64,
    so that a norm over any number of events takes constant memory (`write_event_stream`).

    Each event's mean and M2 come from its own hits (two passes over them); events merge by Chan,
    Golub and LeVeque's pairwise update: with d = mean_b - mean_a and n = n_a + n_b,
    mean = mean_a + d n_b / n and M2 = M2_a + M2_b + d^2 n_a n_b / n. Sums of x and x^2 would lose
    the time coordinate's variance to cancellation (mean ~ 100 cm, std ~ 10 cm). The result agrees
    with numpy's two-pass mean and std over all hits at once to a few float64 ulps, so the float32
    norm is the same but for a value within that of a float32 rounding boundary (1 ulp then).
    """

    def __init__(self, planes: Sequence[str] = PLANES):
        self.planes = tuple(planes)
        self.count = {p: 0 for p in self.planes}
        self.mean = {p: np.zeros(4) for p in self.planes}
        self.m2 = {p: np.zeros(4) for p in self.planes}

    def add(self, ev: RawEvent) -> None:
        for p in self.planes:
            feats = np.concatenate([ev.planes[p].pos, ev.planes[p].x], 1).astype(np.float64)  # [N, F]
            n_b = feats.shape[0]
            if not n_b:
                continue
            mean_b = feats.mean(axis=0)
            m2_b = np.square(feats - mean_b).sum(axis=0)
            n_a, n = self.count[p], self.count[p] + n_b
            d = mean_b - self.mean[p]
            self.mean[p] = self.mean[p] + d * (n_b / n)
            self.m2[p] = self.m2[p] + m2_b + d * d * (n_a * n_b / n)
            self.count[p] = n

    def norm(self) -> dict[str, np.ndarray]:
        """Plane -> [2, 4] f4: mean and population std (1 where the std is 0); ValueError under 2 hits."""
        norm = {}
        for p in self.planes:
            if self.count[p] < 2:
                raise ValueError(f"events: need at least 2 hits in plane {p!r} to compute a norm, got {self.count[p]}")
            std = np.sqrt(self.m2[p] / self.count[p])
            norm[p] = np.stack([self.mean[p], np.where(std > 0, std, 1.0)]).astype(np.float32)
        return norm


def compute_norm(events: Iterable[RawEvent], *, planes: Sequence[str] = PLANES) -> dict[str, np.ndarray]:
    """Mean and (population) std of cat(pos, x) over every hit of every event, per plane: [2, 4] f4."""
    stats = NormStats(planes)
    for ev in events:
        stats.add(ev)
    return stats.norm()


def _standard_fields(planes: Sequence[str]) -> tuple[str, ...]:
    """The compound fields `_record` writes from a RawEvent's attributes (its `extra` are the others)."""
    return (*(f"metadata/{m}" for m in _METADATA), "sp/num_nodes", "evt/y",
            *(_stored_name(p, a) for p in planes for a in RawPlane._fields))


# dtype kinds an extra field may have: what h5py stores in a compound member and reads back as it
# was (bool, integers, floats, complex, byte strings). Not 'U' or 'O' (h5py has no conversion for
# them), 'M'/'m' (datetimes: likewise) or 'V' (a nested record reads back as raw bytes).
_EXTRA_KINDS = "biufcS"


def check_extra(ev: RawEvent, where: str, *, planes: Sequence[str] = PLANES) -> None:
    """ValueError `{where}, extra field 'k': ...` unless `ev.extra` can be written as compound fields
    beside the standard ones: a mapping of non-empty string names, none named like a standard field of
    `planes` (it would be a second field of that name), to arrays of a kind h5py stores and reads back
    (`_EXTRA_KINDS`). `write_events` and `datasize` share it."""
    if not isinstance(ev.extra, Mapping):
        raise ValueError(f"{where}, extra: expected a mapping of field names to arrays, got "
                         f"{type(ev.extra).__name__}")
    standard = set(_standard_fields(planes))
    for k, v in ev.extra.items():
        if not isinstance(k, str) or not k:  # HDF5 renames an empty member 'f{i}': it would read back renamed
            raise ValueError(f"{where}, extra field {k!r}: expected a non-empty string as the field's name, got "
                             f"{type(k).__name__} {k!r}")
        if k in standard:  # would be a second compound field of that name, refused by numpy inside the write
            raise ValueError(f"{where}, extra field {k!r}: expected extra fields other than the standard ones the "
                             f"RawEvent's attributes are written as, got a field named like a standard one")
        kind = np.asarray(v).dtype.kind
        if kind not in _EXTRA_KINDS:
            raise ValueError(f"{where}, extra field {k!r}: expected an array of numbers, booleans or byte strings "
                             f"(a tensor, as pynuml stores), got dtype {np.asarray(v).dtype} "
                             f"({type(v).__name__})")


def _record(ev: RawEvent, planes: Sequence[str]) -> tuple[list, list]:
    """The compound fields in pynuml's order, with empty tensors as scalar 0 (`ev.extra` checked by the
    caller: `check_extra`)."""
    fields, values = [], []

    def add(key, val, dtype):
        val = np.asarray(val, dtype=dtype)
        if val.ndim and val.size == 0:
            fields.append((key, dtype))
            values.append(np.zeros((), dtype))
        elif val.ndim == 0:
            fields.append((key, dtype))
            values.append(val)
        else:
            fields.append((key, dtype, val.shape))
            values.append(val)

    for m, v in zip(_METADATA, (ev.run, ev.subrun, ev.event)):
        add(f"metadata/{m}", v, "<i8")
    add("sp/num_nodes", ev.num_sp, "<i8")
    for p in planes:
        rp = ev.planes[p]
        for attr, _, dt in _NODE_FIELDS:
            add(f"{p}/{attr}", getattr(rp, attr), dt)
    add("evt/y", ev.y, "<i8")
    for p in planes:
        add(f"{p}_plane_{p}/edge_index", ev.planes[p].edge_index_plane, "<i8")
        add(f"{p}_nexus_sp/edge_index", ev.planes[p].edge_index_nexus, "<i8")
    for k, v in ev.extra.items():
        add(k, v, np.asarray(v).dtype.str)
    return fields, values


def datasize(ev: RawEvent) -> int:
    """Bytes of the event's tensors as nugraph's generate_samples counts them (run/subrun/event and
    sp/num_nodes are left out; the fixture's /datasize/train pins this). Extra fields count as written:
    a ValueError (`check_extra`) for one `write_events` would refuse."""
    check_extra(ev, f"event {ev.name!r}", planes=list(ev.planes))
    fields, values = _record(ev, list(ev.planes))
    skip = {"metadata/run", "metadata/subrun", "metadata/event", "sp/num_nodes"}
    return int(sum(np.asarray(v).nbytes for (f, *_), v in zip(fields, values)
                   if f not in skip and not (np.asarray(v).ndim == 0 and f.endswith("edge_index"))))


def _check_norm(norm: Mapping[str, np.ndarray], planes: Sequence[str]) -> None:
    for p in planes:
        if p not in norm:
            raise ValueError(f"norm: expected a [2, 4] (mean, std) array for every plane {list(planes)}, "
                             f"plane {p!r} is missing (got {list(norm)})")
        _check_norm_plane(norm[p], f"norm[{p!r}]")


def _check_norm_plane(norm, what: str) -> None:
    """A plane's norm as `to_event` uses it: [2, 4] numbers, finite, and row 1 (std, the divisor) > 0."""
    shape = np.shape(norm)
    if shape != (2, 4):
        raise ValueError(f"{what}: expected shape [2, 4] (mean, std), got {list(shape)}")
    if np.asarray(norm).dtype.kind not in "fiu":
        raise ValueError(f"{what}: expected numbers, got dtype {np.asarray(norm).dtype}")
    n = np.asarray(norm, np.float32)  # as stored: a value finite in float64 may not be in float32
    if not np.isfinite(n).all():
        raise ValueError(f"{what}: expected finite values, got {n.tolist()}")
    if not (n[1] > 0).all():
        raise ValueError(f"{what}: expected std (row 1, the divisor of the features) > 0, got {n[1].tolist()}")


def default_splits(names: Sequence[str], *, seed: int = 0, frac: float = 0.05) -> dict[str, list[str]]:
    """nugraph's generate_samples: 5% validation, 5% test, the rest train, randomly assigned."""
    order = np.random.default_rng(seed).permutation(len(names))
    k = int(frac * len(names))
    if len(names) >= 3:
        k = max(k, 1)
    idx = {"validation": order[:k], "test": order[k:2 * k], "train": order[2 * k:]}
    return {s: [names[i] for i in sorted(idx[s])] for s in SPLITS}


def _check_names(path, names: Sequence[str]) -> None:
    """The target is no folder; event names are unique and usable as '/dataset/{name}'."""
    if Path(path).is_dir():
        raise ValueError(f"path: expected a file name to write, got the folder {str(path)!r}")
    for n in names:  # '/dataset/{name}': a '/' would nest groups, which the reader lists as one event
        if not isinstance(n, str) or not n or "/" in n or n in (".", ".."):
            raise ValueError(f"events: expected event names usable as an HDF5 dataset name (no '/', not empty, "
                             f"'.' or '..'), got {n!r}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"events: event names (r{{run}}_sr{{subrun}}_evt{{event}}) must be unique, {dup!r} repeats")


def _checked_splits(splits: Mapping[str, Sequence[str]] | None, names: Sequence[str]) -> dict[str, list[str]]:
    """`splits` (default `default_splits(names)`) as split -> names, each name an event's, in at most one split."""
    if splits is not None:
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"splits: expected keys among {list(SPLITS)}, got {unknown}")
    splits = default_splits(names) if splits is None else {s: list(splits.get(s, ())) for s in SPLITS}
    known, seen = set(names), {}
    for s, lst in splits.items():
        missing = [n for n in lst if n not in known]
        if missing:
            raise ValueError(f"splits[{s!r}]: names not among the events: {missing[:5]}")
        for n in lst:  # an event in two splits (or twice in one) would leak between training and test
            if n in seen:
                raise ValueError(f"splits[{s!r}]: event {n!r} is already in splits[{seen[n]!r}]; "
                                 f"expected each event in at most one split, once")
            seen[n] = s
    return splits


def _check_event(ev: RawEvent, planes, semantic_classes, event_classes) -> None:
    check_record(ev, f"events: event {ev.name!r}", planes=planes, semantic_classes=semantic_classes,
                 event_classes=event_classes)
    check_extra(ev, f"events: event {ev.name!r}", planes=planes)


def _write_event(f, ev: RawEvent, planes: Sequence[str]) -> None:
    fields, values = _record(ev, planes)
    f.create_dataset(f"dataset/{ev.name}", shape=(), dtype=np.dtype(fields), data=tuple(values))


def _write_metadata(f, *, planes, semantic_classes, event_classes, splits, datasizes, norm) -> None:
    """Everything but the events: names of planes and classes, splits, training data sizes, norms."""
    import h5py

    str_dt = h5py.string_dtype("utf-8")
    f.create_dataset("planes", data=np.array(list(planes), dtype=object), dtype=str_dt)
    f.create_dataset("semantic_classes", data=np.array(list(semantic_classes), dtype=object), dtype=str_dt)
    if event_classes is not None:
        f.create_dataset("event_classes", data=np.array(list(event_classes), dtype=object), dtype=str_dt)
    for s in SPLITS:
        f.create_dataset(f"samples/{s}", data=np.array(splits[s], dtype=object), dtype=str_dt)
    f.create_dataset("datasize/train", data=np.asarray(datasizes, np.int64))
    for p in planes:
        f.create_dataset(f"norm/{p}", data=np.asarray(norm[p], np.float32))


def write_events(path: str | os.PathLike, events: Sequence[RawEvent], *,
                 splits: Mapping[str, Sequence[str]] | None = None,
                 norm: Mapping[str, np.ndarray] | None = None,
                 planes: Sequence[str] = PLANES, semantic_classes: Sequence[str] = SEMANTIC_CLASSES,
                 event_classes: Sequence[str] | None = EVENT_CLASSES, datasizes: Sequence[int] | None = None) -> Path:
    """Writes events in the processed NuGraph layout, atomically (a crash leaves no partial file).

    splits: split -> event names (default `default_splits`); norm: plane -> [2, 4] (default
    `compute_norm` over all events, as nugraph's generate_norm); datasizes: /datasize/train
    (default `datasize` of each training event). Everything is checked before anything is written.
    For more events than fit in memory, `write_event_stream`.
    """
    import h5py

    if not events:
        raise ValueError("events: expected at least one event, got none")
    names = [e.name for e in events]
    _check_names(path, names)
    for ev in events:
        _check_event(ev, planes, semantic_classes, event_classes)
    splits = _checked_splits(splits, names)
    if norm is None:
        norm = compute_norm(events, planes=planes)
    else:
        _check_norm(norm, planes)
    by_name = dict(zip(names, events))
    if datasizes is None:
        datasizes = [datasize(by_name[n]) for n in splits["train"]]
    elif np.shape(datasizes) != (len(splits["train"]),) or np.asarray(datasizes).dtype.kind not in "iu" \
            or (len(datasizes) and np.min(datasizes) < 0):
        raise ValueError(f"datasizes: expected {len(splits['train'])} non-negative integers (one per training "
                         f"event, in splits['train'] order), got shape {list(np.shape(datasizes))} "
                         f"dtype {np.asarray(datasizes).dtype}")
    with atomic.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for ev in events:
                _write_event(f, ev, planes)
            _write_metadata(f, planes=planes, semantic_classes=semantic_classes, event_classes=event_classes,
                            splits=splits, datasizes=datasizes, norm=norm)
    return Path(path)


def write_event_stream(path: str | os.PathLike, events: Iterable[RawEvent], names: Sequence[str], *,
                       splits: Mapping[str, Sequence[str]] | None = None,
                       planes: Sequence[str] = PLANES, semantic_classes: Sequence[str] = SEMANTIC_CLASSES,
                       event_classes: Sequence[str] | None = EVENT_CLASSES) -> Path:
    """`write_events` for events made one at a time (a generator): each is written to the temporary file
    as it comes and dropped, so memory does not grow with their number (`write_events` held them all).

    names: the events' names in the order they will come (the default splits are drawn from them
    first, as `write_events` draws them). The norm is accumulated as the events pass (`NormStats`),
    /datasize/train likewise; the file is that of `write_events(path, list(events), splits=splits)`.
    The names and splits are checked before anything is written; an event that is malformed, or not
    the name expected next, or too few or too many events, is a ValueError that leaves `path` as it
    was (the temporary file is removed).
    """
    import h5py

    names = list(names)
    if not names:
        raise ValueError("names: expected the names of at least one event, got none")
    _check_names(path, names)
    splits = _checked_splits(splits, names)
    train = set(splits["train"])
    stats, sizes, count = NormStats(planes), {}, 0
    with atomic.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for ev in events:
                if count == len(names):
                    raise ValueError(f"events: expected {len(names)} events (as names lists), got more")
                if ev.name != names[count]:
                    raise ValueError(f"events: expected event {count} named {names[count]!r} (names' order), "
                                     f"got {ev.name!r}")
                _check_event(ev, planes, semantic_classes, event_classes)
                _write_event(f, ev, planes)
                stats.add(ev)
                if ev.name in train:
                    sizes[ev.name] = datasize(ev)
                count += 1
            if count != len(names):
                raise ValueError(f"events: expected {len(names)} events (as names lists), got {count}")
            _write_metadata(f, planes=planes, semantic_classes=semantic_classes, event_classes=event_classes,
                            splits=splits, datasizes=[sizes[n] for n in splits["train"]], norm=stats.norm())
    return Path(path)
