"""Review 16 of the GPT-2, Attention Lens and memory-injection code: defects found with fresh eyes."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxinterp.inject.sweep import sweep
from jaxinterp.transformer import gpt2

from conftest import TINY_GPT2


@pytest.mark.parametrize("argv,match", [
    # a layer the 3-layer model lacks: refused by run_with_cache, after the weights were read
    (["--prompt", "w1", "--cache", "blocks.3.attn.hook_z"],
     r"hook name 'blocks\.3\.attn\.hook_z': layer 3 out of range, the model has 3 blocks"),
    # 40 tokens for a context of 32: refused by run_with_cache, after the weights were read
    (["--prompt", " ".join(["w1"] * 40)], r"prompt: expected at most n_positions = 32 tokens, got 40"),
])
def test_gpt2_run_checks_the_prompt_and_hook_layers_against_the_config_before_the_weights(
        monkeypatch, capsys, argv, match):
    from jaxinterp import cli
    from jaxinterp.transformer import weights

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were read before the input was checked")

    # the package first: its lazy attribute would otherwise cache the patched weights.load_gpt2 for good
    monkeypatch.setattr("jaxinterp.transformer.load_gpt2", no_load)
    monkeypatch.setattr(weights, "load_gpt2", no_load)
    assert cli.main(["gpt2", "run", "--model", str(TINY_GPT2), *argv]) == 2
    err = capsys.readouterr().err
    assert re_search(match, err), err


def test_gpt2_run_still_runs_and_caches_a_hook_of_the_last_block(capsys):
    from jaxinterp import cli

    assert cli.main(["gpt2", "run", "--model", str(TINY_GPT2), "--prompt", "w1 w2 w3",
                     "--cache", "blocks.2.attn.hook_z"]) == 0
    assert "blocks.2.attn.hook_z: shape [1, 3, 4, 16]" in capsys.readouterr().out


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


@pytest.mark.parametrize("kw", [dict(n_embd=48, n_head=4),  # d_head 12: 1/sqrt(12) is no float32
                                dict(n_embd=64, n_head=4, scale_attn_by_inverse_layer_idx=True)])  # 1/3
def test_float64_sweep_scales_attention_in_float64(kw):
    """The sweep's attention scale was a float32 (1/sqrt(d_head), and 1/(layer+1)): a float64 model's
    sweep was 1.1e-8 (d_head 12) and 1.6e-8 (inverse layer scaling) off its own float64 forward."""
    from jaxinterp.inject.memory import inject_logits

    with jax.enable_x64(True):
        config = gpt2.GPT2Config(vocab_size=97, n_positions=32, n_layer=3, dtype="float64", **kw)
        params = jax.tree.map(lambda a: a * 5, gpt2.init(jax.random.PRNGKey(0), config))  # scores of size
        rng = np.random.default_rng(0)
        tok = np.concatenate([[0], rng.integers(1, 97, size=8)]).astype(np.int32)
        mem = rng.normal(size=(1, config.n_embd))
        res = sweep(params, [tok], mem, [0, 1], [1.0], config=config, answers=[5])
        p = jax.nn.softmax(gpt2.forward(params, tok[None], config=config)[0, -1])[5]
        np.testing.assert_allclose(res.p_before[0], p, rtol=1e-13)
        for li in range(2):
            logits = inject_logits(params, tok[None], mem[0], config=config, layer=li, tau=1.0)
            np.testing.assert_allclose(res.p_after[li, 0, 0], jax.nn.softmax(logits[0, -1])[5], rtol=1e-13)


def test_float32_sweep_still_matches_the_model():
    from jaxinterp.inject.memory import inject_logits

    config = gpt2.GPT2Config(vocab_size=97, n_positions=32, n_layer=3, n_embd=48, n_head=4,
                             scale_attn_by_inverse_layer_idx=True)
    params = gpt2.init(jax.random.PRNGKey(1), config)
    rng = np.random.default_rng(1)
    tok = np.concatenate([[0], rng.integers(1, 97, size=6)]).astype(np.int32)
    mem = rng.normal(size=(1, config.n_embd)).astype(np.float32)
    res = sweep(params, [tok], mem, [0, 2], [2.0], config=config, answers=[7])
    for li, layer in enumerate((0, 2)):
        logits = inject_logits(params, tok[None], mem[0], config=config, layer=layer, tau=2.0)
        np.testing.assert_allclose(res.p_after[li, 0, 0], jax.nn.softmax(logits[0, -1])[7], rtol=2e-6)


def test_outputs_of_a_float64_sweep_with_a_tau_float32_cannot_hold(tmp_path):
    """write() found the best cell's tau as np.float32(tau) in the taus: a float64 sweep's 0.1 is not
    float32's 0.1, so writing its outputs failed with "np.float32(0.1) is not in list"."""
    from jaxinterp.inject import outputs
    from jaxinterp.inject.data import PromptSet
    from jaxinterp.inject.metrics import aggregate
    from jaxinterp.inject.sweep import SweepResult

    res = SweepResult(np.array([1]), np.array([0.1, 0.3]), np.array([0.1, 0.2]),
                      np.array([[[0.3, 0.4], [0.1, 0.1]]]), None)
    agg = aggregate(res)
    assert agg.best["median"].tau == 0.1
    data = PromptSet(["e0", "e1"], ["o0", "o1"], ["m0", "m1"], ["a0", "a1"], ["", ""], "src")
    paths = outputs.write(tmp_path, data, res, agg, {})
    rows = (tmp_path / "prompts.csv").read_text().splitlines()
    assert rows[0].endswith("p_after_layer1_tau0.1,percent_increase")
    assert rows[1].split(",")[-2:] == ["0.3", "200"] and rows[2].split(",")[-2:] == ["0.4", "100"]
    assert set(paths) == {"per_prompt", "prompts", "summary", "heatmap"}


HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
LONG = " ".join(f"w{i % 90 + 1}" for i in range(40))


@pytest.mark.parametrize("kind", ["unembed", "layer"])
def test_inject_cli_refuses_a_prompt_longer_than_the_context_before_the_model_and_memories(
        tmp_path, monkeypatch, capsys, kind):
    """A prompt longer than the model's context was refused by the sweep, after the model was loaded and
    every memory vector computed (for 'layer' memories, a forward pass of each)."""
    import jaxinterp.transformer as tr
    from jaxinterp import cli
    from jaxinterp.inject import memory

    def refuse(*a, **k):
        raise AssertionError("reached the model or the memories before the input was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    monkeypatch.setattr(memory, "memory_vectors", refuse)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "w1 w2,w3 w4,w5,w6,w7\n" + f"w1,{LONG},w3,w4,w5\n")
    assert cli.main(["inject", "sweep", "--model", str(TINY_GPT2), "--data", str(data), "--out",
                     str(tmp_path / "out"), "--memory-kind", kind]) == 2
    err = capsys.readouterr().err
    assert "prompts: row 1: 41 tokens, the model takes at most 32" in err, err
    assert not (tmp_path / "out").exists()


def test_inject_cli_refuses_a_long_explicit_prompt_before_the_model(tmp_path, monkeypatch, capsys):
    import jaxinterp.transformer as tr
    from jaxinterp import cli

    def refuse(*a, **k):
        raise AssertionError("reached the model before the input was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + f"{LONG},w3 w4,w5,w6,w7\n")
    assert cli.main(["inject", "sweep", "--model", str(TINY_GPT2), "--data", str(data), "--out",
                     str(tmp_path / "out")]) == 2
    assert "explicit: row 0: 41 tokens, the model takes at most 32" in capsys.readouterr().err



def _lens_run(tiny_processed, **kw):
    from jaxinterp.lens import data, lenses, train

    from conftest import WordTokenizer, word_texts

    params, cfg = tiny_processed
    batches = data.Batches(data.tokenize(word_texts(), WordTokenizer(), 12), 2, 12, seed=3)
    tc = train.TrainConfig(steps=3, batch_size=2, seq_len=12, save_every=1, seed=3, **kw)
    return params, cfg, lenses.lens_config_for(cfg, 1), batches, tc


def _concrete_lens_inits(monkeypatch) -> list:
    """Patches lenses.init to record each call made on concrete arrays (not traced by eval_shape)."""
    from jaxinterp.lens import lenses

    real, concrete = lenses.init, []

    def spy(W_U, b_U, config):
        if not isinstance(W_U, jax.core.Tracer):
            concrete.append(config)
        return real(W_U, b_U, config)

    monkeypatch.setattr(lenses, "init", spy)
    return concrete


def test_a_refused_lens_resume_makes_no_fresh_lens_and_a_resume_holds_one_state(tiny_processed, tmp_path,
                                                                                monkeypatch):
    """train() made a fresh lens and Adam state (GPT-2 small: 5.2 GiB) before it read the checkpoint: a
    resume refused for other settings allocated them before its error, and an accepted resume held them
    beside the restored state (twice the training's memory). Now neither makes a concrete fresh state,
    and the resumed run is still the uninterrupted one to the bit."""
    from jaxinterp.lens import train

    params, cfg, lc, batches, tc = _lens_run(tiny_processed)
    whole = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "a", progress=False)
    train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False, stop_after=2)
    concrete = _concrete_lens_inits(monkeypatch)
    import dataclasses

    with pytest.raises(ValueError, match=r"holds another run.*lr: checkpoint 0\.001, this run 0\.002"):
        train.train(params, cfg, lc, batches, dataclasses.replace(tc, lr=2e-3), ckpt_dir=tmp_path / "b",
                    progress=False)
    assert concrete == []
    rest = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False)
    assert concrete == [] and (rest.start_step, rest.steps) == (2, 3)
    assert rest.losses == whole.losses[2:]
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])
    fresh = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "c", progress=False)
    assert concrete == [lc] and fresh.losses == whole.losses  # a new run makes its one fresh lens


