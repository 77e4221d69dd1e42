"""`jaxinterp nugraph simulate | train | eval | widen`: argparse set-up and handlers (heavy imports inside).

Registered by `jaxinterp/nugraph/cli.py` through `add_subcommands(nugraph_subparsers)`.
"""

from __future__ import annotations

import argparse

from jaxinterp.cliargs import (fraction, non_negative_float, non_negative_int, output_file, output_folder, positive_float,
                                positive_int)

# Upper bounds of the simulation's knobs: a MicroBooNE-sized detector and its ~1 GeV beam. Above them
# the command ran away instead of failing: --mean-energy 100 took > 8 GB and > 40 s for 3 events
# (1000: 15 GB for one), --cosmics 1e9 looped over a billion muons. At the bounds: 1.5 s, 90 MB (20
# GeV) and 2.3 s, 100 MB (100 cosmics) an event.
MAX_MEAN_ENERGY_GEV = 20.0
MAX_MEAN_COSMICS = 100.0


def _at_most(parse, limit: float, what: str):
    def parse_at_most(text: str):
        value = parse(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"expected {what} of at most {limit:g}, got {text}")
        return value
    return parse_at_most


mean_energy = _at_most(positive_float, MAX_MEAN_ENERGY_GEV, "a mean energy (GeV)")
mean_cosmics = _at_most(non_negative_float, MAX_MEAN_COSMICS, "a mean number of cosmics")


