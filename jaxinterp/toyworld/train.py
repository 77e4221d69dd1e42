"""Trains the toy world's GPT-2 with optax on the CPU; orbax checkpoints, so a killed run resumes.

One example is one sentence: BOS + the sentence's tokens, right-padded to a fixed length T. The loss
is next-token cross-entropy at every real position. Batch b of epoch e is a slice of a permutation
seeded by (seed, e), so the data position is a function of the step alone and a resumed run sees
exactly the batches the killed one would have seen.

Axis names: N sentences, B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxinterp.checks import check_seed, is_integer
from jaxinterp.cliargs import output_folder
from jaxinterp.toyworld import tokenizer as toktools
from jaxinterp.toyworld.world import WorldConfig, build_world, training_sentences


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model shape and optimisation. Defaults: the shipped model (see BUILD_NOTES.md, "Built-in model", for why)."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 8
    n_positions: int = 32
    vocab_size: int = 640
    batch_size: int = 64
    steps: int = 1200
    learning_rate: float = 4e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0  # memorising facts: decay only fights the goal
    clip_norm: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        # checked as integers and finite numbers here: 3.5 steps or a batch of 4.0 failed inside the
        # training loop (TypeError), after run.json and checkpoints/ were written; a NaN learning rate
        # or weight decay trained the weights into NaN. Each is then stored as a Python number: json.dumps
        # refuses numpy scalars, and run.json (after the tokenizer) and train.json (after the whole run)
        # failed with a TypeError
        for field in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "batch_size", "steps",
                      "warmup_steps", "checkpoint_every", "seed"):
            if not is_integer(getattr(self, field)):
                raise ValueError(f"TrainConfig.{field} must be an integer, got {getattr(self, field)!r}")
            object.__setattr__(self, field, int(getattr(self, field)))
        for field in ("learning_rate", "weight_decay", "clip_norm"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v):
                raise ValueError(f"TrainConfig.{field} must be a finite number, got {v!r}")
            object.__setattr__(self, field, float(v))
        # numpy's batch order takes no negative seed (a ValueError at the first step); PRNGKey keeps a
        # seed's low 32 bits, so 2**32 + 1 initialised the model as seed 1 did
        check_seed(self.seed, "TrainConfig.seed")
        for field in ("n_layer", "n_embd", "n_head", "batch_size", "steps", "checkpoint_every"):
            if getattr(self, field) < 1:
                raise ValueError(f"TrainConfig.{field} must be at least 1, got {getattr(self, field)}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}")
        # a clip norm of 0 zeroes every update (the run trains nothing); a negative warmup shifts the
        # cosine decay; a negative weight decay grows the weights: all silently
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be at least 0, got {self.warmup_steps}")
        if not self.clip_norm > 0:
            raise ValueError(f"TrainConfig.clip_norm must be positive, got {self.clip_norm}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be at least 0, got {self.weight_decay}")
        # checked here, not first by GPT2Config or the tokenizer trainer once the world is built and
        # the tokenizer trained
        if self.n_embd % self.n_head:
            raise ValueError(f"TrainConfig.n_embd must be a multiple of n_head={self.n_head}, got {self.n_embd}")
        if self.n_positions < 2:
            raise ValueError(f"TrainConfig.n_positions must be at least 2 (BOS and a token), got {self.n_positions}")

    def gpt2(self):
        from jaxinterp.transformer.gpt2 import GPT2Config

        return GPT2Config(vocab_size=self.vocab_size, n_positions=self.n_positions, n_embd=self.n_embd,
                          n_layer=self.n_layer, n_head=self.n_head)


class Batch(NamedTuple):
    tokens: np.ndarray  # [N, T] int32, BOS first, padded with BOS
    mask: np.ndarray    # [N, T] int32, 1 at real tokens


class TrainResult(NamedTuple):
    params: dict
    config: object          # GPT2Config
    tokenizer: object
    losses: list[float]     # per logged step
    seconds: float          # wall time of this run (a resumed run counts only its own part)
    resumed_from: int       # 0 for a fresh run


def encode_sentences(tokenizer, sentences: list[str], n_positions: int) -> Batch:
    """Token ids right-padded to the longest sentence rounded up to a multiple of 8 (one shape)."""
    ids = [toktools.encode(tokenizer, s) for s in sentences]
    longest = max(len(i) for i in ids)
    if longest > n_positions:
        # the way out named: with a small vocabulary the default context cannot hold the world's sentences
        raise ValueError(f"a training sentence is {longest} tokens long, more than n_positions={n_positions} "
                         f"(raise n_positions, --n-positions, or the vocabulary, which makes sentences shorter)")
    length = min(-(-longest // 8) * 8, n_positions)
    tokens = np.zeros((len(ids), length), np.int32)  # BOS (id 0) pads
    mask = np.zeros((len(ids), length), np.int32)
    for n, row in enumerate(ids):
        tokens[n, :len(row)] = row
        mask[n, :len(row)] = 1
    return Batch(tokens, mask)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The sentence indices of `step`: epochs are seeded permutations, so a step fixes its batch."""
    per_epoch = max(n // batch_size, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    if n < batch_size:
        perm = np.resize(perm, batch_size)
    return perm[pos * batch_size:(pos + 1) * batch_size]


def lm_loss(params, tokens, mask, *, config):
    """Mean next-token cross-entropy over real target positions."""
    import jax
    import optax

    from jaxinterp.transformer import gpt2

    logits = gpt2.module(config).apply({"params": params}, tokens, mask)  # [B, T, V]
    targets, weights = tokens[:, 1:], mask[:, 1:].astype(logits.dtype)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
    return (ce * weights).sum() / jax.numpy.maximum(weights.sum(), 1.0)


def optimizer(cfg: TrainConfig):
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, min(cfg.warmup_steps, cfg.steps),
                                                  max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate / 20)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=cfg.weight_decay))


