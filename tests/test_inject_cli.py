"""`jaxinterp inject sweep` end to end on the tiny fixture model, and its input errors."""

import csv
import json
from pathlib import Path

import pytest

from jaxinterp import cli
from jaxinterp.inject import cli as inject_cli

FIX = Path(__file__).parent / "fixtures"
MODEL = str(FIX / "tiny_gpt2")
HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
# Sentences made of the tiny tokenizer's vocabulary words (w0..w95).
ROWS = ["w1 w2 w3,w4 w5 w6 w7 w8,w9 w10,w4 w5 w6,w11\n",
        "w12 w13,w14 w15 w16,w17,w14 w15,w18\n",
        "w20 w21 w22 w23,w24 w25 w26 w27 w28 w29 w30 w31 w32,w33 w34 w35,w24 w25,w36\n"]

LONG = " ".join(f"w{i % 90}" for i in range(40))  # 40 words + BOS: longer than the 32 positions


def _run(*argv):
    return cli.main(["inject", "sweep", *map(str, argv)])


def _check_rows_against_single_runs(rows):
    """Each per_prompt.csv row (written to 6 significant digits) against one run of the model for its
    prompt, layer and tau: p_before and p_explicit from forward on BOS + the sentence, p_after from
    inject_logits with the explicit entity's unembed memory (this test checked only that they were
    probabilities, so rows written under another layer, tau or prompt passed)."""
    import jax
    import numpy as np

    from jaxinterp.inject import data as dt
    from jaxinterp.inject.memory import inject_logits, memory_vector
    from jaxinterp.transformer import forward, load_gpt2, load_tokenizer

    params, config = load_gpt2(MODEL, process_weights=True)
    tok = load_tokenizer(MODEL)
    cells = [line.rstrip("\n").split(",") for line in ROWS]

    def ids(text):
        return np.concatenate([[dt.bos_id(tok)], dt.token_ids(tok, text)]).astype(np.int32)[None]

    def p(logits, answer):
        return float(jax.nn.softmax(logits[0, -1])[dt.token_ids(tok, " " + answer)[0]])

    for r in rows:
        explicit, obscure, entity, _, answer = cells[int(r["row"])]
        assert (r["obscure_sentence"], r["memory"], r["answer"]) == (obscure, entity, answer)
        prompt = ids(obscure)
        memory = memory_vector(params, dt.token_ids(tok, entity), config=config)
        after = inject_logits(params, prompt, memory, config=config, layer=int(r["layer"]), tau=float(r["tau"]))
        for column, want in (("p_before", p(forward(params, prompt, config=config), answer)),
                             ("p_explicit", p(forward(params, ids(explicit), config=config), answer)),
                             ("p_after", p(after, answer))):
            assert float(r[column]) == pytest.approx(want, rel=1e-5, abs=0), (r, column, want)


def test_sweep_end_to_end(tmp_path):
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "".join(ROWS))
    words = tmp_path / "words.csv"
    words.write_text("\ufeffTop 5000 Words,Nouns\nw40,w41\nw42,w43\nw44,\n")
    out = tmp_path / "out"
    assert _run("--model", MODEL, "--data", data, "--out", out, "--layers", 0, 2, "--taus", 1, 3,
                "--baseline-words", words, "--baseline-type", "Nouns", "--seed", 1) == 0
    assert {p.name for p in out.iterdir()} == {"per_prompt.csv", "prompts.csv", "summary.json", "heatmap.png"}
    rows = list(csv.DictReader(open(out / "per_prompt.csv")))
    assert len(rows) == 3 * 2 * 2 and {r["layer"] for r in rows} == {"0", "2"}
    assert all(0 <= float(r["p_after"]) <= 1 and float(r["p_explicit"]) > 0 for r in rows)
    _check_rows_against_single_runs(rows)
    assert len(list(csv.DictReader(open(out / "prompts.csv")))) == 3
    s = json.loads((out / "summary.json").read_text())
    assert s["layers"] == [0, 2] and s["taus"] == [1.0, 3.0] and s["n_prompts"] == 3
    pct = s["percent_increase"]
    assert len(pct["median"]) == 2 and len(pct["trimmed_mean"][0]) == 2
    assert pct["best"]["mean"]["layer"] in (0, 2)
    assert s["baseline"]["word_type"] == "Nouns" and set(s["baseline"]["words"]) <= {"w41", "w43"}
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra,text,match", [
    (["--layers", "3"], HEADER + ROWS[0], "--layers: expected 0..2 for this 3-layer model, got 3"),
    ([], HEADER.replace("answer", "reply") + ROWS[0], "missing column 'answer'"),
    ([], HEADER + "w1,w2,,w4,w5\n", "line 2: empty cell in column 'explicit_entity'"),
    ([], HEADER + "w1,w2,w3,w4, \n", "line 2: empty cell in column 'answer'"),
    ([], HEADER + f"w1,{LONG},w3,w4,w5\n", "prompts: row 0: 41 tokens, the model takes at most 32"),
    (["--skip-long"], HEADER + f"w1,{LONG},w3,w4,w5\n", "--skip-long: every row is longer than the model's 32"),
])
def test_errors_exit_2_and_write_nothing(tmp_path, capsys, extra, text, match):
    data = tmp_path / "p.csv"
    data.write_text(text)
    out = tmp_path / "out"
    assert _run("--model", MODEL, "--data", data, "--out", out, *extra) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("option,value", [("--limit", "0"), ("--bucket", "-8"), ("--limit", "many")])
