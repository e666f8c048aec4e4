"""Learned associative recall: trained inside one regime, evaluated inside and beyond it (the paper's learned-recall
experiment; the results so far and their caveats: ``results/README.md``).

Small models (:class:`probseq.models.mqar_model.ZoologyModel`, ``[short-conv block, mixer] × 2``, one
``d_model`` for every mixer) are trained end to end on :func:`probseq.tasks.associative_recall` with key
noise, collisions (a key written twice: the latest value is the answer) and distractor writes, on a grid
of ``num_pairs × gap`` train segments. They are then tested at the *inside* point (the largest train
``num_pairs`` and ``gap``, the train collisions and key noise) and at points that move one knob beyond the
training regime: more pairs, longer gaps (recall distance), more collisions, more key noise.

Every ``(mixer, lr, seed)`` is one resumable, cached training run (:mod:`probseq.train.sweep`); per mixer
and test point the learning rate is chosen on a validation segment of the same shape (train-range seeds),
and the test accuracy there is reported as mean ± 95% CI over seeds.

Outputs in ``--out``: ``results.json``, ``recall.csv`` (mixer × test point), ``recall_runs.csv`` (one row per
run, with its time per step) and ``recall_beyond_training.png`` (one panel per knob: accuracy vs the knob,
the inside point first).

Presets (times measured on this project's shared 2-core machine):

- ``quick`` — the demo: 32 keys and values, 2–4 pairs, gaps 0–8, tested at 8 pairs, gap 32, 2 collisions,
  key noise 0.3; 500 steps of batch 32, lrs {1e-3, 3e-3}, one seed: 12 runs, ≈ 3.3 minutes single-threaded
  (ms/step: bayesian 46, gated_deltanet 35, deltanet 35, mamba2 29, linear_attention 16, attention 14).
- ``cpu`` — 64 keys and values, trained on pairs {4, 8} × gaps {0, 16}, tested up to 32 pairs, gap 256, 4 collisions,
  key
  noise 0.5; 3000 steps of batch 64, lrs {1e-3, 3e-3, 1e-2}, 3 seeds: 54 runs, 5.1 h of training on one
  thread per run (measured; 2.8 h of wall time as two workers; ms/step on one thread: bayesian ≈ 180,
  gated_deltanet, deltanet and mamba2 104–131, linear_attention and attention ≈ 50; on 2 threads, idle, after the
  speed work of docs/training.md, ``segment_ratios`` and the short convolution's rewrite: bayesian 66–79,
  gated_deltanet 46–52, mamba2 37–41, ``probseq bench``, two idle runs on 2026-12-04 on a host with AVX-512 —
  absolute times on this machine drift by up to 2×, ratios
  less; chunks filled evenly since 2026-12-05 — T = 54 no longer pads to 64 — took 12–19 % off each delta-rule
  mixer's step: bayesian 136–150 → 110–132, gated_deltanet 102–105 → 84–89 on a slower host, docs/numerics.md;
  with the compiled covariance path, three idle bench runs on 2026-12-05: bayesian 99–116, gated_deltanet 92–109,
  mamba2 80–87 — 1.06–1.08× Gated DeltaNet's step; 1.13× interleaved, ``scripts/ab_native_scan.py --steps``).
  Results: ``results/recall_cpu/``.
- ``paper`` — a GPU (documented, not run): d_model 128, 256 keys and values, 8–32 pairs, gaps 0–128, tested up
  to 128 pairs and gap 2048; 4 lrs, 3 seeds, 20k steps of batch 256, bf16.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probseq.experiments.common import (
    accuracy_cell,
    apply_overrides,  # noqa: F401 (re-exported: recall.apply_overrides, as before)
    diverged_note,
    evaluate_saved_runs,
    finish_panel,
    over_seeds,
    run_eval_command,
    save_panels,
)
from probseq.experiments.training_sweep import TrainingSweep, run_sweep, sweep_main
from probseq.tasks import RecallConfig
from probseq.train.config import TrainConfig
from probseq.train.data import RecallData, RecallSplit, point_seed
from probseq.train.sweep import Unit, best_by_validation
from probseq_cli.parsers import recall_point_knobs, recall_point_name

# The knobs moved beyond training, in plotting order: (config field of RecallExperiment, RecallConfig field).
KNOBS = (
    ("eval_pairs", "num_pairs"),
    ("eval_gaps", "gap"),
    ("eval_collisions", "collisions"),
    ("eval_key_noise", "key_noise"),
)


def recall_task(
    num_pairs: int, gap: int, collisions: int, key_noise: float, *, distractors: int, num_keys: int, num_values: int
) -> RecallConfig:
    """The experiment's recall task at a point: every pair queried, and the sequence just holds the last answer,
    ``seq_len = 2 · (num_pairs + distractors + collisions) + gap + 2 · num_pairs``."""
    writes = num_pairs + distractors + collisions
    return RecallConfig(
        num_pairs=num_pairs,
        num_queries=num_pairs,
        collisions=collisions,
        distractors=distractors,
        key_noise=key_noise,
        gap=gap,
        num_keys=num_keys,
        num_values=num_values,
        seq_len=2 * writes + gap + 2 * num_pairs,
    )


@dataclass(frozen=True)
class RecallExperiment(TrainingSweep):
    """The associative-recall experiment (validated on construction; ``--set key=value`` overrides): the sweep's
    settings (:class:`~probseq.experiments.training_sweep.TrainingSweep`: mixers, learning rates, seeds,
    training) and the task.

    Attributes:
        d_model: model width (every mixer).
        num_keys, num_values: the vocabulary (``1 + 2·num_keys + num_values`` tokens).
        train_pairs, train_gaps: the training grid (one segment per pair count and gap).
        collisions, distractors, key_noise: the training regime's collisions (queried keys written twice),
            distractor writes and key-noise probability.
        train_examples: examples per train segment.
        eval_pairs, eval_gaps, eval_collisions, eval_key_noise: test points beyond training, each moving one
            knob away from the inside point.
        test_examples, valid_examples: examples per test / validation point.
    """

    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    max_steps: int = 3_000
    eval_batch_size: int = 128
    d_model: int = 64
    num_keys: int = 64
    num_values: int = 64
    train_pairs: tuple[int, ...] = (4, 8)
    train_gaps: tuple[int, ...] = (0, 16)
    collisions: int = 1
    distractors: int = 2
    key_noise: float = 0.1
    train_examples: int = 5_000
    eval_pairs: tuple[int, ...] = (16, 32)
    eval_gaps: tuple[int, ...] = (64, 256)
    eval_collisions: tuple[int, ...] = (2, 4)
    eval_key_noise: tuple[float, ...] = (0.3, 0.5)
    test_examples: int = 1_000
    valid_examples: int = 250

    def __post_init__(self) -> None:
        self.check_sweep("train_pairs", "train_gaps")
        for knob, field in KNOBS:  # beyond training means beyond it
            inside = getattr(self.inside(), field)
            if any(v <= inside for v in getattr(self, knob)):
                raise ValueError(
                    f"{knob} must all exceed the inside point's {field} = {inside}, got {getattr(self, knob)}"
                )
        from probseq.train.trainer import zoology_config  # noqa: PLC0415 (torch: after the arguments are parsed)

        for mixer in self.mixers:  # every segment, and each mixer's model shape, before any work
            zoology_config(self.train_config(mixer, self.learning_rates[0], self.seeds[0]))

    def task(self, num_pairs: int, gap: int, collisions: int, key_noise: float) -> RecallConfig:
        """A recall task of this vocabulary (:func:`recall_task`)."""
        return recall_task(
            num_pairs,
            gap,
            collisions,
            key_noise,
            distractors=self.distractors,
            num_keys=self.num_keys,
            num_values=self.num_values,
        )

    def inside(self) -> RecallConfig:
        return self.task(max(self.train_pairs), max(self.train_gaps), self.collisions, self.key_noise)

    def test_points(self) -> dict[str, RecallConfig]:
        """``inside`` and one point per value of each knob beyond training, by name."""
        inside = {
            "num_pairs": max(self.train_pairs),
            "gap": max(self.train_gaps),
            "collisions": self.collisions,
            "key_noise": self.key_noise,
        }
        points = {"inside": self.task(**inside)}
        for knob, field in KNOBS:  # the sequence length follows the knobs (more writes, a longer gap)
            for value in getattr(self, knob):
                points[f"{field}={value:g}"] = self.task(**(inside | {field: value}))
        return points

    def data(self) -> RecallData:
        train = tuple(
            RecallSplit(f"pairs={p},gap={g}", self.task(p, g, self.collisions, self.key_noise), self.train_examples)
            for p in self.train_pairs
            for g in self.train_gaps
        )
        points = self.test_points()
        return RecallData(
            train=train,
            valid=tuple(RecallSplit(n, t, self.valid_examples) for n, t in points.items()),
            test=tuple(RecallSplit(n, t, self.test_examples) for n, t in points.items()),
        )

    def train_config(self, mixer: str, lr: float, seed: int) -> TrainConfig:
        return self.run_config(mixer, self.d_model, self.data(), lr, seed)

    def units(self) -> list[Unit]:
        return [
            Unit(f"{mixer}-lr{lr:g}-s{seed}", self.train_config(mixer, lr, seed))
            for mixer in self.mixers
            for lr in self.learning_rates
            for seed in self.seeds
        ]


PRESETS: dict[str, RecallExperiment] = {
    # The demo (CPU, minutes).
    "quick": RecallExperiment(
        learning_rates=(1e-3, 3e-3),
        seeds=(0,),
        num_keys=32,
        num_values=32,
        train_pairs=(2, 4),
        train_gaps=(0, 8),
        distractors=1,
        train_examples=4_000,
        eval_pairs=(8,),
        eval_gaps=(32,),
        eval_collisions=(2,),
        eval_key_noise=(0.3,),
        test_examples=256,
        valid_examples=128,
        max_steps=500,
        batch_size=32,
        warmup=0.05,
        save_steps=50,
        num_threads=1,
    ),
    # CPU, hours in the background.
    "cpu": RecallExperiment(),
    # A GPU (documented, not run here).
    "paper": RecallExperiment(
        d_model=128,
        learning_rates=(1e-3, 3.1623e-3, 1e-2, 3.1623e-2),
        num_keys=256,
        num_values=256,
        train_pairs=(8, 16, 32),
        train_gaps=(0, 32, 128),
        train_examples=40_000,
        eval_pairs=(64, 128),
        eval_gaps=(512, 2048),
        eval_collisions=(4, 8),
        eval_key_noise=(0.3, 0.5),
        max_steps=20_000,
        batch_size=256,
        precision="bf16",
        save_steps=1_000,
    ),
}


# ------------------------------------------------------------------------------------------ results


def summarise(config: RecallExperiment, metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mixer, test point): best lr by validation, test accuracy mean ± CI95."""
    units = {unit.name: unit.config for unit in config.units()}
    points = config.test_points()
    rows = []
    for mixer in config.mixers:
        runs = [
            {"learning_rate": units[name].learning_rate, "seed": units[name].seed, "metrics": m}
            for name, m in metrics.items()
            if units[name].model.mixer == mixer
        ]
        for name, task in points.items():
            rows.append(
                {
                    "mixer": mixer,
                    "point": name,
                    "num_pairs": task.num_pairs,
                    "gap": task.gap,
                    "collisions": task.collisions,
                    "key_noise": task.key_noise,
                    "seq_len": task.seq_len,
                    "state_bytes": runs[0]["metrics"]["state_bytes"],
                    **best_by_validation(runs, name),
                }
            )
    return rows


