"""Review 16 of jaxinterp.merge: base_model matched as a path, and the geometry/soup/Fisher/Re-Basin
defects found with it. Each test failed on the code before its fix."""

import re

import numpy as np
import pytest

from jaxinterp.merge import config, slices


# ----------------------------------------------------------------------------- base_model as a path


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Folders m, a, b in a working directory (relative config paths resolve against it)."""
    for n in ("m", "a", "b"):
        (tmp_path / n).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("spelling", ["./m", "m/", "ABS", "link", "sub/../m"])
def test_base_model_listed_under_another_spelling_is_the_base(folders, spelling):
    """`./m`, `m/`, /abs/m, a link to m: the base listed as `m` among the models was merged as an extra
    model (task arithmetic added a zero task vector; ties counted its weight)."""
    (folders / "sub").mkdir()
    base = str(folders / "m") if spelling == "ABS" else spelling
    cfg = config.from_dict({"merge_method": "ties", "base_model": base,
                            "models": ["a", {"model": "m"}, "b"]})
    assert cfg.base_model == base and [e.model for e in cfg.models] == ["a", "b"]


def test_names_not_on_disk_compare_as_normalised_text(folders):
    cfg = config.from_dict({"merge_method": "ties", "base_model": "./org/x", "models": ["org/x", "org/y"]})
    assert [e.model for e in cfg.models] == ["org/y"]
    cfg = config.from_dict({"merge_method": "ties", "base_model": "org/z", "models": ["org/x", "org/y"]})
    assert [e.model for e in cfg.models] == ["org/x", "org/y"]


def test_linear_base_under_another_spelling_is_one_of_the_models(folders):
    """linear ignores the base: a base_model listed among the models (as an absolute path) is one of
    them; it was kept as a base as well and refused ('does not use a base model')."""
    cfg = config.from_dict({"merge_method": "linear", "base_model": str(folders / "a"),
                            "models": [{"model": "a", "parameters": {"weight": 0.3}},
                                       {"model": "b", "parameters": {"weight": 0.7}}]})
    assert cfg.base_model is None and [e.model for e in cfg.models] == ["a", "b"]


def test_duplicate_models_under_absolute_and_relative_spellings_refused(folders):
    with pytest.raises(ValueError, match=r"config.models\[1\]: expected each model once, got 'a' again "
                                         r"\(as '.*/a'; first at models\[0\]\)"):
        config.from_dict({"merge_method": "ties", "base_model": "m", "models": ["a", str(folders / "a")]})


def test_slices_base_under_another_spelling(folders):
    """slices: a source `m` with base_model `./m` was not found as the base ('expected the base_model
    among the sources'), and plan_jobs would have merged it as a model."""
    d = {"merge_method": "ties", "base_model": "./m", "parameters": {"weight": 1.0, "density": 0.5},
         "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}, {"model": "m", "layer_range": [0, 1]}]}]}
    cfg = config.from_dict(d)
    idx = {"transformer.h.0.w": object()}
    indices = {"a": idx, "m": idx, "./m": idx}
    jobs, n = slices.plan_jobs(cfg, indices)
    assert n == 1 and [j.inputs for j in jobs] == [(("a", "transformer.h.0.w"), ("m", "transformer.h.0.w"))]
    assert jobs[0].base_index == 1


# ----------------------------------------------------------------------------- barriers and loss_fn


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxinterp.merge import curves, landscape  # noqa: E402

PA = {"k": jnp.ones((2, 3)), "b": jnp.zeros(3)}
PB = {"k": 2 * jnp.ones((2, 3)), "b": jnp.ones(3)}
PC = {"k": jnp.eye(2, 3), "b": jnp.arange(3.0)}


@pytest.mark.parametrize("barrier", [landscape.barrier_mean, landscape.barrier_chord])
@pytest.mark.parametrize("alphas,losses,match", [
    ([0.0, 0.5, 1.0], [1.0, float("nan"), 1.0],
     r"^losses: expected finite losses \(a barrier of nan or inf is no height\), got nan at alpha 0\.5 "
     r"\(1 of 3 points not finite\)$"),
    ([0.0, 0.5, 1.0], [float("inf"), 2.0, 1.0], r"^losses: .*got inf at alpha 0 \(1 of 3"),
    ([0.0, 0.5, 1.0], [1.0, float("inf"), float("-inf")], r"^losses: .*got inf at alpha 0\.5 \(2 of 3"),
    ([0.0, 1.5, 1.0], [1.0, 9.0, 1.0],
     r"^alphas: expected every alpha in \[0, 1\] \(points on the segment between the models\), got 1\.5 at index 1$"),
    ([0.0, -0.5, 1.0], [1.0, 9.0, 1.0], r"^alphas: .*got -0\.5 at index 1$"),
    ([0.0, float("nan"), 1.0], [1.0, 9.0, 1.0], r"^alphas: .*got nan at index 1$"),
])
def test_barriers_refuse_non_finite_losses_and_alphas_off_the_segment(barrier, alphas, losses, match):
    """A nan loss made both barriers nan, an inf end the chord's nan; an alpha beyond the ends counted
    a point off the segment (barrier_chord([0, 1.5, 1], [1, 9, 1]) was 8)."""
    with pytest.raises(ValueError, match=match):
        barrier(alphas, losses)


def test_linear_path_with_a_diverging_loss_names_the_alpha():
    def loss(p, x):  # infinite at the midpoint
        return 1.0 / jnp.abs(jnp.sum(p["k"]) - 9.0)

    with pytest.raises(ValueError, match=r"^losses: expected finite losses .*got inf at alpha 0\.5 \(1 of 3"):
        landscape.linear_path(loss, PA, PB, 0.0, num=3)


def _per_example(p, x):  # a loss per example [B], not a scalar
    return jnp.sum(p["k"], 0) * x


SCALAR = r"^loss_fn: expected a scalar loss \(params, batch\) -> \[\], got shape \(3,\)"  # jit appends a note


@pytest.mark.parametrize("call", [
    lambda f: landscape.path_losses(f, PA, PB, 1.0, jnp.linspace(0, 1, 4)),  # returned [4, 3], silently
    lambda f: landscape.path_losses(f, PA, PB, 1.0, jnp.linspace(0, 1, 4), chunk=2),
    lambda f: landscape.linear_path(f, PA, PB, 1.0, num=4),  # blamed 'alphas/losses'
    lambda f: landscape.plane_losses(f, PA, PB, PC, 1.0, jnp.zeros((4, 2))),
    lambda f: landscape.plane_through(f, PA, PB, PC, 1.0, n=3),  # a numpy reshape error
    lambda f: landscape.random_surface(f, PA, 1.0, key=jax.random.PRNGKey(0), n=3),
    lambda f: curves.curve_losses(f, PA, PC, PB, 1.0, jnp.linspace(0, 1, 4)),
    lambda f: curves.fit_bezier(f, PA, PB, lambda i: 1.0, steps=2),  # grad's TypeError
])
def test_a_loss_that_is_not_a_scalar_is_refused_while_tracing(call):
    with pytest.raises(ValueError, match=SCALAR):
        call(_per_example)


def test_a_loss_returning_a_tuple_is_refused():
    with pytest.raises(ValueError, match=r"^loss_fn: expected a scalar loss .*got tuple"):
        landscape.path_losses(lambda p, x: (jnp.sum(p["k"]), 0.0), PA, PB, 1.0, jnp.linspace(0, 1, 3))


# ----------------------------------------------------------------------------- Fisher merging


from jaxinterp.merge import fisher  # noqa: E402


@pytest.mark.parametrize("bad,got", [
    (jnp.full((2, 3), jnp.nan), "nan"),   # the merge's k was nan, silently
    (jnp.full((2, 3), jnp.inf), "inf"),   # inf / inf: nan
    (-jnp.ones((2, 3)), "-1.0"),          # floored to eps: the model's weight vanished, silently
])
def test_fisher_merge_refuses_fishers_that_are_not_finite_and_non_negative(bad, got):
    with pytest.raises(ValueError, match=rf"^fishers\[1\]: expected a diagonal Fisher, finite and >= 0 at every "
                                         rf"entry \(a mean of squared gradients\), got {got} in k$"):
        fisher.fisher_merge([PA, PB], [PA, {"k": bad, "b": jnp.ones(3)}])


def test_fisher_merge_refuses_the_models_passed_as_their_fishers():
    models = [{"k": jnp.array([1.0, -2.0])}, {"k": jnp.array([3.0, 0.5])}]
    with pytest.raises(ValueError, match=r"^fishers\[0\]: .*got -2\.0 in k$"):
        fisher.fisher_merge(models, models)


def test_fisher_merge_is_the_fisher_weighted_mean():
    m = [{"k": jnp.array([1.0, 2.0, 5.0])}, {"k": jnp.array([3.0, 4.0, 7.0])}]
    f = [{"k": jnp.array([1.0, 0.0, 0.0])}, {"k": jnp.array([3.0, 2.0, 0.0])}]
    out = fisher.fisher_merge(m, f, eps=1e-6)
    # (F_a a + F_b b) / (F_a + F_b) with each F floored at eps: 2.5; ~4 (b's); the mean 6 where both are 0
    np.testing.assert_allclose(np.asarray(out["k"]), [2.5, (1e-6 * 2 + 2 * 4) / (1e-6 + 2), 6.0], rtol=1e-6)


# ----------------------------------------------------------------------------- keys and seeds


from jaxinterp.merge import rebasin  # noqa: E402

KEY_MSG = r"^key: expected one JAX PRNG key \(jax.random.key\(seed\) or jax.random.PRNGKey\(seed\)\), got "
LOSS = lambda p, x: jnp.sum(p["k"] ** 2)  # noqa: E731


@pytest.mark.parametrize("key,got", [
    (0, "int 0"),
    (jax.random.split(jax.random.PRNGKey(0)), r"uint32 array of shape \(2, 2\)"),
    (jax.random.split(jax.random.key(0)), r"key<fry> array of shape \(2,\)"),
    (jnp.zeros(2, jnp.int32), r"int32 array of shape \(2,\)"),
])
@pytest.mark.parametrize("call", [
    lambda k: landscape.filter_normalized_direction(k, PA),
    lambda k: landscape.random_surface(LOSS, PA, 0.0, key=k, n=3),
    lambda k: curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=2, key=k),
    lambda k: fisher.diagonal_fisher(lambda p, x: x @ p["k"], PA, jnp.ones((4, 2)), key=k),
])
def test_a_key_that_is_not_one_prng_key_is_refused(call, key, got):
    """An int seed or a batch of keys was a TypeError from inside jax.random naming no argument."""
    with pytest.raises(ValueError, match=KEY_MSG + got + "$"):
        call(key)


@pytest.mark.parametrize("key", [jax.random.PRNGKey(3), jax.random.key(3), np.array([0, 3], np.uint32)])
def test_directions_and_curves_are_reproducible_from_one_key(key):
    d1, d2 = (landscape.filter_normalized_direction(key, PC) for _ in range(2))
    np.testing.assert_array_equal(np.asarray(d1["k"]), np.asarray(d2["k"]))
    r1, r2 = (curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=3, key=key) for _ in range(2))
    np.testing.assert_array_equal(r1.train_losses, r2.train_losses)


