"""The ``probseq`` console script's entry point, kept outside the ``probseq`` package so that ``probseq``,
``probseq --help`` and a mistyped command answer at once: importing ``probseq`` loads torch and
transformers (seconds). Everything else — ``probseq <command> …``, ``probseq <command> --help`` — goes to
:func:`probseq.cli.main`. ``COMMANDS`` mirrors the commands that :func:`probseq.cli.build_parser` registers
(a test keeps the two equal)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = "The ``probseq`` command line: ``probseq <command> --help`` for each command."

COMMANDS = {
    "collision": "collision study: simulation vs closed-form theory (the paper's collision study)",
    "bench": "time the filters against their peers (README, Benchmark)",
    "uncertainty": "heat map of the Bayesian layers' predictive variance per token",
    "mqar": "Zoology MQAR: accuracy vs key-value pairs and state size, per mixer",
    "recall": "learned associative recall inside and beyond the training regime",
    "reproduce": "reproduce the paper's claims → OUT/REPORT.md",
    "demo": "alias of reproduce (--preset quick by default)",
    "convert-fla": "convert an fla Gated DeltaNet checkpoint into a probseq model (docs/interop.md)",
    "export-fla": "export a probseq model that is a Gated DeltaNet to fla's format (docs/interop.md)",
    "pretrain": "pretrain a Gated DeltaNet LM on the offline corpus, export as fla",
    "distill": "distil an fla GDN teacher into Bayesian Layers (or the GDN baseline)",
    "ruler": "RULER retrieval scores of a model at several context lengths",
}


def overview_parser() -> argparse.ArgumentParser:
    """The top-level parser alone: command names and one-line helps, no command arguments."""
    parser = argparse.ArgumentParser(prog="probseq", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or (not argv[0].startswith("-") and argv[0] not in COMMANDS):
        overview_parser().parse_args(argv[:1])  # prints the help or the error and exits
    from probseq.cli import main as full_main

    return full_main(argv)


if __name__ == "__main__":
    sys.exit(main())
