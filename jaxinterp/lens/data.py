"""Text for lens training: lines of .txt files, the "text" field of .jsonl files, or a Hugging Face
dataset (when `datasets` is installed), tokenised once and served as fixed-shape padded batches.

Batches are a pure function of (seed, batch index): batch i of epoch e takes examples
perm_e[i*B:(i+1)*B] of a seeded permutation of epoch e. A resumed run that knows how many batches it
consumed therefore continues with exactly the batches it would have seen.

Axis names: B batch, P positions (fixed: the sequence length, so jit compiles once).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from jaxinterp.checks import check_seed, is_integer


class Batch(NamedTuple):
    tokens: np.ndarray  # [B, P] int32, right-padded with pad_id
    mask: np.ndarray  # [B, P] int32, 1 real, 0 padding


def read_texts(source: str | os.PathLike, *, text_field: str = "text", split: str = "train") -> list[str]:
    """Texts from a .txt file (one per non-empty line; lines end at \\n), a .jsonl file (`text_field`
    of each record, a string), a folder of those, or a Hugging Face dataset name. ValueError if
    nothing usable is found."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise ValueError(f"data: folder {path} holds no .txt or .jsonl file")
        # one empty shard is not an empty folder (read_texts of each file refused the whole folder)
        texts = [t for f in files for t in _read_file(f, text_field)]
    elif path.is_file():
        texts = _read_file(path, text_field)
    else:
        texts = _hf_dataset(str(source), text_field, split)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"data: {source} holds no text (empty file or only blank lines)")
    return texts


def _read_file(path: Path, text_field: str) -> list[str]:
    """The texts of one .txt or .jsonl file (blank ones included)."""
    try:
        return _read_utf8_file(path, text_field)
    except UnicodeDecodeError as e:  # a ValueError, but naming neither the file nor what was expected
        raise ValueError(f"data: expected UTF-8 text, got {path} with {e.reason} at byte {e.start}") from e