@functools.cache
def _train_step(cfg: TrainConfig):
    # Built once per TrainConfig; params and optimiser state are donated (updated in place).
    import jax
    import optax

    config, tx = cfg.gpt2(), optimizer(cfg)

    def step(params, opt_state, tokens, mask):
        loss, grads = jax.value_and_grad(lm_loss)(params, tokens, mask, config=config)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


RUN_JSON = "run.json"
# What a resume may change: `steps` lengthens (or shortens) the run, `checkpoint_every` only says
# when to save. Every other setting decides the data, the model or the update, so it must match.
RESUME_MAY_CHANGE = ("steps", "checkpoint_every")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary (tokens in id order) and the BPE merges: what an id means.

    Built from the content, not from tokenizers' JSON, so a new serialisation of the same tokenizer
    keeps its fingerprint (merges are read as pairs whether stored as "a b" or ["a", "b"]).
    """
    vocab = tokenizer.get_vocab()
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]
    blob = json.dumps({"vocab": sorted(vocab, key=vocab.get), "merges": merges}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def run_record(world_config: WorldConfig, cfg: TrainConfig, tokenizer) -> dict:
    """What a run folder's checkpoints belong to (written to out_dir/run.json): the world config, the
    training config without `RESUME_MAY_CHANGE`, and `tokenizer_fingerprint`. As JSON values."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_MAY_CHANGE}
    record = {"world": dataclasses.asdict(world_config), "train": train,
              "tokenizer_sha256": tokenizer_fingerprint(tokenizer)}
    return json.loads(json.dumps(record))


def check_resume(out_dir: str | Path, record: dict) -> None:
    """Raises ValueError naming every setting where the run in `out_dir` differs from `record`.

    Reads out_dir/run.json; without it, the world and training settings of out_dir/train.json
    (older folders; only the settings it holds are compared); with neither, there is nothing to
    compare with and it returns.
    """
    out_dir = Path(out_dir)
    if (out_dir / RUN_JSON).exists():
        held, source, partial = _read_record(out_dir / RUN_JSON), RUN_JSON, False
    elif (out_dir / "train.json").exists():
        old = _read_record(out_dir / "train.json")
        held, source, partial = {k: old[k] for k in ("world", "train") if k in old}, "train.json", True
    else:
        return
    held_flat, asked_flat = _flatten(held), _flatten(record)
    diff = []
    for key, asked in asked_flat.items():
        if key not in held_flat:
            if not partial:
                diff.append(f"{key}: the folder has none, asked {asked}")
        elif held_flat[key] != asked:
            diff.append(f"{key}: the folder's {held_flat[key]}, asked {asked}")
    if not partial:
        diff += [f"{key}: the folder's {v}, asked none" for key, v in held_flat.items() if key not in asked_flat]
    if diff:
        raise ValueError(f"out_dir: {out_dir} holds checkpoints of a run with other settings ({source}): "
                         f"{'; '.join(diff)}. Resume it with its own settings ({', '.join(RESUME_MAY_CHANGE)} "
                         "may change), or train into a new folder")


