"""Review 14 (lens resume and saved files): a lens checkpoint resumed on another model or with another
activations dtype, a lens file's extra metadata that is not JSON, and save_gpt2's tokenizer files."""

import dataclasses
import json
import logging

import jax
import numpy as np
import pytest

from jaxinterp import fingerprint
from jaxinterp.lens import data, lenses, objective as obj, train
from jaxinterp.transformer import load_gpt2

from conftest import TINY_GPT2, WordTokenizer, word_texts as _texts


def _run(tiny_processed):
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(data.tokenize(_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(steps=3, batch_size=2, accum=2, seq_len=12, save_every=1, seed=3)
    return params, cfg, lc, batches, tc


def _meta_file(ckpt_dir, step):
    """The JSON file of a checkpoint's `meta` item."""
    metas = [p for p in (ckpt_dir / str(step)).rglob("*") if p.is_file() and p.read_bytes().startswith(b"{")
             and b'"batches_seen"' in p.read_bytes()]
    assert len(metas) == 1
    return metas[0]


def _edit_meta(ckpt_dir, step, edit):
    path = _meta_file(ckpt_dir, step)
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _changed(params, delta=1e-3):
    """The same model with one weight changed."""
    leaves, treedef = jax.tree.flatten(params)
    i = max(range(len(leaves)), key=lambda j: np.size(leaves[j]))  # some matrix
    a = np.array(leaves[i])
    a.reshape(-1)[7] += delta
    leaves[i] = a
    return jax.tree.unflatten(treedef, leaves)


def _steps(ckpt_dir):
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


# ----------------------------------------------------------------------------------------------
# lens resume: the model

def test_resume_on_another_model_of_the_same_shape_is_refused(tiny_processed, tmp_path):
    """Any GPT-2 of the same shape (here the fixture with one weight changed by 1e-3) continued another
    model's run silently, mixing two models' lenses; refused now, naming the folder, before any step."""
    params, cfg, lc, batches, tc = _run(tiny_processed)
    ckpt = tmp_path / "ckpt"
    train.train(params, cfg, lc, batches, tc, ckpt_dir=ckpt, progress=False, stop_after=1)
    meta = json.loads(_meta_file(ckpt, 1).read_text())
    assert meta["model"] == fingerprint.fingerprint(params, config=cfg)
    before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    other = _changed(params)
    with pytest.raises(ValueError, match=rf"ckpt_dir: {ckpt} holds a run on another model: the weights or config "
                                         rf"of the model given differ .*checkpoint '{meta['model']}', this model "
                                         rf"'[0-9a-f]{{64}}'"):
        train.train(other, cfg, lc, batches, tc, ckpt_dir=ckpt, progress=False)
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == before  # no step ran, nothing was written
    # another config with the same weights (a model that computes otherwise) is another model too
    with pytest.raises(ValueError, match="holds a run on another model"):
        train.train(params, dataclasses.replace(cfg, layer_norm_epsilon=1e-3), lc, batches, tc, ckpt_dir=ckpt,
                    progress=False)
    # random weights of the same shape
    rng = np.random.default_rng(0)
    random = jax.tree.map(lambda a: rng.normal(0, 0.02, np.shape(a)).astype(np.float32), params)
    with pytest.raises(ValueError, match="holds a run on another model"):
        train.train(random, cfg, lc, batches, tc, ckpt_dir=ckpt, progress=False)
    assert _steps(ckpt) == [1]
    again = train.train(params, cfg, lc, batches, tc, ckpt_dir=ckpt, progress=False)  # its own model resumes
    assert (again.start_step, again.steps) == (1, 3)


def test_resume_on_the_same_model_loaded_again_is_bit_identical(tiny_processed, tmp_path):
    """The fingerprint is the model's, not the arrays' identity: the same checkpoint loaded again (another
    process's load) resumes, and the resumed run is the uninterrupted one to the bit."""
    params, cfg, lc, batches, tc = _run(tiny_processed)
    whole = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "a", progress=False)
    part = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False, stop_after=2)
    params2, cfg2 = load_gpt2(TINY_GPT2, process_weights=True)
    assert params2 is not params
    rest = train.train(params2, cfg2, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False)
    assert (part.start_step, rest.start_step, rest.steps) == (0, 2, 3)
    assert part.losses + rest.losses == whole.losses
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])
    # the numpy copy of the same weights is the same model
    host = jax.tree.map(np.asarray, params)
    assert fingerprint.fingerprint(host, config=cfg) == fingerprint.fingerprint(params2, config=cfg2)


