"""NuGraph2 inference: events in, per-plane class probabilities and filter probabilities out.

`predict` packs events into padded disjoint unions (bucketed sizes, chosen on the host), splits
each chunk of events over the devices of `jaxinterp.parallel`'s mesh (one padded union per device,
stacked on a leading axis that is sharded over "data"), and runs one jitted forward per distinct
bucket, so a stream of events of varying size compiles at most once per bucket.

A bucket is the padded hit count. The other padded sizes (planar edges beyond the neighbour table,
nexus edges, space points) are bucketed too, but each hit bucket keeps one entry for all of them
(`_SIZES`: the element-wise largest that a chunk of that bucket has needed so far), so the four
sizes do not multiply into a compilation per combination: 400 small events at batch 16 compiled 14
times before, 5 times now (once per hit bucket). A later chunk that needs more than its bucket's
entry widens it (one more compilation; each size can only grow along its own bucket grid).

On a CPU, call `jaxinterp.hostmem.retain_freed_memory()` before JAX's first computation (the
`jaxinterp` command does): without it every call page-faults its buffers afresh (batch 32: 18%
slower). A CPU's best throughput is one small union per core: start with
`XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`, call
`retain_freed_memory(one_arena=False)` and `predict(..., batch_size=<cores>)` (one event per device
per call, each in its own core's cache: ~0.019 s/event on 2 cores for ~1000-hit events, against
~0.024 for 32-event unions on one device).

Axis names: D devices, P planes, N hits per plane (padded), C classes.
"""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import parallel
from jaxinterp.checks import is_integer
from jaxinterp.nugraph import graph
from jaxinterp.nugraph.event import Event
from jaxinterp.nugraph.model import NuGraph2Config, Params, apply, check_params, cpu_compiler_options

_trace_count = [0]  # incremented each time the forward is traced (tests: no recompilation)


class Prediction(NamedTuple):
    """One event's predictions, per plane name."""

    semantic: dict[str, np.ndarray]  # [N, C] class probabilities (softmax of the logits)
    filter: dict[str, np.ndarray]  # [N] probability that the hit belongs to the interaction


def _probabilities(params: Params, batch: graph.GraphBatch, config: NuGraph2Config):
    _trace_count[0] += 1
    run = functools.partial(apply, config=config)
    out = jax.vmap(run, in_axes=(None, 0))(params, batch) if batch.x.ndim == 4 else run(params, batch)
    return jax.nn.softmax(out.x_semantic, axis=-1), out.x_filter


def forward(config: NuGraph2Config = NuGraph2Config()):
    """The jitted forward for `config`: (params, GraphBatch [D, ...] or unstacked) ->
    (probabilities [D, P, N, C], filter [D, P, N]); built once per config, compiled once per bucket
    (with `model.cpu_compiler_options()` on a CPU).

    `config` must be a NuGraph2Config (frozen, hashable: it is the cache and jit key); anything else
    is a ValueError (a dict was lru_cache's bare "unhashable type: 'dict'", a hashable stand-in a jit
    built for it that failed at the first call)."""
    if not isinstance(config, NuGraph2Config):
        raise ValueError(f"forward: config: expected a NuGraph2Config (a frozen, hashable dataclass), "
                         f"got {type(config).__name__}: {config!r:.80}")
    try:
        hash(config)
    except TypeError as e:  # a field replaced in place by something unhashable (object.__setattr__)
        raise ValueError(f"forward: config: expected a hashable NuGraph2Config (tuples of names, integer sizes), "
                         f"got {config!r:.160} ({e})") from None
    return _forward(config)


@functools.lru_cache(maxsize=None)
def _forward(config: NuGraph2Config):
    return jax.jit(functools.partial(_probabilities, config=config), compiler_options=cpu_compiler_options())


# (planes, devices per call, padded hit count) -> the sizes used for that hit bucket, kept across
# calls so that a stream of calls compiles once per bucket too
_SIZES: dict[tuple[tuple[str, ...], int, int], graph.BatchSizes] = {}


def _needed_sizes(events: Sequence[Event], devices: int, planes: tuple[str, ...]) -> graph.BatchSizes:
    """The bucketed sizes each device's union must hold: the whole chunk's on one device, else the
    element-wise largest of its per-device groups."""
    groups = graph.split_events(events, devices) if devices > 1 else [events]
    if not any(groups):
        raise ValueError("prepare: events must hold at least one Event (or give sizes), got an empty list")
    return graph.BatchSizes(*np.max(np.array([graph.pick_sizes(g, planes=planes) for g in groups if g]), axis=0))


def _bucket_sizes(needed: Sequence[graph.BatchSizes], planes: tuple[str, ...],
                  devices: int) -> list[graph.BatchSizes]:
    """The sizes to pad each chunk to: its hit bucket's entry of `_SIZES`, first widened to hold
    every chunk of `needed` (so one call compiles once per hit bucket)."""
    keys = [(tuple(planes), devices, need.hits) for need in needed]
    for key, need in zip(keys, needed):
        have = _SIZES.get(key)
        if have is None or any(h < n for h, n in zip(have, need)):
            _SIZES[key] = need if have is None else graph.BatchSizes(*np.maximum(have, need).tolist())
    return [_SIZES[key] for key in keys]


