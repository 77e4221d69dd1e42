"""Training NuGraph2 on a processed NuGraph HDF5 file, as the official code does, with resume.

- AdamW (lr 1e-3, weight decay 0.01) under a one-cycle schedule spanning the whole run (PyTorch's
  OneCycleLR defaults: 30% warm-up from lr/25, cosine down to lr/25e4, Adam's beta1 cycling between
  0.95 and 0.85 against the learning rate), batch 64, drop last.
- Batches as nugraph's BalanceSampler forms them: the largest 10% of graphs (by stored bytes) are
  dealt round-robin over the batches, then the rest fill them, shuffled per epoch.
- Padding buckets: sizes derived from the hit count on the bucket grid; every training batch of the
  run is padded to the one size that holds the largest of them (validation to one of its own), so the
  train step compiles once and a resumed run pads, and rounds, exactly as an uninterrupted one.
- Orbax checkpoints of (params, optimiser state) with the step, written every `checkpoint_every`
  steps and at each epoch end. The batch order of an epoch is a function of (seed, epoch), so a run
  restarted from its last checkpoint continues exactly where it stopped: nothing before it is lost.
- Validation metrics (filter and semantic efficiency/purity, loss) at each epoch end, kept in
  `metrics.json` of the run folder; a tqdm bar shows steps, loss and learning rate.

Run folder: checkpoints/ (orbax), run.json (configs; a resume must match), metrics.json,
model.npz + model.json (the final params and what `load_model` needs: config and feature norm).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import threading
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from jaxinterp import atomic
from jaxinterp.checks import is_integer
from jaxinterp.nugraph import hdf5, metrics
from jaxinterp.nugraph.event import PLANES, Event, validate
from jaxinterp.nugraph.graph import BatchSizes, bucket, overflow_edges, pad_batch
from jaxinterp.nugraph.model import NuGraph2Config

_clock = time.perf_counter  # training seconds (tests replace it)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    balance_frac: float = 0.1
    seed: int = 0
    checkpoint_every: int = 50  # steps
    eval_batch_size: int = 32

    def __post_init__(self):
        """ValueError naming the field for a setting training cannot use (checked before anything runs)."""
        def need(ok: bool, field: str, expected: str):
            if not ok:
                raise ValueError(f"TrainConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        def finite(v) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and bool(np.isfinite(v))

        for field in ("epochs", "batch_size", "checkpoint_every", "eval_batch_size"):
            need(is_integer(getattr(self, field)) and getattr(self, field) >= 1, field, "a positive integer")
        # jax.random.key and default_rng([seed, epoch]) keep 32 bits: 2**32 + 1 repeated seed 1's run
        need(is_integer(self.seed) and 0 <= self.seed < 2**32, "seed", "an integer in [0, 2**32)")
        need(finite(self.lr) and self.lr > 0, "lr", "a positive finite number")
        need(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a non-negative finite number")
        need(finite(self.balance_frac) and 0 <= self.balance_frac <= 1, "balance_frac", "a fraction in [0, 1]")


class TrainResult(NamedTuple):
    params: dict
    history: list  # one dict per finished epoch: step, losses, validation metrics
    out_dir: Path
    steps: int  # optimiser steps taken in total (over all resumed runs)
    finished: bool  # the schedule ran to its end


# ---------------------------------------------------------------------------------------------
# Batches


def balanced_batches(datasize: Sequence[int], batch_size: int, balance_frac: float,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """nugraph's BalanceSampler: the largest `balance_frac` of graphs spread evenly over the batches."""
    n = len(datasize)
    num_batches = n // batch_size
    if num_batches == 0:
        raise ValueError(f"batch_size: {batch_size} is more than the {n} training events (batches drop the last)")
    n_large = int(np.floor(n * balance_frac))
    order = np.argsort(np.asarray(datasize), kind="stable")
    large, rest = order[n - n_large:].copy(), order[:n - n_large].copy()
    rng.shuffle(large)
    rng.shuffle(rest)
    bins: list[list[int]] = [[] for _ in range(num_batches)]
    for i, k in enumerate(large):
        bins[i % num_batches].append(int(k))
    offset = n_large % num_batches
    for i, k in enumerate(rest):
        b = bins[(i + offset) % num_batches]
        if len(b) == batch_size:
            break
        b.append(int(k))
    out = []
    for b in bins:
        b = np.asarray(b, np.int64)
        rng.shuffle(b)
        out.append(b)
    # The sampler yields the bins one after another and the DataLoader cuts that sequence into batches
    # of batch_size (drop last). The bins hold batch_size each, unless the largest alone outnumber the
    # batches' places (balance_frac near 1): then a bin holds more, and the cut, not the bin, is the batch.
    flat = np.concatenate(out)
    return [flat[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]


class SizePolicy:
    """Padded sizes from the hit count alone (ratios bound the rest), reusing compiled sizes."""

    def __init__(self, events: Sequence[Event], planes: tuple[str, ...] = PLANES):
        # overflow planar edges (beyond the neighbour table) per hit, space points per hit, over
        # every event and plane of the data set
        self.edge_ratio = max(overflow_edges(e.planes[p].edge_index_plane, e.planes[p].x.shape[0])
                              / max(e.planes[p].x.shape[0], 1) for e in events for p in planes)
        # (per mean over planes: summed over a batch, the mean is at most the largest plane's total)
        self.sp_ratio = max(e.num_sp / max(np.mean([e.planes[p].x.shape[0] for p in planes]), 1) for e in events)
        # nexus edges per hit of their plane: at most num_sp in NuGraph files, but not required to be
        self.nexus_ratio = max(np.shape(e.planes[p].edge_index_nexus)[1] / max(e.planes[p].x.shape[0], 1)
                               for e in events for p in planes)
        self.planes = planes
        self.used: set[BatchSizes] = set()

    def _want(self, events: Sequence[Event]) -> BatchSizes:
        hits = max(sum(e.planes[p].x.shape[0] for e in events) for p in self.planes)
        n = bucket(hits + 1)
        return BatchSizes(n, bucket(int(np.ceil(self.edge_ratio * n))), bucket(int(np.ceil(self.nexus_ratio * n))),
                          bucket(int(np.ceil(self.sp_ratio * n)) + 1))

    def reserve(self, batches: Sequence[Sequence[Event]]) -> BatchSizes:
        """Registers the size that holds all of `batches` (e.g. an epoch's), so they compile once."""
        largest = max((self._want(b) for b in batches), key=lambda s: s.hits)
        self.used.add(largest)
        return largest

    def sizes(self, events: Sequence[Event]) -> BatchSizes:
        want = self._want(events)
        fits = [s for s in self.used if all(a >= b for a, b in zip(s, want))]
        choice = min(fits, key=lambda s: s.hits) if fits else want
        self.used.add(choice)
        return choice


# ---------------------------------------------------------------------------------------------
# Jitted steps (built once per configuration, so repeated runs in one process do not recompile)


class TrainState(NamedTuple):
    params: dict
    opt_state: tuple


ONECYCLE_PCT_START = 0.3  # PyTorch OneCycleLR's defaults, as the official code uses it
ONECYCLE_MOMENTUM = (0.85, 0.95)  # base_momentum, max_momentum: Adam's beta1 cycles between them


def _onecycle(total_steps: int, start: float, mid: float, end: float, pct_start: float = ONECYCLE_PCT_START):
    """step -> a value annealed by cosine from `start` to `mid` and on to `end`, with PyTorch
    OneCycleLR's phase boundaries (two phases): phase 1 ends at step pct_start * total - 1 (a float,
    possibly negative: then every step is in phase 2, which starts from that point), phase 2 at total - 1,
    so the last step gets `end` exactly. (optax's cosine_onecycle_schedule puts them at int(pct_start *
    total) and total: its peak came one step late and its last step above `end`; over 10 steps the rate
    was up to 0.48 lr off torch's, over 2 steps it started at the peak.)"""
    import jax.numpy as jnp

    end1, end2 = float(pct_start * total_steps) - 1, float(total_steps - 1)

    def cos(a, b, t):  # torch's _annealing_cos: a at t = 0, b at t = 1
        return b + (a - b) / 2 * (jnp.cos(jnp.pi * t) + 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        in_warmup = step <= end1
        t1 = step / (end1 if end1 > 0 else 1.0)  # used only where step <= end1 (so end1 >= 0; 0 only at step 0)
        t2 = (step - end1) / (end2 - end1)
        return jnp.where(in_warmup, cos(start, mid, t1), cos(mid, end, t2))

    return schedule


def onecycle_lr(total_steps: int, lr: float, *, pct_start: float = ONECYCLE_PCT_START, div_factor: float = 25.0,
                final_div_factor: float = 1e4):
    """PyTorch OneCycleLR's learning rate (cosine, two phases): lr / div_factor up to lr over the first
    pct_start of the steps, then down to lr / div_factor / final_div_factor at the last step; step -> lr."""
    initial = lr / div_factor
    return _onecycle(total_steps, initial, lr, initial / final_div_factor, pct_start)


def onecycle_momentum(total_steps: int, base: float = ONECYCLE_MOMENTUM[0], peak: float = ONECYCLE_MOMENTUM[1],
                      pct_start: float = ONECYCLE_PCT_START):
    """Adam's beta1 under OneCycleLR's `cycle_momentum` (on by default): cosine from `peak` down to
    `base` while the learning rate warms up, back to `peak` as it anneals, on the learning rate's
    phases (`onecycle_lr`); step -> beta1."""
    return _onecycle(total_steps, peak, base, peak, pct_start)


def _optimizer(lr: float, weight_decay: float, total_steps: int):
    """AdamW under OneCycleLR as the official code configures it (torch defaults): the learning rate
    from lr/25 up to lr over the first 30% of steps, then cosine down to lr/25e4, and beta1 cycling
    inversely between 0.95 and 0.85 (`onecycle_momentum`). -> (optimiser, learning-rate schedule).

    The moments and hyperparameters are float32 whatever the params' precision (float64 moments for
    float64 params): optax keeps Adam's moments in the params' dtype and inject_hyperparams casts b2,
    eps and the weight decay to it, so bfloat16 params had bfloat16 moments and b2 = 0.999 rounded
    to 1, whose bias correction 1 - b2^t = 0 made the first update NaN (as fit_bezier's Adam did)."""
    import jax
    import jax.numpy as jnp
    import optax

    schedule = onecycle_lr(total_steps, lr)
    adamw = optax.inject_hyperparams(optax.adamw, hyperparam_dtype=jnp.float32)(
        learning_rate=schedule, b1=onecycle_momentum(total_steps), weight_decay=weight_decay)

    def init(params):  # moments (mu and nu) float32 at least; updates then follow them
        return adamw.init(jax.tree.map(lambda a: jnp.asarray(a, jnp.promote_types(jnp.result_type(a), jnp.float32)),
                                       params))

    return optax.GradientTransformation(init, adamw.update), schedule


@functools.lru_cache(maxsize=8)
def _train_step(mc: NuGraph2Config, lr: float, weight_decay: float, total_steps: int):
    import jax
    import optax

    from jaxinterp.nugraph import losses, model

    opt, _ = _optimizer(lr, weight_decay, total_steps)

    def loss_fn(params, batch):
        out = losses.loss(params, model.apply(params, batch, config=mc), batch)
        return out.total, out

    def step(state: TrainState, batch):
        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), parts

    return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _eval_step(mc: NuGraph2Config):
    import jax

    from jaxinterp.nugraph import losses, model

    def step(params, batch):
        out = model.apply(params, batch, config=mc)
        return jax.nn.softmax(out.x_semantic, axis=-1), out.x_filter, losses.loss(params, out, batch)

    return jax.jit(step)


def evaluate_events(params, events: Sequence[Event], mc: NuGraph2Config, *, batch_size: int = 32,
                    policy: SizePolicy | None = None) -> tuple[metrics.Counts, float]:
    """Counts over `events` and the total loss averaged over their events (each batch's mean loss
    weighted by its number of events, so a short last batch counts for what it holds); no events: zero
    counts and a NaN loss (SizePolicy's bare 'max() arg is an empty sequence' before)."""
    if not is_integer(batch_size) or batch_size < 1:  # 0 was range()'s 'arg 3 must not be zero'
        raise ValueError(f"evaluate_events: batch_size: expected an integer >= 1, got {batch_size!r}")
    events = list(events)
    if not events:
        return metrics.Counts.zeros(mc.num_classes), float("nan")
    policy = policy or SizePolicy(events, mc.planes)
    step = _eval_step(mc)
    counts, losses_, weights = metrics.Counts.zeros(mc.num_classes), [], []
    for i in range(0, len(events), batch_size):
        chunk = events[i:i + batch_size]
        batch = pad_batch(chunk, policy.sizes(chunk), planes=mc.planes, check=False)
        sem, fil, lo = step(params, batch)
        m = batch.hit_mask
        counts = counts.add(batch.y_semantic[m], np.asarray(sem)[m], np.asarray(fil)[m])
        losses_.append(float(lo.total))
        weights.append(len(chunk))
    return counts, float(np.average(losses_, weights=weights)) if losses_ else float("nan")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _manager(out_dir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (out_dir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False))


class _Interrupt:
    """Ctrl-C (SIGINT) while training: the step under way finishes, a checkpoint of it is written, then
    KeyboardInterrupt is raised, so a rerun of the command loses no step (an interrupt raised inside
    the step lost every step since the last checkpoint, and one inside the jitted call could leave the
    donated state deleted). A second Ctrl-C interrupts at once. Only in the main thread (the one
    Python delivers signals to); elsewhere nothing changes."""

    def __init__(self):
        self.asked, self._old = False, None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            # None: a handler installed outside Python, which Python cannot put back; its default then
            self._old = signal.signal(signal.SIGINT, self._handle) or signal.default_int_handler
        return self

    def _handle(self, signum, frame) -> None:
        self.asked = True
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _save(mngr, step: int, state: TrainState, meta: dict) -> None:
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state._asdict()),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def _restore(mngr, step: int, like: TrainState) -> tuple[TrainState, dict]:
    import jax
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), like._asdict())
    got = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
    return TrainState(**got["state"]), dict(got["meta"])