def test_a_bf16_moment_lens_run_still_resumes_exactly(tiny_processed, tmp_path):
    from jaxinterp.lens import train

    params, cfg, lc, batches, tc = _lens_run(tiny_processed, adam_moments="bfloat16", accum=2)
    whole = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "a", progress=False)
    part = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False, stop_after=1)
    rest = train.train(params, cfg, lc, batches, tc, ckpt_dir=tmp_path / "b", progress=False)
    assert part.losses + rest.losses == whole.losses
    for k in whole.lens:
        np.testing.assert_array_equal(whole.lens[k], rest.lens[k])


def test_percent_increase_floors_p_before_at_its_own_dtype():
    """p_before was floored at float32's smallest normal number whatever its dtype: a float64 sweep's
    p_before of 1e-40 became 1.2e-38, and an answer twice as likely after injection read as -98.3%."""
    from jaxinterp.inject.metrics import percent_increase
    from jaxinterp.inject.sweep import SweepResult

    res = SweepResult(np.array([0]), np.array([1.0]), np.array([1e-40, 0.25]), np.array([[[2e-40, 0.5]]]), None)
    np.testing.assert_allclose(percent_increase(res)[0, 0], [100.0, 100.0], rtol=1e-12)
    # a float32 sweep's p(answer) that underflowed to 0 is still floored at float32's smallest normal
    f32 = SweepResult(np.array([0]), np.array([1.0], np.float32), np.array([0.0, 0.25], np.float32),
                      np.array([[[np.finfo(np.float32).tiny * 3, 0.5]]], np.float32), None)
    np.testing.assert_allclose(percent_increase(f32)[0, 0], [200.0, 100.0], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_capturing_hook_result_leaves_bfloat16_logits_as_they_are(seed):
    """With bfloat16 activations the per-head outputs were rounded to bfloat16 and summed there, so
    capturing blocks.L.attn.hook_result (as lens training does) changed the model's logits: by 0.055 to
    0.07 (of logits up to 6.4) on this model, where c_proj's one matmul rounds once. Now the heads are
    summed in float32 and rounded once: capture leaves the logits as they are."""
    config = gpt2.GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=3, n_head=8, dtype="bfloat16")
    params = jax.tree.map(lambda a: a * 3, gpt2.init(jax.random.PRNGKey(seed), config))
    tokens = np.random.default_rng(seed).integers(0, 97, size=(4, 16)).astype(np.int32)
    names = tuple(f"blocks.{i}.attn.hook_result" for i in range(3))
    plain = np.asarray(gpt2.forward(params, tokens, config=config))
    logits, cache = gpt2.run_with_cache(params, tokens, config=config, names=names)
    np.testing.assert_allclose(np.asarray(logits), plain, rtol=0, atol=5e-3)
    # hook_result is still z @ W_O per head (before the sum and b_O), in the activations' dtype
    _, z = gpt2.run_with_cache(params, tokens, config=config, names=("blocks.1.attn.hook_z",))
    W_O = np.asarray(params["h_1"]["attn"]["c_proj"]["kernel"], np.float32).reshape(8, 8, 64)
    want = np.einsum("bphe,hed->bphd", np.asarray(z["blocks.1.attn.hook_z"], np.float32), W_O)
    got = cache["blocks.1.attn.hook_result"]
    assert got.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)


