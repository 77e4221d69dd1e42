"""Review 16: NuGraph2 HDF5 extra fields named like standard ones, scalar-encoded fields that are not
pynuml's empty tensor, even event shards, and planar edges of degenerate hit sets."""

from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pytest

from jaxinterp.nugraph import graph, hdf5
from jaxinterp.nugraph.edges import delaunay_edges
from test_nugraph_graph import random_event
from test_nugraph_hdf5 import FIXTURE, _copy_fixture, _edit_field, _same_raw

# --- write_events: an extra field named like a standard one ------------------------------------


@pytest.mark.parametrize("field", ["u/x", "metadata/run", "evt/y", "sp/num_nodes", "y_nexus_sp/edge_index",
                                   "v_plane_v/edge_index", "v/y_instance"])
def test_extra_field_named_like_a_standard_field_is_refused_before_writing(tmp_path, field):
    """It made a second compound field of that name, which numpy refused inside the atomic write
    ("field 'u/x' occurs more than once"), naming neither the event nor the extra field."""
    events = hdf5.read_events(FIXTURE).events
    events[2] = events[2]._replace(extra={"u/charge_fraction": np.ones(3, np.float32), field: np.int64(1)})
    target = tmp_path / "out.gnn.h5"
    target.write_bytes(b"previous content")
    with pytest.raises(ValueError, match=re.escape(f"events: event 'r1_sr1_evt2', extra field {field!r}: expected "
                                                   "extra fields other than the standard ones")):
        hdf5.write_events(target, events)
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.gnn.h5"]


def test_extra_fields_of_other_names_still_round_trip(tmp_path):
    events = hdf5.read_events(FIXTURE).events
    events[0] = events[0]._replace(extra={"u/charge_fraction": np.arange(3, dtype=np.float32),
                                          "metadata/runs": np.int64(7)})  # a prefix of a standard name is fine
    back = {e.name: e for e in hdf5.read_events(hdf5.write_events(tmp_path / "x.gnn.h5", events)).events}
    _same_raw(events[0], back["r1_sr1_evt0"])
    np.testing.assert_array_equal(back["r1_sr1_evt0"].extra["u/charge_fraction"], [0, 1, 2])
    assert int(back["r1_sr1_evt0"].extra["metadata/runs"]) == 7


# --- read_event: a scalar reads as empty only when it is pynuml's 0 -----------------------------

# Event 0 holds 42, 41 and 101 hits in planes u, v, y and 34 space points; event 3's plane v nexus edges
# are pynuml's scalar 0 (empty).
@pytest.mark.parametrize("event, field, value, message", [
    # read as no edges before, silently
    ("r1_sr1_evt0", "u_plane_u/edge_index", np.int64(7),
     r"expected shape \[2, E\] or the scalar 0 \(pynuml's encoding of an empty tensor\), got the scalar 7"),
    ("r1_sr1_evt0", "y_nexus_sp/edge_index", np.int64(-1), r"expected shape \[2, E\] or the scalar 0 .* got the scalar -1"),
    ("r1_sr1_evt3", "v_nexus_sp/edge_index", np.int64(1), r"expected shape \[2, E\] or the scalar 0 .* got the scalar 1"),
    # per-hit fields: the error blamed another field, or the wrong shape
    ("r1_sr1_evt0", "u/x", np.float32(2.5), r"expected shape \[N, 2\] or the scalar 0 .* got the scalar 2.5"),
    ("r1_sr1_evt0", "v/y_semantic", np.int64(3), r"expected shape \[N\] or the scalar 0 .* got the scalar 3"),
    ("r1_sr1_evt0", "u/x", np.float32(0), r"expected shape \[42, 2\] \(42 hits, as 'u/pos'\), got the scalar 0 "
                                          r"\(pynuml's encoding of an empty tensor\)"),
    ("r1_sr1_evt0", "y/y_semantic", np.int64(0), r"expected shape \[101\] \(101 hits, as 'y/pos'\), got the scalar 0"),
    ("r1_sr1_evt0", "v/pos", np.float32(0), r"expected shape \[41, 2\] \(41 hits, as 'v/x'\), got the scalar 0"),
    ("r1_sr1_evt0", "u/id", np.int64(0), r"expected shape \[42\] \(42 hits, as 'u/pos'\), got the scalar 0"),
])
def test_scalar_field_that_is_not_an_empty_tensor_is_a_value_error(tmp_path, event, field, value, message):
    path = _copy_fixture(tmp_path, lambda f: _edit_field(f, event, field, lambda v: value))
    where = re.escape(f"{path}: event {event!r}, plane {field[0]!r}, field {field!r}: ")
    with pytest.raises(ValueError, match=where + message):
        hdf5.read_events(path)