def test_checkpoint_without_a_model_fingerprint_still_resumes_and_says_so(tiny_processed, tmp_path, caplog):
    params, cfg, lc, batches, tc = _run(tiny_processed)
    whole = train.train(params, cfg, lc, batches, tc, progress=False)
    train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False, stop_after=1)
    _edit_meta(tmp_path, 1, lambda m: (m.pop("model"), m.pop("model_dtype")))  # as written before
    with caplog.at_level(logging.WARNING, logger="jaxinterp.lens.train"):
        rest = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False)
    assert (rest.start_step, rest.steps) == (1, 3)
    assert any(f"lens checkpoint {tmp_path} was written before the model's fingerprint was recorded" in r.message
               for r in caplog.records), caplog.text
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])


# ----------------------------------------------------------------------------------------------
# lens resume: the activations dtype however it was set

def test_resume_with_bf16_toggled_under_an_explicit_compute_dtype_is_refused(tiny_processed, tmp_path):
    """bfloat16 was checked only through the objective's compute_dtype: an objective that named bfloat16
    itself resumed with --bf16 toggled (GPT-2's activations switched dtype mid-run), silently."""
    params, cfg, lc, batches, tc = _run(tiny_processed)
    objective = obj.Objective(compute_dtype="bfloat16")
    bf16 = dataclasses.replace(tc, bfloat16=True)
    train.train(params, cfg, lc, batches, tc, objective=objective, ckpt_dir=tmp_path / "a", progress=False,
                stop_after=1)
    with pytest.raises(ValueError, match=r"holds another run.*model_dtype: checkpoint 'float32', this run 'bfloat16'"):
        train.train(params, cfg, lc, batches, bf16, objective=objective, ckpt_dir=tmp_path / "a", progress=False)
    train.train(params, cfg, lc, batches, bf16, objective=objective, ckpt_dir=tmp_path / "b", progress=False,
                stop_after=1)
    with pytest.raises(ValueError, match=r"holds another run.*model_dtype: checkpoint 'bfloat16', this run 'float32'"):
        train.train(params, cfg, lc, batches, tc, objective=objective, ckpt_dir=tmp_path / "b", progress=False)
    assert _steps(tmp_path / "a") == _steps(tmp_path / "b") == [1]
    # the same effective dtypes set another way (the config's dtype instead of --bf16) are the same run
    again = train.train(params, dataclasses.replace(cfg, dtype="bfloat16"), lc, batches, tc, objective=objective,
                        ckpt_dir=tmp_path / "b", progress=False)
    assert (again.start_step, again.steps) == (1, 3)


def test_a_checkpoint_without_the_dtype_record_is_checked_through_its_bf16_flag(tiny_processed, tmp_path):
    params, cfg, lc, batches, tc = _run(tiny_processed)
    objective = obj.Objective(compute_dtype="bfloat16")
    train.train(params, cfg, lc, batches, tc, objective=objective, ckpt_dir=tmp_path, progress=False, stop_after=1)
    _edit_meta(tmp_path, 1, lambda m: m.pop("model_dtype"))
    with pytest.raises(ValueError, match=r"model_dtype: checkpoint 'float32', this run 'bfloat16'"):
        train.train(params, cfg, lc, batches, dataclasses.replace(tc, bfloat16=True), objective=objective,
                    ckpt_dir=tmp_path, progress=False)
    again = train.train(params, cfg, lc, batches, tc, objective=objective, ckpt_dir=tmp_path, progress=False)
    assert (again.start_step, again.steps) == (1, 3)


# ----------------------------------------------------------------------------------------------
# save_lens: extra metadata that JSON cannot hold

def _lens(tiny_processed):
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    return {k: np.asarray(v) for k, v in lenses.init(*lenses.unembedding(params, cfg), lc).items()}, lc


