"""Type predicates for the checks of user input (one definition, so every check agrees).

bool is an int in Python: `True` would pass `isinstance(v, int)` as 1 (a layer, a batch size, a
k). numpy integer scalars (from arrays, configs, argparse with numpy types) are accepted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def is_integer(v) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def select_by_parts(only, names: Sequence[str], what: str) -> list[str]:
    """The `names` holding any of the parts in `only` (every name for None): `demo --only`, `bench --only`.

    ValueError for a string (its letters would each be a part: "lens" picked every name with an l, e, n
    or s), anything but a list or tuple of strings (a TypeError from `o in name` or from iterating), and
    a part in no name (a typo would run nothing and exit 0; an empty part is in every name)."""
    if isinstance(only, str):
        raise ValueError(f"only: expected a list of parts of {what} names, got the string {only!r}")
    if only is not None and (not isinstance(only, (list, tuple)) or not all(isinstance(o, str) for o in only)):
        raise ValueError(f"only: expected a list of parts of {what} names (strings), got {only!r}")
    unmatched = [o for o in only or () if not o or not any(o in n for n in names)]
    if unmatched:
        raise ValueError(f"only: expected parts of {what} names ({', '.join(names)}), got {unmatched}")
    return [n for n in names if not only or any(o in n for o in only)]
