"""Net2WiderNet for NuGraph2: the widened model computes the same function; bad input is refused."""

import jax
import numpy as np
import pytest

from jaxinterp.nugraph import graph, model
from jaxinterp.nugraph.widen import widen
from test_nugraph_graph import random_event


# Jitted at XLA's backend optimisation level 0, as the parity tests are: op by op the three forwards
# took 25 s, compiled normally 15 s.
_apply = jax.jit(model.apply, static_argnames="config", compiler_options={"xla_backend_optimization_level": 0})


def _outputs(params, config, batch):
    out = _apply(jax.tree.map(np.asarray, params), batch, config=config)
    return np.asarray(out.x_semantic), np.asarray(out.x_filter)


def test_widen_keeps_the_function_and_doubles_the_features():
    config = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)
    params = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(3), config))
    rng = np.random.default_rng(0)
    batch = graph.pad_batch([random_event(rng), random_event(rng, hits=(20, 7, 11), num_sp=9)])
    wide_params, wide = widen(params, config)
    assert (wide.planar_features, wide.nexus_features) == (16, 8)
    assert jax.tree.map(np.shape, wide_params) == jax.tree.map(np.shape, model.init(jax.random.PRNGKey(0), wide))
    sem, fil = _outputs(params, config, batch)
    wsem, wfil = _outputs(wide_params, wide, batch)
    mask = np.asarray(batch.hit_mask)
    # measured 6.0e-8 for both (the semantic tolerance was 2e-5, 335x that)
    np.testing.assert_allclose(wsem[mask], sem[mask], rtol=0, atol=1e-6)
    np.testing.assert_allclose(wfil[mask], fil[mask], rtol=0, atol=1e-6)
    noisy, _ = widen(params, config, noise=0.05)  # seeded (seed 0)
    nsem, _ = _outputs(noisy, wide, batch)
    # the copies differ, the function barely: measured 4.5e-3 on logits of at most 0.32 (0.5 before)
    assert 1e-4 < np.abs(nsem[mask] - sem[mask]).max() < 0.05


def test_widen_refuses_bad_input():
    config = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)
    params = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(3), config))
    # (the matches were the bare words "factor", "noise" and "shapes")
    with pytest.raises(ValueError, match=r"widen: factor must be an integer >= 1, got 0"):
        widen(params, config, factor=0)
    with pytest.raises(ValueError, match=r"widen: noise must be a finite number >= 0, got -1.0"):
        widen(params, config, noise=-1.0)
    with pytest.raises(ValueError, match=r"widen: params do not have the shapes of the config: encoder/u/kernel "
                                         r"expected shape \[5, 4, 16\] .*got \[5, 4, 8\]"):
        widen(params, model.NuGraph2Config(planar_features=16, nexus_features=4))


def test_widen_command_writes_a_model_that_train_init_can_start_from(tmp_path):
    """`jaxinterp nugraph widen`: the folder it writes loads with evaluate.load_model (hash checked),
    has the doubled config and the source's norm, and computes the source's function at noise 0."""
    import json

    from jaxinterp import cli
    from jaxinterp.nugraph import evaluate
    from jaxinterp.nugraph.event import PLANES
    from jaxinterp.nugraph.train import save_model

    config = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)
    params = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(3), config))
    norm = {p: np.stack([np.arange(4.0), np.ones(4)]).astype(np.float32) for p in PLANES}
    save_model(tmp_path / "small", params, config, norm)
    out = tmp_path / "wide"
    assert cli.main(["nugraph", "widen", "--params", str(tmp_path / "small"), "--out", str(out)]) == 0
    wide = evaluate.load_model(out)
    assert (wide.config.planar_features, wide.config.nexus_features) == (16, 8)
    assert all(np.array_equal(wide.norm[p], norm[p]) for p in PLANES)
    assert "factor 2, noise 0.0" in json.loads((out / "model.json").read_text())["widened_from"]
    rng = np.random.default_rng(0)
    batch = graph.pad_batch([random_event(rng)])
    mask = np.asarray(batch.hit_mask)
    np.testing.assert_allclose(_outputs(wide.params, wide.config, batch)[0][mask],
                               _outputs(params, config, batch)[0][mask], rtol=0, atol=1e-6)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit):  # an output that is a file: argparse refuses it before any work
        cli.main(["nugraph", "widen", "--params", str(tmp_path / "small"), "--out", str(tmp_path / "afile")])
