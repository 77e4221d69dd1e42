"""NuGraph2 (Exa.TrkX, arXiv 2403.11872; exatrkx/NuGraph v24.4.0 `nugraph/models/nugraph2/`).

Every hit carries one embedding per semantic class, `[C, F]`; each `ClassLinear` is a separate
Linear per class slice. Weights are separate per wire plane and shared across the iterations:

    h = tanh(ClassLinear(x))                                           encoder
    repeat num_iters times:
      h = concat(h, x)                                                 the input, anew each time
      plane net:  a_ij = softmax_C(ClassLinear(stop_grad(h_i, h_j)));  m_i = sum_j a_ij h_j
                  h_i = tanh(ClassLinear(tanh(ClassLinear(h_i, m_i))))
      nexus up:   n_k = sum over the hits i of space point k of h_i    (per plane)
      nexus mix:  n_k = tanh(ClassLinear(tanh(ClassLinear(n_k^u, n_k^v, n_k^y))))
      nexus down: b_ik = softmax_C(ClassLinear(stop_grad(h_i, n_k)));  g_i = mean_k b_ik n_k (0 if none)
                  h_i = tanh(ClassLinear(tanh(ClassLinear(h_i, g_i))))
    x_semantic = ClassLinear(h) -> 1 per class;  x_filter = sigmoid(Linear(flatten_C,F(h)))

The softmax of the edge nets runs over the classes (not over neighbours), and their input is
detached in the official code: the edge nets learn, but no gradient flows through the attention
into h. The edge net's Linear on a concatenation is split into two per-node projections
(`w_i . h_i + w_j . h_j`), computed once per node instead of once per edge.

Internally the planes are stacked and the class axis leads (`[P, C, N, F]`), so every ClassLinear
is one grouped matmul `einsum('pcni,pcio->pcno')` over 15 (plane, class) groups.

Axis names: P planes, C classes, N hits per plane (padded), E planar edges, X nexus edges, S space
points, F features (I in, O out of a Linear).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.kernels.message_passing import gather_segment_sum
from jaxinterp.nugraph.event import NUM_FEATURES, PLANES, SEMANTIC_CLASSES
from jaxinterp.nugraph.graph import GraphBatch

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class NuGraph2Config:
    """The official NuGraph2 hyperparameters (defaults: the paper's model, 360,890 parameters)."""

    in_features: int = NUM_FEATURES
    planar_features: int = 64
    nexus_features: int = 16
    num_iters: int = 5
    planes: tuple[str, ...] = PLANES
    semantic_classes: tuple[str, ...] = SEMANTIC_CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.semantic_classes)


class Outputs(NamedTuple):
    """The decoders' outputs on a padded batch (axis 0 follows config.planes)."""

    x_semantic: jax.Array  # [P, N, C] logits
    x_filter: jax.Array  # [P, N] probability that the hit belongs to the interaction


# ---------------------------------------------------------------------------------------------
# Parameters: plain nested dicts named after the official modules.
#   ClassLinear: {"kernel": [C, I, O], "bias": [C, O]}   (official: net.{c}.weight [O, I], bias [O])


def param_shapes(config: NuGraph2Config) -> dict[str, Any]:
    """The params tree with a shape tuple at each leaf."""
    C, D, F, Fn, P = (config.num_classes, config.in_features, config.planar_features,
                      config.nexus_features, len(config.planes))
    cl = lambda i, o: {"kernel": (C, i, o), "bias": (C, o)}  # noqa: E731
    msg = lambda i: {"edge_net": cl(i, 1), "node_net_0": cl(i, F), "node_net_1": cl(F, F)}  # noqa: E731
    return {
        "encoder": {p: cl(D, F) for p in config.planes},
        "plane_net": {p: msg(2 * (D + F)) for p in config.planes},
        "nexus_net": {
            "nexus_net_0": cl(P * F, Fn),
            "nexus_net_1": cl(Fn, Fn),
            "nexus_down": {p: msg(F + Fn) for p in config.planes},
        },
        "semantic_decoder": {"temp": (), **{p: cl(F, 1) for p in config.planes}},
        "filter_decoder": {"temp": (), **{p: {"kernel": (C, F), "bias": ()} for p in config.planes}},
    }


def init(rng: jax.Array, config: NuGraph2Config = NuGraph2Config(), *, dtype=jnp.float32) -> Params:
    """Random params as torch initialises them: U(+-1/sqrt(fan_in)) weights and biases, T = 0."""
    return _init_jit(rng, config, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_jit(rng, config, dtype):
    # one uniform draw sliced into every leaf: a single small compilation, not one RNG per leaf
    shapes = param_shapes(config)
    total = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple)))
    draw = jax.random.uniform(rng, (total,), dtype, -1.0, 1.0)
    offset = [0]

    def take(shape, bound):
        size = int(np.prod(shape))
        out = draw[offset[0]:offset[0] + size].reshape(shape) * bound
        offset[0] += size
        return out

    def build(shapes):
        if "kernel" not in shapes:
            return {k: jnp.zeros(v, dtype) if k == "temp" else build(v) for k, v in shapes.items()}
        kernel = shapes["kernel"]  # [C, I, O], or [C, F] for the filter decoder's Linear(C*F -> 1)
        bound = 1.0 / np.sqrt(kernel[1] if len(kernel) == 3 else kernel[0] * kernel[1])
        return {k: take(v, bound) for k, v in shapes.items()}

    return build(shapes)


