#!/usr/bin/env bash
# Copy the small result files of the evidence runs (scripts/run_evidence.sh) from ~/.cache/probseq into
# results/ — results.json, CSVs, PNGs, training logs; files over 1 MB are left out (and named).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="${PROBSEQ_CACHE:-$HOME/.cache/probseq}"
copy() {  # copy SOURCE_DIR DEST_DIR PATTERN…
  local src=$1 dest=$2; shift 2
  [[ -d "$src" ]] || return 0
  for pattern in "$@"; do
    for file in "$src"/$pattern; do
      [[ -f "$file" ]] || continue
      if (( $(stat -c %s "$file") > 1048576 )); then echo "left out (over 1 MB): $file"; continue; fi
      mkdir -p "$dest"  # only for a stage that has results: no empty folders under results/
      cp "$file" "$dest/" && echo "copied $file → $dest/"
    done
  done
}
for exp in mqar_cpu recall_cpu mqar_cpu_lr mqar_cpu_stationary mqar_cpu_init1; do
  copy "$ROOT/experiments/$exp" "results/$exp" results.json '*.csv' '*.png'
  # every finished run's metrics (a few kB each): the partial record, and what run_evidence.sh restores
  copy "$ROOT/experiments/$exp/cache" "results/$exp/units" '*.json'
done
copy "$ROOT/experiments/reproduce_cpu" results/reproduce_cpu REPORT.md results.json
for section in collision uncertainty; do
  copy "$ROOT/experiments/reproduce_cpu/$section" "results/reproduce_cpu/$section" '*.json' '*.csv' '*.png'
done
for arm in teacher bayes gdn; do
  copy "$ROOT/distill/$arm" "results/distill/$arm" train_log.json config.json
  copy "$ROOT/experiments/ruler/$arm" "results/ruler/$arm" summary.csv results.json ruler.png predictions.jsonl
done
# scripts/ruler_answer_likelihood.py's output (the needle value's likelihood against a foil), when it was run there
copy "$ROOT/experiments/answer_likelihood" results/ruler answer_likelihood.csv answer_likelihood.md
# the three arms side by side (results/ruler/comparison.md, .png), once RULER has run
if [[ -d results/ruler ]]; then .venv/bin/python scripts/ruler_compare.py results; fi
