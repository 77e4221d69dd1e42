"""Device mesh and data-parallel sharding of the batch axis, shared by every capability.

One mesh axis, "data": inputs are split along their leading (batch) axis, params are replicated,
and XLA's SPMD partitioner runs the same program on every device. With one device this is the
identity, so callers use it unconditionally.

Test on a CPU with `XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before jax starts).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxinterp.checks import is_integer

DATA = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all of them) with the axis "data"."""
    # a count (make_mesh(4)) was a TypeError from list(), a name ("cpu") a mesh of its letters and
    # ids ([0, 1]) a mesh of ints: both failed only later, inside device_put
    if devices is not None and (isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__")):
        raise ValueError(f"devices: expected a list of jax devices (jax.devices()[:n]), got {devices!r}")
    devices = list(jax.devices() if devices is None else devices)
    others = [d for d in devices if not isinstance(d, jax.Device)]
    if others:
        raise ValueError(f"devices: expected jax devices (jax.devices()[:n]), got {others[0]!r} "
                         f"({type(others[0]).__name__})")
    if not devices:  # else an empty mesh, and padded_size divides by zero
        raise ValueError("devices: expected at least one device, got none")
    repeated = sorted({str(d) for d in devices if devices.count(d) > 1})
    if repeated:  # else a mesh that fails later, in device_put, with safe_zip's length error
        raise ValueError(f"devices: expected distinct devices, got {', '.join(repeated)} more than once")
    return Mesh(np.asarray(devices), (DATA,))


def check_mesh(mesh: Any, *, where: str = "mesh") -> Mesh:
    """`mesh` if it is a `jax.sharding.Mesh` with the axis "data" (as `make_mesh` builds), else a
    ValueError saying so (a list of devices or a device count failed later, with an AttributeError
    on `.devices.size`; a mesh without "data" in `device_put`, naming a "resource axis")."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"{where}: expected a jax.sharding.Mesh (parallel.make_mesh(devices)), "
                         f"got {type(mesh).__name__}")
    if DATA not in mesh.axis_names:
        raise ValueError(f"{where}: expected a mesh with the axis {DATA!r}, got axes {mesh.axis_names}")
    if mesh.shape[DATA] != mesh.devices.size:
        # every helper here and its callers split a batch into mesh.devices.size parts, but the
        # sharding splits it over "data" alone: on a ("data", "model") 2 x 2 mesh padded_size(6)
        # was 8, shard_batch refused 6 rows, and 4 parts put 2 on each device
        raise ValueError(f"{where}: expected a mesh whose axis {DATA!r} spans all its devices (parallel.make_mesh), "
                         f"got axes {dict(mesh.shape)}")
    return mesh


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over "data", the rest replicated."""
    return NamedSharding(check_mesh(mesh, where="data_sharding: mesh"), P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(check_mesh(mesh, where="replicated: mesh"), P())


def padded_size(n: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds n examples."""
    _check_size("padded_size: n", n)
    # a device list (make_mesh's argument) was an AttributeError on .devices
    d = check_mesh(mesh, where="padded_size: mesh").devices.size
    return -(-n // d) * d


def pad_batch(tree: Any, size: int) -> Any:
    """Pads every leaf's leading axis to `size` with zeros (outside jit); callers mask the rows."""
    _check_size("pad_batch: size", size)

    def pad(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"pad_batch: expected every leaf to have a leading (batch) axis, "
                             f"got a leaf of shape {list(x.shape)}")
        if x.shape[0] > size:
            raise ValueError(f"batch of {x.shape[0]} does not fit the padded size {size}")
        return np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)]) if x.shape[0] < size else x
    return jax.tree.map(pad, tree)


def _check_size(name: str, v) -> None:
    if not is_integer(v) or v < 0:  # -5 gave a padded size of -4, 2.5 one of 4.0 (then numpy's TypeError)
        raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf with its leading axis split over the mesh. The leading size must be a
    multiple of the number of devices (pad with `pad_batch(tree, padded_size(n, mesh))`)."""
    d = check_mesh(mesh, where="shard_batch: mesh").devices.size
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % d:
            raise ValueError(f"shard_batch: leading axis must be a multiple of the {d} devices, "
                             f"got a leaf of shape {list(np.shape(leaf))}")
    return jax.device_put(tree, data_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf whole on every device (params, configs' arrays)."""
    return jax.device_put(tree, replicated(check_mesh(mesh, where="replicate: mesh")))
