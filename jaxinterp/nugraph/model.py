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

Internally the class axis leads (`[P, C, N, F]`), so every ClassLinear is one grouped matmul
`einsum('pcni,pcio->pcno')` over the (plane, class) groups. The loop-invariant parts are computed
with the planes stacked; the iterations run each plane as its own chain of ops (P = 1 slices,
`_Plane`) that meet only at nexus up, so XLA:CPU runs the planes concurrently on the cores. Planar
messages come from a dense neighbour table of K slots per hit plus an overflow edge list
(`_plane_messages`, `graph.GraphBatch.plane_neighbours`).

`jraph_model.apply_graphs` is the same network written plainly as jraph graph networks, hit-major,
on `jraph.GraphsTuple`s: the readable form, tested against this one and the official code.

Axis names: P planes, C classes, N hits per plane (padded), E planar edges, X nexus edges, S space
points, F features (I in, O out of a Linear).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.checks import check_x64, is_integer
from jaxinterp.kernels.message_passing import gather_segment_sum
from jaxinterp.nugraph.event import NUM_FEATURES, PLANES, SEMANTIC_CLASSES
from jaxinterp.nugraph.graph import GraphBatch

Params = dict[str, Any]

# XLA:CPU options for jitting `apply` (per jit: `jax.jit(..., compiler_options=cpu_compiler_options())`,
# never global flags). jaxlib 0.10's default also hands elementwise and reduction fusions to
# YNNPACK; there it fused the class softmax of the edge nets into the per-edge message product and
# recomputed it for each of the 64 features. Keeping YNNPACK for the products only cut the CPU
# time of a forward by 25-30% (BUILD_NOTES.md, NuGraph2 "Performance"); results agree to 1e-6.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_DOT"}