SPEC = rebasin.mlp_permutation_spec(["D0", "D1"])
MLP = {"D0": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)},
       "D1": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.zeros(2)}}


@pytest.mark.parametrize("seed", [None, 1.5, -1, True])
def test_weight_matching_refuses_a_seed_that_is_not_an_integer(seed):
    """None drew the sweep order from fresh OS entropy (other permutations on each call, silently)."""
    with pytest.raises(ValueError, match=r"^seed: expected a non-negative integer \(the sweeps' order is drawn "
                                         rf"from it\), got {re.escape(repr(seed))}$"):
        rebasin.weight_matching(SPEC, MLP, MLP, seed=seed)


def test_weight_matching_refuses_non_finite_weights_by_leaf():
    bad = {**MLP, "D1": {"kernel": MLP["D1"]["kernel"].at[1, 0].set(jnp.inf), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"^params_b: expected finite weights in every permuted leaf, got inf in "
                                         r"D1\.kernel$"):  # scipy: 'matrix contains invalid numeric entries'
        rebasin.weight_matching(SPEC, MLP, bad)


@pytest.mark.parametrize("call", [
    lambda: rebasin.weight_matching(SPEC.axes, MLP, MLP),
    lambda: rebasin.apply_permutation(SPEC.axes, {"P_0": np.arange(3)}, MLP),
])
def test_a_spec_that_is_not_a_permutation_spec_is_refused(call):
    with pytest.raises(ValueError, match=r"^spec: expected a PermutationSpec\(axes, views\), got dict$"):
        call()


@pytest.mark.parametrize("d,match", [
    ({"merge_method": "ties", "base_model": "", "models": ["a"]},
     r"^config.base_model: expected a path string, got ''$"),  # accepted, then dropped by to_yaml
    ({"merge_method": "ties", "base_model": "b", "models": ["a", ""]},
     r"^config.models\[1\]: expected \{model: PATH, parameters: \{...\}\}, got \{'model': ''\}$"),
    ({"merge_method": "passthrough", "base_model": "",
      "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}]}]},
     r"^config.base_model: expected a path string, got ''$"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "", "layer_range": [0, 1]}]}]},
     r"^config.slices\[0\].sources\[0\]: expected \{model: PATH, "),
])
def test_an_empty_model_path_is_refused(d, match):
    with pytest.raises(ValueError, match=match):
        config.from_dict(d)