def _read_record(path: Path) -> dict:
    """A run folder's JSON record; a ValueError naming the file where it is not a JSON object (a
    damaged run.json was a bare JSONDecodeError naming no file, a list an AttributeError)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        data = e
    if not isinstance(data, dict):
        why = f"({data})" if isinstance(data, Exception) else f"a {type(data).__name__}"
        raise ValueError(f"out_dir: expected {path} to hold the record of the run whose checkpoints are beside it "
                         f"(a JSON object), got {why}: the checkpoints cannot be checked against these settings. "
                         "Restore the file, or train into a new folder")
    return data


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _params_shapes_differ(saved, params) -> str | None:
    """The first params entry whose shape in the checkpoint's metadata (orbax `item_metadata`) differs
    from `params`' (arrays or ShapeDtypeStructs), or one present in only one of them; None if all fit."""
    import jax

    saved = getattr(saved, "tree", saved)
    if not isinstance(saved, dict) or "params" not in saved:
        return None  # nothing to compare with: the restore itself decides

    def shapes(tree):
        return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    stored, wanted = shapes(saved["params"]), shapes(params)
    for name in sorted(stored.keys() | wanted.keys()):
        if stored.get(name) != wanted.get(name):
            return (f"params{name}: stored {'shape ' + str(stored[name]) if name in stored else 'nothing'}, "
                    f"these settings {'shape ' + str(wanted[name]) if name in wanted else 'nothing'}")
    return None


