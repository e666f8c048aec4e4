"""Associative recall with key noise, collisions, distractor writes and gaps.

An example is a block of *writes* (key-value bigrams), a *gap* of filler tokens, then *queries*
(key-answer bigrams), then filler to the end. The knobs, all per example:

* ``num_pairs`` live keys, each written at least once; ``num_queries`` of them are queried, each once.
* ``collisions``: that many of the queried keys are written twice, with two different values; the
  target is the later (latest) value, the earlier one is stale.
* ``distractors``: extra pairs whose keys are never queried.
* ``gap``: filler tokens between the last write and the first query (recall distance).
* ``key_noise``: every key occurrence — each write and each query, independently — is replaced by its
  noisy twin with this probability. The twin stands for a perturbed version of the same key: it
  addresses the same memory slot, so a query (clean or noisy) asks for the latest value written under
  either form.

Vocabulary layout (``K = num_keys``, ``M = num_values``, ``vocab_size = 1 + 2K + M``)::

    0                    FILLER (gaps and trailing positions)
    [1, 1 + K)           clean keys
    [1 + K, 1 + 2K)      noisy twins: twin(key) = key + K, clean_key(twin) = twin − K
    [1 + 2K, 1 + 2K + M) values

Sampling: the ``num_pairs + distractors`` keys of an example are distinct and uniform over the clean
keys; every write gets its own value, distinct and uniform over the values (so a collided key's two
values differ); the order of all writes is a uniform permutation (a collided key's target is
whichever of its two values lands later); the queried keys, and among them the collided ones, are
uniform subsets, asked in uniform random order.

Positions, with ``W = num_pairs + distractors + collisions`` writes and ``Q = num_queries``: writes
occupy ``[0, 2W)``, the gap ``[2W, 2W + gap)``, query ``j`` the bigram at ``q_j = 2W + gap + 2j``
(the key, then its answer), filler the rest. Labels follow Zoology's shifted convention (see
:mod:`probseq.tasks.mqar`): the sequence is built with ``T + 1`` tokens, ``inputs = seq[:-1]``, and
``labels[t] = seq[t + 1]`` at each query key ``t = q_j``, ``IGNORE_INDEX`` elsewhere. Hence the last
answer may lie just past the inputs and ``T >= 2W + gap + 2Q − 1``.

Worked example (``K = 4``: keys 1–4, twins 5–8; ``M = 6``: values 9–14; two live pairs, both
queried, one collision, one distractor, a gap of 2, ``T = 14``)::

    >>> from probseq.tasks import RecallConfig
    >>> config = RecallConfig(num_pairs=2, num_queries=2, collisions=1, distractors=1, gap=2,
    ...                       key_noise=0.25, num_keys=4, num_values=6, seq_len=14)
    >>> inputs, labels = config.build(num_examples=1, seed=12)
    >>> inputs[0].tolist()
    [1, 13, 2, 9, 8, 14, 1, 12, 0, 0, 6, 9, 1, 12]
    >>> labels[0].tolist()
    [-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, 9, -100, 12, -100]

Reading it (``W = 4`` writes, queries at ``q_0 = 2W + gap = 10`` and ``q_1 = 12``)::

    pos     0  1   2  3   4  5   6  7   8  9   10  11  12  13
    input   1 13   2  9   8 14   1 12   0  0    6   9   1  12
    label   ·  ·   ·  ·   ·  ·   ·  ·   ·  ·    9   ·  12   ·
            write  write  write  write  gap    query   query

* ``(1, 13)`` and ``(1, 12)``: key 1 is the collided key, 13 is stale and 12 is its latest value.
* ``(2, 9)``: key 2.
* ``(8, 14)``: the distractor, key 4 written as its noisy twin ``8 = 4 + K``; it is never queried.
* Position 10 queries ``6 = 2 + K``, the noisy twin of key 2: the label is 9. Position 12 queries
  key 1: the label is 12, the latest value, not 13. The answers are also the next inputs (11, 13);
  with ``seq_len = 13`` the last one would be a label only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probseq.tasks.common import IGNORE_INDEX, TaskData, check_int, check_real, check_seed, sample_distinct

# Token of gaps and unused positions.
FILLER = 0


@dataclass(frozen=True)
class RecallConfig:
    """An associative-recall task, validated on construction (layout in the module docstring).

    Attributes:
        num_pairs: live keys per example, ``>= 1``.
        num_queries: queried live keys, ``1 <= num_queries <= num_pairs``.
        collisions: queried keys written twice (latest value is the target), ``0 <= · <= num_queries``.
        distractors: extra written pairs whose keys are never queried, ``>= 0``.
        key_noise: probability that a key occurrence (write or query) is its noisy twin, in ``[0, 1]``.
        gap: filler tokens between the writes and the queries, ``>= 0``.
        num_keys: ``K``, clean keys (and as many twins), ``>= num_pairs + distractors``.
        num_values: ``M``, values, ``>= num_writes`` (every write has its own value).
        seq_len: ``T``, input length, ``>= min_seq_len``.
    """

    num_pairs: int = 8
    num_queries: int = 4
    collisions: int = 0
    distractors: int = 0
    key_noise: float = 0.0
    gap: int = 0
    num_keys: int = 64
    num_values: int = 64
    seq_len: int = 64

    def __post_init__(self) -> None:
        check_int("num_pairs", self.num_pairs, 1)
        check_int("num_queries", self.num_queries, 1)
        if self.num_queries > self.num_pairs:
            raise ValueError(f"num_queries must be <= num_pairs = {self.num_pairs}, got {self.num_queries}")
        check_int("collisions", self.collisions, 0)
        if self.collisions > self.num_queries:
            raise ValueError(
                f"collisions must be <= num_queries = {self.num_queries} (collided keys are queried "
                f"keys), got {self.collisions}"
            )
        check_int("distractors", self.distractors, 0)
        check_real("key_noise", self.key_noise, 0.0, 1.0)
        check_int("gap", self.gap, 0)
        check_int("num_keys", self.num_keys, 1)
        if self.num_keys < self.num_pairs + self.distractors:
            raise ValueError(
                f"num_keys must be >= num_pairs + distractors = {self.num_pairs + self.distractors} "
                f"(distinct keys per example), got {self.num_keys}"
            )
        check_int("num_values", self.num_values, 1)
        if self.num_values < self.num_writes:
            raise ValueError(
                f"num_values must be >= num_pairs + distractors + collisions = {self.num_writes} "
                f"(a distinct value per write), got {self.num_values}"
            )
        check_int("seq_len", self.seq_len, 1)
        if self.seq_len < self.min_seq_len:
            raise ValueError(
                f"seq_len must be >= 2 * writes + gap + 2 * num_queries - 1 = {self.min_seq_len}, got {self.seq_len}"
            )

    @property
    def num_writes(self) -> int:
        """``W = num_pairs + distractors + collisions`` key-value bigrams per example."""
        return self.num_pairs + self.distractors + self.collisions

    @property
    def query_start(self) -> int:
        """Position of the first query key, ``2W + gap``."""
        return 2 * self.num_writes + self.gap

    @property
    def min_seq_len(self) -> int:
        """Shortest input that holds every query key (the last answer is only a label)."""
        return self.query_start + 2 * self.num_queries - 1

    @property
    def vocab_size(self) -> int:
        """``1 + 2K + M``."""
        return 1 + 2 * self.num_keys + self.num_values

    @property
    def key_tokens(self) -> range:
        """Clean key ids, ``[1, 1 + K)``."""
        return range(1, 1 + self.num_keys)

    @property
    def noisy_key_tokens(self) -> range:
        """Noisy twin ids, ``[1 + K, 1 + 2K)``."""
        return range(1 + self.num_keys, 1 + 2 * self.num_keys)

    @property
    def value_tokens(self) -> range:
        """Value ids, ``[1 + 2K, 1 + 2K + M)``."""
        return range(1 + 2 * self.num_keys, self.vocab_size)

    def noisy_twin(self, keys: torch.Tensor) -> torch.Tensor:
        """Map clean key ids (any shape) to their noisy twins, ``key + K``."""
        if ((keys < 1) | (keys > self.num_keys)).any():
            raise ValueError(f"keys must be clean key ids in [1, {self.num_keys}]")
        return keys + self.num_keys

    def clean_key(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map key ids, clean or noisy (any shape), to the clean key they stand for."""
        if ((tokens < 1) | (tokens > 2 * self.num_keys)).any():
            raise ValueError(f"tokens must be key ids (clean or noisy) in [1, {2 * self.num_keys}]")
        return torch.where(tokens > self.num_keys, tokens - self.num_keys, tokens)

    def build(self, num_examples: int, seed: int) -> TaskData:
        """Generate ``num_examples`` examples with ``seed``.

        Args:
            num_examples: ``B >= 1``.
            seed: int in ``[0, 2**32)``; the same config and seed give the same tensors.

        Returns:
            :class:`TaskData` ``(inputs, labels)``, both ``[B, T]`` int64; ``labels`` is
            ``IGNORE_INDEX`` except at the ``num_queries`` query keys of each example, where it is the
            latest value written under that key (clean or noisy form).
        """
        num_examples = check_int("num_examples", num_examples, 1)
        seed = check_seed(seed)
        return _generate(self, num_examples, np.random.default_rng(seed))


