"""Training the lenses of one layer: a jitted step (GPT-2 forward, chunked KL, optax Adam) and a
resumable driver (orbax checkpoints, tqdm, data-parallel over devices).

Gradient accumulation: one step takes A micro-batches. The frozen GPT-2 forward, whose activations
are the large part, runs micro-batch by micro-batch (a scan); the rows it yields (head outputs and
the model's target logits, small in the paper's last-token mode) are concatenated and the lens loss
runs once over all of them. That is the exact gradient of the mean over the A micro-batches, with no
gradient accumulator the size of the lens.

Data parallel: the examples of a step are split over the mesh axis "data" (`jaxinterp.parallel`);
lens params and Adam state are replicated, or split along the vocabulary (`shard_vocab`). A split
must be even, and GPT-2's 50257 is prime to every device count but 1, 29, 1733: a split lens is
padded to `padded_vocab` columns (50304 for 2, 4, 8, ... devices) whose weights are 0 and biases
`PAD_LOGIT`, and the model's target logits are padded alike, so the padding columns have
probability 0 on both sides, take no gradient, and never move. They are cut off again before the
lens is returned or read back from a checkpoint.

Axis names: E examples in a step (= A x B), A micro-batches, B batch, P positions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from jaxinterp import fingerprint, parallel
from jaxinterp.checks import is_integer
from jaxinterp.lens import bf16_moments, fused_adam, lenses, objective as obj
from jaxinterp.lens.data import Batches
from jaxinterp.lens.lenses import LensConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 4  # examples per micro-batch
    accum: int = 1  # micro-batches per optimiser step
    seq_len: int = 128
    lr: float = 1e-3  # the original's Adam learning rate
    save_every: int = 50  # orbax checkpoint every N steps (and at the end)
    seed: int = 0
    bfloat16: bool = False  # GPT-2 activations and lens matmul inputs in bfloat16
    shard_vocab: bool = False
    adam_moments: str = "float32"  # or "bfloat16": Adam's state in half the bytes (bf16_moments)

    def __post_init__(self):
        # int() let 2.5 through (range() then failed after the checkpoint folder was made); lr = inf
        # trained every weight to NaN; a negative seed failed in the first batch
        for f in ("steps", "batch_size", "accum", "seq_len", "save_every"):
            if not is_integer(getattr(self, f)) or getattr(self, f) < 1:
                raise ValueError(f"{f}: expected a positive integer, got {getattr(self, f)!r}")
        if not is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float, np.floating, np.integer)) \
                or not (0 < self.lr < float("inf")):
            raise ValueError(f"lr: expected a positive finite learning rate, got {self.lr!r}")
        if self.adam_moments not in bf16_moments.DTYPES:
            raise ValueError(f"adam_moments: expected one of {bf16_moments.DTYPES}, got {self.adam_moments!r}")
        for f in ("steps", "batch_size", "accum", "seq_len", "save_every", "seed"):  # numpy scalars: JSON in checkpoints
            object.__setattr__(self, f, int(getattr(self, f)))
        object.__setattr__(self, "lr", float(self.lr))


class TrainState(NamedTuple):
    lens: dict
    opt_state: optax.OptState


def optimizer(lr: float, moments: str = "float32") -> optax.GradientTransformation:
    """Adam at `lr`, its moments stored in `moments` (optax.adam's own for "float32")."""
    return bf16_moments.optimizer(lr, moments)


PAD_LOGIT = -1e30  # bias of the padding columns of a split vocabulary: exp() is 0, yet finite (no inf - inf)
VOCAB_PAD_MULTIPLE = 128  # padded widths are multiples of this (and of the device count)


def padded_vocab(vocab_size: int, devices: int) -> int:
    """The vocabulary width a lens split over `devices` is stored at: V itself if it divides evenly,
    else the next multiple of lcm(128, devices) (so 2, 4, 8, ... devices share one width)."""
    if vocab_size % devices == 0:
        return vocab_size
    m = np.lcm(VOCAB_PAD_MULTIPLE, devices)
    return int(-(-vocab_size // m) * m)


def pad_vocab(a: Array, width: int, value: float) -> Array:
    """a [..., V] -> [..., width], the new columns set to `value`."""
    extra = width - a.shape[-1]
    return a if extra == 0 else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)], constant_values=value)


