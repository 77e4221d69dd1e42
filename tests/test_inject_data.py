"""Prompt CSVs (the paper's formats), word lists, tokenisation of prompts, memories and answers."""

import re
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.inject import data as dt
from jaxinterp.transformer import load_tokenizer

FIX = Path(__file__).parent / "fixtures"
# The paper's data sets live outside the repository (CI has shared/ beside the clone).
MULTIHOP = Path(__file__).resolve().parents[2] / "shared" / "data" / "multihop"
needs_data = pytest.mark.skipif(not MULTIHOP.is_dir(), reason=f"multi-hop prompt data not found at {MULTIHOP}")

HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(FIX / "tiny_gpt2")


@needs_data
@pytest.mark.parametrize("name,rows", [("handwritten_obscure_explicit_data.csv", 106), ("multi_hop_100.csv", 100),
                                       ("multi_hop_1000.csv", 1000)])
def test_paper_formats(name, rows):
    ps = dt.load_prompts(MULTIHOP / name)
    assert len(ps.answer) == len(ps.obscure) == len(ps.explicit) == len(ps.memory) == rows
    assert all(ps.answer) and all(ps.memory) and ps.obscure[0] != ps.explicit[0]
    assert len(dt.load_prompts(MULTIHOP / name, limit=5).answer) == 5


@needs_data
def test_top_words():
    words = dt.load_top_words(MULTIHOP / "top_word_types.csv")
    assert list(words) == list(dt.WORD_TYPES)  # the BOM does not stick to the first column's name
    assert len(words["Top 5000 Words"]) == 5050 and 0 < len(words["Conjunctions"]) < 100
    a = dt.random_words(words, "Nouns", 20, seed=3)
    assert a == dt.random_words(words, "Nouns", 20, seed=3) != dt.random_words(words, "Nouns", 20, seed=4)
    assert set(a) <= set(words["Nouns"][:200])


def test_random_words_errors():
    with pytest.raises(ValueError, match="word_type: expected one of"):
        dt.random_words({"Nouns": ["a"]}, "Verbs", 1)
    with pytest.raises(ValueError, match="'Nouns': the list is empty"):
        dt.random_words({"Nouns": []}, "Nouns", 1)


def test_cells_are_kept_as_written(tmp_path):
    """As the reference reads them (pandas, unstripped): a trailing space is part of the prompt or
    memory (four cells of the paper's data have one); whitespace alone is still an empty cell."""
    p = tmp_path / "m.csv"
    p.write_text(HEADER + "w1 w2,w3 in ,Argonne Lab , w6,w7\n")
    ps = dt.load_prompts(p)
    assert ps.obscure == ["w3 in "] and ps.memory == ["Argonne Lab "] and ps.obscure_entity == [" w6"]
    p.write_text(HEADER + "w1,w2,   ,w4,w5\n")
    with pytest.raises(ValueError, match="line 2: empty cell in column 'explicit_entity'"):
        dt.load_prompts(p)


def test_2wmh_names_and_index(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(",explicit_sent,obscure_sent,explicit_entity,obscure_entity,fact1,fact2,answer\n"
                 '0,w1 w2,w3 "w4",w5,w6,"[1, 2]",[],w7\n')
    ps = dt.load_prompts(p)
    assert ps.explicit == ["w1 w2"] and ps.memory == ["w5"] and ps.answer == ["w7"]


@pytest.mark.parametrize("text,match", [
    (HEADER.replace(",answer", ",solution") + "a,b,c,d,e\n", "missing column 'answer'"),
    ("explicit_sentence,explicit_entity,answer\na,b,c\n", "missing column 'obscure_sentence'"),
    (HEADER + "a,b,c,d,e\na,b, ,d,e\n", "line 3: empty cell in column 'explicit_entity'"),
    (HEADER + "a,b,c,d\n", "line 2: empty cell in column 'answer'"),
    # these two matched a word or two ("empty file", "no data rows"): now the whole message after the file
    ("", r"empty file, expected a header row with columns \['answer', 'explicit_entity', 'explicit_sentence', "
         r"'obscure_sentence'\]$"),
    (HEADER, "no data rows after the header$"),
])
def test_bad_csv(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        dt.load_prompts(p)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"prompt data: expected a CSV file, got '{tmp_path / 'nope.csv'}' "
                                                   "(not found)") + "$"):
        dt.load_prompts(tmp_path / "nope.csv")


def test_encode(tok, tmp_path):
    p = tmp_path / "p.csv"
    p.write_text(HEADER + "w1 w2 w3,w4 w5 w6 w7,w8 w8 w9,w4 w5,w10\n")
    enc = dt.encode(tok, dt.load_prompts(p))
    np.testing.assert_array_equal(enc.prompts[0], [0, 5, 6, 7, 8])  # BOS + obscure sentence
    np.testing.assert_array_equal(enc.explicit[0], [0, 2, 3, 4])
    np.testing.assert_array_equal(enc.memories[0], [9, 9, 10])  # no BOS; the multi-hot dedups later
    assert enc.answers.tolist() == [11]  # first token of " w10"
    enc2 = dt.encode(tok, dt.load_prompts(p), memories=["w50"])
    assert enc2.memories[0].tolist() == [51]


@pytest.mark.parametrize("field,value,match", [
    ("answer", " ", r"row 0: answer ' ' tokenises to nothing"),
    ("memory", "", r"row 0: memory '' tokenises to nothing \(an empty memory\)"),
])
def test_encode_errors(tok, field, value, match):
    ps = dt.PromptSet(["w1"], ["w2"], ["w3"], ["w4"], ["w5"], "x")._replace(**{field: [value]})
    with pytest.raises(ValueError, match=match):
        dt.encode(tok, ps)
    with pytest.raises(ValueError, match=r"memories: expected one per prompt \(1\), got 2"):
        dt.encode(tok, ps, memories=["w1", "w2"])
