"""One LArTPC event as NuGraph2 sees it: hits per wire plane, planar and nexus edges.

This is the host-side (numpy) form every producer (HDF5 reader, simulation, fixtures) returns and
every consumer (graph padding, the model's input pipeline, displays) takes. Variable sizes live
here; fixed-size padded graphs for jit are built from it in `graph.py`.

Axis names: N hits in a plane, E planar edges, S_p nexus edges of a plane, S space points.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

PLANES: tuple[str, ...] = ("u", "v", "y")
SEMANTIC_CLASSES: tuple[str, ...] = ("MIP", "HIP", "shower", "michel", "diffuse")
NUM_FEATURES = 4  # wire cm, time cm, integral, rms (normalised)
BACKGROUND = -1  # y_semantic of hits the filter should remove


class PlaneHits(NamedTuple):
    """The hits of one wire plane."""

    x: np.ndarray  # [N, 4] float: normalised (wire cm, time cm, integral, rms)
    pos: np.ndarray  # [N, 2] float: (wire * 0.3 cm, tick * 0.055 cm), for edges and displays
    edge_index_plane: np.ndarray  # [2, E] int: row 0 source j, row 1 target i (PyG flow)
    edge_index_nexus: np.ndarray  # [2, S_p] int: row 0 hit index, row 1 space-point index
    y_semantic: np.ndarray | None = None  # [N] int: -1 background, 0..4 SEMANTIC_CLASSES


class Event(NamedTuple):
    """One event: a PlaneHits per plane name, and the number of space points S."""

    planes: Mapping[str, PlaneHits]
    num_sp: int
    name: str = ""


def validate(event: Event, *, planes: tuple[str, ...] = PLANES,
             classes: tuple[str, ...] = SEMANTIC_CLASSES) -> None:
    """Raises ValueError naming the plane and field of the first problem found; returns None if valid.

    Checked: every plane present; x is [N, 4] and finite; pos is [N, 2]; edge indices are [2, *]
    integers in range (hits of the plane; space points below num_sp); labels in -1..C-1, C the
    number of `classes` (the model's: a config of other classes is checked against its own).
    """
    where = f"event {event.name!r}" if event.name else "event"
    if not isinstance(event.num_sp, (int, np.integer)) or isinstance(event.num_sp, bool) or event.num_sp < 0:
        raise ValueError(f"{where}: num_sp must be a non-negative integer, got {event.num_sp!r}")
    missing = [p for p in planes if p not in event.planes]
    if missing:
        raise ValueError(f"{where}: missing plane(s) {missing}; expected planes {list(planes)}, "
                         f"got {sorted(event.planes)}")
    for p in planes:
        hits = event.planes[p]
        x = np.asarray(hits.x)
        if x.ndim != 2 or x.shape[1] != NUM_FEATURES:
            raise ValueError(f"{where}, plane {p!r}, field 'x': expected shape [N, {NUM_FEATURES}], got {list(x.shape)}")
        check_finite(x, f"{where}, plane {p!r}", "x")
        n = x.shape[0]
        pos = np.asarray(hits.pos)
        if pos.shape != (n, 2):
            raise ValueError(f"{where}, plane {p!r}, field 'pos': expected shape [{n}, 2], got {list(pos.shape)}")
        check_edge_index(hits.edge_index_plane, ((n, "hits"), (n, "hits")), f"{where}, plane {p!r}", "edge_index_plane")
        check_edge_index(hits.edge_index_nexus, ((n, "hits"), (event.num_sp, "space points")), f"{where}, plane {p!r}",
                         "edge_index_nexus")
        if hits.y_semantic is not None:
            y = np.asarray(hits.y_semantic)
            if y.shape != (n,):
                raise ValueError(f"{where}, plane {p!r}, field 'y_semantic': expected shape [{n}], got {list(y.shape)}")
            check_labels(y, classes, f"{where}, plane {p!r}", "y_semantic")


# Checks shared with the HDF5 reader and writer (`hdf5.check_record`), so both say the same thing.
# `at` names the event and plane ("event 'e1', plane 'u'"), `field` the tensor.

def check_finite(a: np.ndarray, at: str, field: str) -> None:
    """ValueError unless `a` ([N, ...], one row a hit) holds numbers and every row is finite."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":  # np.isfinite raises a TypeError on strings and objects
        raise ValueError(f"{at}, field {field!r}: expected numbers, got dtype {a.dtype}")
    bad = np.flatnonzero(~np.isfinite(a).reshape(len(a), -1).all(axis=1)) if a.size else a[:0]
    if bad.size:
        raise ValueError(f"{at}, field {field!r}: expected finite values, got NaN or inf at {bad.size} of "
                         f"{len(a)} hits (first: hit {bad[0]})")


def check_edge_index(ei: np.ndarray, bounds: tuple[tuple[int, str], tuple[int, str]], at: str, field: str) -> None:
    """ValueError unless `ei` is [2, E] integer indices with row r inside [0, bounds[r][0]) (bounds[r][1]
    names what row r indexes: "hits", "space points")."""
    ei = np.asarray(ei)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"{at}, field {field!r}: expected shape [2, E], got {list(ei.shape)}")
    if ei.size and not np.issubdtype(ei.dtype, np.integer):
        raise ValueError(f"{at}, field {field!r}: expected integer indices, got {ei.dtype}")
    for row, (bound, noun) in enumerate(bounds):
        if ei.shape[1] and (ei[row].min() < 0 or ei[row].max() >= bound):
            bad = ei[row].min() if ei[row].min() < 0 else ei[row].max()
            raise ValueError(f"{at}, field {field!r}: row {row} ({noun}) index {bad} out of range [0, {bound})")


def check_labels(y: np.ndarray, classes: tuple[str, ...], at: str, field: str) -> None:
    """ValueError unless every label is an integer: BACKGROUND (-1) or an index into `classes`."""
    y = np.asarray(y)
    if y.size and y.dtype.kind not in "iu":  # a float label would be truncated (0.7 -> 0, NaN -> int min)
        raise ValueError(f"{at}, field {field!r}: expected integer labels, got dtype {y.dtype}")
    if y.size and (y.min() < BACKGROUND or y.max() >= len(classes)):
        bad = y.min() if y.min() < BACKGROUND else y.max()
        raise ValueError(f"{at}, field {field!r}: labels must lie in [-1, {len(classes) - 1}] (-1 background, "
                         f"then {list(classes)}), got {bad}")
