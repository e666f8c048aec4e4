"""Sweeps: a list of :class:`~probseq.train.TrainConfig` run as resumable units, and their summaries
(docs/training.md).

Each unit (one training run, e.g. one ``(mixer, lr, seed)``) is identified by its name and the fingerprint
of its config. When it finishes, its metrics are written atomically to ``out/cache/<name>-<fp>.json``
(:class:`~probseq.train.result_cache.ResultCache`) and never recomputed; while it runs, its checkpoints live in
``runs_root()/<experiment>/<name>-<fp>/``
(``$XDG_CACHE_HOME/probseq/runs`` or ``~/.cache/probseq/runs``), so an interrupted sweep resumes the
unfinished unit from its last checkpoint, and ends with the metrics of an uninterrupted one. A changed
config changes the fingerprint, so stale results and checkpoints are never reused. A finished unit's checkpoints
are deleted; its final weights and metrics stay in ``<name>-<fp>/final/`` (:func:`probseq.train.trainer.save_final`),
so ``probseq mqar eval`` / ``probseq recall eval`` can score it at new test points (:mod:`probseq.train.saved`), and a
sweep into another ``out`` that holds the same unit takes its metrics from there instead of training it again.

Several workers may run one sweep at once (e.g. two single-threaded processes on a 2-core machine, which
train ~12 % more per hour than one process with two threads): a unit is trained by whichever worker first
takes its lock (``fcntl.flock`` on ``runs_root()/<experiment>/.locks/<key>.lock``, next to the checkpoints);
the others skip it, go on, and at the end wait for it and read its metrics from the cache (or train it
themselves if its worker died). Every worker ends with every unit's metrics.

A unit that diverges (:class:`~probseq.train.trainer.TrainingDiverged`: its gradient norm or loss stopped being
finite) is recorded as such — ``{"status": "diverged", "diverged": {"step", "learning_rate", …}, …}``, no
evaluation — cached like a finished unit (a rerun takes it from the cache: training is seeded, so it would diverge
again at the same step; a changed learning rate is another unit), and the sweep goes on.

A cache file is read strictly: one that is not JSON, or whose content is not a unit's record (``[]``, ``{}``,
``{"metrics": null}``, a missing or mistyped field, an accuracy outside [0, 1], a negative count, time or
loss, a NaN written before divergence was detected, another unit's record) is a ``ValueError`` naming the file and
what is wrong, never recomputed over silently: delete it to recompute.

Summaries: the best learning rate of a (model, point) is chosen by *validation* accuracy (the mean over
seeds on the validation segment of that point — data the test never sees), and the test accuracy at that
rate is reported as mean ± 95% confidence half-width over seeds (Student's t). A learning rate with a diverged
run is not a candidate; a point whose every learning rate diverged is ``"status": "diverged"`` (no accuracy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from probseq.files import NUMBER, ListOf, MapOf, json_problem, read_json
from probseq.stats import t_interval_95
from probseq.train.config import TrainConfig
from probseq.train.result_cache import ResultCache, read_result


class Unit(NamedTuple):
    """One training run of a sweep: a file-safe ``name`` and its ``config`` (``output_dir`` is set by
    :func:`run_units`)."""

    name: str
    config: TrainConfig


class SweepResult(NamedTuple):
    """Metrics of every unit by name (:func:`probseq.train.train`'s dict, or a diverged unit's record), and how
    many came from the cache."""

    metrics: dict[str, dict[str, Any]]
    from_cache: int

    @property
    def diverged(self) -> list[str]:
        """The units that diverged, in the sweep's order."""
        return [name for name, metrics in self.metrics.items() if is_diverged(metrics)]


