"""Interleaved A/B timing of the in-chunk ratio matrices: ``segment_ratios`` against ``segsum(x).exp()``.

    python scripts/ab_segment_ratios.py [--rounds 12]

Times forward+backward (a dense output gradient) of ``bayes_chunked`` — the Bayesian Layer (retention, C = 32) and
its reset path, Gated DeltaNet (C = 64, its default) — with the ratio matrices from ``segment_ratios`` and from the
masked cumulative sum ``segsum(x).exp()``, at the experiments' shapes (MQAR: B = 64, T = 256; recall: T = 54; both
H = 2, K = 32) and the benchmark's long one (B = 4, T = 4096, K = 64); one thread, interleaved rounds in a random
order; prints the medians in ms and the change. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import probseq.ops.bayes.chunked as chunked
from probseq.cpu import fast_cpu_arithmetic
from probseq.ops.segsum import segment_ratios, segsum
from probseq.types import BayesState

SHAPES = ((64, 256, 2, 32), (64, 54, 2, 32), (4, 4096, 2, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
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

        def run(mixer: str, new: bool) -> None:
            chunked.segment_ratios = segment_ratios if new else (lambda x: segsum(x).exp())
            gamma, size = (retention, 32) if mixer == "bayesian" else (None, 64)
            out = chunked.bayes_chunked(q, k, v, log_decay, noise, gamma, state, dim**-0.5, size, False)[0]
            out.backward(grad)

        cases = [(mixer, new) for mixer in ("bayesian", "gated_deltanet") for new in (False, True)]
        for case in cases:
            run(*case)
        times = {case: [] for case in cases}
        for _ in range(args.rounds):
            for case in random.sample(cases, len(cases)):
                start = time.perf_counter()
                run(*case)
                times[case].append(time.perf_counter() - start)
        chunked.segment_ratios = segment_ratios
        median = {case: 1000 * statistics.median(values) for case, values in times.items()}
        line = " | ".join(
            f"{mixer} {median[(mixer, False)]:.1f} → {median[(mixer, True)]:.1f} ms "
            f"({median[(mixer, True)] / median[(mixer, False)] - 1:+.1%})"
            for mixer in ("bayesian", "gated_deltanet")
        )
        print(f"B={batch} T={length} H={heads} K={dim}: {line}")


if __name__ == "__main__":
    main()