def test_options_out_of_range_are_usage_errors(tmp_path, capsys, option, value):
    data = tmp_path / "p.csv"
    data.write_text(HEADER + ROWS[0])
    with pytest.raises(SystemExit) as e:
        _run("--model", MODEL, "--data", data, "--out", tmp_path / "out", option, value)
    assert e.value.code == 2
    assert f"argument {option}: expected a positive integer, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_default(monkeypatch, tmp_path):
    from jaxinterp.transformer import builtin

    monkeypatch.setattr(builtin, "TOY_MODEL", tmp_path / "absent")
    with pytest.raises(ValueError, match="--model: expected a local Hugging Face GPT-2 folder"):
        inject_cli.resolve_model(None)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(builtin, "TOY_MODEL", tmp_path)
    model, note = inject_cli.resolve_model(None)
    assert model == str(tmp_path) and "shipped toy model" in note
    assert inject_cli.resolve_model("gpt2") == ("gpt2", None)


def test_skip_long_drops_and_counts_the_long_rows(tmp_path, capsys):
    data = tmp_path / "p.csv"
    data.write_text(HEADER + ROWS[0] + f"w1,{LONG},w3,w4,w5\n" + ROWS[1])
    out = tmp_path / "out"
    assert _run("--model", MODEL, "--data", data, "--out", out, "--layers", 1, "--taus", 2, "--skip-long") == 0
    assert "--skip-long: dropped 1 of 3 rows longer than 32 tokens" in capsys.readouterr().out
    kept = list(csv.DictReader(open(out / "prompts.csv")))
    assert [r["obscure_sentence"] for r in kept] == ["w4 w5 w6 w7 w8", "w14 w15 w16"]
    assert json.loads((out / "summary.json").read_text())["n_prompts"] == 2


def test_an_interrupted_sweep_resumes_from_its_output_folder(tmp_path, sweep_steps, capsys):
    """The sweep keeps its finished layers in the output folder: run again after an interruption, it
    computes only the rest, writes what an uninterrupted run writes, and removes its state."""
    data = tmp_path / "p.csv"
    data.write_text(HEADER + "".join(ROWS))
    argv = ["--model", MODEL, "--data", data, "--layers", 0, 1, 2, "--taus", 1, 3]
    assert _run(*argv, "--out", tmp_path / "whole") == 0
    out = tmp_path / "out"
    sweep_steps(stop_after=2)  # buckets 8 and 16 x 3 layers = 6 steps; interrupted after 2
    assert _run(*argv, "--out", out) == 130  # the CLI's Ctrl-C: one line, exit 130 (68c4165)
    assert (out / inject_cli.STATE_FILES[0]).is_file()
    calls = sweep_steps()
    assert _run(*argv, "--out", out) == 0
    assert len(calls) == 4 and not (out / inject_cli.STATE_FILES[0]).exists()
    assert "injection sweep (bucket x layer)" in capsys.readouterr().err  # the progress bar
    assert (out / "per_prompt.csv").read_text() == (tmp_path / "whole" / "per_prompt.csv").read_text()
