"""Review 13 findings on memory injection (jaxinterp/inject) and the toy world, each failing on the
code before its fix."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxinterp.inject import sweep as sweep_module
from jaxinterp.inject.memory import memory_vectors
from jaxinterp.transformer import load_gpt2

FIX = Path(__file__).parent / "fixtures"
TAUS = [1.0, 3.0]


@pytest.fixture(scope="module")
def setup():
    params, config = load_gpt2(FIX / "tiny_gpt2", process_weights=True)
    rng = np.random.default_rng(0)
    prompts = [np.concatenate([[0], rng.integers(1, 97, size=n - 1)]).astype(np.int32) for n in (4, 9, 6)]
    answers = rng.integers(1, 97, size=3)
    mems = memory_vectors(params, [rng.integers(1, 97, size=k) for k in (1, 3, 2)], config=config)
    return params, config, prompts, answers, mems


def test_a_state_of_another_model_with_the_same_memories_is_not_resumed(setup, tmp_path, monkeypatch, sweep_steps):
    """The state's fingerprint held the config and the plan's arrays only: a second model with the same
    embedding (so the same memories, as a fine-tune with frozen embeddings or a merge has) resumed the
    first model's finished layers as its own: 4.6% off in p(answer), silently."""
    params, config, prompts, answers, mems = setup
    other = jax.tree.map(lambda a: a, params)
    other["h_2"]["attn"]["c_proj"]["kernel"] = params["h_2"]["attn"]["c_proj"]["kernel"] * 3.0
    kw = dict(config=config, answers=answers)
    want = sweep_module.sweep(other, prompts, mems, None, TAUS, **kw)
    state = tmp_path / "state.npz"
    sweep_steps(4)  # 2 buckets x 3 layers: 4 of the first model's 6 steps saved
    with pytest.raises(KeyboardInterrupt):
        sweep_module.sweep(params, prompts, mems, None, TAUS, **kw, state=state)
    calls = sweep_steps(100)
    got = sweep_module.sweep(other, prompts, mems, None, TAUS, **kw, state=state)
    assert len(calls) == 6  # nothing of the first model's taken
    np.testing.assert_array_equal(got.p_after, want.p_after)
    # the same model still resumes
    sweep_steps(4)
    with pytest.raises(KeyboardInterrupt):
        sweep_module.sweep(other, prompts, mems, None, TAUS, **kw, state=state)
    calls = sweep_steps(100)
    again = sweep_module.sweep(other, prompts, mems, None, TAUS, **kw, state=state)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.p_after, want.p_after)


def test_a_state_path_that_cannot_be_a_state_is_refused_before_any_step(setup, tmp_path, monkeypatch, sweep_steps):
    """A folder as `state` failed at the first save (IsADirectoryError, after the base passes and a
    layer ran); a file that is not a sweep state (the user's own, named by mistake) gave numpy's
    'contains pickled data' ValueError or a KeyError. Now ValueErrors naming the path, nothing run,
    the file left as it was."""
    params, config, prompts, answers, mems = setup
    calls = sweep_steps(100)
    bases_calls = []
    bases, counted = sweep_module._steps_jit()
    monkeypatch.setattr(sweep_module, "_steps_jit", lambda: (bases_calls.append(1) or bases, counted))
    script = tmp_path / "analysis.py"
    script.write_text("print('mine')\n")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    cases = [(tmp_path, f"state: expected a file name, got '{tmp_path}' (a folder or other non-file)"),
             (script / "state.npz", f"state: expected a file name in a folder, got '{script / 'state.npz'}' "
                                    f"('{script}' is a file)"),
             (script, f"state: expected a sweep state file (or a new name), got '{script}', which is not one "
                      "(ValueError: This file contains pickled"),
             (other, f"state: expected a sweep state file (or a new name), got '{other}', which is not one "
                     "(KeyError: 'fingerprint is not a file in the archive')")]
    for state, message in cases:
        with pytest.raises(ValueError) as e:
            sweep_module.sweep(params, prompts, mems, None, TAUS, config=config, answers=answers, state=state)
        assert str(e.value).startswith(message), str(e.value)
    assert not bases_calls and not calls
    assert script.read_text() == "print('mine')\n" and set(np.load(other)) == {"x"}


