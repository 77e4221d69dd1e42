"""The checkpoint merge's fast path (stream.py) against the per-tensor kernels (registry.py)."""

import numpy as np
import pytest

from jaxinterp.merge import registry, sparsify, stream

RNG = np.random.default_rng(1)
GTA = {"int8_mask": False, "rescale": False, "lambda": 0.8}
CASES = [  # method, shared, per_input (base last where there is one), base_index
    ("ties", dict(GTA, normalize=True), [dict(weight=1.0, density=0.5), dict(weight=0.5, density=0.3),
                                         dict(weight=1.0, density=1.0), {}], 3),
    ("ties", dict(GTA, normalize=True, rescale=True), [dict(weight=0.7, density=0.2), {}], 1),
    ("breadcrumbs", dict(GTA, normalize=False), [dict(weight=1.0, density=0.5, gamma=0.01),
                                                 dict(weight=0.5, density=0.3, gamma=0.05), {}], 2),
    ("breadcrumbs_ties", dict(GTA, normalize=False, rescale=True),
     [dict(weight=1.0, density=0.6, gamma=0.02), dict(weight=0.5, density=0.4, gamma=0.0), {}], 2),
    # density 1 (the default): sparsify leaves that task vector whole, no outliers dropped
    ("breadcrumbs", dict(GTA, normalize=False), [dict(weight=1.0, density=1.0, gamma=0.01),
                                                 dict(weight=0.5, density=0.5, gamma=0.01), {}], 2),
    ("breadcrumbs_ties", dict(GTA, normalize=False, rescale=True),
     [dict(weight=1.0, density=1.0, gamma=0.05), dict(weight=0.5, density=0.4, gamma=0.02), {}], 2),
    ("task_arithmetic", dict(GTA, normalize=False), [dict(weight=1.0, density=1.0), dict(weight=-0.5, density=1.0), {}], 2),
    ("linear", dict(normalize=True), [dict(weight=1.0), dict(weight=0.5), dict(weight=2.0)], None),
    ("slerp", dict(t=0.3), [{}, {}], 1),
]


def run_stream(method, xs, shared, per_input, base_index, chunk, seed=0, name="w"):
    pieces = stream.merge_flat(method, xs, base_index=base_index, shared=shared, per_input=per_input, seed=seed,
                               name=name, dtype="float32", out_dtype="float32", chunk=chunk)
    out = np.full(xs[0].size, np.nan, np.float32)
    for p in pieces:
        out[p.offset + p.lo:p.offset + p.hi] = np.asarray(p.compute())[p.lo:p.hi]
    return out


@pytest.mark.parametrize("n", [700, 5000, 3 * 1024])  # padded; chunks + an overlapping tail; exact chunks
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_stream_equals_the_per_tensor_kernel(case, n):
    method, shared, per_input, base_index = case
    # values rounded to 0.1: many equal magnitudes, so top-k must break ties by index
    xs = [np.round(RNG.normal(size=n), 1).astype(np.float32) for _ in per_input]
    want = np.asarray(registry.merge_tensor(method, xs, base_index=base_index, shared=shared, per_input=per_input))
    got = run_stream(method, xs, shared, per_input, base_index, chunk=1024)
    if method == "slerp" or shared.get("rescale"):  # slerp's norms and dot, the L1 norms of the rescale:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # numpy's float32 sums, not XLA's
    else:  # same arithmetic, same order
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [1, 37, 500, 999, 1000, 0])
def test_topk_threshold_keeps_the_same_entries_as_top_k_mask(k):
    mag = np.abs(np.round(RNG.normal(size=1000), 1)).astype(np.float32)
    mag[[3, 7]] = [np.inf, np.nan]
    clean = np.nan_to_num(mag, nan=0.0, posinf=3.0e38)
    thr, cut = stream.topk_threshold(clean.copy(), k, lambda: clean)
    got = (clean > thr) | ((clean == thr) & (np.arange(1000) <= cut))
    assert got.sum() == k
    if k:
        np.testing.assert_array_equal(got, np.asarray(sparsify.top_k_mask(mag, k)))


