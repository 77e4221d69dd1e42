"""Review 14 of the merge package: each test failed on the code before its fix."""

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