@pytest.mark.parametrize("extra, match", [
    ({"model": "m", "steps": np.int64(3)}, r"key 'steps' \(a int64 value\), which JSON cannot hold: "
                                           r"Object of type int64 is not JSON serializable"),
    ({"ok": 1, "losses": np.zeros(2)}, r"key 'losses' \(a ndarray value\)"),
    ({"path": __import__("pathlib").Path("x")}, r"key 'path' \(a PosixPath value\)"),
    ({(1, 2): "a tuple key"}, r"key \(1, 2\) \(a str value\), which JSON cannot hold: keys must be"),
    ({"nested": {"deep": {1, 2}}}, r"key 'nested' \(a dict value\).*Object of type set"),
    (["not", "a", "dict"], r"a dict of JSON-serialisable values, got list"),
])
def test_save_lens_with_extra_that_is_not_json_is_a_value_error(tiny_processed, tmp_path, extra, match):
    """json.dumps's TypeError named no key, and came from save_lens after its other checks; now a
    ValueError naming the key, before anything is written."""
    from jaxinterp.lens.io import save_lens

    lens, lc = _lens(tiny_processed)
    with pytest.raises(ValueError, match=r"^extra: expected .*" + match):
        save_lens(tmp_path / "out" / "lens.safetensors", lens, lc, extra=extra)
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder
    previous = save_lens(tmp_path / "lens.safetensors", lens, lc, extra={"run": 1})
    before = previous.read_bytes()
    with pytest.raises(ValueError, match=r"extra: expected"):
        save_lens(previous, lens, lc, extra=extra)
    assert previous.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens.safetensors"]  # no temporary left behind


def test_save_lens_extra_round_trips(tiny_processed, tmp_path):
    from safetensors import safe_open

    from jaxinterp.lens.io import load_lens, save_lens

    lens, lc = _lens(tiny_processed)
    for extra, stored in [(None, {}), ({}, {}), ({"model": "m", "steps": 3, "nested": [1, {"a": None}]}, None)]:
        path = save_lens(tmp_path / "lens.safetensors", lens, lc, extra=extra)
        with safe_open(str(path), "np") as f:
            assert json.loads(f.metadata()["extra"]) == (extra if stored is None else stored)
        loaded, lc2 = load_lens(path)
        assert lc2 == lc
        np.testing.assert_array_equal(loaded["W"], lens["W"])


# ----------------------------------------------------------------------------------------------
# save_gpt2: the tokenizer files belong to the weights too

def _two_tokenizers():
    import copy

    from jaxinterp.transformer import load_tokenizer

    old = load_tokenizer(TINY_GPT2)
    new = copy.deepcopy(old)
    new.add_tokens(["w_new_token"])  # tokenizer.json differs
    new.model_max_length = 64  # tokenizer_config.json too
    assert len(new) == len(old) + 1
    return old, new


def test_a_crash_before_the_tokenizer_files_is_refused_by_load_tokenizer(tmp_path, tiny_raw, monkeypatch):
    """save_gpt2 wrote the tokenizer files after config.json: a crash between left the new model beside the
    old tokenizer, which loaded silently (other token ids). The weights now record the tokenizer's digests."""
    from jaxinterp import atomic
    from jaxinterp.transformer import load_tokenizer
    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    old_tok, new_tok = _two_tokenizers()
    folder = save_gpt2(params, config, tmp_path / "m", tokenizer=old_tok)
    assert len(load_tokenizer(folder)) == len(old_tok)
    new_params = _changed(params, 0.5)
    real = atomic.write_bytes

    def crash_at_tokenizer(path, data):
        if path.name.startswith("tokenizer"):
            raise KeyboardInterrupt  # killed after the weights' and config.json's renames
        return real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", crash_at_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        save_gpt2(new_params, config, folder, tokenizer=new_tok)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                        "tokenizer_config.json"]  # no temporary left
    with pytest.raises(ValueError, match=rf"the tokenizer files in {folder} and model\.safetensors do not belong "
                                         r"together \(a save interrupted between them\?\).*tokenizer\.json another "
                                         r"file; tokenizer_config\.json another file"):
        load_tokenizer(folder)
    p2, _ = load_gpt2(folder)  # the weights and config.json are the new model's, and agree
    np.testing.assert_array_equal(np.asarray(p2["h_0"]["mlp"]["c_fc"]["kernel"]),
                                  np.asarray(new_params["h_0"]["mlp"]["c_fc"]["kernel"]))
    # a crash after the first tokenizer file: the second is still the old one
    calls = []

    def crash_at_second(path, data):
        if path.name.startswith("tokenizer"):
            calls.append(path.name)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real(path, data)

    save_gpt2(params, config, folder, tokenizer=old_tok)
    monkeypatch.setattr(atomic, "write_bytes", crash_at_second)
    with pytest.raises(KeyboardInterrupt):
        save_gpt2(new_params, config, folder, tokenizer=new_tok)
    monkeypatch.undo()
    assert calls == ["tokenizer.json", "tokenizer_config.json"]
    with pytest.raises(ValueError, match=r"do not belong together .*got tokenizer_config\.json another file; save"):
        load_tokenizer(folder)
    # the save run again completes the folder
    save_gpt2(new_params, config, folder, tokenizer=new_tok)
    assert len(load_tokenizer(folder)) == len(new_tok)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=r"got tokenizer_config\.json missing"):
        load_tokenizer(folder)


