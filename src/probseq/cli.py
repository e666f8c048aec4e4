"""The ``probseq`` command line: ``probseq <command> --help`` for each command.

The arguments are defined in :mod:`probseq_cli.parsers` (torch-free, so that help answers at once); each parsed
command names its function as ``"module:function"`` and :func:`run` imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from probseq_cli.parsers import build_parser

__all__ = ["EXTRA_PACKAGES", "INTERRUPTED", "RESUMABLE", "build_parser", "command_function", "main", "run"]

#: What :func:`run` returns after Ctrl-C (128 + SIGINT); the console script then re-raises SIGINT.
INTERRUPTED = 130

#: Commands that keep their finished work (caches, checkpoints) and continue it when rerun.
RESUMABLE = frozenset({"collision", "mqar", "recall", "reproduce", "demo", "pretrain", "distill", "ruler"})


#: The packages of probseq's optional extras (pyproject.toml): the commands need the ``experiments`` extra, which
#: brings them all; a bare ``pip install probseq`` has torch, einops and numpy only.
EXTRA_PACKAGES = frozenset(
    {"transformers", "safetensors", "huggingface_hub", "accelerate", "tokenizers", "matplotlib", "tqdm", "wonderwords"}
)


def command_function(target: str):
    """``"probseq.experiments.mqar:main"`` → that function (imports its module)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; a ``ValueError`` (bad input) or a missing optional package (an extra not installed)
    becomes a one-line error and exit code 2, Ctrl-C a line that says how to resume (exit code 130), none a
    traceback. When stderr is not a terminal the command draws no progress bars (:mod:`probseq.console`)."""
    from probseq.console import command_output
    from probseq.cpu import flush_subnormals, keep_freed_memory

    keep_freed_memory()  # with subnormals flushed: the same results, faster (probseq.cpu)
    try:
        with flush_subnormals(), command_output():  # no library progress bars in a log (probseq.console)
            return command_function(args.run)(args) or 0
    except ValueError as error:
        print(f"probseq {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in EXTRA_PACKAGES:
            raise
        print(
            f"probseq {args.command}: error: {error}: the probseq commands need the experiments extra, "
            "pip install 'probseq[experiments]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        resume = ": rerun the same command to resume" if args.command in RESUMABLE else ""
        print(f"\nprobseq {args.command}: interrupted{resume}", file=sys.stderr)
        return INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
