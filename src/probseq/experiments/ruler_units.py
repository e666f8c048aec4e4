"""The per-sample cache of ``probseq ruler``'s units (:mod:`probseq.experiments.ruler_eval`): one file per
(task, length) holding every sample scored so far, so that a larger ``--samples`` scores only the new samples.

RULER's generators are prefix-stable: :func:`probseq.ruler.generate` with ``n`` samples returns the first ``n``
samples of any larger set (``tests/ruler/test_generate_and_score.py`` checks it for every task). So a unit's
samples do not depend on how many are asked, and the cache key (:class:`UnitKey`: the model's weights, seed,
new tokens and dtype) leaves the count out. A unit file, ``OUT/cache/<config_hash(UnitKey)>/<task>-<length>.json``::

    {"task", "length", "seconds", "predictions": [{"task", "length", "index", "prompt_tokens", "references",
     "prediction", "score"}, ...], "skipped": null or {"samples", "reason"}}

``predictions`` are samples ``0 … m − 1`` in order; a run asking ``n ≤ m`` samples uses the first ``n``, one asking
more generates ``n`` prompts, checks that the first ``m`` are the cached ones (their references) and completes only
the others. ``skipped``: the generator could not fill the length when ``samples`` prompts were asked (``reason``:
its error). A prompt that cannot be drawn for sample ``k`` cannot be for any larger count, so a skip holds for
every count ≥ ``samples``; a smaller count is tried again. ``seconds``: the time spent on the file's samples, over
all top-ups.

**Folders written before per-sample caching** (``OUT/cache/<config_hash(LegacyUnitKey)>/``: the sample count in
the key, one file per unit with its summary and predictions) are read: :func:`legacy_units` finds that folder (its
count comes from ``OUT/results.json`` or from the files' own ``samples``) and :func:`from_legacy` turns each of
its units into a unit file of the layout above, which the run then writes; the old files are left as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probseq.files import NUMBER, ListOf, read_json
from probseq.train.result_cache import config_hash


@dataclass(frozen=True)
class UnitKey:
    """What a unit's per-sample results depend on (besides its task and length): not the sample count."""

    weights: str
    seed: int
    max_new_tokens: int | None
    dtype: str


@dataclass(frozen=True)
class LegacyUnitKey:
    """The key of a unit before per-sample caching: with the sample count (the fields and their order as then)."""

    weights: str
    samples: int
    seed: int
    max_new_tokens: int | None
    dtype: str


PREDICTION_SPEC = {
    "task": str,
    "length": int,
    "index": int,
    "prompt_tokens": NUMBER,
    "references": ListOf(str),
    "prediction": str,
    "score": NUMBER,
    "prompt_sha?": str,  # since 2026-12-03: references alone do not tell two tokenizers' prompts apart
}
#: A unit file of the per-sample layout.
UNIT_SPEC = {
    "task": str,
    "length": int,
    "seconds": NUMBER,
    "predictions": ListOf(PREDICTION_SPEC),
    "skipped": (type(None), {"samples": int, "reason": str}),
}
#: A unit file written before per-sample caching.
LEGACY_UNIT_SPEC = {
    "task": str,
    "length": int,
    "status": str,
    "score": (NUMBER, type(None)),
    "ci_low": (NUMBER, type(None)),
    "ci_high": (NUMBER, type(None)),
    "samples": int,
    "prompt_tokens": (NUMBER, type(None)),
    "seconds": NUMBER,
    "predictions": ListOf({"score": NUMBER, "prediction": str}),
}


def unit_name(task: str, length: int) -> str:
    return f"{task}-{length}"


def unit_problem(unit: dict, task: str, length: int) -> str | None:
    """What is wrong with a unit file (one that matches :data:`UNIT_SPEC`) read for ``task`` at ``length``."""
    if (unit["task"], unit["length"]) != (task, length):
        return f"it is the unit of {unit['task']} at {unit['length']} tokens"
    indices = [p["index"] for p in unit["predictions"]]
    if indices != list(range(len(indices))):
        return f"its predictions are not samples 0 … {len(indices) - 1} in order"
    if any((p["task"], p["length"]) != (task, length) for p in unit["predictions"]):
        return "a prediction belongs to another task or length"
    return None


