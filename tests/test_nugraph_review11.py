"""NuGraph2 model side, review 11: each test failed on the code before its fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.nugraph import losses


@pytest.mark.parametrize("jit", [False, True])
def test_bce_gradient_is_torchs_where_the_sigmoid_saturates(jit):
    # float32 sigmoid(20) is exactly 1.0: the clamped logs' derivative was 0 * inf = NaN, on a
    # masked padding hit too; torch's BCELoss backward is (p - t) / max(p (1 - p), 1e-12), so the
    # gradient through the saturated sigmoid is 0 and the others are unchanged
    target = jnp.array([1.0, 0.0, 0.0, 1.0])
    mask = jnp.array([True, True, True, False])

    def f(logit):
        return losses.binary_cross_entropy(jax.nn.sigmoid(logit), target, mask)

    grad = jax.jit(jax.grad(f)) if jit else jax.grad(f)
    logit = jnp.array([20.0, -0.2, 20.0, 20.0], jnp.float32)
    assert float(jax.nn.sigmoid(logit)[0]) == 1.0
    g = np.asarray(grad(logit))
    p = float(jax.nn.sigmoid(-0.2))
    np.testing.assert_allclose(g, [0.0, p / 3, 0.0, 0.0], rtol=1e-6, atol=0)
    # directly on probabilities: torch's (p - t) / max(p (1 - p), 1e-12), divided by the 3 real hits
    gp = np.asarray(jax.grad(lambda q: losses.binary_cross_entropy(q, target, mask))(jnp.array([1.0, 0.25, 1.0, 0.0])))
    np.testing.assert_allclose(gp, [0.0, (0.25 / (0.25 * 0.75)) / 3, 1e12 / 3, 0.0], rtol=1e-6)


# --- predict: bad input refused before anything runs ---------------------------------------------

from jaxinterp.nugraph import graph, model, predict as predict_mod  # noqa: E402
from test_nugraph_graph import random_event  # noqa: E402

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)


@pytest.fixture(scope="module")
def tiny_params():
    return jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(0), TINY))


def _no_trace(monkeypatch):
    def traced(*a, **kw):
        raise AssertionError("the forward ran")
    monkeypatch.setattr(predict_mod, "forward", traced)


def test_predict_refuses_params_of_another_config_by_name(tiny_params, monkeypatch):
    # params of a 8/4-feature model with the default (64/16) config failed inside the traced
    # einsum: "Size of label 'f' for operand 1 (4) does not match previous terms (0)"
    _no_trace(monkeypatch)
    events = [random_event(np.random.default_rng(0))]
    with pytest.raises(ValueError, match=r"predict: params: encoder/u/kernel expected shape \[5, 4, 64\] .*got \[5, 4, 8\]"):
        predict_mod.predict(tiny_params, events)
    no_encoder = {k: v for k, v in tiny_params.items() if k != "encoder"}
    with pytest.raises(ValueError, match=r"missing keys \['encoder'\], unknown keys \[\]"):  # was KeyError 'encoder'
        predict_mod.predict(no_encoder, events, config=TINY)
    bad = {**tiny_params, "nexus_net": {**tiny_params["nexus_net"], "nexus_net_1": np.zeros(3)}}
    with pytest.raises(ValueError, match="nexus_net/nexus_net_1 expected a dict"):
        predict_mod.predict(bad, events, config=TINY)
    model.check_params(tiny_params, TINY)  # the right ones pass, numpy or jax
    model.check_params(jax.tree.map(jnp.asarray, tiny_params), TINY)


@pytest.mark.parametrize("batch_size", [2.0, None, True, "4"])
def test_predict_batch_size_must_be_an_integer(tiny_params, monkeypatch, batch_size):
    # 2.0 was a TypeError from range(), None one from '<' (BUILD_NOTES' API line shows batch_size=None)
    _no_trace(monkeypatch)
    with pytest.raises(ValueError, match="predict: batch_size must be an integer, got"):
        predict_mod.predict(tiny_params, [random_event(np.random.default_rng(0))], config=TINY, batch_size=batch_size)


def test_prepare_of_no_event_without_sizes_names_the_problem():
    # was numpy's "zero-size array to reduction operation maximum which has no identity"
    with pytest.raises(ValueError, match="prepare: events must hold at least one Event"):
        predict_mod.prepare([], config=TINY)


# --- widen and official checkpoints: bad input refused by name ------------------------------------

from pathlib import Path  # noqa: E402

from jaxinterp import torch_pickle  # noqa: E402
from jaxinterp.nugraph import checkpoint, widen  # noqa: E402

CKPT = Path(__file__).parent / "fixtures" / "nugraph2_reference.ckpt"


@pytest.mark.parametrize("kw, message", [
    ({"noise": float("nan")}, "noise must be a finite number >= 0, got nan"),  # was: every widened kernel NaN
    ({"noise": float("inf")}, "noise must be a finite number >= 0, got inf"),
    ({"factor": 2.0}, "factor must be an integer >= 1, got 2.0"),  # was a TypeError from np.tile
    ({"factor": 1.5}, "factor must be an integer >= 1, got 1.5"),
])
def test_widen_refuses_non_finite_noise_and_fractional_factor(tiny_params, kw, message):
    with pytest.raises(ValueError, match=message):
        widen.widen(tiny_params, TINY, **kw)


@pytest.fixture(scope="module")
def official_ckpt():
    return torch_pickle.load(CKPT)


def _load_with_hparams(monkeypatch, ckpt, **hp):
    edited = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], **hp}}
    monkeypatch.setattr(checkpoint.torch_pickle, "load", lambda path, **_: edited)
    return checkpoint.load_official_checkpoint(CKPT)


def test_official_checkpoint_names_given_as_tuples_load(monkeypatch, official_ckpt):
    # a model built with planes=('u', 'v', 'y') pickles a tuple: int(tuple) raised a TypeError
    got = _load_with_hparams(monkeypatch, official_ckpt, planes=("u", "v", "y"),
                             semantic_classes=("MIP", "HIP", "shower", "michel", "diffuse"), planar_features=64.0)
    assert got.config == model.NuGraph2Config()


@pytest.mark.parametrize("hp, message", [
    ({"planes": "uvy"}, r"hyper_parameters\['planes'\] must be a list of names, got 'uvy'"),  # was int('uvy')
    ({"planar_features": [64]}, r"hyper_parameters\['planar_features'\] must be a positive integer, got \[64\]"),
    ({"num_iters": 2.5}, r"hyper_parameters\['num_iters'\] must be a positive integer, got 2.5"),  # was 2 silently
])
def test_official_checkpoint_bad_hyper_parameters_are_named(monkeypatch, official_ckpt, hp, message):
    with pytest.raises(ValueError, match=message):
        _load_with_hparams(monkeypatch, official_ckpt, **hp)


def test_load_params_of_a_file_or_a_folder_without_a_checkpoint_is_a_value_error(tmp_path):
    # were NotADirectoryError and AttributeError ('NoneType' object has no attribute 'tree')
    (tmp_path / "params.npz").write_bytes(b"not orbax")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="load_params: expected an orbax checkpoint folder .*got the file"):
        checkpoint.load_params(tmp_path / "params.npz")
    with pytest.raises(ValueError, match="load_params: expected an orbax checkpoint folder .*a folder that holds none"):
        checkpoint.load_params(tmp_path / "run", config=TINY)


def test_predict_keeps_float64_inputs_with_float64_params():
    # predict padded every event's features as float32 whatever the params: with float64 params
    # (jax_enable_x64) the official fixtures came out 2.8e-10 off instead of 1e-16
    rng = np.random.default_rng(4)
    e = random_event(rng, (9, 6, 11), 4, "d")
    e = e._replace(planes={p: h._replace(x=rng.normal(size=h.x.shape)) for p, h in e.planes.items()})  # not float32
    with jax.enable_x64(True):
        params = model.init(jax.random.PRNGKey(2), TINY, dtype=jnp.float64)
        pred, = predict_mod.predict(params, [e], config=TINY)
        out = jax.jit(lambda b: model.apply(params, b, config=TINY),
                      compiler_options={"xla_backend_optimization_level": 0})(graph.pad_batch([e], dtype=np.float64))
        for pi, p in enumerate(e.planes):
            n = e.planes[p].x.shape[0]
            assert pred.filter[p].dtype == np.float64
            # measured 0 and 5.6e-17 (was held to 1e-13)
            np.testing.assert_allclose(pred.filter[p], out.x_filter[pi, :n], rtol=0, atol=2e-15)
            np.testing.assert_allclose(pred.semantic[p], jax.nn.softmax(out.x_semantic[pi, :n]), rtol=0, atol=2e-15)
