"""Planar edges of NuGraph2: the Delaunay triangulation of the hits of one wire plane.

NuGraph2 connects each hit to its Delaunay neighbours in (wire cm, time cm). Hits on one wire share
a wire coordinate, so many points are colinear: qhull's "QJ" option jitters the input slightly so
the triangulation always exists (every point becomes a vertex), as pynuml's preprocessing does.

Axis names: N hits, E directed edges.
"""

from __future__ import annotations

import numpy as np


def delaunay_edges(pos: np.ndarray) -> np.ndarray:
    """Directed Delaunay edges of the points `pos` `[N, 2]`: `[2, E]` int64, both directions.

    Row 0 is the source j, row 1 the target i (PyG flow); edges are unique, without self loops,
    sorted by target then source. Fewer than 3 points (or all points identical) cannot be
    triangulated: 2 points give the one edge between them both ways, 0 or 1 point no edge.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"delaunay_edges: pos must have shape [N, 2], got {list(pos.shape)}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("delaunay_edges: pos holds NaN or inf")
    n = pos.shape[0]
    if n < 2:
        return np.zeros((2, 0), dtype=np.int64)
    if n == 2:
        pairs = np.array([[0, 1]], dtype=np.int64)
    else:
        from scipy.spatial import Delaunay, QhullError

        try:
            simplices = Delaunay(pos, qhull_options="QJ").simplices
        except QhullError:  # all points identical: no triangle even with jitter; chain them instead
            simplices = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], axis=1)
        pairs = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [2, 0]]])
    pairs = np.concatenate([pairs, pairs[:, ::-1]]).astype(np.int64)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(pairs, axis=0)  # [E, 2] (j, i)
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by target i, then source j
    return np.ascontiguousarray(pairs[order].T)
