"""Loss landscape between params trees: linear paths, barriers, planes, random-direction surfaces.

Every evaluation over many points (alphas, grid cells) is ONE jit-compiled call that vmaps the
user's `loss_fn(params, batch) -> scalar` over the points, in chunks of `chunk` points
(`lax.map(..., batch_size=chunk)`) so that memory stays at `chunk` copies of the params. With a
`mesh` (`jaxinterp.parallel.make_mesh()`), the points are split over its devices (padded to a
multiple of them) and params and batch replicated: data parallelism over points.

Axis names: A alphas along a path, G grid points (G = n_a * n_b), n_a/n_b grid sides.

Barriers (both in use in the literature):
  * `barrier_mean` = max_alpha L(alpha) - (L(0) + L(1)) / 2     (Frankle et al. 2020)
  * `barrier_chord` = max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]  (Entezari et al. 2022)
References: Li et al. 2018 (filter-normalised directions), Garipov et al. 2018 (planes, curves).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import parallel
from jaxinterp.checks import is_integer
from jaxinterp.merge import tree

LossFn = Callable[[Any, Any], jax.Array]  # (params, batch) -> scalar


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def check_scalar_point(arg: str, x: Any, what: str) -> None:
    """ValueError unless x is one number (a Python scalar or a 0-d array): an array of them broadcast
    against every leaf, silently when its length matched a leaf's last axis (one model per entry)."""
    shape = np.shape(x)
    if shape != ():
        raise ValueError(f"{arg}: expected one {what} (a scalar; vmap over several), got shape {tuple(shape)}")


def lerp(a: Any, b: Any, alpha: jax.Array) -> Any:
    """(1 - alpha) a + alpha b; integer and boolean leaves (buffers: position ids, masks) are a's, not
    interpolated (they became float, and a loss indexing with them failed). a and b must match in
    structure and shapes, and alpha be a scalar (a leaf of shape [1] against [3], or alphas [A], was
    broadcast silently); checked while tracing, so free inside jit."""
    tree.check_same_structure([a, b], "a/b")
    check_scalar_point("alpha", alpha, "alpha")
    return jax.tree_util.tree_map(lambda x, y: (1 - alpha) * x + alpha * y if _is_float(x) else x, a, b)


class PathResult(NamedTuple):
    alphas: np.ndarray  # [A]
    losses: np.ndarray  # [A]
    barrier_mean: float
    barrier_chord: float


def _check_path(alphas: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    """alphas, losses as float arrays; ValueError unless both are [A], A >= 2, alphas from 0 to 1:
    both barriers read L(0) and L(1) at the ends (the chord of other end points would be wrong).
    Every alpha lies in [0, 1] (both barriers are maxima over the segment between the models: a
    point beyond an end is not on it) and every loss is finite (a nan made both barriers nan, an inf
    at an end made the chord's nan, silently)."""
    a, l = np.asarray(alphas, np.float64), np.asarray(losses, np.float64)
    if a.ndim != 1 or a.shape != l.shape or a.size < 2:
        raise ValueError(f"alphas/losses: expected two arrays [A] of the same length >= 2, got shapes "
                         f"{a.shape} and {l.shape}")
    if a[0] != 0 or a[-1] != 1:
        raise ValueError(f"alphas: expected a path from alpha 0 (model A) to alpha 1 (model B), got "
                         f"{a[0]} to {a[-1]}")
    off = ~((a >= 0) & (a <= 1))  # nan too
    if off.any():
        raise ValueError(f"alphas: expected every alpha in [0, 1] (points on the segment between the models), "
                         f"got {a[off][0]} at index {int(np.flatnonzero(off)[0])}")
    bad = ~np.isfinite(l)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"losses: expected finite losses (a barrier of nan or inf is no height), got {l[i]} at "
                         f"alpha {a[i]:g} ({int(bad.sum())} of {l.size} points not finite)")
    return a, l


def barrier_mean(alphas: np.ndarray, losses: np.ndarray) -> float:
    _, losses = _check_path(alphas, losses)
    return float(np.max(losses) - 0.5 * (losses[0] + losses[-1]))


