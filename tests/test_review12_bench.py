"""Review 12 of the benchmark suite (`jaxinterp bench`, benchtools, the scripts in benchmarks/): each
test failed on the code it was written against. The scripts' work is stubbed: no benchmark runs here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import load_benchmark


def _load(name: str):
    return load_benchmark(name, "_bench12_")


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


def test_merge_benchmark_leaves_no_half_written_checkpoint_for_the_next_run(monkeypatch, tmp_path):
    """The checkpoints (kept between runs in --workdir, reused when every model.safetensors exists)
    were written in place: a run killed while writing one left a truncated file that the next run
    took as a checkpoint and merged."""
    import safetensors.numpy

    merge = _load("merge")
    real, calls = safetensors.numpy.save_file, []

    def killed_on_the_second(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\0" * 64)  # part of the file, then the kill
            raise KeyboardInterrupt
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.numpy, "save_file", killed_on_the_second)
    dims = dict(n_layer=1, d=8, vocab=16, n_pos=8)
    try:
        merge.make_checkpoints(tmp_path, **dims)
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert not (tmp_path / "ft0" / "model.safetensors").exists()
    assert [p.name for p in (tmp_path / "ft0").iterdir()] == ["config.json"]  # no temporary left behind
    monkeypatch.setattr(safetensors.numpy, "save_file", real)
    dirs = merge.make_checkpoints(tmp_path, **dims)
    for p in dirs:  # the next run wrote them whole
        assert set(safetensors.numpy.load_file(str(p / "model.safetensors"))) == set(merge.gpt2_shapes(**dims))
        assert json.loads((p / "config.json").read_text())["n_embd"] == 8


def _merge_children(monkeypatch, merge, *, jax_rc: int):
    """Stubs the merge benchmark's children: `jaxinterp merge yaml` exits `jax_rc` after 5 s and
    1 GB, mergekit-yaml succeeds after 10 s and 2 GB, and --_diff fails as the real one does when
    an output is missing (check=True)."""

    def run_child(cmd):
        return (5.0, 1.0, jax_rc) if "jaxinterp.cli" in cmd else (10.0, 2.0, 0)

    def run(cmd, *args, **kwargs):
        if "--_diff" in cmd:
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="0.0")

    monkeypatch.setattr(merge, "run_child", run_child)
    monkeypatch.setattr(merge.subprocess, "run", run)
    monkeypatch.setattr(merge, "find_mergekit", lambda opt: "/opt/mergekit/bin/mergekit-yaml")


def test_merge_benchmark_reports_a_failed_merge_as_not_measured(monkeypatch, tmp_path):
    """When `jaxinterp merge yaml` failed and mergekit did not, the benchmark compared their
    outputs anyway (a CalledProcessError ended the whole run), and a failed merge's rows showed the
    seconds and memory it took to fail as its figures."""
    from types import SimpleNamespace

    merge = _load("merge")
    _merge_children(monkeypatch, merge, jax_rc=1)
    rows: list = []
    merge.bench_merges(SimpleNamespace(quick=True, workdir=str(tmp_path), mergekit=None), rows)
    ours = [r for r in rows if r["workload"].endswith("(jaxinterp)")]
    theirs = [r for r in rows if "mergekit-yaml, same run" in r["workload"]]
    assert len(ours) == len(theirs) == 8  # 4 methods x (wall, peak RSS)
    assert all(r["figure"] is None and r["met"] is None for r in ours)
    assert sorted({r["figure"] for r in theirs}) == [2.0, 10.0]


def test_merge_benchmark_removes_its_own_temporary_folder(monkeypatch, tmp_path):
    """Without --workdir the checkpoints, configs and merged models went to a new temporary folder
    that was never removed: up to ~6 GB left in /tmp by every full run (and every `jaxinterp bench`)."""
    import tempfile
    from types import SimpleNamespace

    merge = _load("merge")
    _merge_children(monkeypatch, merge, jax_rc=0)
    monkeypatch.setattr(merge, "find_mergekit", lambda opt: None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rows: list = []
    merge.bench_merges(SimpleNamespace(quick=True, workdir=None, mergekit=None), rows)
    assert len(rows) == 8 and list((tmp_path / "tmp").iterdir()) == []
    kept = tmp_path / "kept"  # a --workdir stays, for the next run to reuse
    kept.mkdir()
    merge.bench_merges(SimpleNamespace(quick=True, workdir=str(kept), mergekit=None), rows)
    assert (kept / "ties.yml").is_file()


def _fake_torch(monkeypatch, *, cuda: bool) -> list:
    """Minimal torch and transformers modules that record where the model and input go, each
    forward and each CUDA synchronisation."""
    import contextlib
    import types

    calls: list = []
    torch = types.ModuleType("torch")
    torch.long = "long"
    torch.manual_seed = lambda seed: None
    torch.no_grad = contextlib.nullcontext
    torch.tensor = lambda data, dtype=None, device=None: calls.append(("input on", device or "cpu")) or data
    torch.cuda = types.SimpleNamespace(is_available=lambda: cuda, synchronize=lambda: calls.append("sync"))

    class Model:
        def __init__(self, config):
            pass

        def eval(self):
            return self

        def to(self, device):
            calls.append(("model on", device))
            return self

        def __call__(self, tokens):
            calls.append("forward")

    transformers = types.ModuleType("transformers")
    transformers.GPT2Config = lambda **kw: kw
    transformers.GPT2LMHeadModel = Model
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    return calls


def test_gpt2_forward_times_pytorch_on_the_gpu_jax_runs_on(monkeypatch, capsys):
    """On a GPU the PyTorch baseline ran on the CPU (the model was never moved, no CUDA call
    synchronised) and the ratio was judged against the CPU goal (1.2x): JAX on the GPU was compared
    with PyTorch on the CPU, where the issue asks for faster than PyTorch on the GPU."""
    import numpy as np

    from jaxinterp.transformer import PRESETS

    import types

    gpt2_forward = _load("gpt2_forward")

    def clock(*reads):  # perf_counter's readings, two per timed call: the calls took 1, 2 and 7 s
        it = iter(reads)
        monkeypatch.setattr(gpt2_forward, "time", types.SimpleNamespace(perf_counter=lambda: next(it)))

    tokens = np.zeros((2, 4), np.int32)
    calls = _fake_torch(monkeypatch, cuda=True)
    clock(0.0, 1.0, 10.0, 12.0, 20.0, 27.0)
    assert gpt2_forward.torch_forward_seconds(PRESETS["gpt2"], tokens, 3, on_gpu=True) == 2.0  # their median
    assert calls[:2] == [("model on", "cuda"), ("input on", "cuda")]
    assert calls[2:] == ["forward", "sync"] * 4  # first call apart, then 3 timed; each waited for

    calls = _fake_torch(monkeypatch, cuda=False)
    assert gpt2_forward.torch_forward_seconds(PRESETS["gpt2"], tokens, 3, on_gpu=True) is None
    assert calls == [] and "torch has no CUDA here" in capsys.readouterr().out

    calls = _fake_torch(monkeypatch, cuda=False)  # on a CPU: as before
    clock(0.0, 3.0, 10.0, 11.0, 20.0, 25.0)
    assert gpt2_forward.torch_forward_seconds(PRESETS["gpt2"], tokens, 3, on_gpu=False) == 3.0
    assert calls[:2] == [("model on", "cpu"), ("input on", "cpu")] and "sync" not in calls


def test_bench_only_without_a_name_is_refused(monkeypatch, tmp_path, capsys):
    """`jaxinterp bench --only` with no name (or an empty one, as `--only "$WHICH"` gives) ran the
    whole suite, minutes of work the user had asked to narrow, instead of an error."""
    import pytest

    from jaxinterp import bench, cli

    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a benchmark ran"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--only", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--only: expected at least one argument" in capsys.readouterr().err
    assert cli.main(["bench", "--only", "", "--out", str(tmp_path / "out")]) == 2
    assert "only: expected parts of script names" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_benchmark_peak_memory_is_in_gigabytes(monkeypatch):
    """ru_maxrss counts KiB (1024 bytes); dividing it by 1e6 printed peaks 2.4% below the GB of
    their unit."""
    merge = _load("merge")
    real = merge.os.wait4

    def wait4(pid, options):
        pid, status, ru = real(pid, options)
        return pid, status, type("RUsage", (), {"ru_maxrss": 1_000_000})()  # 1e6 KiB = 1.024e9 bytes

    monkeypatch.setattr(merge.os, "wait4", wait4)
    wall, peak_gb, rc = merge.run_child([sys.executable, "-c", "pass"])
    assert rc == 0 and abs(peak_gb - 1.024) < 1e-12


def _stub_inject_sweep(monkeypatch, platform: str):
    """inject_sweep with its model, sweep and matmul replaced by stand-ins of no cost, on a device
    of `platform`; the timing and the rows are the script's own."""
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp
    import numpy as np

    inject_sweep = _load("inject_sweep")
    config = SimpleNamespace()
    monkeypatch.setattr(inject_sweep, "PRESETS", {"gpt2": config})
    monkeypatch.setattr(inject_sweep, "init", lambda key, config: {})
    monkeypatch.setattr(inject_sweep, "process_weights", lambda params, config: ({"w": jnp.zeros(2)}, config))
    monkeypatch.setattr(inject_sweep, "memory_vectors",
                        lambda params, ids, config: np.zeros((len(ids), 4), np.float32))
    monkeypatch.setattr(inject_sweep, "plan", lambda *a, **k: None)
    monkeypatch.setattr(inject_sweep, "compile_plan", lambda *a, **k: None)
    monkeypatch.setattr(inject_sweep, "run", lambda *a, **k: sum(range(200_000)))  # some CPU time
    monkeypatch.setattr(inject_sweep, "sweep_flops", lambda *a: 1e9)
    monkeypatch.setattr(inject_sweep, "matmul_rate", lambda repeats: (1e11, 1e11))
    monkeypatch.setattr(inject_sweep, "injection", lambda m, L, tau: (jnp.asarray(m), jnp.asarray(L), jnp.asarray(tau)))
    monkeypatch.setattr(inject_sweep, "gpt2", SimpleNamespace(
        forward=lambda params, tokens, config, interventions: jnp.zeros(tokens.shape + (8,)) + interventions[0][2]))
    monkeypatch.setattr(jax, "devices", lambda: [SimpleNamespace(platform=platform, device_kind=f"fake {platform}")])
    return inject_sweep


