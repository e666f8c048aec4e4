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

import torch
from filter_timing import filter_inputs, interleaved_medians, single_threaded

import probseq.ops.bayes.chunked as chunked
from probseq.ops.segsum import segment_ratios, segsum

SHAPES = ((64, 256, 2, 32), (64, 54, 2, 32), (4, 4096, 2, 64))
MIXERS = ("bayesian", "gated_deltanet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    single_threaded()
    gen = torch.Generator().manual_seed(0)
    for batch, length, heads, dim in SHAPES:
        x = filter_inputs(batch, length, heads, dim, gen)

        def run(mixer: str, new: bool, x=x, dim=dim) -> None:
            chunked.segment_ratios = segment_ratios if new else (lambda t: segsum(t).exp())
            gamma, size = (x["retention"], 32) if mixer == "bayesian" else (None, 64)
            inputs = (x["q"], x["k"], x["v"], x["log_decay"], x["noise"], gamma, x["state"])
            chunked.bayes_chunked(*inputs, dim**-0.5, size, False)[0].backward(x["grad"])

        try:
            median = interleaved_medians(
                {(m, new): lambda m=m, new=new: run(m, new) for m in MIXERS for new in (False, True)}, args.rounds
            )
        finally:
            chunked.segment_ratios = segment_ratios
        line = " | ".join(
            f"{m} {1000 * median[(m, False)]:.1f} → {1000 * median[(m, True)]:.1f} ms "
            f"({median[(m, True)] / median[(m, False)] - 1:+.1%})"
            for m in MIXERS
        )
        print(f"B={batch} T={length} H={heads} K={dim}: {line}")


if __name__ == "__main__":
    main()
