"""Review 17 of model merging (RegMean's Gram matrices, the side files of `merge yaml`, re-basin spec
errors, the merge benchmark's configs): each test failed on the code before its fix."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.merge import fisher

# ----------------------------------------------------------------------------- RegMean Gram matrices

M2 = [{"d": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.zeros(2)}},
      {"d": {"kernel": jnp.arange(6.0).reshape(3, 2) + 1, "bias": jnp.ones(2)}}]
X3 = jax.random.normal(jax.random.PRNGKey(0), (3, 3))  # inputs X [N = 3, d_in = 3]: the shape of X^T X


@pytest.mark.parametrize("bad,match", [
    # X itself (N == d_in): solved against as if it were X^T X, a wrong merge, silently
    (X3, r"^grams\[0\]\['d\.kernel'\]: expected a symmetric Gram matrix X\^T X \[d_in, d_in\] \(to 0\.00035 of its "
         r"largest entry, [0-9.]+\), got G\[\d, \d\] = \S+ and G\[\d, \d\] = \S+; pass X\^T X \(fisher\.gram\(X\)\), "
         r"not the inputs X$"),
    (jnp.array([[1.0, 0.5, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 1.0]]),
     r"^grams\[0\]\['d\.kernel'\]: expected a symmetric .*got G\[0, 1\] = 0\.5 and G\[1, 0\] = 0\.4; "),
    (-jnp.eye(3), r"^grams\[0\]\['d\.kernel'\]: expected a Gram matrix X\^T X, whose diagonal \(sums of squares\) "
                  r"is >= 0, got G\[0, 0\] = -1$"),
    (jnp.eye(3).at[1, 2].set(jnp.nan), r"^grams\[0\]\['d\.kernel'\]: expected a finite Gram matrix X\^T X, got nan "
                                       r"at \(1, 2\)$"),
    # X [N = 5, d_in = 3]: refused by shape (as before; kept here beside its square case)
    (jnp.ones((5, 3)), r"^grams\[0\]\['d\.kernel'\]: expected \[3, 3\] for a kernel \(3, 2\), got \(5, 3\)$"),
])
def test_regmean_refuses_a_matrix_that_is_no_gram_matrix(bad, match):
    with pytest.raises(ValueError, match=match):
        fisher.regmean(M2, [{"d.kernel": bad}, {"d.kernel": jnp.eye(3)}])
    with pytest.raises(ValueError, match=match.replace(r"grams\[0\]", r"grams\[1\]")):
        fisher.regmean(M2, [{"d.kernel": jnp.eye(3)}, {"d.kernel": bad}])


def test_regmean_takes_grams_of_float32_sums_accumulated_in_any_order():
    """X^T X summed batch by batch is symmetric only up to float32 rounding: still a Gram matrix."""
    x = jax.random.normal(jax.random.PRNGKey(1), (4000, 3)) * 10
    g = sum(fisher.gram(x[i:i + 7]) for i in range(0, 4000, 7))
    g = g.at[0, 1].multiply(1 + 2e-6)  # float32 rounding of one order of summation against the other
    out = fisher.regmean(M2, [{"d.kernel": g}, {"d.kernel": g}])
    assert np.isfinite(np.asarray(out["d"]["kernel"])).all()


def test_regmean_names_the_model_that_lacks_a_gram_matrix():
    g = {"d.kernel": jnp.eye(3)}
    # grams[0] lacks the layer: the message blamed grams[1], which had it
    with pytest.raises(ValueError, match=r"^grams\[0\]: expected Gram matrices for the same leaves in every model, "
                                         r"got none for \['d\.kernel'\] \(grams\[1\] has 'd\.kernel'\)$"):
        fisher.regmean(M2 + [M2[0]], [{}, g, g])
    with pytest.raises(ValueError, match=r"^grams\[2\]: .* got none for \['d\.kernel'\] "
                                         r"\(grams\[0\] has 'd\.kernel'\)$"):
        fisher.regmean(M2 + [M2[0]], [g, g, {}])


def test_regmean_solves_in_float32_for_bfloat16_grams():
    """bfloat16 Gram matrices (exactly representable in float32): alpha G + (1 - alpha) diag(G) and the
    sum over models were rounded to bfloat16 before the solve."""
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 40, 3))
    g16 = [fisher.gram(xi).astype(jnp.bfloat16) for xi in x]
    g32 = [g.astype(jnp.float32) for g in g16]
    want = fisher.regmean(M2, [{"d.kernel": g} for g in g32], alpha=0.7)
    got = fisher.regmean(M2, [{"d.kernel": g} for g in g16], alpha=0.7)
    np.testing.assert_allclose(np.asarray(got["d"]["kernel"]), np.asarray(want["d"]["kernel"]), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- side files of `merge yaml`

import json  # noqa: E402

from safetensors.numpy import save_file  # noqa: E402

from jaxinterp.merge import checkpoint, config  # noqa: E402


@pytest.fixture(scope="module")
def side_ckpts(tmp_path_factory):
    """Three 2-layer GPT-2-shaped checkpoints, each with its own config.json and tokenizer.json."""
    root = tmp_path_factory.mktemp("review17_side")
    rng = np.random.default_rng(0)
    out = []
    for j in range(3):
        d = root / f"m{j}"
        d.mkdir()
        t = {"transformer.wte.weight": rng.normal(size=(6, 4))}
        t.update({f"transformer.h.{i}.mlp.c_fc.weight": rng.normal(size=(4, 8)) for i in range(2)})
        save_file({k: v.astype(np.float32) for k, v in t.items()}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "id": j}))
        (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"m{j}": 0}}}))
        out.append(str(d))
    return out


def _both_forms(method, base, models, **extra):
    """The same merge as a `models:` config and as a one-slice `slices:` config (all layers)."""
    top = {"merge_method": method, **({"base_model": base} if base else {}), **extra}
    as_models = config.from_dict({**top, "models": [{"model": m} for m in models]})
    as_slices = config.from_dict({**top, "slices": [{"sources": [{"model": m, "layer_range": [0, 2]}
                                                                 for m in models]}]})
    return as_models, as_slices


@pytest.mark.parametrize("method, base, models, want", [
    # linear has no base: a base_model listed among the models is one of them, yet still the donor of
    # the config and tokenizer (mergekit's base_model or the first model); models: took m0, slices: m1
    ("linear", 1, [0, 1], 1),
    ("linear", 1, [1, 0], 1),
    ("linear", None, [2, 0], 2),
    ("ties", 0, [1, 2, 0], 0),
    ("slerp", 2, [0, 2], 2),
])
def test_side_files_come_from_the_same_model_for_both_config_forms(side_ckpts, tmp_path, method, base, models, want):
    extra = {"parameters": {"linear": {"weight": 1.0}, "slerp": {"t": 0.5},
                            "ties": {"density": 0.5, "weight": 0.5}}[method]}
    cfgs = _both_forms(method, side_ckpts[base] if base is not None else None, [side_ckpts[m] for m in models],
                       **extra)
    for form, cfg in zip(("models", "slices"), cfgs):
        assert checkpoint.side_source(cfg) == side_ckpts[want], form
        out = tmp_path / form
        r = checkpoint.run_config(cfg, out, progress=False)
        assert str(r.side_source) == side_ckpts[want] and r.side_files == ("config.json", "tokenizer.json"), form
        assert json.loads((out / "config.json").read_text())["id"] == want, form
        assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == {f"m{want}": 0}, form


def test_a_linear_config_with_its_base_listed_writes_the_base_back(side_ckpts):
    """mergekit_config.yml of such a merge dropped base_model: read back, its side files came from
    the first model, no longer from the base."""
    import yaml

    cfg, _ = _both_forms("linear", side_ckpts[1], [side_ckpts[0], side_ckpts[1]])
    assert cfg.base_model is None and cfg.listed_base == side_ckpts[1]
    again = config.from_dict(yaml.safe_load(config.to_yaml(cfg)))
    assert again == cfg and checkpoint.side_source(again) == side_ckpts[1]


# ----------------------------------------------------------------------------- re-basin spec errors

from jaxinterp.merge import rebasin  # noqa: E402


def test_check_spec_names_a_few_permuted_leaves_and_a_count_not_all():
    """A views key naming no permuted leaf listed every leaf of spec.axes: 72 names (~2,500
    characters) for GPT-2 small, the problem lost in them."""
    spec = rebasin.gpt2_permutation_spec(12, 12, 64)
    known = sorted(spec.axes, key=str)
    typo = rebasin.PermutationSpec(spec.axes, {**spec.views, "h_0.attn.c_atn.kernel": (768, 3, 12, 64)})
    message = (f"spec.views: keys ['h_0.attn.c_atn.kernel'] name no leaf of spec.axes; expected views only for the "
               f"permuted leaves (known: {known[:4]} and {len(known) - 4} more)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        rebasin.check_spec(typo, {})
    assert len(known) == 72 and len(message) < 300
    many = rebasin.PermutationSpec({"a": (None,)}, {f"x{i}": (1,) for i in range(6)})
    with pytest.raises(ValueError, match=r"^spec\.views: keys \['x0', 'x1', 'x2', 'x3'\] and 2 more name no leaf "
                                         r"of spec\.axes; expected views only for the permuted leaves "
                                         r"\(known: \['a'\]\)$"):
        rebasin.check_spec(many, {})


# ----------------------------------------------------------------------------- benchmarks/merge.py


def test_merge_benchmark_writes_its_yaml_configs_atomically(monkeypatch, tmp_path):
    """The configs in --workdir were written in place (Path.write_text): a run killed while writing
    one left a truncated YAML beside the kept checkpoints. Now each goes through jaxinterp.atomic,
    the config a child merges is whole, and no temporary is left behind."""
    from types import SimpleNamespace

    from conftest import load_benchmark
    from test_review12_bench import _merge_children

    merge = load_benchmark("merge", "_bench17_")
    _merge_children(monkeypatch, merge, jax_rc=0)
    monkeypatch.setattr(merge, "find_mergekit", lambda opt: None)
    real, written, merged = merge.atomic.write_text, [], []

    def write_text(path, text):
        written.append(Path(path).name)
        return real(path, text)

    def run_child(cmd):
        merged.append(Path(cmd[cmd.index("yaml") + 1]))
        return 5.0, 1.0, 0

    monkeypatch.setattr(merge.atomic, "write_text", write_text)
    monkeypatch.setattr(merge, "run_child", run_child)
    (tmp_path / "ties.yml").write_text("merge_method: ties  # an earlier run's\n")
    merge.bench_merges(SimpleNamespace(quick=True, workdir=str(tmp_path), mergekit=None), [])
    names = ["ties.yml", "dare_ties.yml", "slerp.yml", "linear.yml"]
    assert written == names and [p.name for p in merged] == names
    dirs = [tmp_path / "quick" / n for n in ("base", "ft0", "ft1", "ft2")]
    for p in merged:
        assert p.read_text() == merge.config_yaml(p.stem, dirs)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]



# ----------------------------------------------------------------------------- shapes and dtypes

from jaxinterp.merge import curves, landscape, soups  # noqa: E402

P3 = {"w": jnp.ones(3)}


@pytest.mark.parametrize("call, match", [
    # a bend leaf of shape [1] against [3]: the curve broadcast it, silently
    (lambda: curves.bezier(P3, {"w": jnp.zeros(1)}, P3, 0.5),
     r"^p0/bend/p1: expected trees of the same structure and shapes; .*w \(shape \(3,\) in p0/bend/p1\[0\], \(1,\) "
     r"in p0/bend/p1\[1\]\)$"),
    # ts [3] for one leaf of 3 entries: entry i of the curve at t_i, a mix of three points, silently
    (lambda: curves.bezier(P3, P3, P3, jnp.array([0.0, 0.5, 1.0])),
     r"^t: expected one t in \[0, 1\] \(a scalar; vmap over several\), got shape \(3,\)$"),
    (lambda: landscape.lerp(P3, {"w": jnp.zeros(1)}, 0.5),
     r"^a/b: expected trees of the same structure and shapes; .*\(shape \(3,\) in a/b\[0\], \(1,\) in a/b\[1\]\)$"),
    (lambda: landscape.lerp(P3, P3, np.linspace(0, 1, 3)),
     r"^alpha: expected one alpha \(a scalar; vmap over several\), got shape \(3,\)$"),
])
def test_bezier_and_lerp_refuse_what_they_broadcast(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bezier_and_lerp_still_run_under_jit_and_vmap():
    p0, p1 = {"w": jnp.zeros(3)}, {"w": jnp.ones(3) * 2}
    ts = jnp.array([0.0, 0.5, 1.0])
    got = jax.jit(jax.vmap(lambda t: curves.bezier(p0, p1, p1, t)))(ts)["w"]
    np.testing.assert_allclose(np.asarray(got[:, 0]), [0.0, 1.5, 2.0])
    got = jax.jit(jax.vmap(lambda a: landscape.lerp(p0, p1, a)))(ts)["w"]
    np.testing.assert_allclose(np.asarray(got[:, 0]), [0.0, 1.0, 2.0])


def test_tsv_merge_and_regmean_return_the_inputs_common_dtype():
    """Float32 fine-tunes of a bfloat16 base (tsv), or beside a bfloat16 model 0 (regmean), came back
    in bfloat16: rounded, unlike `merge`, `uniform_soup` and RegMean's own averaged leaves."""
    k = jax.random.normal(jax.random.PRNGKey(4), (3, 4, 3))
    base = {"k": k[0].astype(jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16)}
    fts = [{"k": k[0].astype(jnp.bfloat16).astype(jnp.float32) + 0.01 * k[i], "b": jnp.full(3, 0.001 * i)}
           for i in (1, 2)]
    got = soups.tsv_merge(fts, base)
    want = soups.tsv_merge(fts, jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), base))
    for name in ("k", "b"):
        assert got[name].dtype == jnp.float32, name
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
    models = [{"d": {"kernel": M2[0]["d"]["kernel"].astype(jnp.bfloat16), "bias": jnp.zeros(2, jnp.bfloat16)}},
              {"d": {"kernel": M2[1]["d"]["kernel"] + 0.003, "bias": jnp.ones(2)}}]
    out = fisher.regmean(models, [{"d.kernel": fisher.gram(k[1])}, {"d.kernel": fisher.gram(k[2])}])
    assert out["d"]["kernel"].dtype == out["d"]["bias"].dtype == jnp.float32


# ----------------------------------------------------------------------------- diagonal Fisher memory

from jaxinterp.merge import mlp  # noqa: E402

PM = mlp.init(jax.random.PRNGKey(0), (5, 7, 3))
XM = jax.random.normal(jax.random.PRNGKey(2), (10, 5))
YM = jnp.arange(10) % 3


def test_diagonal_fisher_memory_does_not_grow_with_the_examples():
    """Every example's gradient was held at once (vmap over N): temporaries of N copies of the params,
    1.1 GB for 1024 examples of a 0.3M-parameter MLP (0.5 GB per example for GPT-2 small). Now a scan
    over chunks of `chunk` examples: the same temporaries for 64 examples as for 1024."""
    p = mlp.init(jax.random.PRNGKey(0), (64, 512, 512, 10))
    params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(p))

    def temp_bytes(n):
        x, y = jnp.zeros((n, 64)), jnp.zeros(n, jnp.int32)
        return fisher._fisher.lower(mlp.apply, p, x, y, chunk=min(32, n)).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(64), temp_bytes(1024)
    assert large <= 1.1 * small and large < 64 * params_bytes, (small, large, params_bytes)


@pytest.fixture(scope="module")
def fisher_by_example():
    """The empirical Fisher of PM on (XM, YM), one gradient per example, averaged in numpy."""
    g = [jax.grad(lambda p, i=i: -mlp.loss(p, (XM[i:i + 1], YM[i:i + 1])))(PM) for i in range(10)]
    return jax.tree_util.tree_map(lambda *gs: np.mean(np.square(np.stack(gs)), 0), *g)


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 32])
def test_diagonal_fisher_is_the_same_for_every_chunk(chunk, fisher_by_example):
    """Chunks that do not divide N (padded with the last example, masked out) included."""
    f = fisher.diagonal_fisher(mlp.apply, PM, XM, labels=YM, chunk=chunk)
    want = fisher_by_example
    for x, y in zip(jax.tree_util.tree_leaves(f), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6 * float(np.abs(y).max()))


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True, None])
def test_diagonal_fisher_refuses_a_bad_chunk(chunk):
    with pytest.raises(ValueError, match="^" + re.escape(f"chunk: expected a positive number of examples per vmapped "
                                                         f"chunk, got {chunk!r}") + "$"):
        fisher.diagonal_fisher(mlp.apply, PM, XM, labels=YM, chunk=chunk)


