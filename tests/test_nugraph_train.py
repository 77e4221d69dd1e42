"""Training: balanced batches, one compilation, resume after a stop or a kill loses nothing."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxinterp.nugraph import hdf5, simulate, train
from jaxinterp.nugraph.model import NuGraph2Config

TINY = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
TC = train.TrainConfig(epochs=1, batch_size=4, checkpoint_every=1, eval_batch_size=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = simulate.SimConfig(mean_energy_gev=0.3, max_energy_gev=0.5, max_hits_per_plane=60)
    events = simulate.simulate(10, seed=21, config=cfg)
    names = [e.name for e in events]
    path = tmp_path_factory.mktemp("data") / "tiny.gnn.h5"
    return hdf5.write_events(path, events, splits={"train": names[:8], "validation": names[8:], "test": []})


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The reference: 2 steps (one epoch of 8 events in batches of 4) without interruption."""
    return train.train(data, tmp_path_factory.mktemp("run") / "straight", config=TC, model_config=TINY,
                       progress=False, log=lambda s: None)


def _same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_straight_run_finishes_with_model_and_metrics(straight):
    assert straight.finished and straight.steps == 2
    assert len(straight.history) == 1
    h = straight.history[0]
    assert 0 <= h["filter_efficiency"] <= 1 and np.isfinite(h["val_loss"])
    # strict JSON: a class with no hit in these tiny events has a NaN score, written as null (was NaN)
    def no_nan(v):
        if isinstance(v, dict):
            return {k: no_nan(x) for k, x in v.items()}
        return None if isinstance(v, float) and not np.isfinite(v) else v

    def refuse(name):
        raise AssertionError(f"{name} in metrics.json")

    got = json.loads((straight.out_dir / "metrics.json").read_text(), parse_constant=refuse)
    assert got == [no_nan(e) for e in straight.history] and None in got[0]["efficiency"].values()
    desc = json.loads((straight.out_dir / "model.json").read_text())
    assert desc["config"]["planar_features"] == 8 and set(desc["norm"]) == {"u", "v", "y"}
    # the step compiled once for both batches (the size policy pads them alike)
    assert train._train_step(TINY, TC.lr, TC.weight_decay, 2)._cache_size() == 1


def test_stop_and_resume_equals_straight(data, straight, tmp_path):
    out = tmp_path / "stopped"
    first = train.train(data, out, config=TC, model_config=TINY, max_steps=1, progress=False, log=lambda s: None)
    assert not first.finished and first.steps == 1 and not (out / "model.npz").exists()
    lines = []
    second = train.train(data, out, config=TC, model_config=TINY, progress=False, log=lines.append)
    assert "resumed from the checkpoint at step 1 of 2" in lines
    assert second.finished and second.steps == 2
    _same_params(second.params, straight.params)
    assert second.history[0]["val_loss"] == straight.history[0]["val_loss"]
    # the epoch's mean training loss counts the step before the stop once, as the straight run does
    assert second.history[0]["train_loss"] == straight.history[0]["train_loss"]
    assert second.history[0]["train_loss_steps"] == 2


def test_epoch_train_loss_is_the_mean_over_its_steps(data, tmp_path, monkeypatch):
    """It was the loss of the epoch's last batch (one batch of 4 events standing for the epoch)."""
    real, losses = train._train_step, []

    def recording(*a):
        step = real(*a)

        def run(state, batch):
            state, parts = step(state, batch)
            losses.append(float(parts.total))
            return state, parts
        return run

    monkeypatch.setattr(train, "_train_step", recording)
    two = train.TrainConfig(epochs=2, batch_size=4, checkpoint_every=1, eval_batch_size=8)
    res = train.train(data, tmp_path / "run", config=two, model_config=TINY, progress=False, log=lambda s: None)
    assert len(losses) == 4 and losses[0] != losses[1]
    for epoch, h in enumerate(res.history):
        mine = losses[2 * epoch: 2 * epoch + 2]
        assert h["train_loss"] == sum(mine) / 2 and h["train_loss_steps"] == 2 and h["train_loss_last"] == mine[1]


def test_training_seconds_run_on_across_a_resume(data, tmp_path, monkeypatch):
    """metrics.json's seconds count the first part's training too (they restarted at 0 before)."""
    clock = {"t": 1000.0}

    def tick():  # every reading of the clock is 10 s after the last
        clock["t"] += 10.0
        return clock["t"]

    monkeypatch.setattr(train, "_clock", tick)
    out = tmp_path / "timed"
    train.train(data, out, config=TC, model_config=TINY, max_steps=1, progress=False, log=lambda s: None)
    clock["t"] = 0.0  # a new process: the clock's origin is anywhere
    second = train.train(data, out, config=TC, model_config=TINY, progress=False, log=lambda s: None)
    # first part: start 1010, checkpoint 1020 (10 s); second: start 10 (-> 0 s), validation 20, so 10 + 10
    assert second.history[0]["seconds"] == pytest.approx(20.0)


