"""Review 16r (b): mends of duplicated code in this session's change, each pinned where it changed behaviour."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import TINY_GPT2


# --- lens's own config.json reader was the twin of transformer.weights.read_config: lens now uses it


def test_lens_train_names_a_config_json_that_is_not_json(tmp_path, capsys):
    """lens read config.json with its own code: a broken file was json's bare 'Expecting value' naming no
    file; read_config (as load_gpt2 and `gpt2 run`) names it."""
    from jaxinterp import cli

    model = tmp_path / "model"
    shutil.copytree(TINY_GPT2, model)
    (model / "config.json").write_text("{not json")
    (tmp_path / "d.txt").write_text("w1 w2 w3\n")
    out = tmp_path / "out"
    assert cli.main(["lens", "train", "--model", str(model), "--layer", "1", "--data", str(tmp_path / "d.txt"),
                     "--out", str(out), "--steps", "1", "--seq-len", "8", "--no-progress"]) == 2
    assert f"{model / 'config.json'} is not valid JSON: Expecting property name" in capsys.readouterr().err
    assert not out.exists()


def test_load_gpt2_a_config_json_that_is_a_folder_is_no_config(tmp_path):
    """lens's reader asked for a file (is_file), read_config only for a path (exists): a folder named
    config.json was an IsADirectoryError in load_gpt2; now both say the model has no config.json."""
    from jaxinterp.transformer import load_gpt2

    model = tmp_path / "model"
    (model / "config.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(f"{model} has no config.json") + "$"):
        load_gpt2(model)
