"""Markdown table of finished sweep runs, one row per run: ``python scripts/summarize_units.py DIR``.

``DIR`` holds a sweep's per-run metrics (``results/<exp>/units/*.json``, copied there by
``scripts/collect_results.sh`` from ``~/.cache/probseq/experiments/<exp>/cache``). For a sweep still running,
this is the partial record; the finished sweep's ``results.json`` / CSVs have the per-point summaries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from probseq.train.sweep import is_diverged, mean_retention_scale, train_seconds


def main(folder: str) -> int:
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"config", "metrics"} <= record.keys():
            continue  # not a run's record
        config, metrics = record["config"], record["metrics"]
        if is_diverged(metrics):  # no accuracies: shown as such, never as 0
            diverged = metrics["diverged"]
            rows.append(
                (
                    config["model"]["mixer"],
                    config["model"].get("retention", ""),
                    config["learning_rate"],
                    config["seed"],
                    diverged.get("last_finite_loss"),
                    None,
                    0.0,
                    None,
                    f"diverged at step {diverged['step']}",
                )
            )
            continue
        tests = {
            name.removeprefix("test_"): m["accuracy"] for name, m in metrics["eval"].items() if name.startswith("test_")
        }
        rows.append(
            (
                config["model"]["mixer"],
                config["model"].get("retention", ""),
                config["learning_rate"],
                config["seed"],
                metrics.get("final_train_loss", metrics["train_loss"]),
                metrics["seconds_per_step"],
                train_seconds(metrics),
                mean_retention_scale(metrics),
                tests,
            )
        )
    if not rows:
        print(f"no runs in {folder}")
        return 1
    points = next((list(r[-1]) for r in rows if isinstance(r[-1], dict)), [])
    print("| mixer | lr | seed | train loss | s/step | train min | ρ | " + " | ".join(points) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(points))
    for mixer, retention, lr, seed, loss, step, seconds, rho, tests in sorted(rows, key=lambda r: (r[0], r[2], r[3])):
        name = f"{mixer} ({retention})" if mixer == "bayesian" and retention else mixer
        cells = (
            [tests] * len(points)
            if isinstance(tests, str)
            else [f"{tests[p]:.3f}" if p in tests else "" for p in points]
        )
        print(
            f"| {name} | {lr:g} | {seed} | {'' if loss is None else f'{loss:.2f}'} | "
            f"{'' if step is None else f'{step:.2f}'} | {seconds / 60:.1f} | "
            f"{'' if rho is None else f'{rho:.2f}'} | " + " | ".join(cells) + " |"
        )
    print(
        f"\n{len(rows)} runs, {sum(r[6] for r in rows) / 3600:.2f} h of training in all (runs cached before "
        "train_seconds was recorded: s/step × steps). Train loss: the last logging window's (older runs: the "
        "mean since their last resume). ρ: the learned retention's mean trained scale (runs that record it)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "results/mqar_cpu/units"))
