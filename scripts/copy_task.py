"""How fast does a small model learn to copy? Train it on pure copy data and watch the second copy's loss.

Each training sequence is a span of ``--span`` random tokens (ids ``[4, vocab)``) repeated to ``--length`` tokens.
After the first copy every token is predictable exactly by finding the previous occurrence of the token before it and
reading what followed (an induction step); before that, by nothing. Printed every ``--every`` steps on the training
batch about to be used: the mean next-token loss (nats) on the first copy and on the second (its positions 1 … span
− 1; the uniform guess is ln(vocab − 4)). A model that has learned to copy is near 0 on the second.

Two model families (results/ruler/teacher_pilots/README.md, round 5)::

    python scripts/copy_task.py --model lm --mixer gated_deltanet                 # the teacher's block, output gate on
    python scripts/copy_task.py --model lm --mixer gated_deltanet --no-gate       # the same without the output gate
    python scripts/copy_task.py --model zoology --mixer gated_deltanet            # Zoology's MQAR model (no gate)

``lm``: :class:`~probseq.models.ProbSeqForCausalLM` (mixer + SwiGLU blocks, as the pretraining teacher); ``zoology``:
:class:`~probseq.models.mqar_model.ZoologyModel` (``[conv block, mixer]``; ``--layout mixers``: two mixer blocks).
AdamW at a constant ``--lr``, no weight decay, gradients clipped at 1; one thread by default.
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def build(args: argparse.Namespace) -> torch.nn.Module:
    if args.model == "lm":
        from probseq.models import ProbSeqConfig, ProbSeqForCausalLM

        config = ProbSeqConfig(
            vocab_size=args.vocab,
            hidden_size=args.width,
            num_hidden_layers=args.layers,
            mixer=args.mixer,
            num_heads=2,
            head_dim=args.width // 2,
            expand_v=1.0,
            hidden_ratio=4,
            conv_size=4,
            use_gate=args.gate,
            max_position_embeddings=args.length,
        )
        return ProbSeqForCausalLM(config)
    from probseq.models.mqar_model import ZoologyConfig, ZoologyModel

    if args.gate:
        raise SystemExit("--model zoology has no output gate (Zoology's MQAR setting): pass --no-gate")
    return ZoologyModel(
        ZoologyConfig(
            vocab_size=args.vocab, d_model=args.width, n_layers=args.layers, mixer=args.mixer, layout=args.layout
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("lm", "zoology"), default="lm")
    parser.add_argument("--mixer", default="gated_deltanet")
    parser.add_argument("--gate", action=argparse.BooleanOptionalAction, default=None, help="output gate (lm: on)")
    parser.add_argument("--layout", choices=("alternating", "mixers"), default="alternating")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--span", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.gate is None:
        args.gate = args.model == "lm"
    if args.vocab <= 4 or args.span < 2 or args.length < 2 * args.span:
        raise SystemExit("need --vocab > 4, --span >= 2 and --length >= 2 × --span")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    data = torch.Generator().manual_seed(1 + args.seed)
    repeats = math.ceil(args.length / args.span)
    span = args.span
    print(f"{args.model} {args.mixer} gate={args.gate} seed={args.seed}: uniform guess {math.log(args.vocab - 4):.2f}")
    start = time.time()
    for step in range(args.steps + 1):
        x = torch.randint(4, args.vocab, (args.batch, span), generator=data)
        ids = x.repeat(1, repeats)[:, : args.length]
        logits = model(input_ids=ids).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        if step % args.every == 0:
            first, second = losses[:, : span - 1].mean().item(), losses[:, span : 2 * span - 1].mean().item()
            print(
                f"step {step:5d}  first copy {first:.2f}  second copy {second:.2f}  {time.time() - start:.0f} s",
                flush=True,
            )
        if step == args.steps:
            break
        optimizer.zero_grad()
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


if __name__ == "__main__":
    main()
