"""`jaxinterp nugraph ...`: the NuGraph2 subcommands (nothing heavy imported at module level).

Data, training and evaluation subcommands (`simulate`, `train`, `eval`) live in `commands.py`;
model subcommands (`convert`, `info`: official checkpoints) are added here beside them. `convert`
writes the model folder (model.npz + model.json) that `eval --params`, `train --init` and `widen`
read, with the feature norm of a processed HDF5 file given by `--norm` (the checkpoint has none).
"""

from __future__ import annotations

from jaxinterp.cliargs import output_folder


def _convert(args) -> int:
    from jaxinterp.nugraph import checkpoint, model

    if args.orbax is not None:
        checkpoint.check_params_target(args.orbax)  # before the checkpoint is read
    ckpt = checkpoint.convert(args.ckpt, args.out, norm_file=args.norm)
    print(f"wrote {args.out}/model.npz and model.json: NuGraph2 {ckpt.config}, "
          f"{model.num_params(ckpt.params):,} parameters, feature norm of {args.norm}")
    if args.orbax is not None:
        print(f"wrote {checkpoint.save_params(args.orbax, ckpt.params)} (orbax params)")
    return 0


def _info(args) -> int:
    from jaxinterp.nugraph import checkpoint, model

    ckpt = checkpoint.load_official_checkpoint(args.ckpt)
    print(f"config: {ckpt.config}")
    print(f"parameters: {model.num_params(ckpt.params):,}; epoch: {ckpt.epoch}")
    print(f"hyper_parameters: {ckpt.hyper_parameters}")
    return 0


def _add_model_subcommands(nsub) -> None:
    c = nsub.add_parser("convert", help="official NuGraph2 Lightning .ckpt -> a model folder (model.npz + model.json) "
                        "that eval, widen and train --init read, and evaluate.load_model loads for predict.predict (no torch needed)")
    c.add_argument("ckpt", help="the official .ckpt file")
    c.add_argument("out", type=output_folder, help="output folder for model.npz and model.json")
    c.add_argument("--norm", required=True, metavar="FILE.gnn.h5",
                   help="processed NuGraph HDF5 file whose /norm/{plane} (feature mean and std) the model was "
                   "trained with: the checkpoint carries none, and the model sees features normalised by it")
    c.add_argument("--orbax", default=None, metavar="DIR", help="also save the params as an orbax checkpoint folder "
                   "(a new path, or an orbax checkpoint to replace)")
    c.set_defaults(func=_convert)
    i = nsub.add_parser("info", help="show an official NuGraph2 checkpoint's configuration")
    i.add_argument("ckpt")
    i.set_defaults(func=_info)


def add_parser(sub) -> None:
    p = sub.add_parser("nugraph", help="NuGraph2: simulate LArTPC events, train, evaluate")
    nsub = p.add_subparsers(dest="nugraph_command", metavar="NUGRAPH_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    from jaxinterp.nugraph import commands

    commands.add_subcommands(nsub)
    _add_model_subcommands(nsub)