# ----------------------------------------------------------------------------- soups


from jaxinterp.merge import soups  # noqa: E402


@pytest.mark.parametrize("score,got", [
    (lambda p: jnp.full(2, jnp.sum(p["k"])), r"ArrayImpl of shape \(2,\) and dtype float32"),  # a TypeError
    (lambda p: "0.9", r"str of shape \(\) and dtype <U3"),  # float('0.9') took a string as the score
    (lambda p: complex(1, 1), r"complex of shape \(\) and dtype complex128"),
])
def test_greedy_soup_refuses_a_score_that_is_not_one_real_number(score, got):
    with pytest.raises(ValueError, match=rf"^score_fn: expected one real score \(higher is better\) for models\[0\], "
                                         rf"got {got}$"):
        soups.greedy_soup([PA, PB], score)


def test_greedy_soup_takes_scalar_scores_of_any_real_dtype():
    for score in (lambda p: -float(jnp.sum(p["k"])), lambda p: -jnp.sum(p["k"]).astype(jnp.bfloat16),
                  lambda p: np.int64(-jnp.sum(p["k"]))):
        g = soups.greedy_soup([PB, PA], score)  # PA scores higher; the soup of both scores lower
        assert g.selected == [1]


# ----------------------------------------------------------------------------- dotted names


