"""Synthetic sequence tasks, one file per task; numpy/torch only (no ``torch.nn``).

Every generator returns :class:`TaskData` ``(inputs, labels)``, two int64 tensors ``[B, T]`` with
``B`` examples of ``T`` tokens (the package notation). Labels are already shifted for next-token
training: ``labels[:, t]`` is the target after reading ``inputs[:, : t + 1]``, ``IGNORE_INDEX`` (−100)
where nothing is scored.

=========================  ======================================================================
:mod:`.mqar`               Zoology's multi-query associative recall (:func:`multiquery_ar`)
:mod:`.associative_recall` recall with key noise, collisions, distractors and gaps
:mod:`.common`             :class:`TaskData`, :func:`split_seeds` (disjoint train/test seeds)
=========================  ======================================================================
"""

from probseq.tasks.associative_recall import FILLER, RecallConfig, associative_recall
from probseq.tasks.common import IGNORE_INDEX, MAX_SEED, SegmentSeeds, TaskData, split_seeds
from probseq.tasks.mqar import MQARSegment, multiquery_ar, query_offset_pmf

__all__ = [
    "FILLER",
    "IGNORE_INDEX",
    "MAX_SEED",
    "MQARSegment",
    "RecallConfig",
    "SegmentSeeds",
    "TaskData",
    "associative_recall",
    "multiquery_ar",
    "query_offset_pmf",
    "split_seeds",
]
