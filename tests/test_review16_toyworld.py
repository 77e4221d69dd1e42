"""Review of jaxinterp/toyworld (session 16): determinism, the held-out split, the tokenizer, the
evaluation's inputs, training's run folder and the CLI. Tiny worlds and a few steps only."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxinterp.toyworld import MODEL_DIR, evaluate, train as trainmod
from jaxinterp.toyworld import tokenizer as toktools
from jaxinterp.toyworld.world import (WorldConfig, build_world, run_world_config, training_sentences,
                                      two_hop_prompts)

TINY_WORLD = WorldConfig(n_countries=2, cities_per_country=2, n_people=6, n_companies=2, seed=3)
TINY_TRAIN = trainmod.TrainConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=320, n_positions=48, batch_size=8,
                                  steps=2, checkpoint_every=2, warmup_steps=1)


# ---------------------------------------------------------------------------------------------------
# World: seeds and numpy scalars.

def test_negative_world_seed_is_refused():
    """random.Random(-3) is random.Random(3): WorldConfig(seed=-3) built seed 3's world under another name."""
    with pytest.raises(ValueError, match="WorldConfig.seed must be at least 0, got -3"):
        WorldConfig(seed=-3)


def test_cli_negative_world_seed_is_an_argparse_error(capsys):
    from jaxinterp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["toyworld", "facts", "--world-seed", "-3"])
    assert e.value.code == 2
    assert "argument --world-seed: expected a non-negative integer, got -3" in capsys.readouterr().err


def test_numpy_scalars_in_the_configs_are_python_numbers():
    """WorldConfig and TrainConfig accept numpy integers (checks.is_integer), but random.Random refused an
    np.int64 seed (TypeError in build_world) and json.dumps refused them in run.json / train.json (the
    latter only after the whole run had trained)."""
    w = WorldConfig(n_countries=np.int64(2), cities_per_country=np.int32(2), n_people=np.int64(6),
                    n_companies=np.int64(2), train_fraction=np.float32(0.5), seed=np.int64(3))
    assert build_world(w).facts == build_world(TINY_WORLD).facts  # was: TypeError from random.Random
    json.dumps(dataclasses.asdict(w))
    assert w == TINY_WORLD and all(type(v) in (int, float) for v in dataclasses.asdict(w).values())
    cfg = dataclasses.replace(TINY_TRAIN, steps=np.int64(2), batch_size=np.int32(8), learning_rate=np.float32(4e-3),
                              seed=np.uint8(0))
    json.dumps(dataclasses.asdict(cfg))  # was: Object of type int64 is not JSON serializable
    assert all(type(v) in (int, float) for v in dataclasses.asdict(cfg).values())


# ---------------------------------------------------------------------------------------------------
# Determinism, the held-out split and the tokenizer (checks of the stated promises; they held).

_DETERMINISM = """
import hashlib, json
from jaxinterp.toyworld.world import WorldConfig, build_world, training_sentences
from jaxinterp.toyworld import tokenizer as toktools
from jaxinterp.toyworld.train import tokenizer_fingerprint
w = build_world(WorldConfig(n_countries=2, cities_per_country=2, n_people=6, n_companies=2, seed=3))
text = training_sentences(w)
print(hashlib.sha256(json.dumps([w.entities, w.facts, w.two_hops, text]).encode()).hexdigest(),
      tokenizer_fingerprint(toktools.train_tokenizer(text, vocab_size=320)))
"""


def test_world_text_and_tokenizer_do_not_depend_on_the_hash_seed():
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run([sys.executable, "-c", _DETERMINISM], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip().splitlines()[-1])
    assert len(outs) == 1, outs


@pytest.mark.parametrize("config", [WorldConfig(seed=s) for s in (0, 1, 7)]
                         + [dataclasses.replace(TINY_WORLD, seed=s) for s in range(5)]
                         + [WorldConfig(n_people=3, n_companies=10, seed=2)])  # founders repeat
def test_held_out_two_hop_text_never_reaches_the_training_text(config):
    world = build_world(config)
    text = "\n".join(training_sentences(world))
    held = [th for th in world.two_hops if not th.trained]
    assert held
    for th in held:
        for p in two_hop_prompts(th):
            assert p not in text, p


def test_every_world_name_round_trips_through_the_shipped_tokenizer():
    from jaxinterp.transformer import load_tokenizer

    tok = load_tokenizer(MODEL_DIR)
    world = build_world(WorldConfig())
    for names in world.entities.values():
        for n in names:
            assert tok.decode(toktools.answer_ids(tok, n)) == " " + n
            assert tok.decode(toktools.encode(tok, n, bos=False)) == n
    # byte-level: no character is unknown, so nothing is refused or lost
    assert tok.decode(toktools.encode(tok, "Zürich ✓", bos=False)) == "Zürich ✓"


