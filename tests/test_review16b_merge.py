"""Review 16b of jaxinterp.merge: Bezier curves off [0, 1], fit_bezier's optimizer arguments, a
slices: base_model in no slice, Re-Basin views keys, RegMean Gram matrices. Each test failed on the
code before its fix."""

import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.merge import curves, landscape

PA = {"k": jnp.ones((2, 3)), "b": jnp.zeros(3)}
PB = {"k": 2 * jnp.ones((2, 3)), "b": jnp.ones(3)}
PC = {"k": jnp.eye(2, 3), "b": jnp.arange(3.0)}
LOSS = lambda p, x: jnp.sum(p["k"] ** 2) + x  # noqa: E731


# ----------------------------------------------------------------------------- curve_losses on [0, 1]


@pytest.mark.parametrize("ts,got,index,n_off", [
    ([0.0, 0.5, 1.5], "1.5", 2, 1),         # phi(1.5) is past p1: a loss off the curve, silently
    ([-0.25, 0.5, 1.0], "-0.25", 0, 1),
    ([0.0, 2.0, -1.0, 1.0], "2.0", 1, 2),   # the first bad t is named, the count is of all of them
])
def test_curve_losses_refuses_ts_off_the_curve(ts, got, index, n_off):
    with pytest.raises(ValueError, match="^" + re.escape(
            f"ts: expected points in [0, 1] (the curve runs from p0 at t = 0 to p1 at t = 1), got {got} at "
            f"index ({index},) ({n_off} of {len(ts)} points outside)") + "$"):
        curves.curve_losses(LOSS, PA, PC, PB, 0.0, jnp.asarray(ts))


def test_curve_losses_ends_and_path_losses_beyond_the_segment_still_accepted():
    """t = 0 and 1 are the models; path_losses (a straight line, not a curve) keeps extrapolating."""
    ends = np.asarray(curves.curve_losses(LOSS, PA, PC, PB, 0.0, jnp.array([0.0, 1.0])))
    np.testing.assert_allclose(ends, [6.0, 24.0])
    assert np.isfinite(np.asarray(landscape.path_losses(LOSS, PA, PB, 0.0, jnp.array([-0.5, 1.5])))).all()


def test_curve_losses_nan_still_named_as_not_finite():
    with pytest.raises(ValueError, match=r"^ts: expected finite points, got nan at index \(1,\)$"):
        curves.curve_losses(LOSS, PA, PC, PB, 0.0, jnp.array([0.0, jnp.nan, 2.0]))


# ----------------------------------------------------------------------------- fit_bezier's optimizer


def test_fit_bezier_refuses_a_learning_rate_with_an_optimizer():
    """The rate was ignored, silently: the optimizer's own (here 1.0) was used."""
    with pytest.raises(ValueError, match=r"^learning_rate/optimizer: expected one of them \(learning_rate for the "
                                         r"default Adam, or an optimizer with its own rate\), got both "
                                         r"\(learning_rate=0\.001\)$"):
        curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=2, learning_rate=1e-3, optimizer=optax.sgd(1.0))


@pytest.mark.parametrize("opt,got", [
    ("adam", "str"),                       # an AttributeError: 'str' object has no attribute 'init'
    (optax.adam, "function"),              # the factory, not a transformation
    ({"init": None, "update": None}, "dict"),
])
def test_fit_bezier_refuses_an_optimizer_that_is_not_optax(opt, got):
    with pytest.raises(ValueError, match=r"^optimizer: expected an optax GradientTransformation \(init and update "
                                         rf"functions, e\.g\. optax\.adam\(1e-3\)\), got {got}$"):
        curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=2, optimizer=opt)


def test_fit_bezier_default_rate_and_optimizer_alone_unchanged():
    """No rate: Adam at 1e-2, as the default was; an optimizer alone (its own rate) is accepted."""
    default = curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=3)
    explicit = curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=3, learning_rate=1e-2)
    np.testing.assert_array_equal(default.train_losses, explicit.train_losses)
    own = curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=3, optimizer=optax.adam(1e-2))
    np.testing.assert_allclose(own.train_losses, default.train_losses, rtol=1e-6)


