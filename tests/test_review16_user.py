"""Review 16 of what users see and run: `jaxinterp demo`, `jaxinterp bench`, benchtools, the scripts in
benchmarks/, atomic writes and the data-parallel helpers. Each test failed on the code it was written
against. No benchmark or demo section runs here: their work is stubbed.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import load_benchmark


def _load(name: str):
    return load_benchmark(name, "_bench16u_")


def _lens_train_rows(monkeypatch, tmp_path, killed: str):
    """lens_train's full-run rows with fixed figures, the implementation `killed` stopped at its
    memory budget (as _run_child reports it: NaN times, the budget as its peak)."""
    lens_train = _load("lens_train")

    def fake_child(impl, quick, budget):
        if impl == killed:
            return {"impl": impl, "step_s": float("nan"), "compile_s": float("nan"), "peak_gib": 8.0,
                    "xla_gib": None, "killed": True}
        return {"impl": impl, "step_s": 0.5 if impl != "straightforward" else 2.0, "compile_s": 1.0,
                "peak_gib": 1.0 if impl != "straightforward" else 4.0, "xla_gib": 0.25, "platform": "cpu"}

    monkeypatch.setattr(lens_train, "_run_child", fake_child)
    out = tmp_path / f"lens_{killed}.json"
    monkeypatch.setattr(sys, "argv", ["lens_train.py", "--json", str(out)])
    lens_train.main()
    return {r["workload"]: r for r in json.loads(out.read_text())["rows"]}


def test_a_goal_is_not_judged_on_a_figure_that_was_not_measured(monkeypatch, tmp_path):
    """A jaxinterp lens run stopped at the memory budget has no step time: its speed-up (2.0 / NaN) is
    n/a, yet the row read "NOT met" (NaN >= 3 is False), a verdict on a figure that does not exist.
    Only the straightforward run's kill was considered; the verdict of an unmeasured figure is null now
    (benchtools.row), whichever run it came from."""
    from jaxinterp import benchtools

    for killed, rows_of in (("jaxinterp", "lens train step speed-up vs straightforward"),
                            ("jaxinterp_bf16_moments",
                             "lens train step speed-up vs straightforward, bfloat16 Adam moments")):
        rows = _lens_train_rows(monkeypatch, tmp_path, killed)
        assert rows[rows_of]["figure"] is None and rows[rows_of]["met"] is None, rows[rows_of]
        assert rows[rows_of]["goal"] == ">= 3x"
    # measured figures keep their verdicts, as plain bools (numpy's bool_ is not JSON)
    import numpy as np

    assert benchtools.row("r", 2.0, "x", goal=">= 3", met=np.bool_(False))["met"] is False
    assert benchtools.row("r", float("nan"), "x", goal=">= 3", met=False)["met"] is None
    assert benchtools.row("r", None, "x", goal=">= 3", met=True)["met"] is None


@pytest.mark.parametrize("repeats", [0, -1, 2.5, "3", True])
def test_timing_helpers_refuse_a_repeat_count_before_the_first_call(repeats):
    """time_fn(repeats=0) ran the (compiling) first call, then failed with statistics' "no median for
    empty data"; 2.5 was a TypeError from range() and True timed one call. Now a ValueError naming
    repeats, before anything runs."""
    from jaxinterp import benchtools

    def never():
        pytest.fail("the function ran")

    with pytest.raises(ValueError, match=rf"repeats: expected a positive integer, got {repeats!r}"):
        benchtools.time_fn(never, repeats=repeats)
    with pytest.raises(ValueError, match=rf"repeats: expected a positive integer, got {repeats!r}"):
        benchtools.time_interleaved({"a": never}, repeats=repeats)


def test_parallel_helpers_refuse_what_is_not_a_data_mesh():
    """padded_size, shard_batch, replicate, data_sharding and replicated took a device list (make_mesh's
    own argument, an easy slip) to an AttributeError on `.devices`, and a mesh without the "data" axis
    to a PartitionSpec error from inside NamedSharding; predict checked its mesh, these did not. Now a
    ValueError naming the function, what it expected and what came."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from jaxinterp import parallel

    devices = jax.devices()
    other_axis = Mesh(np.asarray(devices), ("batch",))
    tree = {"x": np.ones((len(devices), 2), np.float32)}
    calls = {"padded_size": lambda m: parallel.padded_size(3, m), "shard_batch": lambda m: parallel.shard_batch(tree, m),
             "replicate": lambda m: parallel.replicate(tree, m), "data_sharding": parallel.data_sharding,
             "replicated": parallel.replicated}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{name}: mesh: expected a jax.sharding.Mesh .*got list$"):
            call(devices)
        with pytest.raises(ValueError, match=rf"^{name}: mesh: expected a mesh with the axis 'data', got axes \('batch',\)$"):
            call(other_axis)
    mesh = parallel.make_mesh(devices)  # the right mesh: as before
    assert parallel.padded_size(3, mesh) == -(-3 // len(devices)) * len(devices)
    assert parallel.replicate(tree, mesh)["x"].sharding == parallel.replicated(mesh)
    assert parallel.shard_batch(tree, mesh)["x"].sharding == parallel.data_sharding(mesh)


def _fake_sections(monkeypatch, name: str, calls: list) -> None:
    """demo.SECTIONS replaced by one section that records its call and writes a figure."""
    import types

    from jaxinterp import atomic, demo, report

    def section(out_dir, *, quick):
        calls.append(out_dir)
        atomic.write_bytes(out_dir / "fake.png", b"\x89PNG\r\n\x1a\n")
        return report.Section("Fake", report.paragraph("ran"))

    fake = types.ModuleType(name)
    fake.section = section
    monkeypatch.setitem(sys.modules, name, fake)
    monkeypatch.setattr(demo, "SECTIONS", [f"{name}:section"])


def test_demo_does_not_replace_an_index_html_it_did_not_write(monkeypatch, tmp_path, capsys):
    """`jaxinterp demo --out site` replaced the user's own site/index.html with the report, without a
    word. A folder whose index.html is not a demo report is refused now, before any section runs or
    writes; a report from an earlier demo is replaced as before."""
    from jaxinterp import cli, demo, report

    calls: list = []
    _fake_sections(monkeypatch, "_fake_demo_sections16u", calls)
    site = tmp_path / "site"
    site.mkdir()
    mine = "<!doctype html><html><head><title>My notes</title></head><body>months of work</body></html>"
    (site / "index.html").write_text(mine)
    assert cli.main(["demo", "--out", str(site)]) == 2
    err = capsys.readouterr().err
    assert "not a demo report" in err and str(site) in err
    assert (site / "index.html").read_text() == mine and calls == [] and not (site / "fake.png").exists()

    # an earlier demo's report (as render writes it) is the demo's own: replaced
    old = tmp_path / "demo_out"
    old.mkdir()
    (old / "index.html").write_text(report.render(demo.TITLE, [report.Section("Old", "<p>old</p>")]))
    assert cli.main(["demo", "--out", str(old)]) == 0
    page = (old / "index.html").read_text()
    assert "<h2 id='s0'>Fake</h2>" in page and "Old" not in page and calls == [old]

    # a folder named index.html is no page to replace either
    odd = tmp_path / "odd"
    (odd / "index.html").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"out_dir: expected a folder where index.html can be written, got .*not a file"):
        demo.run(odd)
    assert calls == [old]


