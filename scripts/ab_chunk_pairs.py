"""Interleaved A/B of the Bayesian Layer's (covariance, mean) chunk-length pairs at the recall study's T = 54.

    python scripts/ab_chunk_pairs.py [--rounds 30] [--threads 2] [--length 54]

Times, in one process, forward+backward of the Bayesian chunked filter at the bench's experiments' shape (B·H = 128,
K = 32) with three rules for the pair at nominal 16 and 32: ``balanced_chunk_sizes`` (the covariance chunk divides the
balanced mean chunk: 27 and 27 at T = 54), each balanced alone (14 and 27: the covariance path's tensors re-chunked)
and the mean chunk rounded up to an even length (14 and 28: two tokens of padding, read in place); Gated DeltaNet's
filter and the recall model's training step beside them. Each round runs every case once in a random order; prints
medians over the rounds after the first two and the ratios to Gated DeltaNet.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import probseq.ops.run as run
from probseq.bench import BenchConfig, _call, recall_training_step
from probseq.cpu import fast_cpu_arithmetic


def _alone(chunk: int, mean_chunk: int, length: int) -> tuple[int, int]:
    return run.balanced_chunk_size(chunk, length), run.balanced_chunk_size(mean_chunk, length)


def _padded(chunk: int, mean_chunk: int, length: int) -> tuple[int, int]:
    """The balanced mean chunk rounded up to a multiple of mean_chunk / chunk, the covariance chunk that fraction."""
    per_row = mean_chunk // chunk
    mean = -(-run.balanced_chunk_size(mean_chunk, length) // per_row) * per_row
    return mean // per_row, mean


RULES = {"divisor (27, 27)": run.balanced_chunk_sizes, "alone (14, 27)": _alone, "padded (14, 28)": _padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=54)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fast_cpu_arithmetic()
    config = BenchConfig()
    cases = {}
    for rule, pair in RULES.items():
        cases[("filter", rule)] = (_call("bayes_chunked_small", args.length, "fwd+bwd", config), pair)
        cases[("recall step", rule)] = (recall_training_step("bayesian", config)[1], pair)
    cases[("filter", "Gated DeltaNet")] = (_call("gdn_chunked_small", args.length, "fwd+bwd", config), None)
    cases[("recall step", "Gated DeltaNet")] = (recall_training_step("gated_deltanet", config)[1], None)
    times = {case: [] for case in cases}
    original = run.balanced_chunk_sizes
    try:
        for round_ in range(args.rounds + 2):
            for case in random.sample(list(cases), len(cases)):
                call, pair = cases[case]
                run.balanced_chunk_sizes = pair or original
                start = time.perf_counter()
                call()
                if round_ >= 2:
                    times[case].append(time.perf_counter() - start)
    finally:
        run.balanced_chunk_sizes = original
    print(f"T = {args.length}, {args.threads} thread(s), {args.rounds} rounds, median ms (ratio to Gated DeltaNet)")
    for what in ("filter", "recall step"):
        gdn = statistics.median(times[(what, "Gated DeltaNet")])
        cells = [
            f"{rule} {1e3 * statistics.median(times[(what, rule)]):.1f} "
            f"({statistics.median(times[(what, rule)]) / gdn:.2f})"
            for rule in RULES
        ]
        print(f"{what:<12} " + " | ".join(cells) + f" | Gated DeltaNet {1e3 * gdn:.1f}")


if __name__ == "__main__":
    main()
