"""argparse `type=` parsers that check a range as well as a type.

argparse turns their ArgumentTypeError into its usage message naming the option, and exits with
status 2 before any command runs: "argument --limit: expected a positive integer, got -1".
`output_file` and `output_folder` check where a command will write (a file path that is not a
folder, a folder path that is not a file; writable or creatable) before it does any work.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T", int, float)


def checked(kind: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """A parser that reads text with `kind`, then rejects values for which `ok` is False."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):  # comparisons with NaN are False: NaN is rejected too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


positive_int = checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "a non-negative integer")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a positive finite number")
non_negative_float = checked(float, lambda v: 0 <= v < math.inf, "a non-negative finite number")
fraction = checked(float, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")


def _writable_ancestor(path: Path) -> str | None:
    """None if `path` could be created (its nearest existing ancestor is a writable folder), else why not."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"folder {parent} is not writable"
    return None


def output_file(text: str) -> str:
    """An output file's path, checked before any work: not a folder, and its folder can be written."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file path, got the folder {text}")
    why = _writable_ancestor(path)  # written atomically: a temporary file beside it, then a rename, even over an old one
    if why:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {why}")
    return text


def output_folder(text: str) -> str:
    """An output folder's path, checked before any work: not empty, not a file, and writable or creatable."""
    if not text:  # Path('') is '.': an unset shell variable (--out "$DIR") wrote into the working directory
        raise argparse.ArgumentTypeError("expected a folder path, got '' (an empty path; write . for the "
                                         "working directory)")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, got the file {text}")
    why = (None if os.access(path, os.W_OK | os.X_OK) else f"folder {text} is not writable") if path.exists() \
        else _writable_ancestor(path)
    if why:
        raise argparse.ArgumentTypeError(f"cannot write into {text}: {why}")
    return text
