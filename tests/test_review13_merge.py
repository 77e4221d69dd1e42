"""Review 13 of the merge package: each test failed on the code before its fix."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp.merge import checkpoint, config


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