def test_one_compile_per_chunk_length():
    shared, per_input = CASES[0][1], CASES[0][2]
    before = stream._gta_chunk._cache_size()
    for n in (3000, 5000, 7000, 9000, 2048):  # every length > 1024 runs as 1024-entry chunks
        xs = [RNG.normal(size=n).astype(np.float32) for _ in per_input]
        run_stream("ties", xs, dict(shared, **{"lambda": 0.1 * n / 1000}), per_input, 3, chunk=1024)
    assert stream._gta_chunk._cache_size() - before <= 1


def test_dare_masks_are_seeded_by_name_and_keep_the_density_and_l1_norm():
    n = 200_000
    b = RNG.normal(size=n).astype(np.float32)
    x = (b + RNG.normal(size=n)).astype(np.float32)
    shared = dict(GTA, normalize=False, rescale=True, **{"lambda": 1.0})
    per_input = [dict(weight=1.0, density=0.3), {}]
    a = run_stream("dare_linear", [x, b], shared, per_input, 1, chunk=4096, seed=5, name="h.0.w")
    again = run_stream("dare_linear", [x, b], shared, per_input, 1, chunk=1 << 16, seed=5, name="h.0.w")
    other = run_stream("dare_linear", [x, b], shared, per_input, 1, chunk=4096, seed=5, name="h.1.w")
    np.testing.assert_array_equal(a, again)  # the mask does not depend on the chunk length
    assert not np.array_equal(a, other)
    kept = a != b
    assert abs(kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(np.abs(a - b).sum(), np.abs(x - b).sum(), rtol=5e-6)  # L1 rescale (measured 2.0e-7)


def test_supported_methods_and_dtypes():
    assert stream.supported("ties", "bfloat16", 10) and not stream.supported("della", "float32", 10)
    assert not stream.supported("linear", "float64", 10)
    assert set(stream.STREAM_METHODS) <= set(registry.METHODS)


@pytest.mark.parametrize("method", ["slerp", "linear", "dare_ties", "della"])
def test_yaml_merge_of_checkpoints_matches_the_tree_merge(method, tmp_path):
    from safetensors.numpy import load_file, save_file

    from jaxinterp.merge import checkpoint
    from jaxinterp.merge.tree_merge import merge

    shapes = {"h.0.w": (40, 30), "h.1.w": (40, 30), "wte": (3000,), "b": (5,)}
    trees = []
    for j in range(3):
        t = {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        save_file(t, str(tmp_path / f"m{j}.safetensors"))
        trees.append(t)
    ms = [str(tmp_path / f"m{j}.safetensors") for j in range(3)]
    params = {"slerp": "parameters: {t: [0.2, 0.9]}", "linear": "parameters: {weight: 1.0}"}.get(
        method, "parameters: {weight: 0.5, density: 0.5}")
    n_models = 1 if method == "slerp" else 2
    base = "" if method == "linear" else f"base_model: {ms[0]}\n"
    models = ms[:3] if method == "linear" else ms[1:1 + n_models]
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"merge_method: {method}\n{base}models:\n" + "".join(f"  - model: {m}\n" for m in models) + params)
    outs = []
    for d in ("o1", "o2"):
        checkpoint.run_yaml(cfg, tmp_path / d, progress=False, seed=3)
        outs.append(load_file(str(tmp_path / d / "model.safetensors")))
    for k in shapes:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])  # the same seed gives the same file
    if method in ("slerp", "linear"):  # deterministic: equal to the in-memory merge
        p = {"t": [0.2, 0.9]} if method == "slerp" else {"weight": 1.0}
        tr = [trees[j] for j in range(3)] if method == "linear" else [trees[1]]
        want = merge(method, tr, base=None if method == "linear" else trees[0], parameters=p)
        for k in shapes:
            np.testing.assert_allclose(outs[0][k], np.asarray(want[k]), rtol=1e-5, atol=1e-6)
