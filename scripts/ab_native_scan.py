"""Interleaved A/B of the compiled covariance path (probseq.ops.bayes.native) against the PyTorch path.

    python scripts/ab_native_scan.py [--rounds 15] [--threads 2] [--steps]

Times, in one process, forward+backward of the Bayesian chunked filter at the bench's filter shapes (the
experiments' K = 32, B·H = 128 at T = 54 and 256; the long row K = 64, T = 4096, B·H = 4) with the kernel and with
:func:`native.disabled`, and Gated DeltaNet's (the reset path, no scan) beside them; with ``--steps`` also one
training step of the MQAR and recall models of ``probseq bench``. Each round runs every case once in a random
order (a shared machine's drift hits all alike); prints the median over the rounds after the first two, in ms, and
the ratios to Gated DeltaNet.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time

import torch

from probseq.bench import BenchConfig, _call, mqar_training_step, recall_training_step
from probseq.cpu import fast_cpu_arithmetic
from probseq.ops.bayes import native


def _timed(call, use_native: bool) -> float:
    with contextlib.nullcontext() if use_native else native.disabled():
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", action="store_true", help="also the MQAR and recall training steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fast_cpu_arithmetic()
    assert native.available(), "the kernel is not available (PROBSEQ_NATIVE=1 shows why)"
    config = BenchConfig()
    groups = {
        "filter T=54": ("bayes_chunked_small", "gdn_chunked_small", 54),
        "filter T=256": ("bayes_chunked_small", "gdn_chunked_small", 256),
        "filter T=4096 K=64": ("bayes_chunked", "gdn_chunked", 4096),
    }
    cases = {}
    for group, (bayes, gdn, length) in groups.items():
        cases[(group, "native")] = (_call(bayes, length, "fwd+bwd", config), True)
        cases[(group, "pytorch")] = (_call(bayes, length, "fwd+bwd", config), False)
        cases[(group, "gdn")] = (_call(gdn, length, "fwd+bwd", config), True)
    if args.steps:
        for group, make in (
            ("MQAR step", lambda mixer: mqar_training_step(mixer, config.mqar_length, config)[1]),
            ("recall step", lambda mixer: recall_training_step(mixer, config)[1]),
        ):
            cases[(group, "native")] = (make("bayesian"), True)
            cases[(group, "pytorch")] = (make("bayesian"), False)
            cases[(group, "gdn")] = (make("gated_deltanet"), True)
    times = {case: [] for case in cases}
    order = list(cases)
    for round_ in range(args.rounds + 2):
        random.shuffle(order)
        for case in order:
            call, use_native = cases[case]
            elapsed = _timed(call, use_native)
            if round_ >= 2:
                times[case].append(elapsed)
    print(f"{args.threads} thread(s), {args.rounds} rounds, median ms")
    print(f"{'case':<22}{'kernel':>10}{'PyTorch':>10}{'GDN':>10}{'kernel/PyTorch':>16}{'ratio to GDN':>22}")
    for group in dict.fromkeys(g for g, _ in cases):
        med = {arm: 1e3 * statistics.median(times[(group, arm)]) for arm in ("native", "pytorch", "gdn")}
        print(
            f"{group:<22}{med['native']:>10.1f}{med['pytorch']:>10.1f}{med['gdn']:>10.1f}"
            f"{med['native'] / med['pytorch']:>16.2f}"
            f"{med['native'] / med['gdn']:>11.2f} ← {med['pytorch'] / med['gdn']:.2f}"
        )


if __name__ == "__main__":
    main()
