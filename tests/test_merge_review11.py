"""Review 11 of the merge package against mergekit 0.1.5's source (read from its installed copy):
each test failed before its fix. No torch or mergekit is needed: expected values follow mergekit's
rules, written out here."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp.merge import checkpoint, config, slices

from test_merge_slices import _tensors

LAYER = {"ln_1.weight": (4,), "mlp.c_fc.weight": (4, 8)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("review11")
    rng = np.random.default_rng(0)
    out = []
    for j in range(3):
        d = root / f"m{j}"
        d.mkdir()
        save_file(_tensors(rng, 4, LAYER), str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 4}))
        out.append(str(d))
    return out


def test_slice_source_parameters_are_resolved_by_the_source_tensor_name(ckpts):
    """mergekit's `resolve_parameters` evaluates a source's per-input parameters (its own, the
    slice's and the global ones) on that source's input tensor name (`inputs={model: w.name}` of the
    layer read from it), the shared ones on the output name. A filter naming a layer therefore
    matches the source's layer: here a's layer 3, which is output layer 1. The output name was used
    for everything, so the filter looked for output layer 3 (there is none) and never hit.
    Checked against mergekit-yaml 0.1.5 on tiny GPT-2 checkpoints (ties over a slice [1, 3] with a
    source filter on `h.2.`: max |diff| 2.3 before, 0 after)."""
    base, a, b = ckpts
    cfg = slices.from_dict({
        "merge_method": "ties", "base_model": base,
        "parameters": {"density": 0.5, "weight": [{"filter": "h.3.", "value": 0.25}, {"value": 1.0}]},
        "slices": [{"sources": [{"model": base, "layer_range": [2, 4]},
                                {"model": a, "layer_range": [2, 4],
                                 "parameters": {"weight": [{"filter": "h.3.", "value": 2.0}, {"value": 0.5}]}},
                                {"model": b, "layer_range": [0, 2]}]}]}, dtype=None, out_dtype=None)
    jobs, n_layers = slices.plan_jobs(cfg, {r: checkpoint.read_index(r) for r in ckpts})
    assert n_layers == 2
    got = {j.out_name: ([p.get("weight") for p in j.per_input], j.inputs) for j in jobs}
    w0, inputs0 = got["transformer.h.0.mlp.c_fc.weight"]
    w1, inputs1 = got["transformer.h.1.mlp.c_fc.weight"]
    assert [n for _, n in inputs0] == ["transformer.h.2.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.weight",
                                       "transformer.h.2.mlp.c_fc.weight"]
    # inputs: a (source layer 2, then 3), b (source layer 0, then 1), the base last
    assert w0 == [0.5, 1.0, None]  # a's filter misses h.2; b's input h.0 misses the global filter
    assert w1 == [2.0, 1.0, None]  # a reads h.3 (its filter hits); b reads h.1 (the global filter misses)
    # outside the layers the input and output names are one: the global default
    assert got["transformer.wte.weight"][0] == [0.5, 1.0, None]


def test_slice_global_filter_reads_each_source_layer(ckpts):
    """The global per-input filter on `h.1.` hits the source that reads layer 1, whatever output
    layer it lands in: b's layer 1 is output layer 1, a's layer 1 is output layer 0."""
    base, a, b = ckpts
    cfg = slices.from_dict({
        "merge_method": "task_arithmetic", "base_model": base,
        "parameters": {"weight": [{"filter": "h.1.", "value": 0.25}, {"value": 1.0}]},
        "slices": [{"sources": [{"model": base, "layer_range": [1, 3]}, {"model": a, "layer_range": [1, 3]},
                                {"model": b, "layer_range": [0, 2]}]}]}, dtype=None, out_dtype=None)
    jobs, _ = slices.plan_jobs(cfg, {r: checkpoint.read_index(r) for r in ckpts})
    got = {j.out_name: [p.get("weight") for p in j.per_input] for j in jobs}
    assert got["transformer.h.0.ln_1.weight"] == [0.25, 1.0, None]
    assert got["transformer.h.1.ln_1.weight"] == [1.0, 0.25, None]


@pytest.mark.parametrize("method,params", [("nuslerp", {"weight": 0.5}), ("multislerp", {"weight": 0.5})])
def test_a_slice_without_the_configured_base_is_refused(method, params):
    """mergekit's InputContract.validate_ids: a base_model that is not among a slice's sources is
    an error ("Base input is not present in merge inputs") for every method that uses a base. For
    nuslerp and multislerp (base optional) the slice was merged without it, on the raw weights
    instead of the task vectors, with exit 0."""
    d = {"merge_method": method, "base_model": "base",
         "slices": [{"sources": [{"model": "a", "layer_range": [0, 2], "parameters": params},
                                 {"model": "b", "layer_range": [0, 2], "parameters": params}]}]}
    with pytest.raises(ValueError, match=r"config.slices\[0\].sources: expected the base_model 'base' among "
                                         r"the sources .* got \['a', 'b'\]"):
        config.from_dict(d)
    # with the base among the sources, or no base_model at all, it is accepted
    d["slices"][0]["sources"].append({"model": "base", "layer_range": [0, 2]})
    assert config.from_dict(d).base_model == "base"
    del d["base_model"], d["slices"][0]["sources"][2]
    assert config.from_dict(d).base_model is None


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tree_nearswap_keeps_the_dtype_of_its_inputs(dtype):
    """`merge` returns the dtypes of the base. nearswap's t goes into the kernel as a traced float32
    (a per-layer gradient reuses one compile), and its result was returned in float32 for bfloat16
    or float16 inputs, unlike every other method and unlike `merge yaml`, which casts it to the
    checkpoint's dtype. mergekit: w = clamp(t / max(|base - x|, 1e-6), 0, 1); w x + (1 - w) base."""
    import jax.numpy as jnp

    from jaxinterp.merge.tree_merge import merge

    rng = np.random.default_rng(1)
    np_dtype = np.dtype(jnp.dtype(dtype))
    base = {"h.0.w": rng.normal(size=(3, 5)).astype(np_dtype), "wte": rng.normal(size=(7,)).astype(np_dtype)}
    other = {k: (v.astype(np.float32) + rng.normal(0, 0.5, v.shape)).astype(np_dtype) for k, v in base.items()}
    got = merge("nearswap", [other], base=base, parameters={"t": 0.3})
    for k in base:
        assert got[k].dtype == np_dtype
        b, x = base[k].astype(np.float32), other[k].astype(np.float32)
        w = np.clip(np.float32(0.3) / np.maximum(np.abs(b - x), np.float32(1e-6)), 0, 1)
        # |base - x| is taken in the inputs' dtype (as mergekit does), the rest in float32: within a
        # few units in the last place of the float32 reference
        eps = float(jnp.finfo(np_dtype).eps)
        np.testing.assert_allclose(np.asarray(got[k]).astype(np.float32), w * x + (1 - w) * b,
                                   rtol=0, atol=4 * eps * float(np.abs(b).max() + np.abs(x).max()))


def test_tree_merge_copies_equal_integer_leaves_and_refuses_differing_ones():
    """Integer and boolean leaves (step counters, position ids, masks) are buffers, not weights:
    mergekit (copy_non_floating_buffer) and `merge yaml` copy them when every input holds the same
    values and refuse them by name otherwise. `merge` ran them through the float kernels and cast
    back, so linear of positions [0..3] and [1..4] silently gave [0, 1, 2, 3] (0.5, 1.5, ... truncated)
    and ties gave [0, 1, 3, 4]."""
    from jaxinterp.merge.tree_merge import merge

    a = {"w": np.ones(3, np.float32), "pos": np.arange(4), "mask": np.array([True, False])}
    b = {"w": np.zeros(3, np.float32), "pos": np.arange(4), "mask": np.array([True, False])}
    out = merge("linear", [a, b], parameters={"weight": 1.0})
    np.testing.assert_array_equal(out["w"], [0.5, 0.5, 0.5])
    assert np.asarray(out["pos"]).dtype == a["pos"].dtype and np.asarray(out["mask"]).dtype == bool
    np.testing.assert_array_equal(out["pos"], a["pos"])
    np.testing.assert_array_equal(out["mask"], a["mask"])
    c = dict(b, pos=np.arange(4) + 1)
    for method, kw in [("linear", {"parameters": {"weight": 1.0}}),
                       ("ties", {"base": a, "parameters": {"weight": 1.0, "density": 0.5}})]:
        models = [a, c] if method == "linear" else [c]
        with pytest.raises(ValueError, match=r"pos: expected the same values in every input for a int64 "
                                             r"leaf \(a buffer, copied, not merged\); input 1 differs from input 0"):
            merge(method, models, **kw)


@pytest.mark.parametrize("d,msg", [
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}},
                                           {"model": "b", "parameters": {"weight": 1.0}},
                                           {"model": "./a", "parameters": {"weight": 2.0}}]},
     r"config.models\[2\]: expected each model once, got 'a' again \(as '\./a'; first at models\[0\]\)"),
    ({"merge_method": "ties", "base_model": "base",
      "models": [{"model": "a", "parameters": {"weight": 1.0}}, {"model": "a", "parameters": {"weight": 1.0}}]},
     r"config.models\[1\]: expected each model once, got 'a' again"),
    ({"merge_method": "ties", "base_model": "base",
      "models": ["base", "base", {"model": "a", "parameters": {"weight": 1.0}}]},
     r"config.models\[1\]: expected each model once, got 'base' again"),
    ({"merge_method": "ties", "base_model": "base",
      "slices": [{"sources": [{"model": "base", "layer_range": [0, 2]},
                              {"model": "a", "layer_range": [0, 2], "parameters": {"weight": 1.0}},
                              {"model": "a", "layer_range": [2, 4], "parameters": {"weight": 1.0}}]}]},
     r"config.slices\[0\].sources\[2\]: expected each model once in a slice, got 'a' again"),
])
def test_a_model_listed_twice_is_refused(d, msg):
    """mergekit (InputContract.validate_ids) refuses 'Duplicate merge inputs'. jaxinterp merged the
    model twice: its task vector counted double in ties' sign election and sums, a linear weight
    was split over two entries; with exit 0."""
    with pytest.raises(ValueError, match=msg):
        config.from_dict(d)


