"""Review 14 of the merge package: each test failed on the code before its fix."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxinterp.merge import checkpoint, config, registry, simple, tree_merge

BF16 = np.dtype(jnp.bfloat16)


# ----------------------------------------------------------------------------- arcee_fusion in float32


def _fusion_pair(dtype, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (48, 64)).astype(dtype)
    other = (base.astype(np.float32) + rng.normal(0, 0.2, base.shape)).astype(dtype)
    return base, other


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16)])
def test_arcee_fusion_of_low_precision_inputs_is_the_float32_result_rounded_once(dtype, tmp_path):
    # in bfloat16 the softmaxes, KL and threshold rounded and base + (other - base) rounded the
    # difference: entries kept from the other model were not its values
    base, other = _fusion_pair(dtype)
    want32 = np.asarray(simple.arcee_fusion(jnp.asarray(base, jnp.float32), jnp.asarray(other, jnp.float32)))
    kept = want32 != base.astype(np.float32)
    assert 0 < kept.sum() < kept.size  # the threshold splits the entries: the mask matters
    want = want32.astype(dtype)
    np.testing.assert_array_equal(want[kept], other[kept])  # a kept entry is the other model's value

    got = simple.arcee_fusion(jnp.asarray(base), jnp.asarray(other))
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got), want)
    tree = tree_merge.merge("arcee_fusion", [{"w": jnp.asarray(other)}], base={"w": jnp.asarray(base)})
    assert tree["w"].dtype == dtype
    np.testing.assert_array_equal(np.asarray(tree["w"]), want)
    one = registry.merge_tensor("arcee_fusion", [jnp.asarray(other), jnp.asarray(base)], base_index=1,
                                shared={}, per_input=[{}, {}])
    np.testing.assert_array_equal(np.asarray(one), want)

    refs = []  # merge yaml (the checkpoint path) gives the same bytes
    for j, t in enumerate([base, other]):
        d = tmp_path / f"m{j}"
        d.mkdir()
        save_file({"w": t}, str(d / "model.safetensors"))
        refs.append(str(d))
    cfg = config.from_dict({"merge_method": "arcee_fusion", "base_model": refs[0], "models": [refs[1]]})
    checkpoint.run_config(cfg, tmp_path / "out", progress=False)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))["w"]
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, want)


# ----------------------------------------------------------------------------- layer order of `merge barrier --align`


@pytest.mark.parametrize("names,want", [
    (["Dense_10", "Dense_2", "Dense_0", "Dense_1"], ["Dense_0", "Dense_1", "Dense_2", "Dense_10"]),
    (["h_11.mlp", "h_9.attn", "h_9.mlp", "h_100.mlp"], ["h_9.attn", "h_9.mlp", "h_11.mlp", "h_100.mlp"]),
    (["b", "a10", "a9", "a"], ["a", "a9", "a10", "b"]),
])
def test_natural_sorted_orders_numeric_suffixes_as_numbers(names, want):
    from jaxinterp.merge import tree

    assert tree.natural_sorted(names) == want


def test_barrier_align_of_a_12_layer_mlp_permutes_b_into_the_same_function(tmp_path):
    # names sorted as text (Dense_0, Dense_1, Dense_10, Dense_11, Dense_2, ...) chained the permutations
    # out of order: Dense_11, the output layer, got an output permutation shared with Dense_2's input,
    # so this MLP was refused (exit 2, "permutation 'P_3' has size 10 elsewhere but ... 8"), and one of
    # equal widths had its logits permuted (another function than B at alpha 1)
    import json

    import jax

    from jaxinterp import cli
    from jaxinterp.merge import cli as merge_cli
    from jaxinterp.merge import mlp

    sizes = (64,) + (8,) * 11 + (10,)
    paths = []
    for seed in (1, 2):
        p = tmp_path / f"{seed}.safetensors"
        merge_cli._save_params(mlp.init(jax.random.PRNGKey(seed), sizes), p)
        paths.append(p)
    js = tmp_path / "path.json"
    assert cli.main(["merge", "barrier", *map(str, paths), "--align", "--num", "3", "--json", str(js)]) == 0
    r = json.loads(js.read_text())["paths"]
    d = mlp.load_digits()
    lb = float(mlp.loss(merge_cli._load_mlp(str(paths[1])), (jnp.asarray(d.x_test), jnp.asarray(d.y_test))))
    assert len(merge_cli._load_mlp(str(paths[1]))) == 12
    np.testing.assert_allclose([r["naive"]["losses"][-1], r["weight matching"]["losses"][-1]], [lb, lb], rtol=1e-6)


# ----------------------------------------------------------------------------- buffers of path/plane/curve losses


def _loss_with_step(p, batch):
    x, y = batch
    from jaxinterp.merge import mlp

    return mlp.loss({k: v for k, v in p.items() if k != "step"}, (x, y)) + 0.0 * p["step"]


def _with_step(seed, step):
    import jax

    from jaxinterp.merge import mlp

    return {**mlp.init(jax.random.PRNGKey(seed), (5, 7, 3)), "step": jnp.int32(step)}


def test_path_plane_and_curve_losses_refuse_different_buffers_before_compute():
    # they took the int32 leaf from the first tree unchecked: a step 3 and a step 4 model gave a path
    # with step 3 at alpha 1 (not model B), where linear_path, plane_through and fit_bezier refuse
    import jax

    from jaxinterp.merge import curves, landscape

    calls = []

    def loss(p, batch):
        calls.append(1)
        return _loss_with_step(p, batch)

    batch = (jax.random.normal(jax.random.PRNGKey(3), (6, 5)), jnp.arange(6) % 3)
    a, b, c = _with_step(0, 3), _with_step(1, 3), _with_step(2, 3)
    b4 = _with_step(1, 4)
    ts = jnp.linspace(0.0, 1.0, 3)
    msg = r"step: expected the same values in every tree for a int32 leaf \(a buffer, copied, not interpolated\); "
    with pytest.raises(ValueError, match=msg + r"\[params_a, params_b\]\[1\] differs .*\(int32 \[4\]\.\.\. vs \[3\]"):
        landscape.path_losses(loss, a, b4, batch, ts)
    with pytest.raises(ValueError, match=msg + r"\[p0, bend, p1\]\[2\] differs"):
        curves.curve_losses(loss, a, b, b4, batch, ts)
    with pytest.raises(ValueError, match=msg + r"\[p0, bend, p1\]\[1\] differs"):
        curves.curve_losses(loss, a, b4, b, batch, ts)
    d1 = jax.tree_util.tree_map(jnp.subtract, b, a)  # the buffer's direction is 0: allowed
    d2 = jax.tree_util.tree_map(jnp.subtract, b4, a)  # 1 on the buffer: it would be dropped
    coords = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=r"d2: expected zero at step, a int32 leaf of origin \(a buffer, kept, not "
                                         r"moved along a direction\), got 1 nonzero entries \(\[1\]\.\.\.\)"):
        landscape.plane_losses(loss, a, d1, d2, batch, coords)
    assert not calls  # refused before the loss was traced

    # equal buffers pass, with the same numbers as before, and a call under jit (tracers) is not refused
    np.testing.assert_allclose(np.asarray(landscape.path_losses(loss, a, b, batch, ts))[[0, -1]],
                               [_loss_with_step(a, batch), _loss_with_step(b, batch)], rtol=1e-6)
    assert np.isfinite(np.asarray(curves.curve_losses(loss, a, c, b, batch, ts))).all()
    np.testing.assert_allclose(landscape.plane_losses(loss, a, d1, d1, batch, coords),
                               [_loss_with_step(a, batch)] * 2, rtol=1e-6)
    traced = jax.jit(lambda pa, pb: landscape.path_losses(loss, pa, pb, batch, ts))(a, b4)
    assert traced.shape == (3,)


# ----------------------------------------------------------------------------- stale shards in the output folder


def test_merge_yaml_removes_the_stale_shards_of_an_earlier_merge_and_nothing_else(tmp_path, capsys):
    # a merge into a folder holding an earlier sharded merge left model-0000k-of-00003.safetensors and
    # the index beside the new model.safetensors: loaders following the index read the old weights
    import json

    import yaml

    from jaxinterp import cli

    rng = np.random.default_rng(0)
    refs = []
    for j in range(2):
        d = tmp_path / f"m{j}"
        d.mkdir()
        save_file({"a": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)},
                  str(d / "model.safetensors"))
        refs.append(str(d))
    out = tmp_path / "out"
    out.mkdir()
    stale = [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    for k, name in enumerate(stale):
        save_file({f"old{k}": np.zeros(2, np.float32)}, str(out / name))
    index = {"weight_map": {f"old{k}": n for k, n in enumerate(stale)}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    kept = {"README.md": "notes", "adapter_model.safetensors": "x", "model-00001-of-00003.safetensors.bak": "y",
            "pytorch_model-00001-of-00002.bin": "z"}
    for name, text in kept.items():
        (out / name).write_text(text)
    (out / "sub").mkdir()
    (out / "sub" / "model-00001-of-00002.safetensors").write_text("w")
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": r, "parameters": {"weight": 1.0}}
                                                                        for r in refs]}))
    assert cli.main(["merge", "yaml", str(cfg), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert ("removed 4 stale file(s) of an earlier sharded checkpoint in " + str(out)) in printed
    assert ", ".join(stale + ["model.safetensors.index.json"]) in printed
    assert not any((out / n).exists() for n in stale + ["model.safetensors.index.json"])
    for name, text in kept.items():
        assert (out / name).read_text() == text
    assert (out / "sub" / "model-00001-of-00002.safetensors").read_text() == "w"
    merged = load_file(str(out / "model.safetensors"))
    assert sorted(merged) == ["a", "b"]
    a = [load_file(str(tmp_path / f"m{j}" / "model.safetensors"))["a"] for j in range(2)]
    np.testing.assert_allclose(merged["a"], (a[0] + a[1]) / 2, rtol=1e-6)
    # a second merge into the folder finds nothing stale and says nothing about it
    assert cli.main(["merge", "yaml", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "stale" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- sce's weights and divisor


def _np_sce(base, xs):
    """mergekit's sce (select_topk 1) in float64: mean-square weights (equal when their sum is 0),
    TIES sign mask, divisor 0 -> 1."""
    taus = np.stack([x.astype(np.float64) - base.astype(np.float64) for x in xs])
    w = (taus**2).reshape(len(xs), -1).mean(1)
    w = w / w.sum() if w.sum() != 0 else np.full(len(xs), 1 / len(xs))
    ew = w.reshape((-1,) + (1,) * base.ndim) * (np.sign(taus) == np.where(taus.sum(0) >= 0, 1.0, -1.0))
    div = ew.sum(0)
    return base + (taus * ew).sum(0) / np.where(div == 0, 1, div)


@pytest.mark.parametrize("case", ["small task vectors", "only a light model moves an entry"])
def test_sce_weights_task_vectors_as_mergekit_at_any_scale(case):
    # a sum of mean squares under 1e-6 (task vectors of ~1e-4) gave equal weights, and a kept weight
    # under 1e-6 was divided by 1e-6: an entry moved only by a model of weight 1e-8 got 1e-2 of its update
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1e-3, (16, 32)).astype(np.float32)
    if case == "small task vectors":
        xs = [base + rng.normal(0, s, base.shape).astype(np.float32) for s in (1e-4, 2e-4, 4e-4)]
    else:
        heavy = rng.normal(0, 1e-1, base.shape).astype(np.float32)
        heavy[0] = 0.0  # row 0: only the light model moves it
        xs = [base + rng.normal(0, 1e-5, base.shape).astype(np.float32), base + heavy]
    want = _np_sce(base, xs)
    got = np.asarray(tree_merge.merge("sce", [{"w": jnp.asarray(x)} for x in xs], base={"w": jnp.asarray(base)})["w"])
    # against the float64 reference: the update itself to 1e-5 of its size
    np.testing.assert_allclose(got - base, want - base, rtol=1e-4, atol=1e-5 * np.abs(want - base).max())
    if case != "small task vectors":
        np.testing.assert_allclose(got[0] - base[0], xs[0][0] - base[0], rtol=1e-4)  # the light model's update


# ----------------------------------------------------------------------------- nearswap


def test_nearswap_weights_tiny_differences_as_mergekit():
    # |base - x| was floored at 1e-6: entries 5e-7 apart took weight 1e-8 / 1e-6 = 0.01, not 0.02
    base = np.array([1e-6, -2e-6, 3e-6, 4e-6], np.float32)  # small: float32 resolves updates of 1e-8
    other = base + np.array([0.0, 5e-7, -4e-6, 1.0], np.float32)
    t = 1e-8
    d = np.abs(other.astype(np.float64) - base)
    w = np.where(d == 0, 1.0, np.clip(t / np.where(d == 0, 1, d), 0, 1))
    want = w * other + (1 - w) * base
    got = simple.nearswap(jnp.asarray(base), jnp.asarray(other), t=t)
    np.testing.assert_allclose(np.asarray(got, np.float64) - base, want - base, rtol=1e-4, atol=0)  # float32: 1.2e-5
    got = tree_merge.merge("nearswap", [{"w": jnp.asarray(other)}], base={"w": jnp.asarray(base)},
                           parameters={"t": t})["w"]
    np.testing.assert_allclose(np.asarray(got, np.float64) - base, want - base, rtol=1e-4, atol=0)  # float32: 1.2e-5


@pytest.mark.parametrize("t, bad", [(0.0, 0.0), (-0.5, -0.5), ([0.0, 0.4], 0.0)])
def test_nearswap_refuses_a_threshold_that_is_not_positive(t, bad):
    # t <= 0 gave weight 0 everywhere: the base came back, silently (mergekit raises)
    base = {"h_0": {"w": jnp.ones(3)}, "h_1": {"w": jnp.ones(3)}}
    other = {"h_0": {"w": jnp.zeros(3)}, "h_1": {"w": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"parameters for h_0\.w: nearswap needs a similarity threshold t > 0 "
                                         rf"\(as mergekit\), got {bad}"):
        tree_merge.merge("nearswap", [other], base=base, parameters={"t": t})


# ----------------------------------------------------------------------------- merge barrier's models


def _mlp_file(path, tensors):
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, str(path))
    return str(path)


def _dense(shapes):
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s) for layer, (i, o) in shapes.items()
            for k, s in ((f"{layer}.kernel", (i, o)), (f"{layer}.bias", (o,)))}


@pytest.mark.parametrize("tensors,msg", [
    # a 5-logit MLP for 10 classes: the barrier came out NaN, exit 0
    (_dense({"Dense_0": (64, 8), "Dense_1": (8, 5)}), r"model a \(.*\): expected 10 logits \(one per class of the "
                                                      r"data\) from Dense_1, got 5"),
    # the rest failed inside the compiled loss (KeyError, dot_general shapes) or as 'not enough values to unpack'
    (_dense({"Dense_0": (64, 8), "Dense_2": (8, 10)}), r"model a \(.*\): expected layers \['Dense_0', 'Dense_1'\] "
                                                      r"\(Dense_0 to Dense_1, as `init` names them\), got "
                                                      r"\['Dense_0', 'Dense_2'\]"),
    (_dense({"Dense_0": (64, 8), "Dense_1": (7, 10)}),
     r"expected Dense_1 to hold a float kernel \[8, out\] and bias \[out\], got kernel float32 \(7, 10\) and bias "
     r"float32 \(10,\)"),
    (_dense({"Dense_0": (32, 8), "Dense_1": (8, 10)}), r"expected Dense_0 to hold a float kernel \[64, out\]"),
    ({"w": np.zeros(3)}, r"model: expected tensors named layer\.leaf \(Dense_0\.kernel, .*got 'w' in "),
])
def test_barrier_refuses_an_mlp_that_does_not_fit_the_data_before_computing(tmp_path, capsys, tensors, msg):
    from jaxinterp import cli

    a = _mlp_file(tmp_path / "a.safetensors", tensors)
    js = tmp_path / "p.json"
    assert cli.main(["merge", "barrier", a, a, "--num", "3", "--json", str(js)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxinterp merge: error: ") and re.search(msg, err), err
    assert not js.exists()


@pytest.mark.parametrize("method,parameters,msg", [
    # karcher with tol 0 (or below) and multislerp with eps 0 made every entry NaN, silently
    ("karcher", {"tol": 0.0}, r"karcher needs tol > 0 and max_iter >= 0, got tol 0\.0 and max_iter 10"),
    ("karcher", {"tol": -1.0}, r"karcher needs tol > 0 .*got tol -1\.0"),
    ("karcher", {"max_iter": -3}, r"karcher needs tol > 0 and max_iter >= 0, got tol 1e-05 and max_iter -3"),
    ("multislerp", {"weight": 1.0, "eps": 0.0}, r"multislerp needs eps > 0, got 0\.0"),
    ("multislerp", {"weight": 1.0, "eps": -1e-3}, r"multislerp needs eps > 0, got -0\.001"),
])
def test_spherical_methods_refuse_a_tolerance_that_is_not_positive(method, parameters, msg):
    a, c = {"w": jnp.array([1.0, 0.0, 0.0])}, {"w": jnp.array([0.0, 2.0, 0.0])}
    ok = {k: v for k, v in parameters.items() if k == "weight"}
    assert np.isfinite(np.asarray(tree_merge.merge(method, [a, a, c], parameters=ok)["w"])).all()
    with pytest.raises(ValueError, match=r"parameters for w: " + msg):
        tree_merge.merge(method, [a, a, c], parameters=parameters)


# ----------------------------------------------------------------------------- slices


@pytest.mark.parametrize("missing_in, which, name", [
    ("b", "last", "lm_head.weight"),               # the LM head comes from the last slice's sources
    ("b", "first", "model.embed_tokens.weight"),   # the embeddings from the first slice's
])
def test_slices_refuse_a_source_without_a_tensor_outside_the_layers(tmp_path, missing_in, which, name):
    # was KeyError: 'lm_head.weight' from checkpoint.prepare (a traceback, not an exit 2)
    full = {"model.embed_tokens.weight": np.ones((4, 2), np.float32), "model.layers.0.w": np.ones(2, np.float32),
            "lm_head.weight": np.ones((4, 2), np.float32)}
    refs = {}
    for m in ("a", "b"):
        d = tmp_path / m
        d.mkdir()
        save_file({k: v for k, v in full.items() if not (m == missing_in and k == name)}, str(d / "model.safetensors"))
        refs[m] = str(d)
    if which == "last":
        slices = [{"sources": [{"model": refs["a"], "layer_range": [0, 1]}]},
                  {"sources": [{"model": refs["b"], "layer_range": [0, 1]}]}]
    else:
        slices = [{"sources": [{"model": refs[m], "layer_range": [0, 1]} for m in ("a", "b")]}]
    cfg = config.from_dict({"merge_method": "passthrough" if which == "last" else "linear", "slices": slices,
                            **({"parameters": {"weight": 1.0}} if which == "first" else {})})
    with pytest.raises(ValueError, match=rf"slices: {re.escape(name)} \(outside the layers, of '.*a'\) is read from "
                                         rf"every source of the {which} slice, and '.*b' has no such tensor"):
        checkpoint.run_config(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- safetensors headers


def _st(header, pad=64):
    import json
    import struct

    b = json.dumps(header).encode()
    return struct.pack("<Q", len(b)) + b + b"\0" * pad


@pytest.mark.parametrize("content,msg", [
    # a Git LFS pointer (a clone without `git lfs pull`): MemoryError reading a header of 2.3e18 bytes
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 548105171\n",
     r"is not a safetensors file \(it is a Git LFS pointer: run `git lfs pull`\): expected an "
     r"8-byte header length within its 72 bytes, got 2336927755350992246"),
    (b"", r"is not a safetensors file: expected an 8-byte header length within its 0 bytes, got none"),  # struct.error
    (b"\x04\0\0\0\0\0\0\0\xff\xfe\xfd\xfc", r"is not a safetensors file: its header is not JSON"),
    (_st([1, 2]), r"expected a JSON object as header, got list"),  # AttributeError
    # 3 float32 entries in 8 bytes: 'cannot reshape array of size 2 into shape (3,)' mid-merge
    (_st({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
     r"tensor w has header .*; expected a dtype, a shape and data_offsets \[begin, end\] spanning exactly"),
    (_st({"w": {"dtype": "F32", "shape": [2]}}), r"tensor w has header \{'dtype': 'F32', 'shape': \[2\]\}"),  # KeyError
])
def test_merge_refuses_a_file_that_is_not_safetensors_before_writing(tmp_path, capsys, content, msg):
    import yaml

    from jaxinterp import cli

    refs = []
    for m in ("a", "b"):
        d = tmp_path / m
        d.mkdir()
        if m == "a":
            (d / "model.safetensors").write_bytes(content)
        else:
            save_file({"w": np.ones(2, np.float32)}, str(d / "model.safetensors"))
        refs.append(str(d))
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": r, "parameters": {"weight": 1.0}}
                                                                        for r in refs]}))
    for cmd in (["check", str(cfg)], ["yaml", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]):
        assert cli.main(["merge", *cmd]) == 2
        err = capsys.readouterr().err
        assert re.search(r"jaxinterp merge: error: model '.*a': model\.safetensors:? " + msg, err), err
    assert not (tmp_path / "out").exists()


def test_mean_leaf_of_numpy_float64_without_x64_is_float32_without_a_warning():
    """numpy float64 leaves (a RegMean test's inputs) warned of a truncation in result_type: JAX holds
    them as float32 unless jax_enable_x64 is on, and the mean is that float32 mean."""
    import warnings

    from jaxinterp.merge import tree

    xs = [np.array([0.1, 0.2, 0.3]), np.array([0.4, 0.5, 0.6])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = tree.mean_leaf(xs, "w")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), (xs[0].astype(np.float32) + xs[1].astype(np.float32)) / 2)