def _scalar_plane(f, name, plane, pos_value):
    """Rewrites plane `plane` of event `name` as pynuml stores an empty plane (every field the scalar 0),
    with `{plane}/pos` the scalar `pos_value`."""
    for attr in ("pos", "x", "id", "y_semantic", "y_instance"):
        _edit_field(f, name, f"{plane}/{attr}", lambda v: np.zeros((), v.dtype))
    for key in (f"{plane}_plane_{plane}/edge_index", f"{plane}_nexus_sp/edge_index"):
        _edit_field(f, name, key, lambda v: np.int64(0))
    _edit_field(f, name, f"{plane}/pos", lambda v: np.float32(pos_value))
    # the other planes' nexus edges may point at any space point; the plane's own no longer exist


def test_empty_plane_reads_as_empty_only_when_every_scalar_is_zero(tmp_path):
    good = _copy_fixture(tmp_path, lambda f: _scalar_plane(f, "r1_sr1_evt1", "v", 0))
    res = hdf5.read_events(good)
    assert res.skipped == {"empty plane": ["r1_sr1_evt1"], "no space points": []}
    bad = tmp_path / "bad.gnn.h5"
    os.replace(good, bad)
    with h5py.File(bad, "r+") as f:
        _edit_field(f, "r1_sr1_evt1", "v/pos", lambda v: np.float32(3))  # read as an empty plane before
    with pytest.raises(ValueError, match=re.escape(f"{bad}: event 'r1_sr1_evt1', plane 'v', field 'v/pos': expected "
                                                   "shape [N, 2] or the scalar 0") + ".* got the scalar 3.0"):
        hdf5.read_events(bad)


# --- split_events: as even as possible, empty shards only at the end ----------------------------


@pytest.mark.parametrize("n, shards, sizes", [
    (3, 4, [1, 1, 1, 0]),  # was 1, 1, 0, 1
    (10, 4, [3, 3, 2, 2]),
    (1, 4, [1, 0, 0, 0]),
    (0, 3, [0, 0, 0]),
    (5, 1, [5]),
    (6, 4, [2, 2, 1, 1]),  # was 2, 1, 2, 1
    (5, 8, [1, 1, 1, 1, 1, 0, 0, 0]),  # was 1, 1, 0, 1, 0, 1, 0, 1
    (8, 8, [1] * 8),
])
def test_split_events_sizes(n, shards, sizes):
    events = [random_event(np.random.default_rng(k), (4, 5, 6), 2, str(k)) for k in range(n)]
    groups = graph.split_events(events, shards)
    assert [len(g) for g in groups] == sizes
    assert [e.name for g in groups for e in g] == [str(k) for k in range(n)]


def test_split_events_is_even_and_contiguous_for_every_count():
    for n in range(0, 25):
        for shards in range(1, 10):
            groups = graph.split_events(list(range(n)), shards)
            sizes = [len(g) for g in groups]
            assert len(groups) == shards and sum(groups, []) == list(range(n)), (n, shards)
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True), (n, shards, sizes)


# --- delaunay_edges of degenerate hit sets -----------------------------------------------------