@pytest.mark.parametrize("method,kw,n", [
    ("nuslerp", {"parameters": {"weight": 1.0}}, 2), ("multislerp", {"parameters": {"weight": 1.0}}, 3),
    ("model_stock", {}, 2), ("sce", {}, 3), ("arcee_fusion", {}, 1),
    ("ties", {"parameters": {"weight": 1.0, "density": 0.5}}, 3), ("slerp", {"parameters": {"t": 0.3}}, 1),
])
def test_tree_merge_of_mixed_dtypes_returns_the_common_dtype_as_merge_yaml_does(method, kw, n, tmp_path):
    """With a bfloat16 base and float32 fine-tunes, nuslerp, multislerp, model_stock, sce and
    arcee_fusion returned float32 leaves (jnp promotion), the other methods bfloat16; and the kernels
    saw the mixed inputs as they came, where merge yaml (and mergekit's promoted_dtype) first cast
    them to the common float32: arcee_fusion's softmax of the bfloat16 base moved its threshold and
    kept another entry. Now every method merges in the common dtype and returns it, as mergekit
    writes it and `merge yaml` does, with the same values."""
    import jax.numpy as jnp

    from jaxinterp.merge.tree_merge import merge

    bf16 = np.dtype(jnp.bfloat16)
    rng = np.random.default_rng(2)
    names = {"transformer.h.0.mlp.c_fc.weight": (4, 6), "transformer.h.1.ln_1.weight": (6,)}
    base = {k: rng.normal(size=s).astype(bf16) for k, s in names.items()}
    fts = [{k: (v.astype(np.float32) + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in base.items()}
           for _ in range(n)]
    got = merge(method, fts, base=base, **kw)
    refs = []
    for j, t in enumerate([base] + fts):
        d = tmp_path / f"m{j}"
        d.mkdir()
        save_file(t, str(d / "model.safetensors"))
        refs.append(str(d))
    cfg = {"merge_method": method, "base_model": refs[0], "models": refs[1:], "parameters": kw.get("parameters")}
    checkpoint.run_config(config.from_dict(cfg), tmp_path / "out", progress=False)
    from safetensors.numpy import load_file

    want = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k in names:
        assert got[k].dtype == np.float32 and want[k].dtype == np.float32
        if method == "slerp":  # the stream's numpy norms and dot against XLA's: ~1 float32 ulp (BUILD_NOTES)
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=0)
        else:
            np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_a_slice_source_that_is_the_base_merges_as_a_model_for_methods_without_a_base(ckpts, tmp_path):
    """BUILD_NOTES: a base_model with a method that ignores the base (linear, karcher, passthrough)
    merges as one of the models when it is listed among them, as in mergekit (whose contract drops
    the base for these methods; every source is an input with its own parameters). The `models:`
    form did so; the `slices:` form refused it ('does not use a base model; list it among the
    models instead'), although it was listed. mergekit-yaml 0.1.5 merges it: linear, weights 0.3
    (the base) and 1.0, max |diff| 0 against this formula."""
    from safetensors.numpy import load_file

    base, a, _ = ckpts
    cfg = config.from_dict({
        "merge_method": "linear", "base_model": base,
        "slices": [{"sources": [{"model": base, "layer_range": [0, 2], "parameters": {"weight": 0.3}},
                                {"model": a, "layer_range": [1, 3], "parameters": {"weight": 1.0}}]}]})
    checkpoint.run_config(cfg, tmp_path / "out", progress=False)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    B, A = load_file(base + "/model.safetensors"), load_file(a + "/model.safetensors")
    for out_layer in range(2):
        for k in LAYER:
            want = (0.3 * B[f"transformer.h.{out_layer}.{k}"] + 1.0 * A[f"transformer.h.{out_layer + 1}.{k}"]) / 1.3
            np.testing.assert_allclose(got[f"transformer.h.{out_layer}.{k}"], want, rtol=1e-6, atol=1e-6)
    want = (0.3 * B["transformer.wte.weight"] + A["transformer.wte.weight"]) / 1.3
    np.testing.assert_allclose(got["transformer.wte.weight"], want, rtol=1e-6, atol=1e-6)
