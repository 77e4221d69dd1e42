"""The `jaxinterp` command: help, the GPT-2 subcommand, the demo report, the bench table."""

import re
import subprocess
import sys

from jaxinterp import bench, cli, demo

from conftest import TINY_GPT2


def test_help_lists_every_subcommand():
    """All eight, each on its own line with its help (this checked only that the words demo, bench and
    gpt2 occur somewhere in the text, as 'gpt2' does in the description too)."""
    import re

    text = cli.build_parser().format_help()
    listed = re.findall(r"^    (\w+) +\S", text, flags=re.M)
    assert listed == ["demo", "bench", "gpt2", "nugraph", "toyworld", "lens", "merge", "inject"], listed
    assert len(cli.SUBCOMMAND_MODULES) == len(listed)


def test_bad_input_is_one_line_on_stderr_and_exit_2(capsys):
    code = cli.main(["gpt2", "run", "--model", str(TINY_GPT2), "--prompt", "w1 " * 40])
    assert code == 2
    err = capsys.readouterr().err  # checked from config.json, before the weights are read (1f1bf48)
    assert err == "jaxinterp gpt2: error: prompt: expected at most n_positions = 32 tokens, got 40\n"


def test_gpt2_run_prints_next_tokens_and_cache_shapes(capsys, gpt2_ref):
    """The fixture's first prompt (its ids are the word-level tokens w<id-1>): the top 5 next tokens and
    their probabilities are transformers' (hf_logits), the cached pattern's statistics TransformerLens's.
    (This checked only the cache line's shape.)"""
    import re

    import numpy as np

    ids = gpt2_ref["tokens"][0]
    assert cli.main(["gpt2", "run", "--model", str(TINY_GPT2), "--prompt", " ".join(f"w{i - 1}" for i in ids),
                     "--cache", "blocks.0.attn.hook_pattern"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{TINY_GPT2}: 3 layers, 4 heads, d_model 64; 10 tokens"
    logits = gpt2_ref["hf_logits"][0, -1].astype(np.float64)
    p_ref = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = np.argsort(-p_ref)[:5]  # probabilities 0.0170 0.0148 0.0142 0.0137 0.0137: apart by >= 4.5e-5
    printed = [re.fullmatch(r" +'w(\d+)'  p=(0\.\d{4})", line).groups() for line in lines[1:6]]
    assert [int(w) + 1 for w, _ in printed] == top.tolist()
    np.testing.assert_allclose([float(p) for _, p in printed], p_ref[top], rtol=0, atol=5e-5 + 1e-7)  # 4 decimals
    pattern = gpt2_ref["tl/blocks.0.attn.hook_pattern"][0]
    m = re.fullmatch(r"  blocks\.0\.attn\.hook_pattern: shape \[1, 4, 10, 10\], mean \+(0\.\d{4}), std (0\.\d{4})", lines[6])
    assert m and lines[7:] == [], lines[6:]
    assert m.group(1) == "0.1000"  # each causal row sums to 1: the mean is 1 / 10 positions
    assert abs(float(m.group(2)) - pattern.std()) <= 5e-5 + 1e-7, (m.group(2), pattern.std())


def test_demo_gpt2_section_writes_a_self_contained_report(tmp_path):
    index, failed = demo.run(tmp_path, quick=True, only=["transformer"])
    assert failed == []
    html = index.read_text()
    assert "data:image/png;base64," in html and "logit lens" in html.lower()
    assert (tmp_path / "gpt2_attention_patterns.png").stat().st_size > 1000


def test_bench_table_marks_failures_and_goals():
    """Every line whole (this checked only that 'b.py', 'FAILED' and 'yes' occur somewhere): a met, a
    missed and an ungoaled row, a script that failed and one that wrote no JSON."""
    results = {"benchmarks": [
        {"script": "a.py", "returncode": 0, "rows": [
            {"workload": "w", "figure": 1.5, "unit": "s", "goal": "<= 2 s", "reference": "3 s", "met": True},
            {"workload": "v", "figure": 2.5, "unit": "GB", "goal": "<= 2 GB", "reference": None, "met": False},
            {"workload": "u", "figure": 7.0, "unit": "x", "goal": None, "reference": "4 x", "met": None}]},
        {"script": "b.py", "returncode": 1},
        {"script": "c.py", "returncode": 0}]}
    cols = lambda *c: f"{c[0]:<58} {c[1]:>12} {c[2]:<10} {c[3]:<22} {c[4]:<26} {c[5]}"  # noqa: E731
    assert bench.table(results).splitlines() == [
        cols("workload", "figure", "unit", "goal", "reference", "met"),
        cols("w", "1.5", "s", "<= 2 s", "3 s", "yes"),
        cols("v", "2.5", "GB", "<= 2 GB", "-", "NO"),
        cols("u", "7", "x", "-", "4 x", "-"),
        f"{'b.py':<58} FAILED (exit 1)",
        f"{'c.py':<58} FAILED (exit 0, but no JSON written)"]


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


def test_output_path_parsers(tmp_path):
    import argparse

    import pytest

    from jaxinterp.cliargs import output_file, output_folder

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert output_file(str(tmp_path / "new" / "deeper" / "out.json")) == str(tmp_path / "new" / "deeper" / "out.json")
    assert output_file(str(tmp_path / "f")) == str(tmp_path / "f")  # an existing file is replaced (atomically)
    assert output_folder(str(tmp_path / "d")) == str(tmp_path / "d")
    assert output_folder(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    f, d = tmp_path / "f", tmp_path / "d"
    # each message whole: the path that came and why it cannot be written (the matches were a few words)
    for parse, path, message in [(output_file, d, f"expected a file path, got the folder {d}"),
                                 (output_file, f / "out.json", f"cannot write {f / 'out.json'}: {f} is not a folder"),
                                 (output_folder, f, f"expected a folder, got the file {f}"),
                                 (output_folder, f / "run", f"cannot write into {f / 'run'}: {f} is not a folder")]:
        with pytest.raises(argparse.ArgumentTypeError, match="^" + re.escape(message) + "$"):
            parse(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]  # nothing made by a check


def test_every_output_option_is_checked_when_parsed(tmp_path, capsys):
    """Each command's output file or folder is refused at parse time when it is the wrong kind of
    path, before a model loads or a run starts."""
    import pytest

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    f, d = str(tmp_path / "f"), str(tmp_path / "d")
    cases = [["demo", "--out", f], ["bench", "--out", f],
             ["lens", "train", "--model", "m", "--layer", "0", "--data", "x.txt", "--out", f],
             ["lens", "show", "--model", "m", "--lens", "l", "--prompt", "p", "--csv", d],
             ["merge", "yaml", "c.yaml", "--out", f], ["merge", "train-mlp", "--out", d],
             ["merge", "barrier", "a", "b", "--png", d], ["merge", "barrier", "a", "b", "--json", d],
             ["inject", "sweep", "--out", f], ["toyworld", "train", "--out", f],
             ["toyworld", "evaluate", "--json", d], ["toyworld", "prompts", "--out", d],
             ["nugraph", "simulate", "--events", "1", "--out", d], ["nugraph", "train", "x.h5", "--out", f],
             ["nugraph", "eval", "x.h5", "--out", f]]
    for argv in cases:
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args(argv)
        assert exc.value.code == 2, argv
        err = capsys.readouterr().err
        # the option, and which wrong kind of path came (either message passed for any case)
        option, value = next((a, b) for a, b in zip(argv, argv[1:]) if b in (f, d))
        why = f"expected a folder, got the file {f}" if value == f else f"expected a file path, got the folder {d}"
        assert err.endswith(f": error: argument {option}: {why}\n"), (argv, err)


def test_an_only_that_matches_nothing_is_refused_before_anything_is_written(tmp_path, capsys):
    """A typo in `--only` used to run nothing, write an empty report (or bench.json) and exit 0."""
    for argv in (["demo", "--only", "nugrpah"], ["demo", "--only", "lens", "nugrpah"],
                 ["bench", "--only", "nugrpah"], ["bench", "--only", "merge", "nugrpah"]):
        out = tmp_path / argv[0]
        assert cli.main([argv[0], "--out", str(out)] + argv[1:]) == 2, argv
        err = capsys.readouterr().err
        names = ", ".join(demo.SECTIONS) if argv[0] == "demo" else ", ".join(p.stem for p in bench.scripts())
        kind = "section" if argv[0] == "demo" else "script"
        assert err == f"jaxinterp {argv[0]}: error: only: expected parts of {kind} names ({names}), got ['nugrpah']\n", \
            (argv, err)
        assert not out.exists(), argv
    assert [p.name for p in bench.scripts(["nugraph", "lens"])] == ["lens_train.py", "nugraph_latency.py"]


def test_output_file_refuses_an_existing_file_in_a_folder_it_cannot_write(tmp_path, monkeypatch):
    """The file is replaced atomically (a temporary file beside it, then a rename): a writable old
    file in a folder where no file can be made (read-only permissions, `chattr +i`) must be refused
    when parsed, not after the work when the write fails."""
    import argparse
    import os

    import pytest

    from jaxinterp import cliargs

    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "out.json").write_text("old")
    access = os.access
    monkeypatch.setattr(cliargs.os, "access", lambda p, mode: False if os.fspath(p) == str(folder) else access(p, mode))
    message = f"cannot write {folder / 'out.json'}: folder {folder} is not writable"
    with pytest.raises(argparse.ArgumentTypeError, match="^" + re.escape(message) + "$"):
        cliargs.output_file(str(folder / "out.json"))


def fake_demo_sections(monkeypatch, module: str, **sections) -> None:
    """demo.SECTIONS replaced by `sections` (name -> fn(out_dir, *, quick)), in the order given, as
    functions of a module `module` registered in sys.modules for the demo to import."""
    import types

    fake = types.ModuleType(module)
    for name, fn in sections.items():
        setattr(fake, name, fn)
    monkeypatch.setitem(sys.modules, module, fake)
    monkeypatch.setattr(demo, "SECTIONS", [f"{module}:{name}" for name in sections])


def test_demo_shows_a_failed_section_as_its_escaped_error_and_exits_1(tmp_path, monkeypatch, capsys):
    from jaxinterp import report

    fake_demo_sections(
        monkeypatch, "_fake_demo_sections",
        good=lambda out_dir, *, quick: report.Section("Good <b>", report.table(["a<b"], [["<i>"]])),
        bad=lambda out_dir, *, quick: (_ for _ in ()).throw(RuntimeError("boom </div><script>x</script>")),
        none=lambda out_dir, *, quick: None)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "section failed: _fake_demo_sections:bad" in out and "section failed: _fake_demo_sections:none" in out
    page = (tmp_path / "index.html").read_text()
    assert "<h2 id='s0'>Good &lt;b&gt;</h2><table>" in page and "<td>&lt;i&gt;</td>" in page
    assert page.count("<div class='err'>") == 2 and "<script>" not in page
    assert "RuntimeError: boom &lt;/div&gt;&lt;script&gt;x&lt;/script&gt;" in page
    assert page.endswith("</body></html>")
