"""Review 15: NuGraph2's jraph form and event I/O (jraph_model, jraph_batch, event, hdf5)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxinterp.nugraph import jraph_batch, jraph_model, model
from jaxinterp.nugraph.event import PLANES
from test_nugraph_graph import random_event

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=2)


def _events():
    rng = np.random.default_rng(15)
    return [random_event(rng, (12, 2, 7), 4, "a"), random_event(rng, (5, 9, 1), 3, "b")]


@pytest.fixture(scope="module")
def tiny_params():
    return model.init(jax.random.PRNGKey(0), TINY)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("form", ["apply_graphs", "apply"])
def test_both_forms_refuse_params_of_another_config(form, jit):
    """Params of a wider model ran silently under a narrower config in the jraph form (the output was
    the wider model's), and were a TypeError from a reshape deep inside the production form."""
    from jaxinterp.nugraph import graph

    wide = model.init(jax.random.PRNGKey(0), model.NuGraph2Config(planar_features=16, nexus_features=4, num_iters=2))
    if form == "apply_graphs":
        batch, run = jraph_batch.batch_graphs(_events()), jraph_model.apply_graphs
    else:
        batch, run = graph.pad_batch(_events()), model.apply
    fn = lambda p, b: run(p, b, config=TINY)  # noqa: E731
    with pytest.raises(ValueError, match=rf"^{form}: params: encoder/u/kernel expected shape \[5, 4, 8\].*got \[5, 4, 16\]"):
        (jax.jit(fn) if jit else fn)(wide, batch)


def test_apply_graphs_refuses_malformed_batches(tiny_params):
    """Mismatched index arrays and nodes without 'x' were jnp broadcasting/KeyError/IndexError messages."""
    jb = jraph_batch.batch_graphs(_events())
    cases = [
        (jb._replace(nexus_sp=(jb.nexus_sp[0][:-3],) + jb.nexus_sp[1:]),
         r"plane 'u' nexus_hits and nexus_sp must have one shape \[X\]"),
        (jb._replace(nexus_hits=jb.nexus_hits[:2]), r"expected 3 nexus index arrays in nexus_hits and nexus_sp, got 2 and 3"),
        (jb._replace(planes=(jb.planes[0]._replace(nodes={"h": jb.planes[0].nodes["x"]}),) + jb.planes[1:]),
         r"plane 'u' nodes must be a dict with the input features under 'x', got dict with keys \['h'\]"),
        (jb._replace(planes=jb.planes[:1] + (jb.planes[1]._replace(nodes=jb.planes[1].nodes["x"]),) + jb.planes[2:]),
         r"plane 'v' nodes must be a dict .* got ndarray"),
        (jb._replace(planes=jb.planes[:2] + (jb.planes[2]._replace(receivers=jb.planes[2].receivers[:-1]),)),
         r"plane 'y' senders and receivers must have one shape \[E\]"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            jraph_model.apply_graphs(tiny_params, bad, config=TINY)
    out = jraph_model.apply_graphs(tiny_params, jb, config=TINY)  # the well-formed batch still runs
    assert [o.shape[0] for o in out.x_filter] == list(jb.sizes.nodes)


@pytest.mark.parametrize("dtype", [object, "U3"])
def test_validate_names_non_numeric_features(dtype):
    """x of strings or objects was a TypeError from np.isfinite, naming neither plane nor field."""
    e = _events()[0]
    bad = e._replace(planes={**e.planes, "v": e.planes["v"]._replace(x=np.zeros((2, 4), dtype))})
    with pytest.raises(ValueError, match=r"event 'a', plane 'v', field 'x': expected numbers, got dtype"):
        jraph_batch.batch_graphs([bad])


def test_validate_refuses_a_bool_space_point_count():
    """num_sp=True passed as the integer 1 and the error blamed the nexus edges ('out of range [0, True)')."""
    e = _events()[0]
    with pytest.raises(ValueError, match=r"event 'a': num_sp must be a non-negative integer, got True"):
        jraph_batch.batch_graphs([e._replace(num_sp=True)])


FIXTURE_H5 = "tests/fixtures/nugraph2_events.gnn.h5"


def _raw_and_norm():
    from jaxinterp.nugraph import hdf5

    return hdf5.read_events(FIXTURE_H5).events[0], hdf5.read_info(FIXTURE_H5).norm


def test_to_event_refuses_a_bad_norm():
    """A norm without a plane was KeyError 'y', one of the wrong width a numpy broadcast error, and a
    zero std turned every feature into inf (the error then blamed 'x', not the norm)."""
    from jaxinterp.nugraph import hdf5

    raw, norm = _raw_and_norm()
    cases = [
        ({p: v for p, v in norm.items() if p != "y"}, r"norm: .* plane 'y' is missing"),
        ({**norm, "u": norm["u"][:, :3]}, r"norm\['u'\]: expected shape \[2, 4\] \(mean, std\), got \[2, 3\]"),
        ({**norm, "v": np.stack([norm["v"][0], np.zeros(4, np.float32)])}, r"norm\['v'\]: expected std .* > 0"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=rf"event '{raw.name}': {msg}"):
            hdf5.to_event(raw, bad)
    assert hdf5.to_event(raw, norm).planes["u"].x.shape == (raw.planes["u"].pos.shape[0], 4)


def test_to_event_refuses_bad_raw_hits():
    """pos and x of different hit counts were a numpy concatenate error; NaN in a raw x came out as NaN features."""
    from jaxinterp.nugraph import hdf5

    raw, norm = _raw_and_norm()
    u = raw.planes["u"]
    n = u.pos.shape[0]
    cases = [
        (u._replace(x=u.x[:-1]), rf"plane 'u', field 'u/x': expected \[{n}, 2\] .* got \[{n - 1}, 2\]"),
        (u._replace(pos=u.pos[:, :1]), rf"plane 'u', field 'u/pos': expected \[{n}, 2\] .* got \[{n}, 1\]"),
        (u._replace(x=np.where(np.arange(n)[:, None] == 3, np.nan, u.x)),
         r"plane 'u', field 'u/x': expected finite values, got NaN or inf at 1 of .* \(first: hit 3\)"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            hdf5.to_event(raw._replace(planes={**raw.planes, "u": bad}), norm)


def test_write_events_refuses_names_it_cannot_read_back(tmp_path):
    """A key with '/' was written as nested groups: the file was written, then reading it failed
    ("'/dataset/a' is a Group"). Now refused before anything is written."""
    from jaxinterp.nugraph import hdf5

    raw, norm = _raw_and_norm()
    out = tmp_path / "w.gnn.h5"
    with pytest.raises(ValueError, match=r"events: expected event names usable as an HDF5 dataset name .* got 'a/b'"):
        hdf5.write_events(out, [raw._replace(key="a/b")], splits={"train": ["a/b"]}, norm=norm)
    assert list(tmp_path.iterdir()) == []
    hdf5.write_events(out, [raw._replace(key="a_b")], splits={"train": ["a_b"]}, norm=norm)
    assert [e.name for e in hdf5.read_events(out).events] == ["a_b"]


def test_write_events_to_a_folder_is_refused_before_writing(tmp_path):
    """The whole file was written to a temporary name, then the rename failed with IsADirectoryError."""
    from jaxinterp.nugraph import hdf5

    raw, norm = _raw_and_norm()
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"path: expected a file name to write, got the folder"):
        hdf5.write_events(folder, [raw], splits={"train": [raw.name]}, norm=norm)
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


def _readme_jraph_snippet() -> str:
    """The code block after the README's "The same network in jraph form" paragraph."""
    import os

    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    start = text.index("```python", text.index("The same network in jraph form")) + len("```python")
    return text[start:text.index("```", start)]


def test_readme_jraph_snippet_runs_as_written_and_matches_model_apply(tiny_params):
    """The snippet used `jax.jit` without importing jax (a NameError when run on its own). Run as written
    on a padded batch of events of different sizes (a plane of 1 and of 2 hits, no planar edge), its
    outputs equal `model.apply`'s to float32 rounding and the padding rows stay out of the real ones."""
    import types

    from jaxinterp.nugraph import graph

    rng = np.random.default_rng(3)
    events = _events() + [random_event(rng, (30, 1, 18), 9, "c"), random_event(rng, (2, 14, 3), 2, "d")]
    ckpt = types.SimpleNamespace(params=tiny_params, config=TINY)
    scope = {"events": events, "ckpt": ckpt}
    exec(compile(_readme_jraph_snippet(), "README.md", "exec"), scope)
    out, batch = scope["out"], scope["batch"]
    ref = model.apply(tiny_params, graph.pad_batch(events), config=TINY)
    for pi, p in enumerate(PLANES):
        mask = jraph_batch.node_masks(batch)[pi]
        n = sum(e.planes[p].x.shape[0] for e in events)
        assert mask.sum() == n and mask[:n].all()
        np.testing.assert_allclose(out.x_semantic[pi][:n], ref.x_semantic[pi, :n], rtol=0, atol=2e-6)
        np.testing.assert_allclose(out.x_filter[pi][:n], ref.x_filter[pi, :n], rtol=0, atol=2e-6)


def test_apply_graphs_refuses_out_of_range_indices_eagerly(tiny_params):
    """A hand-built batch with an edge or nexus index past its node set ran: jnp gathers clamped it and
    segment sums dropped it, so the outputs were silently wrong."""
    jb = jraph_batch.batch_graphs(_events())
    N = jb.sizes.nodes
    g = jb.planes[1]
    cases = [
        (jb._replace(planes=jb.planes[:1] + (g._replace(senders=np.where(np.arange(len(g.senders)) == 0, N[1],
                                                                        g.senders)),) + jb.planes[2:]),
         rf"plane 'v' senders: index {N[1]} out of range \[0, {N[1]}\)"),
        (jb._replace(nexus_hits=(np.r_[jb.nexus_hits[0][:-1], -1].astype(np.int32),) + jb.nexus_hits[1:]),
         rf"plane 'u' nexus_hits: index -1 out of range \[0, {N[0]}\)"),
        (jb._replace(nexus_sp=jb.nexus_sp[:2] + (jb.nexus_sp[2] + jb.sizes.sp,)),
         rf"plane 'y' nexus_sp: index \d+ out of range \[0, {jb.sizes.sp}\) \({jb.sizes.sp} space points\)"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            jraph_model.apply_graphs(tiny_params, bad, config=TINY)


def test_read_events_refuses_a_single_name_string_and_an_absent_split(tmp_path):
    """names="r1_sr1_evt0" was read character by character ("missing dataset '/dataset/r'"), and a split
    whose /samples dataset is absent read as zero events, silently."""
    import shutil

    import h5py

    from jaxinterp.nugraph import hdf5

    raw, _ = _raw_and_norm()
    with pytest.raises(ValueError, match=rf"names: expected a list of event names, got the single string '{raw.name}'"):
        hdf5.read_events(FIXTURE_H5, names=raw.name)
    assert [e.name for e in hdf5.read_events(FIXTURE_H5, names=[raw.name]).events] == [raw.name]
    path = tmp_path / "no_test.gnn.h5"
    shutil.copy(FIXTURE_H5, path)
    with h5py.File(path, "r+") as f:
        del f["samples/test"]
    with pytest.raises(ValueError, match=r"missing dataset '/samples/test' \(the file has splits \['train', 'validation'\]\)"):
        hdf5.read_events(path, "test")
    with pytest.raises(ValueError, match=r"missing dataset '/samples/test'"):
        hdf5.load_events(path, "test")
    assert len(hdf5.read_events(path, "train").events) > 0
