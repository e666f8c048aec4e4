"""Forward+backward time of the chunked filter per chunk size: the Bayesian Layer (learned-style retention) at every
pair of chunk lengths (covariance path C = 8, 16, 32, 64; mean path 16, 32, 64) and Gated DeltaNet (its reset path)
at C = 16, 32, 64, for the shapes the defaults serve.

    python scripts/chunk_sizes.py [--rounds 8]

Shapes (B, T, H, K): the MQAR model (64, 256, 2, 32), the recall model (64, 54, 2, 32), the benchmark's long
sequence (4, 4096, 2, 64) and the benchmark's layer (2, 2048, 4, 128). One thread, interleaved rounds in a random
order, medians in ms. The delta-rule layers' default chunk sizes (``probseq.layers.utils.delta_chunk_size``: half
the key head dim between 16 and 64 for the covariance path, between 32 and 64 for the mean path) follow from it.
Run it on an idle machine.
"""

from __future__ import annotations

import argparse

import torch
from filter_timing import filter_inputs, interleaved_medians, single_threaded

from probseq.ops.bayes.chunked import bayes_chunked

SHAPES = ((64, 256, 2, 32), (64, 54, 2, 32), (4, 4096, 2, 64), (2, 2048, 4, 128))
SIZES = (16, 32, 64)
COVARIANCE_SIZES = (8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    single_threaded()
    gen = torch.Generator().manual_seed(0)
    for batch, length, heads, dim in SHAPES:
        x = filter_inputs(batch, length, heads, dim, gen)

        def run(size: int, mean_size: int, bayesian: bool, x=x, dim=dim) -> None:
            gamma = x["retention"] if bayesian else None
            inputs = (x["q"], x["k"], x["v"], x["log_decay"], x["noise"], gamma, x["state"])
            bayes_chunked(*inputs, dim**-0.5, size, False, mean_chunk_size=mean_size)[0].backward(x["grad"])

        cases = {("bayesian", c, m): (c, m, True) for c in COVARIANCE_SIZES for m in SIZES}
        cases |= {("gated_deltanet", m, m): (m, m, False) for m in SIZES}
        median = interleaved_medians({key: lambda c=call: run(*c) for key, call in cases.items()}, args.rounds)
        print(f"B={batch} T={length} H={heads} K={dim}, fwd+bwd ms (Gated DeltaNet: mean path only):")
        rows = {"mean path C =": [f"{m:8d}" for m in SIZES]}
        for c in COVARIANCE_SIZES:
            rows[f"Bayesian, covariance C = {c}"] = [f"{1000 * median[('bayesian', c, m)]:8.1f}" for m in SIZES]
        rows["Gated DeltaNet"] = [f"{1000 * median[('gated_deltanet', m, m)]:8.1f}" for m in SIZES]
        for label, cells in rows.items():
            print(f"  {label:<30}" + "".join(cells))


if __name__ == "__main__":
    main()
