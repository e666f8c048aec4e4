"""The language-model loss with and without materialised logits: time and memory at the small teacher's shape.

    python scripts/lm_loss_ab.py [--rounds 8] [--threads 1]

Times forward+backward of the LM head and the causal-LM loss (B = 8, T = 512, D = 256, V = 8,192: the ``small``
pretraining preset's micro-batch) as transformers computes it (``[B, T, V]`` logits, ``ForCausalLMLoss``) and as
:func:`probseq.ops.cross_entropy.linear_cross_entropy` does at two chunk sizes, in interleaved rounds (each round
runs every case once, in a random order); prints the median of the rounds in ms. Then, each case in a fresh
subprocess, the peak resident memory of one forward+backward of the whole small teacher model. Run it on an idle
machine: a busy one moves the times by up to 2×.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time

import torch

from probseq.cpu import fast_cpu_arithmetic
from probseq.ops.cross_entropy import linear_cross_entropy

BATCH, LENGTH, DIM, VOCAB = 8, 512, 256, 8192


def _time(rounds: int) -> None:
    from transformers.loss.loss_utils import ForCausalLMLoss

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(BATCH, LENGTH, DIM, generator=gen).requires_grad_()
    weight = (0.02 * torch.randn(VOCAB, DIM, generator=gen)).requires_grad_()
    labels = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
    count = BATCH * (LENGTH - 1)

    def chunked(rows):
        return lambda: (linear_cross_entropy(hidden[:, :-1], weight, labels[:, 1:], rows=rows) / count).backward()

    cases = {
        "materialised logits": lambda: ForCausalLMLoss(hidden @ weight.T, labels, vocab_size=VOCAB).backward(),
        "chunked, 256 rows": chunked(256),
        "chunked, 1024 rows (default)": chunked(None),
    }
    for call in cases.values():
        call()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name in random.sample(list(cases), len(cases)):
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    print(f"LM head + loss, forward+backward, B={BATCH} T={LENGTH} D={DIM} V={VOCAB} (median of {rounds} rounds):")
    for name, values in times.items():
        print(f"  {name:30s} {1000 * statistics.median(values):7.1f} ms")


def _peak_memory(skip_logits: bool) -> None:
    from probseq.models import ProbSeqConfig, ProbSeqForCausalLM

    config = ProbSeqConfig(
        vocab_size=VOCAB,
        hidden_size=DIM,
        num_hidden_layers=4,
        mixer="gated_deltanet",
        num_heads=2,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=LENGTH,
    )
    torch.manual_seed(0)
    model = ProbSeqForCausalLM(config).train()
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(input_ids=ids, labels=ids, skip_logits=skip_logits).loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"  skip_logits={skip_logits}: peak resident memory +{(after - before) / 1024:.0f} MB over the model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-case", choices=["0", "1"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fast_cpu_arithmetic()  # as every probseq command and Trainer run
    if args.memory_case is not None:
        _peak_memory(args.memory_case == "1")
        return
    _time(args.rounds)
    print("Whole small teacher model, one forward+backward (fresh process each):")
    for case in ("0", "1"):
        subprocess.run([sys.executable, __file__, "--memory-case", case, "--threads", str(args.threads)], check=True)


if __name__ == "__main__":
    main()
