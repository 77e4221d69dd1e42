"""NuGraph2 host side: Delaunay edges, buckets, padded batches, bad input and bad checkpoints."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.nugraph import checkpoint, graph
from jaxinterp.nugraph.edges import delaunay_edges
from jaxinterp.nugraph.event import PLANES, Event, PlaneHits, validate

FIXTURES = Path(__file__).parent / "fixtures"


def random_event(rng, hits=(12, 9, 15), num_sp=6, name="") -> Event:
    planes = {}
    for p, n in zip(PLANES, hits):
        pos = np.stack([rng.integers(0, 5, n) * 0.3, rng.uniform(0, 10, n)], axis=1)  # few wires: colinear
        nx = np.stack([rng.permutation(n)[:min(n, num_sp)], np.arange(min(n, num_sp))])
        planes[p] = PlaneHits(rng.normal(size=(n, 4)).astype(np.float32), pos, delaunay_edges(pos), nx,
                              rng.integers(-1, 5, n))
    return Event(planes, num_sp, name)


# --- edges ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos, n_edges", [
    (np.zeros((0, 2)), 0),
    (np.zeros((1, 2)), 0),
    (np.array([[0.0, 0.0], [1.0, 1.0]]), 2),
    (np.array([[0.3, 0.0], [0.3, 1.0], [0.3, 2.0], [0.3, 3.0]]), None),  # one wire: colinear, needs QJ
    (np.ones((5, 2)), None),  # identical points
    (np.random.default_rng(0).uniform(size=(60, 2)), None),
])
def test_delaunay_edges_are_symmetric_unique_and_sorted(pos, n_edges):
    ei = delaunay_edges(pos)
    n = len(pos)
    assert ei.shape[0] == 2 and ei.dtype == np.int64
    if n_edges is not None:
        assert ei.shape[1] == n_edges
    if n >= 3:  # every hit is connected
        assert set(ei[1]) == set(range(n))
    pairs = set(map(tuple, ei.T))
    assert len(pairs) == ei.shape[1]  # no duplicates
    assert all((j, i) in pairs for i, j in pairs)  # both directions
    assert np.all(ei[0] != ei[1])
    assert np.all(np.diff(ei[1]) >= 0)  # sorted by target


def _fixture_planes():
    """(name, pos, edges) of every plane of the reference events: nugraph2_reference.npz's two events
    (edges from the official code's preprocessing) and the eight events pynuml 24.6.0 wrote to
    nugraph2_events.gnn.h5."""
    import h5py

    ref = np.load(FIXTURES / "nugraph2_reference.npz")
    for i in (0, 1):
        for p in PLANES:
            yield f"npz ev{i} {p}", ref[f"ev{i}/{p}/pos"], ref[f"ev{i}/{p}/edge_index_plane"]
    with h5py.File(FIXTURES / "nugraph2_events.gnn.h5") as f:
        for name in f["dataset"]:
            rec = f["dataset"][name][()]
            for p in PLANES:
                yield f"h5 {name} {p}", rec[f"{p}/pos"], rec[f"{p}_plane_{p}/edge_index"]


def test_delaunay_edges_are_the_reference_edges():
    """The planar edges the reference preprocessing built from the same hit positions: the same set of
    directed edges for all 30 planes (nothing else compared `pos` with `edge_index_plane`)."""
    planes = list(_fixture_planes())
    assert len(planes) == 2 * 3 + 8 * 3
    for what, pos, want in planes:
        got = delaunay_edges(pos)
        assert want.shape[0] == 2 and want.shape[1] > len(pos), what  # a real triangulation, not an empty list
        assert got.shape == want.shape, what
        assert set(map(tuple, got.T)) == set(map(tuple, want.T)), what


def test_delaunay_edges_bad_input():
    with pytest.raises(ValueError, match="pos must have shape \\[N, 2\\], got \\[4, 3\\]"):
        delaunay_edges(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        delaunay_edges(np.full((4, 2), np.nan))


# --- buckets and padding ------------------------------------------------------------------------

@pytest.mark.parametrize("n, want", [(0, 16), (16, 16), (17, 20), (81, 96), (1001, 1024), (1025, 1280),
                                     (1200, 1280), (30000, 32768)])
def test_bucket(n, want):
    assert graph.bucket(n) == want


@pytest.mark.parametrize("n, want", [(0, 16), (17, 18), (81, 88), (1001, 1024), (1025, 1152), (1153, 1280),
                                     (1281, 1408), (30000, 30720)])
def test_hit_bucket_grid(n, want):
    assert graph.bucket(n, mantissas=graph.HIT_MANTISSAS) == want


@pytest.mark.parametrize("slots", [2, graph.NEIGHBOUR_SLOTS])
def test_pad_batch_offsets_and_padding(slots):
    rng = np.random.default_rng(1)
    events = [random_event(rng, (12, 9, 15), 6), random_event(rng, (7, 11, 5), 4)]
    sizes = graph.pick_sizes(events, slots=slots)
    b = graph.pad_batch(events, sizes)
    N, E, X, S, K = b.sizes
    assert K == slots and b.plane_neighbours.shape == (3, N, K)
    assert b.x.shape == (3, N, 4) and N > 15 + 5 and S > 10
    overflowed = 0
    for pi, p in enumerate(PLANES):
        n0, n1 = events[0].planes[p].x.shape[0], events[1].planes[p].x.shape[0]
        np.testing.assert_array_equal(b.hit_event[pi, :n0 + n1], [0] * n0 + [1] * n1)
        assert not b.hit_mask[pi, n0 + n1:].any() and (b.hit_event[pi, n0 + n1:] == -1).all()
        np.testing.assert_array_equal(b.x[pi, n0:n0 + n1], events[1].planes[p].x)
        # the neighbour table and the overflow list hold every edge of the union once, and nothing else
        table = {(j, i) for i in range(N) for j in b.plane_neighbours[pi, i] if j >= 0}
        real = b.plane_receivers[pi] < N - 1
        over = list(zip(b.plane_senders[pi, real], b.plane_receivers[pi, real]))
        want = set(map(tuple, events[0].planes[p].edge_index_plane.T)) | set(
            map(tuple, (events[1].planes[p].edge_index_plane + n0).T))
        assert not table & set(over) and len(over) == len(set(over)) and table | set(over) == want
        overflowed += len(over)
        # a hit's table row is full before any of its edges overflows; empty slots come last
        rows = b.plane_neighbours[pi]
        assert all((rows[i] >= 0).all() for i in b.plane_receivers[pi, real])
        assert np.all(np.diff((rows >= 0).astype(int), axis=1) <= 0)
        assert np.all(np.diff(b.plane_receivers[pi]) >= 0) and np.all(np.diff(b.nexus_sp[pi]) >= 0)
        assert np.all(np.diff(b.down_hits[pi]) >= 0)
        assert (b.plane_senders[pi, ~real] == N - 1).all()  # padding edges stay on the padding hit
        assert (b.nexus_sp[pi, 10:] == S - 1).all() and (b.nexus_sp[pi, 6:10] >= 6).all()  # sp offsets
    assert (overflowed > 0) == (slots == 2)
    assert b.sp_mask.sum() == 10 and int(b.num_events) == 2


def test_pad_batch_bad_sizes_and_empty():
    rng = np.random.default_rng(2)
    ev = random_event(rng)
    with pytest.raises(ValueError, match="sizes.hits = 8 is too small"):
        graph.pad_batch([ev], graph.BatchSizes(8, 256, 64, 64))
    with pytest.raises(ValueError, match="at least one Event"):
        graph.pad_batch([])
    with pytest.raises(ValueError, match="share their BatchSizes"):
        graph.stack([graph.pad_batch([ev]), graph.pad_batch([ev], graph.BatchSizes(64, 256, 64, 64))])


def test_pad_batch_takes_the_least_sizes_and_no_event():
    """Budgets are checked against what the events need (one padding hit and space point beyond
    them), not against the bucketed sizes; no event at all gives an all-padding batch."""
    rng = np.random.default_rng(5)
    events = [random_event(rng, name="a"), random_event(rng, hits=(7, 20, 3), num_sp=4, name="b")]
    least = graph.least_sizes(events, slots=2)
    # hits: the largest plane's union (9 + 20) + 1; nexus: the largest plane's (6 + 4); sp: 6 + 4 + 1
    assert (least.hits, least.nexus, least.sp, least.slots) == (9 + 20 + 1, 6 + 4, 6 + 4 + 1, 2)
    tight, roomy = graph.pad_batch(events, least), graph.pad_batch(events, graph.pick_sizes(events, slots=2))
    for field in ("x", "y_semantic", "hit_event"):
        a, b = getattr(tight, field), getattr(roomy, field)
        np.testing.assert_array_equal(a[tight.hit_mask], b[roomy.hit_mask])
    for field in graph.BatchSizes._fields[:4]:
        with pytest.raises(ValueError, match=f"sizes.{field} = .* too small"):
            graph.pad_batch(events, least._replace(**{field: getattr(least, field) - 1}))
    empty = graph.pad_batch([], least)  # a device's share of a chunk smaller than the mesh
    assert not empty.hit_mask.any() and not empty.sp_mask.any() and int(empty.num_events) == 0
    assert (empty.plane_neighbours == -1).all() and (empty.plane_senders == least.hits - 1).all()


def test_an_empty_edge_list_of_any_dtype_is_no_edge():
    ev = random_event(np.random.default_rng(6), hits=(1, 9, 15))
    ev = _edit(ev, "u", edge_index_plane=np.zeros((2, 0)))  # np.zeros' float64: still no edge
    validate(ev)
    assert graph.pad_batch([ev]).hit_mask.sum() == 1 + 9 + 15


# --- bad input: a ValueError naming the plane and field, before anything is computed -------------

def _edit(event: Event, plane: str, **fields) -> Event:
    planes = dict(event.planes)
    if fields.get("drop"):
        del planes[plane]
    else:
        planes[plane] = planes[plane]._replace(**fields)
    return event._replace(planes=planes)


def _nan_x(ev):
    x = ev.planes["y"].x.copy()
    x[3, 2] = np.nan
    return _edit(ev, "y", x=x)


def _bad_edge(ev):
    ei = ev.planes["u"].edge_index_plane.copy()
    ei[1, 0] = 99
    return _edit(ev, "u", edge_index_plane=ei)


def _bad_nexus(ev):
    nx = ev.planes["v"].edge_index_nexus.copy()
    nx[1, 0] = ev.num_sp
    return _edit(ev, "v", edge_index_nexus=nx)


@pytest.mark.parametrize("corrupt, message", [
    (lambda ev: _edit(ev, "v", drop=True), "missing plane\\(s\\) \\['v'\\]"),
    (lambda ev: _edit(ev, "u", x=ev.planes["u"].x[:, :3]), "plane 'u', field 'x': expected shape \\[N, 4\\], got \\[12, 3\\]"),
    (_nan_x, "plane 'y', field 'x': expected finite values, got NaN or inf at 1 of 15 hits \\(first: hit 3\\)"),
    (_bad_edge, "plane 'u', field 'edge_index_plane': row 1 \\(hits\\) index 99 out of range \\[0, 12\\)"),
    (_bad_nexus, "plane 'v', field 'edge_index_nexus': row 1 \\(space points\\) index 6 out of range \\[0, 6\\)"),
    (lambda ev: _edit(ev, "u", y_semantic=np.full(12, 7)), "plane 'u', field 'y_semantic': labels must lie in"),
    (lambda ev: _edit(ev, "u", y_semantic=np.zeros(11, int)),
     "plane 'u', field 'y_semantic': expected shape \\[12\\], got \\[11\\]"),
    (lambda ev: _edit(ev, "v", pos=ev.planes["v"].pos[:, :1]), "plane 'v', field 'pos': expected shape \\[9, 2\\], got \\[9, 1\\]"),
    (lambda ev: _edit(ev, "y", edge_index_plane=ev.planes["y"].edge_index_plane.T),
     "plane 'y', field 'edge_index_plane': expected shape \\[2, E\\]"),
    (lambda ev: _edit(ev, "y", edge_index_nexus=ev.planes["y"].edge_index_nexus.astype(np.float32)),
     "plane 'y', field 'edge_index_nexus': expected integer indices, got float32"),
    (lambda ev: ev._replace(num_sp=-1), "num_sp must be a non-negative integer, got -1"),
    # float labels would be truncated into classes (0.7 -> MIP, NaN -> int min): refused
    (lambda ev: _edit(ev, "v", y_semantic=np.full(9, 0.7)), "plane 'v', field 'y_semantic': expected integer labels, "
     "got dtype float64"),
])
def test_bad_event_is_an_error_before_compute(corrupt, message):
    from jaxinterp.nugraph.predict import _trace_count, predict

    ev = corrupt(random_event(np.random.default_rng(3), name="bad"))
    with pytest.raises(ValueError, match="event 'bad', " + message if message.startswith("plane") else message):
        validate(ev)
    traces = _trace_count[0]
    with pytest.raises(ValueError, match=message):
        predict({}, [random_event(np.random.default_rng(4)), ev])  # nothing runs: params are not even read
    assert _trace_count[0] == traces
    with pytest.raises(ValueError, match=message):
        graph.pad_batch([ev])


# --- checkpoints that are not NuGraph2's ---------------------------------------------------------

def _rewrite_ckpt(tmp_path: Path, edit) -> Path:
    src = zipfile.ZipFile(FIXTURES / "nugraph2_reference.ckpt")
    out = tmp_path / "edited.ckpt"
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, edit(data) if item.filename.endswith("data.pkl") else data)
    return out


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    # a plane named 'w' instead of 'u' in one weight's name: unknown and missing names, both named
    path = _rewrite_ckpt(tmp_path, lambda d: d.replace(b"encoder.net.u.0.net.3.bias", b"encoder.net.w.0.net.3.bias"))
    with pytest.raises(ValueError, match="edited.ckpt: .*unknown names \\['encoder.net.w.0.net.3.bias'\\], "
                                         "missing names \\['encoder.net.u.0.net.3.bias'\\]"):
        checkpoint.load_official_checkpoint(path)


def test_checkpoint_with_a_foreign_global_is_refused(tmp_path):
    import os

    payload = pickle.dumps({"state_dict": {}, "hook": os.getcwd}, protocol=2)
    path = _rewrite_ckpt(tmp_path, lambda d: payload)
    with pytest.raises(ValueError, match="refusing to load global (posix|nt).getcwd"):
        checkpoint.load_official_checkpoint(path)


def _filter_head_off(data: bytes) -> bytes:
    at = data.index(b"filter_head", data.index(b"hyper_parameters"))
    true = data.index(b"\x88", at)  # the NEWTRUE opcode of its value
    return data[:true] + b"\x89" + data[true + 1:]


def test_checkpoint_without_a_head_is_refused(tmp_path):
    path = _rewrite_ckpt(tmp_path, _filter_head_off)
    with pytest.raises(ValueError, match="hyper_parameters\\['filter_head'\\] is False"):
        checkpoint.load_official_checkpoint(path)


def test_pad_batch_does_not_depend_on_edge_order():
    rng = np.random.default_rng(5)
    ev = random_event(rng, (30, 25, 40), 12)
    shuffled = Event({p: h._replace(edge_index_plane=h.edge_index_plane[:, rng.permutation(h.edge_index_plane.shape[1])],
                                    edge_index_nexus=h.edge_index_nexus[:, ::-1])
                      for p, h in ev.planes.items()}, ev.num_sp, ev.name)
    sizes = graph.pick_sizes([ev], slots=3)
    for a, b in zip(graph.pad_batch([ev], sizes), graph.pad_batch([shuffled], sizes)):
        np.testing.assert_array_equal(a, b)