def cpu_compiler_options() -> dict[str, str] | None:
    """`CPU_COMPILER_OPTIONS` when jax's default backend is the CPU, else None."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


@dataclasses.dataclass(frozen=True)
class NuGraph2Config:
    """The official NuGraph2 hyperparameters (defaults: the paper's model, 360,890 parameters)."""

    in_features: int = NUM_FEATURES
    planar_features: int = 64
    nexus_features: int = 16
    num_iters: int = 5
    planes: tuple[str, ...] = PLANES
    semantic_classes: tuple[str, ...] = SEMANTIC_CLASSES

    def __post_init__(self):
        """ValueError naming the field for a value NuGraph2 cannot be built with, before anything uses
        the config (a negative or fractional width failed inside init, a zero width after a training
        step, when orbax refused the empty arrays, both after `train` had written run.json). Names
        given as a list become a tuple: the config is a jit and cache key."""
        for field in ("in_features", "planar_features", "nexus_features", "num_iters"):
            v, least = getattr(self, field), 0 if field == "num_iters" else 1
            if not is_integer(v) or v < least:
                raise ValueError(f"NuGraph2Config.{field}: expected an integer >= {least}, got {v!r}")
            object.__setattr__(self, field, int(v))
        for field in ("planes", "semantic_classes"):
            v = getattr(self, field)
            names = tuple(v) if isinstance(v, (list, tuple)) else None
            if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
                raise ValueError(f"NuGraph2Config.{field}: expected a non-empty list of distinct names, got {v!r}")
            object.__setattr__(self, field, names)

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


def check_params(params: Params, config: NuGraph2Config, *, where: str = "params") -> None:
    """ValueError naming the first entry of `params` that is missing, unknown or not of
    `param_shapes(config)`'s shape (params of another width or class count than `config`'s)."""

    def walk(want, got, path):
        name = "/".join(path) or "the root"
        if isinstance(want, tuple):
            shape = tuple(np.shape(got))
            if shape != want:
                raise ValueError(f"{where}: {name} expected shape {list(want)} for {config}, got {list(shape)}")
            return
        if not isinstance(got, Mapping):
            raise ValueError(f"{where}: {name} expected a dict with keys {sorted(want)}, got {type(got).__name__}")
        missing, unknown = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or unknown:
            raise ValueError(f"{where}: {name} does not match NuGraph2 {config}: missing keys {missing}, "
                             f"unknown keys {unknown}")
        for k in want:
            walk(want[k], got[k], path + (k,))

    walk(param_shapes(config), params, ())


def init(rng: jax.Array, config: NuGraph2Config = NuGraph2Config(), *, dtype=jnp.float32) -> Params:
    """Random params as torch initialises them: U(+-1/sqrt(fan_in)) weights and biases, T = 0.

    A config that is not a NuGraph2Config, a dtype that is not floating point (or float64 while
    jax_enable_x64 is off: the params would silently be float32) and an rng that is not one PRNG key
    are ValueErrors (they were jit's hashing error, jax's key errors, or a warning at most)."""
    if not isinstance(config, NuGraph2Config):
        raise ValueError(f"init: config: expected a NuGraph2Config, got {type(config).__name__}")
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"init: dtype: expected a floating-point dtype, got {dtype!r}")
    check_x64(dt, "init: dtype", "params")
    kind, shape = (rng.dtype, tuple(rng.shape)) if hasattr(rng, "dtype") and hasattr(rng, "shape") else (None, None)
    typed = kind is not None and jnp.issubdtype(kind, jax.dtypes.prng_key) and shape == ()  # jax.random.key
    raw = kind == jnp.uint32 and len(shape) == 1  # jax.random.PRNGKey: [2] (threefry), [4] (rbg)
    if not (typed or raw):
        raise ValueError(f"init: rng: expected one PRNG key (jax.random.key(seed) or PRNGKey(seed)), got "
                         f"{type(rng).__name__}" + (f" {kind} {list(shape)}" if kind is not None else ""))
    return _init_jit(rng, config, dt)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_jit(rng, config, dtype):
    # one uniform draw sliced into every leaf: a single small compilation, not one RNG per leaf
    shapes = param_shapes(config)
    total = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple)))
    draw = jax.random.uniform(rng, (total,), dtype, -1.0, 1.0)
    offset = [0]

    def take(shape, bound):
        size = int(np.prod(shape))
        # the bound in `dtype`: a numpy float64 scalar is not weakly typed, so it made every kernel and
        # bias float64 under jax_enable_x64 and float32 for bfloat16/float16 params (temp alone kept dtype)
        out = draw[offset[0]:offset[0] + size].reshape(shape) * jnp.asarray(bound, dtype)
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


def _input_linear(w, x):
    """A ClassLinear on the raw input: w kernel [P, C, D, O], bias [P, C, O]; x [P, N, D] -> [P, C, N, O].

    With D = 4 a matmul is mostly overhead (YNNPACK took 4 ms for this one product at ~1000 hits
    per plane); D broadcast multiply-adds fuse into one elementwise pass instead.
    """
    k = w["kernel"]
    out = w["bias"][:, :, None, :]
    for d in range(k.shape[2]):
        out = out + x[:, None, :, d, None] * k[:, :, None, d, :]
    return out


def _node_net_rest(w, pre):
    """A node net after its first ClassLinear: pre [P, C, N, F] (node_net_0's output, formed by the
    caller in parts) -> tanh(node_net_1(tanh(pre)))."""
    return jnp.tanh(_class_linear(w["node_net_1"], jnp.tanh(pre)))


def _per_edge(score, index):
    """score [P, C, M], index [P, E] -> [P, C, E]: each plane's score at its own indices."""
    return jax.vmap(lambda s, i: s[:, i])(score, index)


def _score(h, k):
    """Detached per-node edge-net score: h [P, C, M, F], k [P, C, F] -> [P, C, M]."""
    return jnp.einsum("pcmf,pcf->pcm", jax.lax.stop_gradient(h), k)


