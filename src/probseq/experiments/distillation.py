"""``probseq pretrain`` and ``probseq distill`` — the command lines of :mod:`probseq.train.pretrain` and
:mod:`probseq.train.distill` (the protocol: docs/distillation.md).

The arguments are defined in :mod:`probseq_cli.parsers`; the training modules (and transformers' Trainer) are
imported when a command runs.
"""

from __future__ import annotations

import sys

from probseq.files import check_writable


def _loss(value: float | None) -> str:
    """A logged loss for the summary line (``None``: none was measured, e.g. no validation blocks)."""
    return "n/a" if value is None else f"{value:.4f}"


def pretrain_main(args) -> int:
    from probseq.train.pretrain import pretrain, pretrain_config

    config = pretrain_config(args.preset, args.set)
    check_writable(args.out)
    log = pretrain(config, args.out)
    print(
        f"wrote {args.out}: fla GatedDeltaNetForCausalLM, {log['num_parameters']:,} parameters, "
        f"{log['tokens']:,} tokens in {log['steps']} steps, {log['seconds_per_step']:.3f} s/step "
        f"({log['tokens_per_second']:,.0f} tokens/s), valid loss {_loss(log['valid_loss'])}"
    )
    return 0


def distill_main(args) -> int:
    from probseq.train.distill import distill, distill_config

    config = distill_config(args.preset, str(args.teacher), args.tokens, args.baseline, args.set)
    check_writable(args.out)
    log = distill(config, args.out)
    stages = ", ".join(f"stage {s['stage']} {s['objective']} {s['steps']} steps" for s in log["stages"])
    final = log["eval"].get("after_stage2") or {}
    print(
        f"wrote {args.out}: {log['arm']} arm, {log['tokens']:,} tokens ({stages})"
        + (f"; valid KL {_loss(final['kl'])}, LM {_loss(final['lm'])}" if final else ""),
        file=sys.stdout,
    )
    return 0


__all__ = ["distill_main", "pretrain_main"]
