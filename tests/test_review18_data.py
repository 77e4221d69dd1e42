"""Review 18: the LArTPC data path (atomic writes through links and of long names, `nugraph simulate`)."""

from __future__ import annotations

import os

import pytest

from jaxinterp import atomic


# ---------------------------------------------------------------------------------------------
# atomic writes


@pytest.mark.parametrize("write", [
    lambda p: atomic.write_text(p, "new"),
    lambda p: _by_name(p, b"new"),
], ids=["write_text", "atomic_path"])
def test_a_write_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path, write):
    """The temporary was renamed onto the link itself: the link became a regular file with the new
    content and its target kept the old one."""
    real = tmp_path / "data" / "metrics.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "latest.json"
    link.symlink_to(os.path.join("data", "metrics.json"))  # relative, as `ln -s` makes them
    write(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("data", "metrics.json")
    assert real.read_text() == "new" and link.read_text() == "new"
    assert (real.stat().st_mode & 0o777) == 0o600  # the target's permissions kept
    assert sorted(os.listdir(tmp_path)) == ["data", "latest.json"]  # no temporary left anywhere
    assert os.listdir(real.parent) == ["metrics.json"]


def _by_name(path, data: bytes):
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def test_a_chain_of_links_and_a_dangling_link_are_written_through(tmp_path):
    real = tmp_path / "real.txt"
    (tmp_path / "b").symlink_to(real)  # dangling: open(path, "w") creates the target
    (tmp_path / "a").symlink_to(tmp_path / "b")
    atomic.write_text(tmp_path / "a", "first")
    assert real.read_text() == "first" and (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    atomic.write_text(tmp_path / "a", "second")
    assert real.read_text() == "second" and sorted(os.listdir(tmp_path)) == ["a", "b", "real.txt"]


def test_a_symbolic_link_loop_is_a_value_error_and_nothing_is_written(tmp_path):
    (tmp_path / "x").symlink_to(tmp_path / "y")
    (tmp_path / "y").symlink_to(tmp_path / "x")
    with pytest.raises(ValueError, match="symbolic link loop"):
        atomic.write_text(tmp_path / "x", "data")
    assert sorted(os.listdir(tmp_path)) == ["x", "y"] and (tmp_path / "x").is_symlink()


@pytest.mark.parametrize("name", ["a" * 251 + ".npy", "é" * 125 + ".h5", "b." + "c" * 253])
def test_a_target_name_near_the_length_limit_is_written(tmp_path, name):
    """The temporary was '.{name}.{8 hex}.tmp{suffix}': 18 bytes and the suffix over the name, so a
    name the file system takes (<= 255 bytes) failed on its temporary with ENAMETOOLONG."""
    assert len(os.fsencode(name)) <= 255
    target = tmp_path / name
    with atomic.atomic_path(target) as tmp:
        assert len(os.fsencode(tmp.name)) <= 80
        assert tmp.name.startswith(".") and ".tmp" in tmp.name
        if len(os.fsencode(target.suffix)) <= 16:  # a format's suffix is kept for writers that read it
            assert tmp.suffix == target.suffix
        tmp.write_bytes(b"long name")
    assert target.read_bytes() == b"long name" and os.listdir(tmp_path) == [name]


def test_temporary_names_are_random_beside_the_target(tmp_path):
    seen = set()
    for _ in range(20):
        with atomic.atomic_path(tmp_path / "out.bin") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
            seen.add(tmp.name)
            tmp.write_bytes(b"x")
    assert len(seen) == 20


# ---------------------------------------------------------------------------------------------
# nugraph simulate --run


def test_simulate_run_help_says_it_only_names_the_events(capsys):
    """--run only renames events (r{R}_sr1_evt{i}): the same --seed with another --run is the same
    events. That stays (held-out sets and shipped metrics depend on which events a seed makes); the
    help said only 'run number of the events', which reads as another set of events."""
    from jaxinterp import cli

    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["nugraph", "simulate", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width
    assert ("--run RUN run number written into the events' metadata and names (r{run}_sr1_evt{i}); it only names "
            "them: the events depend on --seed alone, so the same --seed with another --run gives the same "
            "events under other names (use another --seed for new events)") in text


def test_the_same_seed_with_another_run_gives_the_same_events_renamed():
    import numpy as np

    from jaxinterp.nugraph import simulate

    cfg = simulate.SimConfig(max_hits_per_plane=150)
    a, b = simulate.simulate(2, seed=3, config=cfg, run=1), simulate.simulate(2, seed=3, config=cfg, run=9)
    assert [e.name for e in a] == ["r1_sr1_evt0", "r1_sr1_evt1"] and [e.name for e in b] == ["r9_sr1_evt0", "r9_sr1_evt1"]
    for ea, eb in zip(a, b):
        assert (ea.num_sp, ea.y, ea.event) == (eb.num_sp, eb.y, eb.event)
        for p in ea.planes:
            for x, y in zip(ea.planes[p], eb.planes[p]):
                np.testing.assert_array_equal(x, y)
