"""Interleaved A/B timing of the Bayesian chunked filter: this tree against another source tree.

    python scripts/ab_bayes_chunked.py --other ../old-checkout/src [--rounds 25]

Times forward+backward (a dense output gradient) of ``bayes_chunked`` from both trees, and of the covariance
path (``_covariance_path``) alone, at the experiments' shape (B = 64, T = 256, H = 2, K = V = 32, C = 32),
one thread, in interleaved rounds (each round runs every case once, in a random order, so a shared machine's
drift and the allocator's state affect all alike); prints the median of the rounds after the first three, in
ms, and the Bayesian / Gated DeltaNet ratio of each tree (both at C = 32, unlike ``probseq bench``, which runs
Gated DeltaNet at its default C = 64).

Only the other tree's ``probseq/ops/bayes/chunked.py`` is loaded; what it imports (the scan, the solves, the
segment sums) comes from this tree. Against a tree whose other ops modules differ, check them out side by side
and run this script from each instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from pathlib import Path

import torch

import probseq.ops.bayes.chunked as this
from probseq.cpu import fast_cpu_arithmetic
from probseq.types import BayesState


def _load(src: Path):
    path = src / "probseq" / "ops" / "bayes" / "chunked.py"
    spec = importlib.util.spec_from_file_location("other_chunked", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="the other tree's src/ folder")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    other = _load(args.other)
    torch.set_num_threads(1)
    fast_cpu_arithmetic()  # as every probseq command and Trainer run
    gen = torch.Generator().manual_seed(0)
    batch, length, heads, dim, chunk = 64, 256, 2, 32, 32
    q, v = (torch.randn(batch, length, heads, dim, generator=gen).requires_grad_() for _ in range(2))
    k = torch.nn.functional.normalize(torch.randn(batch, length, heads, dim, generator=gen), dim=-1).requires_grad_()
    log_decay = (-0.1 * torch.rand(batch, length, heads, generator=gen)).requires_grad_()
    noise = (0.05 + torch.rand(batch, length, heads, generator=gen)).requires_grad_()
    retention = torch.rand(batch, length, heads, generator=gen).requires_grad_()
    grad = torch.randn(batch, length, heads, dim, generator=gen)
    state = BayesState(torch.zeros(batch, heads, dim, dim), torch.eye(dim).expand(batch, heads, dim, dim).clone())

    def filter_step(module, gamma):
        def call():
            module.bayes_chunked(q, k, v, log_decay, noise, gamma, state, dim**-0.5, chunk, False)[0].backward(grad)

        return call

    chunked = [this.to_chunks(x, chunk) for x in (q.detach(), k.detach(), noise.detach(), retention.detach())]
    chunked = [x.requires_grad_() for x in chunked]
    cov0 = state.cov.flatten(0, 1).requires_grad_()

    def covariance_step(module):
        def call():
            x, pivots, _, _, cov, _ = module._covariance_path(*chunked, cov0, False)
            torch.autograd.backward(
                [x, pivots, cov], [torch.ones_like(x), torch.ones_like(pivots), torch.ones_like(cov)]
            )

        return call

    cases = {
        "this bayesian": filter_step(this, retention),
        "other bayesian": filter_step(other, retention),
        "this gated deltanet": filter_step(this, None),
        "other gated deltanet": filter_step(other, None),
        "this covariance path": covariance_step(this),
        "other covariance path": covariance_step(other),
    }
    times = {name: [] for name in cases}
    order = random.Random(0)
    for _ in range(args.rounds):
        for name, call in order.sample(list(cases.items()), len(cases)):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    median = {name: sorted(t[3:])[len(t[3:]) // 2] * 1e3 for name, t in times.items()}
    for name, ms in median.items():
        print(f"{name:24s} {ms:8.1f} ms")
    for tree in ("this", "other"):
        print(f"{tree}: bayesian / gated deltanet {median[f'{tree} bayesian'] / median[f'{tree} gated deltanet']:.2f}")


if __name__ == "__main__":
    main()