def _valid(ei, n):
    """Edges a padded graph can take: int64 [2, E], indices in range, no self loops, unique, both
    directions, sorted by target then source."""
    assert ei.dtype == np.int64 and ei.ndim == 2 and ei.shape[0] == 2
    if ei.size:
        assert ei.min() >= 0 and ei.max() < n
    assert not np.any(ei[0] == ei[1])
    pairs = list(map(tuple, ei.T))
    assert len(set(pairs)) == len(pairs)
    assert all((i, j) in set(pairs) for j, i in pairs)
    assert pairs == sorted(pairs, key=lambda ji: (ji[1], ji[0]))


def _pyg_delaunay_edges(pos):
    """pynuml's planar edges (`pynuml.graph.edges.delaunay`: PyG's Delaunay then FaceToEdge) in numpy:
    no edge below 2 hits, the one edge for 2, the triangle (0, 1, 2) for 3, qhull "QJ" simplices above."""
    from scipy.spatial import Delaunay

    n = len(pos)
    if n < 2:
        return set()
    faces = [[0, 1, 2]] if n == 3 else Delaunay(pos, qhull_options="QJ").simplices if n > 3 else []
    pairs = {(0, 1), (1, 0)} if n == 2 else set()
    for a, b, c in faces:
        pairs |= {(a, b), (b, a), (b, c), (c, b), (a, c), (c, a)}
    return {(int(j), int(i)) for j, i in pairs}


ONE_WIRE = np.stack([np.full(10, 0.3), np.arange(10) * 0.055], 1)
DEGENERATE = {
    "0 hits": np.zeros((0, 2)),
    "1 hit": np.array([[1.5, 2.0]]),
    "2 hits": np.array([[0.3, 1.0], [0.6, 1.0]]),
    "2 hits at one position": np.array([[0.3, 1.0], [0.3, 1.0]]),
    "3 colinear": np.array([[0.3, 0.0], [0.3, 0.11], [0.3, 0.055]]),
    "3 at one position": np.full((3, 2), 0.9),
    "3, two at one position": np.array([[0.3, 1.0], [0.3, 1.0], [0.6, 1.2]]),
    "one wire": ONE_WIRE,
    "one wire, shuffled": ONE_WIRE[np.random.default_rng(0).permutation(10)],
    "one diagonal": np.stack([np.arange(8) * 0.3, np.arange(8) * 0.055], 1),
    "one wire, every hit twice": np.concatenate([ONE_WIRE, ONE_WIRE]),
    "4 duplicates": np.array([[0.3, 1.0], [0.3, 1.0], [0.6, 1.0], [0.3, 1.1]]),
    "two positions 5 + 3 times": np.array([[0.0, 0.0]] * 5 + [[1.0, 0.0]] * 3),
    "grid with duplicates": np.random.default_rng(1).integers(0, 3, (30, 2)) * 0.3,
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_delaunay_edges_of_degenerate_hits_are_valid_and_pynumls(case):
    pos = DEGENERATE[case]
    ei = delaunay_edges(pos)
    _valid(ei, len(pos))
    assert set(map(tuple, ei.T.tolist())) == _pyg_delaunay_edges(pos)
    if len({tuple(p) for p in pos.tolist()}) == len(pos) >= 2:  # distinct positions: every hit a vertex
        assert set(ei[1].tolist()) == set(range(len(pos)))


@pytest.mark.parametrize("pos", [
    np.full((4, 2), 0.3), np.zeros((40, 2)),  # all at one position: qhull fails even with jitter
    np.array([[5.0, 5.0], [5.0, 5.0], [5.0, 5.0], [5.0, 5.0 + 1e-14]]),  # too close to jitter apart
    np.array([[1e15, 1e15], [1e15 + 1, 1e15], [1e15, 1e15 + 1], [1e15, 1e15]]),  # jitter too large for the width
])
def test_delaunay_edges_where_qhull_fails_chain_every_hit(pos):
    """pynuml (PyG) raises qhull's error here; the fallback connects every hit, with valid edges."""
    ei = delaunay_edges(pos)
    _valid(ei, len(pos))
    assert set(ei[1].tolist()) == set(range(len(pos)))
