"""Planar edges of NuGraph2: the Delaunay triangulation of the hits of one wire plane.

NuGraph2 connects each hit to its Delaunay neighbours in (wire cm, time cm). Hits on one wire share
a wire coordinate, so many points are colinear: qhull's "QJ" option jitters the input slightly so
the triangulation exists, as pynuml's preprocessing (PyG's Delaunay transform) does. Every hit at a
position of its own becomes a vertex; a hit at exactly the position of another can be left out of
the triangulation and so without planar edges (in small sets of few distinct positions, e.g. 5 + 3
hits at two positions), and pynuml leaves it out too.

Axis names: N hits, E directed edges.
"""

from __future__ import annotations

import numpy as np


def delaunay_edges(pos: np.ndarray) -> np.ndarray:
    """Directed Delaunay edges of the points `pos` `[N, 2]`: `[2, E]` int64, both directions.

    Row 0 is the source j, row 1 the target i (PyG flow); edges are unique, without self loops,
    sorted by target then source. 0 or 1 point give no edge, 2 points the one edge between them both
    ways (even at one position), 3 points their triangle (colinear or not), as PyG's transform does.
    Where qhull fails even with jitter (4 or more points all at one position, or within ~1e-14 of
    it, where pynuml raises qhull's error) the points are chained in index order instead (triangles
    (i, i+1, i+2)), so every hit still has an edge.
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
        except QhullError:  # all points at (nearly) one position: no triangle even with jitter
            simplices = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], axis=1)
        pairs = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [2, 0]]])
    pairs = np.concatenate([pairs, pairs[:, ::-1]]).astype(np.int64)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # [E', 2] (j, i)
    # one int64 key i * n + j per edge: its unique values are the edges sorted by target i, then source
    # j (np.unique(axis=0) sorted the rows as opaque void records, 3x slower: most of `simulate`'s time)
    key = np.unique(pairs[:, 1] * n + pairs[:, 0])  # [E]
    return np.stack([key % n, key // n])
