"""Review 18, second pass: save_params and atomic writes through symbolic links, owners kept, bad targets
refused before the writer runs."""

from __future__ import annotations

import pytest

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
