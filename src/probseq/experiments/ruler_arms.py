"""The arms of the distillation study's RULER comparison: their names, which pairs are compared, and their files.

**Naming.** An arm is a folder ``RESULTS/ruler/<arm>/`` holding ``probseq ruler``'s ``summary.csv``, named

- ``teacher`` — the GDN teacher as pretrained;
- ``gdn`` — the teacher fine-tuned at matched compute (``probseq distill --baseline``), the baseline;
- ``bayes`` or ``bayes_<variant>`` (``bayes-<variant>`` too) — a distillation into Bayesian Layers, e.g.
  ``bayes`` (learned retention) and ``bayes_stationary`` (stationary retention).

Any number of Bayesian arms may be present; other folders (``teacher_pilots``) are not arms. **Pairs**
(:func:`arm_pairs`): every Bayesian arm against ``gdn`` (the study's question), then every arm but the teacher
against ``teacher`` (what distillation or fine-tuning changed), when both are present.

**Predictions.** Pairing reads each arm's per-sample scores: ``predictions.jsonl.gz`` (what ``probseq ruler``
writes) or ``predictions.jsonl`` (older runs); the ``.gz`` wins when both are there. An arm in a pair without
them, or with fewer samples of a unit than its ``summary.csv`` counts, is an error (:func:`read_predictions`),
never a silently missing row.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

TEACHER, BASELINE, BAYES = "teacher", "gdn", "bayes"
LABELS = {
    TEACHER: "GDN teacher (pretrained)",
    BAYES: "Bayesian Layers (distilled)",
    BASELINE: "GDN fine-tuned (matched-compute baseline)",
}
PREDICTION_FILES = ("predictions.jsonl.gz", "predictions.jsonl")


def is_bayesian(name: str) -> bool:
    return name == BAYES or name.startswith((BAYES + "_", BAYES + "-"))


def is_arm(name: str) -> bool:
    return name in (TEACHER, BASELINE) or is_bayesian(name)


def label(arm: str) -> str:
    """``"bayes_stationary"`` → ``"Bayesian Layers (distilled, stationary)"``."""
    if arm in LABELS:
        return LABELS[arm]
    return f"Bayesian Layers (distilled, {arm[len(BAYES) + 1 :]})"


def arm_order(names) -> list[str]:
    """The teacher, the Bayesian arms (``bayes`` first, then by name), the baseline."""
    rank = {TEACHER: (0, ""), BAYES: (1, ""), BASELINE: (3, "")}
    return sorted(names, key=lambda name: rank.get(name, (2, name)))


def arm_pairs(arms) -> list[tuple[str, str]]:
    """``(arm, versus)`` pairs among ``arms``: each Bayesian arm − ``gdn``, then each other arm − ``teacher``."""
    arms = arm_order(arms)
    pairs = [(arm, BASELINE) for arm in arms if is_bayesian(arm) and BASELINE in arms]
    return pairs + [(arm, TEACHER) for arm in arms if arm != TEACHER and TEACHER in arms]


def discover_arms(folder: Path) -> dict[str, list[dict]]:
    """``arm → rows of its summary.csv`` for every arm folder under ``folder`` (``RESULTS/ruler``), in
    :func:`arm_order`."""
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and is_arm(path.name) and (path / "summary.csv").is_file():
                with (path / "summary.csv").open() as handle:
                    found[path.name] = list(csv.DictReader(handle))
    return {arm: found[arm] for arm in arm_order(found)}


def prediction_file(folder: Path) -> Path | None:
    return next((folder / name for name in PREDICTION_FILES if (folder / name).is_file()), None)


def read_predictions(folder: Path, rows: list[dict]) -> dict[tuple[str, int], dict[int, dict]]:
    """``(task, length) → {index: prediction}`` of the arm in ``folder`` for every ``ok`` unit of its summary
    ``rows``: exactly the first ``samples`` samples of each.

    Raises:
        ValueError: no prediction file, or one that lacks samples the summary counts (a file left out for its
            size, or one from an earlier run): what is missing, and what to copy.
    """
    path = prediction_file(folder)
    advice = (
        "copy the arm's predictions.jsonl.gz from its probseq ruler --out next to its summary.csv "
        "(scripts/collect_results.sh leaves out files over 1 MB: it says so)"
    )
    if path is None:
        raise ValueError(f"{folder.name}: no predictions ({' or '.join(PREDICTION_FILES)}) in {folder}; {advice}")
    opener = gzip.open if path.suffix == ".gz" else open
    units: dict[tuple[str, int], dict[int, dict]] = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                units.setdefault((row["task"], int(row["length"])), {})[int(row["index"])] = row
    out = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        key, samples = (row["task"], int(row["length"])), int(row["samples"])
        have = units.get(key, {})
        if any(index not in have for index in range(samples)):
            raise ValueError(
                f"{folder.name}: {path.name} has {len(have)} samples of {key[0]} at {key[1]} tokens, its "
                f"summary.csv {samples} (samples 0 … {samples - 1}); {advice}"
            )
        out[key] = {index: have[index] for index in range(samples)}
    return out


__all__ = [
    "BASELINE",
    "BAYES",
    "LABELS",
    "TEACHER",
    "arm_order",
    "arm_pairs",
    "discover_arms",
    "is_arm",
    "is_bayesian",
    "label",
    "read_predictions",
]
