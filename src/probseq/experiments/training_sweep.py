"""What ``probseq mqar`` and ``probseq recall`` share: the settings of a sweep of training runs
(:class:`TrainingSweep`, which their configs extend with the task), running one into ``--out``
(:func:`run_sweep`) and the command (:func:`sweep_main`).

A sweep is every ``(mixer, [d_model,] learning rate, seed)`` of the config, each one resumable, cached training run
(:func:`probseq.train.sweep.run_units`); the experiment's ``summarise`` turns their metrics into its points.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from probseq.experiments.common import apply_overrides, environment, report_diverged, write_csv
from probseq.files import atomic_write_json, check_same_config, check_writable
from probseq.train.config import MIXER_NAMES, RUN_ONLY_FIELDS, ModelSpec, TrainConfig
from probseq.train.data import MQARData, RecallData
from probseq.train.sweep import Unit, run_columns, run_units, train_seconds

# the mixers with a decay rate A (decay_init_scale reaches only these runs)
DECAYING_MIXERS = frozenset({"gated_deltanet", "bayesian", "mamba2"})


@dataclass(frozen=True)
class TrainingSweep:
    """The mixers, learning rates and seeds a sweep trains, and every run's training settings (``--set key=value``
    overrides them as any field of the experiment's config).

    Attributes:
        mixers: mixers compared (names of :data:`probseq.layers.MIXERS`).
        learning_rates: the lr sweep; the best per test point is chosen on validation data.
        seeds: one run per seed (model init, data order and data).
        max_steps, batch_size, warmup, weight_decay: optimisation (AdamW, cosine schedule).
        eval_batch_size: evaluation batch.
        n_layers: blocks of the model (4 = ``[conv, mixer] × 2``).
        expand_v: value dim / key dim of the recurrent mixers (1: the default; Zoology's Gated DeltaNet uses 2).
        decay_init_scale: the initial decay rates of the mixers that have one (``DECAYING_MIXERS``) multiplied by
            this (1: the default, their own initialisation; :class:`~probseq.models.mqar_model.ZoologyConfig`).
        layout: the model's blocks, ``"alternating"`` (conv block, mixer, …; the default) or ``"mixers"``
            (``n_layers`` mixers, no conv block: Zoology's Mamba-2 models) — :class:`~probseq.train.ModelSpec`'s.
        retention, retention_init, retention_lr_scale: the Bayesian Layer's certainty retention and, for
            ``learned``, its starting scale ``ρ`` and its parameters' learning rate relative to the run's (only the
            ``bayesian`` runs).
        init: weight initialisation of every run, ``"fla"`` or Zoology's ``"zoology"``
            (:class:`probseq.models.mqar_model.ZoologyModel`).
        loss_weighting: ``"token"`` (every supervised token of a batch weighs the same; the default) or
            ``"example"`` (every example weighs the same, as in Zoology) — :class:`~probseq.train.TrainConfig`'s.
        batching: ``"mixed"`` (the default: every train segment's examples in one shuffled set, batches padded) or
            ``"by_segment"`` (Zoology's: every batch from one segment) — :class:`~probseq.train.TrainConfig`'s.
        precision: ``fp32`` on CPU, ``bf16`` on a GPU.
        save_steps: checkpoint interval of a run (resume granularity).
        num_threads: torch threads per run (``None``: torch's default).
    """

    mixers: tuple[str, ...] = MIXER_NAMES
    learning_rates: tuple[float, ...] = (3e-3, 1e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    max_steps: int = 1_500
    batch_size: int = 64
    warmup: float = 0.1
    weight_decay: float = 0.1
    eval_batch_size: int = 64
    n_layers: int = 4
    expand_v: float = 1.0
    decay_init_scale: float = 1.0
    layout: Literal["alternating", "mixers"] = "alternating"
    retention: Literal["reset", "stationary", "learned"] = "learned"
    retention_init: float = 0.0
    retention_lr_scale: float = 1.0
    init: Literal["fla", "zoology"] = "fla"
    loss_weighting: Literal["token", "example"] = "token"
    batching: Literal["mixed", "by_segment"] = "mixed"
    precision: str = "fp32"
    save_steps: int = 100
    num_threads: int | None = None

    def check_sweep(self, *lists: str) -> None:
        """The sweep's own checks: known, distinct mixers; ``learning_rates``, ``seeds`` and the experiment's
        ``lists`` (field names) non-empty lists of distinct values; a known precision."""
        unknown = [m for m in self.mixers if m not in MIXER_NAMES]
        if not self.mixers or unknown or len(set(self.mixers)) != len(self.mixers):
            raise ValueError(f"mixers must be distinct names of {MIXER_NAMES}, got {self.mixers}")
        for name in ("learning_rates", "seeds", *lists):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list of distinct values, got {values}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")

    def run_config(self, mixer: str, d_model: int, data: MQARData | RecallData, lr: float, seed: int) -> TrainConfig:
        """One run of the sweep: ``mixer`` at width ``d_model`` on ``data`` with learning rate ``lr`` and ``seed``."""
        # retention reaches the bayesian runs only, so changing it leaves the other runs' cache keys alone
        model = ModelSpec(
            mixer=mixer,
            d_model=d_model,
            n_layers=self.n_layers,
            expand_v=self.expand_v,
            init=self.init,
            layout=self.layout,
            **({"retention": self.retention, "retention_init": self.retention_init} if mixer == "bayesian" else {}),
            # likewise the decay's initial scale: only the mixers with a decay rate
            **({"decay_init_scale": self.decay_init_scale} if mixer in DECAYING_MIXERS else {}),
        )
        return TrainConfig(
            model=model,
            data=data,
            learning_rate=lr,
            weight_decay=self.weight_decay,
            warmup=self.warmup,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
            seed=seed,
            precision=self.precision,
            save_steps=self.save_steps,
            progress=False,
            logging_steps=max(1, self.max_steps // 10),
            num_threads=self.num_threads,
            loss_weighting=self.loss_weighting,
            batching=self.batching,
            retention_lr_scale=self.retention_lr_scale if mixer == "bayesian" else 1.0,
        )


def run_sweep(
    experiment: str,
    config: TrainingSweep,
    out: str | Path,
    *,
    summarise: Callable[[Any, dict[str, dict[str, Any]]], list[dict[str, Any]]],
    csv_rows: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    unit_columns: Callable[[Unit], dict[str, Any]],
    plot: Callable[[dict[str, Any], Path], Any],
    extra: dict[str, Any] | None = None,
    log=None,
) -> dict[str, Any]:
    """Run (or resume) the sweep ``config.units()`` (the experiment config's) into ``out`` (checkpoints under
    ``runs_root()/<experiment>``) and write what ``probseq <experiment>`` writes: ``results.json`` (config,
    environment, ``extra``, every unit's ``unit_columns`` and metrics, the points of ``summarise``, counts and
    times), ``<experiment>.csv`` (``csv_rows`` of the points), ``<experiment>_runs.csv`` (one row per run: its name,
    ``unit_columns`` and :func:`~probseq.train.sweep.run_columns`) and the plots (``plot(results, out)``, after
    ``results.json``: a plotting problem never costs the results). Returns the results as saved;
    ``results["from_cache"]`` counts the units taken from the cache. An ``out`` holding the results of another
    config (run settings such as ``num_threads`` aside) is refused before any work."""
    out = check_writable(out)
    check_same_config(out / "results.json", config, ignore=RUN_ONLY_FIELDS)
    started = time.perf_counter()
    units = config.units()
    sweep = run_units(units, experiment, out, log=log, complete=True)
    points = summarise(config, sweep.metrics)
    results = {
        "experiment": experiment,
        "config": dataclasses.asdict(config),
        "environment": environment(),
        **(extra or {}),
        "units": {unit.name: {**unit_columns(unit), "metrics": sweep.metrics[unit.name]} for unit in units},
        "points": points,
        "num_units": len(sweep.metrics),
        "from_cache": sweep.from_cache,
        "diverged_units": sweep.diverged,
        "runtime_s": time.perf_counter() - started,
        "train_seconds": sum(train_seconds(m) for m in sweep.metrics.values()),
    }
    write_csv(out / f"{experiment}.csv", csv_rows(points))
    write_csv(
        out / f"{experiment}_runs.csv",
        [{"unit": unit.name, **unit_columns(unit), **run_columns(sweep.metrics[unit.name])} for unit in units],
    )
    atomic_write_json(out / "results.json", results)  # before the plots: a plotting problem never costs the results
    plot(json.loads(json.dumps(results)), out)
    return json.loads(json.dumps(results))


def sweep_main(
    args,
    presets: dict[str, TrainingSweep],
    run: Callable[[Any, str], dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
    written: str,
) -> int:
    """``probseq mqar`` / ``probseq recall``: the preset with ``--set`` overrides, run into ``--out``; print the
    table and what was ``written`` besides ``results.json``. The exit code: :func:`report_diverged`'s."""
    config = apply_overrides(presets[args.preset], args.overrides)
    results = run(config, args.out)
    print(format_table(results))
    print(
        f"wrote {args.out}/results.json, {written} in {results['runtime_s']:.0f} s; "
        f"{results['from_cache']} of {results['num_units']} units from the cache;\n"
        f"training took {results['train_seconds'] / 3600:.2f} h in all (the sum over units and sessions)"
    )
    return report_diverged(results["diverged_units"], results["num_units"])


__all__ = ["TrainingSweep", "run_sweep", "sweep_main"]