def test_inject_sweep_judges_a_gpu_run_by_the_gpu_goal(monkeypatch, tmp_path):
    """On a GPU the sweep was judged by the CPU goals: >= 10x the TransformerLens loop's 2050 s
    (a CPU figure) and >= 60% of the matmul rate (a 2-core CPU goal), where the issue asks for 50x
    on a GPU. Now the GPU run is judged >= 50x against the loop run on the same GPU."""
    for platform in ("gpu", "cpu"):
        inject_sweep = _stub_inject_sweep(monkeypatch, platform)
        path = tmp_path / f"{platform}.json"
        assert inject_sweep.main(["--json", str(path)]) == 0
        rows = {r["workload"].split(" (")[0].split(",")[0]: r for r in json.loads(path.read_text())["rows"]}
        loop, tl = rows["speed-up of the sweep over the jitted loop"], rows["speed-up of the sweep over the TL loop"]
        rate = rows["sweep rate / matmul rate"]
        if platform == "gpu":
            assert loop["goal"] == ">= 50 (GPU)" and loop["met"] is True
            assert rows["inject sweep 12x15x106"]["goal"] == "<= same-run loop / 50"
            assert tl["goal"] is None and tl["met"] is None and rate["goal"] is None and rate["met"] is None
        else:
            assert loop["goal"] is None and loop["met"] is None
            # met: the sweep's rate at least 60% of the matmul's (the figure, in %, is that ratio)
            assert tl["goal"] == ">= 10 (CPU)" and rate["goal"] == ">= 60 % (CPU)"
            assert rate["met"] is (rate["figure"] >= 60)


