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

import torch
from filter_timing import filter_inputs, interleaved_medians, single_threaded

from probseq.ops.bayes.chunked import bayes_chunked

SHAPES = ((64, 256, 2, 32), (64, 54, 2, 32), (4, 4096, 2, 64), (2, 2048, 4, 128))
SIZES = (16, 32, 64)
MIXERS = ("bayesian", "gated_deltanet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    single_threaded()
    gen = torch.Generator().manual_seed(0)
    for batch, length, heads, dim in SHAPES:
        x = filter_inputs(batch, length, heads, dim, gen)

        def run(size: int, mixer: str, x=x, dim=dim) -> None:
            gamma = x["retention"] if mixer == "bayesian" else None
            inputs = (x["q"], x["k"], x["v"], x["log_decay"], x["noise"], gamma, x["state"])
            bayes_chunked(*inputs, dim**-0.5, size, False)[0].backward(x["grad"])

        median = interleaved_medians(
            {(size, mixer): lambda s=size, m=mixer: run(s, m) for size in SIZES for mixer in MIXERS}, args.rounds
        )
        cells = " | ".join(
            f"{mixer} " + " ".join(f"C={size} {1000 * median[(size, mixer)]:.1f}" for size in SIZES) for mixer in MIXERS
        )
        print(f"B={batch} T={length} H={heads} K={dim} (ms): {cells}")


if __name__ == "__main__":
    main()
