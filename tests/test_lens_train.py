"""Lens training driver: exact resume after a kill, data, data-parallel over 4 host devices (subprocess),
and the CLI end to end with its bad-input errors."""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from jaxinterp.lens import data, lenses, train
from jaxinterp.lens.io import load_lens

from conftest import TINY_GPT2, WordTokenizer, word_texts as _texts


def test_killed_run_resumes_exactly(tiny_processed, tmp_path):
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(data.tokenize(_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(steps=3, batch_size=2, accum=2, seq_len=12, save_every=1, seed=3)
    whole = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "a", progress=False)
    part = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False, stop_after=2)
    rest = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False)
    assert (part.start_step, rest.start_step, rest.steps) == (0, 2, 3)
    assert part.losses + rest.losses == whole.losses
    assert whole.losses[-1] < whole.losses[0]
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])
    restored, rc = train.restore_lens(tmp_path / "a")
    assert rc == lc
    np.testing.assert_array_equal(restored["W"], whole.lens["W"])


def test_bfloat16_training_follows_float32(tiny_processed):
    """`--bf16` (GPT-2 activations and the lens matmul inputs in bfloat16; params and Adam float32):
    the same run's losses and weights within bfloat16's precision of the float32 run's."""
    import dataclasses

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(data.tokenize(_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(steps=4, batch_size=2, seq_len=12, seed=3)
    f32 = train.train(params, cfg, lc, batches, tc, progress=False)
    bf16 = train.train(params, cfg, lc, batches, dataclasses.replace(tc, bfloat16=True), progress=False)
    assert all(v.dtype == np.float32 for v in bf16.lens.values())
    # bfloat16 keeps 8 bits of mantissa: a relative error of ~0.4% per rounding, a few roundings deep
    # (measured: 0.12% at most)
    np.testing.assert_allclose(bf16.losses, f32.losses, rtol=1e-2)
    assert np.abs(np.asarray(bf16.losses) - np.asarray(f32.losses)).max() > 0  # bfloat16 did run
    # Adam moves a weight by ~lr whatever its gradient's size, so where a gradient is near 0 bfloat16's
    # rounding can flip the step: compare the whole update, not each entry
    start = np.asarray(lenses.init(*lenses.unembedding(params, cfg), lc)["W"])
    d32, d16 = f32.lens["W"] - start, bf16.lens["W"] - start
    rel = np.linalg.norm(d16 - d32) / np.linalg.norm(d32)
    print("relative difference of the bfloat16 run's update", rel)
    assert 0 < rel < 0.1


def test_resume_with_other_settings_is_an_error(tiny_processed, tmp_path):
    """A checkpoint resumes only the run that wrote it: another accumulation, batch size or lens kind
    would feed other batches or another model, so it is refused before any state is read."""
    import dataclasses

    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(data.tokenize(_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(steps=3, batch_size=2, accum=2, seq_len=12, save_every=1, seed=3)
    train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False, stop_after=1)
    with pytest.raises(ValueError, match="holds another run.*accum: checkpoint 2, this run 1"):
        train.train(params, cfg, lc, batches, dataclasses.replace(tc, accum=1), ckpt_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds another run.*lens_config: checkpoint .*'lensa'.*this run .*'shared'"):
        train.train(params, cfg, lenses.lens_config_for(cfg, 1, "shared"), batches, tc, ckpt_dir=tmp_path,
                    progress=False)
    # Batches of another seed (another data order) with the same TrainConfig resumed silently with
    # other batches: the checkpoint's seed check read TrainConfig.seed, which did not drive the data
    with pytest.raises(ValueError, match=r"batches: expected seed 3 \(TrainConfig.seed\), got 4"):
        train.train(params, cfg, lc, data.Batches(batches.examples, 2, 12, seed=4), tc, ckpt_dir=tmp_path,
                    progress=False)
    # other text under the same seed resumed silently: the checkpoint named no data (now its fingerprint)
    other = data.Batches(data.tokenize(_texts(seed=1), WordTokenizer(), 12), 2, 12, seed=3)
    with pytest.raises(ValueError, match=r"holds another run.*data: checkpoint '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        train.train(params, cfg, lc, other, tc, ckpt_dir=tmp_path, progress=False)
    again = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False)  # the same run resumes
    assert (again.start_step, again.steps) == (1, 3)


def test_batches_are_padded_masked_and_resumable():
    ex = data.tokenize(["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"], WordTokenizer(), 4)
    b = data.Batches(ex, 2, 4, pad_id=0, seed=1)
    first = [b.batch(i) for i in range(5)]
    again = data.Batches(ex, 2, 4, pad_id=0, seed=1).batch(3)  # a new process asking for batch 3
    np.testing.assert_array_equal(first[3].tokens, again.tokens)
    for bt in first:
        assert bt.tokens.shape == (2, 4) and set(bt.mask.sum(1)) <= {1, 3, 4}  # truncated to 4
        assert (bt.tokens[bt.mask == 0] == 0).all()


def test_read_texts(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    (tmp_path / "b.jsonl").write_text('{"text": "three"}\n\n{"text": "four", "x": 1}\n')
    assert data.read_texts(tmp_path / "a.txt") == ["one", " two "]
    assert data.read_texts(tmp_path / "b.jsonl") == ["three", "four"]
    assert data.read_texts(tmp_path) == ["one", " two ", "three", "four"]
    # one text per \n-ended line: a form feed or U+2028 inside a line does not split it; \r\n ends one
    (tmp_path / "c.txt").write_text("first\x0cstill first\r\nsecond \u2028 still second\nthird", newline="")
    assert data.read_texts(tmp_path / "c.txt") == ["first\x0cstill first", "second \u2028 still second", "third"]


@pytest.mark.parametrize("content,name,match", [
    # each message whole after "data: <file> " (the matches were a word or two: "holds no text", "is not JSON")
    ("", "empty.txt", r"holds no text \(empty file or only blank lines\)$"),
    ("\n  \n", "blank.txt", r"holds no text \(empty file or only blank lines\)$"),
    ('{"body": "x"}\n', "f.jsonl", r"line 1: expected an object with field 'text', got \{'body': 'x'\}$"),
    ("{oops\n", "g.jsonl",  # json's words, with where
     r"line 1 is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 \(char 1\)$"),
    ('{"text": "ok"}\n{"text": null}\n', "n.jsonl", "line 2: expected field 'text' to be a string, got NoneType None$"),
    ('{"text": ["a", "b"]}\n', "l.jsonl", r"line 1: expected field 'text' to be a string, got list \['a', 'b'\]$"),
])
def test_bad_data(tmp_path, content, name, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"data: {tmp_path / name} ") + match):
        data.read_texts(tmp_path / name)


class _FakeSplit:
    """What `datasets.load_dataset(name, split=...)` returns, as far as read_texts uses it."""

    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, field):
        return self.columns[field]


def _fake_datasets(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hugging_face_dataset_name(monkeypatch):
    calls = []

    def load(name, split):
        calls.append((name, split))
        return _FakeSplit({"text": ["first", "  ", None, "second"], "label": [0, 1, 2, 3]})  # None: a missing row

    _fake_datasets(monkeypatch, load)
    assert data.read_texts("user/corpus", split="validation") == ["first", "second"]
    assert calls == [("user/corpus", "validation")]
    where = r"^data: Hugging Face dataset 'user/corpus' split 'train': "  # each message whole
    with pytest.raises(ValueError, match=where + r"expected a field 'body', got fields \['text', 'label'\]$"):
        data.read_texts("user/corpus", text_field="body")
    with pytest.raises(ValueError, match=where + "expected field 'label' to hold strings, got int 0$"):
        data.read_texts("user/corpus", text_field="label")


def test_hugging_face_dataset_failures_are_value_errors(monkeypatch):
    def load(name, split):
        raise ConnectionError("hub unreachable")

    _fake_datasets(monkeypatch, load)
    with pytest.raises(ValueError, match="^data: cannot load Hugging Face dataset 'user/corpus' split 'train': "
                                         "hub unreachable$"):
        data.read_texts("user/corpus")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: import fails
    with pytest.raises(ValueError, match=r"^data: 'user/corpus' is not a file or folder, and the `datasets` package "
                                         r"\(needed for Hugging Face dataset names\) is not installed$"):
        data.read_texts("user/corpus")


DP_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys, jax, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    from jaxinterp.transformer import gpt2
    from jaxinterp.lens import data, lenses, objective, train
    # a vocabulary of 97 (prime, as GPT-2's 50257 is to every device count): a split pads it to 128
    cfg = gpt2.GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    params = gpt2.init(jax.random.key(0), cfg)
    lc = lenses.lens_config_for(cfg, 1)
    rng = np.random.default_rng(0)
    ex = [rng.integers(0, 97, rng.integers(1, 12)).astype(np.int32) for _ in range(12)]
    batches = data.Batches(ex, 3, 12)  # 3 examples: padded to 4 for the 4 devices
    tc = train.TrainConfig(steps=3, batch_size=3, seq_len=12)
    out = {"devices": len(jax.devices()), "width": train.padded_vocab(97, 4)}
    # the split: lens params and Adam state along the vocabulary, examples over the devices
    stored = dataclasses.replace(lc, vocab_size=out["width"])
    sh = train._driver_step(cfg, stored, objective.Objective(), 1e-3, 1, True, tuple(jax.devices()))[2]
    out["specs"] = [str(sh.lens["W"].spec), str(sh.lens["b"].spec), str(sh.opt_state[0].mu["W"].spec)]
    split = train.train(params, cfg, lc, batches, dataclasses.replace(tc, shard_vocab=True), progress=False)
    # the default: lens replicated (Adam fused into the backward pass), examples over the devices
    rep = train.train(params, cfg, lc, batches, tc, progress=False)
    # reference: the plain step on one device, unpadded, no data parallelism
    tx, o = optax.adam(1e-3), objective.Objective()
    lens = lenses.init(*lenses.unembedding(params, cfg), lc)
    step = jax.jit(train.make_step(cfg, lc, o, tx, 1))
    state, losses = train.TrainState(lens, tx.init(lens)), []
    for i in range(3):
        b = batches.batch(i)
        state, loss = step(state, params, b.tokens, b.mask, np.ones(3, np.float32))
        losses.append(float(loss))
    np.savez(sys.argv[1], **{f"{name}/{k}": np.asarray(v) for name, lens in
                             (("split", split.lens), ("rep", rep.lens), ("ref", state.lens)) for k, v in lens.items()})
    out["losses"] = {"split": split.losses, "rep": rep.losses, "ref": losses}
    print("RESULT" + json.dumps(out))
""")


def test_data_parallel_over_four_devices_matches_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", DP_SCRIPT, str(tmp_path / "lenses.npz")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["devices"] == 4 and out["width"] == 128
    assert out["specs"] == ["P(None, None, 'data')", "P(None, 'data')", "P(None, None, 'data')"]
    got = np.load(tmp_path / "lenses.npz")
    for run in ("split", "rep"):
        # the KL (~0.008 here) is a difference of log-sum-exps of magnitude ~5, summed in another order
        # on 4 devices: float32 rounding of those terms is ~3e-7 absolute
        np.testing.assert_allclose(out["losses"][run], out["losses"]["ref"], rtol=1e-5, atol=1e-6, err_msg=run)
        for k in ("W", "b"):  # every weight, cut back to the model's 97 columns
            assert got[f"{run}/{k}"].shape == got[f"ref/{k}"].shape
            np.testing.assert_allclose(got[f"{run}/{k}"], got[f"ref/{k}"], rtol=1e-5, atol=1e-6, err_msg=f"{run} {k}")
    assert np.abs(got["ref/W"] - np.asarray(got["ref/W"])[0:1]).max() > 0  # the heads' lenses moved apart


@pytest.mark.parametrize("vocab, devices, width", [(96, 4, 96), (97, 4, 128), (50257, 2, 50304), (50257, 4, 50304),
                                                   (50257, 8, 50304), (50257, 3, 50304), (50257, 1, 50257)])
def test_padded_vocab(vocab, devices, width):
    assert train.padded_vocab(vocab, devices) == width


def _cli(*argv):
    from jaxinterp.cli import main

    return main([str(a) for a in argv])


def _direct_topk(model, lens_path, prompt, k, *, shown):
    """Per head (lens top-k, logit-lens top-k) token strings and ids at the prompt's last token, computed
    here from the saved lens params and a plain forward pass (no readout code): the CLI table's reference.
    `shown`: how many of the k the table prints in order (the rest count only as a set)."""
    from jaxinterp.transformer import gpt2, load_tokenizer

    params, cfg = model
    tok = load_tokenizer(TINY_GPT2)
    lens, lc = load_lens(lens_path)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    name = f"blocks.{lc.layer}.attn.hook_result"
    _, cache = gpt2.run_with_cache(params, np.asarray([ids], np.int32), config=cfg, names=[name])
    x = np.asarray(cache[name], np.float64)[0, -1]  # (H, D) at the last token
    W_U, b_U = (np.asarray(a, np.float64) for a in lenses.unembedding(params, cfg))
    lens_logits = np.einsum("hd,hdv->hv", x, np.asarray(lens["W"], np.float64)) + np.asarray(lens["b"], np.float64)
    logit_logits = x @ W_U + b_U
    top = lambda z: np.argsort(-z, axis=-1, kind="stable")[:, :k]  # noqa: E731
    # no near-tie where the order matters (the first `shown`, and the cut at k): float32 rounding of
    # these logits (~0.1) is ~1e-8, so a gap of 1e-6 cannot flip between the CLI's path and this one
    for z in (lens_logits, logit_logits):
        s = -np.sort(-z, axis=-1)
        assert (s[:, :shown] - s[:, 1:shown + 1]).min() > 1e-6 and (s[:, k - 1] - s[:, k]).min() > 1e-6
    decode = lambda a: [[tok.decode([int(i)]) for i in row] for row in a]  # noqa: E731
    return decode(top(lens_logits)), decode(top(logit_logits)), top(lens_logits), top(logit_logits)


def test_cli_train_then_show(tiny_processed, tmp_path, capsys):
    """`lens train` then `lens show`: the table's rows are the layer's heads, each row's lens top-k the
    top-k of that head's trained lens (from the saved params, computed here without the readout code),
    its logit-lens top-k the plain logit lens's, its score the share of top-50 tokens in the word list;
    the CSV holds the same table and stdout prints it."""
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in _texts(12)))
    out = tmp_path / "run"
    # lr 0.005: two Adam steps move the lens weights by ~0.01, enough for the lens top tokens to leave
    # the logit lens's and to differ between heads (at 0.02 the shared bias update makes every head alike)
    assert _cli("lens", "train", "--model", TINY_GPT2, "--layer", 2, "--data", tmp_path / "d.jsonl", "--out", out,
                "--steps", 2, "--seq-len", 8, "--batch-size", 2, "--save-every", 1, "--lr", 0.005,
                "--no-progress") == 0
    lens_path = out / "lens_layer2.safetensors"
    lens, lc = load_lens(lens_path)
    assert lc.layer == 2 and lens["W"].shape == (4, 64, 97)
    capsys.readouterr()
    lens_tok, logit_tok, lens_ids, logit_ids = _direct_topk(tiny_processed, lens_path, "w5 w6 w7", 50, shown=8)
    assert lens_tok != logit_tok  # the lens was trained away from the logit lens: a swapped column fails
    # the word list: head 0's lens top-50 (each other head has a token outside it, so the scores differ);
    # upper case in the file: the score compares lower-cased stripped tokens
    words = {t.strip().lower() for t in lens_tok[0]}
    (tmp_path / "words.txt").write_text("\n".join(sorted(words)).upper() + "\n")
    assert _cli("lens", "show", "--model", TINY_GPT2, "--lens", lens_path, "--prompt",
                "w5 w6 w7", "--k", 3, "--words", tmp_path / "words.txt", "--csv", tmp_path / "t.csv",
                "--heatmap", tmp_path / "h.png") == 0
    printed = capsys.readouterr().out
    share = [sum(t.strip().lower() in words for t in row) / 50 for row in lens_tok]
    assert len(set(share)) > 1  # heads tell apart: a row order or score mix-up fails
    expect = [["2", str(h), " ".join(map(repr, lens_tok[h][:3])), " ".join(map(repr, logit_tok[h][:3])),
               repr(share[h])] for h in range(4)]
    rows = list(csv.reader((tmp_path / "t.csv").read_text().splitlines()))
    assert rows[0] == ["layer", "head", "lens top-3", "logit lens top-3", "share of top-50 in words.txt"]
    assert rows[1:] == expect
    for h, r in enumerate(expect):
        assert f"L2   H{h:<3} score {share[h]:.3f}\n    lens:       {r[2]}\n    logit lens: {r[3]}\n" in printed
    assert printed.startswith("prompt: 'w5 w6 w7' (3 tokens), last token 'w7'\n")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    # --k above --score-k: the table shows k tokens per head (it showed score-k of them); without a word
    # list the score is the share of the lens's top-5 ids among the logit lens's top-5
    assert _cli("lens", "show", "--model", TINY_GPT2, "--lens", lens_path, "--prompt",
                "w5 w6 w7", "--k", 8, "--score-k", 5, "--csv", tmp_path / "t8.csv") == 0
    lens_tok, logit_tok = [r[:8] for r in lens_tok], [r[:8] for r in logit_tok]
    overlap = [len(set(a[:5].tolist()) & set(b[:5].tolist())) / 5 for a, b in zip(lens_ids, logit_ids)]
    rows = list(csv.reader((tmp_path / "t8.csv").read_text().splitlines()))
    assert rows[0] == ["layer", "head", "lens top-8", "logit lens top-8",
                       "share of lens top-5 also in logit-lens top-5"]
    assert rows[1:] == [["2", str(h), " ".join(map(repr, lens_tok[h])), " ".join(map(repr, logit_tok[h])),
                         repr(overlap[h])] for h in range(4)]


@pytest.mark.parametrize("argv,match", [
    # the whole stderr line (the matches were a few words: "holds no text", "layer 7 out of range")
    (["train", "--layer", 3, "--data", "{data}"], r"layer: expected an integer in \[0, 3\) \(the model has 3 blocks\), got 3"),
    (["train", "--layer", 1, "--data", "{empty}"], r"data: {empty} holds no text \(empty file or only blank lines\)"),
    (["show", "--lens", "{lens}", "--prompt", " ".join(["w1"] * 33)],
     "prompt: 33 tokens is longer than the model's context of 32 positions"),
    (["show", "--lens", "{lens}", "--layer", 7, "--prompt", "w1"], "lens {lens}: layer 7 out of range, the model has 3 blocks"),
])
def test_cli_bad_input(tmp_path, capsys, argv, match):
    from conftest import FIXTURES

    (tmp_path / "d.txt").write_text("w1 w2\n")
    (tmp_path / "e.txt").write_text("")
    fill = {"{data}": tmp_path / "d.txt", "{empty}": tmp_path / "e.txt", "{lens}": FIXTURES / "lens_tiny_layer1.pt"}
    argv = [fill.get(a, a) if isinstance(a, str) else a for a in argv]
    out = tmp_path / "out"
    extra = ["--out", out] if argv[0] == "train" else []
    assert _cli("lens", *argv[:1], "--model", TINY_GPT2, *argv[1:], *extra) == 2
    err = capsys.readouterr().err
    for key, path in fill.items():
        match = match.replace(key, re.escape(str(path)))
    assert re.fullmatch("jaxinterp lens: error: " + match + "\n", err), err
    assert not out.exists()  # nothing written


def test_checkpoint_without_a_data_fingerprint_still_resumes(tiny_processed, tmp_path):
    """Checkpoints written before the data's fingerprint was recorded resume as before (nothing to check)."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    batches = data.Batches(data.tokenize(_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=12, save_every=1, seed=3)
    train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False, stop_after=1)
    metas = [p for p in (tmp_path / "1").rglob("*") if p.is_file() and p.read_bytes().startswith(b"{")
             and b'"batches_seen"' in p.read_bytes()]
    assert len(metas) == 1
    meta = json.loads(metas[0].read_text())
    assert len(meta.pop("data")) == 64
    metas[0].write_text(json.dumps(meta))
    again = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path, progress=False)
    assert (again.start_step, again.steps) == (1, 2)
