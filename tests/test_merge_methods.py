"""Every mergekit method against an independent numpy transcription of mergekit 0.1.5's math.

Tiny tensors with distinct magnitudes (so top-k has no ties); random methods (DARE, DELLA) are
checked given the same Bernoulli draws, which the tests regenerate from the documented key rule.
"""

import jax
import numpy as np
import pytest

from jaxinterp.merge import sparsify
from jaxinterp.merge.tree_merge import merge, tensor_key

RNG = np.random.default_rng(0)
SHAPE = (4, 6)
BASE = {"w": RNG.normal(size=SHAPE).astype(np.float32)}
MODELS = [{"w": (BASE["w"] + RNG.normal(size=SHAPE) * s).astype(np.float32)} for s in (0.5, 0.7, 0.9)]
B, XS = BASE["w"].astype(np.float64), [m["w"].astype(np.float64) for m in MODELS]


# ---------------------------------------------------------------- numpy references


def np_magnitude(t, density):
    if density >= 1:
        return t
    k = max(1, int(density * t.size))
    m = np.zeros(t.size)
    m[np.argsort(-np.abs(t).ravel(), kind="stable")[:k]] = 1
    return t * m.reshape(t.shape)


def np_outliers(t, density, gamma):
    if density >= 1:
        return t
    n = t.size
    target, top = int(density * n), int(gamma * n)
    bot = max(0, n - target - top)
    m = np.zeros(n)
    m[np.argsort(np.abs(t).ravel(), kind="stable")[bot:bot + target]] = 1
    return t * m.reshape(t.shape)


def np_rescale(t, masked):
    before, after = np.abs(t).sum(), np.abs(masked).sum()
    return masked if before < 1e-7 or after < 1e-7 else masked * before / after


def np_gta(taus, weights, consensus, normalize, lam=1.0):
    d = np.stack(taus) * np.asarray(weights)[:, None, None]
    w = np.asarray(weights, float)[:, None, None] * np.ones_like(d)
    if consensus:
        s = np.where(d.sum(0) >= 0, 1.0, -1.0)
        m = np.sign(d) == s
        mixed, div = (d * m).sum(0), (w * m).sum(0)
        div[div == 0] = 1
    else:
        mixed, div = d.sum(0), w.sum(0)
        div[np.abs(div) < 1e-8] = 1
    if normalize:
        mixed = mixed / div
    return B + lam * mixed


def bern_masks(name, shape_or_probs, n, seed=0, probs=False):
    key = tensor_key(seed, name)
    out = []
    for i in range(n):
        k = jax.random.fold_in(key, i)
        if probs:
            out.append(np.asarray(jax.random.bernoulli(k, shape_or_probs)).astype(float))
        else:
            out.append(np.asarray(jax.random.bernoulli(k, 0.5, shape_or_probs)).astype(float))
    return out


def np_della_probs(t, density, eps):
    t2 = t[None] if t.ndim < 2 else t
    ranks = np.argsort(np.argsort(np.abs(t2), axis=1, kind="stable"), axis=1, kind="stable") + 1.0
    lo, hi = ranks.min(1, keepdims=True), ranks.max(1, keepdims=True)
    return (density - eps) + (ranks - lo) / (hi - lo) * 2 * eps


def np_slerp(t, v0, v1):
    a, b = v0.ravel(), v1.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = np.clip(np.dot(a / na, b / nb), -1, 1)
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    th = np.arccos(dot)
    return (np.sin((1 - t) * th) * v0 + np.sin(t * th) * v1) / np.sin(th)


def np_multislerp(xs, w, base=None):
    x = np.stack(xs) - (0 if base is None else base)
    flat = x.reshape(len(xs), -1)
    w = np.asarray(w, float) / np.sum(w)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    u = flat / (norms + 1e-8)
    mean = (u * w[:, None]).sum(0)
    mean /= np.linalg.norm(mean)
    tang = ((u - (u @ mean)[:, None] * mean) * w[:, None]).sum(0)
    tn = np.linalg.norm(tang) + 1e-8
    res = (mean * np.cos(tn) + tang * np.sin(tn) / tn) * (norms[:, 0] * w).sum()
    return res.reshape(x.shape[1:]) + (0 if base is None else base)


