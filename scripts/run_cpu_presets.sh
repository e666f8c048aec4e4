#!/usr/bin/env bash
# The issue-8 evidence runs: `probseq mqar --preset cpu` then `probseq recall --preset cpu`, one after the
# other (the machine has 2 cores), in the background, resumable: rerun this script after an interruption
# and each experiment continues from its cached units and checkpoints. Results live outside the work
# tree (~/.cache/probseq/experiments/); copy results.json, CSVs and PNGs into results/ when done.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${PROBSEQ_EXPERIMENTS:-$HOME/.cache/probseq/experiments}"
mkdir -p "$OUT"
for exp in mqar recall; do
  echo "[$(date -Is)] $exp --preset cpu → $OUT/${exp}_cpu"
  .venv/bin/probseq "$exp" --preset cpu --out "$OUT/${exp}_cpu" || { echo "[$(date -Is)] $exp stopped ($?)"; exit 1; }
done
echo "[$(date -Is)] done"