# ---------------------------------------------------------------------------------------------------
# Evaluation inputs.

@pytest.mark.parametrize("prompts,answers,match", [
    (["The language of", "People in"], ["Ulvan"], r"answers: expected one answer per prompt \(2\), got 1"),
    (["The language of"], ["Ulvan", "Keshor"], r"answers: expected one answer per prompt \(1\), got 2"),
    ([], [], "prompts: expected at least one prompt, got none"),
])
def test_score_refuses_prompts_and_answers_that_do_not_pair(prompts, answers, match):
    """zip dropped the unpaired prompts: fewer scores than prompts, silently; no prompt was max()'s error."""
    with pytest.raises(ValueError, match=match):
        evaluate.score(None, None, None, prompts, answers)  # refused before the model is touched


def test_model_world_is_found_from_inside_the_model_folder(monkeypatch):
    """`--model .` (run from inside the model folder): Path('.').parent is '.', so no train.json was found
    and the default world was used, silently."""
    record = json.loads((MODEL_DIR.parent / "train.json").read_text())
    monkeypatch.chdir(MODEL_DIR)
    assert run_world_config(".") == WorldConfig(**record["world"])
    monkeypatch.chdir(MODEL_DIR.parent)
    assert run_world_config("model/") == WorldConfig(**record["world"])


# ---------------------------------------------------------------------------------------------------
# Training: the run folder.

def test_train_into_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    """It failed in orbax with NotADirectoryError after the world was built and the tokenizer trained."""
    monkeypatch.setattr(toktools, "train_tokenizer", lambda *a, **k: pytest.fail("trained a tokenizer first"))
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match=f"out_dir: expected a folder, got the file {f}"):
        trainmod.train(f, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False)
    with pytest.raises(ValueError, match="out_dir: cannot write into .*afile is not a folder"):
        trainmod.train(f / "run", world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False)
    assert f.read_text() == "x"


def test_a_finished_run_run_again_keeps_its_final_loss(tmp_path):
    """Re-running a finished run's command trains nothing and wrote final_loss null over the loss its
    train.json held."""
    first = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False, log_every=1)
    recorded = json.loads((tmp_path / "train.json").read_text())
    assert recorded["final_loss"] == first.losses[-1] and recorded["steps_done"] == 2
    again = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False, log_every=1)
    assert again.resumed_from == 2 and again.losses == []
    after = json.loads((tmp_path / "train.json").read_text())
    assert after["final_loss"] == recorded["final_loss"] and after["steps_done"] == 2
    for name, w in first.params.items():  # the same model again
        import jax

        jax.tree.map(np.testing.assert_array_equal, w, again.params[name])


def test_train_json_is_strict_json_when_the_loss_is_nan(tmp_path, monkeypatch):
    """A diverged run's NaN final loss was written as a bare NaN (not JSON: jq and JavaScript refuse it)."""
    real = trainmod._train_step

    def nan_step(cfg):
        step = real(cfg)
        return lambda *a: (*step(*a)[:2], np.float32(np.nan))

    monkeypatch.setattr(trainmod, "_train_step", nan_step)
    trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False, log_every=1)
    text = (tmp_path / "train.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))["final_loss"] is None


_HUGE_VOCAB = """
import pathlib, sys
from jaxinterp.toyworld import tokenizer as toktools, train as trainmod
for call in (lambda: toktools.train_tokenizer(["a b c."], vocab_size=10**12),
             lambda: trainmod.train(pathlib.Path(sys.argv[1]), cfg=trainmod.TrainConfig(vocab_size=10**12), progress=False)):
    try:
        call()
    except ValueError as e:
        print("refused:", e)
"""


def test_a_huge_vocabulary_is_refused_not_a_process_abort(tmp_path):
    """The BPE trainer allocates vocab_size entries up front: vocab_size=10**12 (or --vocab-size) aborted
    the whole process with a Rust out-of-memory error, no Python exception; now a ValueError first."""
    r = subprocess.run([sys.executable, "-c", _HUGE_VOCAB, str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("refused:")]
    assert lines == [
        f"refused: vocab_size must be at least 300 (256 bytes, BOS and some merges) and at most {2**20}, "
        f"an integer; got {10**12}",
        f"refused: TrainConfig.vocab_size must be at least 300 (256 bytes, BOS and some merges) and at most {2**20} "
        f"(the BPE trainer allocates that many entries), got {10**12}"]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="an integer; got 400.5"):
        toktools.train_tokenizer(["a b c."], vocab_size=400.5)


def test_a_refused_restore_does_not_record_the_refused_settings(tmp_path):
    """A folder without run.json or train.json (a run killed before it returned, older code) is checked
    only by its checkpoint's shapes, but run.json was written with the asked settings before the restore
    failed (orbax's 'Requested shape ...'): the run's own settings were then refused as "other settings"."""
    cfg = dataclasses.replace(TINY_TRAIN, steps=4)
    trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=cfg, max_minutes=1e-9, progress=False)
    (tmp_path / "run.json").unlink()
    (tmp_path / "train.json").unlink()
    with pytest.raises(ValueError, match=f"out_dir: the checkpoint of step 1 in {tmp_path} does not fit these settings"):
        trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=dataclasses.replace(cfg, n_embd=64), progress=False)
    assert not (tmp_path / "run.json").exists()
    resumed = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=cfg, progress=False)
    assert resumed.resumed_from == 1
    assert json.loads((tmp_path / "run.json").read_text())["train"]["n_embd"] == 32


