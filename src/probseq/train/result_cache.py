"""Resumable results: one strict JSON file per finished unit of work, the project's one result cache.

Every experiment keeps its finished units here: the training sweeps (:func:`probseq.train.sweep.run_units`,
``out/cache/<name>-<fingerprint>.json``: the key already names the run's config) and the other experiments
(collision, reproduce, RULER: ``out/cache/<config_hash>/<name>.json``, the folder named by the hash of the config
the units ran under). Either way a changed config never reuses stale results. Files are written atomically
(strict JSON), so an interrupted run resumes from the last finished unit and ends with the numbers of an
uninterrupted one.

A cached result is read strictly (:func:`read_result`): a file that is not JSON, or whose content does not match
the spec its experiment gives, is a ``ValueError`` naming the file and what is wrong — never recomputed over
silently (delete the file to recompute it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from probseq.files import atomic_write_json, json_default, json_problem, read_json

ADVICE = "delete it to recompute"


def config_hash(config: Any) -> str:
    """A short stable hash of a dataclass config (the folder of its units' results)."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_result(path: Path, name: str, spec: Any = Any, check: Callable[[Any], str | None] | None = None) -> Any:
    """The result of unit ``name`` in the cache file ``path``.

    Args:
        spec: what the file must hold (:func:`probseq.files.json_problem`; default: any JSON).
        check: further checks of a value that matches ``spec``: what is wrong, or ``None``.

    Raises:
        ValueError: the file is not strict JSON, or its content fails ``spec`` or ``check``; the message names
            the file and what is wrong ("delete it to recompute").
    """
    value = read_json(path, ADVICE)
    problem = json_problem(value, spec)
    if problem is None and check is not None:
        problem = check(value)
    if problem is not None:
        raise ValueError(f"cached result {path} does not hold a result of {name}: {problem}; {ADVICE}")
    return value


class ResultCache:
    """Finished units as ``<folder>/<name>.json``: ``out/cache/`` itself without a ``config`` (the names carry the
    config's fingerprint), ``out/cache/<config_hash(config)>/`` with one."""

    def __init__(self, out: str | os.PathLike, config: Any = None):
        folder = Path(out) / "cache"
        self.folder = folder if config is None else folder / config_hash(config)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str, spec: Any = Any, check: Callable[[Any], str | None] | None = None) -> Any | None:
        """The cached result of unit ``name`` (checked as :func:`read_result` checks it), or ``None`` when there
        is none."""
        path = self.path(name)
        return read_result(path, name, spec, check) if path.exists() else None

    def put(self, name: str, value: Any) -> None:
        atomic_write_json(self.path(name), value)


__all__ = ["ResultCache", "config_hash", "read_result"]
