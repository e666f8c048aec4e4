"""RULER's scoring (``scripts/eval/evaluate.py`` and ``scripts/eval/synthetic/constants.py``).

Both metrics test case-insensitive substring containment of each reference in the prediction and
return a percentage rounded to 2 decimals. All synthetic tasks here (niah, vt, cwe, fwe) use
:func:`string_match_all`; RULER keeps :func:`string_match_part` for its QA tasks.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(pred: str) -> str:
    """RULER's cleaning of a prediction: strip, turn control characters into newlines, strip again."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def _check(preds, refs) -> None:
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need equally many (>0) predictions and references, got {len(preds)} and {len(refs)}")
    if any(len(r) == 0 for r in refs):
        raise ValueError("every sample needs at least one reference")


def _found(pred: str, ref: list[str]) -> list[float]:
    low = pred.lower()
    return [1.0 if r.lower() in low else 0.0 for r in ref]


def string_match_all(preds: list[str], refs: list[list[str]]) -> float:
    """Mean over samples of the fraction of its references found in the prediction, times 100."""
    _check(preds, refs)
    return round(sum(sum(_found(p, r)) / len(r) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: list[str], refs: list[list[str]]) -> float:
    """Mean over samples of 1 if any of its references is found in the prediction, times 100."""
    _check(preds, refs)
    return round(sum(max(_found(p, r)) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def score(task: str, preds: list[str], refs: list[list[str]]) -> float:
    """Score raw predictions for ``task`` as RULER's evaluate.py does: postprocess, then its metric."""
    from .tasks import TASKS

    return METRICS[TASKS[task]["metric"]]([postprocess_pred(p) for p in preds], refs)
