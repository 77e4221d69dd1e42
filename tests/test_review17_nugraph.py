"""Review 17 of the NuGraph2 package: each test pins one defect found and fixed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _cli(argv, monkeypatch):
    from jaxinterp import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["jaxinterp.nugraph.cli"])
    try:
        return cli.main(argv)
    except SystemExit as exc:  # usage errors
        return exc.code


@pytest.mark.parametrize("config, message", [
    ({"planes": ["u", "v", "y"]}, r"expected a NuGraph2Config \(a frozen, hashable dataclass\), got dict"),
    (["u", "v"], r"expected a NuGraph2Config \(a frozen, hashable dataclass\), got list"),
    ("64/16", r"expected a NuGraph2Config \(a frozen, hashable dataclass\), got str"),
    ("unhashable", r"expected a hashable NuGraph2Config .* got NuGraph2Config\(.*unhashable type: 'list'"),
])
def test_forward_refuses_a_config_it_cannot_key(config, message):
    """predict.forward(config) was an lru_cache: a dict config raised its bare TypeError "unhashable
    type: 'dict'", and a hashable non-config (a string) got a jitted forward that failed only when
    called. Now a ValueError says a (frozen, hashable) NuGraph2Config was expected and what came."""
    from jaxinterp.nugraph import predict
    from jaxinterp.nugraph.model import NuGraph2Config

    if config == "unhashable":
        config = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
        object.__setattr__(config, "planes", ["u", "v", "y"])  # replaced in place, past __post_init__
    with pytest.raises(ValueError, match=message):
        predict.forward(config)


def test_forward_is_still_built_once_per_config():
    from jaxinterp.nugraph import predict
    from jaxinterp.nugraph.model import NuGraph2Config

    a = predict.forward(NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1))
    assert predict.forward(NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)) is a
    assert predict.forward() is predict.forward(NuGraph2Config())
