"""The Bayesian Layer's certainty-retention variants side by side on MQAR ``quick``, paired with Gated DeltaNet.

    python scripts/retention_variants.py run --root ~/.cache/probseq/experiments/retention_variants
    python scripts/retention_variants.py report --root ~/.cache/probseq/experiments/retention_variants \
        --out results/retention_variants

Variants (``probseq mqar --preset quick`` under the paired studies' recipe: two layers, every example weighing the
same, one segment per batch; lrs 3e-3 and 1e-2; seeds 0–4, paired: same seed → same shared initial weights and
batches): Gated DeltaNet (= the ``reset`` retention's function), ``stationary`` (γ = α²), ``learned`` from ρ = 0,
``learned`` with its retention parameters at 0.1× the lr (``retention_lr_scale``), ``learned`` from ρ = 1
(``retention_init``, the stationary end). ``run`` trains what is missing (each sweep resumable and cached);
``report`` writes ``runs.csv`` (one row per run, with the trained ρ), ``summary.csv`` (per variant and lr: runs that
learned, mean test accuracy, the paired difference to Gated DeltaNet with a 95 % t-interval) and ``rho_trace.png``
(ρ and the retention's share of the gradient norm over training, from the runs' ``retention_trace``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from probseq.experiments.common import write_csv
from probseq.train.sweep import mean_ci95, split_accuracy, sweep_units

ROOT = Path(__file__).resolve().parents[1]
COMMON = (
    "n_layers=2",
    "loss_weighting=example",
    "batching=by_segment",
    "num_threads=1",
    "learning_rates=[0.003,0.01]",
    "seeds=[0,1,2,3,4]",
)
VARIANTS = {
    "gated_deltanet": ('mixers=["gated_deltanet"]',),
    "stationary": ('mixers=["bayesian"]', "retention=stationary"),
    "learned": ('mixers=["bayesian"]', "retention=learned"),
    "learned_lr0.1": ('mixers=["bayesian"]', "retention=learned", "retention_lr_scale=0.1"),
    "learned_init1": ('mixers=["bayesian"]', "retention=learned", "retention_init=1.0"),
}
INSIDE, BEYOND = ("T32_k4", "T32_k8"), ("T64_k16", "T128_k32")
LEARNED = 0.9  # validation accuracy at (32, 8), the largest training point, at or above which a run learned


def run(args: argparse.Namespace) -> None:
    root = Path(args.root).expanduser()
    for name, sets in VARIANTS.items():
        out = root / name
        command = [str(ROOT / ".venv/bin/probseq"), "mqar", "--preset", "quick", "--out", str(out), "--set"]
        command += [*sets, *COMMON]
        print(f"== {name}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(root / f"{name}.log", "a") as log:
            if subprocess.call(command, stdout=log, stderr=subprocess.STDOUT):
                raise SystemExit(f"{name} failed; see {root / name}.log")


def report(args: argparse.Namespace) -> None:
    root, out = Path(args.root).expanduser(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, traces = [], {}
    for name in VARIANTS:
        for unit in sweep_units(root / name):
            m, lr, seed = unit["metrics"], unit["learning_rate"], unit["seed"]
            scale = m.get("retention_scale")
            rho = statistics.fmean(v for values in scale.values() for v in values) if scale else None
            runs.append(
                {
                    "variant": name,
                    "lr": lr,
                    "seed": seed,
                    "status": m.get("status"),
                    "learned": (split_accuracy(m, "valid_T32_k8") or 0) >= LEARNED,
                    **{f"test_{p}": split_accuracy(m, f"test_{p}") for p in (*INSIDE, *BEYOND)},
                    "trained_rho": None if rho is None else round(rho, 4),
                }
            )
            if m.get("retention_trace"):
                traces[(name, lr, seed)] = m["retention_trace"]
    write_csv(out / "runs.csv", runs)

    by_key = {(r["variant"], r["lr"], r["seed"]): r for r in runs}
    summary = []
    for name in VARIANTS:
        for lr in sorted({r["lr"] for r in runs if r["variant"] == name}):
            mine = [r for r in runs if r["variant"] == name and r["lr"] == lr]
            row = {"variant": name, "lr": lr, "seeds": len(mine), "learned": sum(r["learned"] for r in mine)}
            for p in (*INSIDE, *BEYOND):
                values = [r[f"test_{p}"] or 0.0 for r in mine]
                row[f"mean_{p}"] = round(statistics.fmean(values), 4)
            for p in BEYOND:
                diffs = [
                    (r[f"test_{p}"] or 0.0) - (by_key[("gated_deltanet", lr, r["seed"])][f"test_{p}"] or 0.0)
                    for r in mine
                    if ("gated_deltanet", lr, r["seed"]) in by_key
                ]
                if name != "gated_deltanet" and len(diffs) > 1:
                    mean, half = mean_ci95(diffs)
                    row[f"vs_gdn_{p}"] = f"{mean:+.3f} ± {half:.3f}"
            summary.append(row)
    write_csv(out / "summary.csv", summary)
    plot_traces(traces, out / "rho_trace.png")
    print(json.dumps(summary, indent=1))


def plot_traces(traces: dict, path: Path) -> None:
    if not traces:
        return
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = sorted({name for name, _, _ in traces})
    lrs = sorted({lr for _, lr, _ in traces})
    fig, axes = plt.subplots(2, len(lrs), figsize=(5 * len(lrs), 6), squeeze=False, sharex=True)
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (name, lr, seed), trace in sorted(traces.items()):
        column = lrs.index(lr)
        steps = [e["step"] for e in trace]
        label = name if seed == 0 else None
        axes[0, column].plot(steps, [e["retention_scale"] for e in trace], color=colours[name], lw=1, label=label)
        share = [
            (e["step"], e["retention_grad_norm"] / max(e["other_grad_norm"], 1e-12))
            for e in trace
            if "retention_grad_norm" in e
        ]
        if share:
            axes[1, column].semilogy(*zip(*share), color=colours[name], lw=1, label=label)
    for column, lr in enumerate(lrs):
        axes[0, column].set_title(f"lr {lr:g}")
        axes[0, column].set_ylabel("mean ρ (layers, heads)")
        axes[1, column].set_ylabel("‖∇ retention‖ / ‖∇ rest‖")
        axes[1, column].set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train every variant (resumable)")
    run_parser.add_argument("--root", required=True)
    report_parser = commands.add_parser("report", help="tables and plot from what has finished")
    report_parser.add_argument("--root", required=True)
    report_parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