def check_model_out(out_dir: str | Path, provenance: dict, *, compare: Sequence[str] | None = None) -> None:
    """ValueError unless a command that writes only a model (`nugraph widen`, `convert`) may `save_model`
    into `out_dir` without losing anything saved there: not a training run's folder (run.json: its model
    is the run's to write), and any model.npz/model.json there made from the same source (model.json
    holding every entry of `provenance`, or those named in `compare`), which the new one repeats."""
    out = Path(out_dir)
    if (out / "run.json").exists():
        raise ValueError(f"out: {out} is a `nugraph train` run folder (it holds run.json), whose model.npz and "
                         "model.json are the run's; expected a new folder or a model folder (use a new --out folder)")
    there = [n for n in ("model.npz", "model.json") if (out / n).exists()]
    if not there:
        return
    try:
        before = json.loads((out / "model.json").read_text()) if (out / "model.json").is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        before = None
    same = isinstance(before, dict) and all(before.get(k) == v for k, v in json.loads(json.dumps(provenance)).items()
                                            if compare is None or k in compare)
    if not same:
        made = {k: before.get(k) for k in provenance} if isinstance(before, dict) else "unreadable or absent"
        raise ValueError(f"out: {out} holds {there} of another model ({made}), this one is {provenance}; they would "
                         "be overwritten (use a new --out folder)")