def _read_utf8_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".jsonl":
        texts = []
        with open(path, encoding="utf-8-sig") as f:  # -sig: a leading BOM is not text
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"data: {path} line {i + 1} is not JSON: {e}") from e
                if not isinstance(rec, dict) or text_field not in rec:
                    raise ValueError(f"data: {path} line {i + 1}: expected an object with field "
                                     f"{text_field!r}, got {str(rec)[:80]}")
                if not isinstance(rec[text_field], str):  # str() would train on "None" or "[1, 2]"
                    raise ValueError(f"data: {path} line {i + 1}: expected field {text_field!r} to be a "
                                     f"string, got {type(rec[text_field]).__name__} {str(rec[text_field])[:40]}")
                texts.append(rec[text_field])
    else:  # lines end at \n only (splitlines would also cut at form feeds and U+2028 inside a line)
        texts = [line.rstrip("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    return texts


def _hf_dataset(name: str, text_field: str, split: str) -> list[str]:
    try:
        import datasets  # optional
    except ImportError:
        raise ValueError(f"data: {name!r} is not a file or folder, and the `datasets` package (needed for "
                         f"Hugging Face dataset names) is not installed") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 -- any hub failure becomes one clear message
        raise ValueError(f"data: cannot load Hugging Face dataset {name!r} split {split!r}: {e}") from e
    if text_field not in ds.column_names:
        raise ValueError(f"data: Hugging Face dataset {name!r} split {split!r}: expected a field {text_field!r}, "
                         f"got fields {list(ds.column_names)}")
    texts = [t for t in ds[text_field] if t is not None]  # missing values: skipped like blank lines
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"data: Hugging Face dataset {name!r} split {split!r}: expected field {text_field!r} "
                         f"to hold strings, got {type(bad).__name__} {str(bad)[:40]}")
    return texts


def tokenize(texts: Sequence[str], tokenizer, seq_len: int) -> list[np.ndarray]:
    """Token ids of each text, truncated to seq_len; texts that tokenise to nothing are dropped."""
    # x[:-1] cut each text's last token silently, x[:0] reported 'no text gives any token'
    if not is_integer(seq_len) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = [np.asarray(x[:seq_len], np.int32) for x in ids if len(x)]
    if not out:
        raise ValueError("data: no text gives any token")
    return out


class Batches:
    """Seeded, resumable batches of tokenised examples, all of shape [batch_size, seq_len]."""

    def __init__(self, examples: list[np.ndarray], batch_size: int, seq_len: int, *, pad_id: int = 0,
                 seed: int = 0):
        if not is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if not examples:
            raise ValueError("data: no examples")
        # batch() copies them into int32 rows: float ids were truncated (1.7 -> token 1) silently
        for i, e in enumerate(examples):
            a = np.asarray(e)
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
                raise ValueError(f"data: expected each example to be a 1-D array of integer token ids, got "
                                 f"example {i} of shape {list(a.shape)} and dtype {a.dtype}")
        if not is_integer(pad_id):
            raise ValueError(f"pad_id: expected an integer token id, got {pad_id!r}")
        if not is_integer(seq_len) or seq_len < 1:
            raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
        # else batch() failed with numpy's 'expected non-negative integer' (-1) or a TypeError (1.5),
        # and True drew the batches of seed 1
        check_seed(seed)  # default_rng([seed, epoch]): 2**32 + s repeated another seed's batches
        # else batch() failed at the first long one, inside numpy, after training had started
        longest = max(range(len(examples)), key=lambda i: len(examples[i]))
        if len(examples[longest]) > seq_len:
            raise ValueError(f"data: expected examples of at most seq_len = {seq_len} tokens (tokenize() truncates "
                             f"to it), got example {longest} of {len(examples[longest])} tokens")
        self.examples, self.batch_size, self.seq_len = examples, batch_size, seq_len
        self.pad_id, self.seed = pad_id, seed
        # Fewer examples than a batch: an epoch repeats them (a batch always has batch_size rows).
        self.per_epoch = max(1, len(examples) // batch_size)

    @functools.cached_property
    def id_range(self) -> tuple[int, int] | None:
        """(smallest, largest) token id of the examples (None if they hold none), found once: the CLI
        checks them before loading the model and `train` again, which concatenated every id twice."""
        ids = np.concatenate([np.asarray(e).reshape(-1) for e in self.examples])
        return (int(ids.min()), int(ids.max())) if ids.size else None

    def fingerprint(self) -> str:
        """sha256 of the examples' token ids and lengths, in order: a resumed run checks that its data
        is the data the checkpoint was trained on (the seed alone fixes the order, not the text).
        Hashed once per Batches (as `id_range`): the CLI's resume check and `train` hashed every id twice."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256(np.asarray([len(e) for e in self.examples], np.int64).tobytes())
            for e in self.examples:
                h.update(np.ascontiguousarray(e, np.int32).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _order(self, epoch: int) -> np.ndarray:
        # kept for the epoch: drawn again for every batch, the permutation of all examples cost more than
        # the batch itself (27 ms a batch of 8 for a million examples)
        cached = getattr(self, "_epoch_order", None)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng([self.seed, epoch])
        reps = -(-self.batch_size // len(self.examples))
        order = np.concatenate([rng.permutation(len(self.examples)) for _ in range(reps)])
        self._epoch_order = (epoch, order)
        return order

    def batch(self, index: int) -> Batch:
        """Batch number `index` (counting from 0 over all epochs)."""
        epoch, i = divmod(index, self.per_epoch)
        order = self._order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        tokens = np.full((self.batch_size, self.seq_len), self.pad_id, np.int32)
        mask = np.zeros((self.batch_size, self.seq_len), np.int32)
        for row, j in enumerate(order):
            ex = self.examples[j]
            tokens[row, :len(ex)] = ex
            mask[row, :len(ex)] = 1
        return Batch(tokens, mask)
