"""Trained runs kept for reuse: find them, load their final weights, score them at new test points.

Every run trained with an ``output_dir`` keeps its final weights in ``output_dir/final/``
(:func:`probseq.train.trainer.save_final`: ``model.safetensors``, ``config.json``, the whole ``TrainConfig`` as
``train_config.json`` and the run's metrics as ``metrics.json``); a sweep's finished units keep theirs in
``runs_root()/<experiment>/<unit>-<fingerprint>/final/`` after their checkpoints are deleted. This module finds
such runs (:func:`find_runs`: one run folder, or every run under a folder) and evaluates one on test segments
(:func:`evaluate_run`) exactly as :func:`probseq.train.train` evaluates its own: the same model class, the run's
evaluation batch and precision, the Trainer's evaluation loop and metrics. A segment the run was tested at,
generated from its own seed (:func:`probseq.train.data.point_seed`), therefore gives the recorded accuracy again.
``probseq mqar eval`` and ``probseq recall eval`` (docs/training.md, "Reusing trained runs") are built on it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

from probseq.files import read_json
from probseq.tasks import TaskData
from probseq.train.config import TrainConfig, from_dict
from probseq.train.trainer import CONFIG_FILE, FINAL_CONFIG, FINAL_DIR, FINAL_METRICS

WEIGHTS = "model.safetensors"


class SavedRun(NamedTuple):
    """A finished run: its folder, its whole config and its recorded metrics (``None`` when not kept)."""

    folder: Path
    config: TrainConfig
    metrics: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.folder.name


def is_run(folder: Path) -> bool:
    """A training run's folder: it holds the config :func:`train` records (``probseq_train_config.json``) or a
    ``final/`` folder."""
    return (folder / CONFIG_FILE).is_file() or (folder / FINAL_DIR).is_dir()


def load_run(folder: str | Path) -> SavedRun:
    """The run in ``folder`` with its final weights; a ``ValueError`` naming the folder when it has none (an
    unfinished run, a diverged one, or one that finished before runs kept their weights) or when
    ``final/train_config.json`` is not a config."""
    folder = Path(folder)
    final = folder / FINAL_DIR
    if not (final / WEIGHTS).is_file():
        raise ValueError(
            f"run {folder} has no final weights ({final / WEIGHTS}): it has not finished, it diverged, "
            "or it finished before runs kept their weights; train it again to evaluate it"
        )
    path = final / FINAL_CONFIG
    if not path.is_file():
        raise ValueError(f"run {folder} has final weights but no {path}; it was not saved by probseq.train")
    try:
        config = from_dict(TrainConfig, read_json(path))
    except ValueError as error:
        raise ValueError(f"{path} is not a training config: {error}") from None
    metrics_path = final / FINAL_METRICS
    metrics = read_json(metrics_path) if metrics_path.is_file() else None
    return SavedRun(folder, config, metrics if isinstance(metrics, dict) else None)


def find_runs(path: str | Path, kind: str, log: Callable[[str], None] = print) -> list[SavedRun]:
    """The runs of task ``kind`` (``"mqar"`` / ``"recall"``) at ``path``: the run itself when ``path`` is a run's
    folder, else every run under it (sorted by folder). Under a folder, runs without final weights and runs of
    another task are skipped, each with a line to ``log``.

    Raises:
        ValueError: ``path`` is not a folder or holds no run; a single run without final weights or of another
            task; a folder none of whose runs can be evaluated.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"--run {path} is not a folder" if path.exists() else f"--run {path} does not exist")
    if is_run(path):
        run = load_run(path)
        if run.config.data.kind != kind:
            raise ValueError(
                f"run {path} is a {run.config.data.kind} run, not a {kind} run; use probseq {run.config.data.kind} eval"
            )
        return [run]
    folders = sorted(
        {p.parent for p in path.rglob(CONFIG_FILE)} | {p.parent for p in path.rglob(FINAL_DIR) if p.is_dir()}
    )
    if not folders:
        raise ValueError(
            f"--run {path} holds no training run (a run folder holds {CONFIG_FILE} or {FINAL_DIR}/; "
            "a sweep's runs are in ~/.cache/probseq/runs/<experiment>/)"
        )
    runs, skipped = [], []
    for folder in folders:
        try:
            run = load_run(folder)
        except ValueError as error:
            skipped.append(str(error))
            continue
        if run.config.data.kind != kind:
            skipped.append(f"run {folder} is a {run.config.data.kind} run")
            continue
        runs.append(run)
    for reason in skipped:
        log(f"skipped: {reason}")
    if not runs:
        raise ValueError(
            f"--run {path}: none of its {len(folders)} runs is a finished {kind} run with final weights "
            f"({'; '.join(skipped[:3])}{' …' if len(skipped) > 3 else ''})"
        )
    return runs