def np_karcher(xs, max_iter=10, tol=1e-5):
    a = [1 / len(xs)] * len(xs)
    norms = [np.linalg.norm(x) for x in xs]
    units = [x / n for x, n in zip(xs, norms)]
    mean = sum(ai * u for ai, u in zip(a, units))
    mean /= np.linalg.norm(mean)
    for _ in range(max_iter):
        tang = np.zeros_like(mean)
        for ai, u in zip(a, units):
            dot = np.clip(np.sum(mean * u), -1, 1)
            th = np.arccos(dot)
            if th < tol:
                continue
            tang += ai * th / np.sin(th) * (u - dot * mean)
        tn = np.linalg.norm(tang)
        if tn < tol:
            break
        mean = np.cos(tn) * mean + np.sin(tn) * tang / tn
        mean /= np.linalg.norm(mean)
    return sum(ai * n for ai, n in zip(a, norms)) * mean


def np_model_stock(base, xs):
    offs = [x.ravel() - base.ravel() for x in xs]
    cos = np.mean([np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
                   for i, a in enumerate(offs) for b in offs[i + 1:]])
    n = len(xs)
    t = n * cos / (1 + (n - 1) * cos)
    return t * sum(xs) / n + (1 - t) * base


def np_sce(base, xs, topk):
    taus = np.stack([x - base for x in xs])
    if topk < 1:
        var = taus.var(0)
        k = int(np.count_nonzero(var) * topk)
        m = np.zeros(var.size)
        m[np.argsort(-var.ravel(), kind="stable")[:k]] = 1
        taus = taus * m.reshape(var.shape)
    s = np.where(taus.sum(0) >= 0, 1.0, -1.0)
    mask = np.sign(taus) == s
    w = (taus**2).reshape(len(xs), -1).mean(1)
    w = w / w.sum()
    ew = w[:, None, None] * mask
    return base + (taus * ew).sum(0) / np.maximum(ew.sum(0), 1e-6)


