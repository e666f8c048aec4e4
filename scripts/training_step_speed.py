"""What each CPU setting buys on a model training step: ``python scripts/training_step_speed.py [--task mqar|recall]``.

Times one optimizer step of the MQAR (or recall) model of ``probseq bench`` per mixer, each configuration in
its own process (glibc's allocator settings cannot be undone inside one): the library's defaults, then with
subnormals not flushed, freed memory not kept, and other chunk sizes. Prints a Markdown table of the median
step time over ``--steps`` steps (after two warm-up steps). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from probseq_cli.parsers import plain_text

# (label, mixer, chunk size or None for the layer's default, flush subnormals, keep freed memory)
CONFIGS = [
    ("Bayesian, defaults", "bayesian", None, True, True),
    ("Bayesian, subnormals not flushed", "bayesian", None, False, True),
    ("Bayesian, freed memory not kept", "bayesian", None, True, False),
    ("Bayesian, C = 64 (before)", "bayesian", 64, True, True),
    ("Bayesian, none of the three (before)", "bayesian", 64, False, False),
    ("Gated DeltaNet, defaults", "gated_deltanet", None, True, True),
    ("Gated DeltaNet, freed memory not kept (before)", "gated_deltanet", None, True, False),
    ("Mamba-2, defaults (C = 64)", "mamba2", None, True, True),
    ("Mamba-2, C = 256 (before)", "mamba2", 256, True, True),
    ("Mamba-2, none of the three (before)", "mamba2", 256, False, False),
]

CHILD = """
import json, sys, time, torch
from probseq import bench, cpu
task, mixer, chunk, flush, keep, steps, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
if keep:
    cpu.keep_freed_memory()
torch.set_flush_denormal(flush)
config = bench.PRESETS["quick"]
model, step = (bench.mqar_training_step(mixer, config.mqar_length, config) if task == "mqar"
               else bench.recall_training_step(mixer, config))
if chunk is not None:  # one chunk length for both of the Bayesian Layer's paths, as before mean_chunk_size
    for module in model.modules():
        if module is not model and hasattr(module, "chunk_size"):
            module.chunk_size = chunk
            if hasattr(module, "mean_chunk_size"):
                module.mean_chunk_size = chunk
step(); step()
times = []
for _ in range(steps):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--task", choices=("mqar", "recall"), default="mqar")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"| {args.task} model, one training step, {args.threads} threads | median s | steps |")
    print("|---|---:|---:|")
    for label, mixer, chunk, flush, keep in CONFIGS:
        payload = json.dumps([args.task, mixer, chunk, flush, keep, args.steps, args.threads])
        result = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True, check=True)
        times = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {label} | {statistics.median(times):.3f} | {len(times)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