def test_bench_does_not_delete_or_replace_json_files_it_did_not_write(monkeypatch, tmp_path, capsys):
    """`jaxinterp bench --out results` deleted results/merge.json before the merge script ran (to drop
    an earlier run's figures) and replaced results/bench.json, whatever those files were: a user's own
    merge.json was gone without a word. Files that are not an earlier run's benchmark JSON are refused
    now, before any script runs; an earlier run's files are replaced as before."""
    import subprocess

    from jaxinterp import bench, benchtools, cli

    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, *a, **k: pytest.fail("a benchmark ran"))
    monkeypatch.setattr(benchtools, "machine", lambda: {"cpu": "test"})
    monkeypatch.setattr(benchtools, "machine_line", lambda: "test machine")
    for name, text in (("merge.json", '{"models": ["a", "b"], "method": "ties"}'),  # the user's merge config
                       ("bench.json", '{"bench": "my own notes"}'), ("merge.json", "not JSON at all")):
        out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        (out / name).write_text(text)
        assert cli.main(["bench", "--only", "merge", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"holding a {name} that is not a benchmark result" in err
        assert (out / name).read_text() == text and sorted(p.name for p in out.iterdir()) == [name]

    # an earlier run's files (the schemas benchtools.report and bench.run write) are the bench's own
    out = tmp_path / "bench_out"
    out.mkdir()
    (out / "merge.json").write_text(json.dumps({"benchmark": "merge", "machine": {}, "rows": []}))
    (out / "bench.json").write_text(json.dumps({"machine": {}, "quick": True, "benchmarks": []}))
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 1))
    assert cli.main(["bench", "--only", "merge", "--out", str(out)]) == 1
    assert not (out / "merge.json").exists()
    assert [b["script"] for b in json.loads((out / "bench.json").read_text())["benchmarks"]] == ["merge.py"]


