"""Review 18, second pass: hostmem reads the malloc environment variables as glibc does."""

from __future__ import annotations

import pytest

from jaxinterp import hostmem

# ----------------------------------------------------------------------------- hostmem

_VARS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
_GLIBC = (hostmem._DEFAULT_ARENA_MAX, 65536, 128 * 1024)


def _restored(monkeypatch, env: dict, version: tuple[int, int]) -> tuple[int, int, int]:
    """What restore_defaults hands mallopt (arenas, mmap max, trim threshold) under `env` and a glibc
    of `version`."""
    for var in _VARS + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(hostmem, "_glibc_version", lambda: version, raising=False)
    calls: dict = {}
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.__setitem__(k, v) or 1))
    assert hostmem.restore_defaults() is True
    return calls[hostmem._M_ARENA_MAX], calls[hostmem._M_MMAP_MAX], calls[hostmem._M_TRIM_THRESHOLD]


# What glibc's loader reads (_dl_strtoul, then the tunable's bounds), checked against
# `ld.so --list-tunables` of glibc 2.36 for each value: leading spaces, tabs and a sign are taken by
# every glibc with tunables (2.26 on); a size_t tunable takes -1 (2**64 - 1) and values past 2**31.
@pytest.mark.parametrize("version", [(2, 36), (2, 39)])
@pytest.mark.parametrize("env, want", [
    ({"MALLOC_ARENA_MAX": "+2", "MALLOC_MMAP_MAX_": " 16", "MALLOC_TRIM_THRESHOLD_": "\t0x100"}, (2, 16, 256)),
    # never trim, as glibc read it (mallopt's int -1 is glibc's size_t 2**64 - 1 again)
    ({"MALLOC_TRIM_THRESHOLD_": "-1"}, (_GLIBC[0], _GLIBC[1], -1)),
    # past mallopt's int: the nearest it can set, not glibc's 128 KiB / 8 arenas a core
    ({"MALLOC_TRIM_THRESHOLD_": "4294967296", "MALLOC_ARENA_MAX": "-1"}, (2**31 - 1, _GLIBC[1], 2**31 - 1)),
    # an int32 tunable: out of its range, ignored
    ({"MALLOC_MMAP_MAX_": "2147483648"}, _GLIBC),
    ({"MALLOC_MMAP_MAX_": "-1", "MALLOC_ARENA_MAX": "0"}, _GLIBC),
])
def test_environment_values_are_read_as_glibc_reads_them(monkeypatch, env, want, version):
    assert _restored(monkeypatch, env, version) == want


@pytest.mark.parametrize("env, before_2_39, from_2_39", [
    # glibc before 2.39 reads the number a value starts with (none: 0); 2.39 on ignores such a value
    ({"MALLOC_MMAP_MAX_": "many"}, (_GLIBC[0], 0, _GLIBC[2]), _GLIBC),
    ({"MALLOC_ARENA_MAX": "4 arenas", "MALLOC_TRIM_THRESHOLD_": "5 "}, (4, _GLIBC[1], 5), _GLIBC),
    ({"MALLOC_ARENA_MAX": "08"}, _GLIBC, _GLIBC),  # octal 0 then '8': 0 arenas, below the minimum
    ({"MALLOC_TRIM_THRESHOLD_": "08"}, (_GLIBC[0], _GLIBC[1], 0), _GLIBC),
    # glibc's overflow test stops at the last digit of 2**64 - 1 and reads 2**64 - 1: no longer all read
    ({"MALLOC_TRIM_THRESHOLD_": "18446744073709551615"}, (_GLIBC[0], _GLIBC[1], -1), _GLIBC),
    # the empty value and a lone 0x are all number (0) to both
    ({"MALLOC_MMAP_MAX_": "", "MALLOC_TRIM_THRESHOLD_": "0x"}, (_GLIBC[0], 0, 0), (_GLIBC[0], 0, 0)),
])
def test_trailing_text_is_read_as_the_running_glibc_reads_it(monkeypatch, env, before_2_39, from_2_39):
    assert _restored(monkeypatch, env, (2, 36)) == before_2_39
    assert _restored(monkeypatch, env, (2, 39)) == from_2_39


def test_the_glibc_version_is_read_from_the_c_library(monkeypatch):
    monkeypatch.setattr(hostmem.os, "confstr", lambda name: "glibc 2.39", raising=False)
    assert hostmem._glibc_version() == (2, 39)
    monkeypatch.setattr(hostmem.os, "confstr", lambda name: "musl 1.2", raising=False)
    assert hostmem._glibc_version() == (0, 0)


def test_retain_with_an_arena_per_thread_restores_a_signed_arena_limit(monkeypatch):
    """one_arena=False: MALLOC_ARENA_MAX=+3 is 3 arenas to glibc, not its default."""
    for var in _VARS + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "+3")
    calls: dict = {}
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.__setitem__(k, v) or 1))
    assert hostmem.retain_freed_memory(one_arena=False) is True
    assert calls[hostmem._M_ARENA_MAX] == 3