def np_fusion(base, x):
    def sm(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = sm(x) + 1e-8, sm(base) + 1e-8
    imp = np.abs(x - base) * np.sum(p * np.log(p / q), -1, keepdims=True)
    s = np.sort(imp.ravel())
    q1, med, q3 = (s[int(f * (s.size - 1))] for f in (0.25, 0.5, 0.75))
    return base + (x - base) * (imp >= med + 1.5 * (q3 - q1))


def np_nuslerp_rows(t, v0, v1):
    out = np.empty_like(v0)
    for r in range(v0.shape[0]):
        out[r] = np_slerp(t, v0[r], v1[r]) if abs(np.dot(v0[r], v1[r]) / np.linalg.norm(v0[r]) / np.linalg.norm(v1[r])) < 1 - 1e-9 else (1 - t) * v0[r] + t * v1[r]
    return out


T = [x - B for x in XS]
W3 = [0.5, 1.0, -0.7]
CASES = [
    ("task_arithmetic", dict(base=BASE, parameters={"weight": 0.5}), np_gta(T, [0.5] * 3, False, False)),
    ("task_arithmetic", dict(base=BASE, parameters={"weight": 1.0, "lambda": 0.6}), np_gta(T, [1.0] * 3, False, False, 0.6)),
    ("task_arithmetic", dict(base=BASE, parameters={"normalize": True},
                             model_parameters=[{"weight": w} for w in W3]), np_gta(T, W3, False, True)),
    ("ties", dict(base=BASE, parameters={"density": 0.4}, model_parameters=[{"weight": w} for w in W3]),
     np_gta([np_magnitude(t, 0.4) for t in T], W3, True, True)),
    ("ties", dict(base=BASE, parameters={"density": 0.3, "weight": 1.0, "normalize": False}),
     np_gta([np_magnitude(t, 0.3) for t in T], [1.0] * 3, True, False)),
    ("breadcrumbs", dict(base=BASE, parameters={"density": 0.5, "gamma": 0.1, "weight": 1.0}),
     np_gta([np_outliers(t, 0.5, 0.1) for t in T], [1.0] * 3, False, False)),
    ("breadcrumbs_ties", dict(base=BASE, parameters={"density": 0.5, "weight": 0.8}),
     np_gta([np_outliers(t, 0.5, 0.01) for t in T], [0.8] * 3, True, False)),
    ("linear", dict(model_parameters=[{"weight": w} for w in (1.0, 2.0, 3.0)]), (XS[0] + 2 * XS[1] + 3 * XS[2]) / 6),
    ("linear", dict(parameters={"weight": 1.0, "normalize": False}), sum(XS)),
    ("slerp", dict(base=BASE, parameters={"t": 0.3}), np_slerp(0.3, B, XS[0])),
    ("slerp", dict(base={"w": XS[0] * 2}, parameters={"t": 0.3}), np_slerp(0.3, 2 * XS[0], XS[0])),  # colinear
    ("nuslerp", dict(model_parameters=[{"weight": 1.0}, {"weight": 3.0}]), np_slerp(0.75, XS[0], XS[1])),
    ("nuslerp", dict(base=BASE, parameters={"weight": 1.0}), B + np_slerp(0.5, T[0], T[1])),
    ("nuslerp", dict(parameters={"weight": 1.0, "nuslerp_flatten": False}), np_nuslerp_rows(0.5, XS[0], XS[1])),
    ("nuslerp", dict(parameters={"weight": 1.0, "nuslerp_flatten": False, "nuslerp_row_wise": True}),
     np_nuslerp_rows(0.5, XS[0].T, XS[1].T).T),
    ("multislerp", dict(model_parameters=[{"weight": w} for w in (1.0, 2.0, 3.0)]), np_multislerp(XS, [1, 2, 3])),
    ("multislerp", dict(base=BASE, parameters={"weight": 1.0}), np_multislerp(XS, [1, 1, 1], B)),
    ("karcher", {}, np_karcher(XS)),
    ("model_stock", dict(base=BASE), np_model_stock(B, XS)),
    ("sce", dict(base=BASE), np_sce(B, XS, 1.0)),
    ("sce", dict(base=BASE, parameters={"select_topk": 0.5}), np_sce(B, XS, 0.5)),
    ("nearswap", dict(base=BASE, parameters={"t": 0.3}),
     (lambda w: w * XS[0] + (1 - w) * B)(np.clip(0.3 / np.maximum(np.abs(B - XS[0]), 1e-6), 0, 1))),
    ("arcee_fusion", dict(base=BASE), np_fusion(B, XS[0])),
    ("passthrough", dict(model_parameters=[{"scale": 2.5}]), 2.5 * XS[0]),
]


@pytest.mark.parametrize("method,kw,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_method_matches_numpy_reference(method, kw, expected):
    n = {"slerp": 1, "nearswap": 1, "arcee_fusion": 1, "passthrough": 1, "nuslerp": 2}.get(method, 3)
    out = merge(method, MODELS[:n], **kw)
    np.testing.assert_allclose(np.asarray(out["w"]), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("method,consensus,normalize", [("dare_ties", True, False), ("dare_linear", False, False)])
def test_dare_matches_reference_given_the_masks(method, consensus, normalize):
    out = merge(method, MODELS, base=BASE, parameters={"density": 0.5, "weight": 0.7}, seed=3)
    masks = bern_masks("w", SHAPE, 3, seed=3)
    taus = [np_rescale(t, t * m) for t, m in zip(T, masks)]  # rescale is on by default
    np.testing.assert_allclose(np.asarray(out["w"]), np_gta(taus, [0.7] * 3, consensus, normalize), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("method,consensus,normalize", [("della", True, True), ("della_linear", False, False)])
def test_della_matches_reference_given_the_masks(method, consensus, normalize):
    out = merge(method, MODELS, base=BASE, parameters={"density": 0.5, "epsilon": 0.2, "weight": 1.0, "lambda": 0.9})
    probs = np_della_probs(T[0], 0.5, 0.2)
    np.testing.assert_allclose(np.asarray(sparsify.della_probabilities(T[0], 0.5, 0.2)), probs, rtol=1e-6)
    masks = [np.asarray(jax.random.bernoulli(jax.random.fold_in(tensor_key(0, "w"), i),
                                             np_della_probs(t, 0.5, 0.2).astype(np.float32))).astype(float)
             for i, t in enumerate(T)]
    taus = [np_rescale(t, t * m) for t, m in zip(T, masks)]
    np.testing.assert_allclose(np.asarray(out["w"]), np_gta(taus, [1.0] * 3, consensus, normalize, 0.9),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n,k", [(10, 1), (10, 9), (7, 3), (1000, 500)])
def test_top_k_mask_keeps_exactly_k_with_ties(n, k):
    x = np.round(RNG.normal(size=n), 1).astype(np.float32)  # many ties
    m = np.asarray(sparsify.top_k_mask(np.abs(x), k))
    assert m.sum() == k
    assert np.abs(x)[m].min() >= np.abs(x)[~m].max() if k < n else True


def test_per_layer_gradient_and_filter_and_per_model_precedence():
    # three layers: t = 0, 0.5, 1, so the gradient [0, 1] gives weights 0, 0.5, 1; model 0's own
    # filtered setting wins over the global one on `mlp` tensors only
    mk = lambda v: {f"h_{i}": {"mlp": np.full((2,), v, np.float32), "attn": np.full((2,), v, np.float32)} for i in range(3)}  # noqa: E731
    base, a, b = mk(0.0), mk(1.0), mk(2.0)
    out = merge("task_arithmetic", [a, b], base=base,
                parameters={"weight": [0.0, 1.0]},
                model_parameters=[{"weight": [{"filter": "mlp", "value": 10.0}]}, None])
    for i, t in enumerate((0.0, 0.5, 1.0)):
        np.testing.assert_allclose(out[f"h_{i}"]["attn"], 1 * t + 2 * t)  # both from the gradient
        np.testing.assert_allclose(out[f"h_{i}"]["mlp"], 1 * 10.0 + 2 * t)  # model 0's filter wins


def test_per_layer_values_reuse_one_compiled_kernel():
    from jaxinterp.merge import registry

    x = [np.ones((3, 2), np.float32), np.full((3, 2), 2.0, np.float32)]
    outs = [registry.merge_tensor("slerp", x, base_index=0, shared={"t": t}, per_input=[{}, {}])
            for t in (0.1, 0.7)]
    np.testing.assert_allclose(outs[1], 1.7)  # colinear: lerp
    fn = registry._jitted("slerp", 0, (("t", None),), ((), ()), (("s", "t"),))
    assert fn._cache_size() == 1


@pytest.mark.parametrize("method, settings", [
    ("linear", [{"weight": w} for w in (0.1, 0.35, 0.9)]),
    ("slerp", [{"t": t} for t in (0.2, 0.5, 0.8)]),
    ("ties", [{"weight": w, "density": 0.5, "lambda": lam} for w, lam in ((0.3, 1.0), (0.6, 0.5), (1.0, 2.0))]),
])
def test_a_sweep_over_weights_t_or_lambda_compiles_the_tree_once(method, settings):
    """Weights, t and lambda go into the whole-tree merge traced: a sweep over them (the common
    use of `merge` in research code) compiles once, and each value still gives its own result."""
    from jaxinterp.merge import tree_merge

    rng = np.random.default_rng(3)
    mk = lambda: {f"h_{i}": {"w": rng.normal(size=(4, 3)).astype(np.float32)} for i in range(2)}  # noqa: E731
    base, a = mk(), mk()
    has_base = method != "linear"
    before = tree_merge._tree_fn.cache_info().misses
    outs = [merge(method, [a] if has_base else [a, base], base=base if has_base else None, parameters=p)
            for p in settings]
    assert tree_merge._tree_fn.cache_info().misses - before <= 1
    from jaxinterp.merge import registry

    for p, out in zip(settings, outs):  # each equals the same merge leaf by leaf, each compiled alone
        models = [a, base]  # the base last, as merge() orders it
        plan = tree_merge.plan(method, ["h_0.w", "h_1.w"], n_models=1 if has_base else 2, has_base=has_base,
                               parameters=p)
        for name in ("h_0", "h_1"):
            shared, per_input = plan.resolved[f"{name}.w"]
            want = registry.merge_tensor(method, [m[name]["w"] for m in models], base_index=plan.base_index,
                                         shared=shared, per_input=per_input)
            np.testing.assert_allclose(out[name]["w"], want, rtol=1e-6, atol=1e-6)
