"""Type predicates for the checks of user input (one definition, so every check agrees).

bool is an int in Python: `True` would pass `isinstance(v, int)` as 1 (a layer, a batch size, a
k). numpy integer scalars (from arrays, configs, argparse with numpy types) are accepted.
"""

from __future__ import annotations

import numpy as np


def is_integer(v) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