def barrier_chord(alphas: np.ndarray, losses: np.ndarray) -> float:
    alphas, losses = _check_path(alphas, losses)
    chord = (1 - alphas) * losses[0] + alphas * losses[-1]
    return float(np.max(losses - chord))


def _check_count(arg: str, value: Any, least: int, expected: str) -> None:
    """ValueError unless value is an integer >= least (`expected` says what it counts)."""
    if not is_integer(value) or value < least:
        raise ValueError(f"{arg}: expected {expected}, got {value!r}")


def check_key(key: Any, arg: str = "key") -> None:
    """ValueError unless key is one JAX PRNG key: a typed key (`jax.random.key`, shape ()) or a raw
    one (`jax.random.PRNGKey`: uint32 [2] by default). An int seed or a batch of keys was a
    TypeError from inside jax.random naming no argument; shapes and dtypes only, so tracers pass."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        ok = shape == ()
    else:
        raw = jax.eval_shape(jax.random.PRNGKey, 0)
        ok = dtype == raw.dtype and tuple(shape) == raw.shape
    if not ok:
        got = f"{dtype} array of shape {tuple(shape)}" if dtype is not None else f"{type(key).__name__} {key!r}"
        raise ValueError(f"{arg}: expected one JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
                         f"got {got}")


def _check_chunk(chunk: int | None) -> None:
    if chunk is not None:
        _check_count("chunk", chunk, 1, "a positive number of points per vmapped chunk, or None")


def _check_points(arg: str, xs: Any, axes: str, trailing: tuple[int, ...] = ()) -> None:
    """ValueError unless xs is an array [P, *trailing] with P >= 1 (`axes` names it: "[A]", "[G, 2]")."""
    shape = getattr(xs, "shape", None)
    if shape is None or len(shape) != 1 + len(trailing) or shape[0] < 1 or tuple(shape[1:]) != trailing:
        got = f"shape {tuple(shape)}" if shape is not None else type(xs).__name__
        raise ValueError(f"{arg}: expected an array {axes} of at least one point, got {got}")


def check_scalar_loss(out: Any) -> None:
    """ValueError unless `out` (a loss_fn's result, or its jax.eval_shape) is one scalar: a loss per
    example [B] came back as [A, B] from path_losses, as a numpy reshape error from the surfaces and
    as the misleading 'alphas/losses' shapes from linear_path."""
    shape = getattr(out, "shape", None)
    if shape != ():
        got = f"shape {tuple(shape)}" if shape is not None else type(out).__name__
        raise ValueError(f"loss_fn: expected a scalar loss (params, batch) -> [], got {got}")


def check_finite_points(arg: str, xs: Any, within: tuple[float, float, str] | None = None) -> None:
    """ValueError for a nan or inf among concrete points (alphas, ts, coords): each gave a nan loss,
    silently. With `within` (lo, hi, why), also for a point outside [lo, hi], naming the first and its
    index (a Bezier curve's t beyond [0, 1] extrapolated past its end points, silently). Tracers (a
    call under an outer jit, vmap or grad) have no values and are skipped."""
    if xs is None or tree.is_traced(xs) or not hasattr(xs, "shape"):
        return
    v = np.asarray(xs)
    if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all():
        i = np.argwhere(~np.isfinite(v))[0]
        raise ValueError(f"{arg}: expected finite points, got {v[tuple(i)]} at index {tuple(int(j) for j in i)}")
    if within is not None and np.issubdtype(v.dtype, np.number):
        lo, hi, why = within
        off = (v < lo) | (v > hi)
        if off.any():
            i = np.argwhere(off)[0]
            raise ValueError(f"{arg}: expected points in [{lo:g}, {hi:g}] ({why}), got {v[tuple(i)]} at index "
                             f"{tuple(int(j) for j in i)} ({int(off.sum())} of {v.size} points outside)")


def _map(fn: Callable, xs: Any, chunk: int | None, mesh: Any = None) -> jax.Array:
    """fn over the leading axis of xs inside the compiled call, `chunk` points vmapped at a time,
    the points split over `mesh`'s devices when it has more than one (each maps its own share).

    chunk=None picks by backend: all points vmapped at once on accelerators; one point at a time
    (`lax.map`) on the CPU, where XLA runs the batched matmuls of a vmap over params (one weight
    matrix per point) more slowly than plain ones: 25 alphas on a 64-512-512-10 MLP took 600 ms
    vmapped and 307 ms mapped (BUILD_NOTES.md, merging).
    """
    _check_chunk(chunk)
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    point = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), xs)
    check_scalar_loss(jax.eval_shape(fn, point))

    def local(xs):
        m = jax.tree_util.tree_leaves(xs)[0].shape[0]
        size = (1 if jax.default_backend() == "cpu" else m) if chunk is None else chunk
        if size >= m:
            return jax.vmap(fn)(xs)
        return jax.lax.map(fn, xs, batch_size=size if size > 1 else None)

    d = 1 if mesh is None else mesh.devices.size
    if d == 1:
        return local(xs)
    # padded with copies of the last point (a real one: no nan from a made-up point), dropped after
    pad = -n % d
    xs = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), xs)
    spec = jax.sharding.PartitionSpec(parallel.DATA)
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec)(xs)[:n]


def _check_mesh(mesh: Any, where: str) -> None:
    if mesh is not None:
        parallel.check_mesh(mesh, where=f"{where}: mesh")


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk", "mesh"))
def _path_losses(loss_fn: LossFn, params_a: Any, params_b: Any, batch: Any, alphas: jax.Array, *,
                 chunk: int | None = None, mesh: Any = None) -> jax.Array:
    tree.check_same_structure([params_a, params_b], "params_a/params_b")
    _check_points("alphas", alphas, "[A]")
    return _map(lambda al: loss_fn(lerp(params_a, params_b, al), batch), alphas, chunk, mesh)


def path_losses(loss_fn: LossFn, params_a: Any, params_b: Any, batch: Any, alphas: jax.Array, *,
                chunk: int | None = None, mesh: Any = None) -> jax.Array:
    """[A] losses at lerp(a, b, alpha) for every alpha, in one compiled call (`_path_losses`);
    with `mesh` (`parallel.make_mesh()`), the alphas split over its devices.

    Shapes are checked while tracing, before loss_fn is: jit traces again for any new structure,
    shape or chunk, so no bad input reaches a cached executable. Integer and boolean leaves
    (buffers: step counters, position ids) are params_a's along the whole path, so they must hold
    the same values in params_b (ValueError otherwise); that is checked on every call, before the
    compiled one, by comparing their values on the host. Under an outer jit, vmap or grad those
    leaves are tracers with no values to compare, and only then is the check skipped.
    """
    tree.check_same_structure([params_a, params_b], "params_a/params_b")
    tree.check_buffers([params_a, params_b], "[params_a, params_b]", not_what="interpolated")
    check_finite_points("alphas", alphas)
    _check_mesh(mesh, "path_losses")
    return _path_losses(loss_fn, params_a, params_b, batch, alphas, chunk=chunk, mesh=mesh)


def linear_path(loss_fn: LossFn, params_a: Any, params_b: Any, batch: Any, *, num: int = 25,
                chunk: int | None = None, mesh: Any = None) -> PathResult:
    """Loss along the segment from params_a (alpha 0) to params_b (alpha 1), with both barriers;
    `mesh` as in `path_losses`."""
    _check_count("num", num, 2, "at least 2 alphas (the two endpoints)")
    _check_mesh(mesh, "linear_path")
    tree.check_same_structure([params_a, params_b], "params_a/params_b")
    tree.check_buffers([params_a, params_b], "[params_a, params_b]", not_what="interpolated")
    alphas = np.linspace(0.0, 1.0, num, dtype=np.float32)
    losses = np.asarray(_path_losses(loss_fn, params_a, params_b, batch, jnp.asarray(alphas), chunk=chunk,
                                     mesh=mesh))
    return PathResult(alphas, losses, barrier_mean(alphas, losses), barrier_chord(alphas, losses))


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha, x, y):
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk", "mesh"))
def _plane_losses(loss_fn: LossFn, origin: Any, d1: Any, d2: Any, batch: Any, coords: jax.Array, *,
                  chunk: int | None = 256, mesh: Any = None) -> jax.Array:
    tree.check_same_structure([origin, d1, d2], "origin/d1/d2")
    _check_points("coords", coords, "[G, 2]", (2,))

    def one(ab):  # integer and boolean leaves (buffers) stay the origin's
        p = jax.tree_util.tree_map(lambda o, x, y: o + ab[0] * x + ab[1] * y if _is_float(o) else o, origin, d1, d2)
        return loss_fn(p, batch)

    return _map(one, coords, chunk, mesh)


def plane_losses(loss_fn: LossFn, origin: Any, d1: Any, d2: Any, batch: Any, coords: jax.Array, *,
                 chunk: int | None = 256, mesh: Any = None) -> jax.Array:
    """[G] losses at origin + a d1 + b d2 for each row (a, b) of coords [G, 2], in one compiled call
    (with `mesh`, the points split over its devices).

    Checked as in path_losses; integer and boolean leaves of origin (buffers) stay origin's at every
    point, so d1 and d2 must be zero there (ValueError otherwise), checked when their values are
    concrete and skipped only for tracers (a call under an outer jit, vmap or grad).
    """
    tree.check_same_structure([origin, d1, d2], "origin/d1/d2")
    tree.check_still_buffers(origin, [d1, d2], ["d1", "d2"])
    check_finite_points("coords", coords)
    _check_mesh(mesh, "plane_losses")
    return _plane_losses(loss_fn, origin, d1, d2, batch, coords, chunk=chunk, mesh=mesh)


class Surface(NamedTuple):
    a: np.ndarray  # [n_a] coordinates along d1
    b: np.ndarray  # [n_b] coordinates along d2
    losses: np.ndarray  # [n_b, n_a]
    points: np.ndarray  # [k, 2] coordinates of the models that define the plane (empty for random)


def _grid_eval(loss_fn, origin, d1, d2, batch, a, b, chunk, mesh):
    aa, bb = np.meshgrid(a, b)  # [n_b, n_a]
    coords = jnp.asarray(np.stack([aa.ravel(), bb.ravel()], 1), jnp.float32)
    return np.asarray(_plane_losses(loss_fn, origin, d1, d2, batch, coords, chunk=chunk, mesh=mesh)
                      ).reshape(aa.shape)


def _in_work_dtype(params: Any) -> Any:
    """Floating leaves in float32 (float64 ones kept), others as they are."""
    def one(x):
        dt = jnp.result_type(x)
        return jnp.asarray(x, jnp.float32) if jnp.issubdtype(dt, jnp.floating) and dt != jnp.float64 else x

    return jax.tree_util.tree_map(one, params)


def plane_through(loss_fn: LossFn, p0: Any, p1: Any, p2: Any, batch: Any, *, n: int = 51,
                  margin: float = 0.2, chunk: int | None = 256, mesh: Any = None) -> Surface:
    """Loss on the plane through three models (Garipov et al.): origin p0, orthonormal u, v (with
    `mesh`, the grid's points split over its devices)."""
    tree.check_same_structure([p0, p1, p2], "p0/p1/p2")
    tree.check_buffers([p0, p1, p2], "[p0, p1, p2]")  # equal, they add nothing to the plane's axes
    _check_count("n", n, 2, "at least 2 grid points per side")
    if not 0 <= margin < np.inf:
        raise ValueError(f"margin: expected a non-negative finite fraction of the models' span, got {margin}")
    _check_chunk(chunk)
    _check_mesh(mesh, "plane_through")
    # the plane's geometry in float32: in bfloat16 the norms, the projection and the coordinates of
    # the models were rounded (an MLP 64-256-256-10: p1 marked at 45.75 for |p1 - p0| = 45.84, the grid
    # missing the models by 0.25% of their distance)
    w0, w1, w2 = (_in_work_dtype(p) for p in (p0, p1, p2))
    u = jax.tree_util.tree_map(jnp.subtract, w1, w0)
    v = jax.tree_util.tree_map(jnp.subtract, w2, w0)
    nu = jnp.sqrt(_dot(u, u))
    if float(nu) == 0:
        raise ValueError("p1: expected a model different from p0 (they coincide, so no plane)")
    u = jax.tree_util.tree_map(lambda x: x / nu, u)
    v = _axpy(-_dot(v, u), u, v)
    nv = jnp.sqrt(_dot(v, v))
    if float(nv) < 1e-5 * float(nu):  # float32 rounding of exactly collinear models
        raise ValueError("p2: expected a model off the line through p0 and p1 (they are collinear)")
    v = jax.tree_util.tree_map(lambda x: x / nv, v)
    d2_ = jax.tree_util.tree_map(jnp.subtract, w2, w0)
    pts = np.array([[0.0, 0.0], [float(nu), 0.0], [float(_dot(d2_, u)), float(nv)]])
    lo, hi = pts.min(0), pts.max(0)
    span = hi - lo
    a = np.linspace(lo[0] - margin * span[0], hi[0] + margin * span[0], n, dtype=np.float32)
    b = np.linspace(lo[1] - margin * span[1], hi[1] + margin * span[1], n, dtype=np.float32)
    return Surface(a, b, _grid_eval(loss_fn, p0, u, v, batch, a, b, chunk, mesh), pts)


def filter_normalized_direction(key: jax.Array, params: Any, *, filter_axis: int = -1,
                                ignore_1d: bool = True) -> Any:
    """A random direction with each filter's norm equal to the params' (Li et al. 2018).

    A filter is one slice along `filter_axis` (Flax kernels are [..., in, out]: an output unit).
    1-D leaves (biases, norm scales) have one entry per unit: a zero direction when `ignore_1d`
    (the paper's default, "biasbn"), else the leaf itself, as in Li et al.'s code (each entry is
    its own filter, whose norm-matched direction is the weight).
    """
    check_key(key)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not is_integer(filter_axis):
        raise ValueError(f"filter_axis: expected an integer axis, got {filter_axis!r}")
    for name, p in tree.named_leaves(params).items():
        if np.ndim(p) >= 2 and not -np.ndim(p) <= filter_axis < np.ndim(p):
            raise ValueError(f"filter_axis: expected an axis of every leaf with 2 or more axes, got {filter_axis} "
                             f"for {name!r} of shape {tuple(np.shape(p))}")
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, p in zip(keys, leaves):
        d = jax.random.normal(k, p.shape, jnp.float32)
        if not _is_float(p):  # a buffer (position ids): no direction
            out.append(jnp.zeros_like(d))
            continue
        if p.ndim <= 1:
            out.append(jnp.zeros_like(d) if ignore_1d else jnp.asarray(p, jnp.float32))
            continue
        ax = tuple(i for i in range(p.ndim) if i != filter_axis % p.ndim)
        # the weights' filter norms in float32 at least: in bfloat16 they were rounded (0.24% off)
        p32 = jnp.asarray(p, jnp.promote_types(jnp.result_type(p), jnp.float32))
        pn = jnp.sqrt(jnp.sum(jnp.square(p32), axis=ax, keepdims=True))
        dn = jnp.sqrt(jnp.sum(jnp.square(d), axis=ax, keepdims=True))
        out.append(d * pn / (dn + 1e-10))
    return jax.tree_util.tree_unflatten(treedef, out)


def random_surface(loss_fn: LossFn, params: Any, batch: Any, *, key: jax.Array, n: int = 51,
                   extent: float = 1.0, chunk: int | None = 256, filter_axis: int = -1,
                   mesh: Any = None) -> Surface:
    """Loss on params + a d1 + b d2 for a, b in [-extent, extent], filter-normalised d1, d2 (with
    `mesh`, the grid's points split over its devices)."""
    check_key(key)
    _check_count("n", n, 2, "at least 2 grid points per side")
    if not 0 < extent < np.inf:
        raise ValueError(f"extent: expected a positive finite half-width of the grid, got {extent}")
    _check_chunk(chunk)
    _check_mesh(mesh, "random_surface")
    k1, k2 = jax.random.split(key)
    d1 = filter_normalized_direction(k1, params, filter_axis=filter_axis)
    d2 = filter_normalized_direction(k2, params, filter_axis=filter_axis)
    a = np.linspace(-extent, extent, n, dtype=np.float32)
    return Surface(a, a.copy(), _grid_eval(loss_fn, params, d1, d2, batch, a, a, chunk, mesh), np.zeros((0, 2)))