def test_killed_run_resumes_from_its_last_checkpoint(data, straight, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = train.pad_batch
    calls = {"n": 0}

    def dies_on_second_batch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(train, "pad_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        train.train(data, out, config=TC, model_config=TINY, progress=False, log=lambda s: None)
    monkeypatch.setattr(train, "pad_batch", real)
    resumed = train.train(data, out, config=TC, model_config=TINY, progress=False, log=lambda s: None)
    assert resumed.finished
    _same_params(resumed.params, straight.params)


def test_resume_with_other_settings_is_refused(data, straight):
    with pytest.raises(ValueError, match="holds a run with other settings"):
        train.train(data, straight.out_dir, config=TC, model_config=NuGraph2Config(planar_features=16,
                    nexus_features=4, num_iters=1), progress=False, log=lambda s: None)


def test_batch_larger_than_data_is_refused(data, tmp_path):
    with pytest.raises(ValueError, match="batch_size: 64 is more than the 8 training events"):
        train.train(data, tmp_path / "x", config=train.TrainConfig(), model_config=TINY, progress=False,
                    log=lambda s: None)


@pytest.mark.parametrize("n, batch, frac", [(100, 10, 0.1), (64, 8, 0.25), (37, 5, 0.0), (10, 10, 0.1)])
def test_balanced_batches_spread_the_largest(n, batch, frac):
    sizes = np.random.default_rng(n).permutation(n) * 10 + 1
    bins = train.balanced_batches(sizes, batch, frac, np.random.default_rng(0))
    assert len(bins) == n // batch and all(len(b) == batch for b in bins)
    flat = np.concatenate(bins)
    assert len(np.unique(flat)) == flat.size  # no event twice
    n_large = int(n * frac)
    largest = set(np.argsort(sizes)[n - n_large:].tolist())
    per_bin = [len(largest & set(b.tolist())) for b in bins]
    assert max(per_bin) - min(per_bin) <= 1 and sum(per_bin) == n_large
    with pytest.raises(ValueError, match="batch_size: 11 is more than the 10 training events"):
        train.balanced_batches(sizes[:10], 11, frac, np.random.default_rng(0))


def test_train_command(data, straight, tmp_path, monkeypatch, capsys):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    out = tmp_path / "cli_run"
    argv = ["nugraph", "train", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "4",
            "--planar-features", "8", "--nexus-features", "4", "--iterations", "1", "--checkpoint-every", "1"]
    assert cli.main(argv + ["--max-steps", "1"]) == 0  # stopped early on purpose: no model yet
    assert "stopped at step 1" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "finished at step 2" in capsys.readouterr().out
    _same_params(evaluate_params(out), straight.params)
    assert cli.main(["nugraph", "train", str(tmp_path / "missing.h5"), "--out", str(out)]) == 2


def evaluate_params(folder):
    from jaxinterp.nugraph import evaluate

    return evaluate.load_model(folder).params


def test_warm_start_from_a_trained_model(data, straight, tmp_path, monkeypatch, capsys):
    """--init: a run starts from a trained model's params (run.json names it); other shapes are refused."""
    from jaxinterp import cli

    out = tmp_path / "warm"
    res = train.train(data, out, config=TC, model_config=TINY, max_steps=0, progress=False, log=lambda s: None,
                      init_params=straight.params, init_name="straight")
    _same_params(res.params, straight.params)  # no step taken: the start is the given params
    assert json.loads((out / "run.json").read_text())["init"] == "straight"
    other = NuGraph2Config(planar_features=16, nexus_features=4, num_iters=1)
    with pytest.raises(ValueError, match="init_params: expected NuGraph2 params of the model config"):
        train.train(data, tmp_path / "bad", config=TC, model_config=other, init_params=straight.params,
                    progress=False, log=lambda s: None)
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    argv = ["nugraph", "train", str(data), "--out", str(tmp_path / "cli_warm"), "--epochs", "1", "--batch-size", "4",
            "--planar-features", "16", "--nexus-features", "4", "--iterations", "1", "--init", str(straight.out_dir)]
    assert cli.main(argv) == 2
    assert "--init:" in capsys.readouterr().err


def test_size_policy_holds_what_validate_accepts():
    """The policy's budgets bound every field by its own ratio to the hit count: here each hit of a
    plane hangs off one of 10 space points (70 nexus edges a plane), which `validate` accepts and the
    space-point ratio alone (10 per 70 hits) did not hold; and batches of a few hits pad to sizes
    `pad_batch` takes (its least sizes, not its bucket grid, are the bound)."""
    from test_nugraph_graph import random_event

    from jaxinterp.nugraph import graph
    from jaxinterp.nugraph.event import Event, validate

    rng = np.random.default_rng(0)
    e = random_event(rng, (70, 70, 70), 10, "shared")
    e = Event({p: h._replace(edge_index_nexus=np.stack([np.arange(70), np.arange(70) % 10])) for p, h in e.planes.items()},
              10, "shared")
    validate(e)
    small = [random_event(rng, (3, 5, 4), 2, f"s{i}") for i in range(3)]
    policy = train.SizePolicy([e, *small])
    for batch in ([e], small, small[:1], [e, *small]):
        sizes = policy.sizes(batch)
        assert all(a >= b for a, b in zip(sizes, graph.least_sizes(batch)))
        graph.pad_batch(batch, sizes)


def test_validation_loss_weights_batches_by_their_events(data):
    """A short last batch counts for the events it holds, not as much as a full one."""
    from jaxinterp.nugraph import model

    events, _ = hdf5.load_events(data)
    events = events[:5]
    params = model.init(jax.random.key(0), TINY)
    policy = train.SizePolicy(events, TINY.planes)
    _, loss = train.evaluate_events(params, events, TINY, batch_size=2, policy=policy)
    parts = [train.evaluate_events(params, events[i:i + 2], TINY, batch_size=2, policy=policy)[1] for i in (0, 2, 4)]
    assert loss == pytest.approx((2 * parts[0] + 2 * parts[1] + parts[2]) / 5, rel=1e-6)
    assert loss != pytest.approx(np.mean(parts), rel=1e-6)


def _torch_onecycle(total, lr, pct=0.3, div=25.0, final_div=1e4, base_m=0.85, max_m=0.95, ends=None):
    """PyTorch OneCycleLR's (lr, beta1) at every step, its formulas written out in numpy (cos
    annealing, two phases; torch ends phase 1 at step pct * total - 1 and phase 2 at total - 1,
    optax at int(pct * total) and total: `ends` moves them)."""
    cos = lambda a, b, t: b + (a - b) / 2 * (np.cos(np.pi * t) + 1)  # noqa: E731
    ends = [pct * total - 1, total - 1] if ends is None else ends
    out = []
    for step in range(total):
        start = 0.0
        for i, end in enumerate(ends):
            if step <= end or i == 1:
                t = (step - start) / (end - start)
                lrs = (lr / div, lr) if i == 0 else (lr, lr / div / final_div)
                ms = (max_m, base_m) if i == 0 else (base_m, max_m)
                out.append((cos(*lrs, t), cos(*ms, t)))
                break
            start = end
    return np.array(out)


def test_optimizer_follows_torch_onecycle():
    """Learning rate and Adam's beta1 per step against torch's OneCycleLR (cycle_momentum, its
    default), its phase boundaries included (step pct * total - 1 and total - 1)."""
    total, lr = 200, 1e-3
    opt, schedule = train._optimizer(lr, 0.01, total)
    steps = np.arange(total)
    beta1 = np.array(train.onecycle_momentum(total)(steps))
    want = _torch_onecycle(total, lr)
    lr_ours = np.array([schedule(s) for s in steps])
    # torch's formulas and constants exactly (div 25, final div 1e4, 0.95 -> 0.85): float32 near lr/25e4
    np.testing.assert_allclose(lr_ours, want[:, 0], rtol=1e-4, atol=1e-11)
    np.testing.assert_allclose(beta1, want[:, 1], rtol=0, atol=1e-6)
    assert beta1[0] == pytest.approx(0.95) and beta1.min() == pytest.approx(0.85)
    assert lr_ours[-1] == pytest.approx(lr / 25e4, rel=1e-4)  # the last step at the floor, as torch's
    assert steps[np.argmin(beta1)] == steps[np.argmax(lr_ours)] == 59  # beta1 lowest where the rate peaks
    # the optimiser uses it: after k updates its injected beta1 is the schedule's value at step k
    params = {"w": jax.numpy.ones(3)}
    state = opt.init(params)
    for _ in range(60):
        _, state = opt.update({"w": jax.numpy.ones(3)}, state, params)
    assert float(state.hyperparams["b1"]) == pytest.approx(float(beta1[59]), abs=1e-7)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(lr_ours[59]), rel=1e-6)
