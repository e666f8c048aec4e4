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
# the distillation study's arms, as many as there are: teacher, gdn, bayes, bayes_<variant>
# (probseq.experiments.ruler_arms names them so; other folders are not arms)
is_arm() { [[ $1 == teacher || $1 == gdn || $1 == bayes || $1 == bayes_* || $1 == bayes-* ]]; }
# an earlier study's arm that this cache does not hold is removed from results/ (git keeps it), so the comparison
# never pairs two studies' arms (e.g. a new teacher beside the old bayes and gdn); only when the cache holds arms
drop_others() {  # drop_others CACHE_DIR RESULTS_DIR
  local here=() dir arm
  for dir in "$1"/*/; do arm=$(basename "${dir%/}"); is_arm "$arm" && here+=("$arm"); done
  (( ${#here[@]} )) || return 0
  for dir in "$2"/*/; do
    arm=$(basename "${dir%/}"); is_arm "$arm" || continue
    [[ " ${here[*]} " == *" $arm "* ]] || { rm -rf "${dir%/}"; echo "removed $2/$arm (not an arm of this study)"; }
  done
}
drop_others "$ROOT/distill" results/distill
drop_others "$ROOT/experiments/ruler" results/ruler
for dir in "$ROOT"/distill/*/; do
  dir=${dir%/}; arm=$(basename "$dir"); is_arm "$arm" || continue
  copy "$dir" "results/distill/$arm" train_log.json config.json
done
for dir in "$ROOT"/experiments/ruler/*/; do
  dir=${dir%/}; arm=$(basename "$dir"); is_arm "$arm" || continue
  # the per-sample predictions are gzipped (~30 bytes a sample in the CPU study: 1 MB is ~30k samples); an older run's
  # predictions.jsonl is removed unless the run still has one, so the comparison never pairs stale samples: a
  # predictions file left out for its size makes scripts/ruler_compare.py fail, naming the arm
  [[ -f "$dir/predictions.jsonl" ]] || rm -f "results/ruler/$arm/predictions.jsonl"
  copy "$dir" "results/ruler/$arm" summary.csv results.json ruler.png predictions.jsonl.gz predictions.jsonl
done
# scripts/ruler_answer_likelihood.py's output (the needle value's likelihood against a foil), when it was run there
copy "$ROOT/experiments/answer_likelihood" results/ruler answer_likelihood.csv answer_likelihood.md
# the arms side by side (results/ruler/summary.csv, paired.csv, comparison.md, .png), once RULER has run; it exits
# non-zero, saying why, when an arm in a pair lacks its predictions
if [[ -d results/ruler ]]; then .venv/bin/python scripts/ruler_compare.py results; fi
