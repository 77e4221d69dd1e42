"""Session 18, lead: fixes found while reading the session's other changes."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxinterp.nugraph import checkpoint, model

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)


def test_save_params_under_a_name_near_name_max(tmp_path):
    """save_params stages the checkpoint in a folder named after the target: with the whole name in it,
    a target of 240-255 bytes (writable itself) failed on the staging folder (ENAMETOOLONG), as
    atomic's temporaries did before 49bbea2; now the staging name keeps at most 40 bytes of it."""
    params = model.init(jax.random.PRNGKey(0), TINY)
    path = tmp_path / ("p" * 250)
    checkpoint.save_params(path, params)
    for a, b in zip(jax.tree.leaves(checkpoint.load_params(path, config=TINY)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["p" * 250]  # no staging folder left