def unpad_lens(lens: dict, vocab_size: int) -> dict:
    """A lens stored at a padded width, cut back to the model's vocabulary."""
    return {k: v[..., :vocab_size] for k, v in lens.items()}


def make_step(model_config, lens_config: LensConfig, objective: obj.Objective, tx: optax.GradientTransformation,
              accum: int, *, fused_adam_lr: float | None = None) -> Callable:
    """The pure step (state, model_params, tokens [E, P], mask [E, P], weight [E]) -> (state, loss).

    Examples are grouped [B, A] (so a device's contiguous rows hold whole micro-batch slices):
    micro-batch a is tokens.reshape(B, A, P)[:, a].
    With `fused_adam_lr`, tx must be `optimizer(fused_adam_lr, ...)`: the update is then applied chunk
    by chunk of the vocabulary inside the backward pass (`fused_adam`; same result, no whole gradient).
    """
    if fused_adam_lr is not None and not fused_adam.supports(objective):
        raise ValueError(f"fused_adam_lr: the fused Adam step supports objectives 'last' and 'all', "
                         f"got {objective.mode!r}")

    def step(state: TrainState, model_params, tokens: Array, mask: Array, weight: Array):
        E, P = tokens.shape
        split = lambda a: jnp.swapaxes(a.reshape((E // accum, accum) + a.shape[1:]), 0, 1)  # noqa: E731

        def one(_, mb):
            t, m, w = mb
            return None, obj.rows(model_params, t, m, model_config=model_config, lens_config=lens_config,
                                  objective=objective, example_weight=w)

        _, r = jax.lax.scan(one, None, (split(tokens), split(mask), split(weight)))
        r = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), r)  # (A*N, ...)
        # a lens padded past the model's vocabulary (a split vocabulary): the target's padding has probability 0
        r = r._replace(target=pad_vocab(r.target, lens_config.vocab_size, PAD_LOGIT))
        if fused_adam_lr is not None:
            lens, opt_state, loss = fused_adam.step(state.lens, state.opt_state, r, lens_config=lens_config,
                                                    objective=objective, lr=fused_adam_lr)
            return TrainState(lens, opt_state), loss
        loss, grads = jax.value_and_grad(obj.loss)(state.lens, r, lens_config=lens_config, objective=objective)
        updates, opt_state = tx.update(grads, state.opt_state, state.lens)
        return TrainState(optax.apply_updates(state.lens, updates), opt_state), loss

    return step


def lens_shardings(tree, mesh, vocab_size: int, shard_vocab: bool):
    """Shardings for lens params / Adam state: leaves ending in the vocabulary split over "data"."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    def spec(leaf):
        if shard_vocab and np.ndim(leaf) >= 1 and np.shape(leaf)[-1] == vocab_size:
            return NamedSharding(mesh, P(*([None] * (np.ndim(leaf) - 1)), parallel.DATA))
        return NamedSharding(mesh, P())
    return jax.tree.map(spec, tree)


def jit_step(model_config, lens_config, objective, tx, accum, mesh=None, state_shardings=None, *,
             fused_adam_lr: float | None = None):
    """The step jitted once, donating the train state (the lens and Adam state are updated in place)."""
    step = make_step(model_config, lens_config, objective, tx, accum, fused_adam_lr=fused_adam_lr)
    if mesh is None:
        return jax.jit(step, donate_argnums=(0,))
    data = parallel.data_sharding(mesh)
    rep = parallel.replicated(mesh)
    return jax.jit(step, donate_argnums=(0,), in_shardings=(state_shardings, rep, data, data, data),
                   out_shardings=(state_shardings, rep))


@functools.lru_cache(maxsize=8)
def _driver_step(model_config, lens_config: LensConfig, objective: obj.Objective, lr: float, accum: int,
                 shard_vocab: bool, devices: tuple, moments: str = "float32"):
    """The driver's jitted step, built once per configuration (a resumed run in the same process,
    or a second layer with the same shapes, reuses the compiled step)."""
    mesh = parallel.make_mesh(list(devices))
    tx = optimizer(lr, moments)
    abstract = jax.eval_shape(lambda: (lambda l: TrainState(l, tx.init(l)))(
        lenses.init(jnp.zeros((lens_config.d_model, lens_config.vocab_size)), jnp.zeros(lens_config.vocab_size),
                    lens_config)))
    shardings = lens_shardings(abstract, mesh, lens_config.vocab_size, shard_vocab)
    # Adam inside the backward pass where it applies (a vocabulary split over devices keeps the plain step)
    fused = lr if fused_adam.supports(objective, shard_vocab) else None
    return tx, mesh, shardings, jit_step(model_config, lens_config, objective, tx, accum, mesh, shardings,
                                         fused_adam_lr=fused)


class TrainResult(NamedTuple):
    lens: dict
    losses: list[float]  # one per step run in this call
    start_step: int  # the step this call started from (> 0 after a resume)
    steps: int


def check_ids(batches: Batches, model_config) -> None:
    """ValueError if an example holds a token id outside the model's vocabulary: it embeds as NaN (or as
    another token), a NaN lens, silently."""
    span = batches.id_range  # found once per Batches (the CLI checks before loading the model, train() again)
    if span is not None and (span[0] < 0 or span[1] >= model_config.vocab_size):
        raise ValueError(f"batches: expected token ids in [0, {model_config.vocab_size}) (the model's vocabulary), "
                         f"got ids from {span[0]} to {span[1]}")


def _effective(model_config, lens_config: LensConfig, cfg: TrainConfig, objective: obj.Objective):
    """(model config, objective, stored vocabulary width) as the step runs them: `bfloat16` sets both
    compute dtypes, `shard_vocab` pads the vocabulary to split it evenly over the devices."""
    if cfg.bfloat16:
        model_config = dataclasses.replace(model_config, dtype="bfloat16")
        objective = dataclasses.replace(objective, compute_dtype="bfloat16")
    V = lens_config.vocab_size
    return model_config, objective, padded_vocab(V, len(jax.devices())) if cfg.shard_vocab else V


def _run_record(lens_config: LensConfig, batches: Batches, cfg: TrainConfig, objective: obj.Objective,
                model_config, width: int, model_sha256: str | None) -> dict:
    """What a checkpoint records of its run and a resume must match (`model_config`, `objective`: effective)."""
    return {"lens_config": dataclasses.asdict(lens_config), "vocab_stored": width,
            "objective": dataclasses.asdict(objective), "data": batches.fingerprint(),
            # the effective compute dtypes: the objective's covers the lens matmuls, this the GPT-2 activations
            # (`bfloat16` sets both, but an objective with its own compute_dtype left --bf16 unchecked)
            "model_dtype": model_config.dtype, "model": model_sha256,
            **{f: getattr(cfg, f) for f in _RESUME_MUST_MATCH}}


def check_resume_settings(ckpt_dir: str | os.PathLike, model_config, lens_config: LensConfig, batches: Batches,
                          cfg: TrainConfig, *, objective: obj.Objective = obj.Objective()) -> None:
    """ValueError if `ckpt_dir` holds a checkpoint of a run with other settings than these: what `train`
    checks before it resumes, but the model's fingerprint (it needs the weights). For callers that can
    check before they load the model (a mistaken --out was refused only after GPT-2 had loaded)."""
    import orbax.checkpoint as ocp

    if not Path(ckpt_dir).is_dir():
        return
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    with ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options, item_handlers=_handlers()) as mngr:
        step = mngr.latest_step()
        if step is None:
            return
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    effective, objective, width = _effective(model_config, lens_config, cfg, objective)
    run = _run_record(lens_config, batches, cfg, objective, effective, width, None)
    _check_resume(meta, run, ckpt_dir, config_dtype=model_config.dtype, check_model=False)


def train(model_params: dict, model_config, lens_config: LensConfig, batches: Batches, cfg: TrainConfig, *,
          objective: obj.Objective = obj.Objective(), ckpt_dir: str | os.PathLike | None = None,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Trains (or resumes training of) the lenses of one layer.

    With `ckpt_dir`, an orbax checkpoint (lens, Adam state, step, batches consumed) is written every
    `save_every` steps and at the end, and an existing checkpoint there is resumed: a killed run
    continues from its last checkpoint with the batches it would have seen; a checkpoint of another run
    (another model, its weights fingerprinted, or other settings) is refused with a ValueError before any
    step runs. `stop_after` ends the call after that many steps of this call (without a final save
    unless due): a kill, for tests.
    """
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    from jaxinterp.lens.io import check_fits

    check_fits(lens_config, model_config, source=f"layer {lens_config.layer}")
    if batches.batch_size != cfg.batch_size or batches.seq_len != cfg.seq_len:
        raise ValueError(f"batches: expected batch_size {cfg.batch_size} and seq_len {cfg.seq_len}, got "
                         f"{batches.batch_size} and {batches.seq_len}")
    if batches.seed != cfg.seed:  # the data order is the batches' seed; a resume checks cfg.seed
        raise ValueError(f"batches: expected seed {cfg.seed} (TrainConfig.seed), got {batches.seed}")
    if cfg.seq_len > model_config.n_positions:
        raise ValueError(f"seq_len: expected at most n_positions = {model_config.n_positions}, got {cfg.seq_len}")
    check_ids(batches, model_config)
    if ckpt_dir is not None:  # a file there failed inside orbax's writer thread after save_every steps of work
        import argparse

        from jaxinterp.cliargs import output_folder
        try:
            output_folder(os.fspath(ckpt_dir))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"ckpt_dir: {e}") from None
    # the model a checkpoint's lenses belong to: every weight and the config (its dtype is recorded apart,
    # as the effective activations dtype); another GPT-2 of the same shape resumed the run silently
    model_sha256 = None if ckpt_dir is None else fingerprint.fingerprint(
        model_params, config=dataclasses.replace(model_config, dtype="float32"))
    config_dtype = model_config.dtype  # the activations of checkpoints that did not record them, but for --bf16
    model_config, objective, width = _effective(model_config, lens_config, cfg, objective)
    V = lens_config.vocab_size
    stored = dataclasses.replace(lens_config, vocab_size=width)  # the lens as the step sees it

    tx, mesh, shardings, step_fn = _driver_step(model_config, stored, objective, cfg.lr, cfg.accum,
                                                cfg.shard_vocab, tuple(jax.devices()), cfg.adam_moments)
    W_U, b_U = lenses.unembedding(model_params, model_config)

    def fresh(W_U, b_U) -> TrainState:
        lens = lenses.init(pad_vocab(W_U, width, 0.0), pad_vocab(b_U, width, PAD_LOGIT), stored)
        return TrainState(lens, tx.init(lens))

    # Made only when no checkpoint is resumed, after the checkpoint's settings are checked: a fresh lens
    # and Adam state (GPT-2 small: 5.2 GiB) were made first, so a refused resume allocated them before its
    # error, and a resume held them beside the restored state (twice the training's memory).
    state = None
    model_params = parallel.replicate(model_params, mesh)
    run = _run_record(lens_config, batches, cfg, objective, model_config, width, model_sha256)

    start = 0
    mngr = None
    if ckpt_dir is not None:
        options = ocp.CheckpointManagerOptions(save_interval_steps=cfg.save_every, max_to_keep=2, create=True)
        mngr = ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options, item_handlers=_handlers())
        if mngr.latest_step() is not None:
            start = mngr.latest_step()
            meta = mngr.restore(start, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            # before the state is read: a clear error, not orbax's
            _check_resume(meta, run, ckpt_dir, config_dtype=config_dtype)
            abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    jax.eval_shape(fresh, W_U, b_U), shardings)
            legacy = _bf16_moment_arrays(mngr.item_metadata(start)["state"])
            if legacy:  # read as bfloat16, then the bits: orbax would cast the values to uint16 (1e-3 -> 0)
                abstract = jax.tree.map(lambda a: a.update(dtype=jnp.bfloat16) if a.dtype == jnp.uint16 else a, abstract)
            restored = mngr.restore(start, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            state = TrainState(*restored["state"])
            if legacy:
                state = jax.tree.map(lambda a: jax.lax.bitcast_convert_type(a, jnp.uint16) if a.dtype == jnp.bfloat16
                                     else a, state)
    if state is None:
        state = jax.device_put(fresh(W_U, b_U), shardings)

    E = cfg.batch_size * cfg.accum
    E_pad = parallel.padded_size(cfg.batch_size, mesh) * cfg.accum
    losses = []
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    end = max(end, start)  # a checkpoint past cfg.steps: its lens, at its own step (it said cfg.steps)
    bar = tqdm(range(start, end), desc=f"lens layer {lens_config.layer}", unit="step", disable=not progress,
               initial=start, total=cfg.steps)
    for step in bar:
        mbs = [batches.batch(step * cfg.accum + a) for a in range(cfg.accum)]
        tokens = np.stack([b.tokens for b in mbs], 1).reshape(E, cfg.seq_len)  # (B, A, P) -> (E, P)
        mask = np.stack([b.mask for b in mbs], 1).reshape(E, cfg.seq_len)
        weight = np.ones((E,), np.float32)
        if E_pad != E:  # fill the device batch with zero-weight examples (B grows, A stays)
            pad = lambda a: parallel.pad_batch(a.reshape((cfg.batch_size, cfg.accum) + a.shape[1:]),  # noqa: E731
                                               E_pad // cfg.accum).reshape((E_pad,) + a.shape[1:])
            tokens, mask, weight = pad(tokens), pad(mask), pad(weight)
        tokens, mask, weight = parallel.shard_batch((tokens, mask, weight), mesh)
        state, loss = step_fn(state, model_params, tokens, mask, weight)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if mngr is not None and (done % cfg.save_every == 0 or done == cfg.steps):
            meta = {"step": done, "batches_seen": done * cfg.accum, **run, "train_config": dataclasses.asdict(cfg)}
            mngr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)
    bar.close()
    if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    return TrainResult(unpad_lens(jax.device_get(state.lens), V), losses, start, end)


# what a resumed run must share with the run that wrote the checkpoint: the model (its fingerprint), the
# lens, the objective, the activations dtype, the stored vocabulary width, the data (its fingerprint), and
# what decides which batches come next (batch i of the data is a pure function of seed and i, and step s
# consumed batches s*accum ... s*accum + accum - 1)
_RESUME_MUST_MATCH = ("batch_size", "accum", "seq_len", "seed", "lr", "adam_moments")
_RESUME_DEFAULTS = {"adam_moments": "float32"}  # settings a checkpoint written before them ran with
_log = logging.getLogger(__name__)


def _handlers() -> dict:
    """The checkpoint's items and their handlers (a manager needs them to read an item's metadata)."""
    import orbax.checkpoint as ocp

    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


def _bf16_moment_arrays(stored) -> bool:
    """Whether a checkpoint's state holds bfloat16 arrays: bfloat16 Adam moments as the first version of
    `--adam-moments bfloat16` stored them (13a107c; since 9622cfb they are uint16 bits, the lens is float32)."""
    leaves = jax.tree.leaves(getattr(stored, "tree", stored), is_leaf=lambda a: hasattr(a, "dtype"))
    return any(np.dtype(a.dtype) == jnp.bfloat16 for a in leaves)


def _same(setting: str, saved, now) -> bool:
    """Whether a checkpoint's setting is this run's. The learning rate is compared as the float32 the
    update applies (lens and Adam state are float32): np.float32(1e-3) was recorded as 0.0010000000474974513
    and a resume with lr 1e-3, the same run to the bit, was refused as another run."""
    if setting == "lr" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (saved, now)):
        return bool(np.float32(saved) == np.float32(now))
    return saved == now


