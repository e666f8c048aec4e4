"""Zoology MQAR: which mixers recall, at which state size, inside and beyond training (the paper's MQAR experiment;
the results so far and their caveats: ``results/README.md``).

Protocol (Arora, Eyuboglu et al., "Zoology", 2023; ``zoology/experiments/paper_configs/.../configs.py``):
Zoology's MQAR data (:func:`probseq.tasks.multiquery_ar`: keys from the lower half of the vocabulary,
values from the upper half, power-law query placement ``a = 0.01``, labels −100 except at the queries),
train segments ``(T, k)`` = (64, 4), (128, 8), (256, 16), (256, 32), (256, 64) mixed in one training set,
test segments (64, 4) … (256, 64) and beyond them (512, 128), (1024, 256). The model is Zoology's: short-conv
blocks alternating with the mixer, no MLP (:class:`probseq.models.mqar_model.ZoologyModel`), one ``d_model`` for
every mixer. Zoology's configs use ``n_layers = 2``: one conv block, then the mixer (the ``paper`` preset), except
for Mamba-2, which Zoology runs as two Mamba-2 blocks without conv blocks (here it keeps the conv block unless
``layout=mixers``: then every block is a mixer); the
``quick`` and ``cpu`` presets use ``n_layers = 4`` (``[conv, mixer] × 2``: two mixer layers). Each
``(mixer, d_model, lr, seed)`` is one training run (a *unit*, cached on
completion and resumable from checkpoints, :mod:`probseq.train.sweep`). Per ``(mixer, d_model)`` and test
point, the learning rate is picked by accuracy on a *validation* segment of the same shape (train-range
seeds, never the test data), and the test accuracy at that rate is reported as mean ± 95% CI over seeds.

Outputs in ``--out``: ``results.json`` (config, environment, every unit's metrics, every point),
``mqar.csv`` (one row per mixer, d_model and test point), ``mqar_runs.csv`` (one row per run, with its
time per step), ``mqar_accuracy_vs_kv.png`` (accuracy vs ``num_kv_pairs`` per mixer, as Zoology's figure)
and ``mqar_accuracy_vs_state.png`` (accuracy vs recurrent state size in bytes, as Zoology's figure 2).

Presets (times measured on this project's shared 2-core machine; one training step = one batch):

- ``quick`` — the demo: d_model 64, vocab 256, train (32, 4) + (32, 8), test (32, 4), (32, 8) and beyond,
  (64, 16), (128, 32); 400 steps of batch 32, lrs {3e-3, 1e-2}, one seed: 12 runs, ≈ 3 minutes
  single-threaded (ms/step: bayesian 56, gated_deltanet 41, deltanet 38, mamba2 34, linear_attention 20,
  attention 15).
- ``cpu`` — Zoology's train segments and test points at d_model 64, vocab 8192, 20k + 4 × 4k train
  examples, 1500 steps of batch 64 (batches mostly padded to 256 tokens), lrs {3e-3, 1e-2}, 3 seeds: 36
  runs. Measured: 13.1 h of training summed over the runs as two single-threaded workers on the shared
  machine, ≈ 7 h of wall time (s/step on 1 thread, idle: bayesian 1.04, mamba2 1.05, gated_deltanet 0.63,
  deltanet 0.57, linear_attention 0.31, attention 0.31; on 2 threads ≈ 0.6×), plus ≈ 1 min of evaluation per
  run. Since then (subnormals flushed, freed memory reused, chunk sizes; docs/training.md) one step on 2 threads
  takes bayesian 0.37–0.40, gated_deltanet 0.29–0.30, deltanet 0.29–0.33, mamba2 0.29, linear_attention
  0.21–0.24, attention 0.22–0.23 s (``probseq bench``, two idle runs, 2026-12-04, after the short convolution's
  rewrite, on a host with AVX-512; ``results/bench_quick.json`` and ``results/bench_quick_2.json``; the
  machine's absolute times drift by up to 2× between sessions, the ratios less; compile stays off: it saves
  7–20 % per step, ``results/bench_compiled.json``, but costs minutes per process and changes a run's identity).
  With the compiled covariance path (2026-12-05, three idle runs on a slower host: ``results/bench_quick.json``,
  ``results/bench_quick_2.json`` now and ``results/speed/bench_2026-12-05_9.json``): bayesian 0.60–0.64,
  gated_deltanet 0.55–0.60, deltanet 0.54–0.56, mamba2 0.55–0.61, linear_attention 0.37–0.45, attention
  0.37–0.41 s — the Bayesian step 1.07–1.08× Gated DeltaNet's, against 1.26–1.33× before the kernel.
  Run it in the background; each finished run is kept.
- ``paper`` — Zoology's grid for a GPU (not run here): d_model {64, 128, 256}, lrs logspace(−3, −1.5, 4),
  100k + 4 × 20k train examples, batch 256 for ≈ 32 epochs (22.5k steps), 3 seeds, bf16, Zoology's 2-layer
  model (one conv block, one mixer; Zoology's Mamba-2 model is two Mamba-2 blocks instead): 216 runs.

Set ``retention=stationary`` (or ``reset``) to run the Bayesian Layer with another certainty retention, and
``retention_init=1`` to start the learned one at the stationary end instead of Gated DeltaNet's reset.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probseq.experiments.common import (
    accuracy_cell,
    apply_overrides,  # noqa: F401 (re-exported: mqar.apply_overrides, as before)
    diverged_note,
    evaluate_saved_runs,
    finish_panel,
    over_seeds,
    run_eval_command,
    save_panels,
)
from probseq.experiments.training_sweep import TrainingSweep, run_sweep, sweep_main
from probseq.train.config import TrainConfig
from probseq.train.data import MQARData, MQARSplit, point_seed
from probseq.train.sweep import Unit, best_by_validation

ZOOLOGY_TRAIN = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
ZOOLOGY_TEST = ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256))


@dataclass(frozen=True)
class MQARConfig(TrainingSweep):
    """The MQAR experiment (validated on construction; ``--set key=value`` overrides): the sweep's settings
    (:class:`~probseq.experiments.training_sweep.TrainingSweep`: mixers, learning rates, seeds, training) and
    the task.

    Attributes:
        d_models: model widths (every mixer at every width).
        vocab_size: ``V`` (Zoology: 8192); must exceed every segment length.
        train_segments: ``(T, k)`` train segments, mixed in one training set.
        train_examples: examples per train segment (one number per segment).
        test_segments: ``(T, k)`` test points (also the validation points).
        test_examples, valid_examples: examples per test / validation point.
    """

    d_models: tuple[int, ...] = (64,)
    vocab_size: int = 8192
    train_segments: tuple[tuple[int, int], ...] = ZOOLOGY_TRAIN
    train_examples: tuple[int, ...] = (20_000, 4_000, 4_000, 4_000, 4_000)
    test_segments: tuple[tuple[int, int], ...] = ZOOLOGY_TEST
    test_examples: int = 1_000
    valid_examples: int = 250

    def __post_init__(self) -> None:
        self.check_sweep("d_models", "train_segments", "test_segments")
        for name in ("train_segments", "test_segments"):
            if any(len(s) != 2 for s in getattr(self, name)):
                raise ValueError(f"{name} must be [seq_len, num_kv_pairs] pairs, got {getattr(self, name)}")
        if len(self.train_examples) != len(self.train_segments):
            raise ValueError(
                f"train_examples needs one count per train segment ({len(self.train_segments)}), "
                f"got {self.train_examples}"
            )
        # every run's config is validated here, before any work (segment shapes, vocabulary, d_model, the model's
        # shape: an error found only when a unit builds its model would stop the sweep after hours of other units)
        from probseq.train.trainer import zoology_config  # noqa: PLC0415 (torch: after the arguments are parsed)

        for mixer in self.mixers:
            for d_model in self.d_models:
                zoology_config(self.train_config(mixer, d_model, self.learning_rates[0], self.seeds[0]))

    @property
    def max_train_kv(self) -> int:
        return max(k for _, k in self.train_segments)

    def data(self) -> MQARData:
        return MQARData(
            vocab_size=self.vocab_size,
            train=tuple(MQARSplit(t, k, n) for (t, k), n in zip(self.train_segments, self.train_examples)),
            valid=tuple(MQARSplit(t, k, self.valid_examples) for t, k in self.test_segments),
            test=tuple(MQARSplit(t, k, self.test_examples) for t, k in self.test_segments),
        )

    def train_config(self, mixer: str, d_model: int, lr: float, seed: int) -> TrainConfig:
        return self.run_config(mixer, d_model, self.data(), lr, seed)

    def units(self) -> list[Unit]:
        return [
            Unit(f"{mixer}-d{d}-lr{lr:g}-s{seed}", self.train_config(mixer, d, lr, seed))
            for mixer in self.mixers
            for d in self.d_models
            for lr in self.learning_rates
            for seed in self.seeds
        ]


PRESETS: dict[str, MQARConfig] = {
    # The demo (CPU, minutes): small vocabulary and segments, two learning rates, one seed.
    "quick": MQARConfig(
        learning_rates=(3e-3, 1e-2),
        seeds=(0,),
        vocab_size=256,
        train_segments=((32, 4), (32, 8)),
        train_examples=(4_000, 4_000),
        test_segments=((32, 4), (32, 8), (64, 16), (128, 32)),
        test_examples=256,
        valid_examples=128,
        max_steps=400,
        batch_size=32,
        warmup=0.05,
        eval_batch_size=128,
        save_steps=50,
        num_threads=1,
    ),
    # CPU, hours in the background: Zoology's segments and test points at d_model 64, fewer examples and steps.
    "cpu": MQARConfig(),
    # Zoology's grid for a GPU (documented, not run here): 100k + 4 × 20k examples, batch 256, 32 epochs, and
    # Zoology's 2-layer model (one conv block, one mixer).
    "paper": MQARConfig(
        d_models=(64, 128, 256),
        learning_rates=(1e-3, 3.1623e-3, 1e-2, 3.1623e-2),
        train_examples=(100_000, 20_000, 20_000, 20_000, 20_000),
        max_steps=22_500,
        batch_size=256,
        eval_batch_size=32,
        precision="bf16",
        save_steps=1_000,
        n_layers=2,
    ),
}


# ------------------------------------------------------------------------------------------ results


def summarise(config: MQARConfig, metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mixer, d_model, test point): best lr by validation, test accuracy mean ± CI95."""
    units = {unit.name: unit.config for unit in config.units()}
    points = []
    for mixer in config.mixers:
        for d_model in config.d_models:
            runs = [
                {"learning_rate": units[name].learning_rate, "seed": units[name].seed, "metrics": m}
                for name, m in metrics.items()
                if units[name].model.mixer == mixer and units[name].model.d_model == d_model
            ]
            state_bytes = runs[0]["metrics"]["state_bytes"]
            for seq_len, kv in config.test_segments:
                best = best_by_validation(runs, MQARSplit(seq_len, kv, 1).name)
                points.append(
                    {
                        "mixer": mixer,
                        "d_model": d_model,
                        "seq_len": seq_len,
                        "num_kv_pairs": kv,
                        "beyond_training": kv > config.max_train_kv,
                        "state_bytes": state_bytes,
                        **best,
                    }
                )
    return points


