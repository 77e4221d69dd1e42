"""NuGraph2 as jraph graph networks, hit-major `[N, C, F]` as in the paper: the readable form.

Each iteration is, per wire plane, one `jraph.GraphNetwork` over the plane's graph (the plane net:
an edge function that weighs each neighbour's features by a softmax over the classes, an aggregation
by `jraph.segment_sum`, a node function, the node net), then the nexus: every space point sums the
features of its hits in the three planes (`jraph.segment_sum`), mixes them, and each hit takes the
`jraph.segment_mean` of its space points' weighted messages. It computes what `model.apply` computes
(tests/test_nugraph_jraph.py: both against the official code's fixtures, and against each other);
`model.apply` is the production form, rearranged for speed (class-major layout, the linear parts of
the edge and node nets split per node, a dense neighbour table). Run this one on batches from
`jraph_batch.batch_graphs`, or on GraphsTuples a jraph pipeline builds.

Axis names: N hits of a plane (nodes), E planar edges, X nexus edges, S space points, C classes,
F planar features, Fn nexus features, D = 4 input features.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxinterp.nugraph.jraph_batch import JraphBatch
from jaxinterp.nugraph.model import NuGraph2Config, Params, check_params


class GraphOutputs(NamedTuple):
    """The decoders' outputs per plane (config.planes order); rows of padding nodes are meaningless."""

    x_semantic: tuple[jax.Array, ...]  # [N_p, C] logits
    x_filter: tuple[jax.Array, ...]  # [N_p] probability that the hit belongs to the interaction


def class_linear(w, h):
    """ClassLinear: a separate Linear per class slice. w: kernel [C, I, O], bias [C, O]; h [..., C, I] -> [..., C, O]."""
    return jnp.einsum("...ci,cio->...co", h, w["kernel"]) + w["bias"]


def _node_net(w, h):
    """tanh(node_net_1(tanh(node_net_0(h)))): [..., C, I] -> [..., C, F]."""
    return jnp.tanh(class_linear(w["node_net_1"], jnp.tanh(class_linear(w["node_net_0"], h))))


def _class_softmax(w, h):
    """softmax over the classes of the edge net on a detached input: [E, C, I] -> [E, C, 1]."""
    return jax.nn.softmax(class_linear(w, jax.lax.stop_gradient(h)), axis=-2)


def plane_net(w: Params) -> jraph.GraphNetwork:
    """The plane net of one wire plane as a jraph GraphNetwork on nodes {"h": [N, C, F + D]} (h and x).

    Edge j -> i: a_ij = softmax_C(edge_net(concat(h_i, h_j))), message a_ij * h_j; node i:
    node_net(concat(h_i, sum_j a_ij h_j)) -> nodes {"h": [N, C, F]}.
    """

    def update_edge_fn(edges, sent, received, globals_):
        del edges, globals_
        a = _class_softmax(w["edge_net"], jnp.concatenate([received["h"], sent["h"]], axis=-1))
        return a * sent["h"]  # [E, C, F + D]

    def update_node_fn(nodes, sent_agg, received_agg, globals_):
        del sent_agg, globals_
        return {"h": _node_net(w, jnp.concatenate([nodes["h"], received_agg], axis=-1))}

    return jraph.GraphNetwork(update_edge_fn=update_edge_fn, update_node_fn=update_node_fn)


def nexus_up(w: Params, hs: tuple[jax.Array, ...], hits: tuple[jax.Array, ...], sp: tuple[jax.Array, ...],
             num_sp: int) -> jax.Array:
    """Each space point sums its hits' h in every plane; the sums, concatenated over the planes, go
    through nexus_net_0 and nexus_net_1: hs P x [N_p, C, F] -> n [S, C, Fn]."""
    sums = [jraph.segment_sum(h[i], k, num_sp) for h, i, k in zip(hs, hits, sp)]  # P x [S, C, F]
    n = jnp.tanh(class_linear(w["nexus_net_0"], jnp.concatenate(sums, axis=-1)))
    return jnp.tanh(class_linear(w["nexus_net_1"], n))


def nexus_down(w: Params, h: jax.Array, n: jax.Array, hits: jax.Array, sp: jax.Array) -> jax.Array:
    """Each hit takes the mean of b_ik n_k over its space points k (0 if none), b_ik =
    softmax_C(edge_net(concat(h_i, n_k))); then node_net(concat(h_i, g_i)): h [N, C, F] -> [N, C, F]."""
    b = _class_softmax(w["edge_net"], jnp.concatenate([h[hits], n[sp]], axis=-1))  # [X, C, 1]
    g = jraph.segment_mean(b * n[sp], hits, h.shape[0])  # [N, C, Fn]
    return _node_net(w, jnp.concatenate([h, g], axis=-1))


def _check_pair(plane: str, size: str, **arrays) -> None:
    """ValueError unless the two index arrays (senders/receivers, or a plane's nexus hits/space
    points) are 1-D of one shape [size]."""
    shapes = {k: jnp.shape(a) for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"apply_graphs: plane '{plane}' {' and '.join(shapes)} must have one shape [{size}], "
                         f"got {shapes}")


