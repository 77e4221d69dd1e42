"""Review 17: memory injection (percent increase from log-probabilities, the sweep CLI's config.json
and length checks) and Attention Lens (the training data's ids checked once)."""

import numpy as np
import pytest

from conftest import TINY_GPT2  # the tiny GPT-2: 3 layers, 4 heads, d_model 64, vocab 97, 32 positions


def _tiny_answer_made_unlikely(tiny_processed, answer: int, shift: float):
    """The tiny processed model with lm_head's bias of `answer` lowered by `shift`: log p(answer) about
    -shift, far below float32's smallest probability (1.4e-45 = exp(-103))."""
    params, config = tiny_processed
    bias = np.array(params["lm_head"]["bias"])
    bias[answer] -= shift
    return {**params, "lm_head": {**params["lm_head"], "bias": bias}}, config


def test_percent_increase_of_probabilities_that_underflow_comes_from_their_logs(tiny_processed):
    """p(answer) below float32's range was 0 before and after injection, and percent_increase read
    (0 - tiny) / tiny as -100% (p_before floored at the smallest normal number); the sweep now keeps
    log p(answer), and the percent increase is expm1(logp_after - logp_before) * 100."""
    import jax

    from jaxinterp.inject.memory import inject_logits, memory_vectors
    from jaxinterp.inject.metrics import aggregate, percent_increase
    from jaxinterp.inject.sweep import sweep
    from jaxinterp.transformer import forward

    answer = 5
    params, config = _tiny_answer_made_unlikely(tiny_processed, answer, 300.0)
    prompts = [np.array([0, 7, 9, 11], np.int32), np.array([0, 3, 4, 8, 12, 2], np.int32)]
    mems = memory_vectors(params, [[5, 6], [5]], config=config)
    res = sweep(params, prompts, mems, [0, 2], [1.0, 4.0], config=config, answers=[answer, answer])
    assert np.all(res.p_before == 0) and np.all(res.p_after == 0)  # float32 cannot hold them
    pct = percent_increase(res)

    def logp(logits):
        return float(jax.nn.log_softmax(np.asarray(logits, np.float64)[0, -1])[answer])

    for i, tok in enumerate(prompts):
        before = logp(forward(params, tok[None], config=config))
        for li, L in enumerate(res.layers):
            for ti, tau in enumerate(res.taus):
                after = logp(inject_logits(params, tok[None], mems[i], config=config, layer=int(L), tau=float(tau)))
                assert after - before > 0.1  # the memory holds the answer: +10% and more, not -100%
                # log(1 + pct/100) is the log ratio; a float32 log p near -300 is 3e-5 apart from the next
                assert np.log1p(pct[li, ti, i] / 100) == pytest.approx(after - before, abs=1e-4), (L, tau, i)
                assert res.logp_after[li, ti, i] == pytest.approx(after, abs=1e-4)
        assert res.logp_before[i] == pytest.approx(before, abs=1e-4)
    assert aggregate(res).best["median"].value == pytest.approx(np.median(pct[:, :, :], -1).max())