@pytest.mark.parametrize("lr", ["0.01", [1e-2], jnp.array([1e-2, 1e-3]), 1j])
def test_fit_bezier_refuses_a_rate_that_is_not_one_number(lr):
    with pytest.raises(ValueError, match=r"^learning_rate: expected a positive finite rate, got "):
        curves.fit_bezier(LOSS, PA, PB, lambda i: 0.0, steps=2, learning_rate=lr)


# ----------------------------------------------------------------------------- a base_model that no method uses

from jaxinterp.merge import config  # noqa: E402


def _src(*models):
    return {"sources": [{"model": m, "layer_range": [0, 2]} for m in models]}


@pytest.mark.parametrize("method,params", [("linear", {"weight": 1.0}), ("passthrough", None)])
def test_unused_base_model_refused_by_both_forms(method, params):
    """linear and passthrough ignore the base: a base_model that is none of the inputs was refused by
    the models: form but kept silently by the slices: form (merged into no tensor, used only as the
    tokenizer source)."""
    extra = {"parameters": params} if params else {}
    if method == "linear":
        with pytest.raises(ValueError, match=r"^config.base_model: merge_method 'linear' does not use a base model; "
                                             r"list it among the models instead$"):
            config.from_dict({"merge_method": method, "base_model": "c", "models": ["a", "b"], **extra})
    slices = [_src("a", "b")] if method == "linear" else [_src("a"), _src("b")]
    with pytest.raises(ValueError, match="^" + re.escape(
            f"config.base_model: merge_method {method!r} does not use a base model and 'c' is in no slice's "
            f"sources (got ['a', 'b']); list it among a slice's sources instead") + "$"):
        config.from_dict({"merge_method": method, "base_model": "c", "slices": slices, **extra})


def test_base_model_among_the_sources_of_a_method_without_a_base_still_accepted():
    """A frankenmerge naming one of its inputs base_model (its tokenizer) is one of the inputs, as a
    base listed among the models: form's models is."""
    cfg = config.from_dict({"merge_method": "passthrough", "base_model": "./a", "slices": [_src("a"), _src("b")]})
    assert cfg.base_model == "./a" and cfg.refs == ["a", "b"]
    cfg = config.from_dict({"merge_method": "linear", "base_model": "b", "parameters": {"weight": 1.0},
                            "slices": [_src("a", "b")]})
    assert cfg.refs == ["a", "b"]
    cfg = config.from_dict({"merge_method": "linear", "base_model": "b", "models": ["a", "b"],
                            "parameters": {"weight": 1.0}})
    assert cfg.base_model is None and [e.model for e in cfg.models] == ["a", "b"]


# ----------------------------------------------------------------------------- Re-Basin views keys

from jaxinterp.merge import rebasin  # noqa: E402

GPT_ISH = {"h_0": {"attn": {"c_attn": {"kernel": jnp.arange(24.0).reshape(2, 12)}}}}


def test_check_spec_refuses_a_views_key_naming_no_permuted_leaf():
    """A typo in a views key left the leaf unviewed: here its axes (4 entries) are checked against the
    kernel's own 2-axis shape and fail there, blaming axes; with a matching view key it passes."""
    axes = {"h_0.attn.c_attn.kernel": (None, None, "P", None)}
    good = rebasin.PermutationSpec(axes, {"h_0.attn.c_attn.kernel": (2, 3, 2, 2)})
    assert rebasin.check_spec(good, GPT_ISH) == {"P": 2}
    typo = rebasin.PermutationSpec(axes, {"h_0.attn.c_atn.kernel": (2, 3, 2, 2)})
    with pytest.raises(ValueError, match="^" + re.escape(
            "spec.views: keys ['h_0.attn.c_atn.kernel'] name no leaf of spec.axes; expected views only for the "
            "permuted leaves (known: ['h_0.attn.c_attn.kernel'])") + "$"):
        rebasin.check_spec(typo, GPT_ISH)


