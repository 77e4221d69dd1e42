"""`jaxinterp toyworld ...`: build the world, train the built-in model, evaluate it, ship it.

    jaxinterp toyworld facts                       # the world's facts and held-out compositions
    jaxinterp toyworld train --out RUN [--steps N --minutes M]   # resumes from RUN/checkpoints
    jaxinterp toyworld evaluate [--model DIR] [--json PATH]      # accuracy tables, on the model's world
    jaxinterp toyworld prompts --out CSV [--all]   # memory-injection prompt set
    jaxinterp toyworld ship RUN                    # copy RUN's model, eval and prompts into the package

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

from jaxinterp.cliargs import fraction, non_negative_int, output_file, output_folder, positive_float, positive_int


# option dest -> WorldConfig field
_WORLD_ARGS = {"countries": "n_countries", "cities_per_country": "cities_per_country", "people": "n_people",
               "companies": "n_companies", "train_fraction": "train_fraction", "world_seed": "seed"}


def _given_world(args) -> dict:
    """The WorldConfig fields named on the command line."""
    return {field: getattr(args, dest) for dest, field in _WORLD_ARGS.items() if getattr(args, dest) is not None}


def _world_config(args, base=None):
    """`base` (default: WorldConfig()'s defaults) with the world options given on the command line."""
    from jaxinterp.toyworld.world import WorldConfig

    return dataclasses.replace(WorldConfig() if base is None else base, **_given_world(args))


def _model_world(args, model):
    """The world to evaluate `model` on: the one in the train.json beside it (a `toyworld train` run
    folder holds model/ and train.json, as the shipped assets do), else the command line's. World
    options that contradict the model's own world are refused: its held-out split would be another."""
    from jaxinterp.toyworld.world import run_world_config, train_json_path

    own = run_world_config(model)
    if own is None:
        return _world_config(args)
    record = train_json_path(model)
    asked = _given_world(args)
    diff = [f"--{dest.replace('_', '-')}: the model's {getattr(own, field)}, got {asked[field]}"
            for dest, field in _WORLD_ARGS.items() if field in asked and asked[field] != getattr(own, field)]
    if diff:
        raise ValueError(f"world options: expected the world of the model (in {record}) or none, got "
                         f"{'; '.join(diff)}")
    return own


def _add_world_args(p: argparse.ArgumentParser) -> None:
    from jaxinterp.toyworld.world import WorldConfig

    d = WorldConfig()
    g = p.add_argument_group("world (default: the built-in model's)")
    # no argparse defaults: `evaluate` tells given options from absent ones (the model's own world).
    # Ranges checked by argparse, naming the option ("--countries 0" was refused as WorldConfig.n_countries)
    g.add_argument("--countries", type=positive_int, help=f"default {d.n_countries}")
    g.add_argument("--cities-per-country", type=positive_int, help=f"default {d.cities_per_country}")
    g.add_argument("--people", type=positive_int, help=f"default {d.n_people}")
    g.add_argument("--companies", type=positive_int, help=f"default {d.n_companies}")
    g.add_argument("--train-fraction", type=fraction,
                   help=f"share of each composition's subjects whose two-hop sentences are trained, rounded half "
                        f"up (default {d.train_fraction})")
    g.add_argument("--world-seed", type=non_negative_int, help=f"default {d.seed}")


def _facts(args) -> int:
    from jaxinterp.toyworld.world import build_world

    world = build_world(_world_config(args))
    for kind, names in world.entities.items():
        print(f"{kind} ({len(names)}): {', '.join(names)}")
    for f in world.facts:
        print(f"{f.relation}({f.subject}) = {f.object}")
    for th in world.two_hops:
        print(f"{th.relation2}({th.relation1}({th.subject})) = {th.relation2}({th.bridge}) = {th.answer}"
              f"  [{'trained' if th.trained else 'held out'}]")
    return 0


def _train(args) -> int:
    from jaxinterp.toyworld.train import TrainConfig, train

    d = TrainConfig()
    cfg = dataclasses.replace(d, **{k: v for k, v in {
        "n_layer": args.layers, "n_embd": args.d_model, "n_head": args.heads, "n_positions": args.n_positions,
        "vocab_size": args.vocab_size,
        "batch_size": args.batch_size, "steps": args.steps, "learning_rate": args.lr, "seed": args.seed,
        "checkpoint_every": args.checkpoint_every}.items() if v is not None})
    res = train(args.out, world_config=_world_config(args), cfg=cfg, max_minutes=args.minutes)
    print(f"wrote {Path(args.out) / 'model'} ({res.seconds:.0f} s this run, resumed from step {res.resumed_from}, "
          f"last loss {res.losses[-1] if res.losses else float('nan'):.4f})")
    return 0


def _evaluate(args) -> int:
    from jaxinterp import atomic
    from jaxinterp.toyworld import default_model, evaluate

    model = args.model or default_model()
    if model is None:
        raise ValueError("--model: no model named and the built-in toy-world model is not installed")
    if not args.model:
        print(f"using the built-in toy-world model at {model}")
    world_config = _model_world(args, model)  # before the model loads
    result = evaluate.evaluate(model, world_config=world_config, candidates=not args.no_candidates)
    print(evaluate.markdown(result))
    if args.json:
        atomic.write_json(args.json, result)  # strict JSON: a NaN (a diverged model's probability) as null
        print(f"wrote {args.json}")
    return 0


def _prompts(args) -> int:
    from jaxinterp.toyworld.world import build_world, prompt_rows, write_prompts_csv

    rows = prompt_rows(build_world(_world_config(args)), held_out_only=not args.all)
    write_prompts_csv(rows, args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


def _ship(args) -> int:
    """Copies a finished run into jaxinterp/assets/toyworld (model, train.json, eval.json, prompts, corpus).

    The run is read and evaluated before anything in the package changes, everything is written into
    a staging folder, and that folder is swapped in by renames (the old one set aside until the new one
    is in place), so a run that fails to load or a crash leaves the shipped model and its files as
    they were.
    """
    from jaxinterp import atomic
    from jaxinterp.toyworld import ASSETS, EVAL_JSON, MODEL_DIR, PROMPTS_CSV, evaluate
    from jaxinterp.toyworld.world import build_world, prompt_rows, run_world_config, training_sentences, write_prompts_csv

    run = Path(args.run)
    if not (run / "model" / "model.safetensors").exists() or not (run / "train.json").exists():
        raise ValueError(f"run: {run} holds no finished training run (model/model.safetensors and train.json)")
    world_config = run_world_config(run / "model")
    if world_config is None:
        raise ValueError(f"run: expected the world settings (\"world\") in {run / 'train.json'}, found none")
    record = json.loads((run / "train.json").read_text())
    result = evaluate.evaluate(run / "model", world_config=world_config)  # before the package changes
    world = build_world(world_config)
    # Everything is written into a staging folder beside the assets, which then replaces them by two
    # renames (the old folder set aside until the new one is in place): a crash while the model, the
    # records, the prompts or the corpus are written leaves the shipped ones as they were (the model
    # folder alone was swapped before, then the rest rewritten file by file, so a crash in between left
    # the new model beside the old model's train.json and figures).
    model = MODEL_DIR.relative_to(ASSETS)
    stage, old = ASSETS.with_name(ASSETS.name + ".tmp"), ASSETS.with_name(ASSETS.name + ".old")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        shutil.copytree(run / "model", stage / model)
        for f in (stage / model).iterdir():  # package data: readable by everyone (safetensors leaves
            f.chmod(0o755 if f.is_dir() else 0o644)  # 0600); a folder (a killed save's leftover) keeps its x bit
        for f in ASSETS.iterdir() if ASSETS.exists() else ():  # what this command does not write stays
            if f.name != model.parts[0]:
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, stage / f.name)
        atomic.write_json(stage / "train.json", record)
        write_prompts_csv(prompt_rows(world, held_out_only=True), stage / PROMPTS_CSV.relative_to(ASSETS))
        write_prompts_csv(prompt_rows(world, held_out_only=False), stage / "prompts_all.csv")
        # The training text, one sentence a line (the lens demo and `jaxinterp lens train` read it).
        atomic.write_text(stage / "corpus.txt", "\n".join(training_sentences(world)) + "\n")
        atomic.write_json(stage / EVAL_JSON.relative_to(ASSETS), result)
        if ASSETS.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(ASSETS, old)
        try:
            os.rename(stage, ASSETS)
        except BaseException:
            if old.exists() and not ASSETS.exists():
                os.rename(old, ASSETS)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    print(evaluate.markdown(result))
    print(f"shipped {run} to {ASSETS}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("toyworld", help="the synthetic two-hop world and its built-in GPT-2")
    ts = p.add_subparsers(dest="toyworld_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])  # no subcommand: this help, not the top one

    f = ts.add_parser("facts", help="print the world's facts and which compositions are held out")
    _add_world_args(f)
    f.set_defaults(func=_facts)

    from jaxinterp.toyworld.train import TrainConfig

    t = ts.add_parser("train", help="train the GPT-2 on the world (resumes from OUT/checkpoints)")
    t.add_argument("--out", required=True, type=output_folder, help="run folder: checkpoints/, model/, train.json")
    t.add_argument("--steps", type=positive_int)
    t.add_argument("--minutes", type=positive_float, help="stop (after a checkpoint) when this run passes this wall time")
    t.add_argument("--layers", type=positive_int)
    t.add_argument("--d-model", type=positive_int)
    t.add_argument("--heads", type=positive_int)
    t.add_argument("--vocab-size", type=positive_int)
    # the longest training sentence must fit: a smaller vocabulary splits sentences into more tokens
    t.add_argument("--n-positions", type=positive_int, help=f"context length (default {TrainConfig().n_positions})")
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--seed", type=non_negative_int)
    t.add_argument("--checkpoint-every", type=positive_int)
    _add_world_args(t)
    t.set_defaults(func=_train)

    e = ts.add_parser("evaluate", help="single-hop, two-hop and explicit-form accuracy tables (on the world "
                                       "in the train.json beside the model, where there is one)")
    e.add_argument("--model", help="model folder (default: the built-in toy-world model)")
    e.add_argument("--json", type=output_file, help="also write the figures here")
    e.add_argument("--no-candidates", action="store_true", help="skip the (slower) candidate-choice accuracy")
    _add_world_args(e)
    e.set_defaults(func=_evaluate)

    q = ts.add_parser("prompts", help="write the memory-injection prompt CSV of the world")
    q.add_argument("--out", required=True, type=output_file)
    q.add_argument("--all", action="store_true", help="trained compositions too (default: held-out only)")
    _add_world_args(q)
    q.set_defaults(func=_prompts)

    s = ts.add_parser("ship", help="copy a finished run into the package (jaxinterp/assets/toyworld)")
    s.add_argument("run")
    s.set_defaults(func=_ship)
