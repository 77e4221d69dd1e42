"""Review 13 of the merge package: each test failed on the code before its fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp.merge import checkpoint, config, fisher, landscape, mlp, soups, tree_merge


# ----------------------------------------------------------------------------- merge yaml


@pytest.mark.parametrize("first, base", [(np.int32, np.int64), (np.int64, np.float32)])
def test_merge_yaml_refuses_a_buffer_of_different_dtypes_before_writing(tmp_path, first, base):
    # int32 position ids in the fine-tune, int64 in the base: the header took the base's int64 and
    # the bytes came from the fine-tune's int32, so ids 0..5 were written as 4294967296, ... silently
    rng = np.random.default_rng(0)
    refs = []
    for j, dt in enumerate([first, base]):
        d = tmp_path / f"m{j}"
        d.mkdir()
        save_file({"pos": np.arange(6).astype(dt), "w": rng.normal(size=(4,)).astype(np.float32)},
                  str(d / "model.safetensors"))
        refs.append(str(d))
    cfg = config.from_dict({"merge_method": "ties", "base_model": refs[1],
                            "models": [{"model": refs[0], "parameters": {"weight": 1.0}}]})
    with pytest.raises(ValueError, match=r"pos: expected one dtype in every input for an integer or boolean "
                                         r"tensor .*got pos of '.*m0' " + np.dtype(first).name):
        checkpoint.run_config(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- soups, RegMean, TSV


def _bf16_models(n, size=4096, seed=0):
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(1.0, 0.05, size), jnp.bfloat16)} for _ in range(n)]


def _rounded_mean(models, key="w"):
    exact = np.mean([np.asarray(m[key], np.float64) for m in models], 0)
    return np.asarray(jnp.asarray(exact, jnp.bfloat16), np.float64)


def test_uniform_soup_of_bfloat16_models_is_the_rounded_mean():
    # a running sum in bfloat16 rounded at every model: 40 models were 2.3% off, 63% of entries wrong
    models = _bf16_models(40)
    got = soups.uniform_soup(models)["w"]
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float64), _rounded_mean(models))
    g = soups.greedy_soup(models[:3], lambda p: 1.0)  # every model kept: the same mean
    np.testing.assert_array_equal(np.asarray(g.params["w"], np.float64), _rounded_mean(models[:3]))


def test_regmean_averages_leaves_without_a_gram_in_float32():
    models = [{"k": jnp.eye(3, dtype=jnp.bfloat16), **m} for m in _bf16_models(40, seed=1)]
    out = fisher.regmean(models, [{"k": jnp.eye(3)}] * 40)
    np.testing.assert_array_equal(np.asarray(out["w"], np.float64), _rounded_mean(models))


def _with_step(step, w):
    return {"w": jnp.full((2, 2), float(w)), "step": jnp.int32(step)}


@pytest.mark.parametrize("run", [
    lambda ms: soups.uniform_soup(ms),
    lambda ms: soups.greedy_soup(ms, lambda p: 1.0).params,
    lambda ms: fisher.regmean(ms, [{}] * len(ms)),
    lambda ms: soups.tsv_merge(ms[1:], ms[0]),
])
def test_integer_leaves_are_copied_when_equal_and_refused_when_not(run):
    # the soup turned a step counter int32 5 into float32 5.0, and steps 5 and 6 into 5.5; TSV
    # truncated base + mean(task vectors) back to int32 (5, 5, 6 -> 5), silently
    out = run([_with_step(5, i) for i in range(3)])
    assert out["step"].dtype == jnp.int32 and int(out["step"]) == 5
    with pytest.raises(ValueError, match=r"step: expected the same values in every tree for a int32 leaf "
                                         r"\(a buffer, copied, not averaged\); .*\[2\] differs"):
        run([_with_step(5, 0), _with_step(5, 1), _with_step(6, 2)])


def test_fisher_merge_of_bfloat16_models_is_the_rounded_weighted_mean():
    # bfloat16 products and sums (the Fishers of bfloat16 models are bfloat16): 1.6% off, half the
    # entries not the rounded value
    rng = np.random.default_rng(0)
    models = _bf16_models(5)
    fishers = [{"w": jnp.asarray(rng.uniform(0.1, 3.0, 4096), jnp.bfloat16)} for _ in range(5)]
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    got = fisher.fisher_merge(models, fishers, weights=w.tolist())["w"]
    assert got.dtype == jnp.bfloat16
    p = np.stack([np.asarray(m["w"], np.float64) for m in models])
    f = np.stack([np.asarray(x["w"], np.float64) for x in fishers]) * w[:, None]
    want = np.asarray(jnp.asarray((f * p).sum(0) / f.sum(0), jnp.bfloat16), np.float64)
    np.testing.assert_array_equal(np.asarray(got, np.float64), want)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("weight, t", [
    (np.float32(0.25), np.float32(0.25)),            # entries of np.linspace(..., dtype=float32)
    (np.int64(1) * 0.25, jnp.float32(0.25)),          # a 0-d jax array
    (np.array(0.25), np.array([0.25, 0.25])),         # a 0-d array; a 1-D array as a gradient over layers
])
def test_numpy_and_jax_scalars_are_taken_as_parameters(weight, t):
    # a sweep over np.linspace values was refused: "expected a scalar, a list or a condition, got
    # np.float32(0.25)"
    a, b = {"h_0": {"w": jnp.ones(3)}, "h_1": {"w": jnp.ones(3)}}, {"h_0": {"w": jnp.zeros(3)}, "h_1": {"w": jnp.zeros(3)}}
    out = tree_merge.merge("linear", [a, b], model_parameters=[{"weight": weight}, {"weight": 0.75}])
    np.testing.assert_allclose(out["h_0"]["w"], 0.25)
    out = tree_merge.merge("slerp", [b], base=a, parameters={"t": t})
    want = tree_merge.merge("slerp", [b], base=a, parameters={"t": 0.25})
    np.testing.assert_array_equal(out["h_1"]["w"], want["h_1"]["w"])
    out = tree_merge.merge("ties", [b], base=a, parameters={"weight": np.int64(2), "normalize": np.bool_(False)})
    np.testing.assert_allclose(out["h_0"]["w"], -1.0)


# ----------------------------------------------------------------------------- landscape


def test_plane_through_bfloat16_models_puts_them_where_they_are():
    # the geometry ran in bfloat16: p1 was marked at 45.75 for |p1 - p0| = 45.84, the grid missed
    # the models by 0.25% of that, and the loss at p1's grid point was 4e-4 off its own
    bf = lambda p: jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), p)  # noqa: E731
    ps = [bf(mlp.init(jax.random.PRNGKey(i), (64, 256, 256, 10))) for i in range(3)]
    batch = (jax.random.normal(jax.random.PRNGKey(3), (64, 64)), jnp.arange(64) % 10)
    s = landscape.plane_through(mlp.loss, *ps, batch, n=2, margin=0.0)
    flat = [np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(p)]) for p in ps]
    u, v = flat[1] - flat[0], flat[2] - flat[0]
    nu = np.linalg.norm(u)
    proj = v @ u / nu
    np.testing.assert_allclose(s.points[1], [nu, 0.0], rtol=1e-5)
    np.testing.assert_allclose(s.points[2], [proj, np.linalg.norm(v - proj * u / nu)], rtol=1e-5)
    f32 = lambda p: jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), p)  # noqa: E731
    # grid corners (a: 0 and nu when p2 projects inside; b: 0 and p2's height): p0 and p1 on the b=0 row
    assert s.a[0] == 0.0 and s.b[0] == 0.0
    np.testing.assert_allclose(s.losses[0], [mlp.loss(f32(ps[0]), batch), mlp.loss(f32(ps[1]), batch)], rtol=2e-6)


# ----------------------------------------------------------------------------- cli


@pytest.mark.parametrize("steps", ["-1", "0"])
def test_train_mlp_refuses_a_non_positive_step_count_at_parse_time(tmp_path, capsys, steps):
    # -1 loaded the data, then failed with numpy's 'negative dimensions are not allowed'; 0 wrote an
    # untrained model as if trained
    from jaxinterp import cli

    out = tmp_path / "m.safetensors"
    with pytest.raises(SystemExit) as e:
        cli.main(["merge", "train-mlp", "--steps", steps, "--out", str(out)])
    assert e.value.code == 2
    assert f"argument --steps: expected a positive integer, got {steps}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method, kw, match", [
    ("linear", dict(model_parameters=[{"weight": float("nan")}, {"weight": 1.0}]), r"weight of input 0 must be a finite number, got nan"),
    ("slerp", dict(base=True, parameters={"t": float("inf")}), r"t must be a finite number, got inf"),
    ("task_arithmetic", dict(base=True, parameters={"weight": 1.0, "lambda": float("-inf")}), r"lambda must be a finite number, got -inf"),
    ("karcher", dict(parameters={"tol": float("nan")}), r"tol must be a finite number, got nan"),
])
def test_non_finite_parameters_are_refused_before_merging(method, kw, match):
    # every leaf came out NaN or inf, silently
    a, b = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    models = [b] if kw.get("base") else [a, b]
    kw = {**kw, "base": a} if kw.get("base") else kw
    with pytest.raises(ValueError, match=r"parameters for w: " + match):
        tree_merge.merge(method, models, **kw)


def test_non_finite_parameters_are_refused_in_a_yaml_config(tmp_path):
    rng = np.random.default_rng(0)
    refs = []
    for j in range(2):
        (tmp_path / f"m{j}").mkdir()
        save_file({"w": rng.normal(size=(4,)).astype(np.float32)}, str(tmp_path / f"m{j}" / "model.safetensors"))
        refs.append(str(tmp_path / f"m{j}"))
    cfg = config.from_dict({"merge_method": "slerp", "base_model": refs[0], "models": [{"model": refs[1]}],
                            "parameters": {"t": [0.0, float("nan")]}})
    with pytest.raises(ValueError, match=r"t must be a finite number, got nan"):
        checkpoint.run_config(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, base", [([1.0, -1.0], False), ([1.0, -1.0], True), ([0.0, 0.0], False)])
def test_multislerp_refuses_normalized_weights_that_sum_to_zero(weights, base):
    # w / sum(w) made every entry NaN, silently (as linear's check for its normalize)
    a, b = {"w": jnp.array([1.0, 2.0, 3.0])}, {"w": jnp.array([3.0, 1.0, 0.0])}
    kw = dict(base={"w": jnp.zeros(3)}) if base else {}
    mps = [{"weight": w} for w in weights]
    with pytest.raises(ValueError, match=r"multislerp with normalize_weights needs weights that do not sum to 0, "
                                         r"got \[" + f"{weights[0]}, {weights[1]}" + r"\]"):
        tree_merge.merge("multislerp", [a, b], model_parameters=mps, **kw)
    out = tree_merge.merge("multislerp", [a, b], model_parameters=mps, parameters={"normalize_weights": False}, **kw)
    assert np.isfinite(np.asarray(out["w"])).all()  # without normalising, the same weights are valid


def test_fit_bezier_trains_the_bend_of_bfloat16_endpoints():
    # the default Adam took its hyperparameters in the params' dtype: b2 = 0.999 is 1 in bfloat16,
    # the bias correction divided by 0 and the bend was NaN from the second step on
    from jaxinterp.merge import curves

    bf = lambda p: jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), p)  # noqa: E731
    x = jax.random.normal(jax.random.PRNGKey(2), (64, 8))
    y = jnp.arange(64) % 4
    pa, pb = (bf(mlp.train(mlp.init(jax.random.PRNGKey(s), (8, 32, 4)), np.asarray(x), np.asarray(y), steps=100, seed=s))
              for s in (0, 1))
    r = curves.fit_bezier(mlp.loss, pa, pb, lambda i: (x, y), steps=40, learning_rate=1e-2)
    assert np.isfinite(r.train_losses).all()
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(r.bend))
    straight = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b), pa, pb)
    mid = lambda bend: float(curves.curve_losses(mlp.loss, pa, bend, pb, (x, y), jnp.array([0.5]))[0])  # noqa: E731
    assert mid(r.bend) < mid(straight)


@pytest.mark.parametrize("kw", [dict(labels=jnp.zeros((0,), jnp.int32)), dict(key=jax.random.PRNGKey(0))])
def test_diagonal_fisher_refuses_no_examples(kw):
    # the mean of no squared gradient: every Fisher entry NaN, and fisher_merge's result NaN, silently
    p = mlp.init(jax.random.PRNGKey(0), (5, 7, 3))
    with pytest.raises(ValueError, match=r"inputs: expected at least one example \[N >= 1, \.\.\.\], got shape \(0, 5\)"):
        fisher.diagonal_fisher(mlp.apply, p, jnp.zeros((0, 5)), **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(parameters=[("weight", 1.0)]), r"parameters: expected a mapping of parameter names to settings, got list"),
    (dict(model_parameters={"weight": 1.0}), r"model_parameters: expected a list with one mapping \(or None\) per "
                                             r"model, got dict"),
    (dict(model_parameters=[[("weight", 1.0)]]), r"models\[0\]\.parameters: expected a mapping .*got list"),
    (dict(seed=1.5), r"seed: expected an integer in \[0, 2\*\*32\), got 1\.5"),
])
def test_merge_refuses_malformed_arguments_with_a_value_error(kw, match):
    # AttributeErrors ('list' object has no attribute 'items') and, for seed 1.5, a TypeError from
    # inside the compiled merge
    a, b = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    kw = {"parameters": {"weight": 1.0, "density": 0.5}, **kw}
    with pytest.raises(ValueError, match=match):
        tree_merge.merge("dare_ties", [b], base=a, **kw)


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("with_base", [False, True])
def test_multislerp_of_float16_models_is_finite(with_base):
    # in float16 the 1e-8 added to the tangent's norm rounds to 0: where the task vectors are
    # colinear (a 1-entry tensor, or b = 2 a) the result was sin(0) / 0 = NaN
    rng = np.random.default_rng(0)
    tr = lambda: {"s": rng.normal(), "one": rng.normal(size=(1,)), "v": rng.normal(size=(3,))}  # noqa: E731
    a = tr()
    b = {**tr(), "v": 2 * a["v"]}
    base = {k: np.zeros_like(v) for k, v in a.items()} if with_base else None
    as_ = lambda t, dt: None if t is None else {k: jnp.asarray(v, dt) for k, v in t.items()}  # noqa: E731
    kw = dict(parameters={"weight": 1.0})
    got = tree_merge.merge("multislerp", [as_(a, jnp.float16), as_(b, jnp.float16)], base=as_(base, jnp.float16), **kw)
    # the same merge of the float16 values in float32, rounded to float16
    a32, b32 = (as_(as_(t, jnp.float16), jnp.float32) for t in (a, b))
    want = tree_merge.merge("multislerp", [a32, b32], base=as_(base, jnp.float32), **kw)
    for k in a:
        assert got[k].dtype == jnp.float16
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k].astype(jnp.float16)))
        assert np.isfinite(np.asarray(got[k], np.float32)).all()


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_merges_a_0d_leaf(method):
    # a scalar parameter (CLIP's logit_scale) failed: 'axis 1 is out of bounds for array of dimension 1'
    base = {"logit_scale": jnp.float32(2.0), "w": jnp.zeros((2, 3))}
    fts = [{"logit_scale": jnp.float32(3.0 + i), "w": jnp.full((2, 3), 1.0 + i)} for i in range(2)]
    for seed in range(4):
        out = tree_merge.merge(method, fts, base=base, parameters={"weight": 1.0, "density": 0.5}, seed=seed)
        assert out["logit_scale"].shape == ()
        # each task vector (1 and 2) is kept whole or dropped; ties-style (della) or plain sums
        kept = float(out["logit_scale"]) - 2.0
        assert kept in ({0.0, 1.0, 2.0, 1.5} if method == "della" else {0.0, 1.0, 2.0, 3.0})


@pytest.mark.parametrize("method, n, kw", [
    ("arcee_fusion", 1, dict(base=True)), ("multislerp", 3, dict(parameters={"weight": 1.0})),
    ("multislerp", 3, dict(base=True, parameters={"weight": 1.0})), ("ties", 2, dict(base=True, parameters={"weight": 1.0, "density": 0.5})),
])
def test_an_empty_leaf_merges_to_an_empty_leaf(method, n, kw):
    # arcee_fusion: IndexError from its quantiles of no entry; multislerp of 3 models: 'weighted mean
    # direction is zero' for a tensor with no entries
    rng = np.random.default_rng(0)
    tr = lambda: {"e": jnp.zeros((0, 3)), "w": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}  # noqa: E731
    kw = {**kw, "base": tr()} if kw.get("base") else kw
    out = tree_merge.merge(method, [tr() for _ in range(n)], **kw)
    assert out["e"].shape == (0, 3) and out["e"].dtype == jnp.float32


def test_arcee_fusion_merges_a_0d_leaf_as_a_1_entry_one():
    # the softmax over the last axis of a 0-d leaf failed: 'axis -1 is out of bounds for array of dimension 0'
    base = {"s": jnp.float32(2.0), "v": jnp.array([2.0])}
    other = {"s": jnp.float32(3.5), "v": jnp.array([3.5])}
    out = tree_merge.merge("arcee_fusion", [other], base=base)
    assert out["s"].shape == ()
    np.testing.assert_array_equal(out["s"], out["v"][0])


@pytest.mark.parametrize("method, kw", [
    ("model_stock", dict(base=True, parameters={"filter_wise": True})),
    ("nuslerp", dict(parameters={"weight": 1.0, "nuslerp_flatten": False})),
    ("nuslerp", dict(parameters={"weight": 1.0, "nuslerp_flatten": False, "nuslerp_row_wise": True})),
    ("nuslerp", dict(base=True, parameters={"weight": 1.0, "nuslerp_flatten": False})),
])
def test_row_wise_options_merge_a_0d_leaf_as_a_1_entry_one(method, kw):
    # 'axis -1 is out of bounds for array of dimension 0' (IndexError with nuslerp_row_wise)
    vals = [2.0, 3.5, -1.0, 0.5]
    tr = lambda v: {"s": jnp.float32(v), "v": jnp.array([v], jnp.float32)}  # noqa: E731
    models = [tr(v) for v in vals[1:3]] if method == "nuslerp" else [tr(v) for v in vals[1:]]
    kw = {**kw, "base": tr(vals[0])} if kw.get("base") else kw
    out = tree_merge.merge(method, models, **kw)
    assert out["s"].shape == ()
    np.testing.assert_array_equal(out["s"], out["v"][0])


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "karcher"])
def test_merge_yaml_of_float64_checkpoints_computes_in_float64(tmp_path, method):
    # JAX's default 32-bit arrays computed the merge in float32 and wrote float64 of float32
    # precision: entries 1 +- 1e-9 averaged 9.4e-10 off, their differences lost (mergekit: float64)
    rng = np.random.default_rng(0)
    refs, xs = [], []
    for j in range(3):
        (tmp_path / f"m{j}").mkdir()
        xs.append(1 + 1e-9 * rng.normal(size=(8,)))
        save_file({"w": xs[-1]}, str(tmp_path / f"m{j}" / "model.safetensors"))
        refs.append(str(tmp_path / f"m{j}"))
    d = {"merge_method": method, "models": [{"model": r} for r in refs], "parameters": {"weight": 1 / 3}}
    if method == "task_arithmetic":
        d = {**d, "base_model": refs[0], "models": d["models"][1:], "parameters": {"weight": 0.3}}
    if method == "karcher":
        del d["parameters"]
    checkpoint.run_config(config.from_dict(d), tmp_path / "out", progress=False)
    from safetensors.numpy import load_file

    got = load_file(str(tmp_path / "out" / "model.safetensors"))["w"]
    assert got.dtype == np.float64
    if method == "task_arithmetic":
        want = xs[0] + 0.3 * ((xs[1] - xs[0]) + (xs[2] - xs[0]))
    else:  # linear normalises the weights; karcher of near-parallel vectors is their mean to 1e-18
        want = np.mean(xs, 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method, k, params", [
    ("model_stock", 3, {}), ("sce", 3, {"select_topk": 0.5}), ("nuslerp", 2, {"weight": 1.0}), ("nearswap", 1, {"t": 0.005}),
])
def test_bfloat16_merges_compute_in_float32_as_build_notes_say(method, k, params):
    # they ran in bfloat16: model_stock left 19% of the entries off the rounded float64 merge of the
    # same inputs, nuslerp 4% (some 10% off); BUILD_NOTES says the kernels compute in float32
    rng = np.random.default_rng(0)
    base = rng.normal(size=4096)
    ins = [base + 0.01 * rng.normal(size=4096) for _ in range(k)]
    bf = lambda x: {"w": jnp.asarray(x, jnp.bfloat16)}  # noqa: E731
    up = lambda t: {"w": t["w"].astype(jnp.float32)}  # noqa: E731
    got = tree_merge.merge(method, [bf(x) for x in ins], base=bf(base), parameters=params)["w"]
    want = tree_merge.merge(method, [up(bf(x)) for x in ins], base=up(bf(base)), parameters=params)["w"]
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want.astype(jnp.bfloat16), np.float32))


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_tsv_merge_refuses_a_non_finite_alpha(alpha):
    base = {"m": jnp.zeros((3, 3))}
    fts = [{"m": jnp.eye(3) * (i + 1)} for i in range(2)]
    with pytest.raises(ValueError, match=r"alpha: expected a finite scale of the merged task vector, got"):
        soups.tsv_merge(fts, base, alpha=alpha)


def test_filter_normalized_direction_of_bfloat16_params_matches_their_filter_norms():
    # the filter norms were computed in bfloat16: the direction's were up to 0.24% off the weights'
    p = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), mlp.init(jax.random.PRNGKey(0), (64, 128, 10)))
    d = landscape.filter_normalized_direction(jax.random.PRNGKey(1), p)
    for layer in p:
        want = np.linalg.norm(np.asarray(p[layer]["kernel"], np.float64), axis=0)
        got = np.linalg.norm(np.asarray(d[layer]["kernel"], np.float64), axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def _loss_with_positions(p, batch):
    x, y = batch
    return mlp.loss({k: v for k, v in p.items() if k != "pos"}, (x[p["pos"]], y[p["pos"]]))


def _mlp_with_positions(seed, pos=None):
    return {**mlp.init(jax.random.PRNGKey(seed), (5, 7, 3)), "pos": jnp.arange(8, dtype=jnp.int32) if pos is None else pos}


def test_paths_and_planes_keep_integer_buffers():
    # lerp and the plane made the int32 position ids float: 'Indexer must have integer or boolean type'
    batch = (jax.random.normal(jax.random.PRNGKey(3), (16, 5)), jnp.arange(16) % 3)
    a, b, c = (_mlp_with_positions(s) for s in range(3))
    r = landscape.linear_path(_loss_with_positions, a, b, batch, num=3)
    np.testing.assert_allclose(r.losses[[0, -1]], [_loss_with_positions(a, batch), _loss_with_positions(b, batch)],
                               rtol=1e-6)
    s = landscape.plane_through(_loss_with_positions, a, b, c, batch, n=2, margin=0.0)
    np.testing.assert_allclose(s.losses[0], [_loss_with_positions(a, batch), _loss_with_positions(b, batch)], rtol=1e-5)
    s = landscape.random_surface(_loss_with_positions, a, batch, key=jax.random.PRNGKey(0), n=3)
    np.testing.assert_allclose(s.losses[1, 1], _loss_with_positions(a, batch), rtol=1e-6)  # the centre is a
    d = landscape.filter_normalized_direction(jax.random.PRNGKey(0), a)
    assert not np.asarray(d["pos"]).any()
    other = _mlp_with_positions(1, pos=jnp.arange(8, dtype=jnp.int32)[::-1])
    with pytest.raises(ValueError, match=r"pos: expected the same values in every tree for a int32 leaf"):
        landscape.linear_path(_loss_with_positions, a, other, batch, num=3)
    with pytest.raises(ValueError, match=r"pos: expected the same values in every tree"):
        landscape.plane_through(_loss_with_positions, a, b, other, batch, n=2)


# ----------------------------------------------------------------------------- re-basin


def test_cnn_spec_aligns_convs_without_a_bias_before_batchnorm():
    # Conv(use_bias=False) + BatchNorm, the usual layout that norm_names is for, was refused:
    # "spec: leaf 'Conv_0.bias' is not in params"
    from jaxinterp.merge import rebasin

    k = jax.random.split(jax.random.PRNGKey(0), 4)
    p = {"Conv_0": {"kernel": jax.random.normal(k[0], (3, 3, 2, 4))},
         "BatchNorm_0": {"scale": jax.random.normal(k[1], (4,)), "bias": jax.random.normal(k[2], (4,))},
         "Dense_0": {"kernel": jax.random.normal(k[3], (4, 3)), "bias": jnp.zeros(3)}}
    spec = rebasin.cnn_permutation_spec(["Conv_0"], ["Dense_0"], norm_names={"Conv_0": "BatchNorm_0"}, no_bias=["Conv_0"])
    perm = np.array([2, 0, 3, 1])
    q = rebasin.apply_permutation(spec, {"P_0": perm}, p)
    np.testing.assert_array_equal(q["BatchNorm_0"]["bias"], p["BatchNorm_0"]["bias"][perm])
    np.testing.assert_array_equal(q["Dense_0"]["kernel"], p["Dense_0"]["kernel"][perm])
    r = rebasin.weight_matching(spec, p, q)
    assert r.perms["P_0"].tolist() == np.argsort(perm).tolist()
    mspec = rebasin.mlp_permutation_spec(["Dense_0", "Dense_1"], no_bias=["Dense_0"])
    assert "Dense_0.bias" not in mspec.axes and mspec.axes["Dense_1.bias"] == (None,)
    with pytest.raises(ValueError, match=r"no_bias: expected a list of layer names among \['Conv_0', 'Dense_0'\], "
                                         r"got \['Conv0'\]"):
        rebasin.cnn_permutation_spec(["Conv_0"], ["Dense_0"], no_bias=["Conv0"])


def test_fisher_merging_of_models_with_an_integer_buffer():
    # diagonal_fisher: 'grad requires real- or complex-valued inputs ... got int32' for the whole
    # tree; fisher_merge: the buffer's weighted mean came back truncated to int32
    x, y = jax.random.normal(jax.random.PRNGKey(2), (6, 5)), jnp.arange(6) % 3

    def apply(p, inputs):
        return mlp.apply({k: v for k, v in p.items() if k != "step"}, inputs)

    ms = [{**mlp.init(jax.random.PRNGKey(s), (5, 7, 3)), "step": jnp.int32(3)} for s in range(2)]
    fs = [fisher.diagonal_fisher(apply, m, x, labels=y) for m in ms]
    plain = fisher.diagonal_fisher(mlp.apply, {k: v for k, v in ms[0].items() if k != "step"}, x, labels=y)
    for a, b in zip(jax.tree_util.tree_leaves({k: v for k, v in fs[0].items() if k != "step"}),
                    jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(a, b)
    assert float(fs[0]["step"]) == 0.0
    out = fisher.fisher_merge(ms, fs)
    assert out["step"].dtype == jnp.int32 and int(out["step"]) == 3
    with pytest.raises(ValueError, match=r"step: expected the same values in every tree for a int32 leaf"):
        fisher.fisher_merge([ms[0], {**ms[1], "step": jnp.int32(4)}], fs)


def test_bezier_curves_keep_integer_buffers():
    # fit_bezier: jax.grad refused the whole bend ('grad requires real- or complex-valued inputs');
    # the curve made the position ids float ('Indexer must have integer or boolean type')
    from jaxinterp.merge import curves

    batch = (jax.random.normal(jax.random.PRNGKey(3), (16, 5)), jnp.arange(16) % 3)
    a, b = _mlp_with_positions(0), _mlp_with_positions(1)
    r = curves.fit_bezier(_loss_with_positions, a, b, lambda i: batch, steps=20)
    assert np.isfinite(r.train_losses).all() and r.bend["pos"].dtype == jnp.int32
    np.testing.assert_array_equal(r.bend["pos"], a["pos"])
    ends = curves.curve_losses(_loss_with_positions, a, r.bend, b, batch, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(ends, [_loss_with_positions(a, batch), _loss_with_positions(b, batch)], rtol=1e-6)
    straight = jax.tree_util.tree_map(lambda x, y: x if x.dtype == jnp.int32 else 0.5 * (x + y), a, b)
    mid = lambda bend: float(curves.curve_losses(_loss_with_positions, a, bend, b, batch, jnp.array([0.5]))[0])  # noqa: E731
    assert mid(r.bend) < mid(straight)
    # the same training as without the buffer
    plain = curves.fit_bezier(lambda p, bt: mlp.loss(p, (bt[0][:8], bt[1][:8])),
                              {k: v for k, v in a.items() if k != "pos"}, {k: v for k, v in b.items() if k != "pos"},
                              lambda i: batch, steps=20)
    np.testing.assert_allclose(r.train_losses, plain.train_losses, rtol=1e-5)
    with pytest.raises(ValueError, match=r"pos: expected the same values in every tree"):
        curves.fit_bezier(_loss_with_positions, a, _mlp_with_positions(1, jnp.arange(8, dtype=jnp.int32)[::-1]),
                          lambda i: batch, steps=2)
