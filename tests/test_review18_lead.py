"""Session 18, lead: fixes found while reading the session's other changes."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

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


class _Stop(Exception):
    pass


def _demo_draws(monkeypatch, seed: int) -> list[tuple[int, int]]:
    """(numpy seed, examples) of each of the merge demo's six trainings: models A and B, the base, the
    three fine-tunes (their shards' sizes come from the shard masks)."""
    from jaxinterp.merge import curves, demo, mlp

    draws = []

    def train(params, x, y, *, seed, **kw):
        draws.append((seed, len(y)))
        if len(draws) == 6:
            raise _Stop
        return params

    with monkeypatch.context() as m, pytest.raises(_Stop):
        m.setattr(mlp, "train", train)
        m.setattr(curves, "fit_bezier", lambda loss, pa, pb, batches, **kw: type("Fit", (), {"bend": pa}))
        demo.run(quick=True, seed=seed)
    return draws


def test_merge_demo_numpy_draws_follow_the_seed(monkeypatch):
    """run(seed=...) changed the data split and the init keys, but every training drew its batches with
    a fixed seed (1, 2, 3, 10 + j) and each shard its extra examples with default_rng(j): two seeds'
    runs trained on the same batches. Now each draw comes from (seed, k)."""
    a, b = _demo_draws(monkeypatch, 0), _demo_draws(monkeypatch, 1)
    assert _demo_draws(monkeypatch, 1) == b  # deterministic
    seeds_a, seeds_b = [s for s, _ in a], [s for s, _ in b]
    assert len(set(seeds_a + seeds_b)) == 12, (seeds_a, seeds_b)  # no draw shared within or across the runs
    assert [n for _, n in a[3:]] != [n for _, n in b[3:]]  # the shards' extra examples differ


def test_merge_demo_random_merges_follow_the_seed(monkeypatch):
    """The demo's merges (DARE's and DELLA's random drops among them) ran with merge's default seed 0
    whatever run(seed=...) said; they now take the run's seed."""
    from jaxinterp.merge import curves, demo, mlp, tree_merge

    seeds = []

    def merge(method, models, *, seed=0, **kw):
        seeds.append(seed)
        raise _Stop

    for s in (0, 7):
        with monkeypatch.context() as m, pytest.raises(_Stop):
            m.setattr(mlp, "train", lambda params, *a, **k: params)
            m.setattr(curves, "fit_bezier", lambda loss, pa, pb, batches, **kw: type("Fit", (), {"bend": pa}))
            m.setattr(tree_merge, "merge", merge)
            demo.run(quick=True, seed=s)
    assert seeds == [0, 7]