# GLIBC_TUNABLES, the variable glibc documents for these (checked against ld.so --list-tunables of
# 2.36; 2.39's stricter reading as its dl-tunables.c parses the string)
@pytest.mark.parametrize("tunables, alias, before_2_39, from_2_39", [
    ("glibc.malloc.arena_max=3:glibc.malloc.mmap_max=+9:glibc.malloc.trim_threshold=-1", None, (3, 9, -1), (3, 9, -1)),
    # a valid tunable wins over the variable, whichever comes first in the environment
    ("glibc.malloc.arena_max=3", "7", (3, _GLIBC[1], _GLIBC[2]), (3, _GLIBC[1], _GLIBC[2])),
    # one glibc ignores leaves the variable's
    ("glibc.malloc.arena_max=0", "7", (7, _GLIBC[1], _GLIBC[2]), (7, _GLIBC[1], _GLIBC[2])),
    # before 2.39 a later invalid value leaves an earlier valid one; 2.39 takes the last alone
    ("glibc.malloc.arena_max=3:glibc.malloc.arena_max=0", None, (3, _GLIBC[1], _GLIBC[2]), _GLIBC),
    ("foo:glibc.malloc.arena_max=5:bar", None, (5, _GLIBC[1], _GLIBC[2]), _GLIBC),  # 2.39: a name ends it
    ("glibc.malloc.arena_max=3=4", "7", (3, _GLIBC[1], _GLIBC[2]), (7, _GLIBC[1], _GLIBC[2])),
    ("::glibc.malloc.arena_max=2::", None, (2, _GLIBC[1], _GLIBC[2]), _GLIBC),
    ("glibc.malloc.arena_maxx=5:glibc.malloc.mmap_max", None, _GLIBC, _GLIBC),
])
def test_glibc_tunables_are_read_as_glibc_reads_them(monkeypatch, tunables, alias, before_2_39, from_2_39):
    env = {"GLIBC_TUNABLES": tunables, **({"MALLOC_ARENA_MAX": alias} if alias is not None else {})}
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _restored(monkeypatch, env, (2, 36)) == before_2_39
    assert _restored(monkeypatch, env, (2, 39)) == from_2_39

# ----------------------------------------------------------------------------- nugraph save_params


def test_save_params_writes_through_a_symbolic_link_beside_its_target(tmp_path):
    """save_params staged beside the link and renamed onto it: the link became a folder, the checkpoint
    it pointed to was left stale, and the staging copy was written on the link's file system. Now it
    writes through to the link's target, staged beside the target (as atomic_path since 49bbea2)."""
    import os

    import jax
    import numpy as np

    from jaxinterp.nugraph import checkpoint, model

    tiny = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)
    params = model.init(jax.random.PRNGKey(0), tiny)
    store, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    real = checkpoint.save_params(store / "params", params)
    link = work / "params"
    link.symlink_to(real)
    doubled = jax.tree.map(lambda a: a * 2, params)
    staged = []
    orig_mkdtemp = checkpoint.tempfile.mkdtemp

    def mkdtemp(*a, **kw):
        staged.append(kw["dir"])
        return orig_mkdtemp(*a, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(checkpoint.tempfile, "mkdtemp", mkdtemp)
        checkpoint.save_params(link, doubled)
    assert link.is_symlink() and os.readlink(link) == str(real)
    for a, b in zip(jax.tree.leaves(checkpoint.load_params(real, config=tiny)), jax.tree.leaves(doubled)):
        np.testing.assert_array_equal(a, b)
    assert staged == [store]  # on the target's file system, not the link's
    assert sorted(os.listdir(store)) == ["params"] and sorted(os.listdir(work)) == ["params"]
    # a link loop is a ValueError before anything is written
    (work / "x").symlink_to(work / "y")
    (work / "y").symlink_to(work / "x")
    with pytest.raises(ValueError, match="symbolic link loop"):
        checkpoint.save_params(work / "x", params)
    assert sorted(os.listdir(work)) == ["params", "x", "y"]


# ----------------------------------------------------------------------------- atomic


@pytest.mark.parametrize("through_link", [False, True])
def test_an_atomic_write_keeps_the_replaced_files_owner_and_group(tmp_path, through_link):
    """open(path, 'w') keeps a file's owner and group; the rename handed the file to the writer (a
    shared 0660 file left its group; through a link, since 49bbea2, the link's target too). Now the
    replaced file's owner and group stay where the process may give them (root: both)."""
    import os

    from jaxinterp import atomic

    real = tmp_path / "data" / "metrics.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o640)
    if os.geteuid() == 0:
        os.chown(real, 12345, 23456)
        want = (12345, 23456)
    else:  # without privilege: another group of this user's where there is one
        others = [g for g in os.getgroups() if g != os.getegid()]
        if others:
            os.chown(real, -1, others[0])
        want = (os.geteuid(), others[0] if others else os.getegid())
    target = real
    if through_link:
        target = tmp_path / "metrics.json"
        target.symlink_to(real)
    atomic.write_text(target, "new")
    st = os.stat(real)
    assert real.read_text() == "new" and (st.st_uid, st.st_gid) == want and st.st_mode & 0o7777 == 0o640
    assert target.is_symlink() == through_link


def test_a_link_into_a_missing_folder_or_to_a_folder_is_refused_before_the_writer_runs(tmp_path):
    """A dangling link's target is created, as open does, but its missing folders were made too (open
    fails: ENOENT), writing where nobody looks; a link to a folder failed in os.replace only after the
    writer's work. Both are ValueErrors now, before the writer runs, and nothing is created."""
    import os

    from jaxinterp import atomic

    away = tmp_path / "mnt" / "disk"  # a mount point with nothing mounted: empty
    away.mkdir(parents=True)
    link = tmp_path / "out.json"
    link.symlink_to(away / "run7" / "metrics.json")
    ran = []
    with pytest.raises(ValueError, match="whose folder does not exist"):
        with atomic.atomic_path(link):
            ran.append(1)
    assert not ran and os.listdir(away) == [] and link.is_symlink()
    folder = tmp_path / "results"
    folder.mkdir()
    (tmp_path / "to_folder").symlink_to(folder)
    for target in (folder, tmp_path / "to_folder"):
        with pytest.raises(ValueError, match="expected a file name to write, got the folder"):
            with atomic.atomic_path(target):
                ran.append(1)
    assert not ran and os.listdir(folder) == []
