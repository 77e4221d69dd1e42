"""Landscape evaluations split over a device mesh (data parallelism over points), on 4 host devices."""

from __future__ import annotations

import os
import subprocess
import sys

_FOUR_DEVICES = r"""
import jax, jax.numpy as jnp, numpy as np
from jaxinterp import parallel
from jaxinterp.merge import landscape, mlp

assert len(jax.devices()) == 4
mesh = parallel.make_mesh()
sizes = (8, 16, 3)
pa, pb = mlp.init(jax.random.PRNGKey(0), sizes), mlp.init(jax.random.PRNGKey(1), sizes)
rng = np.random.default_rng(0)
batch = (jnp.asarray(rng.normal(size=(40, 8)), jnp.float32), jnp.asarray(rng.integers(0, 3, 40), jnp.int32))

# 25 alphas over 4 devices: padded to 28 inside, 25 losses back, equal to one device's
alphas = jnp.linspace(0.0, 1.0, 25)
one = landscape.path_losses(mlp.loss, pa, pb, batch, alphas)
split = landscape.path_losses(mlp.loss, pa, pb, batch, alphas, mesh=mesh)
assert split.shape == (25,), split.shape
np.testing.assert_allclose(np.asarray(split), np.asarray(one), rtol=1e-6)
assert len(split.sharding.device_set) == 4, split.sharding  # computed on every device
# each chunk size, and a vmapped share per device, give the same losses
for chunk in (1, 3, 7, 25):
    np.testing.assert_allclose(np.asarray(landscape.path_losses(mlp.loss, pa, pb, batch, alphas, chunk=chunk,
                                                                mesh=mesh)), np.asarray(one), rtol=1e-6)
# other alpha counts reuse nothing wrong: 3 alphas (one padded point per device but one)
np.testing.assert_allclose(np.asarray(landscape.path_losses(mlp.loss, pa, pb, batch, alphas[:3], mesh=mesh)),
                           np.asarray(one[:3]), rtol=1e-6)

res1 = landscape.linear_path(mlp.loss, pa, pb, batch)
res4 = landscape.linear_path(mlp.loss, pa, pb, batch, mesh=mesh)
np.testing.assert_allclose(res4.losses, res1.losses, rtol=1e-6)
assert abs(res4.barrier_chord - res1.barrier_chord) <= 1e-5 * max(1.0, abs(res1.barrier_chord))

s1 = landscape.random_surface(mlp.loss, pa, batch, key=jax.random.PRNGKey(2), n=7)
s4 = landscape.random_surface(mlp.loss, pa, batch, key=jax.random.PRNGKey(2), n=7, mesh=mesh)
np.testing.assert_allclose(s4.losses, s1.losses, rtol=1e-5)
p1 = landscape.plane_through(mlp.loss, pa, pb, mlp.init(jax.random.PRNGKey(3), sizes), batch, n=5)
p4 = landscape.plane_through(mlp.loss, pa, pb, mlp.init(jax.random.PRNGKey(3), sizes), batch, n=5, mesh=mesh)
np.testing.assert_allclose(p4.losses, p1.losses, rtol=1e-5)

from jaxinterp.merge import curves
bend = landscape.lerp(pa, pb, 0.5)
c1 = curves.curve_losses(mlp.loss, pa, bend, pb, batch, alphas)
c4 = curves.curve_losses(mlp.loss, pa, bend, pb, batch, alphas, mesh=mesh)
np.testing.assert_allclose(np.asarray(c4), np.asarray(c1), rtol=1e-6)

for bad, what in ((jax.devices(), "list"), ("cpu", "str")):
    try:
        landscape.path_losses(mlp.loss, pa, pb, batch, alphas, mesh=bad)
    except ValueError as e:
        assert str(e).startswith("path_losses: mesh: expected a jax.sharding.Mesh"), e
    else:
        raise AssertionError(f"a {what} was taken as a mesh")
print("OK")
"""


def test_landscape_points_split_over_four_host_devices_equal_one_device():
    """path_losses, linear_path, random_surface, plane_through and curve_losses with mesh=make_mesh()
    on 4 host devices: the points (25 alphas or ts, padded to 28; 7 x 7 and 5 x 5 grids) are split
    over the devices and the losses equal the one-device call; a device list or a name is a ValueError."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout
