"""Review 15: NuGraph2 predict across host devices, the README's CPU throughput recipe, bad meshes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxinterp import parallel
from jaxinterp.nugraph import graph, model, predict as predict_mod
from test_nugraph_graph import random_event

TINY = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
TESTS = os.path.dirname(__file__)
README = os.path.join(TESTS, os.pardir, "README.md")


def _run(script: str, devices: int, *args: str) -> str:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script), TESTS, *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _readme_recipe() -> str:
    """The code block after README's "Throughput on a CPU" paragraph."""
    text = open(README).read()
    start = text.index("```python", text.index("Throughput on a CPU")) + len("```python")
    return text[start:text.index("```", start)]


def test_readme_cpu_recipe_on_two_host_devices_matches_one_device():
    """The README's recipe, run as written (hostmem before JAX's first computation, 2 host devices,
    batch_size=2), on events of very different sizes and counts that are not multiples of 2 (1, 3,
    7 events: a last chunk of one event leaves a device with none), equals predict on one device to
    float32 rounding; a second identical call compiles nothing new."""
    script = """
        import sys
        sys.path.insert(0, sys.argv[1])
        recipe = sys.argv[2]
        assert "retain_freed_memory(one_arena=False)" in recipe and "batch_size=2" in recipe, recipe
        import types
        import numpy as np
        from test_nugraph_graph import random_event
        rng = np.random.default_rng(5)
        shapes = [((5, 6, 7), 3), ((70, 60, 50), 25), ((3, 4, 2), 1), ((9, 9, 9), 4), ((110, 95, 80), 40),
                  ((2, 2, 2), 1), ((45, 3, 30), 10)]
        all_events = [random_event(rng, h, sp, f"e{k}") for k, (h, sp) in enumerate(shapes)]
        from jaxinterp.nugraph import model, predict
        config = model.NuGraph2Config(planar_features=8, nexus_features=4, num_iters=1)
        import jax
        ckpt = types.SimpleNamespace(params=model.init(jax.random.PRNGKey(3), config), config=config)
        from jaxinterp import parallel
        assert len(jax.devices()) == 2
        one = parallel.make_mesh(jax.devices()[:1])
        fn = predict.forward(config)
        worst = 0.0
        for n in (1, 3, 7):
            events = all_events[:n]
            scope = {"ckpt": ckpt, "events": events, "predict": predict}
            exec(recipe, scope)
            preds = scope["preds"]
            ref = [predict.predict(ckpt.params, [e], config=config, mesh=one)[0] for e in events]
            assert len(preds) == n
            for e, a, b in zip(events, preds, ref):
                for p in config.planes:
                    assert a.semantic[p].shape == (e.planes[p].x.shape[0], 5) and a.filter[p].shape == b.filter[p].shape
                    np.testing.assert_allclose(a.semantic[p].sum(-1), 1, atol=1e-5)
                    worst = max(worst, float(np.abs(a.semantic[p] - b.semantic[p]).max()),
                                float(np.abs(a.filter[p] - b.filter[p]).max()))
            assert worst < 1e-6, (n, worst)
        compiled, traces = fn._cache_size(), predict._trace_count[0]
        again = predict.predict(ckpt.params, all_events, config=config, batch_size=2)
        assert (fn._cache_size(), predict._trace_count[0]) == (compiled, traces)
        assert all(np.array_equal(a.semantic[p], b.semantic[p]) for a, b in zip(again, preds) for p in config.planes)
        print("ok", worst)
    """
    out = _run(script, 2, _readme_recipe())
    assert out.startswith("ok")


