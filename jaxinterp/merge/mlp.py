"""A small MLP classifier and its data, for the merging demo, tests and benchmark.

Params are Flax-style: {"Dense_0": {"kernel": [in, h], "bias": [h]}, ...}. Data: scikit-learn's
digits (1797 8x8 images, 10 classes) when scikit-learn is installed; otherwise a synthetic
10-class problem of the same shape (64 features), generated from a fixed seed.

Axis names: N examples, F features, C classes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Data(NamedTuple):
    x_train: np.ndarray  # [N, F] float32
    y_train: np.ndarray  # [N] int32
    x_test: np.ndarray
    y_test: np.ndarray
    name: str


def load_digits(seed: int = 0) -> Data:
    """Digits (standardised; 1347 train / 450 test), or the synthetic stand-in without scikit-learn."""
    try:
        from sklearn.datasets import load_digits as _ld

        d = _ld()
        x, y, name = d.data.astype(np.float32), d.target.astype(np.int32), "scikit-learn digits"
    except ImportError:
        rng = np.random.default_rng(1234)
        centers = rng.normal(size=(10, 64)).astype(np.float32) * 1.5
        y = rng.integers(0, 10, 1797).astype(np.int32)
        x = centers[y] + rng.normal(size=(1797, 64)).astype(np.float32) * 2.0
        name = "synthetic 10-class (scikit-learn not installed)"
    perm = np.random.default_rng(seed).permutation(len(y))
    x, y = x[perm], y[perm]
    mu, sd = x[:1347].mean(0), x[:1347].std(0) + 1e-6
    x = (x - mu) / sd
    return Data(x[:1347], y[:1347], x[1347:], y[1347:], name)


def init(key: jax.Array, sizes: tuple[int, ...] = (64, 128, 128, 10)) -> dict:
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"Dense_{i}": {"kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "bias": jnp.zeros(b)}
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def apply(params: dict, x: jax.Array, *, capture: bool = False):
    """Logits [N, C]; with capture, also the input of every Dense layer (for RegMean)."""
    n = len(params)
    inputs = {}
    for i in range(n):
        inputs[f"Dense_{i}.kernel"] = x
        x = x @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return (x, inputs) if capture else x


def loss(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


def error(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return 1.0 - jnp.mean(jnp.argmax(apply(params, x), -1) == y)


@jax.jit
def accuracy(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(apply(params, x), -1) == y)


@functools.partial(jax.jit, static_argnames=("learning_rate",))
def _train_scan(params, x, y, idx, learning_rate):
    opt = optax.adam(learning_rate)

    def step(carry, ix):
        params, state = carry
        g = jax.grad(loss)(params, (x[ix], y[ix]))
        upd, state = opt.update(g, state, params)
        return (optax.apply_updates(params, upd), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), idx)
    return params


def train(params: dict, x: np.ndarray, y: np.ndarray, *, steps: int = 300, batch: int = 128,
          learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Adam on minibatches drawn with `seed`; the whole loop is one compiled scan."""
    idx = np.random.default_rng(seed).integers(0, len(y), (steps, batch))
    return _train_scan(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(idx), learning_rate)
