"""What every experiment shares: checked ``--set`` overrides (:func:`probseq.train.schema.with_overrides`), the
environment record, CSV and markdown tables, and resumable per-unit results
(:mod:`probseq.train.result_cache`)."""

from __future__ import annotations

import csv
import io
import os
import platform
import sys
from typing import Any, Callable

import torch

from probseq.files import atomic_write_text, save_figure
from probseq.train.result_cache import ResultCache, config_hash
from probseq.train.schema import with_overrides


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV, atomically. The columns are every key of every row, in the order first seen (a
    row without a column, e.g. a diverged run's accuracies, leaves it empty; so does ``None``)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def format_eval_table(rows: list[dict[str, Any]], point: Callable[[dict[str, Any]], str]) -> str:
    """Markdown of ``probseq mqar eval`` / ``probseq recall eval``: one line per run, one column per point (named
    by ``point(row)``), the accuracy with the run's recorded one in brackets where it was tested there."""
    points = list(dict.fromkeys(point(row) for row in rows))
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        runs.setdefault(row["run"], {})[point(row)] = row
    lines = ["| run | mixer | lr | seed | " + " | ".join(points) + " |", "|---|---|---:|---:|" + "---:|" * len(points)]
    for name, cells in runs.items():
        first = next(iter(cells.values()))

        def cell(row: dict[str, Any] | None) -> str:
            if row is None:
                return ""
            recorded = row.get("recorded_accuracy")
            return f"{row['accuracy']:.3f}" + ("" if recorded is None else f" [{recorded:.3f}]")

        lines.append(
            f"| {name} | {first['mixer']} | {first['learning_rate']:g} | {first['seed']} | "
            + " | ".join(cell(cells.get(p)) for p in points)
            + " |"
        )
    return (
        "\n".join(
            lines
            + [
                "",
                "Test accuracy of each run's final weights; [recorded]: the accuracy the run "
                "recorded at that point (same data).",
            ]
        )
        + "\n"
    )


def over_seeds(seeds: int) -> str:
    """How a table's accuracies are summarised over ``seeds`` runs."""
    return f"mean ± 95% CI over {seeds} seeds" if seeds > 1 else "one seed (no confidence interval)"


def accuracy_cell(point: dict[str, Any]) -> str:
    """``mean ± CI95``, the mean alone for a single seed, or ``diverged`` when every learning rate diverged."""
    if point.get("status") == "diverged":
        return "diverged"
    if len(point["accuracies"]) == 1:
        return f"{point['accuracy']:.3f}"
    return f"{point['accuracy']:.3f} ± {point['ci95']:.3f}"


def diverged_note(points: list[dict[str, Any]]) -> str:
    """`` Diverged (not candidates): mixer lr …`` for the learning rates with a diverged run, or ``""``."""
    rates = {p["mixer"] + (f" (d={p['d_model']})" if "d_model" in p else ""): p.get("diverged_lrs", []) for p in points}
    listed = [f"{model} lr {', '.join(f'{lr:g}' for lr in lrs)}" for model, lrs in rates.items() if lrs]
    return f" Diverged (not candidates): {'; '.join(listed)}." if listed else ""


def evaluate_saved_runs(
    path: str | os.PathLike,
    experiment: str,
    plan: Callable[[Any], dict[str, tuple]],
    point_columns: Callable[[Any, Any], dict[str, Any]],
    point: Callable[[dict[str, Any]], str],
    batch_size: int | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Score the saved runs of ``experiment`` at ``path`` (a run folder, or every run under a folder;
    :mod:`probseq.train.saved`) without training: ``plan(run)`` gives each run's test segments
    ``{name: (split, seed, tested_in_run)}`` — every run is planned (and checked) before the first is evaluated.
    One row per run and point: the run's identity columns, ``point_columns(run, split)``, ``state_bytes``,
    ``num_examples``, ``point_seed``, ``tested_in_run``, ``recorded_accuracy`` (the run's own accuracy there, on the
    same data), the evaluation (accuracy, example_accuracy, all_correct, loss) and ``status``. A line per run goes to
    ``log`` (default: stderr), each point labelled by ``point(row)``."""
    from probseq.train.saved import evaluate_run, find_runs, identity_columns, recorded_accuracy

    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    plans = [(run, plan(run)) for run in find_runs(path, experiment, log)]
    rows = []
    for index, (run, segments) in enumerate(plans, 1):
        data = run.config.data
        generated = {f"test_{name}": data.generate(split, seed) for name, (split, seed, _) in segments.items()}
        evaluation, state_bytes = evaluate_run(run, generated, batch_size)
        for name, (split, seed, tested) in segments.items():
            rows.append(
                {
                    **identity_columns(run),
                    **point_columns(run, split),
                    "state_bytes": state_bytes,
                    "num_examples": split.num_examples,
                    "point_seed": seed,
                    "tested_in_run": tested,
                    "recorded_accuracy": recorded_accuracy(run, f"test_{name}") if tested else None,
                    **evaluation[f"test_{name}"],
                    "status": "ok",
                }
            )
        log(
            f"[{index}/{len(plans)}] {run.name}: "
            + ", ".join(f"{point(row)} {row['accuracy']:.3f}" for row in rows[-len(segments) :])
        )
    return rows


def run_eval_command(
    args, evaluate_saved: Callable[..., list[dict[str, Any]]], point: Callable[[dict[str, Any]], str]
) -> int:
    """``probseq <experiment> eval``: score the saved runs under ``args.run_dir`` at ``args.points`` with the
    experiment's ``evaluate_saved``, write the rows to ``args.out`` (CSV) and print them (``point`` labels a row)."""
    from probseq.files import check_writable_file
    from probseq.train.trainer import run_threads

    out = check_writable_file(args.out)
    with run_threads(args.threads):
        rows = evaluate_saved(args.run_dir, args.points, args.examples, args.batch_size)
    write_csv(out, rows)
    print(format_eval_table(rows, point))
    print(f"wrote {out}: {len(rows)} rows ({len({row['run'] for row in rows})} runs × {len(args.points)} points)")
    return 0


def report_diverged(diverged: list[str], total: int) -> int:
    """Say on stderr which units of a sweep diverged (recorded as such, their learning rates not chosen); the
    exit code: 1 when every unit diverged (the tables hold no result), else 0."""
    if not diverged:
        return 0
    if len(diverged) == total:
        print(
            f"every unit diverged ({', '.join(diverged)}): the tables hold no result; lower the learning rates",
            file=sys.stderr,
        )
        return 1
    print(
        f"{len(diverged)} of {total} units diverged ({', '.join(diverged)}): recorded as diverged, their "
        "learning rates not chosen",
        file=sys.stderr,
    )
    return 0


def finish_panel(ax, plotted: bool, message: str = "no result: every learning rate diverged") -> bool:
    """A plot panel with nothing to draw (every run of its points diverged) says so in its middle instead of being
    left empty: an empty log axis is an error in matplotlib (``Data cannot be log-scaled``). Returns ``plotted``,
    so the caller sets log scales and legends only on a panel with data."""
    if not plotted:
        ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3")
    return plotted


def legend_if_any(ax, **kwargs) -> None:
    """``ax.legend`` when the panel has labelled artists (none when every run diverged: no empty legend, no
    warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def save_panels(fig, path: str | os.PathLike, title: str, legend_ax=None, **legend) -> None:
    """Finish a figure of panels and write it: a legend on ``legend_ax`` (:func:`legend_if_any`, with ``legend``'s
    options), ``title`` over the panels, a tight layout; then the PNG (written atomically) and the figure closed."""
    import matplotlib.pyplot as plt

    if legend_ax is not None:
        legend_if_any(legend_ax, **legend)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def environment() -> dict[str, Any]:
    """What produced a result: versions, threads, machine."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "probseq": __import__("probseq").__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # timings are only comparable on an otherwise idle machine: record how busy it was
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


#: ``--set key=value`` overrides of an experiment config: the project's one override parser and type check,
#: :func:`probseq.train.schema.with_overrides` (the training configs' too).
apply_overrides = with_overrides


__all__ = [
    "ResultCache",
    "accuracy_cell",
    "apply_overrides",
    "config_hash",
    "diverged_note",
    "environment",
    "evaluate_saved_runs",
    "finish_panel",
    "format_eval_table",
    "legend_if_any",
    "over_seeds",
    "report_diverged",
    "run_eval_command",
    "save_panels",
    "write_csv",
]