@pytest.mark.parametrize("head", [True, 1.0, 1.5])
def test_injection_head_must_be_an_int(setup, head):
    """head=True passed `0 <= head < n_head` and indexed the head mask as a boolean: the memory went
    into every head, n_head times the injection (logits 0.49 off head 1's); 1.5 was an IndexError."""
    from jaxinterp.inject.memory import inject_logits

    params, config, prompts, answers, mems = setup
    with pytest.raises(ValueError) as e:
        inject_logits(params, prompts[0][None], mems[0], config=config, layer=1, tau=2.0, head=head)
    assert str(e.value) == f"head: expected an int in [0, n_head) with n_head given, got head={head!r}, n_head=4"
    one = inject_logits(params, prompts[0][None], mems[0], config=config, layer=1, tau=2.0, head=np.int64(1))
    ref = inject_logits(params, prompts[0][None], mems[0], config=config, layer=1, tau=2.0)
    np.testing.assert_allclose(one, ref, rtol=0, atol=2e-6)


def test_an_interrupted_baseline_sweep_does_not_redo_the_main_sweep(tmp_path, monkeypatch, sweep_steps):
    """`jaxinterp inject sweep --baseline-words` removed the main sweep's state as soon as that sweep
    finished: interrupted in the baseline sweep, the command started again computed every layer of
    the main sweep a second time. Now both states stay until the outputs are written."""
    from jaxinterp import cli
    from jaxinterp.inject import cli as inject_cli

    data = tmp_path / "p.csv"
    data.write_text("explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
                    "w1 w2 w3,w4 w5 w6 w7 w8,w9 w10,w4 w5 w6,w11\nw12 w13,w14 w15 w16,w17,w14 w15,w18\n")
    words = tmp_path / "words.csv"
    words.write_text("Nouns\nw40\nw41\n")
    argv = ["inject", "sweep", "--model", str(FIX / "tiny_gpt2"), "--data", str(data), "--layers", "0", "2",
            "--taus", "1", "3", "--baseline-words", str(words)]
    assert cli.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "out"
    calls = sweep_steps(3)  # one bucket x 2 layers each: stopped in the baseline sweep
    assert cli.main([*argv, "--out", str(out)]) == 130  # the CLI's Ctrl-C: one line, exit 130 (68c4165)
    assert all((out / name).is_file() for name in inject_cli.STATE_FILES)
    calls = sweep_steps(100)
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert len(calls) == 1  # the baseline's last layer only
    assert not any((out / name).exists() for name in inject_cli.STATE_FILES)
    for name in ("per_prompt.csv", "prompts.csv"):
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path / "whole"))
    assert got["percent_increase"] == want["percent_increase"] and got["baseline"] == want["baseline"]


@pytest.mark.parametrize("words,match", [
    (None, "word list: expected a CSV file, got '{path}' (not found)"),
    ("Nouns,Adjectives\ntime,good\n", "word_type: expected one of ['Nouns', 'Adjectives'], got 'Verbs'"),
    ("Nouns,Verbs,Adjectives\ntime,,good\n", "word_type 'Verbs': the list is empty"),
])
def test_toyworld_analysis_refuses_a_bad_word_list_before_writing(tmp_path, monkeypatch, words, match):
    """`python -m jaxinterp.toyworld.analysis --words CSV`: a missing file or a word list without a
    Nouns/Verbs/Adjectives column was refused only inside the injection step, after OUT and
    OUT/prompts.csv were written. Now before anything is written or swept."""
    from jaxinterp.toyworld import analysis

    path = tmp_path / "words.csv"
    if words is not None:
        path.write_text(words)
    monkeypatch.setattr(analysis, "injection", lambda *a, **k: pytest.fail("the sweep ran before the words were checked"))
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        analysis.main(["--out", str(out), "--words", str(path), "--lens-layers"])
    assert str(e.value) == match.format(path=path)
    assert not out.exists()


def test_a_progress_bar_without_a_state_hashes_nothing(setup, monkeypatch):
    """The state's fingerprint reads every weight (~0.3 s a GPT-2 small, seconds a GPT-2 large): a
    sweep run in steps for its progress bar alone, with no state to match, does not compute it."""
    params, config, prompts, answers, mems = setup
    want = sweep_module.sweep(params, prompts, mems, None, TAUS, config=config, answers=answers)
    monkeypatch.setattr(sweep_module, "_fingerprint", lambda *a: pytest.fail("hashed without a state"))
    got = sweep_module.sweep(params, prompts, mems, None, TAUS, config=config, answers=answers, progress=True)
    np.testing.assert_array_equal(got.p_after, want.p_after)