def _gpt2_forward_rows(monkeypatch, tmp_path, argv, torch=lambda *a, **k: 0.150):
    """gpt2_forward's rows with the forwards stubbed: cached 1.23x plain (make bench's 2x64 figure),
    PyTorch 1.5x slower than plain; each compile 2 s."""
    from types import SimpleNamespace

    from jaxinterp import benchtools

    gpt2_forward = _load("gpt2_forward")
    monkeypatch.setattr(gpt2_forward, "gpt2", SimpleNamespace(init=lambda key, config: {},
                                                              _run_jit=lambda: (lambda *a, **k: None)))
    monkeypatch.setattr(gpt2_forward, "intervene", lambda *a, **k: None)
    monkeypatch.setattr(gpt2_forward.hostmem, "retain_freed_memory", lambda: False)
    timing = lambda s: benchtools.Timing(2.0, s, s, 3)  # noqa: E731
    # review 17: PyTorch is timed interleaved with the plain forward ("jaxinterp", "torch")
    seconds = {"plain": 0.100, "cached": 0.123, "injected": 0.101, "jaxinterp": 0.100}

    def torch_forward(config, tokens, *, on_gpu):
        s = torch(config, tokens, 3, on_gpu=on_gpu)
        seconds["torch"] = s
        return None if s is None else (lambda: None)

    monkeypatch.setattr(benchtools, "time_interleaved", lambda fns, repeats: {k: timing(seconds[k]) for k in fns})
    monkeypatch.setattr(gpt2_forward, "matmul_rate", lambda repeats: 400.0)
    monkeypatch.setattr(gpt2_forward, "torch_forward", torch_forward)
    out = tmp_path / f"gpt2_{len(argv)}.json"
    gpt2_forward.main([*argv, "--json", str(out)])
    return {r["workload"]: r for r in json.loads(out.read_text())["rows"]}


