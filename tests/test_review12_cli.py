"""Review 12: the command line, the demo, atomic writes and the data-parallel helpers.

Each test failed on the code before its fix (checked by putting the old file back).
"""

from __future__ import annotations

import os
import stat

import pytest

from jaxinterp import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_atomic_write_never_sets_the_process_umask_to_zero(tmp_path, monkeypatch, umask_022):
    """The umask is process-wide: reading it with os.umask(0) and putting it back left a moment in
    which a file that another thread created (orbax's and merge's writer threads run beside atomic
    writes) got mode 0666, world-writable. Simulated here: a file is created at every umask change."""
    real_umask = os.umask
    others = []

    def umask(mask):
        previous = real_umask(mask)
        other = tmp_path / f"other{len(others)}"
        os.close(os.open(other, os.O_CREAT | os.O_WRONLY, 0o666))  # what another thread makes meanwhile
        others.append(_mode(other))
        return previous

    monkeypatch.setattr(os, "umask", umask)
    atomic.write_text(tmp_path / "a.txt", "x")
    assert [m for m in others if m & 0o022] == []
    assert _mode(tmp_path / "a.txt") == 0o644


@pytest.mark.parametrize("old_mode", [0o600, 0o755, 0o444, 0o640])
def test_an_atomic_rewrite_keeps_the_files_permissions(tmp_path, umask_022, old_mode):
    """A rewrite replaced a private 0600 file (or an executable script) with a 0644 one, where a
    plain `open(path, "w")` keeps the mode. A read-only old file is still replaced, as before."""
    target = tmp_path / "f.json"
    target.write_text("old")
    target.chmod(old_mode)
    atomic.write_text(target, "new")
    with atomic.atomic_path(target) as tmp:  # a writer that opens the file by name, as h5py does
        with open(tmp, "w") as f:
            f.write("newer")
    assert target.read_text() == "newer"
    assert _mode(target) == old_mode
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_new_file_gets_the_usual_mode_even_if_the_writer_made_it_private(tmp_path, umask_022):
    """safetensors and other writers that recreate the file by name leave 0600: the new file is 0644
    (0666 less the umask) as a new file from `open` would be."""
    with atomic.atomic_path(tmp_path / "m.bin") as tmp:
        os.unlink(tmp)
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    assert _mode(tmp_path / "m.bin") == 0o644


_FOUR_DEVICES = r'''
import jax, numpy as np
from jaxinterp import parallel

devs = jax.devices()
assert len(devs) == 4
for devices in (devs, devs[:3]):  # every batch size, even and uneven, on 4 and on 3 of the devices
    mesh = parallel.make_mesh(devices)
    for n in range(10):
        size = parallel.padded_size(n, mesh)
        batch = parallel.shard_batch(parallel.pad_batch({"x": np.arange(2.0 * n).reshape(n, 2),
                                                         "mask": np.ones(n, bool)}, size), mesh)
        assert size % len(devices) == 0 and size - len(devices) < n <= size, (n, size)
        assert batch["x"].sharding == parallel.data_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(batch["x"])[:n], np.arange(2.0 * n).reshape(n, 2))
        assert int(np.asarray(batch["mask"]).sum()) == n
try:
    parallel.make_mesh([devs[0], devs[1], devs[0]])
except ValueError as e:
    print("refused:", e)
'''