def csv_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point; ``status`` is ``diverged`` (and the lr and accuracies empty) when every lr diverged."""
    return [
        {
            k: p[k]
            for k in (
                "mixer",
                "d_model",
                "seq_len",
                "num_kv_pairs",
                "beyond_training",
                "state_bytes",
                "best_lr",
                "valid_accuracy",
                "accuracy",
                "ci95",
            )
        }
        | {"seeds": len(p["accuracies"]), "status": p.get("status", "ok")}
        for p in points
    ]


def unit_columns(unit: Unit) -> dict[str, Any]:
    """A run's columns in ``mqar_runs.csv`` and ``results.json`` (after its name): mixer, d_model, lr, seed."""
    config = unit.config
    return {
        "mixer": config.model.mixer,
        "d_model": config.model.d_model,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
    }


def format_table(results: dict[str, Any]) -> str:
    """Markdown: per mixer (and d_model), test accuracy mean ± CI95 at each point, with the chosen lr."""
    config = results["config"]
    segments = [tuple(s) for s in config["test_segments"]]
    max_train = max(k for _, k in config["train_segments"])
    header = ["mixer", "state (bytes)"] + [f"({t}, {k}){'*' if k > max_train else ''}" for t, k in segments]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(segments)]
    rows: dict[tuple[str, int], dict[tuple[int, int], dict[str, Any]]] = {}
    for p in results["points"]:
        rows.setdefault((p["mixer"], p["d_model"]), {})[(p["seq_len"], p["num_kv_pairs"])] = p
    for (mixer, d_model), cells in rows.items():
        name = mixer if len(config["d_models"]) == 1 else f"{mixer} (d={d_model})"
        first = next(iter(cells.values()))
        lines.append(
            f"| {name} | {first['state_bytes']:,} | "
            + " | ".join(
                accuracy_cell(cells[s]) + ("" if cells[s]["best_lr"] is None else f" (lr {cells[s]['best_lr']:g})")
                for s in segments
            )
            + " |"
        )
    seeds = len(config["seeds"])
    lines += [
        "",
        f"(T, k) test points; * beyond the training segments. Test accuracy at the learning rate chosen on "
        f"validation data, {over_seeds(seeds)}." + diverged_note(results["points"]),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """``mqar_accuracy_vs_kv.png`` and ``mqar_accuracy_vs_state.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    config, points = results["config"], results["points"]
    mixers, d_models = config["mixers"], config["d_models"]
    max_train = max(k for _, k in config["train_segments"])
    colors = {m: f"C{i}" for i, m in enumerate(mixers)}
    paths = [out / "mqar_accuracy_vs_kv.png", out / "mqar_accuracy_vs_state.png"]

    fig, axes = plt.subplots(1, len(d_models), figsize=(5.2 * len(d_models), 4.2), squeeze=False)
    for ax, d_model in zip(axes[0], d_models):
        plotted = False
        for mixer in mixers:
            rows = sorted(
                (p for p in points if p["mixer"] == mixer and p["d_model"] == d_model and p["accuracy"] is not None),
                key=lambda p: (p["num_kv_pairs"], p["seq_len"]),
            )
            if rows:  # a mixer whose every lr diverged at every point has no line (and no legend entry)
                ax.errorbar(
                    [p["num_kv_pairs"] for p in rows],
                    [p["accuracy"] for p in rows],
                    yerr=[p["ci95"] for p in rows],
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=colors[mixer],
                    label=mixer,
                )
                plotted = True
        ax.axhline(1 / (config["vocab_size"] - config["vocab_size"] // 2), color="0.4", lw=0.8, ls=":")
        if finish_panel(ax, plotted):
            beyond = sorted({p["num_kv_pairs"] for p in points if p["num_kv_pairs"] > max_train})
            if beyond:  # shade from halfway (on the log axis) between the last trained and the first beyond
                ax.axvspan((max_train * beyond[0]) ** 0.5, beyond[-1] * 1.3, color="0.92", zorder=0)
            ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("key-value pairs k (shaded: beyond training; dotted: chance)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"d_model = {d_model}")
        ax.grid(alpha=0.3)
    save_panels(
        fig,
        paths[0],
        "MQAR accuracy vs number of key-value pairs\n(best lr by validation, mean ± 95% CI over seeds)",
        axes[0][0],
        fontsize=8,
    )

    segments = [tuple(s) for s in config["test_segments"]]
    inside = [s for s in segments if s[1] <= max_train]  # none when every test point lies beyond training
    shown = sorted({segments[-1]} | ({max(inside, key=lambda s: s[1])} if inside else set()), key=lambda s: s[1])
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.2), squeeze=False)
    for ax, (seq_len, kv) in zip(axes[0], shown):
        plotted = False
        for mixer in mixers:
            rows = sorted(
                (
                    p
                    for p in points
                    if p["mixer"] == mixer
                    and p["accuracy"] is not None
                    and (p["seq_len"], p["num_kv_pairs"]) == (seq_len, kv)
                ),
                key=lambda p: p["state_bytes"],
            )
            if rows:
                ax.errorbar(
                    [p["state_bytes"] for p in rows],
                    [p["accuracy"] for p in rows],
                    yerr=[p["ci95"] for p in rows],
                    marker="o",
                    ms=5,
                    capsize=2,
                    color=colors[mixer],
                    label=mixer,
                )
                plotted = True
        if finish_panel(ax, plotted):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e3:g}k"))
            ax.xaxis.set_minor_formatter(NullFormatter())  # the default labels 2×10⁴, 3×10⁴, … overlap
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("recurrent state size (bytes, float32; attention: KV cache)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"(T, k) = ({seq_len}, {kv}){' beyond training' if kv > max_train else ''}")
        ax.grid(alpha=0.3, which="both")
    save_panels(
        fig,
        paths[1],
        "MQAR accuracy vs state size\n(one marker per d_model; state after the longest train sequence)",
        axes[0][0],
        fontsize=8,
    )
    return paths


def run_mqar(config: MQARConfig, out: str | Path, *, log=None) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``; write results.json, the CSVs and the plots; return the
    results (as saved). ``results["from_cache"]`` counts the units taken from the cache."""
    return run_sweep(
        "mqar", config, out, summarise=summarise, csv_rows=csv_rows, unit_columns=unit_columns, plot=plot, log=log
    )


# ------------------------------------------------------------------------------------------ saved runs


def eval_segments(
    run, points: list[tuple[int, int]], examples: int | None = None
) -> dict[str, tuple[MQARSplit, int, bool]]:
    """The test segments of ``points`` (``(T, k)``) for a saved run (:class:`probseq.train.saved.SavedRun`):
    ``{name: (split, seed, tested_in_run)}``. A point the run was tested at keeps its examples and seed (its own
    test data); another gets ``examples`` (default: the most of the run's test segments) and the seed
    :func:`~probseq.train.data.point_seed` fixes for the run's data seed and the point. Every segment is checked
    against the run's vocabulary (a ``ValueError`` naming the run and the point)."""
    data = run.config.data
    tested = {s.name: s for s in data.test}
    splits = []
    for seq_len, kv in points:
        name = MQARSplit(seq_len, kv, 1).name
        count = examples or (tested[name].num_examples if name in tested else max(s.num_examples for s in data.test))
        splits.append(MQARSplit(seq_len, kv, count))
    try:  # the generator's own checks (vocabulary, sequence length, pairs) of every point, before any work
        MQARData(
            vocab_size=data.vocab_size,
            power_a=data.power_a,
            random_non_queries=data.random_non_queries,
            train=data.train,
            test=tuple(splits),
        )
    except ValueError as error:
        raise ValueError(f"run {run.folder}: {error}") from None
    return {s.name: (s, point_seed(data, run.config.effective_data_seed, s.name), s in data.test) for s in splits}


def evaluate_saved(
    path: str | Path,
    points: list[tuple[int, int]],
    examples: int | None = None,
    batch_size: int | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Score the saved MQAR runs at ``path`` (a run folder, or every run under a folder) at ``points``
    (``(T, k)``), without training (:func:`~probseq.experiments.common.evaluate_saved_runs`): one row per run and
    point — the run's identity (run folder, mixer, d_model, lr, seed, retention, …), the point's columns of
    ``mqar.csv`` (seq_len, num_kv_pairs, beyond_training, state_bytes), ``num_examples``, ``point_seed``,
    ``tested_in_run`` and ``recorded_accuracy`` (the run's own accuracy there, reproduced exactly on the same data),
    accuracy, example_accuracy, all_correct, loss, status. Every point of every run is checked before the first is
    evaluated."""

    def point_columns(run, split: MQARSplit) -> dict[str, Any]:
        max_kv = max(s.num_kv_pairs for s in run.config.data.train)
        return {
            "seq_len": split.seq_len,
            "num_kv_pairs": split.num_kv_pairs,
            "beyond_training": split.num_kv_pairs > max_kv,
        }

    return evaluate_saved_runs(
        path, "mqar", lambda run: eval_segments(run, points, examples), point_columns, point_label, batch_size, log
    )


def point_label(row: dict[str, Any]) -> str:
    """A row's point in tables and logs: ``(T, k)``."""
    return f"({row['seq_len']}, {row['num_kv_pairs']})"


# ------------------------------------------------------------------------------------------ CLI


def eval_main(args: argparse.Namespace) -> int:
    """``probseq mqar eval --run DIR --points T,k … --out FILE.csv``."""
    return run_eval_command(args, evaluate_saved, point_label)


def main(args: argparse.Namespace) -> int:
    return sweep_main(args, PRESETS, run_mqar, format_table, "mqar.csv, mqar_runs.csv and 2 plots")