def _check_resume(meta: dict, run: dict, ckpt_dir, *, config_dtype: str, check_model: bool = True) -> None:
    """ValueError naming every setting where the checkpoint's run and this one differ (first the model,
    if that differs; not with `check_model` False). `config_dtype`: this run's GPT2Config.dtype before
    `bfloat16` replaced it."""
    train_config = meta.get("train_config", {})
    saved = {**meta, "vocab_stored": meta.get("vocab_stored", meta["lens_config"]["vocab_size"]),
             # checkpoints written before the data's fingerprint was recorded cannot be checked for it
             "data": meta.get("data", run["data"]),
             **{f: train_config.get(f, _RESUME_DEFAULTS.get(f)) for f in _RESUME_MUST_MATCH}}
    if "model_dtype" not in meta:  # written before it was recorded: `bfloat16` set it, else the config's
        saved["model_dtype"] = ("bfloat16" if train_config["bfloat16"] else config_dtype) \
            if "bfloat16" in train_config else run["model_dtype"]
    if not check_model:
        saved["model"] = run["model"]
    elif "model" not in meta:
        _log.warning("lens checkpoint %s was written before the model's fingerprint was recorded: resuming it "
                     "without checking that this is the model it was trained on", ckpt_dir)
        saved["model"] = run["model"]
    diff = [f"{k}: checkpoint {saved.get(k)!r}, this run {v!r}" for k, v in run.items()
            if k != "model" and not _same(k, saved.get(k), v)]
    if saved["model"] != run["model"]:
        raise ValueError(f"ckpt_dir: {ckpt_dir} holds a run on another model: the weights or config of the "
                         f"model given differ from those the checkpoint was trained on (model fingerprint: "
                         f"checkpoint {saved['model']!r}, this model {run['model']!r}); resume it with the "
                         f"model it was started on or use a new folder"
                         + (f" (other settings differ too: {'; '.join(diff)})" if diff else ""))
    if diff:
        raise ValueError(f"ckpt_dir: {ckpt_dir} holds another run; resume it with the same settings or use a "
                         f"new folder ({'; '.join(diff)})")