def test_gpt2_forward_quick_run_is_not_judged_by_the_goals_set_for_8x128(monkeypatch, tmp_path):
    """The issue's goals (hook_result cached <= 1.1x the plain forward, within 1.2x of PyTorch eager) are
    for batch 8 x 128; --quick's 2 x 64 was judged by them, and `make bench` printed NO for a cached /
    plain ratio of 1.23 where the full run measures 1.08 (fixed costs weigh more on 128 tokens). Quick
    figures are shown unjudged now, as lens_train and inject_sweep show theirs; compile stays judged."""
    full = _gpt2_forward_rows(monkeypatch, tmp_path, [])
    quick = _gpt2_forward_rows(monkeypatch, tmp_path, ["--quick"])
    goals = {w: r["met"] for w, r in full.items() if r["goal"]}
    assert goals == {"gpt2 forward 8x128, no cache": True,
                     "gpt2 forward 8x128, 12 hook_result cached (glibc default)": False,
                     "cached / plain (glibc default)": False, "gpt2 compile, no cache": True,
                     "gpt2 compile, 12 hook_result cached": True,
                     "jaxinterp / PyTorch eager, both on the CPU (interleaved)": True}
    judged_quick = {w: r["met"] for w, r in quick.items() if r["met"] is not None}
    assert judged_quick == {"gpt2 compile, no cache": True, "gpt2 compile, 12 hook_result cached": True}
    assert [r["goal"] for r in quick.values()] == [r["goal"] for r in full.values()]  # still stated


def test_lens_train_reads_a_killed_runs_xla_figure_past_log_lines_that_mention_xla(monkeypatch, capsys):
    """A run stopped at the memory budget has only its "XLA{...}" line; the parent split the child's
    output (stdout and stderr together) at the first "XLA", so a log line before it that mentions XLA
    (JAX's notes on XLA_FLAGS, a GPU's "XLA service ... initialized") was parsed as the figure: a
    JSONDecodeError ended the benchmark instead of reporting the killed run."""
    lens_train = _load("lens_train")
    printed = ("I0000 service.cc:152] XLA service 0x5581 initialized for platform CUDA\n"
               "W0000 XLA_FLAGS has --xla_force_host_platform_device_count\n"
               'XLA{"xla_gib": 21.5}\n')

    class Child:  # the child process: prints, then grows past the budget
        pid = 4242

        def __init__(self, cmd, stdout, stderr, text):
            stdout.write(printed)
            stdout.flush()
            self.killed = False

        def poll(self):
            return -9 if self.killed else None

        def kill(self):
            self.killed = True

    monkeypatch.setattr(lens_train.subprocess, "Popen", Child)
    monkeypatch.setattr(lens_train, "_rss_gib", lambda pid: 9.0)
    r = lens_train._run_child("straightforward", False, 8.0)
    assert r["killed"] is True and r["xla_gib"] == 21.5 and r["peak_gib"] == 9.0
    assert "straightforward: stopped at 9.0 GiB RSS (budget 8.0 GiB)" in capsys.readouterr().err


def test_a_section_whose_title_is_not_text_fails_alone(monkeypatch, tmp_path, capsys):
    """A section returning a Section whose title is not a string (None, a number) passed the section
    loop and failed in report.render, after every section had run: the command ended in a traceback
    and no index.html was written, losing the sections that worked. It is that section's failure now."""
    from jaxinterp import cli, report
    from test_cli import fake_demo_sections

    fake_demo_sections(
        monkeypatch, "_fake_demo_sections16t",
        untitled=lambda out_dir, *, quick: report.Section(None, report.paragraph("no title")),
        good=lambda out_dir, *, quick: report.Section("Good", report.paragraph("fine")),
        numbered=lambda out_dir, *, quick: report.Section(3, report.paragraph("a number")))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "section failed: _fake_demo_sections16t:untitled" in out and "section failed: _fake_demo_sections16t:numbered" in out
    page = (tmp_path / "index.html").read_text()
    assert "<h2 id='s1'>Good</h2><p>fine</p>" in page and page.count("<div class='err'>") == 2
    assert "expected a report.Section(title: str, html: str), got Section(title=None" in page


@pytest.mark.parametrize("only", [["lens", 3], 3, [None], {"lens": 1}])
def test_only_that_is_not_a_list_of_names_is_a_value_error(tmp_path, only):
    """demo.run/bench.run(only=["lens", 3]) was a TypeError ("'in <string>' requires string as left
    operand") and only=3 one from iterating an int; a dict's keys were taken as the names. Now a
    ValueError naming `only`, before the output folder is made."""
    from jaxinterp import bench, demo

    with pytest.raises(ValueError, match=r"only: expected a list of parts of section names \(strings\), got "):
        demo.run(tmp_path / "demo", quick=True, only=only)
    with pytest.raises(ValueError, match=r"only: expected a list of parts of script names \(strings\), got "):
        bench.run(tmp_path / "bench", quick=True, only=only)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "bench").exists()