def test_sweep_probabilities_are_exp_of_its_log_probabilities(tiny_processed):
    """p_before and p_after are exp of the logs the sweep returns, in one step or in resumable steps."""
    from jaxinterp.inject.memory import memory_vectors
    from jaxinterp.inject.metrics import percent_increase
    from jaxinterp.inject.sweep import sweep

    params, config = tiny_processed
    prompts = [np.array([0, 7, 9, 11], np.int32), np.array([0, 3, 4, 8, 12, 2, 40, 41, 42], np.int32)]
    mems = memory_vectors(params, [[5, 6], [9]], config=config)
    one = sweep(params, prompts, mems, None, [1.0, 3.0], config=config, answers=[5, 9], explicit=prompts[::-1])
    steps = sweep(params, prompts, mems, None, [1.0, 3.0], config=config, answers=[5, 9], explicit=prompts[::-1],
                  progress=True)
    for r in (one, steps):
        np.testing.assert_array_equal(r.p_before, np.exp(r.logp_before))
        np.testing.assert_array_equal(r.p_after, np.exp(r.logp_after))
        assert r.p_after.dtype == r.logp_after.dtype == np.float32
        ratio = (r.p_after.astype(np.float64) - r.p_before) / r.p_before * 100
        np.testing.assert_allclose(percent_increase(r), ratio, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(steps.logp_after, one.logp_after, rtol=1e-6)
    np.testing.assert_allclose(steps.p_explicit, one.p_explicit, rtol=1e-6)


def test_percent_increase_of_a_result_with_log_probabilities():
    """A SweepResult with log-probabilities: its ratios come from them, whatever p (0 here) says."""
    from jaxinterp.inject.metrics import percent_increase
    from jaxinterp.inject.sweep import SweepResult

    res = SweepResult(np.array([0]), np.array([1.0], np.float32), np.zeros(2, np.float32),
                      np.zeros((1, 1, 2), np.float32), None, logp_before=np.array([-200.0, -150.0], np.float32),
                      logp_after=np.array([[[-200.0 + np.log(3.0), -150.0 - np.log(2.0)]]], np.float32))
    np.testing.assert_allclose(percent_increase(res)[0, 0], [200.0, -50.0], rtol=1e-4)


HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"


@pytest.mark.parametrize("kind", ["unembed", "layer"])
def test_inject_cli_reads_config_json_once_before_the_model(tmp_path, monkeypatch, kind):
    """`inject sweep` read the model's config.json twice before loading it (n_layer, then n_positions,
    each with its own reader and a copy of the sweep's length messages), and load_gpt2 a third time;
    now read_config reads it once for every check before the weights (load_gpt2 reads its own)."""
    from pathlib import Path

    import jaxinterp.transformer as tr
    from jaxinterp import cli

    reads, at_load = [], []
    real_read, real_load = Path.read_text, tr.load_gpt2

    def read_text(self, *a, **k):
        if self.name == "config.json":
            reads.append(self)
        return real_read(self, *a, **k)

    def load(*a, **k):
        at_load.append(len(reads))
        return real_load(*a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(tr, "load_gpt2", load)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "w1 w2,w3 w4,w5,w6,w7\n" + "w8 w9 w10,w11,w12 w13,w14,w15\n")
    assert cli.main(["inject", "sweep", "--model", str(TINY_GPT2), "--data", str(data), "--out",
                     str(tmp_path / "out"), "--layers", "1", "--taus", "2", "--memory-kind", kind]) == 0
    assert at_load == [1], (at_load, reads)
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.parametrize("what,row", [("prompts", "w1 w2,{long},w5,w6,w7"), ("explicit", "{long},w3 w4,w5,w6,w7")])
def test_inject_cli_length_check_is_the_sweeps(tmp_path, monkeypatch, capsys, what, row):
    """The CLI's refusal of a long prompt is sweep.check_tokens' own (one message, not a copy), before
    the model is loaded."""
    import jaxinterp.transformer as tr
    from jaxinterp import cli
    from jaxinterp.inject import sweep
    from jaxinterp.transformer.weights import read_config

    def refuse(*a, **k):
        raise AssertionError("reached the model before the input was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    long = " ".join(["w9"] * 40)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "w1 w2,w3 w4,w5,w6,w7\n" + row.format(long=long) + "\n")
    with pytest.raises(ValueError) as want:  # what the sweep itself says of BOS + 40 words
        sweep.check_tokens([np.zeros(3, np.int32), np.zeros(41, np.int32)], read_config(TINY_GPT2)[1], what)
    assert cli.main(["inject", "sweep", "--model", str(TINY_GPT2), "--data", str(data), "--out",
                     str(tmp_path / "out")]) == 2
    assert str(want.value) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lens_train_cli_concatenates_the_token_ids_once(tmp_path, monkeypatch):
    """`lens train` checked the data's ids against the vocabulary before loading the model
    (train.check_ids) and train() checked them again, each concatenating every token id of the data;
    the id range is now found once per Batches (Batches.id_range) and both checks read it."""
    from jaxinterp import cli
    from jaxinterp.lens import data

    made, joined = [], []
    real_init, real_concat = data.Batches.__init__, np.concatenate

    def init(self, examples, *a, **k):
        made.append(examples)
        real_init(self, examples, *a, **k)

    def concat(arrays, *a, **k):
        arrays = list(arrays) if isinstance(arrays, (list, tuple)) else arrays
        if made and isinstance(arrays, list) and len(arrays) == len(made[0]) \
                and all(np.size(x) == np.size(e) for x, e in zip(arrays, made[0])):
            joined.append(1)
        return real_concat(arrays, *a, **k)

    monkeypatch.setattr(data.Batches, "__init__", init)
    monkeypatch.setattr(np, "concatenate", concat)
    (tmp_path / "d.txt").write_text("\n".join(["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]))
    assert cli.main(["lens", "train", "--model", str(TINY_GPT2), "--layer", "1", "--data", str(tmp_path / "d.txt"),
                     "--out", str(tmp_path / "run"), "--steps", "1", "--seq-len", "8", "--batch-size", "2",
                     "--no-progress"]) == 0
    assert len(made) == 1 and len(made[0]) == 4
    assert joined == [1]
    assert (tmp_path / "run" / "lens_layer1.safetensors").is_file()


@pytest.mark.parametrize("examples,want", [([[3, 5], [9]], (3, 9)), ([[4], []], (4, 4)), ([[]], None)])
def test_batches_id_range(examples, want):
    from jaxinterp.lens import data, train
    from jaxinterp.transformer import GPT2Config

    b = data.Batches([np.asarray(e, np.int32) for e in examples], 1, 4)
    assert b.id_range == want
    train.check_ids(b, GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"expected token ids in \[0, 9\) .* got ids from 3 to 9"):
        train.check_ids(data.Batches([np.asarray([3, 9], np.int32)], 1, 4), GPT2Config(vocab_size=9, n_positions=8,
                                                                                    n_embd=8, n_layer=1, n_head=2))


def test_sweep_result_taus_are_the_taus_given(tiny_processed, tmp_path):
    """A float32 sweep returned its taus rounded to float32: tau 0.1 came back as 0.10000000149011612,
    in SweepResult.taus, the best cells and summary.json, so `best.tau in taus` failed for the taus
    asked for. The result now carries the taus as given (the sweep applies their float32 values)."""
    import json

    import jax

    from jaxinterp.inject import outputs
    from jaxinterp.inject.data import PromptSet
    from jaxinterp.inject.memory import inject_logits, memory_vectors
    from jaxinterp.inject.metrics import aggregate
    from jaxinterp.inject.sweep import sweep

    params, config = tiny_processed
    taus = [0.1, 0.3, 2.7]
    prompts = [np.array([0, 7, 9, 11], np.int32), np.array([0, 3, 4, 8, 12, 2], np.int32)]
    mems = memory_vectors(params, [[5, 6], [9]], config=config)
    res = sweep(params, prompts, mems, [1], taus, config=config, answers=[5, 9])
    assert res.taus.tolist() == taus and res.p_after.dtype == np.float32
    agg = aggregate(res)
    assert all(b.tau in taus for b in agg.best.values())
    # the numbers are those of the float32 tau the model is run with
    ref = inject_logits(params, prompts[1][None], mems[1], config=config, layer=1, tau=np.float32(0.3))
    assert res.p_after[0, 1, 1] == pytest.approx(float(jax.nn.softmax(ref[0, -1])[9]), rel=2e-5)
    data = PromptSet(["e0", "e1"], ["o0", "o1"], ["m0", "m1"], ["a0", "a1"], ["", ""], "src")
    summary = json.loads(outputs.write(tmp_path, data, res, agg, {})["summary"].read_text())
    assert summary["taus"] == taus and summary["percent_increase"]["best"]["median"]["tau"] in taus
    with pytest.raises(ValueError, match="taus: expected a non-empty list of finite numbers"):
        sweep(params, prompts, mems, [1], [1e39], config=config, answers=[5, 9])  # inf in float32


@pytest.mark.parametrize("tau", ["2", True, None, [1.0, "x"]])
def test_taus_that_are_not_numbers_are_refused(tiny_processed, tau):
    """The sweep read taus=["2"] as 2.0 and [True] as 1.0 (numpy's conversion); injection() let "2"
    through to a TypeError inside the intervention. Both now refuse what is not a number."""
    from jaxinterp.inject.memory import injection, memory_vectors
    from jaxinterp.inject.sweep import sweep

    params, config = tiny_processed
    mems = memory_vectors(params, [[5, 6]], config=config)
    taus = tau if isinstance(tau, list) else [tau]
    with pytest.raises(ValueError, match=r"^taus: expected a non-empty list of finite numbers, got "):
        sweep(params, [np.array([0, 7, 9], np.int32)], mems, [1], taus, config=config, answers=[5])
    if not isinstance(tau, list):
        with pytest.raises(ValueError, match=r"^tau: expected a finite number, got "):
            injection(mems[0], 1, tau)


def test_batches_draw_each_epochs_order_once(monkeypatch):
    """Batches.batch drew the seeded permutation of every example again for each batch (27 ms a batch
    of 8 for a million examples, more than the batch); it is now drawn once per epoch, and the batches,
    a pure function of (seed, index), are the same, in any order of calls (a resumed run)."""
    from jaxinterp.lens import data

    rng = np.random.default_rng(0)
    examples = [rng.integers(0, 50, rng.integers(1, 6)).astype(np.int32) for _ in range(11)]

    def want(index, batch_size=3):  # the definition: batch i of epoch e is perm_e[i*B:(i+1)*B]
        epoch, i = divmod(index, len(examples) // batch_size)
        order = np.random.default_rng([5, epoch]).permutation(len(examples))[i * batch_size:(i + 1) * batch_size]
        return [examples[j] for j in order]

    draws, real = [], np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda *a, **k: draws.append(a) or real(*a, **k))
    b = data.Batches(examples, 3, 8, pad_id=99, seed=5)
    got = [b.batch(i) for i in range(9)]  # 3 batches an epoch: epochs 0, 1, 2
    assert draws == [([5, 0],), ([5, 1],), ([5, 2],)]
    assert b.batch(4).tokens.tolist() == got[4].tokens.tolist()  # back to epoch 1: drawn again, same batch
    for i, batch in enumerate(got):
        for row, ex in zip(range(3), want(i)):
            assert batch.tokens[row, :len(ex)].tolist() == ex.tolist() and batch.mask[row].sum() == len(ex)
            assert (batch.tokens[row, len(ex):] == 99).all()