def _edge_softmax(s_dst, s_src, bias, dst, src):
    """softmax_C(ClassLinear(concat(h_dst[dst], h_src[src]))) from per-node scores -> [P, C, E].

    The Linear on a concatenation is split into per-node scores (`_score`: h.w_dst, h.w_src, on
    detached inputs) gathered per edge and added: no 136-wide product per edge.
    s_dst [P, C, N]; s_src [P, C, M]; bias [P, C]; dst, src [P, E].
    """
    logits = _per_edge(s_dst, dst) + _per_edge(s_src, src) + bias[:, :, None]
    return jax.nn.softmax(logits, axis=1)


class _PlaneWeights(NamedTuple):
    """The plane net's weights rearranged for the split form (built once per forward).

    Its node_net_0 acts on concat(hx_i, m_i), hx = concat(h, x) (the official re-concatenation of
    the input), m_i = sum_j a_ij hx_j; being linear, it equals
    hx_i W_self + b + sum_j a_ij (hx_j W_msg): rows of the official kernel, first F + D and last F + D.
    """

    w_self: jax.Array  # [P, C, F + D, F]: rows of node_net_0 that act on hx_i
    w_msg: jax.Array  # [P, C, F + D, F]: rows that act on the message
    edge_dst: jax.Array  # [P, C, F + D] edge-net weights of hx_i
    edge_src: jax.Array  # [P, C, F + D] edge-net weights of hx_j


def _plane_weights(w, f: int, d: int) -> _PlaneWeights:
    k0 = w["node_net_0"]["kernel"]  # [P, C, 2(F + D), F]: rows h_i, x_i, h_j-message, x_j-message
    ke = w["edge_net"]["kernel"][..., 0]  # [P, C, 2(F + D)]
    return _PlaneWeights(k0[:, :, :f + d], k0[:, :, f + d:], ke[..., :f + d], ke[..., f + d:])


class _Plane(NamedTuple):
    """One wire plane's share of a forward: its weights and loop-invariant tensors, each with a
    leading axis of 1 (the P of the stacked helpers above), sliced once before the iterations."""

    weights: _PlaneWeights
    plane_net: Params  # the official plane-net weights (biases, node_net_1)
    nexus_down: Params
    nexus_k: jax.Array  # [1, C, F, Fn]: this plane's rows of nexus_net_0
    x_c: jax.Array  # [1, C, N, D]: the plane's input, broadcast over the classes
    neighbours: jax.Array  # [1, N, K] the neighbour table, -1 for an empty slot
    senders: jax.Array  # [1, E] overflow planar edges
    receivers: jax.Array  # [1, E]
    up_hits: jax.Array  # [1, X] nexus edges sorted by space point
    up_sp: jax.Array  # [1, X]
    down_hits: jax.Array  # [1, X] the same edges sorted by hit
    down_sp: jax.Array  # [1, X]


def _plane_messages(u, s_dst, s_src, bias, plane: _Plane, *, initial):
    """initial_i + sum over planar edges j -> i of a_ij u_j, a_ij = softmax_C(s_dst_i + s_src_j + bias).

    The first K edges of each hit come from the dense neighbour table: K gathers of [P, C, N, F]
    that XLA fuses with the weighting and the sum, with no [P, C, E, F] message buffer and no
    scatter; the few overflow edges go through the sorted scatter-add of `gather_segment_sum`.
    u, initial [P, C, N, F]; s_dst, s_src [P, C, N]; bias [P, C] -> [P, C, N, F].
    """
    N = u.shape[2]
    nbr = plane.neighbours  # [P, N, K], -1 for an empty slot
    valid = nbr >= 0
    nbr = jnp.where(valid, nbr, N - 1)
    per_slot = jax.vmap(lambda s, i: s[:, i])  # ([C, N], [N, K]) -> [C, N, K], vmapped over planes
    a = jax.nn.softmax(s_dst[..., None] + per_slot(s_src, nbr) + bias[:, :, None, None], axis=1)
    a = jnp.where(valid[:, None], a, 0.0)  # [P, C, N, K]
    # the overflow edges first, so the K-slot sum is the last pass and fuses with what follows
    over = _edge_softmax(s_dst, s_src, bias, plane.receivers, plane.senders)  # [P, C, E]
    out = gather_segment_sum(u, over, plane.senders, plane.receivers, N, initial=initial)
    for k in range(nbr.shape[-1]):
        out = out + a[..., k, None] * jax.vmap(lambda v, i: v[:, i])(u, nbr[:, :, k])
    return out


