"""Session 17's lead fixes: a killed write's hidden temporary is not one of a folder's checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxinterp import atomic
from jaxinterp.merge import checkpoint


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