def _on(monkeypatch, platform: str) -> None:
    from types import SimpleNamespace

    import jax

    monkeypatch.setattr(jax, "devices", lambda: [SimpleNamespace(platform=platform, device_kind=f"fake {platform}")])


def test_benchmarks_on_another_accelerator_are_not_judged_by_the_cpu_goals(monkeypatch, tmp_path):
    """The issues set goals for a CPU and for a GPU; the scripts asked only "is it a GPU?", so on a TPU
    NuGraph2's latency and the sweep were judged by the CPU goals (the sweep against the TL loop's CPU
    seconds), CPU-time rows and the host-device child ran, and gpt2_forward timed PyTorch on the CPU
    against JAX on the TPU under the CPU's 1.2x goal. There the figures are shown, unjudged (compile
    time, a goal per entry point on any device, still is)."""
    from test_review12_bench import _stub_inject_sweep
    from test_review13_bench import stub_nugraph_latency

    # inject_sweep (full grid: its goals are judged on the full run only)
    inject_sweep = _stub_inject_sweep(monkeypatch, "tpu")
    path = tmp_path / "inject.json"
    assert inject_sweep.main(["--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {r["workload"]: r["met"] for r in rows if r["met"] is not None} == {"inject sweep compile time": True}
    assert not any("CPU seconds" in r["workload"] or "CPU second" in r["workload"] for r in rows)

    # nugraph_latency
    nugraph_latency = stub_nugraph_latency(monkeypatch)
    monkeypatch.setattr(nugraph_latency, "cpu_time", lambda fn, repeats: pytest.fail("CPU time measured on a TPU"))
    monkeypatch.setattr(nugraph_latency, "child", lambda kind, quick, env: pytest.fail(f"{kind} child ran on a TPU"))
    _on(monkeypatch, "tpu")
    path = tmp_path / "nugraph.json"
    nugraph_latency.main(["--quick", "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    judged = {r["workload"] for r in rows if r["met"] is not None}
    assert judged == {"nugraph2 compile, one bucket of ~1000 hits (s)", "nugraph2 compile, batch 32 (s)"}, judged
    assert not any("host devices" in r["workload"] or "glibc default" in r["workload"] for r in rows)

    # gpt2_forward: no PyTorch comparison; the goals of no device (cached <= 1.1x plain, compile) judged
    _on(monkeypatch, "tpu")
    gpt2 = _gpt2_forward_rows(monkeypatch, tmp_path, [], torch=lambda *a, **k: pytest.fail("PyTorch timed"))
    assert {w for w, r in gpt2.items() if r["met"] is not None} == {
        "gpt2 compile, no cache", "gpt2 compile, 12 hook_result cached", "cached / plain (glibc default)",
        "gpt2 forward 8x128, 12 hook_result cached (glibc default)"}
    assert not any("PyTorch eager" in r["goal"] for r in gpt2.values() if r["goal"])


@pytest.mark.parametrize("devices, got", [(2, "2"), ("cpu", "'cpu'"), ([0, 1], r"0 \(int\)"),
                                          (["cpu:0"], r"'cpu:0' \(str\)")])
def test_make_mesh_refuses_what_is_not_a_list_of_devices(devices, got):
    """make_mesh(4) (a device count) was a TypeError from list(); make_mesh("cpu") built a mesh of the
    letters c, p, u and make_mesh([0, 1]) one of ints, each failing later inside device_put with an
    error about neither. Now a ValueError naming devices and what came."""
    from jaxinterp import parallel

    with pytest.raises(ValueError, match=rf"^devices: expected (a list of )?jax devices \(jax.devices\(\)\[:n\]\), got {got}"):
        parallel.make_mesh(devices)