def test_report_table_shows_an_undefined_figure_as_n_a_and_numpy_floats_rounded():
    """The demo's NuGraph2 table showed a class with no hits as "nan" beside the held-out column's
    "n/a" (the same figure, stored as null), and a numpy float32 with all its digits."""
    import numpy as np

    from jaxinterp import report

    html = report.table(["a", "b", "c", "d", "e"], [[float("nan"), np.float32(0.123456789), None, 0.98765, "x<y"]])
    cells = html.split("<tbody>")[1].replace("</td>", "").replace("</tr></tbody></table>", "").split("<td>")[1:]
    assert cells == ["n/a", "0.1235", "n/a", "0.9877", "x&lt;y"]


def test_merge_benchmark_rows_name_the_models_each_method_merges(monkeypatch, tmp_path):
    """The linear row said "base+3" but its config merges the three fine-tunes only (as mergekit's
    reference figure, "linear (3 checkpoints)", does)."""
    from types import SimpleNamespace

    merge = _load("merge")
    dirs = [tmp_path / n for n in ("base", "ft0", "ft1", "ft2")]
    models = {m: merge.config_yaml(m, dirs).count("- model:") for m in ("ties", "dare_ties", "slerp", "linear")}
    assert models == {"ties": 3, "dare_ties": 3, "slerp": 2, "linear": 3}  # + base_model for ties and dare_ties
    _merge_children(monkeypatch, merge, jax_rc=0)
    monkeypatch.setattr(merge, "find_mergekit", lambda opt: None)
    rows: list = []
    merge.bench_merges(SimpleNamespace(quick=True, workdir=str(tmp_path), mergekit=None), rows)
    named = [r["workload"] for r in rows if r["unit"] == "s"]
    assert named == [f"merge {m}, GPT-2-like tiny (2x256), {n} f32 (jaxinterp)" for m, n in
                     (("ties", "base+3"), ("dare_ties", "base+3"), ("slerp", "2 models"), ("linear", "3 models"))]


