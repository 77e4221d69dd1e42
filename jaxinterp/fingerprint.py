"""Fingerprints of pytrees (a model's weights, a plan's arrays): one SHA-256 over every leaf.

Used where a saved state must only be resumed with the inputs it was made from: the injection
sweep's state file, the lens trainer's checkpoints. Each leaf adds its tree path, dtype, shape and
bytes, so two trees differing in one element, one name or one dtype differ. Every weight is read
(~0.3 s a GPT-2 small): shape checks alone let another checkpoint of the same shape (a fine-tune,
a merge, random weights) pass.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np


def update(h, tree):
    """Adds every leaf of `tree` (path, dtype, shape, bytes) to the hash object `h`; returns `h`."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{a.dtype}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h


def fingerprint(tree, *, config=None) -> str:
    """The SHA-256 (hex) of `config`'s repr (a frozen dataclass: the model's shape) and every leaf of `tree`."""
    h = hashlib.sha256(repr(config).encode()) if config is not None else hashlib.sha256()
    return update(h, tree).hexdigest()
