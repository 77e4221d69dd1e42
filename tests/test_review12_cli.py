"""Review 12: the command line, the demo, atomic writes and the data-parallel helpers.

Each test failed on the code before its fix (checked by putting the old file back).
"""

from __future__ import annotations

import os
import stat

import pytest

from jaxinterp import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_atomic_write_never_sets_the_process_umask_to_zero(tmp_path, monkeypatch, umask_022):
    """The umask is process-wide: reading it with os.umask(0) and putting it back left a moment in
    which a file that another thread created (orbax's and merge's writer threads run beside atomic
    writes) got mode 0666, world-writable. Simulated here: a file is created at every umask change."""
    real_umask = os.umask
    others = []

    def umask(mask):
        previous = real_umask(mask)
        other = tmp_path / f"other{len(others)}"
        os.close(os.open(other, os.O_CREAT | os.O_WRONLY, 0o666))  # what another thread makes meanwhile
        others.append(_mode(other))
        return previous

    monkeypatch.setattr(os, "umask", umask)
    atomic.write_text(tmp_path / "a.txt", "x")
    assert [m for m in others if m & 0o022] == []
    assert _mode(tmp_path / "a.txt") == 0o644


@pytest.mark.parametrize("old_mode", [0o600, 0o755, 0o444, 0o640])
def test_an_atomic_rewrite_keeps_the_files_permissions(tmp_path, umask_022, old_mode):
    """A rewrite replaced a private 0600 file (or an executable script) with a 0644 one, where a
    plain `open(path, "w")` keeps the mode. A read-only old file is still replaced, as before."""
    target = tmp_path / "f.json"
    target.write_text("old")
    target.chmod(old_mode)
    atomic.write_text(target, "new")
    with atomic.atomic_path(target) as tmp:  # a writer that opens the file by name, as h5py does
        with open(tmp, "w") as f:
            f.write("newer")
    assert target.read_text() == "newer"
    assert _mode(target) == old_mode
    assert os.listdir(tmp_path) == ["f.json"]


def test_a_new_file_gets_the_usual_mode_even_if_the_writer_made_it_private(tmp_path, umask_022):
    """safetensors and other writers that recreate the file by name leave 0600: the new file is 0644
    (0666 less the umask) as a new file from `open` would be."""
    with atomic.atomic_path(tmp_path / "m.bin") as tmp:
        os.unlink(tmp)
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    assert _mode(tmp_path / "m.bin") == 0o644


_FOUR_DEVICES = r'''
import jax, numpy as np
from jaxinterp import parallel

devs = jax.devices()
assert len(devs) == 4
for devices in (devs, devs[:3]):  # every batch size, even and uneven, on 4 and on 3 of the devices
    mesh = parallel.make_mesh(devices)
    for n in range(10):
        size = parallel.padded_size(n, mesh)
        batch = parallel.shard_batch(parallel.pad_batch({"x": np.arange(2.0 * n).reshape(n, 2),
                                                         "mask": np.ones(n, bool)}, size), mesh)
        assert size % len(devices) == 0 and size - len(devices) < n <= size, (n, size)
        assert batch["x"].sharding == parallel.data_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(batch["x"])[:n], np.arange(2.0 * n).reshape(n, 2))
        assert int(np.asarray(batch["mask"]).sum()) == n
try:
    parallel.make_mesh([devs[0], devs[1], devs[0]])
except ValueError as e:
    print("refused:", e)
'''


def test_a_mesh_with_a_device_twice_is_refused_and_uneven_batches_shard_on_four_devices(tmp_path):
    """make_mesh([d0, d1, d0]) built a mesh whose first shard_batch failed deep in device_put
    ("safe_zip() argument 1 has length ..."); it is a ValueError naming the device now."""
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: devices: expected distinct devices, got cpu:0 more than once" in proc.stdout, proc.stdout


@pytest.mark.parametrize("call, match", [
    (lambda p, mesh: p.padded_size(-5, mesh), r"padded_size: n: expected a non-negative integer, got -5"),
    (lambda p, mesh: p.padded_size(2.5, mesh), r"padded_size: n: expected a non-negative integer, got 2.5"),
    (lambda p, mesh: p.pad_batch({"x": p.np.ones((2, 2))}, 3.0), r"pad_batch: size: expected a non-negative integer, got 3.0"),
    (lambda p, mesh: p.pad_batch({"x": p.np.ones((2, 2))}, True), r"pad_batch: size: expected a non-negative integer, got True"),
])
def test_padded_sizes_must_be_non_negative_integers(call, match):
    """padded_size(-5) was -4 and padded_size(2.5) was 4.0; pad_batch(size=3.0) a numpy TypeError."""
    from jaxinterp import parallel

    with pytest.raises(ValueError, match=match):
        call(parallel, parallel.make_mesh())