def _plane_net(plane: _Plane, h):
    """Messages j -> i within the plane: h [1, C, N, F] -> [1, C, N, F]. hx_j = concat(h_j, x_j) is
    projected (68 -> 64) before it is aggregated, and the aggregation adds straight into the self
    half of node_net_0.

    x enters the products through the concatenation, not as a separate loop-invariant term added
    to them: XLA fused such a term into each of the K gathers of `_plane_messages` and recomputed it
    per slot (its 4 multiply-adds per gathered element doubled the gather pass's time); this way
    the gathered rows are one product's output (BUILD_NOTES.md, NuGraph2 "Performance", session 15).
    """
    pw = plane.weights
    hx = jnp.concatenate([h, plane.x_c], axis=-1)  # [1, C, N, F + D]
    s_dst, s_src = _score(hx, pw.edge_dst), _score(hx, pw.edge_src)  # [1, C, N]
    u_self = jnp.einsum("pcnf,pcfo->pcno", hx, pw.w_self) + plane.plane_net["node_net_0"]["bias"][:, :, None, :]
    u_msg = jnp.einsum("pcnf,pcfo->pcno", hx, pw.w_msg)  # two products: no slice copy
    pre = _plane_messages(u_msg, s_dst, s_src, plane.plane_net["edge_net"]["bias"][..., 0], plane, initial=u_self)
    return _node_net_rest(plane.plane_net, pre)


def _nexus_up(planes: tuple[_Plane, ...], hs, wn, num_sp: int):
    """Sum the hits of each space point over all planes, then mix: -> n [C, S, Fn].

    nexus_net_0 is linear in the concatenation of the planes' sums, so each hit is projected first
    (64 -> Fn features) and every plane's sum adds into one [C, S, Fn] buffer."""
    n = None
    for plane, h in zip(planes, hs):
        hk = jnp.einsum("pcnf,pcfo->pcno", h, plane.nexus_k)  # [1, C, N, Fn]
        n = gather_segment_sum(hk, None, plane.up_hits, plane.up_sp, num_sp, initial=n)
    n = jnp.tanh(n[0] + wn["nexus_net_0"]["bias"][:, None])  # [C, S, Fn]
    return jnp.tanh(jnp.einsum("csi,cio->cso", n, wn["nexus_net_1"]["kernel"]) + wn["nexus_net_1"]["bias"][:, None])


def _nexus_down(plane: _Plane, h, n):
    """Each hit takes the mean of its space points' messages: h [1, C, N, F], n [C, S, Fn] -> [1, C, N, F]."""
    F, N = h.shape[-1], h.shape[2]
    w = plane.nexus_down
    kd = w["edge_net"]["kernel"][..., 0]  # [1, C, F + Fn]
    s_sp = jnp.einsum("csf,pcf->pcs", jax.lax.stop_gradient(n), kd[..., F:])
    b = _edge_softmax(_score(h, kd[..., :F]), s_sp, w["edge_net"]["bias"][..., 0], plane.down_hits, plane.down_sp)
    g = gather_segment_sum(n[None], b, plane.down_sp, plane.down_hits, N, mean=True)  # [1, C, N, Fn]
    # node_net_0 on concat(h, g) as two products (rows of h, rows of g): no [1, C, N, F + Fn] copy
    k0 = w["node_net_0"]["kernel"]  # [1, C, F + Fn, F]
    pre = (jnp.einsum("pcnf,pcfo->pcno", h, k0[:, :, :F]) + jnp.einsum("pcng,pcgo->pcno", g, k0[:, :, F:])
           + w["node_net_0"]["bias"][:, :, None, :])
    return _node_net_rest(w, pre)


def _iteration(planes: tuple[_Plane, ...], wn, hs, num_sp: int):
    """One message-passing iteration on per-plane embeddings hs: P x [1, C, N, F] -> the same.

    The planes are separate chains that meet only at nexus up, so XLA:CPU's executor runs their
    ops concurrently on the cores instead of splitting each stacked op across them: at batch 1,
    11-15% less wall time (BUILD_NOTES.md, NuGraph2 "Performance")."""
    hs = [_plane_net(plane, h) for plane, h in zip(planes, hs)]
    n = _nexus_up(planes, hs, wn, num_sp)
    return tuple(_nexus_down(plane, h, n) for plane, h in zip(planes, hs))


def _split_planes(params: Params, batch: GraphBatch, x, config: NuGraph2Config) -> tuple[_Plane, ...]:
    """The per-plane weights and loop-invariant tensors (`_Plane`), in config.planes order."""
    planes, C, F, D = config.planes, config.num_classes, config.planar_features, config.in_features
    plane_net = _stack(params["plane_net"], planes)
    x_c = jnp.broadcast_to(x[:, None], (x.shape[0], C) + x.shape[1:])  # [P, C, N, D]
    k = params["nexus_net"]["nexus_net_0"]["kernel"]  # [C, P*F, Fn], rows in plane order
    nexus_k = jnp.moveaxis(k.reshape(C, len(planes), F, k.shape[-1]), 1, 0)  # [P, C, F, Fn]
    down = _stack(params["nexus_net"]["nexus_down"], planes)
    one = lambda tree, p: jax.tree.map(lambda a: a[p:p + 1], tree)  # noqa: E731  plane p, P axis kept
    out = []
    for p in range(len(planes)):
        pn = one(plane_net, p)
        out.append(_Plane(
            weights=_plane_weights(pn, F, D), plane_net=pn, nexus_down=one(down, p), nexus_k=one(nexus_k, p),
            x_c=one(x_c, p),
            neighbours=one(jnp.asarray(batch.plane_neighbours), p), senders=one(batch.plane_senders, p),
            receivers=one(batch.plane_receivers, p), up_hits=one(batch.nexus_hits, p), up_sp=one(batch.nexus_sp, p),
            down_hits=one(batch.down_hits, p), down_sp=one(batch.down_sp, p)))
    return tuple(out)


_INDEX_FIELDS = ("plane_neighbours", "plane_senders", "plane_receivers", "nexus_hits", "nexus_sp", "down_hits",
                 "down_sp", "sp_mask")