@pytest.mark.parametrize("kwargs,match", [
    ({"max_minutes": float("nan")}, r"max_minutes must be positive, got nan"),  # never stopped the run
    ({"max_minutes": "5"}, r"max_minutes must be positive, got '5'"),            # a TypeError mid-run
    ({"log_every": 1.5}, r"log_every must be at least 1, got 1.5 \(an integer of steps\)"),  # logged at 3, 6, 9
])
def test_train_limits_are_checked_before_any_work(tmp_path, monkeypatch, kwargs, match):
    monkeypatch.setattr(toktools, "train_tokenizer", lambda *a, **k: pytest.fail("trained a tokenizer first"))
    with pytest.raises(ValueError, match=match):
        trainmod.train(tmp_path / "run", world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False, **kwargs)
    assert not (tmp_path / "run").exists()


def test_evaluate_defaults_to_the_models_own_world(tmp_path):
    """evaluate(model) scored any model on WorldConfig()'s world (the CLI and ship passed the run's
    world; the Python default did not): a run of another world was scored on prompts it never saw as
    single-hop facts and on compositions it may have trained on, as "held out"."""
    trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False)
    res = evaluate.evaluate(tmp_path / "model", candidates=False)
    assert res == evaluate.evaluate(tmp_path / "model", world_config=TINY_WORLD, candidates=False)
    single = next(r for r in res["rows"] if r["group"] == "single-hop" and r["kind"] == "all")
    assert single["prompts"] == 3 * len(build_world(TINY_WORLD).facts)
    assert res["tokenization"]["person"]["entities"] == TINY_WORLD.n_people


def test_a_run_stopped_by_its_time_limit_logs_its_last_steps(tmp_path):
    """The losses since the last log were dropped at a --minutes stop: stopped after step 1 with
    log_every 3, the run logged nothing and train.json said final_loss null (with log_every 50, the
    loss of a window up to 49 steps old)."""
    cfg = dataclasses.replace(TINY_TRAIN, steps=6)
    stopped = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=cfg, max_minutes=1e-9, progress=False, log_every=3)
    assert len(stopped.losses) == 1 and np.isfinite(stopped.losses[0])
    assert json.loads((tmp_path / "train.json").read_text())["final_loss"] == stopped.losses[0]
    straight = trainmod.train(tmp_path / "straight", world_config=TINY_WORLD, cfg=cfg, progress=False, log_every=1)
    assert stopped.losses[0] == straight.losses[0]  # the loss of step 1, the one step it trained


def test_a_checkpoint_of_other_shapes_is_refused_from_its_metadata_without_restoring(tmp_path, monkeypatch):
    """A checkpoint of other shapes was refused by orbax's failed restore, which leaves one asyncio
    task per array whose error is logged at exit ('Task exception was never retrieved'); its shapes
    are now compared from the checkpoint's metadata first, and the message names the entry."""
    import orbax.checkpoint as ocp

    cfg = dataclasses.replace(TINY_TRAIN, steps=4)
    trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=cfg, max_minutes=1e-9, progress=False)
    (tmp_path / "run.json").unlink()
    (tmp_path / "train.json").unlink()
    monkeypatch.setattr(ocp.CheckpointManager, "restore", lambda *a, **k: pytest.fail("restored a checkpoint "
                                                                                       "of other shapes"))
    with pytest.raises(ValueError, match=r"does not fit these settings \(params\['h_0'\]\['attn'\]\['c_attn'\]\['bias'\]: "
                                         r"stored shape \(96,\), these settings shape \(192,\)\)"):
        trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=dataclasses.replace(cfg, n_embd=64), progress=False)
