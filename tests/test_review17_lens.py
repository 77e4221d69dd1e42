"""Review 17 (lens and injection support code): the inject CLI's memory and answer ids checked before
the model loads, the lens data fingerprinted once per run, the "mean" intervention over real tokens,
and percent increases past float64's range."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_GPT2  # the tiny GPT-2: 3 layers, 4 heads, d_model 64, vocab 97, 32 positions

HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"


def _small_vocab_model(tmp_path, vocab: int):
    """The tiny model's folder with config.json's vocab_size lowered to `vocab`: its tokenizer gives ids
    up to 96, past the model's vocabulary (weights that do not fit: loading it must not be reached)."""
    folder = tmp_path / "model"
    shutil.copytree(TINY_GPT2, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = vocab
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("kind", ["unembed", "embed", "layer"])
@pytest.mark.parametrize("row,want", [
    ("w1 w2,w3 w4,w95,w6,w7", r"memory of row 1: memory ids: ids must lie in [0, 90), got 96..96"),
    ("w1 w2,w3 w4,w5,w6,w94", r"answers: expected 2 token ids in [0, 90), got id 95 in row 1"),
])
def test_inject_cli_checks_memory_and_answer_ids_before_the_model(tmp_path, monkeypatch, capsys, kind, row, want):
    """A memory or answer whose ids lie outside the model's vocabulary (a tokenizer with more ids than the
    model) was refused by memory_vectors / the sweep's plan only after the weights were read (the
    "layer" memories' ids were checked before); now `inject sweep` refuses it before loading the model."""
    import jaxinterp.transformer as tr
    from jaxinterp import cli

    def refuse(*a, **k):
        raise AssertionError("reached the model before the input was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    model = _small_vocab_model(tmp_path, 90)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "w1 w2,w3 w4,w5,w6,w7\n" + row + "\n")
    assert cli.main(["inject", "sweep", "--model", str(model), "--data", str(data), "--out",
                     str(tmp_path / "out"), "--layers", "1", "--taus", "2", "--memory-kind", kind]) == 2
    assert want in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inject_cli_checks_baseline_words_before_the_model(tmp_path, monkeypatch, capsys):
    """The baseline's random words were drawn, tokenised and checked after the model had loaded."""
    import jaxinterp.transformer as tr
    from jaxinterp import cli

    def refuse(*a, **k):
        raise AssertionError("reached the model before the input was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    model = _small_vocab_model(tmp_path, 90)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "w1 w2,w3 w4,w5,w6,w7\n")
    words = tmp_path / "words.csv"
    words.write_text("Nouns\nw95\n")
    assert cli.main(["inject", "sweep", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "out"),
                     "--layers", "1", "--taus", "2", "--baseline-words", str(words)]) == 2
    assert "memory of row 0: memory ids: ids must lie in [0, 90), got 96..96" in capsys.readouterr().err


def test_check_answers_names_the_row():
    from jaxinterp.inject.sweep import check_answers
    from jaxinterp.transformer.weights import read_config

    config = read_config(TINY_GPT2)[1]
    assert check_answers([3, 96], 2, config).tolist() == [3, 96]
    with pytest.raises(ValueError, match=r"answers: expected 2 token ids in \[0, 97\), got id -1 in row 1"):
        check_answers([3, -1], 2, config)
    with pytest.raises(ValueError, match=r"answers: expected 3 token ids in \[0, 97\), got shape \[2\]"):
        check_answers([3, 4], 3, config)
    with pytest.raises(ValueError, match=r"got shape \[2\] of dtype float64"):
        check_answers([3.0, 4.0], 2, config)


def test_lens_train_cli_hashes_the_data_once_when_it_resumes(tmp_path, monkeypatch):
    """A resumed `lens train` fingerprinted its data (sha256 of every token id) in the CLI's check of the
    checkpoint's settings and again in train(); a Batches now hashes once."""
    import hashlib
    import types

    from jaxinterp import cli
    from jaxinterp.lens import data

    (tmp_path / "d.txt").write_text("\n".join(["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]))
    args = ["lens", "train", "--model", str(TINY_GPT2), "--layer", "1", "--data", str(tmp_path / "d.txt"),
            "--out", str(tmp_path / "run"), "--seq-len", "8", "--batch-size", "2", "--save-every", "1",
            "--no-progress"]
    assert cli.main(args + ["--steps", "1"]) == 0
    hashed = []

    def sha256(*a, **k):
        hashed.append(1)
        return hashlib.sha256(*a, **k)

    monkeypatch.setattr(data, "hashlib", types.SimpleNamespace(sha256=sha256))
    assert cli.main(args + ["--steps", "2"]) == 0  # resumes at step 1: the fingerprints checked
    assert hashed == [1]


def test_batches_fingerprint_is_the_hash_of_its_examples():
    import hashlib

    from jaxinterp.lens import data

    examples = [np.array([3, 5], np.int32), np.array([9], np.int32)]
    h = hashlib.sha256(np.asarray([2, 1], np.int64).tobytes())
    h.update(np.array([3, 5], np.int32).tobytes())
    h.update(np.array([9], np.int32).tobytes())
    b = data.Batches(examples, 2, 4, pad_id=0, seed=0)
    assert b.fingerprint() == b.fingerprint() == h.hexdigest()
    assert data.Batches(examples[::-1], 2, 4, pad_id=0, seed=0).fingerprint() != h.hexdigest()


@pytest.mark.parametrize("name", ["blocks.1.mlp.hook_post", "blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern",
                                  "hook_embed", "ln_final.hook_normalized"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_ablation_averages_the_real_tokens_only(tiny_processed, name, side):
    """The "mean" intervention averaged over every row of the batch, padded rows included: in a batch of
    a 4-token and an 8-token prompt, the short prompt's padding (what the model computes of a pad token)
    went into the mean at 4 of 8 positions. Only the rows real at a position count now, so where one row
    alone is real the mean is that row's own activation."""
    from jaxinterp.transformer import intervene, run_with_cache

    params, config = tiny_processed
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 97, (3, 8)).astype(np.int32)
    mask = np.ones((3, 8), np.int32)
    short = slice(4, 8) if side == "right" else slice(0, 4)
    mask[0, short] = 0
    tokens[0, short] = 0
    _, clean = run_with_cache(params, tokens, config=config, names=(name,), attention_mask=mask)
    _, abl = run_with_cache(params, tokens, config=config, names=(name,), attention_mask=mask,
                            interventions=[intervene(name, mode="mean")])
    x = np.asarray(clean[name], np.float64)
    m = mask.astype(bool)
    if name.endswith("pattern"):  # rows real at query and key; a row's own padded keys keep their values
        w = m[:, None, :, None] & m[:, None, None, :]
        mean = (x * w).sum(0, keepdims=True) / np.maximum(w.sum(0, keepdims=True), 1)
        want = np.where(m[:, None, None, :], np.where(w.any(0, keepdims=True), mean, x), x)
    else:
        w = m.reshape(m.shape + (1,) * (x.ndim - 2))
        want = np.broadcast_to((x * w).sum(0, keepdims=True) / w.sum(0, keepdims=True), x.shape)
    np.testing.assert_allclose(abl[name], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(abl[name], np.broadcast_to(x.mean(0, keepdims=True), x.shape), atol=1e-4)


def test_mean_ablation_without_padding_is_the_batch_mean(tiny_processed):
    from jaxinterp.transformer import intervene, run_with_cache

    params, config = tiny_processed
    tokens = np.random.default_rng(1).integers(1, 97, (3, 8)).astype(np.int32)
    name = "blocks.2.hook_resid_mid"
    _, clean = run_with_cache(params, tokens, config=config, names=(name,))
    for mask in (None, np.ones((3, 8), np.int32)):
        _, abl = run_with_cache(params, tokens, config=config, names=(name,), attention_mask=mask,
                                interventions=[intervene(name, mode="mean")])
        want = np.broadcast_to(np.asarray(clean[name]).mean(0, keepdims=True), clean[name].shape)
        np.testing.assert_allclose(abl[name], want, rtol=1e-6, atol=1e-6)


def test_mean_ablation_at_a_position_padded_in_every_row_keeps_its_values():
    import jax.numpy as jnp

    from jaxinterp.transformer import hooks

    x = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[0, 1, 1], [0, 1, 0]])
    iv = hooks.with_mask([hooks.intervene("blocks.0.hook_resid_pre", mode="mean")], mask)
    out = np.asarray(hooks.apply(iv, "hook_resid_pre", 0, x))
    np.testing.assert_array_equal(out[:, 0], np.asarray(x)[:, 0])  # no real row at position 0
    np.testing.assert_array_equal(out[:, 1], np.broadcast_to(np.asarray(x)[:, 1].mean(0), (2, 2)))
    np.testing.assert_array_equal(out[:, 2], np.broadcast_to(np.asarray(x)[0, 2], (2, 2)))


def _result_with_logs(logp_before, logp_after, taus):
    from jaxinterp.inject.sweep import SweepResult

    lb, la = np.asarray(logp_before, np.float64), np.asarray(logp_after, np.float64)
    return SweepResult(np.array([1]), np.asarray(taus, np.float64), np.exp(lb), np.exp(la), None, lb, la)


def test_percent_increase_past_float64_is_inf_without_a_warning_and_the_best_cell_is_the_largest():
    """A log p rise over ~709 overflowed expm1 with a RuntimeWarning, and every cell whose mean was inf
    tied: best["mean"] was the first of them (tau 1 here, whose rise is 850) instead of the largest
    (tau 2, 899). The overflow is the value (inf, no warning); cells are ranked by their statistic's log
    ratio, which each best cell also records (finite: summary.json writes the inf as null)."""
    import warnings

    from jaxinterp.inject import metrics

    res = _result_with_logs([-900.0, -2.0, -3.0], [[[-50.0, -1.0, -2.5], [-1.0, -2.0, -3.0]]], [1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pct = metrics.percent_increase(res)
        agg = metrics.aggregate(res, trim=0.1)
    assert np.isposinf(pct[0, :, 0]).all() and np.isfinite(pct[0, :, 1:]).all()
    assert np.isposinf(agg.mean).all()
    for stat in ("mean", "trimmed_mean"):  # trim 0.1 of 3 prompts keeps all three
        b = agg.best[stat]
        assert (b.layer, b.tau) == (1, 2.0) and np.isposinf(b.value)
        assert b.log_ratio == pytest.approx(np.logaddexp.reduce([899.0, 0.0, 0.0]) - np.log(3), rel=1e-12)
    b = agg.best["median"]  # finite: ranked as before, with its log ratio beside it
    assert (b.layer, b.tau) == (1, 1.0)
    assert b.value == pytest.approx(np.expm1(1.0) * 100) and b.log_ratio == pytest.approx(1.0)


@pytest.mark.parametrize("n", [4, 5])
def test_best_cells_log_ratio_is_the_log_of_its_statistic(n):
    from jaxinterp.inject import metrics

    rng = np.random.default_rng(n)
    lb = rng.normal(-5, 2, n)
    la = lb + rng.normal(0, 1, (1, 3, n))
    agg = metrics.aggregate(_result_with_logs(lb, la, [1.0, 2.0, 3.0]), trim=0.2)
    for stat in metrics.STATS:
        b = agg.best[stat]
        assert b.value == pytest.approx(np.max(getattr(agg, stat)))
        np.testing.assert_allclose(np.log1p(b.value / 100), b.log_ratio, rtol=1e-10, atol=1e-12)


def test_heatmap_limits_come_from_the_finite_cells():
    """A cell whose percent increase overflowed to inf made the heatmap's colour limits +-inf, which
    matplotlib replaced by +-0.1: every finite cell showed at full colour. The limits are now the
    largest finite magnitude; the inf cell shows as the end of the scale."""
    from jaxinterp.inject import metrics, outputs

    g = np.array([[np.inf, 5.0], [3.0, -2.0]])
    fig = outputs.heatmap(metrics.Aggregate(g, g.copy(), g.copy(), {}, 0.1), [0, 1], [1.0, 2.0])
    for ax in fig.axes[:3]:  # the three panels (their colour bars follow)
        im = ax.images[0]
        assert (im.norm.vmin, im.norm.vmax) == (-5.0, 5.0)
        rgba = im.to_rgba(im.get_array())
        assert not np.allclose(rgba[0, 1], rgba[1, 0])  # 5 and 3 are told apart
        np.testing.assert_allclose(rgba[0, 0], im.to_rgba(np.array([[5.0]]))[0, 0])
    nan = np.full((2, 2), np.nan)
    fig = outputs.heatmap(metrics.Aggregate(nan, nan, nan, {}, 0.1), [0, 1], [1.0, 2.0])
    assert fig.axes[0].images[0].norm.vmax == 1e-9


@pytest.mark.parametrize("body,line", [
    ("a,b,c,\"Paris\ne,f,g,Rome\nh,i,j,Oslo\n", 2),  # the answer took the next two rows: one prompt, not three
    ("a,b,c,d\n\"e,f,g,h\ni,j,k,l\n", 3),
    ("a,b,c,d\r\n\r\ne,f,g,\"h\r\n", 4),
])
def test_prompt_csv_with_a_quote_never_closed_is_refused(tmp_path, body, line):
    """csv reads an opened quote to the end of the file: a cell `"Paris` took every later row into the
    answer, and the prompt set came back a row long, silently. It is now a ValueError naming the line."""
    from jaxinterp.inject import data

    path = tmp_path / "p.csv"
    path.write_bytes((HEADER + body).encode())
    with pytest.raises(ValueError, match=rf"p.csv: line {line}: a quoted cell is never closed"):
        data.load_prompts(path)


def test_prompt_csv_quotes_that_close_still_read():
    """Quoted commas, doubled quotes, quoted line breaks in the last row and pandas' lenient '"x"y' read
    as before."""
    import tempfile
    from pathlib import Path

    from jaxinterp.inject import data

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.csv"
        path.write_text(HEADER + '"a, x",b,"say ""hi""",e,"x"y\nc,d,"e",f,"Ro\nme"\n\n')
        p = data.load_prompts(path)
    assert p.explicit == ["a, x", "c"] and p.memory == ['say "hi"', "e"] and p.answer == ["xy", "Ro\nme"]


def test_torch_lens_with_linears_under_two_prefixes_is_refused():
    """A state dict holding two lenses' `linears` (a ModuleList of lenses, an EMA copy) loaded as one lens
    whose every head took the tensors of whichever name came last, a mix of the two, silently."""
    from jaxinterp.lens import io

    rng = np.random.default_rng(0)
    one = {f"linears.{h}.{k}": rng.normal(size=(5, 3) if k == "weight" else (5,)).astype(np.float32)
           for h in range(2) for k in ("weight", "bias")}
    two = {f"lenses.{i}.{k}": v + i for i in range(2) for k, v in one.items()}
    with pytest.raises(ValueError, match=r"lens: expected the linears of one lens, got them under 2 prefixes"):
        io.from_torch_state_dict(two, layer=0)
    # one lens under any one prefix (Lightning's attn_lens.) still reads: W [H, D, V] from Linear's [V, D]
    for state in (one, {f"attn_lens.{k}": v for k, v in one.items()}):
        lens, cfg = io.from_torch_state_dict({**state, "model.wte.weight": np.zeros((5, 3))}, layer=1)
        assert (cfg.n_head, cfg.d_model, cfg.vocab_size, cfg.layer) == (2, 3, 5, 1)
        np.testing.assert_array_equal(lens["W"][1], one["linears.1.weight"].T)
        np.testing.assert_array_equal(lens["b"][0], one["linears.0.bias"])


@pytest.mark.parametrize("kw,match", [
    (dict(mode="mean", value=np.zeros(64, np.float32)),
     r"mode 'mean' at 'blocks.1.hook_attn_out' takes no value \(to write a given vector, use mode 'replace'\), "
     r"got a value of shape \[64\]"),
    (dict(mode="zero", value=np.zeros(64, np.float32)), r"mode 'zero' .* takes no value"),
    (dict(mode="replace", value=np.zeros(64, np.float32), scale=2.0),
     r"scale at 'blocks.1.hook_attn_out': mode 'replace' takes no scale \(only 'add' scales its value\), got 2.0"),
    (dict(mode="zero", scale=0.5), r"mode 'zero' takes no scale"),
])
def test_interventions_refuse_what_their_mode_ignores(kw, match):
    """intervene() took a value for "mean" and "zero" and a scale for every mode and ignored them: a
    data-set mean passed to "mean" ablated with the batch's mean, a scale of 2 wrote "replace"'s value
    as given. Both are now refused; the defaults (no value, scale 1) pass."""
    from jaxinterp.transformer import intervene

    with pytest.raises(ValueError, match=match):
        intervene("blocks.1.hook_attn_out", **kw)
    intervene("blocks.1.hook_attn_out", mode="mean", scale=1)
    intervene("blocks.1.hook_attn_out", np.zeros(64, np.float32), mode="replace", scale=np.float32(1.0))
    intervene("blocks.1.hook_attn_out", np.zeros(64, np.float32), scale=2.0)  # "add" scales


@pytest.mark.parametrize("name", ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores",
                                  "blocks.1.hook_resid_pre", "blocks.0.attn.hook_v"])
def test_mean_ablation_does_not_read_the_padding(tiny_processed, name):
    """What the pad tokens of a left-padded row are must not change any real position's logits. The
    mean over rows put other rows' pad activations into it and, at attention patterns, gave a real
    query of the padded row the other rows' attention to keys it pads (so it read its pad tokens)."""
    from jaxinterp.transformer import forward, intervene

    params, config = tiny_processed
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 97, (3, 8)).astype(np.int32)
    mask = np.ones((3, 8), np.int32)
    mask[0, :3] = mask[2, :5] = 0
    iv = [intervene(name, mode="mean")]
    logits = [np.asarray(forward(params, np.where(mask > 0, tokens, pad), config=config, attention_mask=mask,
                                 interventions=iv)) for pad in (0, 50)]
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[1][real], logits[0][real], rtol=1e-5, atol=1e-5)
    assert np.isfinite(logits[0][real]).all()


@pytest.mark.parametrize("kw,match", [
    (dict(limit=0), r"limit: expected a positive number of words \(or None for all\), got 0"),
    (dict(limit=-1), r"limit: expected a positive number of words \(or None for all\), got -1"),
    (dict(limit=2.5), r"limit: .* got 2.5"),
    (dict(n=-1), r"n: expected a non-negative number of words, got -1"),
])
def test_random_words_refuses_a_limit_or_count_out_of_range(kw, match):
    """random_words(limit=0) drew from the whole list and limit=-1 from all but its last word (a slice),
    silently; a negative n was numpy's 'negative dimensions' error."""
    from jaxinterp.inject import data

    words = {"Nouns": ["w1", "w2", "w3"]}
    with pytest.raises(ValueError, match=match):
        data.random_words(words, "Nouns", **{"n": 4, **kw})
    assert set(data.random_words(words, "Nouns", 50, limit=1)) == {"w1"}
    assert set(data.random_words(words, "Nouns", 200, limit=None)) == {"w1", "w2", "w3"}
    assert data.random_words(words, "Nouns", 0) == []
