"""``probseq pretrain`` and ``probseq distill`` — the command lines of :mod:`probseq.train.pretrain` and
:mod:`probseq.train.distill` (the protocol: docs/distillation.md).

This module only parses arguments; the training modules (and transformers' Trainer) are imported when a command
runs, so ``probseq --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRETRAIN_HELP = """Pretrain a Gated DeltaNet language model on the offline corpus (KJV Bible and Python docs from Debian
packages, plus retrieval-format text), then export it as an fla GatedDeltaNetForCausalLM directory in OUT
(config.json, model.safetensors, tokenizer files, train_log.json). Checkpoints in OUT/checkpoints; rerunning
the same command resumes. --set key=value overrides a field of the preset (see probseq.train.pretrain.PretrainConfig),
e.g. --set tokens=2000000 batch_size=8 num_threads=2."""

DISTILL_HELP = """Distil an fla Gated DeltaNet teacher into Bayesian Layers (convert_fla with learned retention; stage 1:
layer-wise mixer-output matching, stage 2: logit KL + LM loss), or with --baseline fine-tune the GDN itself with
the same tokens, steps, batch and optimiser (LM + KL). OUT gets the save_pretrained model, the tokenizer and
train_log.json (tokens per stage, validation losses). --set key=value overrides a field of
probseq.train.distill.DistillConfig, e.g. --set stage1_fraction=0.5 retention_init=0.25."""


def add_parsers(commands) -> None:
    """Register ``pretrain`` and ``distill``."""
    parser = commands.add_parser("pretrain", help="pretrain a Gated DeltaNet LM on the offline corpus, export as fla",
                                 description=PRETRAIN_HELP)
    parser.add_argument("--config", default="small", help="preset: tiny, small or 340m (default small)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (the fla checkpoint)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config fields")
    parser.set_defaults(run=_run_pretrain)

    parser = commands.add_parser("distill", help="distil an fla GDN teacher into Bayesian Layers (or the GDN baseline)",
                                 description=DISTILL_HELP)
    parser.add_argument("--teacher", required=True, type=Path, help="the fla Gated DeltaNet directory")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--tokens", required=True, type=_tokens, help="token budget of both stages (e.g. 5000000 or 5M)")
    parser.add_argument("--baseline", action="store_true", help="fine-tune the GDN teacher instead (matched compute)")
    parser.add_argument("--config", default="small", help="preset: tiny, small or 340m (default small)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config fields")
    parser.set_defaults(run=_run_distill)


def _tokens(text: str) -> int:
    """``5000000``, ``5M``, ``2.5M``, ``500k``, ``1G``."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tokens must be a number like 5000000 or 5M, got {text!r}") from None
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"--tokens must be a positive whole number of tokens, got {text!r}")
    return int(value)


def _run_pretrain(args) -> int:
    from probseq.train.pretrain import pretrain, pretrain_config

    config = pretrain_config(args.config, args.set)
    log = pretrain(config, args.out)
    print(f"wrote {args.out}: fla GatedDeltaNetForCausalLM, {log['num_parameters']:,} parameters, "
          f"{log['tokens']:,} tokens in {log['steps']} steps, {log['seconds_per_step']:.3f} s/step "
          f"({log['tokens_per_second']:,.0f} tokens/s), valid loss {log['valid_loss']:.4f}")
    return 0


def _run_distill(args) -> int:
    from probseq.train.distill import distill, distill_config

    config = distill_config(args.config, str(args.teacher), args.tokens, args.baseline, args.set)
    log = distill(config, args.out)
    stages = ", ".join(f"stage {s['stage']} {s['objective']} {s['steps']} steps" for s in log["stages"])
    final = log["eval"].get("after_stage2") or {}
    print(f"wrote {args.out}: {log['arm']} arm, {log['tokens']:,} tokens ({stages})"
          + (f"; valid KL {final['kl']:.4f}, LM {final['lm']:.4f}" if final else ""), file=sys.stdout)
    return 0


__all__ = ["add_parsers"]
