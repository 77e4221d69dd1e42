"""argparse `type=` parsers that check a range as well as a type.

argparse turns their ArgumentTypeError into its usage message naming the option, and exits with
status 2 before any command runs: "argument --limit: expected a positive integer, got -1".
"""

from __future__ import annotations

import argparse
import math
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