def test_a_row_takes_none_for_a_figure_that_was_not_measured(tmp_path, capsys):
    """benchtools.row(..., None, ...) was a TypeError, so a script with an unmeasured figure wrote
    0 instead (lens_train's XLA buffers when the memory analysis is missing: "0 GiB")."""
    from jaxinterp import benchtools

    rows = [benchtools.row("XLA buffers", None, "GiB"), benchtools.row("measured", 2, "GiB")]
    benchtools.report("b", rows, str(tmp_path / "b.json"))
    assert [r["figure"] for r in json.loads((tmp_path / "b.json").read_text())["rows"]] == [None, 2.0]
    assert "n/a" in capsys.readouterr().out


def test_merge_refuses_a_mergekit_yaml_variable_that_names_no_file(monkeypatch, capsys, tmp_path):
    """A wrong $MERGEKIT_YAML (the way BUILD_NOTES runs the suite with mergekit) was skipped
    silently: the run went on without mergekit and judged the goals by PERF_NOTES' figures.
    --mergekit was already checked; an explicit --mergekit still wins over the variable."""
    import pytest

    merge = _load("merge")
    monkeypatch.setattr(merge, "bench_merges", lambda *a: pytest.fail("bad input reached the benchmark"))
    monkeypatch.setattr(merge, "bench_barrier", lambda *a: pytest.fail("bad input reached the benchmark"))
    monkeypatch.setenv("MERGEKIT_YAML", str(tmp_path / "mergekit-yaml"))
    monkeypatch.setattr(sys, "argv", [merge.__file__, "--quick"])
    with pytest.raises(SystemExit) as exc:
        merge.main()
    assert exc.value.code == 2
    assert f"$MERGEKIT_YAML: expected the path of mergekit-yaml, got {tmp_path / 'mergekit-yaml'}" in capsys.readouterr().err
    tool = tmp_path / "mk"
    tool.write_text("")
    tool.chmod(0o755)  # review 17: a file that is not executable is refused too
    ran = []
    monkeypatch.setattr(merge, "bench_merges", lambda args, rows: ran.append(args.mergekit))
    monkeypatch.setattr(merge, "bench_barrier", lambda args, rows: None)
    monkeypatch.setattr(merge, "bench_barrier_mesh", lambda args, rows: None)
    monkeypatch.setattr(merge.benchtools, "report", lambda *a: None)
    monkeypatch.setattr(sys, "argv", [merge.__file__, "--quick", "--mergekit", str(tool)])
    merge.main()
    assert ran == [str(tool)]


def test_gpt2_forward_times_one_jitted_matmul(monkeypatch):
    """The yardstick matmul was timed as `jax.jit(jnp.matmul)(a, w)`: a new jit object per call,
    each taking jit's slow Python path (~60 us on the CPU, about the matmul's own time on a GPU),
    so the machine's matmul rate read low."""
    import jax

    gpt2_forward = _load("gpt2_forward")
    real, made = jax.jit, []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: made.append(a) or real(*a, **k))
    assert gpt2_forward.matmul_rate(2) > 0
    assert len(made) == 1
