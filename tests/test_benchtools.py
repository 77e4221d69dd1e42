"""The benchmark scripts' own pieces: bad options refused before any work, child processes measured
without hanging. Each script is loaded from benchmarks/ (not a package) and its work replaced by a
stub that fails, so a test that let bad input through fails at once instead of running a benchmark.
"""

from __future__ import annotations

import json
import sys
import threading

import pytest

from conftest import load_benchmark


def _load(name: str):
    return load_benchmark(name, "_bench_")


def _no_work(*args, **kwargs):
    raise AssertionError("bad input reached the benchmark's work")


def _refused(monkeypatch, capsys, module, argv: list[str]) -> str:
    monkeypatch.setattr(sys, "argv", [module.__file__] + argv)
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2, argv
    return capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_lens_train_refuses_a_memory_budget_that_is_not_positive(monkeypatch, capsys, value):
    """--max-gib -1 killed every run at once and printed a table of NaN; 0 was silently the default."""
    lens_train = _load("lens_train")
    monkeypatch.setattr(lens_train, "_run_child", _no_work)
    err = _refused(monkeypatch, capsys, lens_train, ["--quick", "--max-gib", value])
    assert f"argument --max-gib: expected a positive finite number, got {value}" in err


def test_merge_refuses_a_mergekit_path_that_is_not_a_file(monkeypatch, capsys, tmp_path):
    """A wrong --mergekit was ignored: the run went on and reported mergekit as not available."""
    merge = _load("merge")
    monkeypatch.setattr(merge, "bench_merges", _no_work)
    monkeypatch.setattr(merge, "bench_barrier", _no_work)
    err = _refused(monkeypatch, capsys, merge, ["--quick", "--mergekit", str(tmp_path / "mergekit-yaml")])
    assert "argument --mergekit: expected the path of mergekit-yaml" in err and "no such file" in err


def test_merge_refuses_a_workdir_that_is_a_file(monkeypatch, capsys, tmp_path):
    """A file as --workdir failed later, in a helper child, with a CalledProcessError traceback."""
    merge = _load("merge")
    monkeypatch.setattr(merge, "bench_merges", _no_work)
    monkeypatch.setattr(merge, "bench_barrier", _no_work)
    (tmp_path / "f").write_text("x")
    err = _refused(monkeypatch, capsys, merge, ["--quick", "--workdir", str(tmp_path / "f")])
    assert "argument --workdir: expected a folder, got the file" in err


def test_merge_run_child_survives_a_child_that_writes_much_to_stderr():
    """stderr was a pipe read only after wait4: past the pipe's 64 KiB the child blocked, and so did the benchmark."""
    merge = _load("merge")
    code = "import sys; sys.stderr.write('x' * 300_000); sys.exit(3)"
    result = []
    t = threading.Thread(target=lambda: result.append(merge.run_child([sys.executable, "-c", code])), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "run_child hung on a child's full stderr pipe"
    wall, peak_gb, rc = result[0]
    assert rc == 3 and wall > 0 and peak_gb > 0


class _Async:
    """A result that is ready only once waited on, as a jax array after an async dispatch: waiting
    advances the fake clock by the time the work takes."""

    def __init__(self, clock: list[float], seconds: float):
        self.clock, self.seconds = clock, seconds

    def block_until_ready(self):
        self.clock[0] += self.seconds
        return self


def test_time_fn_keeps_the_first_call_apart_and_takes_the_median_of_blocked_repeats():
    from jaxinterp import benchtools

    clock = [0.0]
    work = iter([10.0, 0.5, 3.0, 1.0, 2.0])  # first call (compile), one warm-up, then three repeats
    t = benchtools.time_fn(lambda: _Async(clock, next(work)), repeats=3, warmup=2, clock=lambda: clock[0])
    assert t == benchtools.Timing(compile_s=10.0, median_s=2.0, min_s=1.0, repeats=3)


def test_time_interleaved_blocks_each_call_inside_its_own_timing(monkeypatch):
    from jaxinterp import benchtools

    clock = [0.0]
    work = {"a": iter([7.0, 1.0, 3.0, 2.0]), "b": iter([9.0, 5.0, 4.0, 6.0])}
    fns = {name: (lambda name=name: _Async(clock, next(work[name]))) for name in work}
    monkeypatch.setattr(benchtools.time, "perf_counter", lambda: clock[0])
    t = benchtools.time_interleaved(fns, repeats=3)
    assert t == {"a": benchtools.Timing(7.0, 2.0, 1.0, 3), "b": benchtools.Timing(9.0, 5.0, 4.0, 3)}


def test_the_machine_names_the_cores_this_process_may_use(monkeypatch):
    """Under `taskset -c 0` (or a container's cpuset) on a 2-core machine, XLA runs one thread but the
    report said "(2 cores)"."""
    import os

    from jaxinterp import benchtools

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert benchtools.machine()["cores"] == 2 and benchtools.machine()["cores_usable"] == 1
    assert "(1 of 2 cores)" in benchtools.machine_line()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert "(2 cores)" in benchtools.machine_line()


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_figure_that_was_not_measured_is_null_in_strict_json(tmp_path, capsys):
    """A lens run killed at its memory budget made NaN figures, and bench.json then held bare NaN
    (not JSON: jq and JavaScript refuse the file). They are null now, "n/a" in the tables."""
    from jaxinterp import bench, benchtools

    rows = [benchtools.row("killed run", float("nan"), "s/step"), benchtools.row("ratio", float("inf"), "x"),
            benchtools.row("measured", 1.25, "s", goal="<= 2 s", met=True)]
    assert [r["figure"] for r in rows] == [None, None, 1.25]
    path = tmp_path / "b.json"
    benchtools.report("b", rows, str(path))
    printed = capsys.readouterr().out
    assert printed.count("n/a") == 2 and "1.25" in printed
    assert [r["figure"] for r in _strict(path.read_text())["rows"]] == [None, None, 1.25]
    text = bench.table({"benchmarks": [{"script": "b.py", "returncode": 0, "rows": rows}]})
    assert text.count("n/a") == 2 and "nan" not in text.lower()
