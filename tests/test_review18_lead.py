"""Session 18, lead: fixes found while reading the session's other changes."""

from __future__ import annotations

import os
import signal

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


def test_ctrl_c_in_training_saves_the_step_and_the_command_says_so(tmp_path, monkeypatch, capsys):
    """Ctrl-C in `nugraph train` raised KeyboardInterrupt inside the step (a traceback; every step since
    the last checkpoint lost, and inside the jitted call the donated state could be gone); now the step
    under way finishes, is checkpointed, and the command exits 130 with one line; the same command
    resumes from that step and ends with the uninterrupted run's params."""
    from jaxinterp.nugraph import hdf5, simulate, train
    from test_review14_nugraph import _cli

    cfg = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5, max_hits_per_plane=60)
    events = simulate.simulate(10, seed=21, config=cfg)
    names = [e.name for e in events]
    data = hdf5.write_events(tmp_path / "tiny.gnn.h5", events,
                             splits={"train": names[:8], "validation": names[8:], "test": []})
    # --iterations 2: not test_nugraph_train's model, whose compiles it counts (one process may run both)
    argv = ["nugraph", "train", str(data), "--epochs", "1", "--batch-size", "4", "--planar-features", "8",
            "--nexus-features", "4", "--iterations", "2", "--checkpoint-every", "100", "--limit-val", "0"]
    assert _cli(argv + ["--out", str(tmp_path / "straight")], monkeypatch) == 0
    capsys.readouterr()

    made, real_pad = [], train.pad_batch

    class Recorded(train._Interrupt):
        def __enter__(self):
            made.append(self)
            return super().__enter__()

    def pad_and_press_ctrl_c(*a, **kw):  # Ctrl-C arrives while the first step is being prepared
        if not made[0].asked:
            made[0]._handle(signal.SIGINT, None)
        return real_pad(*a, **kw)

    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        m.setattr(train, "_Interrupt", Recorded)
        m.setattr(train, "pad_batch", pad_and_press_ctrl_c)
        assert _cli(argv + ["--out", str(out)], monkeypatch) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("jaxinterp nugraph: interrupted: training interrupted at step 1 of 2; its "
                                            "checkpoint is written: the same command resumes from it"), err
    assert "Traceback" not in err
    assert not (out / "model.npz").exists()
    assert _cli(argv + ["--out", str(out)], monkeypatch) == 0
    assert "resumed from the checkpoint at step 1 of 2" in capsys.readouterr().out
    a, b = np.load(tmp_path / "straight" / "model.npz"), np.load(out / "model.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
