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


def check_params(params: dict, n_features: int, n_classes: int, arg: str = "params") -> None:
    """ValueError unless params are `init`'s layout for this data: layers Dense_0..Dense_{L-1}, each a
    float kernel [in, out] and bias [out], chained, from n_features inputs to n_classes logits. An MLP
    of 5 logits for 10 classes gave a NaN loss (labels 5-9 index past the logits), silently."""
    want = [f"Dense_{i}" for i in range(len(params))]
    if sorted(params) != sorted(want):
        raise ValueError(f"{arg}: expected layers {want[:3]}{'...' if len(want) > 3 else ''} (Dense_0 to "
                         f"Dense_{len(want) - 1}, as `init` names them), got {sorted(params)[:6]}")
    width = n_features
    for name in want:
        layer = params[name]
        k, b = layer.get("kernel"), layer.get("bias")
        if set(layer) != {"kernel", "bias"}:
            raise ValueError(f"{arg}: expected {name} to hold kernel and bias, got {sorted(layer)}")
        if (np.ndim(k) != 2 or np.shape(k)[0] != width or np.shape(b) != (np.shape(k)[1],)
                or not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in (k, b))):
            raise ValueError(f"{arg}: expected {name} to hold a float kernel [{width}, out] and bias [out], got "
                             f"kernel {jnp.result_type(k)} {tuple(np.shape(k))} and bias {jnp.result_type(b)} "
                             f"{tuple(np.shape(b))}")
        width = np.shape(k)[1]
    if width != n_classes:
        raise ValueError(f"{arg}: expected {n_classes} logits (one per class of the data) from "
                         f"Dense_{len(want) - 1}, got {width}")


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
