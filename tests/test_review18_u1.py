"""Review 18 (u1): the NuGraph2 command line used end to end (simulate, train, eval, convert)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import pytest

from jaxinterp.nugraph import hdf5, model, simulate, train
from jaxinterp.nugraph.model import NuGraph2Config
from test_review14_nugraph import _cli

TINY = NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)  # not test_nugraph_train's (it counts compiles)
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model_and_events(tmp_path_factory):
    """A tiny model folder and a small events file of its norm."""
    raws = simulate.simulate(4, seed=3, config=simulate.SimConfig(max_hits_per_plane=60))
    folder = tmp_path_factory.mktemp("u1")
    run = folder / "run"
    run.mkdir()
    train.save_model(run, model.init(jax.random.key(0), TINY), TINY, hdf5.compute_norm(raws), {"command": "test"})
    return run, hdf5.write_events(folder / "ev.gnn.h5", raws)


def test_eval_repeated_through_the_model_file_is_the_same_evaluation(model_and_events, tmp_path, monkeypatch):
    """`eval --params RUN` and then `--params RUN/model.npz` (which --help offers: "or a file in that
    folder") read the same model; inputs recorded the path as given, so the repeat into the same --out
    was refused as another evaluation. Both now record the folder."""
    run, h5 = model_and_events
    out = tmp_path / "ev"
    base = ["nugraph", "eval", str(h5), "--split", "all", "--displays", "0", "--out", str(out)]
    assert _cli(base + ["--params", str(run)], monkeypatch) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["inputs"]["params"] == str(run.resolve())
    assert _cli(base + ["--params", str(run / "model.npz")], monkeypatch) == 0
    monkeypatch.chdir(run)
    assert _cli(base + ["--params", "model.json"], monkeypatch) == 0
    assert json.loads((out / "metrics.json").read_text())["inputs"] == first["inputs"]
    # another model folder is still another evaluation
    other = tmp_path / "other"
    other.mkdir()
    train.save_model(other, model.init(jax.random.key(1), TINY), TINY, hdf5.read_info(h5).norm)
    assert _cli(base + ["--params", str(other / "model.npz")], monkeypatch) == 2


def test_convert_repeated_through_other_paths_is_the_same_model(tmp_path, monkeypatch, capsys):
    """`nugraph convert` recorded the .ckpt and --norm paths as given and a repeat had to name them
    alike: the same command with ./FILE, or run from another folder, was refused as another model.
    The paths are now resolved and the checkpoint compared by its bytes; another norm file is still
    another model."""
    import shutil

    ckpt = shutil.copy(FIXTURES / "nugraph2_reference.ckpt", tmp_path / "NuGraph2.ckpt")
    shutil.copy(FIXTURES / "nugraph2_events.gnn.h5", tmp_path / "ev.gnn.h5")
    monkeypatch.chdir(tmp_path)
    assert _cli(["nugraph", "convert", "NuGraph2.ckpt", "official", "--norm", "ev.gnn.h5"], monkeypatch) == 0
    assert _cli(["nugraph", "convert", "./NuGraph2.ckpt", "official", "--norm", "./ev.gnn.h5"], monkeypatch) == 0
    meta = json.loads((tmp_path / "official" / "model.json").read_text())
    assert meta["converted_from"] == str(Path(ckpt).resolve())
    assert meta["norm_from"] == str((tmp_path / "ev.gnn.h5").resolve())
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert _cli(["nugraph", "convert", "../NuGraph2.ckpt", "../official", "--norm", "../ev.gnn.h5"], monkeypatch) == 0
    capsys.readouterr()
    shutil.copy(FIXTURES / "nugraph2_events.gnn.h5", tmp_path / "other.gnn.h5")
    assert _cli(["nugraph", "convert", "../NuGraph2.ckpt", "../official", "--norm", "../other.gnn.h5"],
                monkeypatch) == 2
    assert "of another model" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "official")) == ["model.json", "model.npz"]


@pytest.mark.parametrize("make, expected", [
    (lambda d: None, "--init: expected model.npz in {d} (a `nugraph train` run folder), not found"),
    (lambda d: (d / "model.npz").write_bytes(b"x") and (d / "model.json").write_text("{"),
     "--init: {d}/model.json is not valid JSON"),
], ids=["empty folder", "broken model.json"])
def test_train_init_errors_name_the_init_option(model_and_events, tmp_path, monkeypatch, capsys, make, expected):
    """`train --init DIR` of a folder without a model said "params: expected model.npz in DIR", naming
    an option `train` does not have; load_model's errors now name the argument the folder came from."""
    _, h5 = model_and_events
    start = tmp_path / "start"
    start.mkdir()
    make(start)
    out = tmp_path / "run"
    assert _cli(["nugraph", "train", str(h5), "--out", str(out), "--planar-features", "8", "--nexus-features", "4",
                 "--iterations", "2", "--batch-size", "1", "--init", str(start)], monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"jaxinterp nugraph: error: {expected.format(d=start)}" in err, err
    assert not out.exists()  # nothing read or written before the error


def test_eval_of_an_unfinished_run_says_the_run_has_not_finished(model_and_events, tmp_path, monkeypatch, capsys):
    """`eval --params RUN` of a run stopped before its end (--max-steps, or killed) said "expected
    model.npz in RUN (a `nugraph train` run folder), not found", of a folder that is one; it now says the
    run has not finished, at which checkpoint it stands, and that the train command finishes it."""
    _, h5 = model_and_events
    run = tmp_path / "run"
    train_argv = ["nugraph", "train", str(h5), "--out", str(run), "--planar-features", "8", "--nexus-features", "4",
                  "--iterations", "2", "--batch-size", "1", "--epochs", "1", "--limit-val", "0"]
    assert _cli(train_argv + ["--max-steps", "1"], monkeypatch) == 0
    capsys.readouterr()
    out = tmp_path / "ev"
    assert _cli(["nugraph", "eval", str(h5), "--params", str(run), "--out", str(out)], monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"params: expected model.npz in {run}, not found: it is a `nugraph train` run folder whose run has not "
            "finished (its last checkpoint is at step 1); run the same `nugraph train` command again") in err, err
    assert not out.exists()
    assert _cli(train_argv, monkeypatch) == 0  # as it says: the run finishes, and eval reads its model
    assert _cli(["nugraph", "eval", str(h5), "--params", str(run), "--out", str(out), "--displays", "0"],
                monkeypatch) == 0


def test_a_resume_with_other_settings_names_each_setting_that_differs(model_and_events, tmp_path, monkeypatch,
                                                                      capsys):
    """A rerun of a killed `train` with one option changed (--checkpoint-every 2 for 5) was refused with
    the whole run.json and not this command's settings: which one differed was left to find. The error
    now names each differing setting with both values."""
    _, h5 = model_and_events
    run = tmp_path / "run"
    argv = ["nugraph", "train", str(h5), "--out", str(run), "--planar-features", "8", "--nexus-features", "4",
            "--iterations", "2", "--batch-size", "1", "--epochs", "1", "--limit-val", "0"]
    train.train(h5, run, config=train.TrainConfig(epochs=1, batch_size=1, checkpoint_every=5), model_config=TINY,
                max_steps=0, limit_val=0, progress=False, log=lambda *a: None)
    before = (run / "run.json").read_text()
    assert _cli(argv + ["--checkpoint-every", "2", "--planar-features", "16"], monkeypatch) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("holds a run with other settings (train_config.checkpoint_every: the run's 5, this one's 2; "
            "model_config.planar_features: the run's 8, this one's 16); use a new --out folder") in err, err
    assert (run / "run.json").read_text() == before and sorted(os.listdir(run)) == ["checkpoints", "run.json"]
    assert _cli(argv + ["--checkpoint-every", "5", "--max-steps", "1"], monkeypatch) == 0  # the same settings resume


def test_a_warm_started_run_resumes_through_another_spelling_of_init(model_and_events, tmp_path, monkeypatch,
                                                                      capsys):
    """run.json kept --init as typed, so the rerun of a killed `train --init start` as `--init ./start`,
    `--init start/model.npz` or from another folder was refused as a run of another start: the folder
    is now recorded resolved (and a run.json of before, relative, is compared from where it is resumed)."""
    import shutil

    start, h5 = model_and_events
    shutil.copytree(start, tmp_path / "start")
    monkeypatch.chdir(tmp_path)
    argv = ["nugraph", "train", str(h5), "--planar-features", "8", "--nexus-features", "4", "--iterations", "2",
            "--batch-size", "1", "--epochs", "3", "--limit-val", "0"]  # 2 training events: 6 steps
    assert _cli(argv + ["--out", "run", "--init", "start", "--max-steps", "1"], monkeypatch) == 0
    assert _cli(argv + ["--out", "run", "--init", "./start", "--max-steps", "2"], monkeypatch) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["init"] == str((tmp_path / "start").resolve())
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert _cli(argv + ["--out", "../run", "--init", "../start/model.npz", "--max-steps", "3"], monkeypatch) == 0
    assert "stopped at step 3" in capsys.readouterr().out
    # another start is still another run
    other = tmp_path / "other"
    shutil.copytree(start, other)
    assert _cli(argv + ["--out", "../run", "--init", str(other)], monkeypatch) == 2
    assert f"init: the run's '{(tmp_path / 'start').resolve()}', this one's '{other.resolve()}'" in \
        " ".join(capsys.readouterr().err.split())
    # a run.json of before this fix (--init as typed, relative) resumes from the folder it was begun in
    monkeypatch.chdir(tmp_path)
    run_json = tmp_path / "run" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "init": "start"}, indent=1))
    assert _cli(argv + ["--out", "run", "--init", "start", "--max-steps", "4"], monkeypatch) == 0
    assert "stopped at step 4" in capsys.readouterr().out


def test_eval_reports_the_size_of_the_batch_it_timed(model_and_events, tmp_path, monkeypatch, capsys):
    """eval's inference line said "the jitted forward on the first batch of 32" (--batch-size) of a split
    of fewer events, where the batch timed held those alone; it now says how many events it timed."""
    run, h5 = model_and_events
    assert _cli(["nugraph", "eval", str(h5), "--params", str(run), "--split", "all", "--displays", "0",
                 "--out", str(tmp_path / "ev")], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "all: 4 events" in out and "(the jitted forward on the first batch, 4 events; compile" in out, out
    assert _cli(["nugraph", "eval", str(h5), "--params", str(run), "--split", "all", "--displays", "0",
                 "--batch-size", "3", "--out", str(tmp_path / "ev3")], monkeypatch) == 0
    assert "(the jitted forward on the first batch, 3 events; compile" in capsys.readouterr().out
