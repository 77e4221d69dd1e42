"""Review 18 (u2): `jaxinterp merge` used end to end; what it found, one case each."""

import re

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from jaxinterp import cli
from jaxinterp.merge import checkpoint


def _bert_like(tmp_path, positions):
    """Checkpoints with float weights first and an int64 buffer (position_ids) last in merge order."""
    rng = np.random.default_rng(0)
    dirs = []
    for j, pos in enumerate(positions):
        d = tmp_path / f"m{j}"
        d.mkdir()
        save_file({"a.weight": rng.normal(size=(4, 4)).astype(np.float32),
                   "b.weight": rng.normal(size=(4, 4)).astype(np.float32),
                   "z.position_ids": np.asarray(pos, np.int64)[None]}, str(d / "model.safetensors"))
        dirs.append(d)
    return dirs


def _cfg(tmp_path, dirs):
    p = tmp_path / "cfg.yml"
    p.write_text(yaml.safe_dump({"merge_method": "linear", "parameters": {"weight": 0.5},
                                 "models": [str(d) for d in dirs]}))
    return p


def test_differing_integer_buffers_are_refused_by_check_and_before_yaml_makes_or_merges_anything(
        tmp_path, capsys, monkeypatch):
    """A buffer that differs between the models was found only when the merge reached it: `merge
    check` said ok, and `merge yaml` had made the output folders and merged every weight before it."""
    dirs = _bert_like(tmp_path, [np.arange(8), np.arange(8)[::-1]])
    cfg = _cfg(tmp_path, dirs)
    msg = (f"z.position_ids: a int64 tensor (a buffer, not a weight) differs between {str(dirs[0])!r} and "
           f"{str(dirs[1])!r}; it cannot be merged, only copied when equal")
    assert cli.main(["merge", "check", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == f"jaxinterp merge: error: {msg}"
    merged = []
    real = checkpoint._merge_one
    monkeypatch.setattr(checkpoint, "_merge_one", lambda job, *a: merged.append(job.out_name) or real(job, *a))
    out = tmp_path / "new" / "out"
    assert cli.main(["merge", "yaml", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"jaxinterp merge: error: {msg}"
    assert merged == [] and not (tmp_path / "new").exists()


def test_equal_integer_buffers_still_pass_check_and_are_copied(tmp_path, capsys):
    dirs = _bert_like(tmp_path, [np.arange(8), np.arange(8)])
    cfg = _cfg(tmp_path, dirs)
    assert cli.main(["merge", "check", str(cfg)]) == 0
    assert capsys.readouterr().out == "ok: linear of 2 checkpoints, 3 tensors\n"
    assert cli.main(["merge", "yaml", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    np.testing.assert_array_equal(got["z.position_ids"], np.arange(8)[None])


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "earlier-merge"])
def test_an_interrupted_merge_leaves_no_folder_of_its_own_and_an_earlier_merge_intact(tmp_path, monkeypatch,
                                                                                     existing):
    """Ctrl-C mid-merge left the folders it had made behind (empty); an earlier merge's output
    in an existing folder stays as it was."""
    dirs = _bert_like(tmp_path, [np.arange(8), np.arange(8)])
    cfg = _cfg(tmp_path, dirs)
    out = tmp_path / "a" / "b" / "out"
    if existing:
        checkpoint.run_yaml(cfg, out, progress=False)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = checkpoint._merge_one, []

    def interrupted(job, *a):
        calls.append(job.out_name)
        if len(calls) == 2:
            raise _Interrupt
        return real(job, *a)

    monkeypatch.setattr(checkpoint, "_merge_one", interrupted)
    with pytest.raises(_Interrupt):
        checkpoint.run_yaml(cfg, out, progress=False)
    assert len(calls) == 2
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("mlp") / "a.safetensors"
    assert cli.main(["merge", "train-mlp", "--seed", "1", "--steps", "5", "--out", str(p)]) == 0
    return p


@pytest.mark.parametrize("damage,msg", [
    (lambda b: b"hello\n", r"junk.safetensors is not a safetensors file: expected an 8-byte header length "
                           r"within its 6 bytes, got none"),
    (lambda b: b[:300], r"junk.safetensors is not a safetensors file: expected an 8-byte header length within its "
                        r"300 bytes, got \d+"),
    (lambda b: b[:-10], r"junk.safetensors is truncated: its header needs (\d+) bytes, the file has \d+"),
], ids=["text", "cut-header", "cut-data"])
def test_barrier_names_a_model_that_is_not_a_whole_safetensors_file(mlp_file, tmp_path, capsys, damage, msg):
    """`merge barrier` handed its files to safetensors' load_file unchecked: a file that is not one
    (or a cut copy) ended in a SafetensorError traceback ('header too small'), naming no file."""
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(damage(mlp_file.read_bytes()))
    assert cli.main(["merge", "barrier", str(mlp_file), str(bad), "--num", "3"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"jaxinterp merge: error: model {re.escape(repr(str(bad)))}: {msg}\n", err), err


@pytest.mark.parametrize("text,msg", [
    ('{"model_type": "bert",', r"expected the JSON config of model '.*m0' \(the output's config.json is it, edited\), "
                               r"got a file that is not JSON \(Expecting property name"),
    ("[1, 2]", r"expected a JSON object \(the config of model '.*m0'\), got list"),
], ids=["not-json", "list"])
def test_a_source_config_json_that_must_be_edited_is_read_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                                      text, msg):
    """With a dtype configured the output's config.json is the source's with its torch_dtype set; it
    was read after the merged weights were in place: a broken one ended the run there (a JSON error
    naming no file, or an AttributeError traceback for a list), weights written without a config."""
    dirs = _bert_like(tmp_path, [np.arange(8), np.arange(8)])
    (dirs[0] / "config.json").write_text(text)
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "parameters": {"weight": 0.5}, "dtype": "float32",
                                   "models": [str(d) for d in dirs]}))
    want = rf"jaxinterp merge: error: {re.escape(str(dirs[0] / 'config.json'))}: {msg}"
    assert cli.main(["merge", "check", str(cfg)]) == 2
    assert re.match(want, capsys.readouterr().err)
    merged = []
    real = checkpoint._merge_one
    monkeypatch.setattr(checkpoint, "_merge_one", lambda job, *a: merged.append(job.out_name) or real(job, *a))
    assert cli.main(["merge", "yaml", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert re.match(want, capsys.readouterr().err)
    assert merged == [] and not (tmp_path / "out").exists()


def test_an_interruption_after_the_weights_leaves_no_new_folder_with_weights_but_no_config(tmp_path, monkeypatch):
    """Interrupted while the config and tokenizer files were copied, a new output folder kept the
    merged model.safetensors (and what was copied so far) without the rest."""
    dirs = _bert_like(tmp_path, [np.arange(8), np.arange(8)])
    for f in ("config.json", "tokenizer.json"):
        (dirs[0] / f).write_text("{}")
    cfg = _cfg(tmp_path, dirs)
    real = checkpoint.shutil.copyfile

    def copy(a, b):
        if str(a).endswith("tokenizer.json"):
            raise _Interrupt
        return real(a, b)

    monkeypatch.setattr(checkpoint.shutil, "copyfile", copy)
    with pytest.raises(_Interrupt):
        checkpoint.run_yaml(cfg, tmp_path / "new" / "out", progress=False)
    assert not (tmp_path / "new").exists()
    out = tmp_path / "old"  # an existing folder: its other files are never removed
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(_Interrupt):
        checkpoint.run_yaml(cfg, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_an_empty_out_is_refused_not_taken_for_the_working_directory(tmp_path, capsys, monkeypatch):
    """`--out ""` (an unset variable in `--out "$OUT"`) is Path('') == '.': the merge wrote
    model.safetensors into the working directory, over another model's file there."""
    dirs = _bert_like(tmp_path, [np.arange(8), np.arange(8)])
    cfg = _cfg(tmp_path, dirs)
    work = tmp_path / "work"
    work.mkdir()
    (work / "model.safetensors").write_bytes(b"someone else's model")
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as e:
        cli.main(["merge", "yaml", str(cfg), "--out", "", "--quiet"])
    assert e.value.code == 2
    assert capsys.readouterr().err.endswith("error: argument --out: expected a folder path, got '' (an empty path; "
                                            "write . for the working directory)\n")
    with pytest.raises(ValueError, match=r"^out: expected a folder path, got '' \(an empty path; pass '\.' for"):
        checkpoint.run_yaml(cfg, "", progress=False)
    assert sorted(p.name for p in work.iterdir()) == ["model.safetensors"]
    assert (work / "model.safetensors").read_bytes() == b"someone else's model"


@pytest.mark.parametrize("method", [["linear"], {"linear": None}], ids=["list", "mapping"])
def test_a_merge_method_that_is_not_a_name_is_a_value_error(tmp_path, capsys, method):
    """`merge_method: [linear]` reached `method in METHODS` with a list: TypeError 'unhashable type'."""
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": method, "models": ["a", "b"]}))
    assert cli.main(["merge", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxinterp merge: error: merge_method: expected one of ['arcee_fusion', ")
    assert err.endswith(f"], got {method!r}\n")
    from jaxinterp.merge import merge

    with pytest.raises(ValueError, match=r"^merge_method: expected one of \["):
        merge(method, [{"w": np.ones(2, np.float32)}], parameters={"weight": 1.0})


def test_a_config_that_is_not_utf8_is_named(tmp_path, capsys):
    """A config saved in another encoding ended with the codec's message alone ('utf-8' codec can't
    decode byte 0xff ...), naming no file."""
    cfg = tmp_path / "cfg.yml"
    cfg.write_bytes("merge_method: linear\n# poids\xe9\n".encode("latin-1"))
    assert cli.main(["merge", "check", str(cfg)]) == 2
    assert capsys.readouterr().err == (f"jaxinterp merge: error: config: expected a UTF-8 YAML file, got {cfg} with "
                                       f"bytes that are not UTF-8 ('utf-8' codec can't decode byte 0xe9 in position "
                                       f"28: invalid continuation byte)\n")


@pytest.mark.parametrize("text,key,first,line", [
    ("merge_method: linear\nmodels: [a, b]\nparameters: {weight: 1.0}\nparameters: {weight: 2.0}\n",
     "parameters", 3, 4),
    ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1.0, weight: 5.0}\n  - b\n",
     "weight", 4, 4),
], ids=["top-level", "per-model"])
def test_a_key_given_twice_in_the_config_is_refused_not_overridden(tmp_path, capsys, text, key, first, line):
    """PyYAML keeps the last of two equal keys: a second `parameters:` block, or `{weight: 1, weight:
    5}`, replaced the first silently and `merge check` said ok."""
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(text)
    assert cli.main(["merge", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxinterp merge: error: config: {cfg} is not valid YAML: expected each key of a "
                          f"mapping once, got {key!r} again (first on line {first})\n  in ")
    assert f", line {line}, column" in err


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    from jaxinterp.merge import config

    cfg = tmp_path / "cfg.yml"
    cfg.write_text("defaults: &d {weight: 1.0, density: 0.5}\nmodels:\n  - parameters: {<<: *d, weight: 2.0}\n")
    assert config.read_dict(cfg)["models"][0]["parameters"] == {"weight": 2.0, "density": 0.5}


def test_barrier_refuses_an_output_that_is_a_model_or_the_other_output(mlp_file, tmp_path, capsys):
    """`--json a.safetensors` wrote the JSON over model a once the models were read; `--png p --json
    p` kept only the JSON. Both are refused before anything is read or computed."""
    a = tmp_path / "a.safetensors"
    a.write_bytes(mlp_file.read_bytes())
    link = tmp_path / "link.json"
    link.symlink_to(a)
    for extra, msg in [
        (["--json", str(a)], f"--json: expected a file other than the models read, got {str(a)!r}, which is model a"),
        (["--png", str(link)], f"--png: expected a file other than the models read, got {str(link)!r}, which is "
                               f"model a"),
        (["--png", str(tmp_path / "p"), "--json", str(tmp_path / "p")],
         f"--json: expected a file other than --png's, got {str(tmp_path / 'p')!r} for both"),
    ]:
        assert cli.main(["merge", "barrier", str(a), str(mlp_file), "--num", "3", *extra]) == 2
        assert capsys.readouterr().err.startswith(f"jaxinterp merge: error: {msg}")
        assert a.read_bytes() == mlp_file.read_bytes() and not (tmp_path / "p").exists()