def _checked_events(events, config, where: str) -> list[Event]:
    """`events` as a list of Events and `config` a NuGraph2Config, or a ValueError naming `where` (an
    AttributeError or TypeError from deep inside came before; a single Event read as its fields)."""
    if not isinstance(config, NuGraph2Config):
        raise ValueError(f"{where}: config: expected a NuGraph2Config, got {type(config).__name__}")
    if isinstance(events, Event):
        raise ValueError(f"{where}: events: expected a list of Events, got a single Event {events.name!r} "
                         f"(use [event])")
    if isinstance(events, (str, bytes, dict)) or not isinstance(events, Iterable):
        raise ValueError(f"{where}: events: expected a list of Events, got {type(events).__name__}")
    events = list(events)
    for i, e in enumerate(events):
        if not isinstance(e, Event):
            raise ValueError(f"{where}: events must be Event tuples, got {type(e).__name__} at index {i}")
    return events


def prepare(events: Sequence[Event], *, config: NuGraph2Config = NuGraph2Config(), mesh=None,
            dtype=np.float32, sizes: graph.BatchSizes | None = None, check: bool = True) -> graph.GraphBatch:
    """Host side of `predict`: one padded union per device, stacked and sharded (unstacked for 1 device).

    `sizes`: padded sizes for each union (default: the smallest buckets that hold the events);
    `check=False` skips validating events the caller has validated.
    """
    events = _checked_events(events, config, "prepare")
    if sizes is not None:
        sizes = graph.check_sizes(sizes, "prepare")
    mesh = parallel.make_mesh() if mesh is None else parallel.check_mesh(mesh, where="prepare: mesh")
    d = mesh.devices.size
    if check:
        for e in events:
            graph.validate(e, planes=config.planes, classes=config.semantic_classes)
    sizes = _needed_sizes(events, d, config.planes) if sizes is None else sizes
    if d == 1:
        return jax.device_put(graph.pad_batch(events, sizes, planes=config.planes, dtype=dtype, check=False))
    stacked = graph.stack([graph.pad_batch(g, sizes, planes=config.planes, dtype=dtype, check=False)
                           for g in graph.split_events(events, d)])
    return parallel.shard_batch(stacked, mesh)


def predict(params: Params, events: Sequence[Event], *, config: NuGraph2Config = NuGraph2Config(),
            batch_size: int = 32, mesh=None, progress: bool = False) -> list[Prediction]:
    """Runs NuGraph2 on `events` (any number), `batch_size` events per jitted call.

    Every event is validated first (a ValueError names the event, plane and field), and params
    against `config` (a ValueError names the entry). Returns one Prediction per event, in order.
    `mesh`: a `parallel.make_mesh(devices)` (default: all devices; a ValueError for anything else).
    `progress`: a tqdm bar over the events (stderr).
    """
    from tqdm import tqdm

    events = _checked_events(events, config, "predict")
    if not is_integer(batch_size):
        raise ValueError(f"predict: batch_size must be an integer, got {batch_size!r} ({type(batch_size).__name__})")
    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
    if mesh is not None:
        parallel.check_mesh(mesh, where="predict: mesh")
    for e in events:
        graph.validate(e, planes=config.planes, classes=config.semantic_classes)
    check_params(params, config, where="predict: params")
    mesh = parallel.make_mesh() if mesh is None else mesh
    params = parallel.replicate(jax.tree.map(jnp.asarray, params), mesh)
    # hits padded in the params' precision (at least float32): float64 params (jax_enable_x64)
    # computed on features rounded to float32 were 3e-10 off the official float64 outputs
    dtype = np.dtype(jnp.promote_types(jnp.float32, jnp.result_type(*jax.tree.leaves(params))))
    fn = forward(config)
    results: list[Prediction] = []
    d = mesh.devices.size

    def collect(chunk, out):
        probs, filt = jax.device_get(out)
        if probs.ndim == 3:  # one device: no leading D axis
            probs, filt = probs[None], filt[None]
        groups = graph.split_events(chunk, d) if d > 1 else [chunk]
        for gi, group in enumerate(groups):
            offsets = {p: 0 for p in config.planes}
            for e in group:
                sem, fil = {}, {}
                for pi, p in enumerate(config.planes):
                    n = e.planes[p].x.shape[0]
                    o = offsets[p]
                    sem[p], fil[p] = probs[gi, pi, o:o + n], filt[gi, pi, o:o + n]
                    offsets[p] = o + n
                results.append(Prediction(sem, fil))

    # dispatch is asynchronous on accelerators: the next chunk is padded on the host while this one
    # runs (XLA:CPU runs calls this size inline, so on a CPU the two alternate)
    chunks = [events[start:start + batch_size] for start in range(0, len(events), batch_size)]
    sizes = _bucket_sizes([_needed_sizes(c, d, config.planes) for c in chunks], config.planes, d)
    pending = None
    bar = tqdm(total=len(events), desc="NuGraph2", unit="event", disable=not progress)
    for chunk, size in zip(chunks, sizes):
        out = fn(params, prepare(chunk, config=config, mesh=mesh, dtype=dtype, sizes=size, check=False))
        if pending is not None:
            collect(*pending)
            bar.update(len(pending[0]))
        pending = (chunk, out)
    if pending is not None:
        collect(*pending)
        bar.update(len(pending[0]))
    bar.close()
    return results