def csv_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = (
        "mixer",
        "point",
        "num_pairs",
        "gap",
        "collisions",
        "key_noise",
        "seq_len",
        "state_bytes",
        "best_lr",
        "valid_accuracy",
        "accuracy",
        "ci95",
    )
    return [{k: p[k] for k in keys} | {"seeds": len(p["accuracies"]), "status": p.get("status", "ok")} for p in points]


def unit_columns(unit: Unit) -> dict[str, Any]:
    """A run's columns in ``recall_runs.csv`` and ``results.json`` (after its name): mixer, lr, seed."""
    return {"mixer": unit.config.model.mixer, "learning_rate": unit.config.learning_rate, "seed": unit.config.seed}


def format_table(results: dict[str, Any]) -> str:
    """Markdown: per mixer, test accuracy mean ± CI95 at the inside point and each point beyond training."""
    names = list(dict.fromkeys(p["point"] for p in results["points"]))
    lines = ["| mixer | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    by_mixer: dict[str, dict[str, dict[str, Any]]] = {}
    for p in results["points"]:
        by_mixer.setdefault(p["mixer"], {})[p["point"]] = p
    for mixer, cells in by_mixer.items():
        lines.append(f"| {mixer} | " + " | ".join(accuracy_cell(cells[n]) for n in names) + " |")
    seeds = len(results["config"]["seeds"])
    inside = next(p for p in results["points"] if p["point"] == "inside")
    lines += [
        "",
        f"inside = the training regime's largest point (pairs={inside['num_pairs']}, gap={inside['gap']}, "
        f"collisions={inside['collisions']}, key_noise={inside['key_noise']:g}); "
        "every other column moves one "
        f"knob beyond training. Test accuracy at the lr chosen on validation data, {over_seeds(seeds)}."
        + diverged_note(results["points"]),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> Path:
    """``recall_beyond_training.png``: one panel per knob, accuracy vs the knob's value (inside point first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixers = results["config"]["mixers"]
    fig, axes = plt.subplots(1, len(KNOBS), figsize=(4.2 * len(KNOBS), 3.8), squeeze=False)
    for ax, (_, field) in zip(axes[0], KNOBS):
        plotted = False
        for index, mixer in enumerate(mixers):
            rows = [
                p
                for p in results["points"]
                if p["mixer"] == mixer
                and p["accuracy"] is not None
                and (p["point"] == "inside" or p["point"].startswith(f"{field}="))
            ]
            rows.sort(key=lambda p: p[field])
            if rows:  # a mixer whose every lr diverged has no line (and no legend entry)
                ax.errorbar(
                    [p[field] for p in rows],
                    [p["accuracy"] for p in rows],
                    yerr=[p["ci95"] for p in rows],
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=f"C{index}",
                    label=mixer,
                )
                plotted = True
        inside = next(p for p in results["points"] if p["point"] == "inside")[field]
        ax.axvline(inside, color="0.6", lw=0.8, ls="--")
        ax.axhline(1 / results["config"]["num_values"], color="0.4", lw=0.8, ls=":", label="chance")
        if finish_panel(ax, plotted) and field in ("num_pairs", "gap") and inside > 0:
            ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(f"{field} (dashed: inside point; dotted: chance)")
        ax.set_ylabel("recall accuracy")
        ax.grid(alpha=0.3)
    path = out / "recall_beyond_training.png"
    save_panels(
        fig,
        path,
        "Associative recall inside and beyond the training regime (best lr by validation, mean ± 95% CI over seeds)",
        axes[0][0],
        fontsize=7,
    )
    return path


def run_recall(config: RecallExperiment, out: str | Path, *, log=None) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``; write results.json, the CSVs and the plot; return the
    results (as saved). ``results["from_cache"]`` counts the units taken from the cache."""
    test_points = {name: dataclasses.asdict(task) for name, task in config.test_points().items()}
    return run_sweep(
        "recall",
        config,
        out,
        summarise=summarise,
        csv_rows=csv_rows,
        unit_columns=unit_columns,
        plot=plot,
        extra={"test_points": test_points},
        log=log,
    )


# ------------------------------------------------------------------------------------------ saved runs


def eval_segments(run, points: list[str], examples: int | None = None) -> dict[str, tuple[RecallSplit, int, bool]]:
    """The test segments of the named ``points`` for a saved run (:class:`probseq.train.saved.SavedRun`):
    ``{name: (split, seed, tested_in_run)}``. A point is named as the experiment names its test points: ``inside``
    (the run's own inside point: the training regime's largest) or ``knob=value`` moving knobs of it
    (``num_pairs``, ``gap``, ``collisions``, ``key_noise``; several joined by commas), the task built as
    :func:`recall_task` builds it from the inside point's distractors and vocabulary. A point the run was tested
    at keeps its examples and seed; another gets ``examples`` (default: the most of the run's test segments) and
    the seed :func:`~probseq.train.data.point_seed` fixes for the run's data seed and the point's name. Every task
    is checked before any work (a ``ValueError`` naming the run and the point)."""
    data = run.config.data
    tested = {s.name: s for s in data.test}
    if "inside" not in tested:
        raise ValueError(
            f"run {run.folder} has no 'inside' test point, which its recall points move away from: it "
            "was not trained by the recall experiment"
        )
    inside = tested["inside"].task
    splits = []
    for text in points:
        knobs = recall_point_knobs(text)
        name = recall_point_name(knobs)
        values = {field: getattr(inside, field) for _, field in KNOBS} | knobs
        try:
            task = recall_task(
                **values, distractors=inside.distractors, num_keys=inside.num_keys, num_values=inside.num_values
            )
        except ValueError as error:
            raise ValueError(f"run {run.folder}, recall point {name}: {error}") from None
        count = examples or (tested[name].num_examples if name in tested else max(s.num_examples for s in data.test))
        splits.append(RecallSplit(name, task, count))
    try:
        RecallData(train=data.train, test=tuple(splits))
    except ValueError as error:
        raise ValueError(f"run {run.folder}: {error}") from None
    return {s.name: (s, point_seed(data, run.config.effective_data_seed, s.name), s in data.test) for s in splits}


def evaluate_saved(
    path: str | Path, points: list[str], examples: int | None = None, batch_size: int | None = None, log=None
) -> list[dict[str, Any]]:
    """Score the saved recall runs at ``path`` (a run folder, or every run under a folder) at the named
    ``points`` (:func:`eval_segments`), without training (:func:`~probseq.experiments.common.evaluate_saved_runs`):
    one row per run and point — the run's identity (run folder, mixer, d_model, lr, seed, retention, …), the
    point's columns of ``recall.csv`` (point, num_pairs, gap, collisions, key_noise, seq_len, state_bytes),
    ``num_examples``, ``point_seed``, ``tested_in_run`` and ``recorded_accuracy`` (reproduced exactly on the same
    data), accuracy, example_accuracy, all_correct, loss, status. Every point of every run is checked before the
    first is evaluated."""

    def point_columns(run, split: RecallSplit) -> dict[str, Any]:
        task = split.task
        return {
            "point": split.name,
            "num_pairs": task.num_pairs,
            "gap": task.gap,
            "collisions": task.collisions,
            "key_noise": task.key_noise,
            "seq_len": task.seq_len,
        }

    return evaluate_saved_runs(
        path, "recall", lambda run: eval_segments(run, points, examples), point_columns, point_label, batch_size, log
    )


def point_label(row: dict[str, Any]) -> str:
    """A row's point in tables and logs: its name."""
    return row["point"]


# ------------------------------------------------------------------------------------------ CLI


def eval_main(args: argparse.Namespace) -> int:
    """``probseq recall eval --run DIR --points NAME … --out FILE.csv``."""
    return run_eval_command(args, evaluate_saved, point_label)


def main(args: argparse.Namespace) -> int:
    return sweep_main(args, PRESETS, run_recall, format_table, "recall.csv, recall_runs.csv and 1 plot")
