"""Training data as configs: which task, which segments, how many examples, generated from seeds.

A data config has ``train``, ``valid`` and ``test`` splits, each a tuple of segments. Every segment is
generated from its own seed (:func:`probseq.tasks.split_seeds` of the run's data seed): train and valid
segments draw from the lower half of the seed range, test segments from the upper half, all distinct —
so the validation data (used to pick hyper-parameters) is never the test data, and a run is reproducible
from its config alone.

Segments of different lengths are trained together: mixed in one shuffled set, a batch right-padded to its longest
example with token 0 and label ``IGNORE_INDEX`` (a causal model's outputs at earlier positions do not see the
padding), or — ``TrainConfig.batching = "by_segment"``, Zoology's — every batch from one segment
(:class:`SegmentBatches`).
Labels are pre-shifted (:mod:`probseq.tasks`): ``labels[t]`` is the target of the prediction at ``t``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, NamedTuple

from probseq.tasks import IGNORE_INDEX, MAX_SEED, MQARSegment, RecallConfig, TaskData, split_seeds
from probseq.train.schema import check_fields


class _SplitsOfSegments:
    """What :class:`MQARData` and :class:`RecallData` share: ``train``, ``valid`` and ``test`` tuples of segments,
    each segment with a ``name``."""

    def segments(self) -> tuple:
        return self.train + self.valid + self.test

    def check_splits(self) -> None:
        """Every field against its annotation, at least one train segment, no name twice in a split."""
        check_fields(self)
        if not self.train:
            raise ValueError("data.train needs at least one segment")
        for split in ("valid", "test"):
            names = [s.name for s in getattr(self, split)]
            if len(set(names)) != len(names):
                raise ValueError(f"data.{split} has repeated segments: {names}")


@dataclass(frozen=True)
class MQARSplit:
    """One MQAR segment: ``num_examples`` sequences of ``seq_len`` tokens with ``num_kv_pairs`` pairs."""

    seq_len: int
    num_kv_pairs: int
    num_examples: int

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def name(self) -> str:
        return f"T{self.seq_len}_k{self.num_kv_pairs}"


@dataclass(frozen=True)
class MQARData(_SplitsOfSegments):
    """Zoology's MQAR (:func:`probseq.tasks.multiquery_ar`) with a shared vocabulary and query law.

    Attributes:
        kind: ``"mqar"``.
        vocab_size, power_a, random_non_queries: :class:`probseq.tasks.MQARSegment`'s.
        train, valid, test: the segments of each split.
    """

    kind: Literal["mqar"] = "mqar"
    vocab_size: int = 8192
    power_a: float = 0.01
    random_non_queries: bool = True
    train: tuple[MQARSplit, ...] = (MQARSplit(64, 4, 10_000),)
    valid: tuple[MQARSplit, ...] = ()
    test: tuple[MQARSplit, ...] = (MQARSplit(64, 4, 1_000),)

    def __post_init__(self) -> None:
        self.check_splits()
        for s in self.segments():  # the generator's own checks, on the real arguments
            MQARSegment(
                self.vocab_size, s.seq_len, s.num_kv_pairs, s.num_examples, self.power_a, self.random_non_queries
            )

    @property
    def vocab(self) -> int:
        return self.vocab_size

    def generate(self, split: MQARSplit, seed: int) -> TaskData:
        return MQARSegment(
            self.vocab_size,
            split.seq_len,
            split.num_kv_pairs,
            split.num_examples,
            self.power_a,
            self.random_non_queries,
        ).build(seed)


@dataclass(frozen=True)
class RecallSplit:
    """One associative-recall segment: ``num_examples`` examples of ``task``, called ``name``."""

    name: str
    task: RecallConfig
    num_examples: int

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class RecallData(_SplitsOfSegments):
    """Associative recall (:class:`probseq.tasks.RecallConfig`); every segment must share ``num_keys`` and
    ``num_values`` (one vocabulary).

    Attributes:
        kind: ``"recall"``.
        train, valid, test: the segments of each split (names unique within a split).
    """

    kind: Literal["recall"] = "recall"
    train: tuple[RecallSplit, ...] = (RecallSplit("train", RecallConfig(), 10_000),)
    valid: tuple[RecallSplit, ...] = ()
    test: tuple[RecallSplit, ...] = (RecallSplit("inside", RecallConfig(), 1_000),)

    def __post_init__(self) -> None:
        self.check_splits()
        sizes = {(s.task.num_keys, s.task.num_values) for s in self.segments()}
        if len(sizes) > 1:
            raise ValueError(f"every recall segment must share num_keys and num_values (one vocabulary), got {sizes}")
        for s in self.segments():
            if s.num_examples < 1:
                raise ValueError(f"num_examples of segment {s.name!r} must be >= 1, got {s.num_examples}")

    @property
    def vocab(self) -> int:
        return self.train[0].task.vocab_size

    def generate(self, split: RecallSplit, seed: int) -> TaskData:
        return split.task.build(split.num_examples, seed)


class Splits(NamedTuple):
    """Generated data: the train segments, and each evaluation segment by name (``valid_<name>``,
    ``test_<name>``)."""

    train: list[TaskData]
    evaluation: dict[str, TaskData]


def generate(data: MQARData | RecallData, data_seed: int) -> Splits:
    """Generate every segment of ``data`` from ``data_seed`` (train and valid seeds first, then test)."""
    seeds = split_seeds(data_seed, len(data.train) + len(data.valid), len(data.test))
    train_seeds, valid_seeds = seeds.train[: len(data.train)], seeds.train[len(data.train) :]
    train = [data.generate(s, seed) for s, seed in zip(data.train, train_seeds)]
    evaluation = {f"valid_{s.name}": data.generate(s, seed) for s, seed in zip(data.valid, valid_seeds)}
    evaluation |= {f"test_{s.name}": data.generate(s, seed) for s, seed in zip(data.test, seeds.test)}
    return Splits(train, evaluation)


def point_seed(data: MQARData | RecallData, data_seed: int, name: str) -> int:
    """The seed of the test segment called ``name`` (:func:`generate`'s ``test_<name>``): for a segment of
    ``data.test``, the seed :func:`generate` gives it (so its data are the run's own test data); for another one,
    a seed of the test half of the seed range (disjoint from every train and valid seed) that depends on the data
    seed and the name alone::

        seed = MAX_SEED/2 + (first 8 bytes of sha256(f"{data_seed}/test/{name}")) mod MAX_SEED/2

    so every run of one data seed (every mixer and learning rate of a sweep's seed) is tested on the same data at
    a new point, whichever other points are asked for with it."""
    names = [s.name for s in data.test]
    if name in names:
        return split_seeds(data_seed, len(data.train) + len(data.valid), len(data.test)).test[names.index(name)]
    half = MAX_SEED // 2
    digest = hashlib.sha256(f"{data_seed}/test/{name}".encode()).digest()
    return half + int.from_bytes(digest[:8], "little") % half


class TokenDataset:
    """A map-style dataset over one or more :class:`TaskData` segments: item ``i`` is
    ``{"input_ids": [T_i], "labels": [T_i]}``."""

    def __init__(self, segments: list[TaskData]):
        self.rows = [(inputs[i], labels[i]) for inputs, labels in segments for i in range(len(inputs))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        inputs, labels = self.rows[index]
        return {"input_ids": inputs, "labels": labels}


class SegmentBatches:
    """A map-style dataset whose items are whole batches, each drawn from one segment (Zoology's batching):
    item ``j`` is ``{"input_ids": [B, T_s], "labels": [B, T_s]}``, rows ``[i·B, (i+1)·B)`` of one segment ``s``.
    A segment of ``n`` examples gives ``⌊n / B⌋`` batches (an incomplete last batch is dropped, so every step
    sees ``B`` examples of one length: no padding). The Trainer shuffles the order of the batches each epoch
    (its sampler, with batch size 1 and :func:`pad_collate`); the grouping of examples into batches is fixed.
    """

    def __init__(self, segments: list[TaskData], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        short = [len(inputs) for inputs, _ in segments if len(inputs) < batch_size]
        if short:
            raise ValueError(
                f"batching by segment needs at least one full batch ({batch_size} examples) in every "
                f"train segment; segments of {short} examples are shorter"
            )
        self.blocks = [
            (inputs[start : start + batch_size], labels[start : start + batch_size])
            for inputs, labels in segments
            for start in range(0, len(inputs) - batch_size + 1, batch_size)
        ]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        inputs, labels = self.blocks[index]
        return {"input_ids": inputs, "labels": labels}


def pad_collate(examples: list[dict]) -> dict:
    """Stack examples, right-padding to the longest with token 0 and label ``IGNORE_INDEX``. An item whose
    ``input_ids`` are two-dimensional (``[n, T]``: a block of :class:`SegmentBatches`) contributes its ``n`` rows."""
    import torch

    rows = [
        (inputs, labels)
        for e in examples
        for inputs, labels in (
            zip(e["input_ids"], e["labels"]) if e["input_ids"].dim() == 2 else [(e["input_ids"], e["labels"])]
        )
    ]
    length = max(len(inputs) for inputs, _ in rows)
    batch_inputs = torch.zeros(len(rows), length, dtype=torch.long)
    batch_labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for row, (inputs, labels) in enumerate(rows):
        batch_inputs[row, : len(inputs)] = inputs
        batch_labels[row, : len(labels)] = labels
    return {"input_ids": batch_inputs, "labels": batch_labels}


__all__ = [
    "MQARData",
    "MQARSplit",
    "RecallData",
    "RecallSplit",
    "SegmentBatches",
    "Splits",
    "TokenDataset",
    "generate",
    "pad_collate",
    "point_seed",
]
