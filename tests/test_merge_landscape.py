"""Landscape (paths, barriers, planes, directions, curves), weight matching, Fisher/RegMean/soups/TSV."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.merge import curves, fisher, landscape, mlp, rebasin, soups

SIZES = (5, 7, 6, 3)
PA = mlp.init(jax.random.PRNGKey(0), SIZES)
PB = mlp.init(jax.random.PRNGKey(1), SIZES)
X = jax.random.normal(jax.random.PRNGKey(2), (20, 5))
Y = jnp.arange(20) % 3
BATCH = (X, Y)


def np_loss(p, x, y):
    h = np.asarray(x, np.float64)
    for i in range(3):
        h = h @ np.asarray(p[f"Dense_{i}"]["kernel"]) + np.asarray(p[f"Dense_{i}"]["bias"])
        if i < 2:
            h = np.maximum(h, 0)
    h = h - h.max(1, keepdims=True)
    logp = h - np.log(np.exp(h).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), np.asarray(y)].mean()


def np_lerp(a, b, al):
    return jax.tree_util.tree_map(lambda x, y: (1 - al) * np.asarray(x) + al * np.asarray(y), a, b)


@pytest.mark.parametrize("chunk", [None, 4])
def test_linear_path_matches_a_loop_and_does_not_recompile(chunk):
    r = landscape.linear_path(mlp.loss, PA, PB, BATCH, num=9, chunk=chunk)
    want = [np_loss(np_lerp(PA, PB, a), X, Y) for a in r.alphas]
    np.testing.assert_allclose(r.losses, want, rtol=2e-6)  # float32 against float64: measured 1.2e-7
    n = landscape._path_losses._cache_size()
    landscape.linear_path(mlp.loss, PB, PA, BATCH, num=9, chunk=chunk)
    assert landscape._path_losses._cache_size() == n


@pytest.mark.parametrize("chunk", [1, 2, 4])  # lax.map: point by point, and vmapped chunks with a remainder
def test_chunked_map_matches_one_full_vmap(chunk):
    alphas = jnp.linspace(0.0, 1.0, 5)
    full = landscape.path_losses(mlp.loss, PA, PB, BATCH, alphas, chunk=5)  # chunk >= A: one vmap
    np.testing.assert_allclose(landscape.path_losses(mlp.loss, PA, PB, BATCH, alphas, chunk=chunk), full, rtol=1e-6)


@pytest.mark.parametrize("losses,mean,chord", [
    ([1.0, 3.0, 2.0], 1.5, 1.5),      # max 3 at alpha .5; chord there 1.5
    ([1.0, 1.5, 3.0], 1.0, 0.0),      # monotone: the chord barrier is 0 (the maximum is an end)
    ([2.0, 2.5, 1.0, 0.0], 1.5, 1.0 + 0.0),
])
def test_barrier_definitions(losses, mean, chord):
    a = np.linspace(0, 1, len(losses))
    losses = np.asarray(losses)
    assert landscape.barrier_mean(a, losses) == pytest.approx(mean)
    want_chord = np.max(losses - ((1 - a) * losses[0] + a * losses[-1]))
    assert landscape.barrier_chord(a, losses) == pytest.approx(want_chord)


def test_num_alphas_error():
    with pytest.raises(ValueError, match=r"num: expected at least 2 alphas \(the two endpoints\), got 1$"):
        landscape.linear_path(mlp.loss, PA, PB, BATCH, num=1)


def test_plane_through_three_models_hits_them():
    pc = mlp.init(jax.random.PRNGKey(3), SIZES)
    s = landscape.plane_through(mlp.loss, PA, PB, pc, BATCH, n=5)
    assert s.losses.shape == (5, 5) and s.points.shape == (3, 2)
    # the plane's basis, rebuilt in numpy: origin PA, u along PB - PA, v the rest of PC - PA
    flat = lambda p: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(p)]).astype(np.float64)  # noqa: E731
    a, b, c = flat(PA), flat(PB), flat(pc)
    u = (b - a) / np.linalg.norm(b - a)
    v = (c - a) - np.dot(c - a, u) * u
    np.testing.assert_allclose(s.points, [[0, 0], [np.linalg.norm(b - a), 0], [np.dot(c - a, u), np.linalg.norm(v)]],
                               rtol=2e-6)  # measured 4.7e-8
    # a grid point equals the loss of the params it names
    i, j = 2, 3
    x = a + s.a[j] * u + s.b[i] * v / np.linalg.norm(v)
    leaves, tdef = jax.tree_util.tree_flatten(PA)
    parts, o = [], 0
    for leaf in leaves:
        parts.append(x[o:o + leaf.size].reshape(leaf.shape))
        o += leaf.size
    np.testing.assert_allclose(s.losses[i, j], np_loss(jax.tree_util.tree_unflatten(tdef, parts), X, Y), rtol=2e-6)  # 9.8e-8
    with pytest.raises(ValueError, match=r"p2: expected a model off the line through p0 and p1 \(they are collinear\)$"):
        landscape.plane_through(mlp.loss, PA, PB, np_lerp(PA, PB, 2.0), BATCH, n=3)


def test_filter_normalized_direction_norms():
    d = landscape.filter_normalized_direction(jax.random.PRNGKey(0), PA)
    k, dk = np.asarray(PA["Dense_1"]["kernel"]), np.asarray(d["Dense_1"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(dk, axis=0), np.linalg.norm(k, axis=0), rtol=2e-6)  # 7.2e-8
    assert not np.any(np.asarray(d["Dense_1"]["bias"]))  # 1-D leaves are left out (Li et al.)
    s = landscape.random_surface(mlp.loss, PA, BATCH, key=jax.random.PRNGKey(1), n=3)
    assert s.losses.shape == (3, 3)
    np.testing.assert_allclose(s.losses[1, 1], np_loss(PA, X, Y), rtol=2e-6)  # the centre is params (1.9e-8)


def test_bezier_curve_endpoints_and_training_lowers_loss():
    t = jnp.array([0.0, 1.0])
    ends = curves.curve_losses(mlp.loss, PA, PB, PB, BATCH, t)  # any bend: the ends are the models
    np.testing.assert_allclose(ends, [np_loss(PA, X, Y), np_loss(PB, X, Y)], rtol=2e-6)  # 1.9e-8
    r = curves.fit_bezier(mlp.loss, PA, PB, lambda i: BATCH, steps=60, learning_rate=1e-2)
    mid = lambda bend: float(curves.curve_losses(mlp.loss, PA, bend, PB, BATCH, jnp.array([0.5]))[0])  # noqa: E731
    straight = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b), PA, PB)
    assert mid(r.bend) < mid(straight)


def test_fit_bezier_compiles_once_across_calls_and_learning_rates():
    """Each call built a new jitted step around a new optax.adam: every call compiled again (a sweep
    over pairs of endpoints or learning rates paid a compile per curve). The default Adam now keeps
    its learning rate in the state: the same function as optax.adam(lr), one compiled step."""
    loss = lambda p, b: mlp.loss(p, b)  # noqa: E731  (a loss function no other test uses)
    r1 = curves.fit_bezier(loss, PA, PB, lambda i: BATCH, steps=3, learning_rate=1e-2)
    size = curves._step._cache_size()
    r2 = curves.fit_bezier(loss, PB, PA, lambda i: BATCH, steps=3, learning_rate=3e-2)
    assert curves._step._cache_size() == size
    # float64: in float32, Adam's g / (|g| + eps) turns the rounding noise of near-zero gradients
    # (which two programs round differently) into update differences of ~1e-4 relative
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), t)  # noqa: E731
        p0, p1, batch = f64(PB), f64(PA), (f64(BATCH[0]), BATCH[1])
        ours = curves.fit_bezier(loss, p0, p1, lambda i: batch, steps=5, learning_rate=3e-2)
        ref = curves.fit_bezier(loss, p0, p1, lambda i: batch, steps=5, optimizer=optax.adam(3e-2))
        for a, b in zip(jax.tree_util.tree_leaves(ours.bend), jax.tree_util.tree_leaves(ref.bend)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.train_losses, ref.train_losses, rtol=1e-12)
    assert not np.allclose(r1.train_losses, r2.train_losses)


def test_weight_matching_recovers_a_permutation_of_the_same_mlp():
    spec = rebasin.mlp_permutation_spec(["Dense_0", "Dense_1", "Dense_2"])
    rng = np.random.default_rng(0)
    perms = {"P_0": rng.permutation(7), "P_1": rng.permutation(6)}
    pb = rebasin.apply_permutation(spec, perms, PA)
    np.testing.assert_allclose(mlp.apply(pb, X), mlp.apply(PA, X), rtol=1e-5, atol=1e-6)  # same function
    r = rebasin.weight_matching(spec, PA, pb)
    for a, b in zip(jax.tree_util.tree_leaves(PA), jax.tree_util.tree_leaves(r.params)):
        np.testing.assert_array_equal(a, b)


def test_cnn_spec_and_spec_errors():
    k = jax.random.PRNGKey(0)
    p = {"Conv_0": {"kernel": jax.random.normal(k, (3, 3, 2, 4)), "bias": jnp.zeros(4)},
         "Conv_1": {"kernel": jax.random.normal(k, (3, 3, 4, 5)), "bias": jnp.zeros(5)},
         "Dense_0": {"kernel": jax.random.normal(k, (5, 3)), "bias": jnp.zeros(3)}}
    spec = rebasin.cnn_permutation_spec(["Conv_0", "Conv_1"], ["Dense_0"])
    perms = {"P_0": np.array([2, 0, 3, 1]), "P_1": np.array([4, 3, 2, 1, 0])}
    q = rebasin.apply_permutation(spec, perms, p)
    assert rebasin.weight_matching(spec, p, q).perms["P_1"].tolist() == np.argsort(perms["P_1"]).tolist()
    with pytest.raises(ValueError, match="spec: permutation 'P' has size 4 elsewhere but axis 0 of 'Conv_1.bias' has 5$"):
        rebasin.check_spec(rebasin.PermutationSpec({"Conv_0.bias": ("P",), "Conv_1.bias": ("P",)}, {}), p)
    with pytest.raises(ValueError, match=r"spec: leaf 'Nope.kernel' is not in params \(params have e.g. \['Conv_0.bias', 'Conv_0.kernel', "
                                         r"'Conv_1.bias', 'Conv_1.kernel'\]\)$"):
        rebasin.check_spec(rebasin.PermutationSpec({"Nope.kernel": (None,)}, {}), p)


def test_gpt2_spec_preserves_the_function_and_is_recovered():
    from jaxinterp.transformer import gpt2

    cfg = gpt2.GPT2Config(vocab_size=31, n_positions=8, n_embd=8, n_layer=2, n_head=2)
    pa = gpt2.init(jax.random.PRNGKey(0), cfg)
    spec = rebasin.gpt2_permutation_spec(cfg.n_layer, cfg.n_head, cfg.n_embd)
    sizes = rebasin.check_spec(spec, pa)
    assert sizes == {"P_head_0": 2, "P_head_1": 2, "P_mlp_0": 32, "P_mlp_1": 32}
    rng = np.random.default_rng(0)
    perms = {p: rng.permutation(n) for p, n in sizes.items()}
    pb = rebasin.apply_permutation(spec, perms, pa)
    tok = jnp.arange(8)[None] % 31
    np.testing.assert_allclose(gpt2.forward(pb, tok, config=cfg), gpt2.forward(pa, tok, config=cfg), atol=1e-5)
    r = rebasin.weight_matching(spec, pa, pb)
    for a, b in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(r.params)):
        np.testing.assert_array_equal(a, b)


def test_fisher_merge_and_empirical_fisher():
    a, b = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 6.0])}
    fa, fb = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([3.0, 0.0])}
    out = fisher.fisher_merge([a, b], [fa, fb], eps=0.0 + 1e-12)
    np.testing.assert_allclose(out["w"], [(1 * 1 + 3 * 3) / 4, 4.0], rtol=1e-5)  # zero Fisher: plain mean
    f = fisher.diagonal_fisher(mlp.apply, PA, X[:4], labels=Y[:4])
    g = [jax.grad(lambda p, i=i: -mlp.loss(p, (X[i:i + 1], Y[i:i + 1])))(PA) for i in range(4)]
    want = jax.tree_util.tree_map(lambda *gs: np.mean(np.square(np.stack(gs)), 0), *g)
    for x, y in zip(jax.tree_util.tree_leaves(f), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6 * float(np.abs(y).max()))  # measured 9.0e-8 of it
    with pytest.raises(ValueError, match=r"labels/key: expected labels \[N\] \(empirical Fisher\) or a key to sample them, got neither$"):
        fisher.diagonal_fisher(mlp.apply, PA, X)


def test_diagonal_fisher_of_a_second_model_does_not_recompile():
    """One Fisher per model to merge: models of one shape on one data set share one program."""
    compiles = []

    def listen(event, *_, **__):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    fisher.diagonal_fisher(mlp.apply, PA, X[:6], labels=Y[:6])  # compiles (and warms the eager ops)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        f = fisher.diagonal_fisher(mlp.apply, PB, X[:6], labels=Y[:6])
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    g = [jax.grad(lambda p, i=i: -mlp.loss(p, (X[i:i + 1], Y[i:i + 1])))(PB) for i in range(6)]
    want = jax.tree_util.tree_map(lambda *gs: np.mean(np.square(np.stack(gs)), 0), *g)
    for x, y in zip(jax.tree_util.tree_leaves(f), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6 * float(np.abs(y).max()))  # measured 1.2e-7 of it

def test_regmean_matches_closed_form():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(2)]
    xs = [rng.normal(size=(10, 3)).astype(np.float32) for _ in range(2)]
    gs = [x.T @ x for x in xs]
    out = fisher.regmean([{"k": w, "b": np.ones(2) * i} for i, w in enumerate(ws)], [{"k": g} for g in gs], alpha=0.5)
    gt = [0.5 * g + 0.5 * np.diag(np.diag(g)) for g in gs]
    want = np.linalg.solve(sum(gt), sum(g @ w for g, w in zip(gt, ws)))
    np.testing.assert_allclose(out["k"], want, rtol=2e-6)  # measured 7.0e-8
    np.testing.assert_allclose(out["b"], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"grams\[0\]\['k'\]: expected \[3, 3\] for a kernel \(3, 2\), got \(2, 2\)$"):
        fisher.regmean([{"k": ws[0]}], [{"k": np.eye(2)}])


def test_soups_and_tsv():
    models = [{"w": jnp.array([float(i), -float(i)])} for i in range(3)]
    np.testing.assert_allclose(soups.uniform_soup(models)["w"], [1.0, -1.0])
    # score: -|w0 - 0.4|: model 0 is best alone; the soup {0, 1} (w0 0.5) improves; adding 2 does not
    g = soups.greedy_soup(models, lambda p: -abs(float(p["w"][0]) - 0.4))
    assert g.selected == [0, 1] and float(g.params["w"][0]) == 0.5
    rng = np.random.default_rng(0)
    base = {"m": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)}
    fts = [{"m": rng.normal(size=(4, 4)).astype(np.float32), "b": np.full(4, float(i), np.float32)} for i in range(2)]
    out = soups.tsv_merge(fts, base)
    # numpy reference: k = 4 / 2 = 2 singular triplets per task, whitened U and V
    us, ss, vs = [], [], []
    for f in fts:
        u, s, vt = np.linalg.svd(f["m"].astype(np.float64))
        us.append(u[:, :2]), ss.append(s[:2]), vs.append(vt[:2].T)
    U, S, V = np.concatenate(us, 1), np.concatenate(ss), np.concatenate(vs, 1)
    wh = lambda m: (lambda p, _, q: p @ q)(*np.linalg.svd(m, full_matrices=False))  # noqa: E731
    np.testing.assert_allclose(out["m"], (wh(U) * S) @ wh(V).T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["b"], 0.5)
    with pytest.raises(ValueError, match=r"sv_reduction_scale: expected a value in \(0, 2\], got 0.0$"):
        soups.tsv_merge(fts, base, sv_reduction_scale=0.0)
