"""Shared test fixtures: paths to the reference fixtures copied from ../shared/fixtures."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

# Parity with PyTorch means float32 matrix products. On recent NVIDIA GPUs JAX's default multiplies
# float32 in TF32 (10-bit mantissa), which PyTorch does not (allow_tf32 is off for matmuls), so the
# 1e-6 parity tests would fail there; on the CPU the setting changes no number (checked: f32, bf16, einsum).
jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = Path(__file__).parent / "fixtures"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_GPT2 = FIXTURES / "tiny_gpt2"


class WordTokenizer:
    """Stands in for the tiny model's word-level tokenizer: 'w5 w7' -> [5, 7] (ids taken mod 97)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(w[1:]) % 97 for w in t.split()] for t in texts]}


def load_benchmark(name: str, prefix: str = "_bench_"):
    """benchmarks/<name>.py as a module (the folder is no package), named prefix + name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{prefix}{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def word_texts(n=24, seed=0):
    """n lines of 1-13 words 'w1'..'w95' that WordTokenizer reads."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(1, 96, rng.integers(1, 14))) for _ in range(n)]


@pytest.fixture(scope="session")
def gpt2_ref():
    return dict(np.load(FIXTURES / "gpt2_reference.npz"))


@pytest.fixture(scope="session")
def tiny_raw():
    from jaxinterp.transformer import load_gpt2

    return load_gpt2(TINY_GPT2)


@pytest.fixture(scope="session")
def tiny_processed():
    from jaxinterp.transformer import load_gpt2

    return load_gpt2(TINY_GPT2, process_weights=True)


@pytest.fixture
def sweep_steps(monkeypatch):
    """`sweep_steps(stop_after=None)` counts the inject sweep's layer steps from then on (the list it
    returns grows by one per step) and raises KeyboardInterrupt in place of step stop_after + 1, as a
    killed run would stop."""
    from jaxinterp.inject import sweep

    real = sweep._steps_jit  # the real programs (each call below patches the name)

    def patch(stop_after=None):
        bases, layer_step = real()
        calls = []

        def counted(*args, **kwargs):
            if stop_after is not None and len(calls) == stop_after:
                raise KeyboardInterrupt
            calls.append(1)
            return layer_step(*args, **kwargs)

        monkeypatch.setattr(sweep, "_steps_jit", lambda: (bases, counted))
        return calls

    return patch
