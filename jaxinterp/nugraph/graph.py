"""Fixed-size padded graphs for jit: a list of Events as one disjoint union, padded to buckets.

The three planes are stacked on a leading axis and padded to the same number of hits, so the
model runs each layer as one grouped matmul over (plane, class). Sizes are chosen outside jit
(`pick_sizes`) from a small grid (`bucket`), so a stream of events of varying size compiles once
per bucket.

Planar edges are stored in two parts, for speed on a CPU (`model._plane_messages`): a neighbour
table `plane_neighbours [P, N, K]` holding the first K senders of each hit (sorted by sender, -1
where a hit has fewer), which the model aggregates with K dense gathers and no scatter; and the
rest, the "overflow" edges of hits with more than K incoming edges (Delaunay graphs have about 6
per hit; a few hits have dozens), as a receiver-sorted edge list for a scatter-add. K is a bucket
size like the others (default `NEIGHBOUR_SLOTS`).

Padding never needs a mask inside the model: every padded edge joins the last (padding) hit of
its plane to itself, and every padded nexus edge joins that hit to the last (padding) space point,
so nothing flows from padding into real hits and all values stay finite. Masks only matter for
outputs, losses and metrics (`hit_mask`).

Axis names: P planes, N hits per plane (padded), K neighbour slots per hit, E overflow planar edges
per plane (padded), X nexus edges per plane (padded), S space points (padded), D devices
(data-parallel shards, `stack`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from jaxinterp.checks import is_integer
from jaxinterp.nugraph.event import BACKGROUND, PLANES, SEMANTIC_CLASSES, Event, validate

_MANTISSAS = (4, 5, 6, 7)  # bucket grid: m * 2^k, so padding wastes at most 25%
# hits, the size the model's work scales with, on a finer grid from 64 up (at most 12.5% padding; for events of
# 800-1200 hits per plane, 88% of the padded rows are real hits instead of 81%)
HIT_MANTISSAS = (8, 9, 10, 11, 12, 13, 14, 15)
NEIGHBOUR_SLOTS = 8  # K: incoming planar edges per hit held in the dense neighbour table


def bucket(n: int, *, minimum: int = 16, mantissas: tuple[int, ...] = _MANTISSAS) -> int:
    """The smallest size of the grid `mantissas` x 2^k (default {4, 5, 6, 7} x 2^k; >= minimum) that holds n."""
    n = max(int(n), minimum)
    k = max(0, int(np.floor(np.log2(n))) - int(np.log2(mantissas[0])))
    while True:
        for m in mantissas:
            if m << k >= n:
                return m << k
        k += 1


class BatchSizes(NamedTuple):
    """Padded sizes of a batch (static under jit: one compilation per distinct BatchSizes)."""

    hits: int  # N, per plane, > the most hits of any plane (one padding hit at least)
    edges: int  # E, overflow planar edges per plane (those beyond a hit's first `slots`)
    nexus: int  # X, nexus edges per plane
    sp: int  # S, > the number of space points (one padding space point at least)
    slots: int = NEIGHBOUR_SLOTS  # K, incoming planar edges per hit in the neighbour table


class GraphBatch(NamedTuple):
    """A disjoint union of events, padded. Arrays are numpy on the host, jax inside jit."""

    x: np.ndarray  # [P, N, 4] float: normalised features, 0 for padding
    hit_mask: np.ndarray  # [P, N] bool: real hits
    hit_event: np.ndarray  # [P, N] int32: index of the hit's event in the batch, -1 for padding
    y_semantic: np.ndarray  # [P, N] int32: labels, -1 for background, unlabelled and padding
    plane_neighbours: np.ndarray  # [P, N, K] int32: sources j of the first K edges into hit i, -1 for none
    plane_senders: np.ndarray  # [P, E] int32: source j of each overflow planar edge
    plane_receivers: np.ndarray  # [P, E] int32: its target i, sorted ascending
    nexus_hits: np.ndarray  # [P, X] int32: hit of each nexus edge, edges sorted by space point
    nexus_sp: np.ndarray  # [P, X] int32: space point, sorted ascending
    down_hits: np.ndarray  # [P, X] int32: the same edges sorted by hit (nexus down), ascending
    down_sp: np.ndarray  # [P, X] int32
    sp_mask: np.ndarray  # [S] bool: real space points
    num_events: np.ndarray  # [] int32

    @property
    def sizes(self) -> BatchSizes:
        p, n = self.hit_mask.shape[-2:]
        return BatchSizes(n, self.plane_senders.shape[-1], self.nexus_hits.shape[-1], self.sp_mask.shape[-1],
                          self.plane_neighbours.shape[-1])


def overflow_edges(edge_index: np.ndarray, num_hits: int, slots: int = NEIGHBOUR_SLOTS) -> int:
    """The number of planar edges `[2, E]` that do not fit in a neighbour table of `slots` per hit."""
    degree = np.bincount(np.asarray(edge_index, np.int64).reshape(2, -1)[1], minlength=num_hits)
    return int(np.maximum(degree - slots, 0).sum())


def least_sizes(events: Sequence[Event], *, planes: tuple[str, ...] = PLANES,
                slots: int = NEIGHBOUR_SLOTS) -> BatchSizes:
    """The smallest sizes that hold the disjoint union of `events`, before bucketing: one padding
    hit and one padding space point beyond the real ones, the edges that overflow the table."""
    hits = max(sum(e.planes[p].x.shape[0] for e in events) for p in planes)
    edges = max(sum(overflow_edges(e.planes[p].edge_index_plane, e.planes[p].x.shape[0], slots) for e in events)
                for p in planes)
    nexus = max(sum(np.shape(e.planes[p].edge_index_nexus)[1] for e in events) for p in planes)
    sp = sum(int(e.num_sp) for e in events)
    return BatchSizes(hits + 1, edges, nexus, sp + 1, slots)


def pick_sizes(events: Sequence[Event], *, planes: tuple[str, ...] = PLANES,
               slots: int = NEIGHBOUR_SLOTS) -> BatchSizes:
    """Bucketed sizes that hold the disjoint union of `events` (computed on the host, outside jit)."""
    least = least_sizes(events, planes=planes, slots=slots)
    return BatchSizes(bucket(least.hits, minimum=64, mantissas=HIT_MANTISSAS), bucket(least.edges),
                      bucket(least.nexus), bucket(least.sp), slots)


def check_sizes(sizes, where: str) -> BatchSizes:
    """`sizes` as a BatchSizes (4 or 5 integers, slots optional), else a ValueError naming `where`."""
    if (not isinstance(sizes, (tuple, list)) or len(sizes) not in (4, 5)
            or not all(is_integer(v) for v in sizes)):
        raise ValueError(f"{where}: sizes: expected a graph.BatchSizes (integers {list(BatchSizes._fields)}, "
                         f"slots optional), got {sizes!r}")
    return BatchSizes(*(int(v) for v in sizes))


def pad_batch(events: Sequence[Event], sizes: BatchSizes | None = None, *,
              planes: tuple[str, ...] = PLANES, dtype=np.float32, check: bool = True,
              classes: tuple[str, ...] = SEMANTIC_CLASSES) -> GraphBatch:
    """Validates `events` (labels against `classes`, the model's) and packs them into one padded
    disjoint union (numpy, host side).

    Hit, edge and space-point indices of event k are offset by the counts of events 0..k-1, as
    PyG's `Batch.from_data_list` does, so outputs equal those of the official batched code.
    """
    events = list(events)
    if not events and sizes is None:
        raise ValueError("pad_batch: events must hold at least one Event (or give sizes), got an empty list")
    # a float size was numpy's TypeError from np.zeros, three sizes NamedTuple's "missing argument"
    sizes = None if sizes is None else check_sizes(sizes, "pad_batch")
    if check:
        for e in events:
            validate(e, planes=planes, classes=classes)
    slots = NEIGHBOUR_SLOTS if sizes is None else sizes.slots
    if slots < 1:
        raise ValueError(f"pad_batch: sizes.slots must be >= 1, got {slots}")
    if sizes is None:
        sizes = pick_sizes(events, planes=planes, slots=slots)
    need = least_sizes(events, planes=planes, slots=slots) if events else BatchSizes(1, 0, 0, 1, slots)
    for field, have, want in zip(BatchSizes._fields, sizes, need):
        if have < want:
            raise ValueError(f"pad_batch: sizes.{field} = {have} is too small for these events; "
                             f"expected at least {want}")
    P, N, E, X, S, K = len(planes), sizes.hits, sizes.edges, sizes.nexus, sizes.sp, sizes.slots
    x = np.zeros((P, N, 4), dtype)
    hit_mask = np.zeros((P, N), bool)
    hit_event = np.full((P, N), -1, np.int32)
    y = np.full((P, N), BACKGROUND, np.int32)
    nbr = np.full((P, N, K), -1, np.int32)
    snd = np.full((P, E), N - 1, np.int32)
    rcv = np.full((P, E), N - 1, np.int32)
    nh = np.full((P, X), N - 1, np.int32)
    ns = np.full((P, X), S - 1, np.int32)
    dh = np.full((P, X), N - 1, np.int32)
    ds = np.full((P, X), S - 1, np.int32)
    sp_offsets = np.cumsum([0] + [int(e.num_sp) for e in events])
    for pi, p in enumerate(planes):
        hit_off, edges, nexus = 0, [np.zeros((2, 0), np.int64)], [np.zeros((2, 0), np.int64)]  # no event: no edge
        for k, e in enumerate(events):
            hits = e.planes[p]
            n = hits.x.shape[0]
            x[pi, hit_off:hit_off + n] = hits.x
            hit_mask[pi, hit_off:hit_off + n] = True
            hit_event[pi, hit_off:hit_off + n] = k
            if hits.y_semantic is not None:
                y[pi, hit_off:hit_off + n] = hits.y_semantic
            edges.append(np.asarray(hits.edge_index_plane, np.int64).reshape(2, -1) + hit_off)
            nx = np.asarray(hits.edge_index_nexus, np.int64).reshape(2, -1)
            nexus.append(nx + np.array([[hit_off], [sp_offsets[k]]]))
            hit_off += n
        ei = np.concatenate(edges, axis=1)
        order = _order(ei[1], ei[0])  # receivers ascending: segment sums over sorted ids
        src, dst = ei[0, order], ei[1, order]
        first = np.searchsorted(dst, np.arange(N))  # each receiver's first edge
        slot = np.arange(dst.size) - first[dst]  # rank of the edge among its receiver's edges
        table = slot < K
        nbr[pi, dst[table], slot[table]] = src[table]
        over = ~table
        snd[pi, :over.sum()], rcv[pi, :over.sum()] = src[over], dst[over]
        nx = np.concatenate(nexus, axis=1)
        up = _order(nx[1], nx[0])
        nh[pi, :nx.shape[1]], ns[pi, :nx.shape[1]] = nx[0, up], nx[1, up]
        down = _order(nx[0], nx[1])
        dh[pi, :nx.shape[1]], ds[pi, :nx.shape[1]] = nx[0, down], nx[1, down]
    sp_mask = np.arange(S) < sp_offsets[-1]
    return GraphBatch(x, hit_mask, hit_event, y, nbr, snd, rcv, nh, ns, dh, ds, sp_mask,
                      np.asarray(len(events), np.int32))


def _order(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray | slice:
    """The permutation sorting int pairs by (primary, secondary), as np.lexsort((secondary, primary)).

    Delaunay edges (`edges.delaunay_edges`) come sorted by (target, source), and a union of sorted
    events offset one after another stays sorted: one O(E) check then skips the sort (a two-key
    lexsort of a 32-event union's edges took most of `pad_batch`'s 2.8 ms per event).
    """
    key = primary.astype(np.int64) * (int(secondary.max(initial=0)) + 1) + secondary
    if np.all(key[1:] >= key[:-1]):
        return slice(None)
    return np.argsort(key, kind="stable")


def stack(batches: Sequence[GraphBatch]) -> GraphBatch:
    """Stacks equally-sized batches on a new leading axis D (one shard per device)."""
    sizes = {b.sizes for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"stack: batches must share their BatchSizes, got {sorted(sizes)}")
    return GraphBatch(*(np.stack(leaves) for leaves in zip(*batches)))


def split_events(events: Sequence[Event], shards: int) -> list[list[Event]]:
    """Splits events into `shards` contiguous groups, in order, as even as possible: counts differ by at
    most 1, larger groups first, so empty groups (fewer events than shards) only at the end (3 events
    over 4 shards: 1, 1, 1, 0; 10 over 4: 3, 3, 2, 2)."""
    if not is_integer(shards) or shards < 1:  # 0 and -1 gave no group at all: every event dropped
        raise ValueError(f"split_events: shards must be an integer >= 1, got {shards!r}")
    events = list(events)
    # np.linspace(...).round() rounded halves to even: 3 over 4 gave 1, 1, 0, 1 (an empty middle shard)
    q, r = divmod(len(events), shards)
    bounds = np.concatenate([[0], np.cumsum([q + 1] * r + [q] * (shards - r))]).astype(int)
    return [events[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
