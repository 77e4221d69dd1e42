"""The toy world, its tokenizer, training (resume), evaluation and the shipped model."""

import csv
import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxinterp.toyworld import EVAL_JSON, MODEL_DIR, PROMPTS_CSV, default_model
from jaxinterp.toyworld import evaluate, train as trainmod
from jaxinterp.toyworld import tokenizer as toktools
from jaxinterp.toyworld.world import (CSV_COLUMNS, WorldConfig, build_world, prompt_rows, training_sentences,
                                      two_hop_prompts, write_prompts_csv)

TINY_WORLD = WorldConfig(n_countries=2, cities_per_country=2, n_people=6, n_companies=2, seed=3)
TINY_TRAIN = trainmod.TrainConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=320, n_positions=48, batch_size=8, steps=4,
                                  checkpoint_every=2, warmup_steps=1)


def test_world_is_seeded_and_consistent():
    a, b = build_world(TINY_WORLD), build_world(TINY_WORLD)
    assert a.facts == b.facts and a.two_hops == b.two_hops
    assert build_world(dataclasses.replace(TINY_WORLD, seed=4)).facts != a.facts
    names = [n for v in a.entities.values() for n in v]
    assert len(names) == len(set(names))
    for th in a.two_hops:  # every composition goes through its bridge
        assert a.lookup(th.relation1, th.subject) == th.bridge
        assert a.lookup(th.relation2, th.bridge) == th.answer
    trained = [th.trained for th in a.two_hops]
    assert any(trained) and not all(trained)
    text = training_sentences(a)
    for th in a.two_hops:  # held-out two-hop sentences never reach the training text
        assert any(p in s for p in two_hop_prompts(th) for s in text) == th.trained


@pytest.mark.parametrize("field,value,message", [
    ("n_people", 0, "WorldConfig.n_people must be at least 1"),
    ("train_fraction", 1.5, "WorldConfig.train_fraction must lie in"),
    ("n_countries", 70, "the syllable inventory names at most"),
])
def test_world_config_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**{field: value})


def test_lookup_error():
    with pytest.raises(ValueError, match="no 'language' fact about 'Nobody'"):
        build_world(TINY_WORLD).lookup("language", "Nobody")


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "TrainConfig.steps must be at least 1"),
    ("learning_rate", 0.0, "TrainConfig.learning_rate must be positive"),
    # these trained silently: a clip norm of 0 zeroes every update, a negative warmup shifts the schedule
    ("clip_norm", 0.0, "TrainConfig.clip_norm must be positive, got 0.0"),
    ("warmup_steps", -3, "TrainConfig.warmup_steps must be at least 0, got -3"),
    ("weight_decay", -0.1, "TrainConfig.weight_decay must be at least 0, got -0.1"),
])
def test_train_config_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        trainmod.TrainConfig(**{field: value})


