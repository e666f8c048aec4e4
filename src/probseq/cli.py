"""The ``probseq`` command line: ``probseq <command> --help`` for each command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every command with its arguments (imports each command's module)."""
    parser = argparse.ArgumentParser(prog="probseq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from probseq import bench
    from probseq.experiments import collision, mqar, recall, reproduce, uncertainty
    from probseq.interop import fla as fla_interop

    for module in (collision, bench, uncertainty, mqar, recall, reproduce):
        module.add_parser(commands)
    reproduce.add_parser(commands, "demo", help="alias of reproduce (--preset quick by default)")
    fla_interop.add_convert_parser(commands)
    fla_interop.add_export_parser(commands)
    from probseq.experiments import pretrain, ruler_eval  # pretrain, distill, ruler: training code loads on use

    pretrain.add_parsers(commands)
    ruler_eval.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ValueError as error:
        print(f"probseq {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