def num_params(params: Params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------------
# Forward


def _stack(per_plane: dict[str, Any], planes: tuple[str, ...]):
    """{plane: tree} -> one tree with a leading P axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *[per_plane[p] for p in planes])


def _class_linear(w, h):
    """w: kernel [P, C, I, O], bias [P, C, O]; h [P, C, N, I] -> [P, C, N, O]."""
    return jnp.einsum("pcni,pcio->pcno", h, w["kernel"]) + w["bias"][:, :, None, :]


def _node_net(w, h):
    return jnp.tanh(_class_linear(w["node_net_1"], jnp.tanh(_class_linear(w["node_net_0"], h))))


def _per_edge(score, index):
    """score [P, C, M], index [P, E] -> [P, C, E]: each plane's score at its own indices."""
    return jax.vmap(lambda s, i: s[:, i])(score, index)


def _edge_softmax(w, h_dst, h_src, dst, src, n_dst_feat):
    """softmax_C(ClassLinear(concat(h_dst[dst], h_src[src]))) on detached inputs -> [P, C, E].

    The Linear(concat) is split: per-node scores h.w_dst and h.w_src gathered per edge.
    h_dst [P, C, N, Fd]; h_src [P or 1, C, M, Fs]; dst, src [P, E].
    """
    k = w["kernel"][..., 0]  # [P, C, Fd + Fs]
    s_dst = jnp.einsum("pcnf,pcf->pcn", jax.lax.stop_gradient(h_dst), k[..., :n_dst_feat])
    h_src = jnp.broadcast_to(h_src, (k.shape[0],) + h_src.shape[1:])
    s_src = jnp.einsum("pcmf,pcf->pcm", jax.lax.stop_gradient(h_src), k[..., n_dst_feat:])
    logits = _per_edge(s_dst, dst) + _per_edge(s_src, src) + w["bias"][..., 0][:, :, None]
    return jax.nn.softmax(logits, axis=1)


def _iteration(weights, h, x_c, batch: GraphBatch, config: NuGraph2Config):
    """One message-passing iteration: h [P, C, N, F] -> [P, C, N, F]."""
    P, C, N, _ = h.shape
    S = batch.sp_mask.shape[-1]
    h = jnp.concatenate([h, x_c], axis=-1)  # [P, C, N, F + D]
    # plane net: messages j -> i within each plane
    w = weights["plane_net"]
    a = _edge_softmax(w["edge_net"], h, h, batch.plane_receivers, batch.plane_senders, h.shape[-1])
    m = gather_segment_sum(h, a, batch.plane_senders, batch.plane_receivers, N)
    h = _node_net(w, jnp.concatenate([h, m], axis=-1))  # [P, C, N, F]
    # nexus up: sum the hits of each space point, plane by plane; then mix the planes
    n = gather_segment_sum(h, None, batch.nexus_hits, batch.nexus_sp, S)  # [P, C, S, F]
    n = jnp.concatenate(list(n), axis=-1)  # [C, S, P*F] in plane order
    wn = weights["nexus_net"]
    n = jnp.tanh(jnp.einsum("csi,cio->cso", n, wn["nexus_net_0"]["kernel"]) + wn["nexus_net_0"]["bias"][:, None])
    n = jnp.tanh(jnp.einsum("csi,cio->cso", n, wn["nexus_net_1"]["kernel"]) + wn["nexus_net_1"]["bias"][:, None])
    # nexus down: each hit takes the mean of its space points' messages
    w = weights["nexus_down"]
    b = _edge_softmax(w["edge_net"], h, n[None], batch.down_hits, batch.down_sp, h.shape[-1])
    g = gather_segment_sum(n[None], b, batch.down_sp, batch.down_hits, N, mean=True)  # [P, C, N, Fn]
    return _node_net(w, jnp.concatenate([h, g], axis=-1))


def apply(params: Params, batch: GraphBatch, *, config: NuGraph2Config = NuGraph2Config()) -> Outputs:
    """NuGraph2 forward on one padded batch (no leading device axis; vmap over one).

    Returns logits `[P, N, C]` and filter probabilities `[P, N]`; rows of padding hits are
    meaningless (finite) and must be masked with `batch.hit_mask`.
    """
    planes = config.planes
    x = jnp.asarray(batch.x)
    if x.ndim != 3 or x.shape[0] != len(planes) or x.shape[2] != config.in_features:
        raise ValueError(f"apply: batch.x must have shape [P={len(planes)}, N, {config.in_features}], "
                         f"got {list(x.shape)}")
    C = config.num_classes
    weights = {
        "plane_net": _stack(params["plane_net"], planes),
        "nexus_down": _stack(params["nexus_net"]["nexus_down"], planes),
        "nexus_net": params["nexus_net"],
    }
    x_c = jnp.broadcast_to(x[:, None], (x.shape[0], C) + x.shape[1:])  # [P, C, N, D]
    h = jnp.tanh(_class_linear(_stack(params["encoder"], planes), x_c))

    def body(h, _):
        return _iteration(weights, h, x_c, batch, config), None

    h, _ = jax.lax.scan(body, h, None, length=config.num_iters)
    sem = _stack({p: params["semantic_decoder"][p] for p in planes}, planes)
    x_semantic = jnp.einsum("pcnf,pcf->pnc", h, sem["kernel"][..., 0]) + sem["bias"][:, None, :, 0]
    fil = _stack({p: params["filter_decoder"][p] for p in planes}, planes)
    x_filter = jax.nn.sigmoid(jnp.einsum("pcnf,pcf->pn", h, fil["kernel"]) + fil["bias"][:, None])
    return Outputs(x_semantic, x_filter)
