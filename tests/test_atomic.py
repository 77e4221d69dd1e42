"""Atomic writes: complete content, no temporary file left, data fsynced before the rename, folder after."""

from __future__ import annotations

import os
import stat

import pytest

from jaxinterp import atomic


@pytest.fixture
def log(monkeypatch):
    """Records fsyncs (what was synced: 'file' or 'dir', and its inode) and renames, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace",))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _run(ctx, writer):
    with ctx as tmp:
        writer(tmp)


def _by_name(tmp):  # a writer that takes a file name and closes the file itself, as h5py does
    with open(tmp, "wb") as f:
        f.write(b"written by name")


@pytest.mark.parametrize("case, write, expect", [
    ("write_bytes", lambda p: atomic.write_bytes(p, b"\x00" * 100_000), b"\x00" * 100_000),
    ("write_text", lambda p: atomic.write_text(p, "café\n"), "café\n".encode()),
    ("by name", lambda p: _run(atomic.atomic_path(p), _by_name), b"written by name"),
])
def test_content_is_synced_before_the_rename_and_the_folder_after(tmp_path, log, case, write, expect):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous content")
    write(target)
    assert target.read_bytes() == expect
    assert os.listdir(tmp_path) == ["out.bin"]
    assert log == [("fsync", "file", target.stat().st_ino), ("replace",), ("fsync", "dir", tmp_path.stat().st_ino)]


def test_a_folder_that_cannot_be_synced_is_not_an_error(tmp_path, monkeypatch):
    real_open = os.open

    def no_folders(path, flags, *a, **kw):
        if os.path.isdir(path):
            raise PermissionError(13, "cannot open a folder", str(path))  # as on Windows
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_folders)
    assert atomic.write_text(tmp_path / "a.txt", "hello").read_text() == "hello"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_keeps_the_previous_file_and_syncs_nothing(tmp_path, log):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous content")
    with pytest.raises(RuntimeError, match="^writer failed$"):  # the writer's own error, neither wrapped nor replaced
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert log == []


def test_the_temporary_name_keeps_the_suffix_for_writers_that_read_it(tmp_path):
    """Writers that choose the format by the file name's suffix (matplotlib's savefig, named in the
    docstring) or append one (numpy's save) used to get '....tmp': savefig raised "Format 'tmp' is
    not supported", and np.save wrote a stray '....tmp.npy' and left the target empty."""
    np = pytest.importorskip("numpy")
    target = tmp_path / "a.npy"
    with atomic.atomic_path(target) as tmp:
        assert tmp.suffix == ".npy" and tmp.name.startswith(".a.npy.")
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(target), [0, 1, 2])
    assert os.listdir(tmp_path) == ["a.npy"]
    figure = pytest.importorskip("matplotlib.figure")
    with atomic.atomic_path(tmp_path / "fig.png") as tmp:
        figure.Figure(figsize=(1, 1)).savefig(tmp)  # no pyplot: no backend, no global state
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "fig.png"]


def test_write_json_is_strict_json(tmp_path):
    """json.dumps writes NaN and Infinity bare (not JSON); metrics.json of an evaluation where a class
    has no hit, or a diverged training's loss, then failed in jq and JavaScript. They are null now."""
    import json

    import numpy as np

    obj = {"eff": [0.5, float("nan"), np.float64("inf")], "nested": ({"loss": -float("inf")},), "n": 3, "s": "x"}
    path = atomic.write_json(tmp_path / "m.json", obj, indent=1)

    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "eff": [0.5, None, None], "nested": [{"loss": None}], "n": 3, "s": "x"}
