"""Review 17 of the merge methods' math (sparsify, task arithmetic, spherical, simple, the streaming
checkpoint path, per-layer parameters): each test failed on the code before its fix."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.merge import sparsify, tree_merge

# ----------------------------------------------------------------------------- float64 top-k


def test_top_k_ranks_float64_magnitudes_in_float64():
    # 1 and 1 + 1e-12 are one float32: the cast made them a tie, kept by index (the smaller one)
    with jax.enable_x64(True):
        tau = jnp.asarray([1.0, 1.0 + 1e-12, 0.5, 1.0 + 2e-12, 0.25], jnp.float64)
        assert np.asarray(sparsify.top_k_mask(jnp.abs(tau), 1)).tolist() == [False, False, False, True, False]
        assert np.asarray(sparsify.top_k_mask(jnp.abs(tau), 2)).tolist() == [False, True, False, True, False]
        np.testing.assert_array_equal(np.asarray(sparsify.magnitude(tau, 0.4)), [0, 1 + 1e-12, 0, 1 + 2e-12, 0])
        # breadcrumbs: gamma 0.2 drops the largest (index 3), density 0.4 keeps the next two
        np.testing.assert_array_equal(np.asarray(sparsify.magnitude_outliers(tau, 0.4, gamma=0.2)),
                                      [1.0, 1 + 1e-12, 0, 0, 0])
        got = tree_merge.merge("ties", [{"w": tau}], base={"w": jnp.zeros(5, jnp.float64)},
                               parameters={"density": 0.2, "weight": 1.0})["w"]
        assert got.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(got), [0, 0, 0, 1 + 2e-12, 0])


def test_top_k_of_numpy_float64_without_x64_ranks_in_float32_without_a_warning():
    import warnings

    # without x64 a float64 numpy array becomes float32: the float64 branch asked for int64 bits
    # (truncated to int32 with a UserWarning) and an int64 bisection bound
    mag = np.abs(np.random.default_rng(0).normal(size=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(sparsify.top_k_mask(mag, 7))
    np.testing.assert_array_equal(np.flatnonzero(got), np.sort(np.argsort(-mag)[:7]))


def test_top_k_float64_agrees_with_a_stable_sort():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        # many near-ties below float32's precision, some exact ties, an inf
        mag = np.abs(1 + rng.integers(0, 50, 400) * 1e-13 + (rng.random(400) < 0.1) * rng.random(400))
        mag[7] = np.inf
        for k in (1, 3, 50, 199, 399):
            want = np.zeros(400, bool)
            want[np.argsort(-mag, kind="stable")[:k]] = True
            np.testing.assert_array_equal(np.asarray(sparsify.top_k_mask(jnp.asarray(mag), k)), want)


# ----------------------------------------------------------------------------- fisher_merge normalize


@pytest.mark.parametrize("scale", [1e-25, 1.0, 1e25])
def test_fisher_merge_normalizes_by_the_norm_of_tiny_or_huge_fishers(scale):
    from jaxinterp.merge import fisher

    # squared in float32, entries ~1e-25 gave a norm of 0 (refused) and ~1e25 one of inf (refused)
    a, b = np.array([0.0, 1.0, 2.0]), np.array([4.0, 5.0, 6.0])
    fa, fb = np.array([1.0, 3.0, 2.0]), 2 * np.array([3.0, 1.0, 2.0])
    wa, wb = 0.5 / np.linalg.norm(fa), 0.5 / np.linalg.norm(fb)
    want = (wa * fa * a + wb * fb * b) / (wa * fa + wb * fb)
    f32 = lambda x: {"w": jnp.asarray(x, jnp.float32)}  # noqa: E731
    got = fisher.fisher_merge([f32(a), f32(b)], [f32(fa * scale), f32(fb * scale)], normalize=True, eps=1e-35)["w"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


# ----------------------------------------------------------------------------- rebasin init message


def test_weight_matching_init_error_names_a_few_permutations_and_a_count():
    from jaxinterp.merge import rebasin

    names = [f"Dense_{i}" for i in range(11)]  # 10 permutations, P_0 .. P_9
    spec = rebasin.mlp_permutation_spec(names)
    params = {n: {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)} for n in names}
    init = {f"P_{i}": np.arange(2) for i in range(10) if i != 5}
    with pytest.raises(ValueError) as e:
        rebasin.weight_matching(spec, params, params, init=init)
    assert str(e.value) == ("init: expected one permutation for each of ['P_0', 'P_1', 'P_2', 'P_3'] and 6 more, "
                            "got ['P_0', 'P_1', 'P_2', 'P_3'] and 5 more (missing ['P_5'], not in the spec [])")


# ----------------------------------------------------------------------------- seeds of the random masks


DARE = dict(parameters={"weight": 1.0, "density": 0.5})


@pytest.mark.parametrize("seed", [2**32, 2**32 + 1, 2**63, 2**70, -1])
def test_merge_refuses_a_seed_whose_masks_alias_another(seed):
    # PRNGKey keeps 32 bits: seed 2**32 + 1 drew seed 1's masks and -1 those of 2**32 - 1, silently
    m, b = {"w": jnp.arange(64.0)}, {"w": jnp.zeros(64)}
    with pytest.raises(ValueError, match=rf"^seed: expected an integer in \[0, 2\*\*32\) \(random generators keep "
                                         rf"a seed's low 32 bits: .*\), got {seed}$"):
        tree_merge.merge("dare_linear", [m], base=b, seed=seed, **DARE)
    assert tree_merge.merge("dare_linear", [m], base=b, seed=2**32 - 1, **DARE)["w"].shape == (64,)


def _two_model_config(tmp_path, yaml_text: str):
    """m0.safetensors and m1.safetensors (one 8-entry tensor each, all 0 / all 1) and c.yml holding yaml_text."""
    from safetensors.numpy import save_file

    for j in range(2):
        save_file({"w": np.full(8, j, np.float32)}, str(tmp_path / f"m{j}.safetensors"))
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml_text)
    return cfg


def test_yaml_merge_refuses_a_wide_seed_before_reading_anything(tmp_path, capsys):
    from jaxinterp import cli
    from jaxinterp.merge import checkpoint

    cfg = _two_model_config(tmp_path, f"merge_method: dare_linear\nbase_model: {tmp_path / 'm0.safetensors'}\n"
                                      f"models:\n  - model: {tmp_path / 'm1.safetensors'}\n"
                                      "parameters: {weight: 1.0, density: 0.5}\n")
    with pytest.raises(ValueError, match=r"^seed: expected an integer in \[0, 2\*\*32\)"):
        checkpoint.run_yaml(cfg, tmp_path / "o", seed=2**32 + 1, progress=False)
    assert not (tmp_path / "o").exists()
    assert cli.main(["merge", "yaml", str(cfg), "--out", str(tmp_path / "o"), "--seed", str(2**32), "--quiet"]) == 2
    assert "--seed: expected an integer in [0, 2**32)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- della in float64


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_keeps_a_float64_task_vector_in_float64(method):
    with jax.enable_x64(True):
        base = {"w": jnp.zeros((4, 50), jnp.float64)}
        x = {"w": jnp.full((4, 50), 1 / 3, jnp.float64)}
        got = np.asarray(tree_merge.merge(method, [x], base=base, seed=3, parameters={
            "weight": 1.0, "density": 0.5, "epsilon": 0.1, "rescale": False})["w"])
        assert got.dtype == np.float64
        kept = got != 0
        assert 0 < kept.sum() < got.size
        np.testing.assert_array_equal(got[kept], 1 / 3)  # float32's 1/3 is 0.3333333432674408
        # with the L1 rescale: ||tau||_1 / ||tau * m||_1 in float64
        got = np.asarray(tree_merge.merge(method, [x], base=base, seed=3, parameters={
            "weight": 1.0, "density": 0.5, "epsilon": 0.1, "rescale": True})["w"])
        kept = got != 0
        np.testing.assert_allclose(got[kept], (1 / 3) * got.size / kept.sum(), rtol=1e-14)


# ----------------------------------------------------------------------------- merge yaml into a file


@pytest.mark.parametrize("sub", ["", "sub/dir"])
def test_yaml_merge_refuses_an_out_that_is_or_lies_under_a_file(tmp_path, sub):
    from jaxinterp.merge import checkpoint

    cfg = _two_model_config(tmp_path, f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'm0.safetensors'}\n"
                                      f"  - model: {tmp_path / 'm1.safetensors'}\nparameters: {{weight: 1.0}}\n")
    (tmp_path / "f").write_text("keep")
    out = tmp_path / "f" / sub if sub else tmp_path / "f"
    what = "which is a file" if not sub else f"under the file {str(tmp_path / 'f')!r}"
    with pytest.raises(ValueError, match=rf"^out: expected a folder \(existing, or one to create\), got "
                                         rf"'{re.escape(str(out))}', {re.escape(what)}$"):
        checkpoint.run_yaml(cfg, out, progress=False)
    assert (tmp_path / "f").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yml", "f", "m0.safetensors", "m1.safetensors"]


def test_train_mlp_refuses_a_seed_whose_init_aliases_another(tmp_path, capsys):
    from jaxinterp import cli

    out = tmp_path / "a.safetensors"
    assert cli.main(["merge", "train-mlp", "--seed", str(2**32 + 1), "--steps", "1", "--out", str(out)]) == 2
    assert "--seed: expected an integer in [0, 2**32)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method,params,want", [
    ("ties", {"density": 0.2}, [0, 0, 0, 1 + 2e-12, 0]),
    ("breadcrumbs", {"density": 0.4, "gamma": 0.2}, [1.0, 1 + 1e-12, 0, 0, 0]),
])
def test_yaml_merge_of_float64_checkpoints_ranks_in_float64(tmp_path, method, params, want):
    from safetensors.numpy import load_file, save_file

    from jaxinterp.merge import checkpoint

    save_file({"w": np.zeros(5)}, str(tmp_path / "b.safetensors"))
    save_file({"w": np.array([1.0, 1.0 + 1e-12, 0.5, 1.0 + 2e-12, 0.25])}, str(tmp_path / "x.safetensors"))
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"merge_method: {method}\nbase_model: {tmp_path / 'b.safetensors'}\nmodels:\n"
                   f"  - model: {tmp_path / 'x.safetensors'}\nparameters: {dict(params, weight=1.0)}\n".replace("'", ""))
    checkpoint.run_yaml(cfg, tmp_path / "o", progress=False)
    got = load_file(str(tmp_path / "o" / "model.safetensors"))["w"]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- karcher, antipodal inputs


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("shape", [(2, 3), (5, 6), (3, 4, 5), (7,)])
def test_karcher_of_antipodal_inputs_returns_the_first_as_mergekit(x64, shape):
    from jaxinterp.merge import spherical

    # mergekit 0.1.5's karcher_merge_tensors([x, -x]) is x: the mean starts at the first unit and the
    # other's unit - dot * mean is 0. Here theta / sin(theta) ~ 1e16 at theta = pi multiplied the
    # rounding of units and dot (XLA's, under jit, not symmetric in x and -x) into a tangent of norm ~1
    x0 = np.random.default_rng(sum(shape)).normal(size=shape)
    tol = dict(rtol=1e-12, atol=1e-12) if x64 else dict(rtol=1e-5, atol=1e-5)
    with jax.enable_x64(x64):
        x = jnp.asarray(x0, jnp.float64 if x64 else jnp.float32)
        np.testing.assert_allclose(np.asarray(spherical.karcher([x, -x])), x0, **tol)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda a: spherical.karcher([a, -a]))(x)), x0, **tol)
        np.testing.assert_allclose(np.asarray(tree_merge.merge("karcher", [{"w": x}, {"w": -x}])["w"]), x0, **tol)
        # a third input still moves the mean (only the antipodal one adds nothing)
        y = jnp.asarray(np.random.default_rng(1).normal(size=shape), x.dtype)
        got = np.asarray(spherical.karcher([x, -x, y]))
        assert np.all(np.isfinite(got)) and not np.allclose(got, x0 / np.linalg.norm(x0) * np.linalg.norm(got))