@pytest.mark.parametrize("field,value,message", [
    ("steps", 3.5, "TrainConfig.steps must be an integer, got 3.5"),
    ("batch_size", 4.0, "TrainConfig.batch_size must be an integer, got 4.0"),
    ("n_layer", True, "TrainConfig.n_layer must be an integer, got True"),
    ("checkpoint_every", 1.5, "TrainConfig.checkpoint_every must be an integer, got 1.5"),
    ("learning_rate", float("nan"), "TrainConfig.learning_rate must be a finite number, got nan"),
    ("weight_decay", float("nan"), "TrainConfig.weight_decay must be a finite number, got nan"),
    ("seed", -1, "TrainConfig.seed: expected an integer in [0, 2**32) (random generators keep a seed's low 32 bits: a larger one repeats another seed's draws), got -1"),
])
def test_toyworld_train_config_refuses_non_integers_before_any_write(tmp_path, field, value, message):
    """3.5 steps or a batch of 4.0 passed TrainConfig and failed inside the training loop (TypeError),
    after run.json and checkpoints/ were written; checkpoint_every=1.5 trained on; a NaN learning rate
    or weight decay trained the weights into NaN; a negative seed failed at the first batch."""
    import dataclasses

    from jaxinterp.toyworld import train as trainmod

    with pytest.raises(ValueError) as e:
        dataclasses.replace(trainmod.TrainConfig(n_layer=1, n_embd=32, n_head=2, steps=2), **{field: value})
    assert str(e.value) == message


@pytest.mark.parametrize("field,value,message", [
    ("n_people", 2.5, "WorldConfig.n_people must be an integer, got 2.5"),
    ("n_countries", True, "WorldConfig.n_countries must be an integer, got True"),
    ("seed", 1.5, "WorldConfig.seed must be an integer, got 1.5"),
    ("train_fraction", "0.5", "WorldConfig.train_fraction must be a number, got '0.5'"),
])
def test_toyworld_world_config_refuses_non_integers(field, value, message):
    """n_people=2.5 spun through 100000 name draws and said 'could not draw 2.5 distinct names from the
    syllable inventory'; n_countries=True built a world of one country; a float seed built a world
    from its hash; a string train fraction was a TypeError."""
    from jaxinterp.toyworld.world import WorldConfig

    with pytest.raises(ValueError) as e:
        WorldConfig(**{field: value})
    assert str(e.value) == message


def test_a_run_folders_bad_world_settings_name_the_file(tmp_path):
    """A train.json whose world WorldConfig refuses (a count as a string, now an integer check) is
    reported with the file it came from, as an unknown field already was."""
    from jaxinterp.toyworld.world import run_world_config

    (tmp_path / "train.json").write_text(json.dumps({"world": {"n_people": "64"}}))
    with pytest.raises(ValueError) as e:
        run_world_config(tmp_path / "model")
    assert str(e.value) == (f"model: expected the world settings of a toyworld run in {tmp_path / 'train.json'}, "
                            "got {'n_people': '64'} (WorldConfig.n_people must be an integer, got '64')")


def _toy_run(tmp_path, world):
    """A run folder holding the shipped model with the given world in its train.json."""
    import shutil

    from jaxinterp.toyworld import MODEL_DIR

    run = tmp_path / "run"
    shutil.copytree(MODEL_DIR, run / "model")
    (run / "train.json").write_text(json.dumps({"world": world}))
    return run / "model"


@pytest.mark.parametrize("world, message", [
    # a world of one country (a valid WorldConfig): the random-entity control of a country bridge has no
    # other country to draw, and the analysis failed with numpy's 'high <= 0' after writing OUT/prompts.csv
    ({"n_countries": 1, "cities_per_country": 3, "n_people": 8, "n_companies": 2, "seed": 0},
     "prompts: expected at least 2 entities of each bridge's kind (the random-entity controls draw another), "
     "got 1 country in the model's world (its held-out prompts)"),
    # train_fraction 1: no held-out two-hop prompts; the analysis wrote an empty OUT/prompts.csv and its
    # sweep refused it ('no data rows')
    ({"train_fraction": 1.0},
     "model: expected held-out two-hop prompts in its world, got none (train_fraction 1.0); "
     "name a prompt set with --prompts"),
])
def test_toyworld_analysis_refuses_a_world_it_cannot_analyse_before_writing(tmp_path, monkeypatch, world, message):
    from jaxinterp.toyworld import analysis

    model = _toy_run(tmp_path, world)
    monkeypatch.setattr(analysis, "injection", lambda *a, **k: pytest.fail("the sweep ran before the check"))
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        analysis.main(["--out", str(out), "--model", str(model), "--lens-layers"])
    assert str(e.value) == message
    assert not out.exists()
