"""Session 16, lead: leftovers of the review round (read_events' repeated names, toyworld ship's modes) and the merge benchmark's barrier over host devices."""

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


def test_merge_benchmark_times_the_barrier_over_host_devices_in_a_child(monkeypatch):
    """benchmarks/merge.py's barrier over one host device per core: the child is started with the
    device split in XLA_FLAGS (it must be set before JAX starts), and the goal (>= 5x the eager loop)
    is judged on the call with params and batch placed on every device."""
    import json
    import subprocess
    import types

    from conftest import load_benchmark

    merge = load_benchmark("merge")
    seen = {}

    def run(cmd, env, **kw):
        seen.update(cmd=cmd, flags=env["XLA_FLAGS"])
        out = {"devices": 2, "vm": 2.8, "mesh": 2.2, "mesh_placed": 1.8, "eager": 5.4}
        return types.SimpleNamespace(returncode=0, stdout="noise\nRESULT" + json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    rows = []
    merge.bench_barrier_mesh(types.SimpleNamespace(quick=True), rows)
    assert seen["cmd"][1:] == [merge.__file__, "--_barrier_mesh", "--quick"]
    assert seen["flags"] == "--xla_force_host_platform_device_count=2"
    by = {r["workload"].split(": ", 1)[1]: r for r in rows}
    assert by["one compiled call, alphas split over 2 host devices (mesh=)"]["figure"] == 2.2
    goal = by["speed-up over the eager-interpolation loop, alphas over 2 host devices (placed)"]
    assert goal["figure"] == pytest.approx(3.0) and goal["goal"] == ">= 5x" and goal["met"] is False
