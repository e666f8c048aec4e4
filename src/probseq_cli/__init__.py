"""The ``probseq`` console script's entry point, kept outside the ``probseq`` package: importing ``probseq``
loads torch and transformers (seconds), while parsing needs neither. :mod:`probseq_cli.parsers` defines every
command's arguments, so ``probseq --help``, ``probseq <command> --help`` and a bad argument answer at once;
a command that parses goes to :func:`probseq.cli.run`, which imports the module that runs it."""

from __future__ import annotations

import os
import signal
import sys

from probseq_cli.parsers import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and argument errors exit here, before any heavy import
    from probseq.cli import INTERRUPTED, run

    code = run(args)
    if code == INTERRUPTED:  # Ctrl-C: after the one-line message, die by SIGINT as Python itself would, so that
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell loop or script around the command stops too
        os.kill(os.getpid(), signal.SIGINT)
    return code


if __name__ == "__main__":
    sys.exit(main())
