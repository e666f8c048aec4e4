"""What every experiment shares: typed configs with checked overrides, atomic writes, the
environment record, CSV tables and resumable per-unit results.

A cached result is read strictly (:meth:`ResultCache.get`): a file that is not JSON, or whose content does not
match the spec its experiment gives, is a ``ValueError`` naming the file and what is wrong — never recomputed
over silently (delete the file to recompute it)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

import torch

from probseq.files import atomic_write_json, atomic_write_text, json_default, json_problem, read_json


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

        lines.append(f"| {name} | {first['mixer']} | {first['learning_rate']:g} | {first['seed']} | "
                     + " | ".join(cell(cells.get(p)) for p in points) + " |")
    return "\n".join(lines + ["", "Test accuracy of each run's final weights; [recorded]: the accuracy the run "
                                   "recorded at that point (same data)."]) + "\n"


def run_eval_command(args, evaluate_saved: Callable[..., list[dict[str, Any]]],
                     point: Callable[[dict[str, Any]], str]) -> int:
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
        print(f"every unit diverged ({', '.join(diverged)}): the tables hold no result; lower the learning rates",
              file=sys.stderr)
        return 1
    print(f"{len(diverged)} of {total} units diverged ({', '.join(diverged)}): recorded as diverged, their "
          "learning rates not chosen", file=sys.stderr)
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


def config_hash(config: Any) -> str:
    """A short stable hash of a dataclass config (for resumable caches)."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return ``config`` with ``key=value`` overrides applied.

    Values are parsed as JSON (``n=3``, ``rhos=[0.1,0.5]``, ``name="x"``; a bare word is a string) and
    checked against the field's type: an unknown key, a wrong type or a number that is not finite (JSON's
    ``NaN``, ``Infinity``) is a ``ValueError``.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        changes[key] = _check_type(key, value, hints[key])
    return dataclasses.replace(config, **changes)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"unsupported annotation {hint} for {key}")
        return _check_type(key, value, options[0])
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{key} must be one of {args}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return (tuple if origin is tuple else list)(_check_type(key, v, inner) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ValueError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


class ResultCache:
    """Resumable results: one JSON file per finished unit of work under ``out/cache/``.

    A unit is identified by a name and the hash of the config it ran under, so a changed config
    never reuses stale results. Files are written atomically (strict JSON): an interrupted run resumes from
    the last finished unit and ends with the same numbers as an uninterrupted one.
    """

    def __init__(self, out: str | os.PathLike, config: Any):
        self.folder = Path(out) / "cache" / config_hash(config)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str, spec: Any = Any, check: Callable[[Any], str | None] | None = None) -> Any | None:
        """The cached result of unit ``name``, or ``None`` when there is none.

        Args:
            spec: what the file must hold (:func:`probseq.files.json_problem`; default: any JSON).
            check: further checks of a value that matches ``spec``: what is wrong, or ``None``.

        Raises:
            ValueError: the file is not strict JSON, or its content fails ``spec`` or ``check``; the message
                names the file and what is wrong ("delete it to recompute").
        """
        path = self._path(name)
        if not path.exists():
            return None
        advice = "delete it to recompute"
        value = read_json(path, advice)
        problem = json_problem(value, spec)
        if problem is None and check is not None:
            problem = check(value)
        if problem is not None:
            raise ValueError(f"cached result {path} does not hold a result of {name}: {problem}; {advice}")
        return value

    def put(self, name: str, value: Any) -> None:
        atomic_write_json(self._path(name), value)