def test_a_failing_tokenizer_leaves_the_folder_as_it_was(tmp_path, tiny_raw):
    """The tokenizer is saved (to a temporary folder) before the weights: one that fails changes nothing."""
    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    old_tok, _ = _two_tokenizers()
    folder = save_gpt2(params, config, tmp_path / "m", tokenizer=old_tok)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    class Broken:
        eos_token_id = 0

        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_gpt2(_changed(params, 0.5), config, folder, tokenizer=Broken())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_tokenizers_without_the_record_load_as_before(tmp_path, tiny_raw):
    """Folders saved before the digests were recorded (and Hugging Face's own), and a model saved without a
    tokenizer into a folder that holds one (the tokenizer kept on purpose), load their tokenizer unchecked."""
    from safetensors.numpy import load_file, save_file

    from jaxinterp.transformer import load_tokenizer
    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    old_tok, new_tok = _two_tokenizers()
    assert len(load_tokenizer(TINY_GPT2)) == len(old_tok)
    folder = save_gpt2(params, config, tmp_path / "m", tokenizer=new_tok)
    save_gpt2(_changed(params, 0.5), config, folder)  # new weights, the tokenizer kept
    assert len(load_tokenizer(folder)) == len(new_tok)
    folder2 = save_gpt2(params, config, tmp_path / "old", tokenizer=new_tok)
    with __import__("safetensors").safe_open(str(folder2 / "model.safetensors"), "np") as f:
        meta = f.metadata()
    save_file(load_file(folder2 / "model.safetensors"), str(folder2 / "model.safetensors"),
              metadata={k: v for k, v in meta.items() if k != "jaxinterp_tokenizer"})
    old_tok.save_pretrained(folder2)
    assert len(load_tokenizer(folder2)) == len(old_tok)


@pytest.mark.parametrize("recorded", ["{not json", "[1, 2]"])
def test_a_damaged_tokenizer_record_is_a_clear_error(tmp_path, tiny_raw, recorded):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from jaxinterp.transformer import load_tokenizer
    from jaxinterp.transformer.weights import save_gpt2

    params, config = tiny_raw
    folder = save_gpt2(params, config, tmp_path / "m", tokenizer=_two_tokenizers()[0])
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        meta = dict(f.metadata(), jaxinterp_tokenizer=recorded)
    save_file(load_file(folder / "model.safetensors"), str(folder / "model.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"model\.safetensors: expected 'jaxinterp_tokenizer' metadata holding a "
                                         r"JSON object of tokenizer file digests, got '"):
        load_tokenizer(folder)


def test_resume_on_another_model_names_the_other_settings_that_differ_too(tiny_processed, tmp_path):
    """The model's refusal was raised alone: a run on another model with another learning rate named
    only the model, and the rate came up after the user fixed that. Now both are named in one error."""
    params, cfg, lc, batches, tc = _run(tiny_processed)
    ckpt = tmp_path / "ckpt"
    train.train(params, cfg, lc, batches, tc, ckpt_dir=ckpt, progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"holds a run on another model: .* \(other settings differ too: "
                                         rf"lr: checkpoint {tc.lr!r}, this run {tc.lr * 2!r}\)$"):
        train.train(_changed(params), cfg, lc, batches, dataclasses.replace(tc, lr=tc.lr * 2), ckpt_dir=ckpt,
                    progress=False)
    with pytest.raises(ValueError, match=r"holds a run on another model: .*use a new folder$"):  # the model alone
        train.train(_changed(params), cfg, lc, batches, tc, ckpt_dir=ckpt, progress=False)
    assert _steps(ckpt) == [1]