# What a cached unit's file holds (checked on reading; a key ending in "?" may be absent: older caches lack some).
SPLIT_SPEC = {
    "accuracy": NUMBER,
    "example_accuracy?": (NUMBER, type(None)),
    "all_correct?": (NUMBER, type(None)),
    "loss?": (NUMBER, type(None)),
}
METRICS_SPEC = {
    "status?": str,
    "fingerprint?": str,
    "steps?": int,
    "resumed_from_step?": (int, type(None)),
    "train_loss?": (NUMBER, type(None)),
    "final_train_loss?": (NUMBER, type(None)),
    "seconds_per_step?": NUMBER,
    "train_seconds?": NUMBER,
    "num_parameters?": int,
    "state_size?": int,
    "state_bytes?": int,
    "retention_scale?": MapOf(ListOf(NUMBER)),
    "retention_trace?": ListOf(dict),
    "eval": MapOf(SPLIT_SPEC),
}
DIVERGED_SPEC = {
    "steps": int,
    "state_bytes": int,
    "train_seconds": NUMBER,
    "diverged": {"step": int, "message": str, "last_finite_loss": (NUMBER, type(None))},
}
RECORD_SPEC = {"unit?": str, "config?": dict, "metrics": METRICS_SPEC}
# Ranges the structure check cannot see: shares (accuracies) lie in [0, 1]; counts, times and losses are >= 0.
SHARES = ("accuracy", "example_accuracy", "all_correct")
NON_NEGATIVE = (
    "steps",
    "resumed_from_step",
    "num_parameters",
    "state_size",
    "state_bytes",
    "seconds_per_step",
    "train_seconds",
    "train_loss",
    "final_train_loss",
)
# What the experiments' tables read of a finished unit (``run_units(complete=True)``), besides every split.
TABLE_KEYS = ("steps", "seconds_per_step", "train_loss", "num_parameters", "state_bytes")


def is_diverged(metrics: dict[str, Any]) -> bool:
    """Whether a unit's metrics are a diverged run's record."""
    return metrics.get("status") == "diverged"


def split_accuracy(metrics: dict[str, Any], split: str) -> float | None:
    """A unit's accuracy on ``split`` (``valid_<point>`` / ``test_<point>``); ``None`` when it diverged or has no
    such evaluation."""
    if is_diverged(metrics):
        return None
    return (metrics.get("eval", {}).get(split) or {}).get("accuracy")


