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


# ---------------------------------------------------------------------------------------------
# torch_pickle: files written here without torch, in torch.save's zip layout.

def _fake_torch(monkeypatch):
    """Modules named torch and torch._utils whose attributes pickle as torch's globals (never called)."""
    import sys
    import types

    for module, attrs in {"torch": ["FloatStorage", "DoubleStorage", "BFloat16Storage", "bfloat16"],
                          "torch._utils": ["_rebuild_tensor_v2"]}.items():
        fake = types.ModuleType(module)
        for a in attrs:
            def stand_in(*args):
                raise AssertionError("never called")
            stand_in.__module__, stand_in.__qualname__ = module, a
            setattr(fake, a, stand_in)
        monkeypatch.setitem(sys.modules, module, fake)


def _write_torch_zip(path, tensors: dict, *, byteorder: bytes | None, storage_bytes=None):
    """{name: (storage kind, array)} as torch.save writes it; the storages' bytes in `byteorder`."""
    import collections
    import io
    import pickle
    import sys

    import numpy as np

    class Storage:
        def __init__(self, kind, key, numel):
            self.kind, self.key, self.numel = kind, key, numel

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                    (self.storage, 0, self.shape, stride, False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                # numel as torch writes it (the reader checks each entry's size against it)
                return ("storage", getattr(sys.modules["torch"], obj.kind), obj.key, "cpu", obj.numel)
            return None

    buf, files = io.BytesIO(), {}
    obj = {}
    for i, (name, (kind, a)) in enumerate(tensors.items()):
        obj[name] = Tensor(Storage(kind, str(i), a.size), a.shape)
        data = a.tobytes() if byteorder in (None, sys.byteorder.encode()) else a.byteswap().tobytes()
        files[f"archive/data/{i}"] = data if storage_bytes is None else storage_bytes
    Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for name, data in files.items():
            z.writestr(name, data)
    return path


import zipfile  # noqa: E402


def test_torch_reader_honours_the_files_byte_order(tmp_path, monkeypatch):
    """torch.save records the writer's byte order (`<name>/byteorder`, torch >= 2.1) and torch.load
    swaps storages written on a machine of the other order; the reader read them as native bytes:
    a big-endian file's 1.0 came back as 4.6e-41, silently."""
    import ml_dtypes
    import numpy as np

    from jaxinterp import torch_pickle

    _fake_torch(monkeypatch)
    want = {"w": ("FloatStorage", np.array([[1.0, -2.5], [3.0, 1e-3]], np.float32)),
            "d": ("DoubleStorage", np.array([0.1, 2.0])),
            "b": ("BFloat16Storage", np.array([1.5, -3.0], ml_dtypes.bfloat16))}
    for order in (b"big", b"little", None):  # None: a file from before the record (little-endian)
        got = torch_pickle.load_state_dict(_write_torch_zip(tmp_path / "m.pt", want, byteorder=order))
        for name, (_, a) in want.items():
            assert got[name].dtype == a.dtype and got[name].dtype.isnative, (order, name)
            np.testing.assert_array_equal(got[name], a, err_msg=f"{order} {name}")
    with pytest.raises(ValueError, match=r"expected byteorder 'little' or 'big' in archive/byteorder, got 'middle'"):
        torch_pickle.load(_write_torch_zip(tmp_path / "m.pt", want, byteorder=b"middle"))


def test_torch_reader_refuses_corrupt_files_with_value_errors(tmp_path, monkeypatch):
    """A storage the archive lacks was a KeyError, a persistent id of the wrong shape an IndexError or
    AttributeError, a tensor built on something other than a storage an AttributeError: tracebacks
    from `jaxinterp nugraph convert/info`, which report ValueErrors as one line."""
    import io
    import pickle

    import numpy as np

    from jaxinterp import torch_pickle

    _fake_torch(monkeypatch)
    w = {"w": ("FloatStorage", np.arange(4, dtype=np.float32))}
    with pytest.raises(ValueError, match=r"torch checkpoint .*a\.pt: the pickle names storage archive/data/0, which "
                                         r"the archive does not hold"):
        torch_pickle.load(_drop(_write_torch_zip(tmp_path / "a.pt", w, byteorder=b"little"), "archive/data/0"))

    class Pid(pickle.Pickler):
        def persistent_id(self, obj):
            return obj[1] if isinstance(obj, tuple) and obj and obj[0] == "pid" else None

    for pid in (("storage",), ("storage", "FloatStorage", "0", "cpu", 4), ("storage", 1.5, "0")):
        path = tmp_path / "p.pt"
        buf = io.BytesIO()
        Pid(buf, protocol=2).dump({"w": ("pid", pid)})
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", buf.getvalue())
        with pytest.raises(ValueError, match="unexpected persistent id"):
            torch_pickle.load(path)

    class NotAStorage:
        def __reduce__(self):
            import collections
            import sys
            return sys.modules["torch._utils"]._rebuild_tensor_v2, ({"x": 1}, 0, (2,), (1,), False, collections.OrderedDict())

    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=2).dump({"w": NotAStorage()})
    with zipfile.ZipFile(tmp_path / "n.pt", "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(ValueError, match=r"n\.pt: tensor \['w'\]: expected a storage and tuples of sizes and strides, "
                                         r"got dict"):
        torch_pickle.load(tmp_path / "n.pt")


def _drop(path, member):
    """The zip at `path` without `member`."""
    with zipfile.ZipFile(path) as z:
        items = [(n, z.read(n)) for n in z.namelist() if n != member]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in items:
            z.writestr(n, data)
    return path


@pytest.mark.parametrize("argv,match", [
    (["--d-model", "30", "--heads", "4"], "TrainConfig.n_embd must be a multiple of n_head=4, got 30"),
    (["--vocab-size", "100"], r"TrainConfig.vocab_size must be at least 300 .*got 100"),
])
def test_toyworld_train_settings_are_refused_before_any_work(tmp_path, monkeypatch, capsys, argv, match):
    """A head count that does not divide d_model, or a vocabulary below the tokenizer's floor, was
    refused only after the world was built and the tokenizer trained."""
    import re

    from jaxinterp import cli
    from jaxinterp.toyworld import tokenizer as toktools

    monkeypatch.setattr(toktools, "train_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was trained first"))
    assert cli.main(["toyworld", "train", "--out", str(tmp_path / "run"), *argv]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
