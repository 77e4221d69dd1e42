"""Session 17's lead fixes: a killed write's hidden temporary is not one of a folder's checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp import atomic
from jaxinterp.merge import checkpoint

from test_review12_cli import _snapshot, fake_assets  # noqa: F401 (a fixture)


def test_merge_inputs_skip_a_killed_writes_hidden_temporary(tmp_path):
    save_file({"w": np.ones((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    # what atomic_path leaves behind when the writer is killed midway: half a file, dot-named
    (tmp_path / ".model.safetensors.1a2b3c4d.tmp.safetensors").write_bytes(b"\x08\x00\x00")
    (tmp_path / "sub.safetensors").mkdir()  # a folder is not a checkpoint either
    assert checkpoint.safetensors_files(str(tmp_path)) == [tmp_path / "model.safetensors"]
    assert atomic.visible_files(tmp_path, "*.safetensors") == [tmp_path / "model.safetensors"]


def test_a_folder_holding_only_a_hidden_temporary_has_no_checkpoint(tmp_path):
    (tmp_path / ".model.safetensors.1a2b3c4d.tmp.safetensors").write_bytes(b"\x08\x00\x00")
    with pytest.raises(ValueError, match="found none"):
        checkpoint.safetensors_files(str(tmp_path))


def test_transformer_demo_refuses_an_empty_prompt_before_loading(tmp_path, monkeypatch):
    from jaxinterp.transformer import demo

    def no_load(*a, **k):
        raise AssertionError("the weights were read for a prompt of no tokens")

    monkeypatch.setattr("jaxinterp.transformer.load_gpt2", no_load)
    with pytest.raises(ValueError, match="at least one token"):
        demo.section(tmp_path, quick=True, prompt="")


def test_ship_failing_after_the_model_is_staged_leaves_every_shipped_file_as_it_was(fake_assets, monkeypatch):
    """`toyworld ship` swapped the model folder in, then rewrote train.json, the prompts, the corpus
    and eval.json one by one: a failure (or a kill) in between left the new model beside the old
    model's records and figures. Everything is now staged and swapped in at once."""
    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate, world

    assets, run = fake_assets
    (assets / "notes.txt").write_text("kept")  # a file ship does not write
    before = _snapshot(assets)
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kw: {"rows": []})

    def full_disk(rows, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(world, "write_prompts_csv", full_disk)
    with pytest.raises(OSError, match="No space left"):
        cli.main(["toyworld", "ship", str(run)])
    assert _snapshot(assets) == before
    assert sorted(p.name for p in assets.parent.iterdir()) == ["assets", "run"]  # no staging folder left


def test_ship_keeps_the_assets_files_it_does_not_write(fake_assets, monkeypatch):
    from jaxinterp import cli
    from jaxinterp.toyworld import evaluate

    assets, run = fake_assets
    (assets / "notes.txt").write_text("kept")
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kw: {"rows": []})
    monkeypatch.setattr(evaluate, "markdown", lambda result: "table")
    assert cli.main(["toyworld", "ship", str(run)]) == 0
    assert (assets / "model" / "model.safetensors").read_text() == "new model"
    assert (assets / "notes.txt").read_text() == "kept"
    assert (assets / "train.json").read_text() != "old record"
    assert sorted(p.name for p in assets.parent.iterdir()) == ["assets", "run"]


@pytest.mark.parametrize("seed", [2**32, 2**32 + 1, 2**64])
def test_seeds_beyond_32_bits_are_refused_where_they_would_repeat_another_seed(seed):
    """jax.random.key and numpy's default_rng([seed, epoch]) keep 32 bits of a seed: NuGraph2 training
    at seed 2**32 + 1 initialised and ordered its batches as seed 1 did, and a lens run's batches of
    seed 2**32 + s were seed s's epochs shifted (default_rng([s + 2**32 j, e]) is default_rng([s, j, e]))."""
    from jaxinterp import checks
    from jaxinterp.lens import data
    from jaxinterp.nugraph import train

    with pytest.raises(ValueError, match=r"^TrainConfig.seed: expected an integer in \[0, 2\*\*32\)"):
        train.TrainConfig(seed=seed)
    with pytest.raises(ValueError, match=r"^seed: expected an integer in \[0, 2\*\*32\) \(random generators"):
        data.Batches([np.arange(3)], 2, 4, seed=seed)
    with pytest.raises(ValueError, match=r"^--seed: expected an integer in \[0, 2\*\*32\)"):
        checks.check_seed(seed, "--seed")
    assert train.TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    assert checks.check_seed(np.int64(7)) == 7


def test_simulate_event_refuses_a_plane_list_that_does_not_match_the_detector():
    """Two plane names read two planes, and the space points (three planes) failed with an IndexError."""
    from jaxinterp.nugraph import simulate

    for planes in (("u", "v"), ("u", "v", "v"), "uvy"):
        with pytest.raises(ValueError, match=r"^planes: expected 3 distinct names, one per detector plane"):
            simulate.simulate_event(np.random.default_rng(0), simulate.SimConfig(), planes=planes)


def test_toyworld_score_names_the_prompt_longer_than_the_context():
    from types import SimpleNamespace

    from jaxinterp.toyworld import evaluate
    from jaxinterp.transformer import load_tokenizer
    from jaxinterp.toyworld import MODEL_DIR

    tok = load_tokenizer(MODEL_DIR)
    config = SimpleNamespace(n_positions=8)
    with pytest.raises(ValueError, match=r"^prompt 'The capital of the country where the tallest' with its answer"):
        evaluate.score(None, config, tok, ["A", "The capital of the country where the tallest"], [" x", " y"])