def sweep_units(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished unit of the sweep written to ``out`` (its ``results.json``: ``learning_rate``, ``seed``,
    ``metrics``, …); ``[]`` before the sweep has written it."""
    path = Path(out) / "results.json"
    return list(read_json(path)["units"].values()) if path.exists() else []


def unit_key(unit: Unit) -> str:
    """``<name>-<fingerprint>``: the unit's cache file name (``out/cache/<key>.json``) and checkpoint folder."""
    return f"{unit.name}-{unit.config.fingerprint()}"


def runs_root() -> Path:
    """Where unfinished runs keep their checkpoints: ``$XDG_CACHE_HOME/probseq/runs`` (``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "probseq" / "runs"


def run_units(
    units: list[Unit], experiment: str, out: str | os.PathLike, *, log=None, complete: bool = False
) -> SweepResult:
    """Run (or take from the cache) every unit; see the module docstring.

    Args:
        units: the sweep; names must be unique.
        experiment: folder name under :func:`runs_root` for the checkpoints.
        out: the experiment's output folder (``out/cache/`` holds the finished units).
        log: ``print``-like function for one line per unit (default: stderr).
        complete: also require of every cached finished unit what the experiments' tables read
            (:data:`TABLE_KEYS` and every evaluation split of the unit's config).

    Raises:
        ValueError: a cache file that is not JSON or not a record of its unit, naming the file.
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    names = [unit.name for unit in units]
    if len(set(names)) != len(names):
        raise ValueError(f"unit names must be unique, got {names}")
    cache = ResultCache(out)
    metrics, from_cache, deferred = {}, 0, []

    def cached(unit: Unit, key: str) -> bool:
        record = cache.get(key, RECORD_SPEC, lambda record: _record_problem(record, unit, complete))
        if record is None:
            return False
        metrics[unit.name] = record["metrics"]
        return True

    for index, unit in enumerate(units, 1):
        key = unit_key(unit)
        if cached(unit, key):
            from_cache += 1
            continue
        with _unit_lock(experiment, key, wait=False) as held:
            if not held:  # another worker trains it: come back at the end
                deferred.append((index, unit, key))
                continue
            if cached(unit, key):  # finished by another worker since the check above
                from_cache += 1
                continue
            metrics[unit.name] = _train_unit(unit, key, experiment, cache, f"[{index}/{len(units)}]", log)
    for index, unit, key in deferred:
        log(f"[{index}/{len(units)}] {unit.name}: another worker is training it; waiting")
        with _unit_lock(experiment, key, wait=True):
            if cached(unit, key):
                from_cache += 1
            else:  # its worker stopped without finishing: resume it here
                metrics[unit.name] = _train_unit(unit, key, experiment, cache, f"[{index}/{len(units)}]", log)
    metrics = {unit.name: metrics[unit.name] for unit in units}  # the sweep's order
    return SweepResult(metrics, from_cache)


def read_cached_unit(path: Path, unit: Unit, complete: bool = False) -> dict[str, Any]:
    """The metrics in the cache file ``path`` of ``unit``; a ``ValueError`` naming the file and what is wrong when
    it is not JSON or not a record of this unit (see :func:`run_units` for ``complete``)."""
    return read_result(path, unit.name, RECORD_SPEC, lambda record: _record_problem(record, unit, complete))["metrics"]


def _record_problem(record: dict[str, Any], unit: Unit, complete: bool) -> str | None:
    """What the structure check cannot see: the unit's name and fingerprint, the status, what a diverged record
    holds, and (``complete``) what the tables read."""
    metrics, fingerprint = record["metrics"], unit.config.fingerprint()
    if record.get("unit", unit.name) != unit.name:
        return f"unit is {record['unit']!r}"
    if metrics.get("fingerprint", fingerprint) != fingerprint:
        return f"metrics.fingerprint is {metrics['fingerprint']!r}, the unit's config has {fingerprint!r}"
    status = metrics.get("status", "ok")
    if status == "diverged":
        return json_problem(metrics, DIVERGED_SPEC, "metrics") or _range_problem(metrics)
    if status != "ok":
        return f'metrics.status must be "ok" or "diverged", got {status!r}'
    problem = _range_problem(metrics)
    if problem is not None:
        return problem
    if not complete:
        return None
    missing = [f"metrics.{key}" for key in TABLE_KEYS if key not in metrics]
    data = unit.config.data
    missing += [
        f"metrics.eval.{split}"
        for split in [f"valid_{s.name}" for s in data.valid] + [f"test_{s.name}" for s in data.test]
        if split not in metrics["eval"]
    ]
    return f"{', '.join(missing)} missing" if missing else None


def _range_problem(metrics: dict[str, Any]) -> str | None:
    """The first value of a (structurally valid) unit's metrics out of its range: a share (accuracy,
    example_accuracy, all_correct) outside [0, 1], a negative count, time or loss; ``None`` when all are in range."""
    values = [(f"metrics.{key}", metrics.get(key), 0.0, math.inf) for key in NON_NEGATIVE]
    values += [("metrics.diverged.step", (metrics.get("diverged") or {}).get("step"), 0.0, math.inf)]
    for split, evaluation in metrics.get("eval", {}).items():
        values += [(f"metrics.eval.{split}.{key}", evaluation.get(key), 0.0, 1.0) for key in SHARES]
        values += [(f"metrics.eval.{split}.loss", evaluation.get("loss"), 0.0, math.inf)]
    for where, value, low, high in values:
        if value is not None and not low <= value <= high:
            wanted = "lie in [0, 1]" if high == 1.0 else "be >= 0"
            return f"{where} must {wanted}, got {value!r}"
    return None


def _train_unit(unit: Unit, key: str, experiment: str, cache: ResultCache, tag: str, log) -> dict[str, Any]:
    """Train (or resume) one unit, write its metrics (or, when it diverged, its record) to the cache as ``key``,
    delete its checkpoints (a finished unit keeps its final weights, ``final/``; a diverged one keeps nothing)."""
    from probseq.train.trainer import TrainingDiverged, train  # transformers: imported when something is trained

    run_dir = runs_root() / experiment / key
    config = dataclasses.replace(unit.config, output_dir=str(run_dir))
    resuming = run_dir.exists() and any(run_dir.glob("checkpoint-*"))
    finished = None if resuming else _finished_run_metrics(unit, run_dir, log, tag)
    if finished is not None:  # trained to the end by another sweep (another --out): its record, not a rerun
        cache.put(key, {"unit": unit.name, "config": config.identity(), "metrics": finished})
        log(f"{tag} {unit.name}: finished earlier (another sweep); its metrics are taken from {run_dir}/final")
        return finished
    log(
        f"{tag} {unit.name}: {'resuming' if resuming else 'training'} ({config.max_steps} steps; checkpoints in "
        f"{run_dir})"
    )
    started = time.perf_counter()
    try:
        result = train(config)
    except TrainingDiverged as error:
        result = error.record
        log(f"{tag} {unit.name}: {error}. Recorded as diverged (a rerun takes this record from the cache)")
    cache.put(key, {"unit": unit.name, "config": config.identity(), "metrics": result})
    if is_diverged(result):  # no weights worth keeping
        shutil.rmtree(run_dir, ignore_errors=True)
        return result
    for checkpoint in run_dir.glob("checkpoint-*"):  # the final weights stay (run_dir/final/, probseq mqar eval)
        shutil.rmtree(checkpoint, ignore_errors=True)
    accuracy = ", ".join(
        f"{name.removeprefix('test_')} {m['accuracy']:.3f}"
        for name, m in result["eval"].items()
        if name.startswith("test_")
    )
    log(
        f"{tag} {unit.name}: done in {time.perf_counter() - started:.0f} s (trained {result['train_seconds']:.0f} s "
        f"in all, {result['seconds_per_step'] * 1000:.0f} ms/step); test accuracy {accuracy}"
    )
    return result


def _finished_run_metrics(unit: Unit, run_dir: Path, log, tag: str) -> dict[str, Any] | None:
    """The metrics a finished run of ``unit`` kept in ``run_dir/final/`` (written when the run ended, whichever sweep
    ran it), or ``None`` when there are none or they are not a complete record of this unit (then it is trained
    again, which rewrites ``final/``)."""
    from probseq.train.trainer import FINAL_DIR, FINAL_METRICS  # noqa: PLC0415 (transformers: imported late)

    path = run_dir / FINAL_DIR / FINAL_METRICS
    if not path.exists():
        return None
    try:
        record = {"unit": unit.name, "metrics": read_json(path, "")}
    except ValueError as error:
        log(f"{tag} {unit.name}: {path} cannot be read ({error}); training it again")
        return None
    problem = json_problem(record, RECORD_SPEC) or _record_problem(record, unit, complete=True)
    if problem is None and "fingerprint" not in record["metrics"]:
        problem = "metrics.fingerprint missing"
    if problem is not None:
        log(f"{tag} {unit.name}: {path} is not a finished record of this unit ({problem}); training it again")
        return None
    return record["metrics"]


@contextlib.contextmanager
def _unit_lock(experiment: str, key: str, wait: bool) -> Iterator[bool]:
    """Hold the unit's lock for the block (``True``), or ``False`` at once when another worker holds it
    and ``wait`` is false. The lock is released when the holder exits, however it exits."""
    # next to the checkpoints it guards, which every sweep of the same run shares whatever its ``out``
    path = runs_root() / experiment / ".locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_seconds(metrics: dict[str, Any]) -> float:
    """A unit's training time over all its resumes; for units cached before ``train_seconds`` was recorded,
    the estimate ``seconds_per_step × steps`` (the rate of its last stretch of training)."""
    if "train_seconds" in metrics:
        return float(metrics["train_seconds"])
    return float(metrics["seconds_per_step"]) * int(metrics["steps"])


def mean_retention_scale(metrics: dict[str, Any]) -> float | None:
    """The mean trained ``ρ`` over a run's learned-retention Bayesian layers and heads (``None`` without)."""
    scales = [rho for heads in metrics.get("retention_scale", {}).values() for rho in heads]
    return sum(scales) / len(scales) if scales else None


def run_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's CSV columns (after the experiment's own: unit, mixer, lr, seed …): status (``ok`` / ``diverged``),
    steps, time, losses, the step it diverged at and its last finite loss (empty for a finished run), the
    learned retention's mean ρ, size, and the accuracy of every evaluation split (none for a diverged run)."""
    diverged = metrics.get("diverged") or {}
    return {
        "status": metrics.get("status", "ok"),
        "steps": metrics["steps"],
        "seconds_per_step": metrics["seconds_per_step"],
        "train_seconds": train_seconds(metrics),
        "train_loss": metrics["train_loss"],
        "final_train_loss": metrics.get("final_train_loss"),
        "diverged_step": diverged.get("step"),
        "last_finite_loss": diverged.get("last_finite_loss"),
        "retention_scale_mean": mean_retention_scale(metrics),
        "num_parameters": metrics["num_parameters"],
        "state_bytes": metrics["state_bytes"],
        **{f"{name}_accuracy": e["accuracy"] for name, e in metrics["eval"].items()},
    }


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width (Student's t, :func:`probseq.stats.t_975`; 0 for one value)."""
    return t_interval_95(values)


def best_by_validation(runs: list[dict[str, Any]], point: str) -> dict[str, Any]:
    """Pick the learning rate of one (model, point) by validation and report its test accuracy.

    A learning rate with a diverged run (any seed) is not a candidate: its mean over seeds does not exist.

    Args:
        runs: ``{"learning_rate", "seed", "metrics"}`` for every (lr, seed) of one model.
        point: the segment name; ``metrics["eval"]`` must hold ``valid_<point>`` and ``test_<point>`` (but for
            a diverged run).

    Returns:
        ``{"status": "ok", "best_lr", "valid_accuracy" (mean over seeds at the best lr), "accuracy" (test mean),
        "ci95", "accuracies" (test, per seed), "valid_by_lr" ({lr: mean valid accuracy}), "diverged_lrs"}``;
        when every learning rate diverged, ``"status": "diverged"`` with ``None`` for the lr and the accuracies.
    """
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        by_lr.setdefault(run["learning_rate"], []).append(run)
    diverged = sorted(lr for lr, group in by_lr.items() if any(is_diverged(r["metrics"]) for r in group))
    valid = {
        lr: sum(r["metrics"]["eval"][f"valid_{point}"]["accuracy"] for r in group) / len(group)
        for lr, group in by_lr.items()
        if lr not in diverged
    }
    if not valid:
        return {
            "status": "diverged",
            "best_lr": None,
            "valid_accuracy": None,
            "accuracy": None,
            "ci95": None,
            "accuracies": [],
            "valid_by_lr": {},
            "diverged_lrs": diverged,
        }
    best = max(sorted(valid), key=lambda lr: valid[lr])  # ties: the smallest rate
    accuracies = [
        r["metrics"]["eval"][f"test_{point}"]["accuracy"] for r in sorted(by_lr[best], key=lambda r: r["seed"])
    ]
    mean, ci = mean_ci95(accuracies)
    return {
        "status": "ok",
        "best_lr": best,
        "valid_accuracy": valid[best],
        "accuracy": mean,
        "ci95": ci,
        "accuracies": accuracies,
        "valid_by_lr": {str(lr): v for lr, v in sorted(valid.items())},
        "diverged_lrs": diverged,
    }


__all__ = [
    "SweepResult",
    "Unit",
    "best_by_validation",
    "is_diverged",
    "mean_ci95",
    "read_cached_unit",
    "run_units",
    "runs_root",
    "split_accuracy",
    "sweep_units",
    "unit_key",
]