def evaluate_run(
    run: SavedRun, segments: dict[str, TaskData], batch_size: int | None = None
) -> tuple[dict[str, dict[str, float | None]], int]:
    """Score ``run``'s final weights on ``segments`` (name → data) as :func:`probseq.train.train` scores its own
    test splits: :class:`~probseq.train.trainer.PreShiftedTrainer`'s evaluation with the run's arguments (its
    ``eval_batch_size`` unless ``batch_size`` is given, its precision and loss weighting).

    Returns:
        ``({name: {"accuracy", "example_accuracy", "all_correct", "loss"}}, state_bytes)`` — ``None`` for a share
        that does not exist; ``state_bytes`` as :func:`train` records it (float32 state at the longest train
        sequence).
    """
    from transformers import PrinterCallback

    from probseq.files import finite_or_none
    from probseq.models.mqar_model import ZoologyModel
    from probseq.train.data import TokenDataset, pad_collate
    from probseq.train.metrics import recall_metrics
    from probseq.train.trainer import PreShiftedTrainer, _split_metrics, progress_bars, training_arguments

    config = run.config if batch_size is None else dataclasses.replace(run.config, eval_batch_size=batch_size)
    with progress_bars(False), tempfile.TemporaryDirectory(prefix="probseq-eval-") as scratch:
        model = ZoologyModel.from_pretrained(run.folder / FINAL_DIR)
        args = training_arguments(dataclasses.replace(config, progress=False), scratch)
        trainer = PreShiftedTrainer(
            model=model,
            args=args,
            eval_dataset={name: TokenDataset([data]) for name, data in segments.items()},
            data_collator=pad_collate,
            compute_metrics=recall_metrics,
            loss_weighting=config.loss_weighting,
        )
        trainer.remove_callback(PrinterCallback)
        metrics = trainer.evaluate()
    evaluation = {
        name: {key: finite_or_none(value) for key, value in _split_metrics(name, metrics).items()} for name in segments
    }
    data = run.config.data
    longest = max(s.task.seq_len if hasattr(s, "task") else s.seq_len for s in data.train)
    return evaluation, 4 * model.state_size(longest)


def identity_columns(run: SavedRun) -> dict[str, Any]:
    """A run's identity in an evaluation CSV: its folder, mixer, width, learning rate, seed, and (Bayesian Layer
    only) retention and its start, then the initialisation, the block layout, the loss weighting and the
    batching."""
    config, model = run.config, run.config.model
    bayesian = model.mixer == "bayesian"
    return {
        "run": run.name,
        "mixer": model.mixer,
        "d_model": model.d_model,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "retention": model.retention if bayesian else None,
        "retention_init": model.retention_init if bayesian and model.retention == "learned" else None,
        "init": model.init,
        "layout": model.layout,
        "loss_weighting": config.loss_weighting,
        "batching": config.batching,
    }


def recorded_accuracy(run: SavedRun, split: str) -> float | None:
    """The accuracy the run recorded on ``split`` (``test_<point>``), or ``None``."""
    evaluation = (run.metrics or {}).get("eval") or {}
    return (evaluation.get(split) or {}).get("accuracy")


__all__ = ["SavedRun", "evaluate_run", "find_runs", "identity_columns", "is_run", "load_run", "recorded_accuracy"]
