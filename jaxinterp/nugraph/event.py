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


def validate(event: Event, *, planes: tuple[str, ...] = PLANES) -> None:
    """Raises ValueError naming the plane and field of the first problem found; returns None if valid.

    Checked: every plane present; x is [N, 4] and finite; pos is [N, 2]; edge indices are [2, *]
    integers in range (hits of the plane; space points below num_sp); labels in -1..C-1.
    """
    where = f"event {event.name!r}" if event.name else "event"
    if not isinstance(event.num_sp, (int, np.integer)) or event.num_sp < 0:
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
        if not np.all(np.isfinite(x)):
            bad = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise ValueError(f"{where}, plane {p!r}, field 'x': non-finite feature (NaN or inf) at hit {bad}")
        n = x.shape[0]
        pos = np.asarray(hits.pos)
        if pos.shape != (n, 2):
            raise ValueError(f"{where}, plane {p!r}, field 'pos': expected shape [{n}, 2], got {list(pos.shape)}")
        for field, bound, bound_name in (("edge_index_plane", (n, n), "hits"),
                                         ("edge_index_nexus", (n, event.num_sp), "hits/space points")):
            ei = np.asarray(getattr(hits, field))
            if ei.ndim != 2 or ei.shape[0] != 2:
                raise ValueError(f"{where}, plane {p!r}, field {field!r}: expected shape [2, E], got {list(ei.shape)}")
            if ei.size and not np.issubdtype(ei.dtype, np.integer):
                raise ValueError(f"{where}, plane {p!r}, field {field!r}: expected integer indices, got {ei.dtype}")
            for row in (0, 1):
                if ei.shape[1] and (ei[row].min() < 0 or ei[row].max() >= bound[row]):
                    raise ValueError(
                        f"{where}, plane {p!r}, field {field!r}: row {row} index out of range "
                        f"[0, {bound[row]}) ({bound_name}): got min {int(ei[row].min())}, max {int(ei[row].max())}")
        if hits.y_semantic is not None:
            y = np.asarray(hits.y_semantic)
            if y.shape != (n,):
                raise ValueError(f"{where}, plane {p!r}, field 'y_semantic': expected shape [{n}], got {list(y.shape)}")
            if n and (y.min() < BACKGROUND or y.max() >= len(SEMANTIC_CLASSES)):
                raise ValueError(f"{where}, plane {p!r}, field 'y_semantic': labels must lie in "
                                 f"[-1, {len(SEMANTIC_CLASSES) - 1}], got [{int(y.min())}, {int(y.max())}]")
