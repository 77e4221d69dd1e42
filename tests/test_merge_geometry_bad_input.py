"""Loss-landscape, curve, Fisher and re-basin functions on bad input: params trees of another
structure or shape, alphas/ts/coords of the wrong rank, a count or chunk out of range, an init
permutation that is missing or of the wrong size. Each fails with a ValueError naming the argument,
what was expected and what came, before the loss is traced or anything is computed."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.merge import curves, fisher, landscape, rebasin

A = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
B = {"Dense_0": {"kernel": 2 * jnp.ones((2, 3)), "bias": jnp.ones(3)}}
C = {"Dense_0": {"kernel": jnp.eye(2, 3), "bias": jnp.arange(3.0)}}
WIDE = {"Dense_0": {"kernel": jnp.ones((2, 4)), "bias": jnp.zeros(4)}}  # same leaves, other shapes
NO_BIAS = {"Dense_0": {"kernel": jnp.ones((2, 3))}}
ALPHAS = jnp.linspace(0.0, 1.0, 3)
COORDS = jnp.zeros((4, 2))
KEY = np.array([0, 1], np.uint32)  # a raw PRNG key

CALLS = []  # every trace or call of the loss


def loss(p, batch):
    CALLS.append(batch)
    return jnp.sum(p["Dense_0"]["kernel"]) + batch


SHAPES = r"expected trees of the same structure and shapes"

LANDSCAPE = [  # (call, error expected)
    # path_losses: the trees, the alphas [A], the chunk
    (lambda: landscape.path_losses(loss, A, WIDE, 0.0, ALPHAS),
     rf"params_a/params_b: {SHAPES}.*Dense_0\.kernel \(shape \(2, 3\) in params_a/params_b\[0\], "
     r"\(2, 4\) in params_a/params_b\[1\]\)"),
    (lambda: landscape.path_losses(loss, A, NO_BIAS, 0.0, ALPHAS),
     r"params_a/params_b: .*Dense_0\.bias \(missing in params_a/params_b\[1\]\)"),
    (lambda: landscape.path_losses(loss, A, B, 0.0, ALPHAS[:, None]),
     r"alphas: expected an array \[A\] of at least one point, got shape \(3, 1\)"),
    (lambda: landscape.path_losses(loss, A, B, 0.0, jnp.float32(0.5)), r"alphas: .*got shape \(\)"),
    (lambda: landscape.path_losses(loss, A, B, 0.0, jnp.zeros(0)), r"alphas: .*got shape \(0,\)"),
    (lambda: landscape.path_losses(loss, A, B, 0.0, [0.0, 1.0]), r"alphas: expected an array \[A\] .*got list"),
    (lambda: landscape.path_losses(loss, A, B, 0.0, ALPHAS, chunk=0),
     r"chunk: expected a positive number of points per vmapped chunk, or None, got 0"),
    (lambda: landscape.path_losses(loss, A, B, 0.0, ALPHAS, chunk=2.5), r"chunk: .*got 2\.5"),
    # linear_path
    (lambda: landscape.linear_path(loss, A, B, 0.0, num=1), r"num: expected at least 2 alphas .*got 1"),
    (lambda: landscape.linear_path(loss, A, B, 0.0, num=3.0), r"num: expected at least 2 alphas .*got 3\.0"),
    (lambda: landscape.linear_path(loss, WIDE, B, 0.0), rf"params_a/params_b: {SHAPES}"),
    # plane_losses: three trees, coords [G, 2]
    (lambda: landscape.plane_losses(loss, A, B, NO_BIAS, 0.0, COORDS),
     r"origin/d1/d2: .*Dense_0\.bias \(missing in origin/d1/d2\[2\]\)"),
    (lambda: landscape.plane_losses(loss, A, B, C, 0.0, jnp.zeros((4, 3))),
     r"coords: expected an array \[G, 2\] of at least one point, got shape \(4, 3\)"),
    (lambda: landscape.plane_losses(loss, A, B, C, 0.0, jnp.zeros(4)), r"coords: .*got shape \(4,\)"),
    (lambda: landscape.plane_losses(loss, A, B, C, 0.0, COORDS, chunk=-1), r"chunk: .*got -1"),
    # plane_through: before the plane's basis is computed
    (lambda: landscape.plane_through(loss, A, B, WIDE, 0.0), rf"p0/p1/p2: {SHAPES}.*\(2, 4\) in p0/p1/p2\[2\]"),
    (lambda: landscape.plane_through(loss, A, B, C, 0.0, n=1), r"n: expected at least 2 grid points per side, got 1"),
    (lambda: landscape.plane_through(loss, A, B, C, 0.0, margin=-0.1),
     r"margin: expected a non-negative finite fraction .*got -0\.1"),
    (lambda: landscape.plane_through(loss, A, B, C, 0.0, margin=float("inf")),
     r"margin: expected a non-negative finite fraction .*got inf"),
    (lambda: landscape.plane_through(loss, A, B, C, 0.0, chunk=0), r"chunk: .*got 0"),
    # random_surface: before the random directions are drawn
    (lambda: landscape.random_surface(loss, A, 0.0, key=KEY, n=0), r"n: expected at least 2 grid points .*got 0"),
    (lambda: landscape.random_surface(loss, A, 0.0, key=KEY, extent=0.0),
     r"extent: expected a positive finite half-width of the grid, got 0\.0"),
    (lambda: landscape.random_surface(loss, A, 0.0, key=KEY, extent=float("nan")), r"extent: .*got nan"),
    (lambda: landscape.random_surface(loss, A, 0.0, key=KEY, chunk=0), r"chunk: .*got 0"),
    # curves: before the bend is built or the loss traced
    (lambda: curves.fit_bezier(loss, A, WIDE, lambda i: 0.0, steps=2), rf"p0/p1: {SHAPES}"),
    (lambda: curves.fit_bezier(loss, A, B, lambda i: 0.0, steps=0),
     r"steps: expected a positive number of training steps, got 0"),
    (lambda: curves.curve_losses(loss, A, NO_BIAS, B, 0.0, ALPHAS), r"p0/bend/p1: .*missing in p0/bend/p1\[1\]"),
    (lambda: curves.curve_losses(loss, A, C, B, 0.0, ALPHAS[None]),
     r"ts: expected an array \[A\] .*got shape \(1, 3\)"),
    (lambda: curves.curve_losses(loss, A, C, B, 0.0, ALPHAS, chunk=0), r"chunk: .*got 0"),
]


@pytest.mark.parametrize("call,match", LANDSCAPE)
def test_landscape_and_curves_refuse_bad_input_before_tracing_the_loss(call, match):
    CALLS.clear()
    with pytest.raises(ValueError, match=match):
        call()
    assert not CALLS


def test_a_compiled_good_call_does_not_let_a_bad_one_through():
    landscape.path_losses(loss, A, B, 0.0, ALPHAS, chunk=3)
    with pytest.raises(ValueError, match=r"params_a/params_b: .*\(2, 4\)"):
        landscape.path_losses(loss, A, WIDE, 0.0, ALPHAS, chunk=3)  # a new shape: traced, so checked again


@pytest.mark.parametrize("models,fishers,weights,match", [
    ([], [], None, r"models: expected at least one model, got none"),
    ([A, B], [A], None, r"fishers: expected one Fisher per model \(2\), got 1"),
    ([A, B], [A, B], [0.5, 0.3, 0.2], r"weights: expected one weight per model \(2\), got 3"),
    ([A, B], [A, WIDE], None, rf"models\+fishers: {SHAPES}.*\(2, 4\) in models\+fishers\[3\]"),
    ([A, B], [A, NO_BIAS], None, r"models\+fishers: .*Dense_0\.bias \(missing in models\+fishers\[3\]\)"),
])
def test_fisher_merge_refuses_mismatched_models_fishers_and_weights(models, fishers, weights, match):
    with pytest.raises(ValueError, match=match):
        fisher.fisher_merge(models, fishers, weights=weights)


SPEC = rebasin.mlp_permutation_spec(["Dense_0", "Dense_1"])  # one permutation, P_0 (3 hidden units)
MLP = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
       "Dense_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}


@pytest.mark.parametrize("init,match", [
    ({}, r"init: expected one permutation for each of \['P_0'\], got \[\] \(missing \['P_0'\]"),
    ({"P_0": np.arange(3), "P_9": np.arange(2)}, r"init: .*not in the spec \['P_9'\]"),
    ({"P_0": np.arange(4)}, r"init\['P_0'\]: expected a permutation of range\(3\), got an array of shape \(4,\)"),
    ({"P_0": np.array([0.0, 1.0, 2.0])}, r"init\['P_0'\]: .*dtype float"),
    ({"P_0": np.array([0, 0, 1])},
     r"init\['P_0'\]: expected a permutation of range\(3\), got one without indices \[2\]"),
])
def test_weight_matching_refuses_a_bad_init(init, match):
    with pytest.raises(ValueError, match=match):
        rebasin.weight_matching(SPEC, MLP, MLP, init=init)