def train(out_dir: str | Path, *, world_config: WorldConfig = WorldConfig(), cfg: TrainConfig = TrainConfig(),
          max_minutes: float | None = None, progress: bool = True, log_every: int = 50) -> TrainResult:
    """Builds the world and tokenizer, trains (resuming from out_dir/checkpoints when present) and
    writes out_dir/model (config.json, model.safetensors, tokenizer files) and out_dir/train.json.

    max_minutes stops early (after a checkpoint) when the wall time of this run passes it.

    out_dir/run.json records what the checkpoints belong to (`run_record`: the world, the training
    settings but `steps` and `checkpoint_every`, a fingerprint of the tokenizer). A resume that asks
    for anything else raises ValueError naming each difference, before any state is read or trained:
    a world of another seed would otherwise go on training on ids that now mean other strings.
    `steps` may change (a longer or shorter run; the learning-rate schedule follows it, so an
    extended run is not the run it would have been with the larger `steps` from the start).
    A folder written before run.json existed is checked against its train.json (world and training
    settings; written whenever a run returned, e.g. after --minutes) where it has one; one with
    neither (a run killed before it returned) resumes as before, checked only by the checkpoint's
    shapes. Either way this run's record is then written, so later resumes are checked.
    """
    import jax
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    from jaxinterp import atomic
    from jaxinterp.transformer import gpt2
    from jaxinterp.transformer.weights import save_gpt2

    # a dict of the settings (as run.json holds them) was an AttributeError, cfg's before any work
    # and world_config's once the world was built
    if not isinstance(world_config, WorldConfig):
        raise ValueError(f"world_config: expected a WorldConfig, got {type(world_config).__name__}: {world_config!r:.80}")
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg: expected a TrainConfig, got {type(cfg).__name__}: {cfg!r:.80}")
    out_dir = Path(out_dir).resolve()
    try:  # a file there (or above it) failed in orbax (NotADirectoryError) after the tokenizer was trained
        output_folder(str(out_dir))
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"out_dir: {e}") from None
    # a NaN limit never stopped the run (every comparison with NaN is false), silently
    if max_minutes is not None and (isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float, np.floating))
                                    or not max_minutes > 0):
        raise ValueError(f"max_minutes must be positive, got {max_minutes!r}")
    # 1.5 logged at steps 3, 6, 9 (where (step + 1) % 1.5 == 0), silently
    if not is_integer(log_every) or log_every < 1:  # 0 was a ZeroDivisionError at the first step, after run.json was written
        raise ValueError(f"log_every must be at least 1, got {log_every!r} (an integer of steps)")
    # the tokenizer trainer's floor, before the world is built and the tokenizer trained (not in
    # TrainConfig: a small world's tokenizer may hold fewer, and the model is then sized to it)
    if not 300 <= cfg.vocab_size <= toktools.MAX_VOCAB:
        raise ValueError(f"TrainConfig.vocab_size must be at least 300 (256 bytes, BOS and some merges) and at most "
                         f"{toktools.MAX_VOCAB} (the BPE trainer allocates that many entries), got {cfg.vocab_size}")
    t0 = time.perf_counter()
    world = build_world(world_config)
    sentences = training_sentences(world)
    tok = toktools.train_tokenizer(sentences, vocab_size=cfg.vocab_size, model_max_length=cfg.n_positions)
    if len(tok) != cfg.vocab_size:  # a tiny world may not fill the vocabulary: size the model to it
        cfg = dataclasses.replace(cfg, vocab_size=len(tok))
    data = encode_sentences(tok, sentences, cfg.n_positions)
    config, tx = cfg.gpt2(), optimizer(cfg)

    def fresh_state(key):
        p = gpt2.init(key, config)
        return {"params": p, "opt_state": tx.init(p)}

    def fresh():
        # One compile (run eagerly, init compiles every op: ~90 programs), and XLA's backend
        # optimisation off: it runs once, and that halves its compile time.
        key = jax.random.PRNGKey(cfg.seed)
        return jax.jit(fresh_state).lower(key).compile({"xla_backend_optimization_level": 0})(key)

    manager = ocp.CheckpointManager(out_dir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2),
                                    item_handlers=ocp.StandardCheckpointHandler())  # item_metadata needs it
    start = manager.latest_step() or 0
    record = run_record(world_config, cfg, tok)
    if start:  # resume: only the shapes of a fresh state are needed to restore into
        try:
            check_resume(out_dir, record)
            abstract = jax.eval_shape(fresh_state, jax.random.PRNGKey(cfg.seed))
            refused = f"out_dir: the checkpoint of step {start} in {out_dir} does not fit these settings"
            advice = "Resume it with its own settings, or train into a new folder"
            # a folder without records, of other shapes: compared before restoring, since orbax's failed
            # restore leaves one asyncio task per array whose error is logged, unretrieved, at exit
            differs = _params_shapes_differ(manager.item_metadata(start), abstract["params"])
            if differs:
                raise ValueError(f"{refused} ({differs}). {advice}")
            try:
                state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
            except ValueError as e:  # the optimiser state of another optimiser (orbax: 'Requested shape ...')
                raise ValueError(f"{refused} ({e}). {advice}") from e
        except BaseException:
            manager.close()
            raise
        # Plain host arrays again: restored arrays carry orbax's sharding, which would make the
        # jitted step compile a second time.
        state = jax.tree.map(lambda a: jax.numpy.asarray(np.asarray(a)), state)
    # A folder from before run.json records this run's settings once its checkpoint has restored
    # (written before, a refused restore left a record of the refused settings: the run's own were
    # then refused as "other settings")
    if not start or not (out_dir / RUN_JSON).exists():  # a fresh run, or a folder from before run.json
        atomic.write_text(out_dir / RUN_JSON, json.dumps(record, indent=2))
    if not start:
        state = fresh()
    params, opt_state = state["params"], state["opt_state"]
    step_fn = _train_step(cfg)
    losses, running = [], []
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="toyworld train", disable=not progress)
    step = start
    for step in bar:
        idx = batch_indices(step, len(data.tokens), cfg.batch_size, cfg.seed)
        params, opt_state, loss = step_fn(params, opt_state, data.tokens[idx], data.mask[idx])
        running.append(loss)
        done = step + 1 == cfg.steps
        late = max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes
        # a run stopped by its time limit logs its last, partial window too: it was dropped, and
        # train.json's final_loss was the mean of a window up to log_every - 1 steps before the stop
        if (step + 1) % log_every == 0 or done or late:
            mean = float(np.mean(jax.device_get(running)))
            running = []
            losses.append(mean)
            bar.set_postfix(loss=f"{mean:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or done or late:
            manager.save(step + 1, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))
        if late:
            break
    manager.wait_until_finished()
    manager.close()
    seconds = time.perf_counter() - t0
    params = jax.device_get(params)
    save_gpt2(params, config, out_dir / "model", tokenizer=tok)
    final_loss = losses[-1] if losses else None
    if start and cfg.steps <= start:  # nothing trained (a finished run run again): its loss stays recorded
        final_loss = _recorded_final_loss(out_dir / "train.json", start)
    summary = {"world": dataclasses.asdict(world_config), "train": dataclasses.asdict(cfg),
              "steps_done": step + 1 if cfg.steps > start else start, "resumed_from": start,
              "seconds_this_run": round(seconds, 1), "final_loss": final_loss,
              "n_sentences": len(sentences), "n_params": int(sum(np.size(a) for a in jax.tree.leaves(params))),
              "machine": _machine()}
    # strict JSON: a diverged run's NaN loss as null (json.dumps wrote a bare NaN, which jq refuses)
    atomic.write_json(out_dir / "train.json", summary)
    return TrainResult(params, config, tok, losses, seconds, start)


def _recorded_final_loss(path: Path, steps_done: int):
    """The final_loss a run folder's train.json records for `steps_done` steps, else None."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return old.get("final_loss") if isinstance(old, dict) and old.get("steps_done") == steps_done else None


def _machine() -> str:
    try:
        from jaxinterp import benchtools

        return benchtools.machine_line()
    except Exception:  # noqa: BLE001 -- a description only
        return "unknown"
