"""`jaxinterp nugraph ...`: the NuGraph2 subcommands (nothing heavy imported at module level).

Data, training and evaluation subcommands (`simulate`, `train`, `eval`) live in `commands.py`;
model subcommands are added here beside them.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("nugraph", help="NuGraph2: simulate LArTPC events, train, evaluate")
    nsub = p.add_subparsers(dest="nugraph_command", metavar="NUGRAPH_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    from jaxinterp.nugraph import commands

    commands.add_subcommands(nsub)
