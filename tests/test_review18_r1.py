"""Review 18 (r1), the torch checkpoint reader after today's changes: an empty storage that torch shares
between tensors of two dtypes, and zip entries that zipfile cannot read."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from test_torch_pickle import Storage, Tensor, _global, fake_torch, write  # noqa: F401 (a fixture)

from jaxinterp import torch_pickle


def test_an_empty_storage_viewed_as_two_dtypes_loads_as_torch_loads_it(tmp_path, fake_torch):
    """torch.save checks that tensors sharing a storage share its dtype only for an allocated storage
    (`if storage.data_ptr() != 0`), and torch.load caches only non-empty storages by key, so
    `{'f': e, 'i': e.view(torch.int32)}` of `e = torch.empty(0)` is one key named as 0 floats and as
    0 ints: torch loads it; 347089f's cache refused it as a corrupt file."""
    f = Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(0, np.float32)), 0, (0,), (1,))
    i = Tensor(Storage(_global("torch", "IntStorage"), "0", np.zeros(0, np.int32)), 0, (0, 3), (3, 1))
    got = torch_pickle.load_state_dict(write(tmp_path / "e.pt", collections.OrderedDict(f=f, i=i)))
    assert (got["f"].dtype, got["f"].shape) == (np.float32, (0,))
    assert (got["i"].dtype, got["i"].shape) == (np.int32, (0, 3))


def test_a_non_empty_storage_named_with_two_dtypes_is_still_refused(tmp_path, fake_torch):
    a = Tensor(Storage(_global("torch", "FloatStorage"), "0", np.zeros(4, np.float32)), 0, (4,), (1,))
    b = Tensor(Storage(_global("torch", "IntStorage"), "0", np.zeros(4, np.int32)), 0, (4,), (1,))
    with pytest.raises(ValueError, match=r"storage archive/data/0 is named as 4 elements of float32 and as 4 of int32"):
        torch_pickle.load(write(tmp_path / "x.pt", collections.OrderedDict(a=a, b=b)))
