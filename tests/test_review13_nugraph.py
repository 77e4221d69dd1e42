"""Review 13 of the NuGraph2 package (model, losses, metrics, training, predict, data): each test
pins one defect found and fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxinterp.nugraph import train


def _torch_onecycle(total_steps, start, mid, end, pct_start=0.3):
    """What torch.optim.lr_scheduler.OneCycleLR.get_lr computes (anneal_strategy 'cos', three_phase
    False) at every step for a value going start -> mid -> end (the rate: lr/25, lr, lr/25e4; Adam's
    beta1 under cycle_momentum: 0.95, 0.85, 0.95), its loop written out in plain Python floats."""
    phases = [(float(pct_start * total_steps) - 1, start, mid), (total_steps - 1, mid, end)]
    out = []
    for step in range(total_steps):
        start_step = 0.0
        for i, (end_step, a, b) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                out.append(b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1))
                break
            start_step = end_step
    return np.array(out)


@pytest.mark.parametrize("total", [1, 2, 3, 5, 10, 27, 64])
def test_onecycle_of_a_short_run_is_torchs(total):
    """The schedule was optax's cosine_onecycle_schedule, whose phases end at int(0.3 T) and T where
    torch's end at 0.3 T - 1 and T - 1: over 10 steps the rate was up to 0.48 lr off torch's (step 1:
    0.28 lr for 0.52 lr), a 2-step run started at the peak (torch: 0.81 lr, then lr/25e4), and the last
    step never reached lr/25e4; beta1 was up to 0.1 off."""
    lr = 1e-3
    _, schedule = train._optimizer(lr, 0.01, total)
    ours = np.array([float(schedule(s)) for s in range(total)])
    np.testing.assert_allclose(ours, _torch_onecycle(total, lr / 25, lr, lr / 25e4), rtol=1e-5, atol=1e-12)
    beta1 = np.array(train.onecycle_momentum(total)(np.arange(total)))
    np.testing.assert_allclose(beta1, _torch_onecycle(total, 0.95, 0.85, 0.95), rtol=0, atol=1e-6)


@pytest.mark.parametrize("field, value, expected", [
    ("planar_features", -2, "an integer >= 1"),  # was: TypeError in init's reshape, after run.json
    ("planar_features", 2.5, "an integer >= 1"),  # was: TypeError 'Shapes must be ... integer type'
    ("nexus_features", 0, "an integer >= 1"),  # was: a training step, then orbax refused the empty arrays
    ("in_features", True, "an integer >= 1"),
    ("num_iters", -1, "an integer >= 0"),  # was: an MLIR error inside the jitted train step
    ("planes", (), "a non-empty list of distinct names"),
    ("planes", ("u", "u", "y"), "a non-empty list of distinct names"),
    ("semantic_classes", "MIP", "a non-empty list of distinct names"),
    ("semantic_classes", ("MIP", 3), "a non-empty list of distinct names"),
])
def test_bad_model_config_names_the_field(field, value, expected):
    from jaxinterp.nugraph.model import NuGraph2Config

    with pytest.raises(ValueError) as err:
        NuGraph2Config(**{field: value})
    assert str(err.value) == f"NuGraph2Config.{field}: expected {expected}, got {value!r}"


def test_model_config_takes_lists_and_numpy_integers_as_the_defaults():
    """The config is a jit and lru_cache key: a list of planes was unhashable there."""
    from jaxinterp.nugraph.model import NuGraph2Config

    cfg = NuGraph2Config(planes=["u", "v", "y"], planar_features=np.int64(64), num_iters=np.int32(5))
    assert cfg == NuGraph2Config() and hash(cfg) == hash(NuGraph2Config())
    assert type(cfg.planar_features) is int and cfg.planes == ("u", "v", "y")



@pytest.mark.parametrize("edit, expected", [
    (lambda n: n["u"][1].__setitem__(2, 0.0), "expected std (row 1, the divisor of the features) > 0, got "
                                               "[1.0, 1.0, 0.0, 1.0]"),
    (lambda n: n["v"][0].__setitem__(0, np.nan), "expected finite values, got [[nan, 0.0, 0.0, 0.0], "
                                                  "[1.0, 1.0, 1.0, 1.0]]"),  # NaN is stored as null
])
def test_model_norm_that_cannot_normalise_is_refused_when_loaded(tmp_path, edit, expected):
    """A model.json norm with a zero std (or a NaN, written as null) loaded, then turned every event's
    features into inf/NaN, and predict refused the *event*: "event 'r1_sr1_evt0', plane 'u', field 'x':
    expected finite values"."""
    import jax

    from jaxinterp.nugraph import evaluate, model

    tiny = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
    norm = {p: np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.float32) for p in tiny.planes}
    edit(norm)
    train.save_model(tmp_path, model.init(jax.random.key(0), tiny), tiny, norm)
    plane = next(p for p in tiny.planes if not np.array_equal(norm[p], [[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError) as err:
        evaluate.load_model(tmp_path)
    assert str(err.value) == f"params: {tmp_path / 'model.json'} norm[{plane!r}]: {expected}"


def _official_balanced_batches(datasize, batch_size, balance_frac, rng):
    """nugraph's BalanceSampler.__iter__ (its shuffles drawn from `rng`), then what the DataLoader
    does with the indices it yields: batches of batch_size, drop_last=True."""
    n = len(datasize)
    num_batches = n // batch_size
    num_outliers = int(np.floor(n * balance_frac))
    order = np.argsort(datasize, kind="stable")
    largest, rest = order[n - num_outliers:].copy(), order[:n - num_outliers].copy()
    rng.shuffle(largest)
    rng.shuffle(rest)
    bins = [[] for _ in range(num_batches)]
    idx = -1
    for i, k in enumerate(largest):
        idx = i % num_batches
        bins[idx].append(k)
    offset = idx + 1
    for i, k in enumerate(rest):
        idx = (i + offset) % num_batches
        if len(bins[idx]) == batch_size:
            break
        bins[idx].append(k)
    indices = []
    for b in bins:
        b = np.asarray(b, np.int64)
        rng.shuffle(b)
        indices += list(b)
    return [indices[i * batch_size:(i + 1) * batch_size] for i in range(len(indices) // batch_size)]


@pytest.mark.parametrize("n, batch, frac", [(10, 4, 1.0), (10, 4, 0.9), (23, 5, 0.95), (100, 10, 0.1),
                                            (64, 8, 0.5), (37, 5, 0.0)])
def test_balanced_batches_hold_batch_size_events_as_the_official_loader(n, batch, frac):
    """When the largest balance_frac of the events outnumber the batches' places (frac near 1, which
    TrainConfig allows), a batch held more than batch_size events: [5, 5] for 10 events in batches of
    4 at frac 1.0 (all 10 trained on, each step's mean over 5 events). The official sampler's bins are
    cut into batches of batch_size by the DataLoader: [4, 4]."""
    sizes = np.random.default_rng(n).integers(100, 10_000, n)
    got = train.balanced_batches(sizes, batch, frac, np.random.default_rng([7, n]))
    want = _official_balanced_batches(sizes, batch, frac, np.random.default_rng([7, n]))
    assert [len(b) for b in got] == [batch] * (n // batch)
    assert [list(b) for b in got] == [list(b) for b in want]


@pytest.mark.parametrize("classes", [("MIP", "HIP", "shower"), ("MIP", "HIP", "shower", "michel", "diffuse", "x", "y")])
def test_metrics_of_counts_and_class_names_that_disagree_is_a_value_error(classes):
    """compute(counts of 5 classes, 3 names) was an IndexError from the macro mean ('boolean index did
    not match'), 7 names an IndexError from the recall loop."""
    from jaxinterp.nugraph import metrics

    counts = metrics.Counts.zeros(5).add(np.arange(5), np.eye(5), np.ones(5))
    with pytest.raises(ValueError) as err:
        metrics.compute(counts, classes)
    assert str(err.value) == f"classes: expected 5 names (the counts' classes), got {len(classes)}: {list(classes)}"


@pytest.mark.parametrize("max_steps", [2.5, -1, True, "3"])
def test_train_refuses_a_max_steps_that_is_not_a_count_before_writing(tmp_path, max_steps):
    """max_steps 2.5 trained 3 steps and saved none (the stop's checkpoint waits for step == max_steps):
    a resume started again from step 0; -1 wrote a run folder and trained nothing (0 sets a run up)."""
    from jaxinterp.nugraph import hdf5, simulate

    events = simulate.simulate(3, seed=3, config=simulate.SimConfig(max_hits_per_plane=40))
    data = hdf5.write_events(tmp_path / "d.gnn.h5", events, splits={"train": [e.name for e in events]})
    with pytest.raises(ValueError) as err:
        train.train(data, tmp_path / "run", config=train.TrainConfig(epochs=1, batch_size=2), max_steps=max_steps,
                    progress=False, log=lambda s: None)
    assert str(err.value) == f"max_steps: expected None or an integer >= 0, got {max_steps!r}"
    assert not (tmp_path / "run").exists()
