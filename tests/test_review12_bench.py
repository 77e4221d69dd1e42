"""Review 12 of the benchmark suite (`jaxinterp bench`, benchtools, the scripts in benchmarks/): each
test failed on the code it was written against. The scripts' work is stubbed: no benchmark runs here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench12_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_names_the_machine_only_after_the_scripts_ran(monkeypatch, tmp_path):
    """`jaxinterp bench` named the devices (jax.devices(): JAX's backend started in the parent)
    before running the scripts; on a GPU the parent then held 75% of its memory (JAX's
    preallocation) through every benchmark child."""
    from jaxinterp import bench, benchtools

    events = []

    def fake_run(cmd, *args, **kwargs):
        events.append(Path(cmd[1]).stem)
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"benchmark": "x", "machine": {}, "rows": []}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(benchtools, "machine", lambda: events.append("machine") or {"cpu": "test"})
    results = bench.run(tmp_path / "out", quick=True, only=["gpt2", "merge"])
    assert events == ["gpt2_forward", "merge", "machine"]
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["machine"] == results["machine"] == {"cpu": "test"} and list(saved)[0] == "machine"