def test_lens_train_cli_refuses_ids_past_the_vocabulary_before_loading_the_model(tmp_path, monkeypatch, capsys):
    """The data's token ids were checked against the model's vocabulary by train(), after the whole model
    had been loaded and processed; now the tokenizer and the check come first. (A folder whose tokenizer
    gives more ids than its config's vocab_size of 60: 'w70' is id 71.)"""
    import shutil

    import jaxinterp.transformer as tr
    from jaxinterp import cli

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    model = tmp_path / "model"
    shutil.copytree(TINY_GPT2, model)
    hf = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**hf, "vocab_size": 60}))
    (tmp_path / "d.txt").write_text("w1 w2 w3\nw5 w70 w9\n")
    out = tmp_path / "out"
    assert cli.main(["lens", "train", "--model", str(model), "--layer", "1", "--data", str(tmp_path / "d.txt"),
                     "--out", str(out), "--steps", "1", "--seq-len", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "batches: expected token ids in [0, 60) (the model's vocabulary), got ids from 2 to 71" in err, err
    assert not out.exists()


@pytest.mark.parametrize("again,match", [
    (["--lr", "0.002"], r"lr: checkpoint 0\.001, this run 0\.002"),
    (["--kind", "shared"], r"lens_config: checkpoint \{.*'kind': 'lensa'\}, this run \{.*'kind': 'shared'\}"),
    (["--seed", "4"], r"seed: checkpoint 0, this run 4"),
])
def test_lens_train_cli_refuses_another_runs_checkpoints_before_loading_the_model(tmp_path, monkeypatch, capsys,
                                                                                  again, match):
    """`lens train --out` a folder holding another run's checkpoints (another rate, lens kind, seed) was
    refused by train(), after the whole model had been loaded and processed; now before."""
    import re

    import jaxinterp.transformer as tr
    from jaxinterp import cli

    (tmp_path / "d.txt").write_text("w1 w2 w3\nw5 w7 w9\nw4 w8\n")
    argv = ["lens", "train", "--model", str(TINY_GPT2), "--layer", "1", "--data", str(tmp_path / "d.txt"),
            "--out", str(tmp_path / "out"), "--steps", "1", "--batch-size", "2", "--seq-len", "8", "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    assert cli.main(argv + again) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and re.search(match, err), err
    monkeypatch.undo()
    assert cli.main(argv + ["--steps", "2"]) == 0  # the same run resumes
    assert "trained steps 1..2" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs,match", [
    (dict(bucket=8.0), r"^bucket and chunk_tokens: expected positive integers, got 8\.0, 2048$"),
    (dict(bucket=True), r"^bucket and chunk_tokens: expected positive integers, got True, 2048$"),
    (dict(chunk_tokens=0), r"^bucket and chunk_tokens: expected positive integers, got 8, 0$"),
    (dict(taus=2.0), r"^taus: expected a list of scales, got 2\.0$"),
    (dict(layers=1), r"^layers: expected a list of injection layers, got 1$"),
    (dict(layers=np.int64(1)), r"^layers: expected a list of injection layers, got np\.int64\(1\)$"),
])
def test_sweep_refuses_a_float_bucket_and_scalar_taus_or_layers(tiny_processed, kwargs, match):
    """bucket=8.0 failed in numpy's padding ('float' object cannot be interpreted as an integer), a single
    tau or layer in list() ('not iterable'): TypeErrors from inside the planning; True was a bucket of 1."""
    params, config = tiny_processed
    args = dict(layers=[1], taus=[2.0], answers=[3])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sweep(params, [[0, 5, 6, 7]], np.ones((1, 64), np.float32), args.pop("layers"), args.pop("taus"),
              config=config, **args)
    ok = sweep(params, [[0, 5, 6, 7]], np.ones((1, 64), np.float32), np.array([1]), np.array([2.0]), config=config,
               answers=[3], bucket=4)
    assert ok.p_after.shape == (1, 1, 1)


def test_inject_cli_refuses_a_layer_memory_longer_than_the_context_before_the_model(tmp_path, monkeypatch, capsys):
    """A 'layer' memory (run with BOS) longer than the context was refused by layer_encodings, after the
    model had been loaded; now before. An 'unembed' memory of any length is still taken (no forward)."""
    import jaxinterp.transformer as tr
    from jaxinterp import cli

    def refuse(*a, **k):
        raise AssertionError("reached the model before the input was checked")

    data = tmp_path / "p.csv"
    data.write_text(HEADER + f"w1 w2,w3 w4,{' '.join(['w5'] * 32)},w6,w7\n")
    argv = ["inject", "sweep", "--model", str(TINY_GPT2), "--data", str(data), "--layers", "1", "--taus", "2"]
    with monkeypatch.context() as m:
        m.setattr(tr, "load_gpt2", refuse)
        assert cli.main(argv + ["--out", str(tmp_path / "a"), "--memory-kind", "layer"]) == 2
    assert "memory of row 0: 33 tokens with BOS, the model takes at most n_positions=32" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert cli.main(argv + ["--out", str(tmp_path / "b")]) == 0
