"""The ``probseq`` command line: ``probseq <command> --help`` for each command.

The arguments are defined in :mod:`probseq_cli.parsers` (torch-free, so that help answers at once); each parsed
command names its function as ``"module:function"`` and :func:`run` imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from probseq_cli.parsers import build_parser

__all__ = ["build_parser", "command_function", "main", "run"]


def command_function(target: str):
    """``"probseq.experiments.mqar:main"`` → that function (imports its module)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; a ``ValueError`` (bad input) becomes a one-line error and exit code 2."""
    try:
        return command_function(args.run)(args) or 0
    except ValueError as error:
        print(f"probseq {args.command}: error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
