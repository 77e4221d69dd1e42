"""Multi-hop prompt sets (the CSV formats of the memory-injection paper's data) and random words.

Formats (column names, each once; an unnamed leading index column is ignored):
  handwritten: explicit_sentence, obscure_sentence, explicit_entity, obscure_entity, answer
  2WikiMultiHop-derived: explicit_sent|explicit_sentence, obscure_sent|obscure_sentence,
                         explicit_entity, obscure_entity, fact1, fact2, answer
The prompt is the obscure sentence (BOS prepended), the memory the explicit entity (no BOS), the
target the first token of " " + answer. Files are read from a path; nothing is bundled.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from jaxinterp.checks import is_integer

# canonical column -> accepted spellings
COLUMNS = {
    "explicit_sentence": ("explicit_sentence", "explicit_sent"),
    "obscure_sentence": ("obscure_sentence", "obscure_sent"),
    "explicit_entity": ("explicit_entity",),
    "answer": ("answer",),
}
OPTIONAL = {"obscure_entity": ("obscure_entity",)}
WORD_TYPES = ("Top 5000 Words", "Nouns", "Verbs", "Adjectives", "Adverbs", "Conjunctions")


class PromptSet(NamedTuple):
    explicit: list[str]  # explicit sentences (the bridge entity named)
    obscure: list[str]  # obscure sentences (the prompt)
    memory: list[str]  # explicit entities (what is injected)
    answer: list[str]  # answers, without the leading space
    obscure_entity: list[str]
    source: str


class Encoded(NamedTuple):
    prompts: list[np.ndarray]  # per prompt: BOS + obscure sentence ids
    explicit: list[np.ndarray]  # per prompt: BOS + explicit sentence ids
    memories: list[np.ndarray]  # per prompt: memory ids (no BOS, in order)
    answers: np.ndarray  # [N] first token of " " + answer


def _find(header: list[str], names: Sequence[str]) -> list[int]:
    """Where the header holds the column of these accepted names (every place: more than one is an error)."""
    return [i for i, h in enumerate(header) if h in names]


def _read_csv(path: Path, what: str, empty_hint: str = "") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(stripped header, data rows as (line number, cells)) of a UTF-8 CSV that may start with a BOM.

    Blank lines are dropped here, so a row limit counts data rows. A row's number is the line it starts
    on, as an editor shows it (a quoted cell may span lines). A row with more non-empty cells than the
    header is refused: pandas (the reference's reader) refuses it too, and read by position its cells
    would shift into the wrong columns (an unquoted comma in a sentence).
    """
    if not path.is_file():
        raise ValueError(f"{what}: expected a CSV file, got {str(path)!r} (not found)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                         "save the file as UTF-8") from None
    lines = list(io.StringIO(text.removeprefix("\ufeff"), newline=""))  # the lines the reader reads
    reader = csv.reader(lines)
    rows, start, last = [], 1, 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):  # blank lines (and rows of empty cells) are skipped
                rows.append((start, row))
            start, last = reader.line_num + 1, start
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: not a readable CSV ({e})") from None
    # A quote that is never closed makes the reader take the rest of the file into one cell: the rows
    # after it were lost silently (in the last column, `"Paris` took them as its answer). Such a cell
    # always ends the file, so the last row, read strictly, says whether it is one.
    try:
        list(csv.reader(lines[last - 1:], strict=True))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise ValueError(f"{path}: line {last}: a quoted cell is never closed (a '\"' opens it; every later "
                             "line was read into it): close the quote or double a quote inside a cell") from None
    if not rows:
        raise ValueError(f"{path}: empty file{empty_hint}")
    header = [h.strip() for h in rows[0][1]]
    for line, row in rows[1:]:
        if any(cell.strip() for cell in row[len(header):]):
            raise ValueError(f"{path}: line {line}: {len(row)} cells, the header has {len(header)} "
                             "(a comma inside a cell that is not quoted?)")
    return header, rows[1:]


