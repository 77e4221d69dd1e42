"""Review 18: merge demo seeds, the toy-world tokenizer's length, host memory settings restored,
the NuGraph2 demo's latency timing, `merge barrier --devices`."""

from __future__ import annotations

import pytest

from jaxinterp import hostmem

# ----------------------------------------------------------------------------- hostmem


def _recorded(monkeypatch) -> dict:
    calls: dict = {}
    monkeypatch.setattr(hostmem, "_mallopt", lambda: (lambda k, v: calls.__setitem__(k, v) or 1))
    return calls


@pytest.mark.parametrize("env, want", [
    # nothing set: glibc's defaults
    ({}, (hostmem._DEFAULT_ARENA_MAX, 65536, 128 * 1024)),
    # the user's values (as glibc's tunables read them: decimal, 0x hex, 0 octal) were replaced by glibc's
    ({"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_MAX_": "0x10", "MALLOC_TRIM_THRESHOLD_": "0400"}, (2, 16, 256)),
    ({"MALLOC_ARENA_MAX": "1"}, (1, 65536, 128 * 1024)),
    # values every glibc ignores (below the minimum of 1 arena, below 0 maps) leave glibc's defaults
    # ("+5" is 5 to glibc, and "many" 0 before 2.39: test_review18_r2)
    ({"MALLOC_ARENA_MAX": "0", "MALLOC_MMAP_MAX_": "-1"}, (hostmem._DEFAULT_ARENA_MAX, 65536, 128 * 1024)),
])
def test_restore_defaults_restores_the_environments_malloc_settings(monkeypatch, env, want):
    for var in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    calls = _recorded(monkeypatch)
    assert hostmem.retain_freed_memory() is True
    assert hostmem.restore_defaults() is True
    assert (calls[hostmem._M_ARENA_MAX], calls[hostmem._M_MMAP_MAX], calls[hostmem._M_TRIM_THRESHOLD]) == want
    # an arena per thread after the one-arena call: the environment's limit again (it stayed at 1)
    calls.clear()
    assert hostmem.retain_freed_memory(one_arena=False) is True
    assert calls == {hostmem._M_ARENA_MAX: want[0], hostmem._M_MMAP_MAX: 0, hostmem._M_TRIM_THRESHOLD: 2**31 - 1}


# ----------------------------------------------------------------------------- merge demo


class _Stop(Exception):
    pass


def _demo_keys(monkeypatch, seed) -> list:
    """The keys merge.demo.run(seed=seed) draws its three MLPs and its Bezier curve from (training
    skipped: only the keys are wanted; the run stops at the third MLP's init)."""
    import jax
    import numpy as np

    from jaxinterp.merge import curves, demo, mlp

    keys, real_init = [], mlp.init

    def init(key, sizes):
        keys.append(tuple(np.asarray(jax.random.key_data(key)).ravel().tolist()))
        if len(keys) == 4:  # models A, B, the curve, the base
            raise _Stop
        return real_init(key, sizes)

    def fit_bezier(loss, pa, pb, batches, *, key, **kw):
        keys.append(tuple(np.asarray(jax.random.key_data(key)).ravel().tolist()))
        return type("Fit", (), {"bend": pa})

    with monkeypatch.context() as m, pytest.raises(_Stop):
        m.setattr(mlp, "init", init)
        m.setattr(mlp, "train", lambda params, *a, **k: params)
        m.setattr(curves, "fit_bezier", fit_bezier)
        demo.run(quick=True, seed=seed)
    assert len(keys) == 4
    return keys


def test_merge_demo_keys_alias_no_other_seeds_keys(monkeypatch):
    """PRNGKey(seed + k): seed 0's model B was seed 1's model A (and seed 1's curve key seed 0's model
    A), and seed 2**32 - 1's model A wrapped to seed 0's key. The k-th key is now folded into the seed's."""
    seeds = (0, 1, 2, 2**32 - 1)
    keys = {s: _demo_keys(monkeypatch, s) for s in seeds}
    flat = [k for s in seeds for k in keys[s]]
    assert len(set(flat)) == len(flat), keys
    assert _demo_keys(monkeypatch, 1) == keys[1]  # deterministic


@pytest.mark.parametrize("seed, got", [(2**32, "got 4294967296"), (-1, "got -1"), (1.5, "got 1.5"), (True, "got True")])
def test_merge_demo_refuses_a_seed_outside_32_bits_before_any_work(monkeypatch, seed, got):
    from jaxinterp.merge import demo, mlp

    monkeypatch.setattr(mlp, "load_digits", lambda *a, **k: pytest.fail("the data was read first"))
    with pytest.raises(ValueError, match=r"^seed: expected an integer in \[0, 2\*\*32\).*" + got):
        demo.run(seed=seed)


# ----------------------------------------------------------------------------- toy-world tokenizer


