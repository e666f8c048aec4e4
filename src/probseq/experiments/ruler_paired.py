"""Paired differences of two RULER arms over shared prompts, their verdicts, and the samples a verdict needs.

Both arms of a pair see identical prompts (RULER's generators with one seed and one tokenizer: a student keeps
its teacher's), so per unit (task × length) the difference ``d_i = score_arm,i − score_versus,i`` (score points,
0–100) is paired per sample. :class:`Paired` holds the mean difference over the ``n`` shared prompts and the
variance of that mean (``var(d) / n``, ``var`` with ``n − 1``; 0 for one pair); its 95 % interval is the normal
one, ``± 1.96 √variance``.

**The niah mean** at a length (:func:`niah_mean`) is the mean over the ``k`` niah tasks scored there by both arms
of the per-task differences; the tasks' prompts are drawn independently, so the variance of the mean is
``Σ_k var_k / n_k / k²``.

**Verdict** (:func:`verdict`): ``better`` (the interval is above 0), ``worse`` (below), ``indistinguishable`` (it
contains 0 and its half-width is ≤ :data:`MARGIN` = 5 points), ``undecided`` (contains 0, wider: more samples
would decide), or ``uninformative``: it contains 0 and :func:`flags` says why the interval says nothing — both
arms ``at floor`` (≤ 5) or ``at ceiling`` (≥ 95), or ``no discordant pairs`` (every pair scored the same: the
interval is [0, 0] whatever the arms' true difference, which must not read as ``indistinguishable``).

**Samples needed** (:func:`samples_needed`): per niah task at a length, the count that would bring the niah
mean's half-width to :data:`MARGIN` given the observed per-task variances, allocated across the tasks in
proportion to their standard deviations (Neyman's allocation: the fewest samples in all for that half-width).
A task whose pairs all agreed has no observed variance and is given 0 (its ``no discordant pairs`` flag says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.96
#: The half-width (score points) at or under which an interval containing 0 reads ``indistinguishable``.
MARGIN = 5.0
#: Scores at or under ``FLOOR`` (at or over ``CEILING``) for both arms: the interval says nothing.
FLOOR, CEILING = 5.0, 95.0


@dataclass(frozen=True)
class Paired:
    """``arm − versus`` over ``n`` shared prompts: ``score`` and ``score_versus`` (the arms' means there),
    ``difference`` (their difference), ``variance`` (of ``difference``), ``discordant`` (pairs that differ)."""

    n: int
    discordant: int
    score: float
    score_versus: float
    difference: float
    variance: float

    @property
    def half_width(self) -> float:
        return Z95 * math.sqrt(self.variance)

    @property
    def ci_low(self) -> float:
        return self.difference - self.half_width

    @property
    def ci_high(self) -> float:
        return self.difference + self.half_width

    @property
    def sd(self) -> float:
        """Standard deviation of one pair's difference."""
        return math.sqrt(self.variance * self.n)


def pair(scores: list[float], scores_versus: list[float]) -> Paired:
    """The paired difference of two arms' scores on the same prompts (``scores[i]`` and ``scores_versus[i]`` on
    prompt ``i``)."""
    if len(scores) != len(scores_versus) or not scores:
        raise ValueError(f"pairing needs equally many scores, at least one: got {len(scores)} and {len(scores_versus)}")
    n = len(scores)
    diffs = [a - b for a, b in zip(scores, scores_versus)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) / n if n > 1 else 0.0
    return Paired(
        n=n,
        discordant=sum(d != 0 for d in diffs),
        score=sum(scores) / n,
        score_versus=sum(scores_versus) / n,
        difference=mean,
        variance=variance,
    )


def niah_mean(parts: list[Paired]) -> Paired:
    """The mean over ``k`` tasks of their paired differences: variance ``Σ_k var_k / k²`` (each ``var_k`` already
    ``var(d_k) / n_k``); ``n`` and ``discordant`` summed over the tasks."""
    k = len(parts)
    return Paired(
        n=sum(p.n for p in parts),
        discordant=sum(p.discordant for p in parts),
        score=sum(p.score for p in parts) / k,
        score_versus=sum(p.score_versus for p in parts) / k,
        difference=sum(p.difference for p in parts) / k,
        variance=sum(p.variance for p in parts) / k**2,
    )


def flags(p: Paired) -> str:
    """Why the interval of ``p`` says nothing, or ``""``: ``at floor`` / ``at ceiling`` (both arms ≤ 5 / ≥ 95),
    ``no discordant pairs``; several joined by ``"; "``."""
    out = []
    if max(p.score, p.score_versus) <= FLOOR:
        out.append("at floor")
    elif min(p.score, p.score_versus) >= CEILING:
        out.append("at ceiling")
    if p.discordant == 0:
        out.append("no discordant pairs")
    return "; ".join(out)


def verdict(p: Paired) -> str:
    """``better``, ``worse``, ``indistinguishable``, ``undecided`` or ``uninformative`` (module docstring)."""
    if p.ci_low > 0:
        return "better"
    if p.ci_high < 0:
        return "worse"
    if flags(p):
        return "uninformative"
    return "indistinguishable" if p.half_width <= MARGIN else "undecided"


def samples_needed(parts: dict[str, Paired], margin: float = MARGIN) -> dict[str, int]:
    """``task → n_k`` for the niah mean over ``parts`` (its tasks at one length) to have half-width ``margin``:
    ``n_k = ⌈sd_k · Σ_j sd_j · (1.96 / (margin · k))²⌉`` (Neyman's allocation), 0 for a task with ``sd_k = 0``."""
    k = len(parts)
    total_sd = sum(p.sd for p in parts.values())
    scale = (Z95 / (margin * k)) ** 2
    # round away float noise before the ceiling: an exact n must not become n + 1
    return {task: math.ceil(round(p.sd * total_sd * scale, 9)) for task, p in parts.items()}


__all__ = ["CEILING", "FLOOR", "MARGIN", "Paired", "flags", "niah_mean", "pair", "samples_needed", "verdict"]
