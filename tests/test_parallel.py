"""jaxinterp.parallel in this process (one CPU device); the multi-device paths run in subprocesses
with 4 host devices in the capability tests (lens training, NuGraph2 predict, GPT-2 forward)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxinterp import parallel


def test_pad_batch_pads_every_leaf_with_zero_rows():
    tree = {"x": np.ones((3, 2), np.float32), "mask": np.ones(3, np.int32)}
    padded = parallel.pad_batch(tree, 5)
    assert padded["x"].shape == (5, 2) and padded["x"].dtype == np.float32
    np.testing.assert_array_equal(padded["mask"], [1, 1, 1, 0, 0])
    assert parallel.pad_batch(tree, 3)["x"] is tree["x"]  # already the size: no copy
    with pytest.raises(ValueError, match="batch of 3 does not fit the padded size 2"):
        parallel.pad_batch(tree, 2)


def test_padded_size_and_shard_batch_on_one_device():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.DATA,) and mesh.devices.size == 1 and parallel.padded_size(3, mesh) == 3
    # padded_size reads only the device count: a Mesh of one device four times (a namespace with
    # `devices` was accepted before padded_size checked that it got a Mesh)
    four = Mesh(np.asarray(jax.devices()[:1] * 4), (parallel.DATA,))
    assert [parallel.padded_size(n, four) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]
    x = parallel.shard_batch(np.arange(6.0).reshape(3, 2), mesh)
    assert x.sharding == parallel.data_sharding(mesh)
    params = parallel.replicate({"w": np.eye(2)}, mesh)
    assert jax.tree.leaves(params)[0].sharding == parallel.replicated(mesh)
    with pytest.raises(ValueError, match=r"leading axis must be a multiple of the 1 devices, got a leaf of shape \[\]"):
        parallel.shard_batch({"scalar": np.float32(1.0)}, mesh)


def test_bad_inputs_are_value_errors():
    # a scalar leaf has no batch axis to pad (was an IndexError from x.shape[0])
    with pytest.raises(ValueError, match=r"pad_batch: expected every leaf to have a leading \(batch\) axis, "
                                         r"got a leaf of shape \[\]"):
        parallel.pad_batch({"x": np.ones((3, 2)), "scale": np.float32(2.0)}, 4)
    # no device (e.g. jax.devices()[:0]): was an empty mesh, then a ZeroDivisionError in padded_size
    with pytest.raises(ValueError, match="devices: expected at least one device, got none"):
        parallel.make_mesh([])