def test_toyworld_tokenizer_length_follows_the_models_n_positions(tmp_path):
    """The tokenizer kept model_max_length 64 whatever `toyworld train --n-positions` said: a 48-position
    model's folder said 64 (and the shipped 32-position model's too). Now the model's n_positions."""
    from jaxinterp.toyworld import MODEL_DIR
    from jaxinterp.toyworld import train as trainmod
    from jaxinterp.toyworld.world import WorldConfig
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    cfg = trainmod.TrainConfig(n_layer=1, n_embd=16, n_head=2, vocab_size=320, n_positions=48, batch_size=4, steps=1,
                               warmup_steps=0)
    world = WorldConfig(n_countries=2, cities_per_country=2, n_people=6, n_companies=2, seed=3)
    r = trainmod.train(tmp_path, world_config=world, cfg=cfg, progress=False)
    assert r.tokenizer.model_max_length == 48
    assert load_tokenizer(tmp_path / "model").model_max_length == load_gpt2(tmp_path / "model")[1].n_positions == 48
    assert load_tokenizer(MODEL_DIR).model_max_length == load_gpt2(MODEL_DIR)[1].n_positions == 32


@pytest.mark.parametrize("length", [0, -1, 2.5, True, "64"])
def test_toyworld_tokenizer_refuses_a_length_that_is_no_positive_integer(length):
    from jaxinterp.toyworld import tokenizer as toktools

    with pytest.raises(ValueError, match=r"^model_max_length: expected a positive integer \(the model's n_positions\), "
                                         rf"got {length!r}$".replace("'", "'").replace(".", r"\.")):
        toktools.train_tokenizer(["a b c."], vocab_size=300, model_max_length=length)


# ----------------------------------------------------------------------------- NuGraph2 demo latency


def test_nugraph_demo_times_the_jitted_forward_on_device_resident_events(tmp_path, monkeypatch):
    """The section's latency timed fn(params, numpy_event): each timed call copied the event to the
    device. Now every call to the forward gets arrays already on the device, and the timing (the shared
    benchtools.time_fn: compile apart, block_until_ready, median) calls the jitted forward itself."""
    import jax

    from jaxinterp import benchtools
    from jaxinterp.nugraph import demo_events, predict

    calls, timing, real_forward, real_time_fn = [], [], predict.forward, benchtools.time_fn

    def forward(config):
        fn = real_forward(config)

        def spy(params, batch):
            leaves = jax.tree.leaves((params, batch))
            calls.append((bool(timing), all(isinstance(x, jax.Array) for x in leaves)))
            return fn(params, batch)

        return spy

    def time_fn(f, **kw):
        timing.append(True)
        try:
            return real_time_fn(f, **kw)
        finally:
            timing.pop()

    monkeypatch.setattr(predict, "forward", forward)
    monkeypatch.setattr(benchtools, "time_fn", time_fn)
    demo_events.section(tmp_path, quick=True)
    timed = [device for in_timing, device in calls if in_timing]
    assert len(timed) == 3 * 2  # 3 events: the first (compiling) call and one timed repeat each
    assert all(device for _, device in calls), calls


# ----------------------------------------------------------------------------- merge barrier --devices

_BARRIER_DEVICES = r"""
import contextlib, io, json, sys
import jax
import numpy as np
from jaxinterp import cli
from jaxinterp.merge import cli as merge_cli, landscape, mlp

out = sys.argv[1]
assert len(jax.devices()) == 2, jax.devices()
for s in (1, 2):
    merge_cli._save_params(mlp.init(jax.random.PRNGKey(s)), f"{out}/{s}.safetensors")
seen, real = [], landscape.linear_path
landscape.linear_path = lambda *a, mesh=None, **k: seen.append(mesh) or real(*a, mesh=mesh, **k)
paths = {}
for devices in ([], ["--devices", "2"], ["--devices", "1"]):
    js = f"{out}/{len(devices) and devices[1]}.json"
    assert cli.main(["merge", "barrier", f"{out}/1.safetensors", f"{out}/2.safetensors", "--align", "--num", "5",
                     "--json", js, *devices]) == 0
    paths[tuple(devices)] = json.load(open(js))["paths"]
assert seen[:2] == [None, None], seen
assert [m.devices.size for m in seen[2:]] == [2, 2, 1, 1], seen
assert [d.id for d in seen[2].devices.flat] == [0, 1]
for devices in (("--devices", "2"), ("--devices", "1")):
    for name, p in paths[()].items():
        q = paths[devices][name]
        assert q["alphas"] == p["alphas"]
        np.testing.assert_allclose(q["losses"], p["losses"], rtol=1e-6)
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = cli.main(["merge", "barrier", f"{out}/1.safetensors", f"{out}/2.safetensors", "--devices", "3",
                   "--json", f"{out}/3.json"])
assert rc == 2, rc
assert err.getvalue() == ("jaxinterp merge: error: --devices: expected at most 2 (the cpu devices JAX sees; "
                          "XLA_FLAGS=--xla_force_host_platform_device_count=N makes N of a CPU), got 3\n"), err.getvalue()
assert len(seen) == 6  # refused before any path was computed
import os
assert not os.path.exists(f"{out}/3.json")
print("OK")
"""


def test_merge_barrier_splits_the_alphas_over_the_first_n_devices(tmp_path):
    """`merge barrier` had no way to use several devices (the Python API has mesh=): --devices N splits
    the alphas over the first N (parallel.make_mesh), with the one-device losses; more than JAX sees is
    refused before anything is computed."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _BARRIER_DEVICES, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout


def test_merge_barrier_devices_takes_a_positive_count(capsys):
    from jaxinterp import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["merge", "barrier", "a", "b", "--devices", "0"])
    assert e.value.code == 2 and "argument --devices: expected a positive integer, got 0" in capsys.readouterr().err
