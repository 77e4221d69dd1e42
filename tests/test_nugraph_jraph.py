"""NuGraph2 in jraph form: batches built with jraph, the model as jraph graph networks.

Against the official code's fixtures (as tests/test_nugraph_reference.py does for `model.apply`),
against `model.apply` (values and gradients, on graphs with corner cases, with and without jit),
padding that changes nothing, and bad input.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.nugraph import checkpoint, graph, jraph_batch, jraph_model, model
from jaxinterp.nugraph.edges import delaunay_edges
from jaxinterp.nugraph.event import PLANES, Event, PlaneHits
from test_nugraph_graph import random_event
from test_nugraph_reference import CONFIG, FAST_COMPILE, REF, TOL, reference_event, reference_state_dict

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)
GTOL = 3e-14  # of a gradient tensor's largest entry


def _official(dtype: str):
    """Per-event and batched outputs on the fixture events (numpy), one jitted function."""
    dt = np.dtype(dtype)
    params = checkpoint.from_official(reference_state_dict(), CONFIG, dtype=dt)
    events = [reference_event(0), reference_event(1)]
    fn = jax.jit(lambda p, b: jraph_model.apply_graphs(p, b, config=CONFIG), compiler_options=FAST_COMPILE)
    return [jax.device_get(fn(params, jraph_batch.batch_graphs(b, dtype=dt))) for b in ([events[0]], [events[1]], events)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_official_outputs(dtype):
    with jax.enable_x64(dtype == "float64"):
        ev0, ev1, both = _official(dtype)
    for i, out in enumerate((ev0, ev1)):
        for pi, p in enumerate(PLANES):
            n = REF[f"ev{i}/{p}/x"].shape[0]
            np.testing.assert_allclose(out.x_semantic[pi][:n], REF[f"ev{i}/{p}/x_semantic"], rtol=0, atol=TOL[dtype])
            np.testing.assert_allclose(out.x_filter[pi][:n], REF[f"ev{i}/{p}/x_filter"], rtol=0, atol=TOL[dtype])
    for pi, p in enumerate(PLANES):
        n = REF[f"batch/{p}/x_filter"].shape[0]
        np.testing.assert_allclose(both.x_semantic[pi][:n], REF[f"batch/{p}/x_semantic"], rtol=0, atol=TOL[dtype])
        np.testing.assert_allclose(both.x_filter[pi][:n], REF[f"batch/{p}/x_filter"], rtol=0, atol=TOL[dtype])


def _corner_events() -> list[Event]:
    """Random events plus corner cases: a plane of one hit (no planar edge), hits on one wire
    (colinear), hits without space points (random_event links only num_sp hits), a hit with no
    incoming edge."""
    rng = np.random.default_rng(7)
    lone = random_event(rng, (1, 6, 9), 3, "lone")
    pos = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    edges = delaunay_edges(pos[:3])  # the 4th hit has no edge at all
    x = rng.normal(size=(4, 4)).astype(np.float32)
    isolated = Event({p: PlaneHits(x, pos, edges, np.array([[0, 3], [0, 1]]), np.zeros(4, int)) for p in PLANES}, 2, "isolated")
    return [random_event(rng, (12, 9, 15), 6, "a"), lone, random_event(rng, (7, 20, 4), 4, "b"), isolated]


@pytest.fixture(scope="module")
def both_forms():
    """model.apply and apply_graphs on the corner-case events in float64: (real-hit counts per plane,
    (value, outputs, gradients) of each form, a function running the jraph form's forward eagerly).
    The scalar weighs every real output differently, so no two outputs cancel."""
    events = _corner_events()
    with jax.enable_x64(True):
        params = model.init(jax.random.PRNGKey(3), TINY, dtype=jnp.float64)
        gb = graph.pad_batch(events, dtype=np.float64)
        jb = jraph_batch.batch_graphs(events, dtype=np.float64)
        counts = [sum(e.planes[p].x.shape[0] for e in events) for p in PLANES]
        assert [int(m.sum()) for m in jraph_batch.node_masks(jb)] == counts
        weights = [np.random.default_rng(pi).normal(size=(n, TINY.num_classes + 1)) for pi, n in enumerate(counts)]

        def scalar(sem, fil):
            return sum(jnp.sum(sem[pi][:n] * w[:, :-1]) + jnp.sum(fil[pi][:n] * w[:, -1])
                       for pi, (n, w) in enumerate(zip(counts, weights)))

        def fast(p):
            out = model.apply(p, gb, config=TINY)
            return scalar(out.x_semantic, out.x_filter), out

        def graphs(p):
            out = jraph_model.apply_graphs(p, jb, config=TINY)
            return scalar(out.x_semantic, out.x_filter), out

        a = jax.device_get(jax.jit(jax.value_and_grad(fast, has_aux=True))(params))
        b = jax.device_get(jax.jit(jax.value_and_grad(graphs, has_aux=True))(params))

    def eager():
        with jax.enable_x64(True):
            return jax.device_get(jraph_model.apply_graphs(params, jb, config=TINY))

    return counts, a, b, eager


def test_equals_model_apply_values_and_gradients(both_forms):
    counts, ((va, fa), ga), ((vb, fb), gb), _ = both_forms
    # float64; measured 1.1e-16 on the outputs, 1.6e-16 relative on the loss and at most 1.4e-15
    # of a gradient tensor's largest entry (the bounds were 1e-12, 1e-12 and 1e-11 absolute)
    for pi, n in enumerate(counts):
        np.testing.assert_allclose(fb.x_semantic[pi][:n], fa.x_semantic[pi, :n], rtol=0, atol=2e-15)
        np.testing.assert_allclose(fb.x_filter[pi][:n], fa.x_filter[pi, :n], rtol=0, atol=2e-15)
    np.testing.assert_allclose(vb, va, rtol=5e-15, atol=0)
    chex.assert_trees_all_equal_shapes_and_dtypes(gb, ga)  # same tree
    for (path, g), h in zip(jax.tree_util.tree_leaves_with_path(gb), jax.tree.leaves(ga)):  # every gradient
        np.testing.assert_allclose(g, h, rtol=0, atol=GTOL * float(np.max(np.abs(h))), err_msg=jax.tree_util.keystr(path))
    assert all(np.max(np.abs(g)) > 0 for g in jax.tree.leaves(gb["plane_net"]))  # gradients reach the edge nets


def test_eager_equals_jit(both_forms):
    counts, _, ((_, jitted), _), eager = both_forms
    out = eager()
    for pi, n in enumerate(counts):
        # measured 0 (was held to 1e-12)
        np.testing.assert_allclose(out.x_semantic[pi][:n], jitted.x_semantic[pi][:n], rtol=0, atol=2e-15)
        np.testing.assert_allclose(out.x_filter[pi][:n], jitted.x_filter[pi][:n], rtol=0, atol=2e-15)


def test_padding_changes_nothing():
    events = _corner_events()[:2]
    params = model.init(jax.random.PRNGKey(1), TINY)
    fn = jax.jit(lambda b: jraph_model.apply_graphs(params, b, config=TINY))
    tight = jraph_batch.batch_graphs(events)
    s = tight.sizes
    loose = jraph_batch.batch_graphs(events, jraph_batch.JraphSizes(
        tuple(n + 37 for n in s.nodes), tuple(e + 61 for e in s.edges), tuple(x + 5 for x in s.nexus), s.sp + 9, s.graphs + 3))
    a, b = fn(tight), fn(loose)
    compiled = fn._cache_size()
    fn(jraph_batch.batch_graphs(_corner_events()[2:], loose.sizes))  # other events, same budgets: no new compilation
    assert fn._cache_size() == compiled == 2
    for pi, m in enumerate(jraph_batch.node_masks(tight)):
        n = int(m.sum())
        np.testing.assert_allclose(b.x_semantic[pi][:n], a.x_semantic[pi][:n], rtol=0, atol=2e-6)
        np.testing.assert_allclose(b.x_filter[pi][:n], a.x_filter[pi][:n], rtol=0, atol=2e-6)


def test_batch_is_jraphs_union():
    events = _corner_events()
    jb = jraph_batch.batch_graphs(events)
    assert jb.sizes == jraph_batch.pick_jraph_sizes(events)
    for pi, p in enumerate(PLANES):
        g = jb.planes[pi]
        real = [e.planes[p].x.shape[0] for e in events]
        np.testing.assert_array_equal(g.n_node[:len(events)], real)
        offset = sum(real[:2])  # the third event's edges and nexus edges, offset past the first two's hits
        e2 = events[2].planes[p]
        first = sum(np.shape(e.planes[p].edge_index_plane)[1] for e in events[:2])
        np.testing.assert_array_equal(g.senders[first:first + e2.edge_index_plane.shape[1]], e2.edge_index_plane[0] + offset)
        start = sum(e.planes[p].edge_index_nexus.shape[1] for e in events[:2])
        np.testing.assert_array_equal(jb.nexus_hits[pi][start:start + e2.edge_index_nexus.shape[1]],
                                      e2.edge_index_nexus[0] + offset)
        np.testing.assert_array_equal(jb.nexus_sp[pi][start:start + e2.edge_index_nexus.shape[1]],
                                      e2.edge_index_nexus[1] + events[0].num_sp + events[1].num_sp)
    assert int(jb.sp_mask.sum()) == sum(e.num_sp for e in events)


def test_bad_input_is_an_error_before_compute():
    events = _corner_events()[:2]
    with pytest.raises(ValueError, match="events must hold at least one Event"):
        jraph_batch.batch_graphs([])
    small = jraph_batch.pick_jraph_sizes(events)._replace(sp=3)
    with pytest.raises(ValueError, match=r"budgets too small for these 2 events: sp \[3\] \(needs at least \[10\]\)"):
        jraph_batch.batch_graphs(events, small)
    bad = events[0]._replace(planes={**events[0].planes, "u": events[0].planes["u"]._replace(
        x=events[0].planes["u"].x[:, :3])})
    with pytest.raises(ValueError, match=r"plane 'u', field 'x': expected shape \[N, 4\], got \[12, 3\]"):
        jraph_batch.batch_graphs([bad])
    jb = jraph_batch.batch_graphs(events)
    with pytest.raises(ValueError, match="expected 3 plane graphs"):
        jraph_model.apply_graphs({}, jb._replace(planes=jb.planes[:2]), config=TINY)
    narrow = jb.planes[0]._replace(nodes={"x": jb.planes[0].nodes["x"][:, :2]})
    with pytest.raises(ValueError, match=r"plane 'u' nodes\['x'\] must have shape \[N, 4\], got \[\d+, 2\]"):
        jraph_model.apply_graphs({}, jb._replace(planes=(narrow,) + jb.planes[1:]), config=TINY)