def test_prompt_csv_has_the_injection_columns(tmp_path):
    assert CSV_COLUMNS == ("explicit_sentence", "obscure_sentence", "explicit_entity", "obscure_entity", "answer")
    world = build_world(TINY_WORLD)
    rows = prompt_rows(world)
    assert len(rows) == sum(not th.trained for th in world.two_hops)
    for r in rows:
        assert r.explicit_entity in r.explicit_sentence and r.obscure_entity in r.obscure_sentence
        assert r.explicit_entity not in r.obscure_sentence  # the bridge is described, never named
    write_prompts_csv(rows, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert [tuple(d.values()) for d in back] == [tuple(r) for r in rows]


def test_tokenizer_round_trip_through_autotokenizer(tmp_path):
    from jaxinterp.transformer import load_tokenizer

    text = training_sentences(build_world(TINY_WORLD))
    tok = toktools.train_tokenizer(text, vocab_size=320)
    tok.save_pretrained(str(tmp_path))
    back = load_tokenizer(tmp_path)
    assert back.bos_token_id == 0
    for s in text[:5]:
        assert toktools.encode(back, s) == toktools.encode(tok, s)
        assert back.decode(toktools.encode(back, s, bos=False)) == s
    with pytest.raises(ValueError, match="vocab_size must be at least 300"):
        toktools.train_tokenizer(text, vocab_size=100)


def test_batches_are_a_function_of_the_step():
    a = [trainmod.batch_indices(s, 20, 8, 0) for s in range(4)]
    assert all(np.array_equal(x, trainmod.batch_indices(s, 20, 8, 0)) for s, x in enumerate(a))
    assert len(set(np.concatenate(a[:2]).tolist())) == 16  # one epoch's batches do not repeat


def test_encode_sentences_too_long():
    tok = toktools.train_tokenizer(training_sentences(build_world(TINY_WORLD)), vocab_size=320)
    with pytest.raises(ValueError, match="more than n_positions=4"):
        trainmod.encode_sentences(tok, ["The language of Nowhere is Nothing."], 4)


def test_train_resume_and_evaluate(tmp_path):
    from jaxinterp.transformer import load_gpt2

    # A run stopped by its time limit right after its first step (as a kill after a checkpoint)...
    first = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, max_minutes=1e-9, progress=False,
                           log_every=1)
    assert first.resumed_from == 0 and len(first.losses) == 1 and np.isfinite(first.losses).all()
    # ...resumes at that step and finishes, with the train step compiled once for both runs.
    second = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False, log_every=1)
    assert second.resumed_from == 1 and len(second.losses) == 3
    assert trainmod._train_step(dataclasses.replace(TINY_TRAIN, vocab_size=first.config.vocab_size))._cache_size() == 1
    params, config = load_gpt2(tmp_path / "model")
    assert config.n_layer == 1 and json.loads((tmp_path / "train.json").read_text())["steps_done"] == 4
    # the stopped-and-resumed run is the uninterrupted one: the same 4 losses and weights (this checked
    # only how many losses each part logged)
    straight = trainmod.train(tmp_path / "straight", world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False,
                              log_every=1)
    assert straight.resumed_from == 0 and list(first.losses) + list(second.losses) == list(straight.losses)
    for name, w in load_gpt2(tmp_path / "straight" / "model")[0].items():
        jax.tree.map(np.testing.assert_array_equal, params[name], w)
    res = evaluate.evaluate(tmp_path / "model", world_config=TINY_WORLD, candidates=False)
    groups = {r["group"] for r in res["rows"]}
    assert groups == {"single-hop", "two-hop held-out", "explicit held-out", "two-hop trained"}
    assert all(0.0 <= r["greedy"] <= 1.0 for r in res["rows"])
    assert "| single-hop | all |" in evaluate.markdown(res)
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, max_minutes=0)


