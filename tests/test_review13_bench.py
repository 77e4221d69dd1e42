"""Review 13 of the benchmark suite and the reporting (`jaxinterp bench`, `jaxinterp demo`, benchtools,
the scripts in benchmarks/): each test failed on the code it was written against. No benchmark or demo
section runs here: their work is stubbed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench13_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_only_without_a_name_is_refused(monkeypatch, tmp_path, capsys):
    """`jaxinterp demo --only` with no name (or an empty one, as `--only "$WHICH"` gives) built every
    section, minutes of work the user had asked to narrow, instead of an error (bench refused it)."""
    import types

    from jaxinterp import cli, demo

    fake = types.ModuleType("_fake_demo_sections13")
    fake.section = lambda out_dir, *, quick: pytest.fail("a section ran")  # BaseException: not caught as a failure
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(demo, "SECTIONS", [f"{fake.__name__}:section", "jaxinterp.lens.demo:section"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--only", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--only: expected at least one argument" in capsys.readouterr().err
    assert cli.main(["demo", "--only", "", "--out", str(tmp_path / "out")]) == 2
    assert "only: expected parts of section names" in capsys.readouterr().err
    assert cli.main(["demo", "--only", "lens", "", "--out", str(tmp_path / "out")]) == 2
    assert "got ['']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