def restore_lens(ckpt_dir: str | os.PathLike) -> tuple[dict, LensConfig]:
    """The lens of the latest orbax checkpoint in `ckpt_dir` (without the Adam state)."""
    import orbax.checkpoint as ocp

    # orbax's manager creates a missing folder (and its parents) by default: a mistyped path was made
    if not Path(ckpt_dir).is_dir():
        raise ValueError(f"ckpt_dir: expected a folder of lens checkpoints, got {ckpt_dir}, which "
                         f"{'is a file' if Path(ckpt_dir).exists() else 'does not exist'}")
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    with ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options, item_handlers=_handlers()) as mngr:
        step = mngr.latest_step()
        if step is None:
            raise ValueError(f"ckpt_dir: {ckpt_dir} holds no checkpoint")
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        try:
            config = LensConfig(**meta["lens_config"])
        except (KeyError, TypeError, ValueError) as e:  # LensConfig's own message names no checkpoint
            raise ValueError(f"ckpt_dir: {ckpt_dir} step {step}: expected lens_config metadata with the fields of "
                             f"LensConfig (layer, n_head, d_model, vocab_size, kind), got "
                             f"{str(meta.get('lens_config'))[:200]} ({e})") from e
        # onto this process's first device: restored without a target, a checkpoint of a run on another
        # number of devices (any data-parallel run read on one machine) was orbax's "Topology mismatch"
        tree = mngr.item_metadata(step)["state"]
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local),
                              getattr(tree, "tree", tree), is_leaf=lambda a: hasattr(a, "shape") and hasattr(a, "dtype"))
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    lens = state[0] if isinstance(state, (list, tuple)) else state["lens"]
    return unpad_lens({k: np.asarray(v) for k, v in lens.items()}, config.vocab_size), config


def summary(result: TrainResult) -> str:
    return json.dumps({"start_step": result.start_step, "steps": result.steps,
                       "first_loss": result.losses[0] if result.losses else None,
                       "last_loss": result.losses[-1] if result.losses else None})
