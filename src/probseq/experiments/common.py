"""What every experiment shares: typed configs with checked overrides, atomic writes, the
environment record, CSV tables and resumable per-unit results."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
import typing
from pathlib import Path
from typing import Any

import torch

from probseq.files import atomic_write_json, atomic_write_text, json_default


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV, atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


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
    checked against the field's type: an unknown key or a wrong type is a ``ValueError``.
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
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ValueError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


class ResultCache:
    """Resumable results: one JSON file per finished unit of work under ``out/cache/``.

    A unit is identified by a name and the hash of the config it ran under, so a changed config
    never reuses stale results. Files are written atomically: an interrupted run resumes from the
    last finished unit and ends with the same numbers as an uninterrupted one.
    """

    def __init__(self, out: str | os.PathLike, config: Any):
        self.folder = Path(out) / "cache" / config_hash(config)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> Any | None:
        path = self._path(name)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"corrupt cached result {path}: {error}; delete it to recompute") from error

    def put(self, name: str, value: Any) -> None:
        atomic_write_json(self._path(name), value)
