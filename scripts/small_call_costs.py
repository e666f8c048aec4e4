"""Where the Bayesian filter's extra time goes at the experiments' shapes: ``python scripts/small_call_costs.py``.

Prints three Markdown tables (one thread, the CPU settings of every ``probseq`` command; ``torch.utils.benchmark``
medians; run it on an idle machine):

1. the chunked filter's forward+backward, Bayesian (learned γ) against Gated DeltaNet through the same code
   (``gamma=None``), each at its layer's default chunk size, at the recall study's shape (B 64, T 54, H 2, K 32),
   the MQAR study's (T 256) and the bench's long row (B 1, T 4096, H 4, K 64);
2. the Bayesian covariance path (steps 1–5) and its sequential scan alone at the recall shape;
3. the cost of each kind of call the scan makes, per batched call, at the scan's per-chunk shapes, with its rate
   and its count per chunk (forward + backward, read off ``covariance_scan.py``; the products and solves of C × C
   size are not listed): small batched factorisations and triangular solves run far below the products' rate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).parent))
from filter_timing import filter_inputs, single_threaded  # noqa: E402

from probseq.layers.utils import delta_chunk_size  # noqa: E402
from probseq.ops import bayes_filter  # noqa: E402
from probseq.ops.bayes import chunked  # noqa: E402
from probseq.ops.bayes.chunked import _covariance_path  # noqa: E402
from probseq.ops.triangular import solve_lower  # noqa: E402


def median_ms(fn, seconds: float = 1.5) -> float:
    fn()
    fn()
    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=seconds).median * 1e3


def filter_step(batch: int, length: int, heads: int, dim: int, covariance: bool):
    x = filter_inputs(batch, length, heads, dim, torch.Generator().manual_seed(0))
    chunk = delta_chunk_size(dim, None, covariance=covariance)
    mean_chunk = delta_chunk_size(dim, None, covariance=False)  # the layers' mean path (Gated DeltaNet's length)
    retention = x["retention"] if covariance else None

    def step():
        out = bayes_filter(
            x["q"],
            x["k"],
            x["v"],
            x["log_decay"],
            x["noise"],
            retention,
            impl="chunked",
            chunk_size=chunk,
            mean_chunk_size=mean_chunk,
            validate=False,
        ).output
        out.backward(x["grad"])

    return step, chunk


def covariance_path_steps(chunks: int, rows: int, chunk: int, dim: int):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(chunks, rows, chunk, dim, generator=gen).requires_grad_()
    k = torch.nn.functional.normalize(torch.randn(chunks, rows, chunk, dim, generator=gen), dim=-1).requires_grad_()
    noise = torch.rand(chunks, rows, chunk, generator=gen).add(0.1).requires_grad_()
    retention = torch.rand(chunks, rows, chunk, generator=gen).requires_grad_()
    cov0 = torch.eye(dim).expand(rows, dim, dim).contiguous()

    def both():
        x, pivots, ratio, prior, cov, _ = _covariance_path(q, k, noise, retention, cov0, True)
        (x.sum() + pivots.sum() + ratio.sum() + prior.sum() + cov.sum()).backward()

    def forward():
        with torch.no_grad():
            _covariance_path(q, k, noise, retention, cov0, True)

    # the scan's own inputs, as the path hands them over
    with mock.patch.object(chunked, "covariance_scan", wraps=chunked.covariance_scan) as spy:
        forward()
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in spy.call_args.args]

    def scan_both():
        x, pivots, starts, cov, _ = chunked.covariance_scan(*inputs)
        (x.sum() + pivots.sum() + starts.sum() + cov.sum()).backward()

    return both, forward, scan_both


def call_costs(rows: int, chunk: int, dim: int) -> list[tuple[str, float, float, str]]:
    """(call, µs, GFLOP/s, calls per chunk) per batched call at the scan's per-chunk shapes."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, chunk, chunk, generator=gen)
    matrix = a @ a.mT + chunk * torch.eye(chunk)
    factor = torch.linalg.cholesky(matrix)
    rhs = torch.randn(rows, chunk, dim, generator=gen)
    cov = torch.randn(rows, dim, dim, generator=gen)
    # (call, function, FLOPs, calls per chunk forward + backward in covariance_scan.py)
    solve = rows * chunk * chunk * dim
    cases = [
        ("Cholesky factorisation C×C", lambda: torch.linalg.cholesky_ex(matrix), rows * chunk**3 / 3, "1 + 0"),
        ("triangular solve C×C, C×K right-hand side", lambda: solve_lower(factor, rhs), solve, "1 + 0"),
        ("transposed triangular solve", lambda: solve_lower(factor, rhs, transpose=True), solve, "0 + 1 (+ 2 C×C)"),
        ("batched product C×K · K×K", lambda: torch.bmm(rhs, cov), 2 * rows * chunk * dim * dim, "2 + 3"),
        ("elementwise product C×K", lambda: rhs * rhs, rows * chunk * dim, "≈ 5 + 15"),
    ]
    out = []
    for name, fn, flop, count in cases:
        ms = median_ms(fn, 0.3)
        out.append((name, ms * 1e3, flop / (ms * 1e-3) / 1e9, count))
    return out


def main() -> None:
    single_threaded()
    print("| shape (B, T, H, K) | Bayesian C | GDN C | Bayesian fwd+bwd ms | GDN fwd+bwd ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape in ((64, 54, 2, 32), (64, 256, 2, 32), (1, 4096, 4, 64)):
        bayes, bayes_chunk = filter_step(*shape, covariance=True)
        gdn, gdn_chunk = filter_step(*shape, covariance=False)
        b, g = median_ms(bayes), median_ms(gdn)
        print(f"| {shape} | {bayes_chunk} | {gdn_chunk} | {b:.1f} | {g:.1f} | {b / g:.2f} |", flush=True)

    print("\n| covariance path at the recall shape ([N, B·H, C, K] = [4, 128, 16, 32]) | ms |")
    print("|---|---:|")
    both, forward, scan_both = covariance_path_steps(4, 128, 16, 32)
    print(f"| steps 1–5, forward + backward | {median_ms(both):.2f} |")
    print(f"| steps 1–5, forward | {median_ms(forward):.2f} |")
    print(f"| steps 3–5 (the sequential scan), forward + backward | {median_ms(scan_both):.2f} |", flush=True)

    print("\n| call, per batched call | B·H, C, K | µs | GFLOP/s | calls per chunk, fwd + bwd |")
    print("|---|---|---:|---:|---|")
    for rows, chunk, dim in ((128, 16, 32), (4, 32, 64)):
        for name, micros, rate, count in call_costs(rows, chunk, dim):
            print(f"| {name} | {rows}, {chunk}, {dim} | {micros:.0f} | {rate:.1f} | {count} |", flush=True)


if __name__ == "__main__":
    main()
