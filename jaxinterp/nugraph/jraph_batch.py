"""NuGraph2's input as jraph graphs: one `jraph.GraphsTuple` per wire plane, plus the nexus edges.

Each plane of a batch is a jraph graph whose nodes are that plane's hits and whose edges are its
planar (Delaunay) edges, one graph per event: the events are joined with `jraph.batch` (node
indices offset event by event, the order of PyG's `Batch.from_data_list`) and padded with
`jraph.pad_with_graphs` to bucketed budgets, so a stream of batches compiles once per budget.
A GraphsTuple has one node set, so the nexus edges, which join a plane's hits to the event's space
points (a second node set, shared by the three planes), are index arrays beside it: padding nexus
edges join the plane's first padding node to the first padding space point, where they change no
real hit or space point.

This is the form users of jraph pipelines bring and the form `jraph_model.apply_graphs` runs. The
production forward (`model.apply`) takes `graph.GraphBatch` instead: the same union, with the planes
stacked to one hit budget and each hit's first incoming edges in a dense neighbour table.

Axis names: N_p nodes (hits) of plane p, E_p planar edges, X_p nexus edges, S space points, G graphs
(events + padding graphs), D = 4 input features.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jraph
import numpy as np

from jaxinterp.checks import is_integer
from jaxinterp.nugraph.event import PLANES, SEMANTIC_CLASSES, Event, validate
from jaxinterp.nugraph.graph import bucket


class JraphSizes(NamedTuple):
    """Padded budgets (static under jit: one compilation per distinct JraphSizes)."""

    nodes: tuple[int, ...]  # N_p per plane, > the plane's hits (jraph's padding graph needs a node)
    edges: tuple[int, ...]  # E_p per plane
    nexus: tuple[int, ...]  # X_p per plane
    sp: int  # S, > the number of space points
    graphs: int  # G, > the number of events


class JraphBatch(NamedTuple):
    """A padded batch of events in jraph form (numpy on the host, jax inside jit)."""

    planes: tuple[jraph.GraphsTuple, ...]  # per plane: nodes {"x": [N_p, D]}, senders j / receivers i [E_p]
    nexus_hits: tuple[np.ndarray, ...]  # per plane [X_p]: node index in the plane's graph
    nexus_sp: tuple[np.ndarray, ...]  # per plane [X_p]: space-point index
    sp_mask: np.ndarray  # [S] bool: real space points

    @property
    def sizes(self) -> JraphSizes:
        """The budgets, read from static shapes (also inside jit)."""
        return JraphSizes(tuple(int(g.nodes["x"].shape[0]) for g in self.planes),
                          tuple(int(g.senders.shape[0]) for g in self.planes),
                          tuple(int(h.shape[0]) for h in self.nexus_hits), int(self.sp_mask.shape[0]),
                          int(self.planes[0].n_node.shape[0]))


def _least(events: Sequence[Event], planes: tuple[str, ...]) -> JraphSizes:
    """The smallest budgets that hold `events`: one padding node, space point and graph beyond the real ones."""
    total = lambda f: tuple(sum(f(e.planes[p]) for e in events) for p in planes)  # noqa: E731
    return JraphSizes(tuple(n + 1 for n in total(lambda h: h.x.shape[0])),
                      total(lambda h: np.shape(h.edge_index_plane)[1]), total(lambda h: np.shape(h.edge_index_nexus)[1]),
                      sum(int(e.num_sp) for e in events) + 1, len(events) + 1)


def pick_jraph_sizes(events: Sequence[Event], *, planes: tuple[str, ...] = PLANES) -> JraphSizes:
    """Bucketed budgets that hold `events` (host side, outside jit)."""
    least = _least(events, planes)
    return JraphSizes(tuple(map(bucket, least.nodes)), tuple(map(bucket, least.edges)),
                      tuple(map(bucket, least.nexus)), bucket(least.sp), bucket(least.graphs, minimum=2))


def check_jraph_sizes(sizes, planes: tuple[str, ...]) -> JraphSizes:
    """`sizes` as a JraphSizes (nodes, edges, nexus: one integer per plane; sp, graphs: integers), else a
    ValueError (a float sp of 64.5 padded to 65 space points, a string was numpy's UFuncTypeError, four
    fields JraphSizes' 'missing argument', a boolean budget 1)."""
    fields = list(sizes) if isinstance(sizes, (tuple, list)) and len(sizes) == len(JraphSizes._fields) else None
    per_plane = fields is not None and all(isinstance(v, (tuple, list)) and len(v) == len(planes)
                                           and all(is_integer(k) for k in v) for v in fields[:3])
    if not (per_plane and all(is_integer(v) for v in fields[3:])):
        raise ValueError(f"batch_graphs: sizes: expected a jraph_batch.JraphSizes (nodes, edges, nexus: {len(planes)} "
                         f"integers each, one per plane {list(planes)}; sp, graphs: integers), got {sizes!r}")
    return JraphSizes(*(tuple(int(k) for k in v) for v in fields[:3]), int(fields[3]), int(fields[4]))


def batch_graphs(events: Sequence[Event], sizes: JraphSizes | None = None, *,
                 planes: tuple[str, ...] = PLANES, dtype=np.float32,
                 classes: tuple[str, ...] = SEMANTIC_CLASSES) -> JraphBatch:
    """Validates `events` (labels against `classes`, the model's) and joins them into one padded
    JraphBatch (numpy, host side).

    A ValueError names the event, plane and field of bad input; budgets too small for the events
    are a ValueError too (before anything is built).
    """
    events = list(events)
    if not events:
        raise ValueError("batch_graphs: events must hold at least one Event, got an empty list")
    sizes = None if sizes is None else check_jraph_sizes(sizes, planes)  # before the events are checked
    for e in events:
        validate(e, planes=planes, classes=classes)
    least = _least(events, planes)
    sizes = pick_jraph_sizes(events, planes=planes) if sizes is None else sizes
    ints = lambda v: [int(k) for k in np.atleast_1d(v)]  # noqa: E731
    short = [f"{name} {ints(have)} (needs at least {ints(want)})"
             for name, have, want in zip(JraphSizes._fields, sizes, least)
             if np.shape(have) != np.shape(want) or np.any(np.asarray(have) < np.asarray(want))]
    if short:
        raise ValueError(f"batch_graphs: budgets too small for these {len(events)} events: {'; '.join(short)}")
    graphs, hits, sps = [], [], []
    sp_offsets = np.cumsum([0] + [int(e.num_sp) for e in events])
    for pi, p in enumerate(planes):
        per_event = [jraph.GraphsTuple(
            nodes={"x": np.asarray(e.planes[p].x, dtype)}, edges=None, globals=None,
            senders=np.asarray(e.planes[p].edge_index_plane[0], np.int32),
            receivers=np.asarray(e.planes[p].edge_index_plane[1], np.int32),
            n_node=np.array([e.planes[p].x.shape[0]], np.int32),
            n_edge=np.array([np.shape(e.planes[p].edge_index_plane)[1]], np.int32)) for e in events]
        union = jraph.batch_np(per_event)
        graphs.append(jraph.pad_with_graphs(union, sizes.nodes[pi], sizes.edges[pi], sizes.graphs))
        hit_offsets = np.cumsum([0] + [e.planes[p].x.shape[0] for e in events])
        nh = [np.asarray(e.planes[p].edge_index_nexus[0], np.int64) + hit_offsets[k] for k, e in enumerate(events)]
        ns = [np.asarray(e.planes[p].edge_index_nexus[1], np.int64) + sp_offsets[k] for k, e in enumerate(events)]
        pad = sizes.nexus[pi] - sum(len(a) for a in nh)
        hits.append(np.concatenate(nh + [np.full(pad, hit_offsets[-1])]).astype(np.int32))
        sps.append(np.concatenate(ns + [np.full(pad, sp_offsets[-1])]).astype(np.int32))
    return JraphBatch(tuple(graphs), tuple(hits), tuple(sps), np.arange(sizes.sp) < sp_offsets[-1])


def node_masks(batch: JraphBatch) -> tuple[np.ndarray, ...]:
    """[N_p] bool per plane: the real hits (jraph's padding graph is the last graphs)."""
    return tuple(np.asarray(jraph.get_node_padding_mask(g)) for g in batch.planes)