def legacy_unit_problem(unit: dict, task: str, length: int, samples: int) -> str | None:
    """What is wrong with a unit file of the old layout (one that matches :data:`LEGACY_UNIT_SPEC`)."""
    if (unit["task"], unit["length"]) != (task, length):
        return f"it is the unit of {unit['task']} at {unit['length']} tokens"
    if unit["status"] == "ok" and unit["score"] is None:
        return "status is ok but score is null"
    if unit["status"] == "ok" and len(unit["predictions"]) != samples:
        return f"it holds {len(unit['predictions'])} predictions, not the {samples} samples of its folder"
    return None


def from_legacy(unit: dict, samples: int) -> dict:
    """A unit of the old layout (its folder's key had ``samples``) as a unit file of the per-sample layout."""
    skipped = None
    if unit["status"] != "ok":
        skipped = {"samples": samples, "reason": unit["status"].removeprefix("skipped: ")}
    predictions = [
        {k: p[k] for k in (key.removesuffix("?") for key in PREDICTION_SPEC) if k in p}
        | {"task": unit["task"], "length": unit["length"]}
        for p in unit["predictions"]
    ]
    return {
        "task": unit["task"],
        "length": unit["length"],
        "seconds": unit["seconds"],
        "predictions": predictions,
        "skipped": skipped,
    }


def legacy_units(out: str | Path, key: UnitKey) -> dict[str, tuple[Path, int]]:
    """``unit name → (file, sample count)`` of the units an older ``probseq ruler`` cached in ``out`` for ``key``
    (the folder named by :class:`LegacyUnitKey`'s hash with some count); empty when there is none.

    The count is ``out/results.json``'s ``config.samples`` (a finished run) or a unit file's own ``samples`` (an
    interrupted one, whose ``results.json`` was not written yet); a folder of another key is ignored."""
    cache = Path(out) / "cache"
    if not cache.is_dir():
        return {}
    counts: set[int] = set()
    results = Path(out) / "results.json"
    if results.is_file():
        saved = read_json(results)
        samples = saved.get("config", {}).get("samples") if isinstance(saved, dict) else None
        if isinstance(samples, int) and not isinstance(samples, bool):
            counts.add(samples)
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.json"))
        candidates = counts | {n for n in map(_samples_of, files) if n is not None}
        for samples in sorted(candidates):
            legacy = LegacyUnitKey(key.weights, samples, key.seed, key.max_new_tokens, key.dtype)
            if config_hash(legacy) == folder.name:
                return {file.stem: (file, samples) for file in files}
    return {}


def _samples_of(file: Path) -> int | None:
    """The ``samples`` of a unit file, or None (another layout, or not readable: read strictly when it is used)."""
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    samples = value.get("samples") if isinstance(value, dict) else None
    return samples if isinstance(samples, int) and not isinstance(samples, bool) and samples > 0 else None


def prompt_sha(record: dict) -> str:
    """A short hash of a RULER sample's full prompt (``input + answer_prefix``): RULER's generators reuse one random
    stream, so two tokenizers' prompts (other haystacks) often have the same references — the hash tells them apart."""
    return hashlib.sha256((record["input"] + record["answer_prefix"]).encode()).hexdigest()[:16]


def check_same_samples(cached: list[dict], records: list[dict], references: Callable[[dict], Any], where: str) -> None:
    """The first ``len(cached)`` of freshly generated ``records`` must be the cached samples: the same references
    (``references(row)`` of a cached row against the record's ``outputs``) and, where the row has one, the same
    prompt hash (:func:`prompt_sha`), else a ``ValueError`` — the generator or the tokenizer changed since the file
    was written (``where`` names it; delete it to recompute)."""
    for row, record in zip(cached, records):
        if references(row) != record["outputs"]:
            raise ValueError(
                f"{where}: cached sample {record['index']} has references {references(row)}, the generator now "
                f"gives {record['outputs']} (the prompts changed since it was written); delete it to recompute"
            )
        if "prompt_sha" in row and "input" in record and row["prompt_sha"] != prompt_sha(record):
            raise ValueError(
                f"{where}: cached sample {record['index']} was another prompt (same references, other text: "
                "another tokenizer's haystack, or a changed generator); delete it to recompute"
            )


__all__ = [
    "prompt_sha",
    "LEGACY_UNIT_SPEC",
    "LegacyUnitKey",
    "UNIT_SPEC",
    "UnitKey",
    "check_same_samples",
    "from_legacy",
    "legacy_unit_problem",
    "legacy_units",
    "unit_name",
    "unit_problem",
]