def test_check_spec_refuses_an_unused_view_even_when_the_axes_fit():
    """A view of a leaf not in axes was dropped silently, whatever it said."""
    spec = rebasin.PermutationSpec({"D0.kernel": (None, "P")}, {"D0.kernel": (2, 3), "D1.kernel": (3, 2)})
    params = {"D0": {"kernel": jnp.ones((2, 3))}, "D1": {"kernel": jnp.ones((3, 2))}}
    with pytest.raises(ValueError, match=r"^spec\.views: keys \['D1\.kernel'\] .*\(known: \['D0\.kernel'\]\)$"):
        rebasin.apply_permutation(spec, {"P": np.arange(3)}, params)
    with pytest.raises(ValueError, match=r"^spec\.views: expected a dict leaf name -> tuple, got NoneType$"):
        rebasin.check_spec(rebasin.PermutationSpec({"D0.kernel": (None, "P")}, None), params)


def test_gpt2_permutation_spec_views_all_name_permuted_leaves():
    spec = rebasin.gpt2_permutation_spec(2, 2, 4)
    assert set(spec.views) <= set(spec.axes)


# ----------------------------------------------------------------------------- RegMean Gram matrices

from jaxinterp.merge import fisher  # noqa: E402

M2 = [{"d": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.zeros(2)}},
      {"d": {"kernel": jnp.arange(6.0).reshape(3, 2) + 1, "bias": jnp.ones(2)}}]
G3 = jnp.eye(3)
WANT = r"expected a Gram matrix X\^T X \(an array \[3, 3\] for a kernel \(3, 2\)\), got "


@pytest.mark.parametrize("bad,match", [
    (None, rf"^grams\[0\]\['d\.kernel'\]: {WANT}NoneType None$"),                   # was an AttributeError
    ("eye", rf"^grams\[0\]\['d\.kernel'\]: {WANT}str 'eye'$"),
    ([[1.0], [1.0, 2.0]], rf"^grams\[0\]\['d\.kernel'\]: {WANT}list \[\[1\.0\], \[1\.0, 2\.0\]\]$"),  # ragged
    ([[1.0, 0.0], [0.0, 1.0]], r"^grams\[0\]\['d\.kernel'\]: expected \[3, 3\] for a kernel \(3, 2\), got \(2, 2\)$"),
    (jnp.eye(3, dtype=jnp.complex64), r"^grams\[0\]\['d\.kernel'\]: expected a real Gram matrix .*got dtype complex64$"),
])
def test_regmean_refuses_gram_matrices_that_are_not_arrays_of_the_right_shape(bad, match):
    with pytest.raises(ValueError, match=match):
        fisher.regmean(M2, [{"d.kernel": bad}, {"d.kernel": G3}])


@pytest.mark.parametrize("grams,match", [
    ([None, {"d.kernel": G3}], r"^grams\[0\]: expected a mapping kernel leaf name -> Gram matrix \[d_in, d_in\] "
                               r"\(one per linear layer\), got NoneType$"),
    ([{"d.kernel": G3}, [G3]], r"^grams\[1\]: expected a mapping .*got list$"),
    ({0: {"d.kernel": G3}, 1: {"d.kernel": G3}},  # {model: grams}: iterated by its keys
     r"^grams: expected a list with one mapping \(kernel leaf name -> Gram matrix \[d_in, d_in\]\) per model, got dict$"),
    ([{"d.bias": jnp.eye(2)}, {"d.bias": jnp.eye(2)}],
     r"^grams\[0\]\['d\.bias'\]: expected a kernel \[d_in, d_out\] \(a linear layer's\) to have a Gram matrix, got a "
     r"leaf of shape \(2,\)$"),
])
def test_regmean_refuses_grams_that_are_not_one_mapping_per_model(grams, match):
    with pytest.raises(ValueError, match=match):
        fisher.regmean(M2, grams)


def test_regmean_takes_nested_lists_of_the_right_shape_as_arrays():
    g = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]])
    ref = fisher.regmean(M2, [{"d.kernel": jnp.asarray(g)}, {"d.kernel": G3}])
    out = fisher.regmean(M2, [{"d.kernel": g.tolist()}, {"d.kernel": np.eye(3).tolist()}])
    np.testing.assert_array_equal(np.asarray(out["d"]["kernel"]), np.asarray(ref["d"]["kernel"]))
