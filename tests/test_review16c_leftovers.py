"""Session 16, lead: leftovers of the review round (read_events' repeated names, toyworld ship's modes)."""

from __future__ import annotations

import os
import stat

import pytest

from jaxinterp.nugraph import hdf5
from test_nugraph_hdf5 import FIXTURE
from test_review12_cli import fake_assets  # noqa: F401  (the fixture, used by name)


def test_read_events_refuses_a_name_given_twice():
    """names=[a, a] read event a twice: eval counted its hits twice and predict ran it twice."""
    with pytest.raises(ValueError, match=r"^names: expected each event name once, got 'r1_sr1_evt1' 2 times$"):
        hdf5.read_events(FIXTURE, names=["r1_sr1_evt0", "r1_sr1_evt1", "r1_sr1_evt1"])
    assert [e.name for e in hdf5.read_events(FIXTURE, names=["r1_sr1_evt1", "r1_sr1_evt0"]).events] == \
        ["r1_sr1_evt1", "r1_sr1_evt0"]  # distinct names: read in the order given


def test_ship_keeps_folders_in_the_model_readable(fake_assets, monkeypatch):  # noqa: F811
    """ship set mode 0644 on every entry of the copied model folder: a folder there (a killed save's
    leftover) lost its x bit, and nobody could list or read it in the installed package."""
    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    assets, run = fake_assets
    (run / "model" / "left.tmp").mkdir()
    (run / "model" / "left.tmp" / "part").write_text("x")
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kw: {"rows": []})
    monkeypatch.setattr(evaluate, "markdown", lambda result: "table")
    assert cli.main(["toyworld", "ship", str(run)]) == 0
    assert stat.S_IMODE(os.stat(assets / "model" / "left.tmp").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(assets / "model" / "model.safetensors").st_mode) == 0o644
    assert (assets / "model" / "left.tmp" / "part").read_text() == "x"
