"""Torch calls of the chunked filters, per chunk and per segment (docs/gpu.md, "Launch counts").

    python scripts/launch_counts.py

Counts, with ``torch.profiler`` at ``B = 1, H = 2, K = V = 32, C = 64``, the ATen ops other than views that run
at the top level or directly inside an autograd node (the backward's ops, the covariance scan's), for the
Bayesian chunked filter (learned γ) and for Gated DeltaNet through the same code (``gamma=None``), forward and
forward+backward (a dense output gradient). Per chunk: the difference between ``T = 512`` and ``T = 256`` over
the 4 extra chunks; fixed: the ``T = 256`` count less 4 chunks' worth.
"""

from __future__ import annotations

import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from probseq.ops import bayes_filter

VIEWS = {
    "aten::view", "aten::as_strided", "aten::transpose", "aten::t", "aten::unsqueeze", "aten::squeeze",
    "aten::select", "aten::slice", "aten::expand", "aten::permute", "aten::diagonal", "aten::unbind",
    "aten::split", "aten::split_with_sizes", "aten::reshape", "aten::_unsafe_view", "aten::flatten",
    "aten::unflatten", "aten::alias", "aten::detach", "aten::narrow", "aten::lift_fresh", "aten::mT",
    "aten::chunk", "aten::view_as", "aten::expand_as",
}  # fmt: skip
CHUNK = 64


def count(length: int, backward: bool, reset: bool) -> int:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, length, 2, 32, generator=gen, requires_grad=True) for _ in range(3))
    g = (-0.1 * torch.rand(1, length, 2, generator=gen)).requires_grad_()
    beta, gamma = (torch.rand(1, length, 2, generator=gen).requires_grad_() for _ in range(2))

    def run():
        out = bayes_filter(
            q, k, v, g, beta, None if reset else gamma, impl="chunked", chunk_size=CHUNK, validate=False
        ).output
        if backward:
            out.backward(torch.ones_like(out))

    run()  # warm-up
    with warnings.catch_warnings(), profile(activities=[ProfilerActivity.CPU]) as prof:
        warnings.simplefilter("ignore")
        run()
    total = 0
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in VIEWS:
            continue
        parent = event.cpu_parent
        inside_node = parent is not None and (
            parent.name.startswith("autograd::engine::evaluate_function")
            or "Backward" in parent.name
            or parent.name.startswith("_CovarianceScan")
        )
        total += parent is None or inside_node
    return total


def main() -> None:
    torch.set_num_threads(1)
    print("| filter | pass | fixed per segment | per chunk |\n|---|---|---:|---:|")
    for reset, name in ((False, "Bayesian chunked"), (True, "Gated DeltaNet (gamma=None)")):
        for backward in (False, True):
            short, long = count(4 * CHUNK, backward, reset), count(8 * CHUNK, backward, reset)
            per_chunk = (long - short) / 4
            print(f"| {name} | {'fwd+bwd' if backward else 'fwd'} | {short - 4 * per_chunk:.0f} | {per_chunk:.0f} |")


if __name__ == "__main__":
    main()