def save_model(out_dir: Path, params, mc: NuGraph2Config, norm: dict, extra: dict | None = None) -> Path:
    """Writes model.npz (flat 'a/b/c' names), then model.json (config, feature norm, provenance and
    `npz_sha256`, the hash of that model.npz).

    Each file is renamed into place atomically, but not the pair: a crash between the two renames leaves
    a new model.npz beside the previous model.json, whose hash `evaluate.load_model` then refuses.
    """
    import hashlib
    import io

    import jax

    flat = {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    buf = io.BytesIO()
    np.savez(buf, **flat)
    data = buf.getvalue()
    atomic.write_bytes(out_dir / "model.npz", data)
    desc = {"config": dataclasses.asdict(mc), "norm": {p: np.asarray(v).tolist() for p, v in norm.items()},
            **(extra or {}), "npz_sha256": hashlib.sha256(data).hexdigest()}
    atomic.write_json(out_dir / "model.json", desc, indent=1)
    return out_dir / "model.npz"


# ---------------------------------------------------------------------------------------------
# The driver


def _events_digest(events: Sequence[Event], planes: tuple[str, ...]) -> str:
    """sha256 of what training reads from the events (names, normalised features, edges, labels, space
    points): run.json keeps it, so a resume on other data under the same file name is refused."""
    import hashlib

    h = hashlib.sha256()
    for e in events:
        h.update(f"{e.name}\0{e.num_sp}\0".encode())
        for p in planes:
            hits = e.planes[p]
            for a in (hits.x, hits.edge_index_plane, hits.edge_index_nexus, hits.y_semantic):
                if a is None:  # no labels
                    h.update(b"None")
                    continue
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


def _differences(before, now, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, before's value, now's value) wherever two JSON objects differ ('absent' for a
    missing key), nested objects compared key by key."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return [] if before == now else [(prefix or "run.json", before, now)]
    out = []
    for k in list(before) + [k for k in now if k not in before]:
        name = f"{prefix}.{k}" if prefix else str(k)
        if k not in before or k not in now:
            out.append((name, before.get(k, "absent"), now.get(k, "absent")))
        else:
            out += _differences(before[k], now[k], name)
    return out


def train(path: str | Path, out_dir: str | Path, *, config: TrainConfig = TrainConfig(),
          model_config: NuGraph2Config = NuGraph2Config(), max_steps: int | None = None,
          limit_train: int | None = None, limit_val: int | None = None, progress: bool = True,
          init_params: dict | None = None, init_name: str | None = None, log=print) -> TrainResult:
    """Trains (or resumes training) on `path`'s train split, validating on its validation split.

    init_params: start from these params (a warm start, e.g. a trained model fine-tuned with a fresh
    schedule) instead of a random init; they must have the shapes of `model_config`. `init_name`
    (where they came from) is kept in run.json, so a resume must name the same start.
    """
    import jax
    from tqdm import tqdm

    from jaxinterp.nugraph import model

    for name, value, kind in (("config", config, TrainConfig), ("model_config", model_config, NuGraph2Config)):
        if not isinstance(value, kind):  # an AttributeError after the events were read, before
            raise ValueError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
    out_dir = Path(out_dir)
    # a fractional max_steps was never equal to the step, so the run stopped past it without the
    # checkpoint its stop writes (2.5: 3 steps taken, none saved, a resume started again from step 0)
    if max_steps is not None and not (is_integer(max_steps) and max_steps >= 0):
        raise ValueError(f"max_steps: expected None or an integer >= 0, got {max_steps!r}")
    run_json = out_dir / "run.json"
    if not run_json.exists():  # another command's folder: its files would be overwritten by this run's
        foreign = [n for n in ("metrics.json", "model.npz", "model.json", "checkpoints") if (out_dir / n).exists()]
        if foreign:
            raise ValueError(f"out_dir: {out_dir} holds {foreign} but no run.json: the files of another command "
                             "(an eval, a converted or widened model), which this run would overwrite; expected a "
                             "new folder or a run folder to resume (use a new --out folder)")
    info = hdf5.read_info(path)
    if init_params is not None:
        model.check_params(init_params, model_config,
                           where="init_params: expected NuGraph2 params of the model config, got a tree where")
    if tuple(info.planes) != tuple(model_config.planes):
        raise ValueError(f"path: the file's planes {list(info.planes)} differ from the model's {list(model_config.planes)}")
    if tuple(info.semantic_classes) != tuple(model_config.semantic_classes):  # labels index the file's list
        raise ValueError(f"path: the file's semantic classes {list(info.semantic_classes)} differ from the model's "
                         f"{list(model_config.semantic_classes)} (the same names in the same order expected)")
    train_ev, train_res = hdf5.load_events(path, "train", limit=limit_train)
    if limit_val == 0:  # no validation: the file need not have a validation split
        val_ev, val_res = [], hdf5.ReadResult([], {"empty plane": [], "no space points": []})
    else:
        val_ev, val_res = hdf5.load_events(path, "validation", limit=limit_val)
    log(f"train: {len(train_ev)} events ({train_res.skipped_line()}); "
        f"validation: {len(val_ev)} events ({val_res.skipped_line()})")
    if not train_ev:
        raise ValueError(f"path: no usable training events in {path}")
    for e in train_ev + val_ev:  # once here, so batches skip the check
        validate(e, planes=model_config.planes, classes=model_config.semantic_classes)
    sizes_bytes = [hdf5.datasize(r) for r in train_res.events]
    nb = len(train_ev) // config.batch_size
    if nb == 0:
        raise ValueError(f"batch_size: {config.batch_size} is more than the {len(train_ev)} training events "
                         "(batches drop the last)")
    total = nb * config.epochs
    run_desc = {"train_config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
                "file": str(Path(path).name), "train_events": len(train_ev),
                "train_data_sha256": _events_digest(train_ev, model_config.planes)}
    if init_params is not None:
        run_desc["init"] = init_name or "given params"
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_json.exists():
        try:
            before = json.loads(run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"out_dir: {run_json} is not valid JSON ({e}); expected the run.json a run "
                             "writes (use a new --out folder)") from None
        if "train_data_sha256" not in before:  # run.json of a run begun before the digest existed
            run_desc.pop("train_data_sha256")
        if isinstance(before, dict) and isinstance(before.get("init"), str) and "init" in run_desc \
                and Path(before["init"]).resolve() == Path(run_desc["init"]).resolve():
            run_desc["init"] = before["init"]  # a run begun before run_cli resolved --init, from where it began
        now = json.loads(json.dumps(run_desc))
        if before != now:  # every setting that differs, both values (run.json whole hid the one that did)
            diff = "; ".join(f"{k}: the run's {a!r}, this one's {b!r}" for k, a, b in _differences(before, now))
            raise ValueError(f"out_dir: {out_dir} holds a run with other settings ({diff}); "
                             "use a new --out folder, or the same settings to resume")
    else:
        atomic.write_text(run_json, json.dumps(run_desc, indent=1))

    opt, schedule = _optimizer(config.lr, config.weight_decay, total)
    # a copy of init_params (jnp.array, not asarray): the train step donates its state, and asarray
    # returned the caller's own float32 jax arrays, which the first step deleted
    params = (model.init(jax.random.key(config.seed), model_config) if init_params is None
              else jax.tree.map(lambda a: jax.numpy.array(a, jax.numpy.float32), init_params))
    state = TrainState(params, opt.init(params))
    mngr = _manager(out_dir)
    step, history, seconds_before = 0, [], 0.0
    # the epoch's training loss is the mean over its steps, as Lightning logs an on_epoch loss; the
    # running sum and count ride in the checkpoints, so a resumed epoch's mean counts every step once
    loss_sum, loss_steps = 0.0, 0
    if mngr.latest_step() is not None:
        state, meta = _restore(mngr, mngr.latest_step(), state)
        step, history = int(meta["step"]), list(meta["history"])
        seconds_before = float(meta.get("seconds", 0.0))  # checkpoints before session 7 lack it
        # checkpoints before session 14 lack the sum: the epoch's mean then covers the steps run since
        loss_sum, loss_steps = float(meta.get("epoch_loss_sum", 0.0)), int(meta.get("epoch_loss_steps", 0))
        log(f"resumed from the checkpoint at step {step} of {total}")
    train_step = _train_step(model_config, config.lr, config.weight_decay, total)
    # Padded sizes are a function of the data and the settings alone, never of what this process has
    # compiled before: padding changes the rounding of the sums (a batch padded to 192 or 384 hits
    # gives params 2e-7 apart after one step), so a size picked from the sizes seen so far (shared
    # with validation) padded a resumed run's batches otherwise than the uninterrupted run's. Every
    # batch of every epoch (its order drawn from (seed, epoch)) fits one reserved size: one
    # compilation; validation keeps sizes of its own, reserved for its fixed batches alike. The
    # training sizes' ratios come from the training events alone (the validation events, which a
    # resume may limit otherwise, would move them).
    policy = SizePolicy(train_ev, model_config.planes)
    val_policy = SizePolicy(val_ev, model_config.planes) if val_ev else None
    policy.reserve([[train_ev[i] for i in b] for epoch in range(config.epochs)
                    for b in balanced_batches(sizes_bytes, config.batch_size, config.balance_frac,
                                              np.random.default_rng([config.seed, epoch]))])
    if val_ev:
        val_policy.reserve([val_ev[i:i + config.eval_batch_size]
                            for i in range(0, len(val_ev), config.eval_batch_size)])
    stop = total if max_steps is None else min(total, max_steps)
    bar = tqdm(total=total, initial=step, desc="training NuGraph2", unit="step", disable=not progress)
    t0 = _clock() - seconds_before  # training time runs on across resumes (work redone after the
    # last checkpoint of a killed run not counted twice)
    with _Interrupt() as interrupt:  # Ctrl-C: this step finishes and is saved, then KeyboardInterrupt
        try:
            while step < stop:
                epoch, k = divmod(step, nb)
                order = balanced_batches(sizes_bytes, config.batch_size, config.balance_frac,
                                         np.random.default_rng([config.seed, epoch]))
                chunk = [train_ev[i] for i in order[k]]
                batch = pad_batch(chunk, policy.sizes(chunk), planes=model_config.planes, check=False)
                state, parts = train_step(state, batch)
                step += 1
                loss = float(parts.total)
                loss_sum, loss_steps = loss_sum + loss, loss_steps + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{float(schedule(step - 1)):.2e}", epoch=epoch)
                end_of_epoch = step % nb == 0
                if end_of_epoch and val_ev:
                    counts, vloss = evaluate_events(state.params, val_ev, model_config,
                                                    batch_size=config.eval_batch_size, policy=val_policy)
                    m = metrics.compute(counts, model_config.semantic_classes)
                    history.append({"epoch": epoch, "step": step, "train_loss": loss_sum / loss_steps,
                                    "train_loss_steps": loss_steps, "train_loss_last": loss,
                                    "val_loss": vloss, "seconds": _clock() - t0, **m.as_dict()})
                    (bar.write if progress else log)(f"epoch {epoch}: val loss {vloss:.4f} | {m.line()}")
                    atomic.write_json(out_dir / "metrics.json", history, indent=1)
                if end_of_epoch:
                    loss_sum, loss_steps = 0.0, 0
                if end_of_epoch or step % config.checkpoint_every == 0 or step == stop or interrupt.asked:
                    _save(mngr, step, state, {"step": step, "history": history, "seconds": _clock() - t0,
                                              "epoch_loss_sum": loss_sum, "epoch_loss_steps": loss_steps})
                if interrupt.asked:
                    raise KeyboardInterrupt(f"training interrupted at step {step} of {total}; its checkpoint is "
                                            f"written: the same command resumes from it")
        finally:
            bar.close()
            mngr.close()
    finished = step >= total
    if finished:
        save_model(out_dir, state.params, model_config, info.norm,
                   {"steps": step, "train_config": dataclasses.asdict(config), "file": str(Path(path).name),
                    "validation": history[-1] if history else None})
    return TrainResult(state.params, history, out_dir, step, finished)


def run_cli(args) -> TrainResult:
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                     balance_frac=args.balance_frac, seed=args.seed, checkpoint_every=args.checkpoint_every)
    mc = NuGraph2Config(planar_features=args.planar_features, nexus_features=args.nexus_features,
                        num_iters=args.iterations)
    init = None
    if getattr(args, "init", None):
        from jaxinterp.nugraph import evaluate

        start = evaluate.load_model(args.init, arg="--init")
        if start.config != mc:
            raise ValueError(f"--init: {args.init} holds a model of config {start.config}, "
                             f"the run asks for {mc} (set --planar-features/--nexus-features/--iterations to match)")
        init = start.params
        # the folder load_model read, resolved: as given, a resume through another spelling of the same
        # folder (./DIR, DIR/model.npz, from another folder) was refused as a run of another start
        init_folder = Path(args.init).resolve()
        init_folder = init_folder.parent if init_folder.is_file() else init_folder
    res = train(args.file, args.out, config=tc, model_config=mc, max_steps=args.max_steps,
                limit_train=args.limit_train, limit_val=args.limit_val, init_params=init,
                init_name=str(init_folder) if init is not None else None)
    print(f"{'finished' if res.finished else 'stopped'} at step {res.steps}; run folder {res.out_dir}")
    if res.finished:
        print(f"wrote {res.out_dir / 'model.npz'} and model.json")
    return res
