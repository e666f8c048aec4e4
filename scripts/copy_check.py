"""Does a causal LM copy? Its loss on a random token sequence repeated once: first copy against second copy.

A model that can retrieve from its context predicts the second copy almost perfectly (an induction/copy circuit);
one that cannot does no better on it than on the first. A quick, RULER-independent check of a teacher checkpoint
(results/ruler/teacher_pilots/README.md, round 3)::

    python scripts/copy_check.py ~/.cache/probseq/teacher/share80/checkpoints/checkpoint-2100

Prints, per length of the random sequence, the mean next-token loss (nats) on the first copy (positions 1 … n − 1)
and on the second after its first token (positions n + 1 … 2n − 1; the first token of the second copy cannot be
foreseen), over ``--sequences`` sequences of token ids drawn uniformly from
``[--low, vocab − 10)`` (clear of the special tokens and bytes) with ``torch.Generator().manual_seed(--seed)``.
"""

from __future__ import annotations

import argparse
import math

import torch


def copy_losses(model, vocab_size: int, length: int, sequences: int, low: int, seed: int) -> tuple[float, float]:
    """(first-copy loss, second-copy loss) in nats for ``sequences`` random sequences of ``length`` tokens."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(low, vocab_size - 10, (sequences, length), generator=generator)
    ids = torch.cat([tokens, tokens], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    losses = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]  # [B, 2n − 1]: of token t + 1
    return losses[:, : length - 1].mean().item(), losses[:, length:].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a ProbSeqForCausalLM folder (a Trainer checkpoint or an export)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--low", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from probseq.models import ProbSeqForCausalLM

    model = ProbSeqForCausalLM.from_pretrained(args.checkpoint).eval()
    vocab = model.config.vocab_size
    if not 0 <= args.low < vocab - 10:
        raise SystemExit(f"--low must be in [0, {vocab - 10}), got {args.low}")
    print(f"{args.checkpoint}: uniform guess {math.log(vocab):.2f} nats")
    for length in args.lengths:
        first, second = copy_losses(model, vocab, length, args.sequences, args.low, args.seed)
        print(f"random sequence of {length} tokens, repeated: first copy {first:.2f} nats, second copy {second:.2f}")


if __name__ == "__main__":
    main()