@pytest.mark.parametrize("x, got", [
    (jnp.float32(2.0), "ArrayImpl of shape () and dtype float32"),                    # was an IndexError
    ([[1.0, 2.0]], "list of shape (1, 2) and dtype None"),                               # an AttributeError
    (jnp.ones((4, 3), jnp.complex64), "ArrayImpl of shape (4, 3) and dtype complex64"),  # imaginary parts dropped
])
def test_gram_refuses_what_is_no_real_input_array(x, got):
    with pytest.raises(ValueError, match="^" + re.escape(f"x: expected a real array [..., d_in] of a linear layer's "
                                                         f"inputs, got {got}") + "$"):
        fisher.gram(x)


def test_gram_of_numpy_and_integer_inputs():
    x = np.arange(12).reshape(2, 2, 3)
    want = x.reshape(4, 3).T @ x.reshape(4, 3)
    for a in (x, x.astype(np.float64), jnp.asarray(x, jnp.bfloat16)):
        g = fisher.gram(a)
        assert g.dtype == jnp.float32 and isinstance(g, jax.Array)
        np.testing.assert_array_equal(np.asarray(g), want)


# ----------------------------------------------------------------------------- merge yaml's dot products

from jaxinterp.merge import stream  # noqa: E402


@pytest.fixture(scope="module")
def long_pair():
    """A 4M-entry weight and a fine-tune of it (cos 0.995), float32, as a large checkpoint tensor."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.02, 1 << 22).astype(np.float32)
    return a, a + rng.normal(0, 0.002, a.size).astype(np.float32)


def test_stream_slerp_coefficients_are_float32_accurate_on_long_tensors(long_pair):
    """One float32 BLAS sdot per norm and dot: the coefficients of a 4M-entry tensor were 6.5e-6 off
    (4.5e-4 in the dot of GPT-2's 38.6M-entry embedding, the slerp 250 ulps off; in memory 1 ulp)."""
    a, b = long_pair
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    for t in (0.3, 0.5):
        theta = np.arccos(a64 @ b64 / np.sqrt((a64 @ a64) * (b64 @ b64)))
        want = np.sin((1 - t) * theta) / np.sin(theta), np.sin(t * theta) / np.sin(theta)
        got = stream.slerp_coefficients(t, a, b)
        np.testing.assert_allclose(np.float64(got), want, rtol=3e-7)  # float32 rounding of each: 6e-8
    assert abs(stream.dot(a, b) - a64 @ b64) <= 1e-7 * abs(a64 @ b64)  # measured 5e-9; one sdot 3.7e-6


def test_stream_dare_rescale_is_float32_accurate_on_long_tensors(long_pair):
    """DARE's L1 rescale divided by an sdot over the whole tensor: every kept entry scaled 4.6e-7 off
    (now 4e-8: the float32 rounding of the scale, 6e-8 at most)."""
    base, ft = long_pair
    flat = stream.merge_flat("dare_linear", [ft, base], base_index=1, shared={"normalize": False, "rescale": True,
                                                                              "lambda": 1.0},
                             per_input=[{"weight": 1.0, "density": 0.3}, {}], seed=0, name="w", dtype="float32",
                             out_dtype="float32")
    out = np.empty(base.size, np.float32)
    for p in flat:
        out[p.offset + p.lo:p.offset + p.hi] = np.asarray(p.compute())[p.lo:p.hi]
    mask = stream._rng(0, "w", 0).random(base.size, dtype=np.float32) < np.float32(0.3)
    tau = ft.astype(np.float64) - base.astype(np.float64)
    tau32 = np.abs(ft - base).astype(np.float64)  # the float32 task vector the stream sums
    scale = tau32.sum() / tau32[mask].sum()
    # the scale the output applied, fitted over the kept entries (least squares: the float32
    # rounding of each output entry averages out)
    step = out[mask].astype(np.float64) - base[mask]
    fitted = float(step @ tau[mask] / (tau[mask] @ tau[mask]))
    assert np.all(out[~mask] == base[~mask])
    np.testing.assert_allclose(fitted, scale, rtol=1e-7)


# ----------------------------------------------------------------------------- `jaxinterp merge barrier`


def test_barrier_refuses_a_bad_num_before_reading_or_aligning_the_models(tmp_path, monkeypatch, capsys):
    """--num 1 with --align: both models were read and weight-matched, then linear_path refused it."""
    from jaxinterp import cli

    def never(*a, **k):
        raise AssertionError("weight matching ran")

    monkeypatch.setattr(rebasin, "weight_matching", never)
    a = tmp_path / "a.safetensors"  # not even read: it does not exist
    assert cli.main(["merge", "barrier", str(a), str(a), "--align", "--num", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "jaxinterp merge: error: num: expected at least 2 alphas (the two endpoints), got 1"
