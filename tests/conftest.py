"""Shared test fixtures: paths to the reference fixtures copied from ../shared/fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_GPT2 = FIXTURES / "tiny_gpt2"


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
