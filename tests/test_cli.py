"""The `jaxinterp` command: help, the GPT-2 subcommand, the demo report, the bench table."""

import subprocess
import sys

from jaxinterp import bench, cli, demo

from conftest import TINY_GPT2


def test_help_lists_every_subcommand():
    text = cli.build_parser().format_help()
    for name in ("demo", "bench", "gpt2"):
        assert name in text


def test_bad_input_is_one_line_on_stderr_and_exit_2(capsys):
    code = cli.main(["gpt2", "run", "--model", str(TINY_GPT2), "--prompt", "w1 " * 40])
    assert code == 2
    assert "n_positions is only 32" in capsys.readouterr().err


def test_gpt2_run_prints_next_tokens_and_cache_shapes(capsys):
    assert cli.main(["gpt2", "run", "--model", str(TINY_GPT2), "--prompt", "w1 w2 w3",
                     "--cache", "blocks.0.attn.hook_pattern"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.hook_pattern: shape [1, 4, 3, 3]" in out


def test_demo_gpt2_section_writes_a_self_contained_report(tmp_path):
    index, failed = demo.run(tmp_path, quick=True, only=["transformer"])
    assert failed == []
    html = index.read_text()
    assert "data:image/png;base64," in html and "logit lens" in html.lower()
    assert (tmp_path / "gpt2_attention_patterns.png").stat().st_size > 1000


def test_bench_table_marks_failures_and_goals():
    results = {"benchmarks": [
        {"script": "a.py", "returncode": 0, "rows": [
            {"workload": "w", "figure": 1.5, "unit": "s", "goal": "<= 2 s", "reference": "3 s", "met": True}]},
        {"script": "b.py", "returncode": 1}]}
    text = bench.table(results)
    assert "b.py" in text and "FAILED" in text and "yes" in text


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "jaxinterp.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_time_interleaved_runs_round_robin():
    import jax.numpy as jnp

    from jaxinterp import benchtools

    calls = []
    fns = {name: (lambda name=name: calls.append(name) or jnp.zeros(())) for name in ("a", "b")}
    t = benchtools.time_interleaved(fns, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # first calls apart, then alternating
    assert set(t) == {"a", "b"} and all(x.repeats == 3 and 0 <= x.min_s <= x.median_s for x in t.values())


def test_a_closed_pipe_ends_the_command_quietly():
    """`jaxinterp toyworld facts | head -1`: exit status 141 (SIGPIPE's), no traceback."""
    cmd = [sys.executable, "-m", "jaxinterp.cli", "toyworld", "facts", "--people", "2000"]  # ~1 MB of text
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"person (2000): ")
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141 and proc.stderr.read() == b""