def test_batch_sizes_that_are_not_multiples_of_four_devices_match_one_device():
    """4 host devices, batch sizes 1, 2, 3, 5 and 6 (fewer events per call than devices, and not a
    multiple of them) on 6 events of mixed size: every event's outputs equal one device's."""
    script = """
        import sys
        sys.path.insert(0, sys.argv[1])
        import jax, numpy as np
        from test_nugraph_graph import random_event
        from test_review15_predict import TINY
        from jaxinterp import parallel
        from jaxinterp.nugraph import model, predict
        assert len(jax.devices()) == 4
        rng = np.random.default_rng(9)
        events = [random_event(rng, h, sp, str(k)) for k, (h, sp) in
                  enumerate([((4, 5, 6), 2), ((80, 70, 66), 30), ((7, 7, 7), 3), ((3, 50, 9), 5),
                             ((20, 2, 2), 2), ((33, 31, 29), 12)])]
        params = model.init(jax.random.PRNGKey(1), TINY)
        ref = predict.predict(params, events, config=TINY, batch_size=1, mesh=parallel.make_mesh(jax.devices()[:1]))
        worst = 0.0
        for bs in (1, 2, 3, 5, 6):
            got = predict.predict(params, events, config=TINY, batch_size=bs)
            assert len(got) == len(events)
            for a, b in zip(got, ref):
                for p in TINY.planes:
                    worst = max(worst, float(np.abs(a.semantic[p] - b.semantic[p]).max()),
                                float(np.abs(a.filter[p] - b.filter[p]).max()))
        assert worst < 1e-6, worst
        print("ok", worst)
    """
    assert _run(script, 4).startswith("ok")


@pytest.mark.parametrize("mesh, message", [
    (jax.devices(), r"predict: mesh: expected a jax.sharding.Mesh \(parallel.make_mesh\(devices\)\), got list"),
    (1, r"predict: mesh: expected a jax.sharding.Mesh .*, got int"),
    (Mesh(np.asarray(jax.devices()), ("batch",)), r"predict: mesh: expected a mesh with the axis 'data', "
                                                  r"got axes \('batch',\)"),
])
def test_a_mesh_that_is_not_a_data_mesh_is_a_value_error(mesh, message):
    """A list of devices or a count was an AttributeError ('list' object has no attribute 'size'),
    after params were checked; a mesh without the "data" axis failed in device_put on several devices."""
    params = model.init(jax.random.PRNGKey(0), TINY)
    events = [random_event(np.random.default_rng(0), (4, 5, 6), 2, "a")]
    with pytest.raises(ValueError, match=message):
        predict_mod.predict(params, events, config=TINY, mesh=mesh)
    with pytest.raises(ValueError, match=message.replace("predict:", "prepare:")):
        predict_mod.prepare(events, config=TINY, mesh=mesh)
    assert parallel.check_mesh(parallel.make_mesh()).axis_names == (parallel.DATA,)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_an_arena_per_thread_after_an_earlier_one_arena_call():
    """retain_freed_memory(one_arena=False) after retain_freed_memory() said True but left glibc's
    limit at one arena: 4 threads allocating side by side shared 1 heap (malloc_info). Now they get
    arenas of their own, as in a process that never asked for one arena."""
    script = """
        import ctypes, ctypes.util, os, re, sys, tempfile, threading
        from jaxinterp import hostmem
        os.environ.pop("MALLOC_ARENA_MAX", None)
        assert hostmem.retain_freed_memory() and hostmem.retain_freed_memory(one_arena=False)
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        barrier = threading.Barrier(4)

        def work():
            barrier.wait()  # all four threads alive at once: none can take over a finished one's arena
            blocks = [libc.malloc(1 << 20) for _ in range(4)]
            barrier.wait()
            for b in blocks:
                libc.free(b)
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "info.xml")
            f = libc.fopen(path.encode(), b"w")
            libc.malloc_info(0, f)
            libc.fclose(f)
            print("heaps", len(re.findall(r"<heap nr=", open(path).read())))
    """
    out = _run(script, 1)
    assert int(out.split()[-1]) >= 4  # main's heap and 3 or 4 threads' (was 1)


@pytest.mark.parametrize("shards", [0, -1, 2.5, True])
def test_split_events_into_no_group_is_a_value_error(shards):
    """shards 0 or -1 returned no group, dropping every event silently; 2.5 was numpy's TypeError."""
    events = [random_event(np.random.default_rng(k), (4, 5, 6), 2, str(k)) for k in range(3)]
    with pytest.raises(ValueError, match=rf"split_events: shards must be an integer >= 1, got {shards!r}"):
        graph.split_events(events, shards)
    assert [[e.name for e in g] for g in graph.split_events(events, 4)] == [["0"], ["1"], ["2"], []]
