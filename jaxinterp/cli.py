"""The `jaxinterp` command: one subcommand per capability.

Each capability registers its subcommands in its own `cli.py` (`add_parser(subparsers)`), which
imports nothing heavy at module level, so `jaxinterp --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that define `add_parser(subparsers)`; each adds one top-level subcommand.
SUBCOMMAND_MODULES = [
    "jaxinterp.demo",
    "jaxinterp.bench",
    "jaxinterp.transformer.cli",
    "jaxinterp.nugraph.cli",
    "jaxinterp.toyworld.cli",
    "jaxinterp.lens.cli",
    "jaxinterp.merge.cli",
    "jaxinterp.inject.cli",
]

# Commands that run XLA on the CPU call after call: XLA's buffers are reused from the heap instead
# of page-faulting on every call (`jaxinterp.hostmem`; NuGraph2 training 5.2 -> 7.7 steps a second).
# Not `lens`, whose goal is memory (a full-size lens step: 12% faster, but peak RSS 6.4 -> 7.9 GiB),
# nor `merge`, which streams tensors through threads of its own, nor `bench`, which computes nothing
# itself (each benchmark runs in a process of its own, with the allocator settings it chooses).
RETAIN_FREED_MEMORY = {"demo", "nugraph", "inject", "toyworld", "gpt2"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxinterp",
        description="GPT-2 head lenses, memory injection, NuGraph2 and model merging in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in RETAIN_FREED_MEMORY:  # before JAX's first computation (hostmem says why)
        from jaxinterp import hostmem

        hostmem.retain_freed_memory()
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad input: say what was expected and what came, no traceback
        print(f"jaxinterp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line (what was saved, if the command says), no traceback
        print(f"jaxinterp {args.command}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130  # 128 + SIGINT
    except BrokenPipeError:  # `jaxinterp ... | head`: the reader left; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
