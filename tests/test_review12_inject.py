"""Review 12 findings on memory injection (jaxinterp/inject), each failing on the code before its fix."""

import re

import pytest

from jaxinterp.inject import data as dt

from conftest import TINY_GPT2

HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"


def test_limit_counts_data_rows_not_blank_lines(tmp_path):
    """`limit` sliced the file's records before blank lines were skipped: --limit 2 on a file with a
    blank line between its rows gave one prompt."""
    p = tmp_path / "p.csv"
    p.write_text(HEADER + "w1,w2,w3,w4,w5\n\nw6,w7,w8,w9,w10\nw11,w12,w13,w14,w15\n")
    ps = dt.load_prompts(p, limit=2)
    assert ps.answer == ["w5", "w10"]


def test_line_numbers_count_lines_of_quoted_cells(tmp_path):
    """The error named the record number as a line: a quoted cell spanning two lines made every later
    line number one short."""
    p = tmp_path / "p.csv"
    p.write_text(HEADER + 'w1,"w2\nw2b",w3,w4,w5\nw6,w7,,w9,w10\n')
    with pytest.raises(ValueError, match="^" + re.escape(f"{p}: line 4: empty cell in column 'explicit_entity'") + "$"):
        dt.load_prompts(p)


def test_unquoted_comma_is_refused_not_shifted(tmp_path):
    """A row with more cells than the header (an unquoted comma in a sentence) was read by position:
    its cells shifted into the wrong columns and the sweep ran on garbage (pandas, the reference's
    reader, refuses such a row)."""
    p = tmp_path / "p.csv"
    p.write_text(HEADER + "w1,w2,w3,w4,w5\nw6,w7, w8,w9,w10,w11\n")
    comma = " (a comma inside a cell that is not quoted?)"
    with pytest.raises(ValueError, match="^" + re.escape(f"{p}: line 3: 6 cells, the header has 5{comma}") + "$"):
        dt.load_prompts(p)
    p.write_text(HEADER + "w1,w2,w3,w4,w5,,\n")  # trailing empty cells are harmless
    assert dt.load_prompts(p).answer == ["w5"]
    w = tmp_path / "words.csv"
    w.write_text("Nouns,Verbs\ntime,be,extra\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{w}: line 2: 3 cells, the header has 2{comma}") + "$"):
        dt.load_top_words(w)


def test_non_utf8_file_is_named(tmp_path):
    """A Latin-1 file raised UnicodeDecodeError ("'utf-8' codec can't decode byte 0xe1 in position 82"),
    naming neither the file nor the line."""
    p = tmp_path / "latin.csv"
    p.write_bytes((HEADER + "w1,w2,w3,w4,w5\nw1,w2,Dus\xe1n,w4,w5\n").encode("latin-1"))
    message = f"{p}: line 3: not UTF-8 text (byte 0xe1 at offset 97); save the file as UTF-8"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        dt.load_prompts(p)


def test_head_outputs_compile_once_per_bucket_and_match_unpadded(tiny_processed):
    """head_outputs ran each prompt at its own shape [1, len]: reading the heads of a data set's
    prompts compiled GPT-2 once per distinct length (5 compilations for lengths 4..8). Now prompts are
    left-padded to buckets of 8 with a mask, and the heads equal the unpadded run's."""
    import jax.numpy as jnp
    import numpy as np

    from jaxinterp.inject import heads
    from jaxinterp.transformer import gpt2

    params, config = tiny_processed
    names = tuple(f"blocks.{i}.attn.hook_result" for i in range(config.n_layer))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, size=n) for n in range(3, 9)]
    before = gpt2._run_jit()._cache_size()
    got = {len(tok): [heads.head_outputs(params, tok, config=config, position=pos) for pos in (-1, 1)] for tok in prompts}
    assert gpt2._run_jit()._cache_size() - before <= 1  # lengths 3..8 share bucket 8
    for tok in prompts:
        cache = gpt2.run_with_cache(params, jnp.asarray(tok[None], jnp.int32), config=config, names=names)[1]
        for g, pos in zip(got[len(tok)], (-1, 1)):
            want = np.stack([np.asarray(cache[n][0, pos]) for n in names])
            np.testing.assert_allclose(np.asarray(g), want, rtol=0, atol=1e-7)  # measured 2.8e-9 (was 1e-5/1e-6)
    with pytest.raises(ValueError, match=r"^tokens: 33 tokens, the model takes at most n_positions=32$"):
        heads.head_outputs(params, np.zeros(33, int), config=config)
    with pytest.raises(ValueError, match=r"^k: expected an int in 1\.\.97, got 2\.5$"):
        heads.head_top_tokens(params, prompts[0], config=config, k=2.5)


CLI_ROWS = "w1 w2 w3,w4 w5 w6 w7 w8,w9 w10,w4 w5 w6,w11\nw12 w13,w14 w15 w16,w17,w14 w15,w18\n"


@pytest.mark.parametrize("extra,words,match", [
    # the word list's Nouns column is empty: refused only after the main sweep had run
    (["--baseline-type", "Nouns"], "Nouns,Verbs\n,be\n,have\n", "word_type 'Nouns': the list is empty"),
    # a NaN tau: refused by the sweep, after the model was loaded and the memories computed
    (["--taus", "1", "nan"], None, r"--taus: expected finite numbers, got \[1\.0, nan\]"),
    (["--layers", "-1"], None, r"--layers: expected 0\.\.2 for this 3-layer model, got -1"),
])
def test_cli_input_errors_come_before_the_model_and_the_sweep(tmp_path, monkeypatch, capsys, extra, words, match):
    import jaxinterp.transformer as tr
    from jaxinterp import cli
    from jaxinterp.inject import sweep as sw

    def refuse(*a, **k):
        raise AssertionError("reached the model or the sweep before the input was checked")

    monkeypatch.setattr(tr, "load_gpt2", refuse)
    monkeypatch.setattr(sw, "sweep", refuse)
    data = tmp_path / "p.csv"
    data.write_text(HEADER + CLI_ROWS)
    argv = ["inject", "sweep", "--model", str(TINY_GPT2), "--data", str(data), "--out", str(tmp_path / "out"),
            *extra]
    if words is not None:
        (tmp_path / "w.csv").write_text(words)
        argv += ["--baseline-words", str(tmp_path / "w.csv")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch("jaxinterp inject: error: " + match + "\n", err), err  # the whole stderr
    assert not (tmp_path / "out").exists()