def _check_indices(batch: JraphBatch, planes: tuple[str, ...]) -> None:
    """ValueError naming the plane and array of the first index outside its node set: gathers would clamp
    it and segment sums drop it, silently. Only concrete indices are checked (an eager call); under jit they
    are traced and unchecked here (`jraph_batch.batch_graphs` checks the events it builds from)."""
    S = int(jnp.shape(batch.sp_mask)[0])
    for p, g, hits, sp in zip(planes, batch.planes, batch.nexus_hits, batch.nexus_sp):
        N = int(g.nodes["x"].shape[0])
        for name, a, bound, noun in (("senders", g.senders, N, "nodes"), ("receivers", g.receivers, N, "nodes"),
                                     ("nexus_hits", hits, N, "nodes"), ("nexus_sp", sp, S, "space points")):
            if isinstance(a, jax.core.Tracer) or not jnp.size(a):
                continue
            a = np.asarray(a)
            if a.min() < 0 or a.max() >= bound:
                bad = a.min() if a.min() < 0 else a.max()
                raise ValueError(f"apply_graphs: plane '{p}' {name}: index {bad} out of range [0, {bound}) "
                                 f"({bound} {noun})")


def apply_graphs(params: Params, batch: JraphBatch, *, config: NuGraph2Config = NuGraph2Config()) -> GraphOutputs:
    """NuGraph2 forward on a JraphBatch (jit it with `config` static).

    Params not of `config`'s shapes and a batch of the wrong structure (plane count, feature width,
    index arrays of mismatched shapes) are a ValueError at trace time, before anything is computed; so
    are indices out of range when they are concrete (called eagerly; under jit they are traced and
    `jraph_batch.batch_graphs` has checked them).
    """
    if not isinstance(config, NuGraph2Config):  # an AttributeError from inside before
        raise ValueError(f"apply_graphs: config: expected a NuGraph2Config, got {type(config).__name__}")
    if not isinstance(batch, JraphBatch):
        raise ValueError(f"apply_graphs: batch: expected a jraph_batch.JraphBatch (jraph_batch.batch_graphs), "
                         f"got {type(batch).__name__}")
    planes, C = config.planes, config.num_classes
    if len(batch.planes) != len(planes):
        raise ValueError(f"apply_graphs: expected {len(planes)} plane graphs ({', '.join(planes)}), "
                         f"got {len(batch.planes)}")
    if len(batch.nexus_hits) != len(planes) or len(batch.nexus_sp) != len(planes):
        raise ValueError(f"apply_graphs: expected {len(planes)} nexus index arrays in nexus_hits and nexus_sp, "
                         f"got {len(batch.nexus_hits)} and {len(batch.nexus_sp)}")
    if jnp.ndim(batch.sp_mask) != 1:
        raise ValueError(f"apply_graphs: sp_mask must have shape [S], got {list(jnp.shape(batch.sp_mask))}")
    for p, g, hits, sp in zip(planes, batch.planes, batch.nexus_hits, batch.nexus_sp):
        if not isinstance(g.nodes, Mapping) or "x" not in g.nodes:
            raise ValueError(f"apply_graphs: plane '{p}' nodes must be a dict with the input features under 'x', "
                             f"got {type(g.nodes).__name__}" + (f" with keys {sorted(g.nodes)}"
                                                                if isinstance(g.nodes, Mapping) else ""))
        x = g.nodes["x"]
        if x.ndim != 2 or x.shape[1] != config.in_features:
            raise ValueError(f"apply_graphs: plane '{p}' nodes['x'] must have shape [N, {config.in_features}], "
                             f"got {list(x.shape)}")
        _check_pair(p, "E", senders=g.senders, receivers=g.receivers)
        _check_pair(p, "X", nexus_hits=hits, nexus_sp=sp)
    _check_indices(batch, planes)
    check_params(params, config, where="apply_graphs: params")
    xs = [jnp.broadcast_to(g.nodes["x"][:, None, :], (g.nodes["x"].shape[0], C, config.in_features))
          for g in batch.planes]  # P x [N, C, D]
    hs = [jnp.tanh(class_linear(params["encoder"][p], x)) for p, x in zip(planes, xs)]
    nets = [plane_net(params["plane_net"][p]) for p in planes]
    num_sp = batch.sp_mask.shape[0]
    for _ in range(config.num_iters):
        hs = [net(g._replace(nodes={"h": jnp.concatenate([h, x], axis=-1)})).nodes["h"]
              for net, g, h, x in zip(nets, batch.planes, hs, xs)]
        n = nexus_up(params["nexus_net"], hs, batch.nexus_hits, batch.nexus_sp, num_sp)
        hs = [nexus_down(params["nexus_net"]["nexus_down"][p], h, n, i, k)
              for p, h, i, k in zip(planes, hs, batch.nexus_hits, batch.nexus_sp)]
    sem = [class_linear(params["semantic_decoder"][p], h)[..., 0] for p, h in zip(planes, hs)]
    fil = [jax.nn.sigmoid(jnp.einsum("ncf,cf->n", h, params["filter_decoder"][p]["kernel"])
                          + params["filter_decoder"][p]["bias"]) for p, h in zip(planes, hs)]
    return GraphOutputs(tuple(sem), tuple(fil))
