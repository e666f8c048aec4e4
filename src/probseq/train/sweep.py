"""Sweeps: a list of :class:`~probseq.train.TrainConfig` run as resumable units, and their summaries.

Each unit (one training run, e.g. one ``(mixer, lr, seed)``) is identified by its name and the fingerprint
of its config. When it finishes, its metrics are written atomically to ``out/cache/<name>-<fp>.json``
and never recomputed; while it runs, its checkpoints live in ``runs_root()/<experiment>/<name>-<fp>/``
(``$XDG_CACHE_HOME/probseq/runs`` or ``~/.cache/probseq/runs``), so an interrupted sweep resumes the
unfinished unit from its last checkpoint, and ends with the metrics of an uninterrupted one. A changed
config changes the fingerprint, so stale results and checkpoints are never reused.

Summaries: the best learning rate of a (model, point) is chosen by *validation* accuracy (the mean over
seeds on the validation segment of that point — data the test never sees), and the test accuracy at that
rate is reported as mean ± 95% confidence half-width over seeds (Student's t).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from probseq.train.config import TrainConfig

# Two-sided 95% Student-t quantiles by degrees of freedom (df > 30: the normal 1.96).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


class Unit(NamedTuple):
    """One training run of a sweep: a file-safe ``name`` and its ``config`` (``output_dir`` is set by
    :func:`run_units`)."""

    name: str
    config: TrainConfig


class SweepResult(NamedTuple):
    """Metrics of every unit by name (:func:`probseq.train.train`'s dict), and how many came from the cache."""

    metrics: dict[str, dict[str, Any]]
    from_cache: int


def runs_root() -> Path:
    """Where unfinished runs keep their checkpoints: ``$XDG_CACHE_HOME/probseq/runs`` (``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "probseq" / "runs"


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` and write a probe file into it; a ``ValueError`` if that fails (before any work)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as error:
        raise ValueError(f"--out {out} is not a writable folder: {error.strerror or error}") from None
    return out


def run_units(units: list[Unit], experiment: str, out: str | os.PathLike, *, log=None) -> SweepResult:
    """Run (or take from the cache) every unit; see the module docstring.

    Args:
        units: the sweep; names must be unique.
        experiment: folder name under :func:`runs_root` for the checkpoints.
        out: the experiment's output folder (``out/cache/`` holds the finished units).
        log: ``print``-like function for one line per unit (default: stderr).
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    names = [unit.name for unit in units]
    if len(set(names)) != len(names):
        raise ValueError(f"unit names must be unique, got {names}")
    cache = Path(out) / "cache"
    metrics, from_cache = {}, 0
    for index, unit in enumerate(units, 1):
        key = f"{unit.name}-{unit.config.fingerprint()}"
        path = cache / f"{key}.json"
        if path.exists():
            try:
                metrics[unit.name] = json.loads(path.read_text())["metrics"]
            except (json.JSONDecodeError, KeyError) as error:
                raise ValueError(f"corrupt cached result {path}: {error}; delete it to recompute") from error
            from_cache += 1
            continue
        from probseq.train.trainer import train  # transformers: imported only when something is trained

        run_dir = runs_root() / experiment / key
        config = dataclasses.replace(unit.config, output_dir=str(run_dir))
        resuming = run_dir.exists() and any(run_dir.glob("checkpoint-*"))
        log(f"[{index}/{len(units)}] {unit.name}: {'resuming' if resuming else 'training'} "
            f"({config.max_steps} steps; checkpoints in {run_dir})")
        started = time.perf_counter()
        result = train(config)
        _atomic_json(path, {"unit": unit.name, "config": config.identity(), "metrics": result})
        shutil.rmtree(run_dir, ignore_errors=True)
        metrics[unit.name] = result
        accuracy = ", ".join(f"{name.removeprefix('test_')} {m['accuracy']:.3f}" for name, m in result["eval"].items()
                             if name.startswith("test_"))
        log(f"[{index}/{len(units)}] {unit.name}: done in {time.perf_counter() - started:.0f} s "
            f"({result['seconds_per_step'] * 1000:.0f} ms/step); test accuracy {accuracy}")
    return SweepResult(metrics, from_cache)


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width (Student's t; 0 for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    df = n - 1
    quantile = 1.96 if df > 30 else T95[max(d for d in T95 if d <= df)]  # next lower df: conservative
    return mean, quantile * std / math.sqrt(n)


def best_by_validation(runs: list[dict[str, Any]], point: str) -> dict[str, Any]:
    """Pick the learning rate of one (model, point) by validation and report its test accuracy.

    Args:
        runs: ``{"learning_rate", "seed", "metrics"}`` for every (lr, seed) of one model.
        point: the segment name; ``metrics["eval"]`` must hold ``valid_<point>`` and ``test_<point>``.

    Returns:
        ``{"best_lr", "valid_accuracy" (mean over seeds at the best lr), "accuracy" (test mean),
        "ci95", "accuracies" (test, per seed), "valid_by_lr" ({lr: mean valid accuracy})}``.
    """
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        by_lr.setdefault(run["learning_rate"], []).append(run)
    valid = {lr: sum(r["metrics"]["eval"][f"valid_{point}"]["accuracy"] for r in group) / len(group)
             for lr, group in by_lr.items()}
    best = max(sorted(valid), key=lambda lr: valid[lr])  # ties: the smallest rate
    accuracies = [r["metrics"]["eval"][f"test_{point}"]["accuracy"]
                  for r in sorted(by_lr[best], key=lambda r: r["seed"])]
    mean, ci = mean_ci95(accuracies)
    return {"best_lr": best, "valid_accuracy": valid[best], "accuracy": mean, "ci95": ci, "accuracies": accuracies,
            "valid_by_lr": {str(lr): v for lr, v in sorted(valid.items())}}


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["SweepResult", "Unit", "best_by_validation", "check_writable", "mean_ci95", "run_units", "runs_root"]
