"""Forward+backward time of the chunked filter per chunk size: the Bayesian Layer (learned-style retention) and
Gated DeltaNet (its reset path) at C = 16, 32, 64, for the shapes the defaults serve.

    python scripts/chunk_sizes.py [--rounds 8]

Shapes (B, T, H, K): the MQAR model (64, 256, 2, 32), the recall model (64, 54, 2, 32), the benchmark's long
sequence (4, 4096, 2, 64) and the benchmark's layer (2, 2048, 4, 128). One thread, interleaved rounds in a random
order, medians in ms. The delta-rule layers' default chunk size (``probseq.layers.utils.delta_chunk_size``: half
the key head dim between 16 and 64) follows from it. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from probseq.cpu import fast_cpu_arithmetic
from probseq.ops.bayes.chunked import bayes_chunked
from probseq.types import BayesState

SHAPES = ((64, 256, 2, 32), (64, 54, 2, 32), (4, 4096, 2, 64), (2, 2048, 4, 128))
SIZES = (16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fast_cpu_arithmetic()
    gen = torch.Generator().manual_seed(0)
    for batch, length, heads, dim in SHAPES:
        q, v = (torch.randn(batch, length, heads, dim, generator=gen).requires_grad_() for _ in range(2))
        k = torch.nn.functional.normalize(torch.randn(batch, length, heads, dim, generator=gen), dim=-1)
        k.requires_grad_()
        log_decay = (-0.1 * torch.rand(batch, length, heads, generator=gen)).requires_grad_()
        noise = (0.05 + torch.rand(batch, length, heads, generator=gen)).requires_grad_()
        retention = torch.rand(batch, length, heads, generator=gen).requires_grad_()
        grad = torch.randn(batch, length, heads, dim, generator=gen)
        state = BayesState(torch.zeros(batch, heads, dim, dim), torch.eye(dim).expand(batch, heads, dim, dim).clone())

        def run(size: int, mixer: str) -> None:
            gamma = retention if mixer == "bayesian" else None
            bayes_chunked(q, k, v, log_decay, noise, gamma, state, dim**-0.5, size, False)[0].backward(grad)

        cases = [(size, mixer) for size in SIZES for mixer in ("bayesian", "gated_deltanet")]
        for case in cases:
            run(*case)
        times = {case: [] for case in cases}
        for _ in range(args.rounds):
            for case in random.sample(cases, len(cases)):
                start = time.perf_counter()
                run(*case)
                times[case].append(time.perf_counter() - start)
        cells = " | ".join(
            f"{mixer} " + " ".join(f"C={size} {1000 * statistics.median(times[(size, mixer)]):.1f}" for size in SIZES)
            for mixer in ("bayesian", "gated_deltanet")
        )
        print(f"B={batch} T={length} H={heads} K={dim} (ms): {cells}")


if __name__ == "__main__":
    main()
