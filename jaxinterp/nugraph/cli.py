"""`jaxinterp nugraph ...`: the NuGraph2 subcommands (nothing heavy imported at module level).

Data, training and evaluation subcommands (`simulate`, `train`, `eval`) live in `commands.py`;
model subcommands (`convert`, `info`: official checkpoints) are added here beside them.
"""

from __future__ import annotations


def _convert(args) -> int:
    from jaxinterp.nugraph import checkpoint, model

    checkpoint.check_params_target(args.out)  # before the checkpoint is read
    ckpt = checkpoint.load_official_checkpoint(args.ckpt)
    out = checkpoint.save_params(args.out, ckpt.params)
    print(f"wrote {out}: NuGraph2 {ckpt.config}, {model.num_params(ckpt.params):,} parameters")
    return 0


def _info(args) -> int:
    from jaxinterp.nugraph import checkpoint, model

    ckpt = checkpoint.load_official_checkpoint(args.ckpt)
    print(f"config: {ckpt.config}")
    print(f"parameters: {model.num_params(ckpt.params):,}; epoch: {ckpt.epoch}")
    print(f"hyper_parameters: {ckpt.hyper_parameters}")
    return 0


def _add_model_subcommands(nsub) -> None:
    c = nsub.add_parser("convert", help="official NuGraph2 Lightning .ckpt -> orbax params (no torch needed)")
    c.add_argument("ckpt", help="the official .ckpt file")
    c.add_argument("out", help="orbax output directory")
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
