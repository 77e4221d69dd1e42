"""Review findings (session 11) in the toy world, the torch reader and the CLI, each reproduced first."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import pytest

from jaxinterp.toyworld import MODEL_DIR
from jaxinterp.toyworld.world import WorldConfig, build_world, prompt_rows, write_prompts_csv


def _run_of_another_split(tmp_path, **world):
    """A run folder holding the shipped model's files and a train.json whose world differs."""
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(MODEL_DIR, run / "model")
    record = json.loads((MODEL_DIR.parent / "train.json").read_text())
    config = dataclasses.replace(WorldConfig(**record["world"]), **world)
    record["world"] = dataclasses.asdict(config)
    (run / "train.json").write_text(json.dumps(record))
    return run, config


def test_analysis_defaults_to_the_held_out_prompts_of_the_models_own_world(tmp_path, monkeypatch):
    """The analysis read the world from the model's train.json but the prompts from the shipped
    prompts.csv: for a run with another train_fraction, compositions it was trained on were swept as
    "held out" (and for another seed, entities it never saw: a KeyError after loading the model)."""
    from jaxinterp.toyworld import analysis

    run, config = _run_of_another_split(tmp_path, train_fraction=0.25)
    used = {}

    def fake_injection(params, cfg, tok, prompts_csv, *, world=None, words_csv=None, seed=0):
        used["prompts"], used["world"] = prompts_csv, world
        return {}, {}

    monkeypatch.setattr(analysis, "injection", fake_injection)
    assert analysis.main(["--out", str(tmp_path / "out"), "--model", str(run / "model"), "--lens-layers"]) == 0
    with open(used["prompts"], newline="") as f:
        rows = [tuple(r.values()) for r in csv.DictReader(f)]
    world = build_world(config)
    assert used["world"].two_hops == world.two_hops
    assert rows == [tuple(r) for r in prompt_rows(world, held_out_only=True)]


def test_analysis_refuses_prompts_of_another_world_before_writing(tmp_path, monkeypatch):
    from jaxinterp.toyworld import analysis

    run, _ = _run_of_another_split(tmp_path)
    other = tmp_path / "other.csv"
    write_prompts_csv(prompt_rows(build_world(WorldConfig(seed=1))), other)
    monkeypatch.setattr(analysis, "injection", lambda *a, **k: pytest.fail("the sweep ran on another world's prompts"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"prompts: expected memories that are entities of the model's world, got \["):
        analysis.main(["--out", str(out), "--model", str(run / "model"), "--prompts", str(other), "--lens-layers"])
    assert not out.exists()


def test_cli_evaluate_uses_the_world_the_model_was_trained_on(tmp_path, monkeypatch, capsys):
    """`toyworld evaluate --model RUN/model` evaluated on the default world unless every world option
    of the run was repeated: for a run with another train_fraction its "two-hop held-out" group held
    compositions the model was trained on. The world now comes from RUN/train.json; world options that
    contradict it are refused before the model loads."""
    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    run, config = _run_of_another_split(tmp_path, train_fraction=0.25)
    seen = []

    def fake_evaluate(model, *, world_config, candidates=True, params_config_tokenizer=None):
        seen.append(world_config)
        return {"rows": []}

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluate, "markdown", lambda result: "")
    assert cli.main(["toyworld", "evaluate", "--model", str(run / "model")]) == 0
    assert seen == [config]
    assert cli.main(["toyworld", "evaluate", "--model", str(run / "model"), "--train-fraction", "0.25"]) == 0
    assert seen[-1] == config  # repeating the model's own setting is fine
    assert cli.main(["toyworld", "evaluate", "--model", str(run / "model"), "--world-seed", "4"]) == 2
    assert len(seen) == 2
    assert "--world-seed: the model's 0, got 4" in capsys.readouterr().err
    # a folder without train.json (any GPT-2 folder): the command line's world, defaults filled in
    bare = tmp_path / "bare"
    os.symlink(MODEL_DIR, bare)
    assert cli.main(["toyworld", "evaluate", "--model", str(bare), "--people", "6"]) == 0
    assert seen[-1] == WorldConfig(n_people=6)
