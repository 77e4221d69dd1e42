"""Review 12 of the merge geometry (re-basin, Fisher/RegMean, soups, landscape, curves): each test
failed on the code before its fix."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.merge import curves, fisher, landscape, mlp, rebasin, soups

SIZES = (5, 7, 6, 3)
PA = mlp.init(jax.random.PRNGKey(0), SIZES)
X = jax.random.normal(jax.random.PRNGKey(2), (12, 5))
Y = jnp.arange(12) % 3
SPEC = rebasin.mlp_permutation_spec(["Dense_0", "Dense_1", "Dense_2"])
IDENT = {"P_0": np.arange(7), "P_1": np.arange(6)}


# ----------------------------------------------------------------------------- re-basin


@pytest.mark.parametrize("spec, perms, match", [
    # a spec naming a leaf params lack (a typo): that tensor stayed unpermuted, another function
    (rebasin.mlp_permutation_spec(["Dense_0", "Dense_1", "Dense_X"]), IDENT,
     "spec: leaf 'Dense_X.kernel' is not in params (params have e.g. ['Dense_0.bias', 'Dense_0.kernel', "
     "'Dense_1.bias', 'Dense_1.kernel'])"),
    # not a permutation: unit 0 copied 7 times, silently
    (SPEC, {"P_0": np.zeros(7, int), "P_1": np.arange(6)},
     "perms['P_0']: expected a permutation of range(7), got one without indices [1, 2, 3, 4, 5]"),
    (SPEC, {"P_0": np.arange(7)},
     "perms: expected one permutation for each of ['P_0', 'P_1'], got ['P_0'] (missing ['P_1'], not in the spec [])"),
    (SPEC, {"P_0": np.arange(6).astype(np.int64), "P_1": np.arange(6)},
     "perms['P_0']: expected a permutation of range(7), got an array of shape (6,) and dtype int64"),
])
def test_apply_permutation_refuses_a_bad_spec_or_perms(spec, perms, match):
    # each message whole: what was expected and what came (the matches were its first half)
    with pytest.raises(ValueError, match="^" + re.escape(match) + "$"):
        rebasin.apply_permutation(spec, perms, PA)


def test_cnn_spec_refuses_a_norm_of_an_unknown_layer():
    # the typo 'Conv0' left BatchNorm_0 unpermuted: the "aligned" model computed another function
    with pytest.raises(ValueError, match=r"^norm_names: expected keys among the conv and dense layers "
                                         r"\['Conv_0', 'Dense_0'\], got \['Conv0'\]$"):
        rebasin.cnn_permutation_spec(["Conv_0"], ["Dense_0"], norm_names={"Conv0": "BatchNorm_0"})


@pytest.mark.parametrize("max_iter", [0, -1, 1.5, True])
def test_weight_matching_refuses_a_bad_max_iter(max_iter):
    # 0 returned the identity with sweeps=0 as if converged; 1.5 was a TypeError from range()
    message = f"max_iter: expected a positive number of sweeps, got {max_iter}"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        rebasin.weight_matching(SPEC, PA, PA, max_iter=max_iter)


# ----------------------------------------------------------------------------- soups


def _w(v):
    return {"w": jnp.array([float(v)])}


def test_greedy_soup_ranks_a_nan_score_last_and_ties_in_order():
    models = [_w(0), _w(1), _w(3)]
    # model 1 diverged (nan): it was sorted first and became the whole soup
    g = soups.greedy_soup(models, lambda p: float("nan") if float(p["w"][0]) == 1.0 else -float(p["w"][0]))
    assert g.selected == [0] and float(g.params["w"][0]) == 0.0
    # equal scores: the paper's stable sort starts from the first model (it started from the last)
    g = soups.greedy_soup(models, lambda p: 1.0 if float(p["w"][0]) in (0.0, 3.0) else 0.0)
    assert g.selected[0] == 0
    with pytest.raises(ValueError, match=r"^score_fn: expected a score for at least one model, got nan for all 3$"):
        soups.greedy_soup(models, lambda p: float("nan"))


# ----------------------------------------------------------------------------- Fisher / RegMean


@pytest.mark.parametrize("labels, match", [
    # out of range: jit clamped 3 to class 2 and wrapped -1 to class 2, another class's gradient
    (Y + 1, r"labels: expected class indices in \[0, 3\) for logits of 3 classes, got values in \[1, 3\]"),
    (Y - 1, r"labels: expected class indices in \[0, 3\) for logits of 3 classes, got values in \[-1, 1\]"),
    (Y[:4], r"labels: expected integer class indices \[12\] \(one per input\), got shape \(4,\) and dtype int32"),
    (Y.astype(jnp.float32),
     r"labels: expected integer class indices \[12\] \(one per input\), got shape \(12,\) and dtype float32"),
])
def test_diagonal_fisher_refuses_bad_labels(labels, match):
    with pytest.raises(ValueError, match="^" + match + "$"):
        fisher.diagonal_fisher(mlp.apply, PA, X, labels=labels)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]])
def test_fisher_merge_refuses_weights_that_do_not_make_a_mean(weights):
    # [1, -1]: sum_i w_i F_i was 0 wherever the Fishers agree: an all-nan/inf merge, silently
    f = jax.tree_util.tree_map(jnp.ones_like, PA)
    message = f"weights: expected finite non-negative weights with a positive sum, got {weights}"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        fisher.fisher_merge([PA, PA], [f, f], weights=weights)


def test_regmean_refuses_no_models_and_grams_for_a_leaf_in_some_models_only():
    with pytest.raises(ValueError, match=r"^models: expected at least one params tree, got none$"):
        fisher.regmean([], [])  # was an IndexError
    g = {"Dense_0.kernel": jnp.eye(5)}
    # model 1 had no Gram for Dense_0.kernel: the leaf was averaged, model 0's Gram ignored
    with pytest.raises(ValueError, match=r"^grams\[1\]: expected Gram matrices for the same leaves in every model, "
                                         r"got none for \['Dense_0\.kernel'\] \(grams\[0\] has 'Dense_0\.kernel'\)$"):
        fisher.regmean([PA, PA], [g, {}])


# ----------------------------------------------------------------------------- curves


def test_fit_bezier_takes_a_list_and_refuses_too_few_batches():
    pb = mlp.init(jax.random.PRNGKey(1), SIZES)
    # a list of batches was a TypeError ('list' object is not an iterator); now as the iterator
    r_list = curves.fit_bezier(mlp.loss, PA, pb, [(X, Y)] * 3, steps=3)
    r_iter = curves.fit_bezier(mlp.loss, PA, pb, iter([(X, Y)] * 3), steps=3)
    np.testing.assert_array_equal(r_list.train_losses, r_iter.train_losses)
    with pytest.raises(ValueError, match=r"^batches: expected at least steps=3 batches, got 2$"):
        curves.fit_bezier(mlp.loss, PA, pb, [(X, Y)] * 2, steps=3)
    # an iterator that ends early raised a bare StopIteration (which ends a caller's generator silently)
    with pytest.raises(ValueError, match=r"^batches: expected at least steps=3 batches, the iterator ended after 2$"):
        curves.fit_bezier(mlp.loss, PA, pb, iter([(X, Y)] * 2), steps=3)


@pytest.mark.parametrize("lr", [0.0, -1e-2, float("nan")])
def test_fit_bezier_refuses_a_bad_learning_rate(lr):
    # lr < 0 climbed the loss; nan gave a nan bend, silently
    with pytest.raises(ValueError, match="^" + re.escape(f"learning_rate: expected a positive finite rate, got {lr}") + "$"):
        curves.fit_bezier(mlp.loss, PA, PA, lambda i: (X, Y), steps=2, learning_rate=lr)


# ----------------------------------------------------------------------------- landscape


def test_filter_normalized_direction_keeps_1d_leaves_as_li_et_al_and_checks_filter_axis():
    p = jax.tree_util.tree_map(lambda x: x + 0.5, PA)  # biases not zero
    d = landscape.filter_normalized_direction(jax.random.PRNGKey(0), p, ignore_1d=False)
    for i in range(3):  # Li et al.: d.copy_(w) for biases/BN when not ignored (was a random vector)
        np.testing.assert_array_equal(d[f"Dense_{i}"]["bias"], p[f"Dense_{i}"]["bias"])
    # axis 2 of the [in, out] kernels wrapped to axis 0 (filters over inputs), silently
    with pytest.raises(ValueError, match=r"^filter_axis: expected an axis of every leaf with 2 or more axes, got 2 for "
                                         r"'Dense_0\.kernel' of shape \(5, 7\)$"):
        landscape.filter_normalized_direction(jax.random.PRNGKey(0), PA, filter_axis=2)
    with pytest.raises(ValueError, match=r"^filter_axis: expected an integer axis, got 1\.0$"):
        landscape.filter_normalized_direction(jax.random.PRNGKey(0), PA, filter_axis=1.0)


# ----------------------------------------------------------------------------- demo


def test_demo_greedy_soup_validation_is_held_out_from_the_fine_tunes():
    # the greedy soup ranked by x_train[-300:], examples the base and the class shards trained on
    from jaxinterp.merge import demo

    d = mlp.load_digits(0)
    (x_fit, _), (x_val, y_val) = demo.held_out_split(d)
    assert len(x_val) == len(y_val) == 300 and len(x_fit) + len(x_val) == len(d.x_train)
    fit_rows = {r.tobytes() for r in x_fit}
    assert not any(r.tobytes() in fit_rows for r in x_val)


def test_fisher_merge_floors_each_fisher_and_normalizes_as_the_papers_code():
    a, b = {"w": jnp.array([1.0, 2.0, 4.0])}, {"w": jnp.array([3.0, 6.0, 8.0])}
    fa, fb = {"w": jnp.array([0.0, 3e-6, 2.0])}, {"w": jnp.array([1e-6, 1e-6, 6.0])}
    # max(F, 1e-6) as the reference's fisher_floor: entry 0 is the plain mean (adding eps gave (a + 2b) / 3)
    out = fisher.fisher_merge([a, b], [fa, fb])
    np.testing.assert_allclose(out["w"], [2.0, (3 * 2 + 6) / 4, (2 * 4 + 6 * 8) / 8], rtol=1e-6)
    # normalize_fishers: w_i / ||F_i||_2 (model b's Fisher is 3x larger: it no longer counts 3x)
    na, nb = np.linalg.norm(np.maximum(fa["w"], 0)), np.linalg.norm(fb["w"])
    out = fisher.fisher_merge([a, b], [fa, fb], normalize=True)
    wa, wb = 0.5 / na, 0.5 / nb
    np.testing.assert_allclose(out["w"][2], (wa * 2 * 4 + wb * 6 * 8) / (wa * 2 + wb * 6), rtol=1e-6)
    # bfloat16 models merge to bfloat16 (float32 Fishers promoted them)
    bf = [jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), m) for m in (a, b)]
    assert fisher.fisher_merge(bf, [fa, fb])["w"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"^eps: expected a positive finite floor for the Fishers, got 0\.0$"):
        fisher.fisher_merge([a, b], [fa, fb], eps=0.0)


@pytest.mark.parametrize("alphas, losses, match", [
    # a chord between L(0.25) and L(0.75) taken as L(0) and L(1): 0.25 where the chord barrier is 0.5
    ([0.25, 0.5, 0.75], [1.0, 2.0, 1.0],
     r"alphas: expected a path from alpha 0 \(model A\) to alpha 1 \(model B\), got 0\.25 to 0\.75"),
    ([0.0, 0.5, 1.0], [1.0, 2.0],
     r"alphas/losses: expected two arrays \[A\] of the same length >= 2, got shapes \(3,\) and \(2,\)"),
    ([0.0], [1.0], r"alphas/losses: expected two arrays \[A\] of the same length >= 2, got shapes \(1,\) and \(1,\)"),
])
@pytest.mark.parametrize("barrier", [landscape.barrier_mean, landscape.barrier_chord])
def test_barriers_refuse_a_path_that_is_not_from_0_to_1(barrier, alphas, losses, match):
    with pytest.raises(ValueError, match="^" + match + "$"):
        barrier(np.asarray(alphas), np.asarray(losses))


def test_barriers_take_lists():
    assert landscape.barrier_chord([0.0, 0.5, 1.0], [1.0, 3.0, 1.0]) == 2.0  # was a TypeError (1 - list)