def test_a_mesh_with_a_device_twice_is_refused_and_uneven_batches_shard_on_four_devices(tmp_path):
    """make_mesh([d0, d1, d0]) built a mesh whose first shard_batch failed deep in device_put
    ("safe_zip() argument 1 has length ..."); it is a ValueError naming the device now."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: devices: expected distinct devices, got cpu:0 more than once" in proc.stdout, proc.stdout


@pytest.mark.parametrize("call, match", [
    (lambda p, mesh: p.padded_size(-5, mesh), r"padded_size: n: expected a non-negative integer, got -5"),
    (lambda p, mesh: p.padded_size(2.5, mesh), r"padded_size: n: expected a non-negative integer, got 2\.5"),
    (lambda p, mesh: p.pad_batch({"x": p.np.ones((2, 2))}, 3.0), r"pad_batch: size: expected a non-negative integer, got 3\.0"),
    (lambda p, mesh: p.pad_batch({"x": p.np.ones((2, 2))}, True), r"pad_batch: size: expected a non-negative integer, got True"),
])
def test_padded_sizes_must_be_non_negative_integers(call, match):
    """padded_size(-5) was -4 and padded_size(2.5) was 4.0; pad_batch(size=3.0) a numpy TypeError."""
    from jaxinterp import parallel

    with pytest.raises(ValueError, match="^" + match + "$"):  # the whole message
        call(parallel, parallel.make_mesh())


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    """A package assets folder in tmp_path holding an 'old' shipped model, and a finished run beside it."""
    import dataclasses
    import json

    import jaxinterp.toyworld as toyworld
    from jaxinterp.toyworld.world import WorldConfig

    assets = tmp_path / "assets"
    (assets / "model").mkdir(parents=True)
    (assets / "model" / "model.safetensors").write_text("old model")
    (assets / "train.json").write_text("old record")
    (assets / "eval.json").write_text("old figures")
    monkeypatch.setattr(toyworld, "ASSETS", assets)
    monkeypatch.setattr(toyworld, "MODEL_DIR", assets / "model")
    monkeypatch.setattr(toyworld, "EVAL_JSON", assets / "eval.json")
    monkeypatch.setattr(toyworld, "PROMPTS_CSV", assets / "prompts.csv")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.safetensors").write_text("new model")
    world = dataclasses.asdict(WorldConfig(n_countries=2, cities_per_country=2, n_people=4, n_companies=2))
    (run / "train.json").write_text(json.dumps({"world": world, "steps_done": 1}))
    return assets, run


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ship_evaluates_the_run_before_it_replaces_the_shipped_model(fake_assets, monkeypatch):
    """`toyworld ship` deleted the shipped model, copied the run's in, rewrote train.json and the
    prompts, and only then evaluated: a run whose model failed to load left the package with that
    model and the old model's figures. Now the run is evaluated first; a failure changes nothing."""
    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    assets, run = fake_assets
    before = _snapshot(assets)

    def broken(model, **kw):
        raise RuntimeError("cannot load the run's model")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    with pytest.raises(RuntimeError, match="^cannot load the run's model$"):  # the evaluation's own error, unwrapped
        cli.main(["toyworld", "ship", str(run)])
    assert _snapshot(assets) == before


def test_ship_keeps_the_shipped_model_when_the_swap_fails(fake_assets, monkeypatch):
    """The old model was removed before the new one was renamed into place: a failure (or a kill)
    between the two left no model at all. The old one is set aside and put back now."""
    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    assets, run = fake_assets
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kw: {"rows": []})
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith("assets.tmp"):  # the staging folder (session 17; was the model's, model.tmp)
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device$"):  # the rename's own error
        cli.main(["toyworld", "ship", str(run)])
    assert (assets / "model" / "model.safetensors").read_text() == "old model"
    assert not (assets / "model.old").exists() and not assets.with_name("assets.old").exists()
    assert not assets.with_name("assets.tmp").exists()


def test_ship_replaces_the_model_and_writes_strict_json(fake_assets, monkeypatch, capsys):
    import json

    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    assets, run = fake_assets
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kw: {"rows": [], "p": float("nan")})
    monkeypatch.setattr(evaluate, "markdown", lambda result: "table")
    assert cli.main(["toyworld", "ship", str(run)]) == 0
    assert (assets / "model" / "model.safetensors").read_text() == "new model"
    assert sorted(p.name for p in assets.iterdir()) == ["corpus.txt", "eval.json", "model", "prompts.csv",
                                                       "prompts_all.csv", "train.json"]
    assert json.loads((assets / "eval.json").read_text(), parse_constant=pytest.fail) == {"rows": [], "p": None}
    assert json.loads((assets / "train.json").read_text())["steps_done"] == 1


def test_ship_of_a_run_without_world_settings_is_a_clear_error(fake_assets, capsys):
    """A train.json without "world" was a KeyError traceback (exit 1)."""
    from jaxinterp import cli

    assets, run = fake_assets
    (run / "train.json").write_text('{"steps_done": 1}')
    before = _snapshot(assets)
    assert cli.main(["toyworld", "ship", str(run)]) == 2
    assert 'expected the world settings ("world")' in capsys.readouterr().err
    assert _snapshot(assets) == before


def test_toyworld_evaluate_json_is_strict(fake_assets, monkeypatch, tmp_path, capsys):
    """`toyworld evaluate --json` wrote json.dumps' bare NaN (not JSON: jq and JavaScript refuse it)."""
    import json

    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    assets, run = fake_assets
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kw: {"rows": [{"greedy": float("nan")}]})
    monkeypatch.setattr(evaluate, "markdown", lambda result: "table")
    out = tmp_path / "figures.json"
    assert cli.main(["toyworld", "evaluate", "--model", str(run / "model"), "--json", str(out)]) == 0
    assert json.loads(out.read_text(), parse_constant=pytest.fail) == {"rows": [{"greedy": None}]}