from jaxinterp.merge import tree  # noqa: E402
from jaxinterp.merge.tree_merge import merge  # noqa: E402

COLLIDE = r"^params: expected leaf names that stay distinct joined with dots, got 'a\.b' for two leaves, at " \
          r"\['a'\]\['b'\] and \['a\.b'\]$"


def test_leaves_whose_dotted_names_collide_are_refused():
    """{'a.b': x, 'a': {'b': y}}: one name for two leaves; the other's shape went unchecked (a (2,) vs
    (3,) difference passed) and merge failed with 'Too few leaves for PyTreeDef'."""
    t1 = {"a.b": jnp.ones(2), "a": {"b": jnp.zeros(2)}}
    t2 = {"a.b": jnp.ones(2), "a": {"b": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=COLLIDE):
        tree.check_same_structure([t1, t2])
    with pytest.raises(ValueError, match=COLLIDE):
        merge("linear", [t1, t1], parameters={"weight": 1.0})


# ----------------------------------------------------------------------------- non-finite points


@pytest.mark.parametrize("call,match", [
    (lambda: landscape.path_losses(LOSS, PA, PB, 0.0, jnp.array([0.0, jnp.nan, 1.0])),
     r"^alphas: expected finite points, got nan at index \(1,\)$"),
    (lambda: landscape.plane_losses(LOSS, PA, PB, PC, 0.0, jnp.array([[0.0, 0.0], [1.0, jnp.inf]])),
     r"^coords: expected finite points, got inf at index \(1, 1\)$"),
    (lambda: curves.curve_losses(LOSS, PA, PC, PB, 0.0, np.array([0.0, -np.inf])),
     r"^ts: expected finite points, got -inf at index \(1,\)$"),
])
def test_non_finite_points_are_refused(call, match):
    """Each gave a nan loss at that point, silently."""
    with pytest.raises(ValueError, match=match):
        call()


def test_points_under_an_outer_jit_are_not_checked():
    f = jax.jit(lambda al: landscape.path_losses(LOSS, PA, PB, 0.0, al))
    np.testing.assert_allclose(np.asarray(f(jnp.array([0.0, 1.0]))), [6.0, 24.0])


# ----------------------------------------------------------------------------- permutation specs


@pytest.mark.parametrize("call,match", [
    (lambda: rebasin.mlp_permutation_spec(["D0", "D1", "D0"]),
     r"^layer_names: expected each layer once, got \['D0'\] more than once in \['D0', 'D1', 'D0'\]$"),
    (lambda: rebasin.mlp_permutation_spec("D0"), r"^layer_names: expected a list of layer names, got 'D0'$"),
    (lambda: rebasin.cnn_permutation_spec(["c0", "c1"], ["c1"]),
     r"^conv_names \+ dense_names: expected each layer once, got \['c1'\]"),
    (lambda: rebasin.cnn_permutation_spec(["c0", "c0"], ["d"]), r"^conv_names: expected each layer once"),
])
def test_permutation_specs_refuse_a_layer_given_twice(call, match):
    """['D0', 'D1', 'D0']: D0's leaves took the last entry's permutations (P_1 on its inputs), the
    chain D0 -> D1 broke and apply_permutation computed another function, silently."""
    with pytest.raises(ValueError, match=match):
        call()
