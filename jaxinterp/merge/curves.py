"""Mode-connecting Bezier curves with one bend (Garipov et al. 2018), trained with optax.

    phi(t) = (1 - t)^2 theta_0 + 2 t (1 - t) theta_bend + t^2 theta_1,   t in [0, 1]

The endpoints stay fixed; the bend minimises E_{t ~ U(0,1)} L(phi(t)), one t per step (the
paper's estimator). The bend starts at the midpoint, where the curve is the straight segment.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp.merge import tree
from jaxinterp.merge.landscape import (LossFn, _check_count, _check_mesh, _check_points, _is_float, _map,
                                      check_finite_points, check_key, check_scalar_loss, check_scalar_point)


def bezier(p0: Any, bend: Any, p1: Any, t: jax.Array) -> Any:
    """The curve at t; integer and boolean leaves (buffers: position ids) are p0's, not interpolated.
    p0, bend and p1 must match in structure and shapes, and t be a scalar (a bend leaf of shape [1],
    or ts [A], was broadcast silently); checked while tracing, so free inside jit."""
    tree.check_same_structure([p0, bend, p1], "p0/bend/p1")
    check_scalar_point("t", t, "t in [0, 1]")
    return jax.tree_util.tree_map(
        lambda a, m, b: (1 - t) ** 2 * a + 2 * t * (1 - t) * m + t**2 * b if _is_float(a) else a, p0, bend, p1)


class CurveResult(NamedTuple):
    bend: Any
    train_losses: np.ndarray  # [steps]


@functools.lru_cache(maxsize=None)
def _adam(hyperparam_dtype: np.dtype) -> optax.GradientTransformation:
    """optax.adam with its learning rate in the state: one object (per hyperparameter dtype), so one
    compiled step for any rate. The hyperparameters are float32 at least: inject_hyperparams casts
    them to the params' dtype by default, and in bfloat16 b2 = 0.999 rounds to 1, so Adam's bias
    correction divided by 1 - b2^t = 0 and the bend of bfloat16 endpoints was NaN after one step."""
    return optax.inject_hyperparams(optax.adam, hyperparam_dtype=hyperparam_dtype)(learning_rate=1e-2)


def _join(split, trained, fixed):
    """The bend from its trained (float) leaves and its fixed (integer) ones; split None: all trained."""
    if split is None:
        return trained
    treedef, floats = split
    tr, fx = iter(trained), iter(fixed)
    return jax.tree_util.tree_unflatten(treedef, [next(tr) if f else next(fx) for f in floats])


@functools.partial(jax.jit, static_argnames=("loss_fn", "opt", "split"))
def _step(bend, state, fixed, batch, k, p0, p1, *, loss_fn: LossFn, opt: optax.GradientTransformation, split=None):
    t = jax.random.uniform(k)
    f = lambda m: loss_fn(bezier(p0, _join(split, m, fixed), p1, t), batch)  # noqa: E731
    check_scalar_loss(jax.eval_shape(f, bend))  # while tracing: grad's TypeError named no argument
    loss, g = jax.value_and_grad(f)(bend)
    upd, state = opt.update(g, state, bend)
    return optax.apply_updates(bend, upd), state, loss


def fit_bezier(loss_fn: LossFn, p0: Any, p1: Any, batches: Iterable[Any] | Callable[[int], Any], *,
               steps: int = 500, learning_rate: float | None = None, key: jax.Array | None = None,
               optimizer: optax.GradientTransformation | None = None) -> CurveResult:
    """Trains the bend. `batches` is an iterable of at least `steps` batches (an iterator, a list)
    or a function step -> batch.

    The optimizer is Adam at `learning_rate` (1e-2 when None), or `optimizer`, an optax
    GradientTransformation (its own rate inside it): giving both is a ValueError (the rate was
    ignored, silently).

    The step is compiled once per (loss_fn, optimizer, shapes): further calls with the same loss
    function, e.g. over many pairs of endpoints or learning rates, reuse it (pass the same
    `optimizer` object, or none for Adam at `learning_rate`)."""
    tree.check_same_structure([p0, p1], "p0/p1")
    _check_count("steps", steps, 1, "a positive number of training steps")
    if key is not None:
        check_key(key)
    if optimizer is not None:
        if learning_rate is not None:
            raise ValueError(f"learning_rate/optimizer: expected one of them (learning_rate for the default "
                             f"Adam, or an optimizer with its own rate), got both (learning_rate={learning_rate!r})")
        if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
            raise ValueError(f"optimizer: expected an optax GradientTransformation (init and update functions, "
                             f"e.g. optax.adam(1e-3)), got {type(optimizer).__name__}")
    elif learning_rate is None:
        learning_rate = 1e-2
    elif isinstance(learning_rate, (bool, str)) or np.ndim(learning_rate) != 0 \
            or np.asarray(learning_rate).dtype.kind not in "iuf" or not 0 < learning_rate < np.inf:
        raise ValueError(f"learning_rate: expected a positive finite rate, got {learning_rate!r}")
    if not callable(batches):
        if hasattr(batches, "__len__") and len(batches) < steps:
            raise ValueError(f"batches: expected at least steps={steps} batches, got {len(batches)}")
        try:
            it = iter(batches)
        except TypeError:
            raise ValueError(f"batches: expected an iterable of batches or a function step -> batch, "
                             f"got {type(batches).__name__}") from None
    bend = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b) if _is_float(a) else a, p0, p1)
    all_leaves, treedef = jax.tree_util.tree_flatten(bend)
    floats = tuple(_is_float(x) for x in all_leaves)
    split, fixed = None, []
    if not all(floats):  # integer buffers are not trained (jax.grad refused the whole bend)
        tree.check_buffers([p0, p1], "[p0, p1]")
        split = (treedef, floats)
        fixed = [x for x, f in zip(all_leaves, floats) if not f]
        bend = [x for x, f in zip(all_leaves, floats) if f]
    if optimizer is None:
        leaves = jax.tree_util.tree_leaves(bend)
        opt = _adam(np.dtype(jnp.promote_types(jnp.result_type(*leaves) if leaves else jnp.float32, jnp.float32)))
        state = opt.init(bend)
        lr = state.hyperparams["learning_rate"]
        state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, lr.dtype)
    else:
        opt = optimizer
        state = opt.init(bend)
    key = jax.random.PRNGKey(0) if key is None else key

    def get(i):
        if callable(batches):
            return batches(i)
        try:
            return next(it)
        except StopIteration:  # escaping a caller's generator it would end that generator silently
            raise ValueError(f"batches: expected at least steps={steps} batches, the iterator ended "
                             f"after {i}") from None

    losses = []
    for i in range(steps):
        bend, state, loss = _step(bend, state, fixed, get(i), jax.random.fold_in(key, i), p0, p1, loss_fn=loss_fn,
                                  opt=opt, split=split)
        losses.append(loss)
    return CurveResult(_join(split, bend, fixed), np.asarray(jnp.stack(losses)))


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk", "mesh"))
def _curve_losses(loss_fn: LossFn, p0: Any, bend: Any, p1: Any, batch: Any, ts: jax.Array, *,
                  chunk: int | None = None, mesh: Any = None) -> jax.Array:
    tree.check_same_structure([p0, bend, p1], "p0/bend/p1")
    _check_points("ts", ts, "[A]")
    return _map(lambda t: loss_fn(bezier(p0, bend, p1, t), batch), ts, chunk, mesh)


def curve_losses(loss_fn: LossFn, p0: Any, bend: Any, p1: Any, batch: Any, ts: jax.Array, *,
                 chunk: int | None = None, mesh: Any = None) -> jax.Array:
    """[A] losses along the curve at each t, in one compiled call (`_curve_losses`); with `mesh`
    (`parallel.make_mesh()`), the ts split over its devices.

    Checked as in landscape.path_losses: integer and boolean leaves (buffers) are p0's along the
    curve, so they must hold the same values in bend and p1 (ValueError otherwise), compared on
    the host when concrete and skipped only for tracers (a call under an outer jit, vmap or grad).
    The curve is defined on t in [0, 1] (p0 to p1): a t outside it, or nan or inf, is a ValueError
    naming the first and its index (the polynomial went on past the end points, silently).
    """
    tree.check_same_structure([p0, bend, p1], "p0/bend/p1")
    tree.check_buffers([p0, bend, p1], "[p0, bend, p1]", not_what="interpolated")
    check_finite_points("ts", ts, within=(0.0, 1.0, "the curve runs from p0 at t = 0 to p1 at t = 1"))
    _check_mesh(mesh, "curve_losses")
    return _curve_losses(loss_fn, p0, bend, p1, batch, ts, chunk=chunk, mesh=mesh)