def test_log_every_below_one_is_refused_before_any_write(tmp_path):
    with pytest.raises(ValueError, match="log_every must be at least 1, got 0"):
        trainmod.train(tmp_path / "run", world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False, log_every=0)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_settings(tmp_path):
    """A run folder records its world, its training settings (all but steps and checkpoint_every) and
    its tokenizer; a resume asking for others is refused before any training, naming each difference.
    A folder from before the record: checked against its train.json if it has one, else resumed."""
    trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, max_minutes=1e-9, progress=False)
    run_json, train_json = tmp_path / "run.json", tmp_path / "train.json"
    record, finished = run_json.read_text(), train_json.read_text()

    def refused(world, cfg, match):
        with pytest.raises(ValueError, match=match) as e:
            trainmod.train(tmp_path, world_config=world, cfg=cfg, progress=False)
        # nothing trained or written: still the one checkpoint of step 1, the same records
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
        assert train_json.read_text() == finished
        return str(e.value)

    longer = dataclasses.replace(TINY_TRAIN, steps=6, checkpoint_every=3)  # these two may change
    # another world seed, same vocabulary size: ids would now mean other strings
    msg = refused(dataclasses.replace(TINY_WORLD, seed=4), longer, r"world\.seed: the folder's 3, asked 4")
    assert "tokenizer_sha256: the folder" in msg and "train.steps" not in msg and "train.checkpoint_every" not in msg
    refused(TINY_WORLD, dataclasses.replace(longer, learning_rate=1e-2),
            r"train\.learning_rate: the folder's 0\.004, asked 0\.01")
    tampered = json.loads(record)
    tampered["tokenizer_sha256"] = "0" * 64
    run_json.write_text(json.dumps(tampered))
    refused(TINY_WORLD, TINY_TRAIN, r"tokenizer_sha256: the folder's 0000000000000000000000000000000000000000000000000000"
                                    r"000000000000, asked [0-9a-f]{64}")
    # a folder without run.json (older code) is checked against the train.json its last run wrote...
    run_json.unlink()
    refused(dataclasses.replace(TINY_WORLD, seed=4), TINY_TRAIN, r"world\.seed: the folder's 3, asked 4")
    # ...and without either it resumes as before, and records this run's settings
    train_json.unlink()
    second = trainmod.train(tmp_path, world_config=TINY_WORLD, cfg=TINY_TRAIN, progress=False)
    assert second.resumed_from == 1 and json.loads(run_json.read_text()) == json.loads(record)


def test_score_rejects_an_empty_answer():
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    params, config = load_gpt2(MODEL_DIR)
    with pytest.raises(ValueError, match="answer '' of prompt 'The language of' is empty"):
        evaluate.score(params, config, load_tokenizer(MODEL_DIR), ["The language of"], [""])


def test_shipped_model_reproduces_its_stated_figures():
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    assert default_model() == MODEL_DIR
    params, config = load_gpt2(MODEL_DIR)
    tok = load_tokenizer(MODEL_DIR)
    stated = json.loads(EVAL_JSON.read_text())
    ex = stated["examples"]
    got = evaluate.score(params, config, tok, [e["prompt"] for e in ex], [e["answer"] for e in ex])
    assert got.greedy.tolist() == [e["greedy"] for e in ex]
    np.testing.assert_allclose(got.first_prob, [e["answer_first_token_prob"] for e in ex], rtol=1e-4, atol=1e-6)
    single = next(r for r in stated["rows"] if r["group"] == "single-hop" and r["kind"] == "all")
    assert single["greedy"] > 0.9  # the figure BUILD_NOTES.md reports


def test_chance_of_an_all_row_is_the_prompt_weighted_chance_of_its_kinds():
    """chance is what a random pick among the answer's kind scores on these prompts: an "all" row
    weighs each kind by its prompts. It was an unweighted mean over kinds (two-hop held-out 0.078
    where the prompts give 0.092, so "3x chance" read higher than it is)."""
    rows = json.loads(EVAL_JSON.read_text())["rows"]
    for r in (r for r in rows if r["kind"] == "all"):
        kinds = [q for q in rows if q["group"] == r["group"] and q["kind"] != "all"]
        assert sum(q["prompts"] for q in kinds) == r["prompts"]
        assert r["chance"] == pytest.approx(sum(q["prompts"] * q["chance"] for q in kinds) / r["prompts"], rel=1e-12)