def load_prompts(path: str | os.PathLike, *, limit: int | None = None) -> PromptSet:
    """Reads a prompt CSV (either format). Raises ValueError naming the missing column, a column given twice
    (two spellings, or a name repeated) or the empty cell."""
    path = Path(path)
    if limit is not None and (not is_integer(limit) or limit < 1):
        # rows[1:1 + limit]: a negative limit dropped rows from the end instead
        raise ValueError(f"limit: expected a positive number of rows (or None for all), got {limit!r}")
    header, rows = _read_csv(path, "prompt data", f", expected a header row with columns {sorted(COLUMNS)}")
    idx = {}
    for col, names in (COLUMNS | OPTIONAL).items():
        at = _find(header, names)
        if len(at) > 1:
            # both spellings of a 2WMH column, or a name repeated: the first was read and the others
            # ignored, silently, while they may hold different sentences
            places = ", ".join(f"{header[i]!r} in column {i + 1}" for i in at)
            raise ValueError(f"{path}: column {col!r} is given {len(at)} times in the header ({places}); expected "
                             f"one column named one of {list(names)}")
        i = at[0] if at else None
        if i is None and col in COLUMNS:
            raise ValueError(f"{path}: missing column {col!r} (accepted names {list(names)}); the header has {header}")
        idx[col] = i
    out = {c: [] for c in idx}
    body = rows if limit is None else rows[:limit]
    for r, row in body:
        for col, i in idx.items():
            # cells as written (the reference reads them with pandas, unstripped: a trailing space in a
            # prompt or memory is a token of its own); whitespace alone counts as empty
            value = row[i] if i is not None and i < len(row) else ("" if i is not None else None)
            if value is not None and not value.strip():
                value = ""
            if value == "" and col in COLUMNS:
                raise ValueError(f"{path}: line {r}: empty cell in column {col!r}")
            out[col].append(value or "")
    if not out["answer"]:
        raise ValueError(f"{path}: no data rows after the header")
    return PromptSet(out["explicit_sentence"], out["obscure_sentence"], out["explicit_entity"], out["answer"],
                     out["obscure_entity"], str(path))


def load_top_words(path: str | os.PathLike) -> dict[str, list[str]]:
    """top_word_types.csv -> {column: words} (empty cells dropped; the file starts with a BOM)."""
    path = Path(path)
    header, rows = _read_csv(path, "word list")
    # a name twice: the dict below merged both columns into one list, silently (unnamed columns, such as
    # a spreadsheet's trailing commas, are only refused when two of them hold words)
    for h in dict.fromkeys(header):
        at = [i for i, name in enumerate(header) if name == h]
        if len(at) > 1 and (h or sum(any(i < len(r) and r[i].strip() for _, r in rows) for i in at) > 1):
            raise ValueError(f"{path}: column {h!r} appears {len(at)} times in the header (columns "
                             f"{[i + 1 for i in at]}); expected each word type once (their words would be merged)")
    words = {h: [] for h in header}
    for _, row in rows:
        for h, cell in zip(header, row):
            if cell.strip():
                words[h].append(cell.strip())
    return words


def random_words(words: dict[str, list[str]], word_type: str, n: int, *, seed: int = 0,
                 limit: int | None = 200) -> list[str]:
    """n words drawn with replacement (seeded) from the first `limit` words of one column.

    The paper's baseline (`fake_injection.py`) injected each of the first 200 words of a list into
    every prompt and averaged per word; one word drawn per prompt, as here, samples that grid
    (the same expected mean; medians and spreads of the two differ).
    """
    if word_type not in words:
        raise ValueError(f"word_type: expected one of {list(words)}, got {word_type!r}")
    # limit 0 drew from the whole list and a negative one from all but its last words (a slice), silently
    if limit is not None and (not is_integer(limit) or limit < 1):
        raise ValueError(f"limit: expected a positive number of words (or None for all), got {limit!r}")
    if not is_integer(n) or n < 0:
        raise ValueError(f"n: expected a non-negative number of words, got {n!r}")
    pool = words[word_type][:limit] if limit is not None else words[word_type]
    if not pool:
        raise ValueError(f"word_type {word_type!r}: the list is empty")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def token_ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)


def bos_id(tokenizer) -> int:
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    if bos is None:
        raise ValueError("tokenizer: has neither a BOS nor an EOS token to prepend")
    return int(bos)


def encode(tokenizer, data: PromptSet, *, memories: Sequence[str] | None = None) -> Encoded:
    """Token ids of every prompt, explicit prompt, memory and answer (first token of " " + answer).

    `memories` replaces the explicit entities (e.g. random words for a baseline). Raises ValueError
    naming the row (0-based data row) whose memory or answer tokenises to nothing.
    """
    bos = bos_id(tokenizer)
    memories = data.memory if memories is None else list(memories)
    if len(memories) != len(data.answer):
        raise ValueError(f"memories: expected one per prompt ({len(data.answer)}), got {len(memories)}")
    prompts, explicit, mems, answers = [], [], [], []
    for i in range(len(data.answer)):
        ans = token_ids(tokenizer, " " + data.answer[i])
        if ans.size == 0:
            raise ValueError(f"row {i}: answer {data.answer[i]!r} tokenises to nothing")
        mem = token_ids(tokenizer, memories[i])
        if mem.size == 0:
            raise ValueError(f"row {i}: memory {memories[i]!r} tokenises to nothing (an empty memory)")
        prompts.append(np.concatenate([[bos], token_ids(tokenizer, data.obscure[i])]).astype(np.int32))
        explicit.append(np.concatenate([[bos], token_ids(tokenizer, data.explicit[i])]).astype(np.int32))
        mems.append(mem)
        answers.append(int(ans[0]))
    return Encoded(prompts, explicit, mems, np.asarray(answers, np.int32))