def add_subcommands(sub) -> None:
    p = sub.add_parser("simulate", help="simulate LArTPC events into a processed NuGraph HDF5 file")
    p.add_argument("--events", type=positive_int, required=True, help="number of events")
    p.add_argument("--out", required=True, type=output_file, help="output file (*.gnn.h5), written atomically")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--mean-energy", type=mean_energy, default=None,
                   help=f"mean neutrino energy, GeV (default 1.0, at most {MAX_MEAN_ENERGY_GEV:g})")
    p.add_argument("--max-hits", type=non_negative_int, default=None, help="redraw events with more particle hits in a plane (noise hits come on top)")
    p.add_argument("--min-hits", type=non_negative_int, default=None, help="redraw events with fewer hits in a plane (default 3)")
    p.add_argument("--cosmics", type=mean_cosmics, default=None,
                   help=f"mean number of cosmic muons per event (default 0.7, at most {MAX_MEAN_COSMICS:g})")
    p.add_argument("--run", type=non_negative_int, default=1,
                   help="run number written into the events' metadata and names (r{run}_sr1_evt{i}); it only "
                   "names them: the events depend on --seed alone, so the same --seed with another --run gives "
                   "the same events under other names (use another --seed for new events)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("train", help="train NuGraph2 on a processed NuGraph HDF5 file (resumes from --out)")
    p.add_argument("file", help="*.gnn.h5 with samples/train and samples/validation")
    p.add_argument("--out", default="nugraph_run", type=output_folder, help="run folder: checkpoints, metrics (default nugraph_run)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.01)
    p.add_argument("--balance-frac", type=fraction, default=0.1, help="largest graphs spread evenly over batches")
    p.add_argument("--planar-features", type=positive_int, default=64)
    p.add_argument("--nexus-features", type=positive_int, default=16)
    p.add_argument("--iterations", type=positive_int, default=5)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps (the schedule still spans --epochs)")
    p.add_argument("--limit-train", type=positive_int, default=None, help="use only the first N training events")
    p.add_argument("--limit-val", type=non_negative_int, default=None, help="use only the first N validation events (0: no validation)")
    p.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints")
    p.add_argument("--init", default=None, help="warm start: a model folder (model.npz + model.json, e.g. the "
                   "shipped jaxinterp/assets/nugraph2) whose params start the run; its config must match")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate NuGraph2 on a split: metrics, confusion matrices, event displays")
    p.add_argument("file", help="*.gnn.h5")
    p.add_argument("--params", default=None, help="a folder with model.npz and model.json, as a finished `nugraph train` "
                   "run or `nugraph convert` writes them (or a file in that folder); default: the shipped model")
    p.add_argument("--split", default="test", choices=["train", "validation", "test", "all"])
    p.add_argument("--out", default="nugraph_eval", type=output_folder, help="output folder for metrics.json and PNGs")
    p.add_argument("--displays", type=non_negative_int, default=3, help="event displays to draw")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N events")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.set_defaults(func=_eval)

    p = sub.add_parser("widen", help="a trained model made wider with the same function (Net2WiderNet), to "
                       "warm-start a larger one with train --init")
    p.add_argument("--params", default=None, help="model folder (model.npz + model.json); default: the shipped model")
    p.add_argument("--out", required=True, type=output_folder, help="folder for the widened model.npz and model.json")
    p.add_argument("--factor", type=positive_int, default=2, help="planar and nexus features times this (default 2)")
    p.add_argument("--noise", type=non_negative_float, default=0.0, help="Gaussian noise on the widened kernels, "
                   "times each kernel's std (0: the same function; a few percent breaks the copies' symmetry)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise")
    p.set_defaults(func=_widen)


def _simulate(args) -> int:
    import numpy as np

    from jaxinterp.nugraph import hdf5, simulate

    kw = {}
    if args.mean_energy is not None:
        kw.update(mean_energy_gev=args.mean_energy, max_energy_gev=max(4 * args.mean_energy, 0.2))
    if args.max_hits is not None:
        kw["max_hits_per_plane"] = args.max_hits
    if args.min_hits is not None:
        kw["min_hits_per_plane"] = args.min_hits
    if args.cosmics is not None:
        kw["mean_cosmics"] = args.cosmics
    cfg = simulate.SimConfig(**kw)
    # streamed: each event is written as it is made and dropped (a list of them all grew without
    # bound with --events); the norm and the summary gather a few numbers an event as they pass
    summary, subrun = simulate.SummaryStats(), 1

    def made():
        for ev in simulate.stream(args.events, seed=args.seed, config=cfg, run=args.run, subrun=subrun,
                                  progress=True):
            summary.add(ev)
            yield ev

    names = [hdf5.event_name(args.run, subrun, i) for i in range(args.events)]
    path = hdf5.write_event_stream(args.out, made(), names)
    info = hdf5.read_info(path)
    stats = summary.result()
    print(f"wrote {args.events} events to {path} (train {len(info.samples['train'])}, "
          f"validation {len(info.samples['validation'])}, test {len(info.samples['test'])})")
    print("hits per plane: " + ", ".join(f"p{q} {v:.0f}" for q, v in zip((0, 10, 50, 90, 100), stats.hits_percentiles)))
    print("class mix of hits: " + ", ".join(f"{k} {v:.1%}" for k, v in stats.class_mix.items()))
    print(f"space points per event: median {np.median(stats.space_points):.0f}")
    return 0


def _train(args) -> int:
    from jaxinterp.nugraph import train

    train.run_cli(args)
    return 0


def _eval(args) -> int:
    from jaxinterp.nugraph import evaluate

    evaluate.run_cli(args)
    return 0


def _widen(args) -> int:
    from pathlib import Path

    from jaxinterp.nugraph import evaluate, model, widen
    from jaxinterp.nugraph.train import check_model_out, save_model

    start = evaluate.load_model(args.params)
    # the folder load_model read, resolved: as given, a relative path (or the folder's model.npz) named
    # the same source otherwise than a repeat through another path, which was then refused
    source = "the shipped model" if args.params is None else Path(args.params).resolve()
    source = source.parent if isinstance(source, Path) and source.is_file() else source
    settings = {"factor": args.factor, "noise": args.noise, "seed": args.seed}
    provenance = {"widened_from": f"{source} (factor {args.factor}, noise {args.noise}, seed {args.seed})",
                  "widened_from_sha256": start.npz_sha256, "widen_settings": settings}
    # a repeat is the same source model (its bytes) under the same settings, wherever it was read from
    check_model_out(args.out, provenance, compare=("widened_from_sha256", "widen_settings"))  # before any compute
    params, config = widen.widen(start.params, start.config, factor=args.factor, noise=args.noise, seed=args.seed)
    save_model(Path(args.out), params, config, start.norm, provenance)
    print(f"wrote {args.out}: {config.planar_features} planar / {config.nexus_features} nexus features, "
          f"{model.num_params(params):,} parameters (from {model.num_params(start.params):,})")
    return 0