def test_shipped_prompts_match_the_world():
    train_record = json.loads((MODEL_DIR.parent / "train.json").read_text())
    world = build_world(WorldConfig(**train_record["world"]))
    with open(PROMPTS_CSV, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = [tuple(d.values()) for d in reader]
    assert rows == [tuple(r) for r in prompt_rows(world)]


def test_cli_prompts_and_ship_error(tmp_path):
    from jaxinterp.cli import main

    assert main(["toyworld", "prompts", "--out", str(tmp_path / "p.csv"), "--people", "6", "--countries", "2",
                 "--cities-per-country", "2", "--companies", "2", "--world-seed", "3"]) == 0
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert main(["toyworld", "ship", str(tmp_path)]) == 2  # no finished run there: a clear error


def test_percent_increase_statistics():
    from jaxinterp.inject.sweep import SweepResult
    from jaxinterp.toyworld.analysis import _sweep_summary

    before = np.array([0.1, 0.2, 0.5, 0.01])
    after = np.array([[[0.2, 0.2, 0.25, 0.01]]])  # +100, 0, -50, 0 percent
    res = SweepResult(np.array([0]), np.array([1.0]), before, after, None, np.log(before), np.log(after))
    s = _sweep_summary(res, "m")
    np.testing.assert_allclose(s["best_mean_pct"], 12.5)
    np.testing.assert_allclose(s["best_median_pct"], 0.0, atol=1e-12)
    # float32 p(answer) underflowed to 0 before and after: the log-probabilities still give +100%
    tiny = SweepResult(np.array([0]), np.array([1.0]), np.zeros(4), np.zeros((1, 1, 4)), None,
                       np.full(4, -300.0), np.full((1, 1, 4), -300.0 + np.log(2.0)))
    np.testing.assert_allclose(_sweep_summary(tiny, "m")["best_median_pct"], 100.0)


def test_cli_facts_lists_every_entity_fact_and_composition(capsys):
    from jaxinterp.cli import main

    assert main(["toyworld", "facts"] + _tiny_world_args()) == 0
    lines = capsys.readouterr().out.splitlines()
    world = build_world(TINY_WORLD)
    for kind, names in world.entities.items():
        assert f"{kind} ({len(names)}): {', '.join(names)}" in lines
    assert sum(" = " in line and "(" in line for line in lines) == len(world.facts) + len(world.two_hops)
    held_out = [th for th in world.two_hops if not th.trained]
    assert held_out and sum(line.endswith("[held out]") for line in lines) == len(held_out)


def test_cli_evaluate_reproduces_the_shipped_eval_json(tmp_path, capsys):
    from jaxinterp.cli import main

    out = tmp_path / "eval.json"
    assert main(["toyworld", "evaluate", "--json", str(out)]) == 0
    assert f"using the built-in toy-world model at {MODEL_DIR}" in capsys.readouterr().out
    got, stated = json.loads(out.read_text()), json.loads(EVAL_JSON.read_text())
    assert got.keys() == stated.keys() and got["rows"] == stated["rows"]
    for g, s in zip(got["examples"], stated["examples"], strict=True):
        assert (g["prompt"], g["answer"], g["greedy"]) == (s["prompt"], s["answer"], s["greedy"])
        assert g["answer_first_token_prob"] == pytest.approx(s["answer_first_token_prob"], rel=1e-4, abs=1e-6)


def test_cli_train_then_evaluate_a_tiny_run(tmp_path, capsys):
    from jaxinterp.cli import main

    run = tmp_path / "run"
    assert main(["toyworld", "train", "--out", str(run), "--steps", "2", "--layers", "1", "--d-model", "32",
                 "--heads", "2", "--batch-size", "8", "--checkpoint-every", "2"]
                + _tiny_world_args()) == 0
    assert f"wrote {run / 'model'}" in capsys.readouterr().out
    assert json.loads((run / "train.json").read_text())["steps_done"] == 2
    assert main(["toyworld", "evaluate", "--model", str(run / "model"), "--no-candidates"] + _tiny_world_args()) == 0
    assert "| single-hop | all |" in capsys.readouterr().out
    for option, value in (("--minutes", "0"), ("--steps", "-1"), ("--lr", "nan"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as e:
            main(["toyworld", "train", "--out", str(run), option, value])
        assert e.value.code == 2 and f"argument {option}: expected a positive" in capsys.readouterr().err


def _tiny_world_args() -> list[str]:
    w = TINY_WORLD
    return ["--countries", str(w.n_countries), "--cities-per-country", str(w.cities_per_country), "--people",
            str(w.n_people), "--companies", str(w.n_companies), "--world-seed", str(w.seed)]