def _check_batch(batch: GraphBatch, P: int, N: int) -> None:
    """ValueError for a batch whose index arrays do not fit x [P, N, D] (at trace time: a deep broadcasting
    TypeError before), or, when they are concrete (an eager call), hold an index outside its node set
    (gathers clamp it and segment sums drop it: silently other outputs) or receivers out of the order
    `gather_segment_sum` is promised. Under jit they are traced and unchecked (`graph.pad_batch` builds them)."""
    shape = {f: tuple(jnp.shape(getattr(batch, f))) for f in _INDEX_FIELDS}
    K, E, X = shape["plane_neighbours"][2:3], shape["plane_senders"][1:2], shape["nexus_hits"][1:2]
    want = {"plane_neighbours": ((P, N) + K, "[P, N, K]"), "plane_senders": ((P,) + E, "[P, E]"),
            "plane_receivers": ((P,) + E, "[P, E]"), "nexus_hits": ((P,) + X, "[P, X]"),
            "nexus_sp": ((P,) + X, "[P, X]"), "down_hits": ((P,) + X, "[P, X]"), "down_sp": ((P,) + X, "[P, X]"),
            "sp_mask": (shape["sp_mask"][:1], "[S]")}
    for f, (w, dims) in want.items():
        if shape[f] != w or len(w) != dims.count(",") + 1:
            raise ValueError(f"apply: batch.{f} must have shape {dims} (P = {P}, N = {N} from batch.x; K, E, X "
                             f"from plane_neighbours, plane_senders, nexus_hits), got {list(shape[f])}")
    S = shape["sp_mask"][0]
    ranges = (("plane_neighbours", -1, N, None), ("plane_senders", 0, N, None), ("plane_receivers", 0, N, "sorted"),
              ("nexus_hits", 0, N, None), ("nexus_sp", 0, S, "sorted"), ("down_hits", 0, N, "sorted"),
              ("down_sp", 0, S, None))
    for name, low, high, order in ranges:
        a = getattr(batch, name)
        if isinstance(a, jax.core.Tracer) or not np.size(a):
            continue
        a = np.asarray(a)
        if a.min() < low or a.max() >= high:
            bad = a.min() if a.min() < low else a.max()
            raise ValueError(f"apply: batch.{name}: index {bad} out of range [{low}, {high})")
        if order and np.any(np.diff(a, axis=-1) < 0):
            raise ValueError(f"apply: batch.{name} must be sorted ascending within each plane "
                             "(as graph.pad_batch sorts it), got an unsorted one")


def apply(params: Params, batch: GraphBatch, *, config: NuGraph2Config = NuGraph2Config()) -> Outputs:
    """NuGraph2 forward on one padded batch (no leading device axis; vmap over one).

    Returns logits `[P, N, C]` and filter probabilities `[P, N]`; rows of padding hits are
    meaningless (finite) and must be masked with `batch.hit_mask`. Index arrays that do not fit
    batch.x are a ValueError at trace time; indices out of range or unsorted receivers too when
    they are concrete (an eager call, as `jraph_model.apply_graphs` checks its own).
    """
    if not isinstance(config, NuGraph2Config):  # an AttributeError from inside before
        raise ValueError(f"apply: config: expected a NuGraph2Config, got {type(config).__name__}")
    if not isinstance(batch, GraphBatch):
        raise ValueError(f"apply: batch: expected a graph.GraphBatch (graph.pad_batch), got {type(batch).__name__}")
    planes = config.planes
    x = jnp.asarray(batch.x)
    if x.ndim != 3 or x.shape[0] != len(planes) or x.shape[2] != config.in_features:
        raise ValueError(f"apply: batch.x must have shape [P={len(planes)}, N, {config.in_features}], "
                         f"got {list(x.shape)}")
    _check_batch(batch, len(planes), x.shape[1])
    check_params(params, config, where="apply: params")  # shapes only: at trace time under jit
    planes_in = _split_planes(params, batch, x, config)
    h = jnp.tanh(_input_linear(_stack(params["encoder"], planes), x))  # [P, C, N, F]
    num_sp = batch.sp_mask.shape[-1]

    def body(hs, _):
        return _iteration(planes_in, params["nexus_net"], hs, num_sp), None

    # unrolled: 11-14% less CPU time than the rolled loop on a CPU (compile ~2x longer, still seconds)
    hs, _ = jax.lax.scan(body, tuple(h[p:p + 1] for p in range(len(planes))), None, length=config.num_iters,
                         unroll=True)
    h = jnp.concatenate(hs, axis=0)
    sem = _stack({p: params["semantic_decoder"][p] for p in planes}, planes)
    x_semantic = jnp.einsum("pcnf,pcf->pnc", h, sem["kernel"][..., 0]) + sem["bias"][:, None, :, 0]
    fil = _stack({p: params["filter_decoder"][p] for p in planes}, planes)
    x_filter = jax.nn.sigmoid(jnp.einsum("pcnf,pcf->pn", h, fil["kernel"]) + fil["bias"][:, None])
    return Outputs(x_semantic, x_filter)