def test_toyworld_without_a_subcommand_shows_its_own_help(capsys):
    """`jaxinterp toyworld` printed the top-level help (demo, bench, gpt2, ...), not toyworld's."""
    from jaxinterp import cli

    assert cli.main(["toyworld"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxinterp toyworld") and "ship" in out


def test_a_failed_demo_section_says_why_on_stderr(tmp_path, monkeypatch, capsys):
    """The command printed only "section failed: <name>"; the reason was only in index.html."""
    import sys
    import types

    from jaxinterp import cli, demo, report

    fake = types.ModuleType("_fake_review12_sections")
    fake.good = lambda out_dir, *, quick: report.Section("Good", "<p>ok</p>")
    fake.bad = lambda out_dir, *, quick: {}["missing fixture"]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(demo, "SECTIONS", [f"{fake.__name__}:{f}" for f in ("bad", "good")])
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "section failed: _fake_review12_sections:bad: KeyError: 'missing fixture'" in err, err
    assert "<p>ok</p>" in (tmp_path / "index.html").read_text()  # the section after it still ran


def test_the_per_head_logit_lens_ranks_the_heads_own_contribution():
    """The GPT-2 section's 'tokens each head's output promotes' added b_U to each head's result @ W_U:
    the bias, larger than one head's contribution, set most of every head's list (on the shipped toy
    model L0H0's top five were b_U's own: ' is', ' was', ' in'). A head promotes what result @ W_U ranks."""
    import numpy as np

    from jaxinterp.transformer.demo import head_logit_lens

    W_U = np.eye(4, 6, dtype=np.float32)  # d_model 4, vocabulary 6: head direction i promotes token i
    b_U = np.array([0, 0, 0, 0, 5.0, 4.0], np.float32)  # tokens 4 and 5 favoured by the bias alone
    result = np.zeros((1, 2, 4), np.float32)
    result[0, 0, 2], result[0, 1, 0] = 0.3, 0.2  # head 0 writes towards token 2, head 1 towards token 0
    top = head_logit_lens({"lm_head": {"kernel": W_U, "bias": b_U}}, result, k=1)
    assert top[0, :, 0].tolist() == [2, 0]


@pytest.mark.parametrize("option, value, message", [
    ("--mean-energy", "1000", "expected a mean energy (GeV) of at most 20, got 1000"),
    ("--mean-energy", "0", "expected a positive finite number, got 0"),
    ("--cosmics", "1e9", "expected a mean number of cosmics of at most 100, got 1e9"),
])
def test_simulate_refuses_sizes_that_run_away_when_parsed(tmp_path, capsys, option, value, message):
    """`nugraph simulate --mean-energy 1000` took 15 GB for one event (100: > 8 GB for three) and
    `--cosmics 1e9` looped over a billion muons; the parser accepted any positive number."""
    from jaxinterp import cli

    argv = ["nugraph", "simulate", "--events", "1", "--out", str(tmp_path / "s.h5")]
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv + [option, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    args = cli.build_parser().parse_args(argv + ["--mean-energy", "20", "--cosmics", "100"])  # the bounds
    assert (args.mean_energy, args.cosmics) == (20.0, 100.0)


def test_make_reinstalls_when_setup_py_changes(tmp_path):
    """The install stamp depended on pyproject.toml only: a change to setup.py (which maps kernels/
    to jaxinterp.kernels) left .venv with the old install, and `make test` ran against it."""
    import shutil
    import subprocess
    import time
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    repo = Path(__file__).resolve().parents[1]
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(repo / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stamp = tmp_path / ".venv" / ".installed"
    stamp.touch()
    now = time.time()
    os.utime(tmp_path / "pyproject.toml", (now - 100, now - 100))
    os.utime(stamp, (now - 50, now - 50))
    dry = lambda: subprocess.run(["make", "-n", "venv"], cwd=tmp_path, capture_output=True, text=True, timeout=30).stdout  # noqa: E731
    os.utime(tmp_path / "setup.py", (now - 100, now - 100))
    assert "pip install" not in dry()  # up to date
    os.utime(tmp_path / "setup.py", (now, now))
    assert "pip install" in dry()


def test_nugraph_reference_section_without_the_source_trees_fixtures_is_a_documented_skip(tmp_path, monkeypatch):
    """The section reads tests/fixtures, which an installed wheel lacks: it was a FileNotFoundError
    traceback in the report (and demo's exit 1); it says why it is skipped now."""
    from jaxinterp.nugraph import demo as nugraph_demo

    monkeypatch.setattr(nugraph_demo, "FIXTURES", tmp_path / "no_fixtures")
    sec = nugraph_demo.section(tmp_path)
    assert sec.title.startswith("NuGraph2: official checkpoint") and "Skipped" in sec.html
    assert "nugraph2_reference.npz" in sec.html and "make demo" in sec.html
