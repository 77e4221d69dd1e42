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


def check_x64(dtype, arg: str, what: str = "values") -> None:
    """ValueError naming `arg` if `dtype` is float64 while jax_enable_x64 is off: JAX would make every
    float64 array float32 (a UserWarning at most), so the work would silently run in float32. `what`
    names the arrays in the message ("activations", "params")."""
    import jax

    dt = jax.numpy.dtype(dtype)  # jnp's: it also reads "bfloat16"
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        raise ValueError(f"{arg}: expected jax_enable_x64 on for {dt.name} {what} (jax.config.update("
                         f"'jax_enable_x64', True) or JAX_ENABLE_X64=1), got it off: they would silently be "
                         f"{jax.dtypes.canonicalize_dtype(dt).name}; enable x64 or ask for float32")


def check_seed(seed, arg: str = "seed") -> int:
    """`seed` as an int if it is an integer in [0, 2**32), else a ValueError naming `arg`.

    The generators seeded from it keep 32 bits: jax.random.PRNGKey/key keep a seed's low 32 bits (seed
    2**32 + 1 drew seed 1's numbers, -1 those of 2**32 - 1, and from 2**63 it was an OverflowError), and
    numpy reads a larger seed as two words (default_rng([s + 2**32 j, i]) is default_rng([s, j, i]):
    another seed's draws). 1.5 or True failed deep inside, or drew seed 1's numbers."""
    if not is_integer(seed):
        raise ValueError(f"{arg}: expected an integer in [0, 2**32), got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"{arg}: expected an integer in [0, 2**32) (random generators keep a seed's low 32 bits: a "
                         f"larger one repeats another seed's draws), got {seed}")
    return int(seed)


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