def associative_recall(
    num_examples: int,
    seed: int,
    *,
    num_pairs: int = 8,
    num_queries: int = 4,
    collisions: int = 0,
    distractors: int = 0,
    key_noise: float = 0.0,
    gap: int = 0,
    num_keys: int = 64,
    num_values: int = 64,
    seq_len: int = 64,
) -> TaskData:
    """Generate an associative-recall segment: ``RecallConfig(**knobs).build(num_examples, seed)``.

    Args:
        num_examples: ``B >= 1``.
        seed: int in ``[0, 2**32)``.
        num_pairs, num_queries, collisions, distractors, key_noise, gap, num_keys, num_values, seq_len:
            the fields of :class:`RecallConfig`.

    Returns:
        :class:`TaskData` ``(inputs, labels)``, both ``[B, T]`` int64.
    """
    config = RecallConfig(
        num_pairs=num_pairs,
        num_queries=num_queries,
        collisions=collisions,
        distractors=distractors,
        key_noise=key_noise,
        gap=gap,
        num_keys=num_keys,
        num_values=num_values,
        seq_len=seq_len,
    )
    return config.build(num_examples, seed)


def _generate(config: RecallConfig, num_examples: int, rng: np.random.Generator) -> TaskData:
    b, t = num_examples, config.seq_len
    queries, collided = config.num_queries, config.collisions
    live = config.num_pairs + config.distractors  # distinct keys written: live pairs, then distractors
    writes = config.num_writes
    rows = np.arange(b)[:, None]

    # Keys as 0-based indices into the clean range; the row order is uniform, so the first
    # `queries` live keys are a uniform queried subset and its first `collided` a uniform collided one.
    keys = sample_distinct(rng, 0, config.num_keys, b, live)  # [B, live]
    values = sample_distinct(rng, config.value_tokens.start, config.vocab_size, b, writes)  # [B, W]

    # Write items: one per distinct key, plus a second write for each collided key. order[b, p] is
    # the item written at position p; values are assigned by position (already uniform).
    item_key = np.concatenate([keys, keys[:, :collided]], axis=1)  # [B, W]
    order = rng.permuted(np.tile(np.arange(writes), (b, 1)), axis=1)  # [B, W]
    write_key = item_key[rows, order]
    position = np.argsort(order, axis=1)  # position[b, item]
    latest = position[:, :live].copy()
    latest[:, :collided] = np.maximum(latest[:, :collided], position[:, live:])
    target = values[rows, latest]  # [B, live]: latest value of each key

    asked = rng.permuted(np.tile(np.arange(queries), (b, 1)), axis=1)  # [B, Q] items, in query order
    query_key = keys[rows, asked]
    answer = target[rows, asked]

    # Key noise: each occurrence independently becomes its twin (+K).
    write_tok = 1 + write_key + config.num_keys * (rng.random((b, writes)) < config.key_noise)
    query_tok = 1 + query_key + config.num_keys * (rng.random((b, queries)) < config.key_noise)

    # Zoology's convention: T + 1 tokens, inputs = seq[:, :-1], labels = (answers only)[:, 1:].
    seq = np.full((b, t + 1), FILLER, dtype=np.int64)
    seq[:, 0 : 2 * writes : 2] = write_tok
    seq[:, 1 : 2 * writes : 2] = values
    q0 = config.query_start
    seq[:, q0 : q0 + 2 * queries : 2] = query_tok
    seq[:, q0 + 1 : q0 + 2 * queries : 2] = answer
    scored = np.zeros(t + 1, dtype=bool)
    scored[q0 + 1 : q0 + 2 * queries : 2] = True
    labels = np.where(scored, seq, IGNORE_INDEX)
    return TaskData(torch.from_numpy(seq[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy()))
