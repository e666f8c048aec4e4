"""Multi-query associative recall (MQAR), Zoology's protocol.

Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient Language Models"
(2023). This module is an independent implementation of the generator protocol of
``zoology/data/multiquery_ar.py`` (HazyResearch/zoology, one pass over the pairs): same token layout,
same distributions, same preconditions, same label convention; not the same random stream. (Zoology
draws the random fill from torch's global generator, so its fill is not fixed by ``seed``; here one
``numpy.random.Generator`` seeded with ``seed`` draws everything.)

Protocol for one example, with ``k = num_kv_pairs``, vocabulary size ``V`` and input length ``T``:

1. Draw ``k`` distinct keys uniformly from ``[1, V // 2)`` and ``k`` distinct values uniformly from
   ``[V // 2, V)``; key ``i`` is paired with value ``i``. Token ``0`` is never a key or value.
2. The first ``2k`` tokens are the pairs, ``k_1 v_1 k_2 v_2 … k_k v_k``.
3. The other ``T - 2k`` positions hold ``S = (T - 2k) / 2`` query slots, at the even offsets
   ``0, 2, …, 2(S - 1)`` after the pair block. Key ``i`` is queried once, in slot ``s_i``, where
   ``s_1, …, s_k`` are drawn one after another without replacement from the power law

       p(s) ∝ (s + 1)^(a − 1),    s = 0, …, S − 1,    a = power_a,

   each draw from ``p`` restricted to the slots still free and renormalised. ``a → 0`` puts the
   queries right after the pairs (short recall distances); ``a = 1`` is uniform.
4. Every position that is neither a pair nor a query holds ``0`` or, with ``random_non_queries``, a
   token drawn uniformly from the whole vocabulary ``[0, V)`` (it may equal a key or a value: it is
   noise and is never scored).
5. Labels are already shifted for next-token training. Zoology builds the sequence with one extra
   position, writes value ``v_i`` into the label sequence one position after query ``i`` and returns
   ``inputs = seq[:, :-1]`` and ``labels = labels[:, 1:]``. Net effect: ``labels[t] = v_i`` where
   ``inputs[t]`` is the query of key ``i`` and ``IGNORE_INDEX`` (−100) everywhere else, so an
   example has exactly ``k`` scored positions. The value never follows its query in the inputs.

Preconditions (Zoology's assertions): ``T`` even, ``V > T`` and ``T >= 4k``; the last makes
``S >= k`` so every key has a slot, and together they leave at least ``k`` keys and ``k`` values.

Sampling: keys and values use ``Generator.choice`` without replacement; the successive power-law
draws use the Gumbel top-``k`` identity (the slots ordered by ``log p(s) + Gumbel`` are distributed as
successive sampling without replacement), the distribution of Zoology's per-example
``choice(p=..., replace=False)``, vectorised over examples.

Worked example (``V = 20``: keys in ``[1, 10)``, values in ``[10, 20)``; ``T = 16``, ``k = 2``, no
random fill)::

    >>> from probseq.tasks import multiquery_ar
    >>> inputs, labels = multiquery_ar(vocab_size=20, num_examples=1, input_seq_len=16, seed=7,
    ...                                num_kv_pairs=2, random_non_queries=False)
    >>> inputs[0].tolist()
    [8, 18, 6, 15, 6, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0]
    >>> labels[0].tolist()
    [-100, -100, -100, -100, 15, -100, -100, -100, -100, -100, 18, -100, -100, -100, -100, -100]

The pairs are ``(8, 18)`` and ``(6, 15)`` (positions 0–3). There are ``S = (16 − 4) / 2 = 6`` query
slots, at positions 4, 6, …, 14. Key 6 is queried at position 4 (slot 0, right after the pairs) and
key 8 at position 10 (slot 3); the labels at those two positions are their values, 15 and 18. With
``random_non_queries=True`` the zeros become uniform tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probseq.tasks.common import IGNORE_INDEX, TaskData, check_int, check_real, check_seed, sample_distinct


def query_offset_pmf(num_slots: int, power_a: float) -> np.ndarray:
    """Zoology's power law over query slots, ``p(s) ∝ (s + 1)^(power_a − 1)``.

    Slot ``s`` is the even offset ``2s`` after the key-value block. Computed in log space, so any
    finite ``power_a > 0`` is safe.

    Args:
        num_slots: ``S >= 1``.
        power_a: ``a > 0``; ``a = 1`` is uniform, ``a < 1`` decreasing.

    Returns:
        ``[S]`` float64 probabilities summing to 1.
    """
    num_slots = check_int("num_slots", num_slots, 1)
    power_a = check_real("power_a", power_a, 0.0, float("inf"), low_open=True)
    log_w = (power_a - 1.0) * np.log(np.arange(1, num_slots + 1, dtype=np.float64))
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def check_mqar_args(
    vocab_size: object, num_examples: object, input_seq_len: object, power_a: object, num_kv_pairs: object
) -> tuple[int, int, int, float, int]:
    """Validate :func:`multiquery_ar`'s arguments (a ``ValueError`` naming the argument).

    Returns:
        ``(vocab_size, num_examples, input_seq_len, power_a, num_kv_pairs)`` as Python numbers.
    """
    vocab_size = check_int("vocab_size", vocab_size, 1)
    num_examples = check_int("num_examples", num_examples, 1)
    input_seq_len = check_int("input_seq_len", input_seq_len, 1)
    num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, 1)
    power_a = check_real("power_a", power_a, 0.0, float("inf"), low_open=True)
    if input_seq_len % 2:
        raise ValueError(f"input_seq_len must be even (query slots sit at even offsets), got {input_seq_len}")
    if input_seq_len < 4 * num_kv_pairs:
        raise ValueError(
            f"input_seq_len must be >= 4 * num_kv_pairs = {4 * num_kv_pairs} (2k tokens of pairs "
            f"and k query slots at even offsets), got {input_seq_len}"
        )
    if vocab_size <= input_seq_len:
        # Zoology's precondition. With T >= 4k it also guarantees k keys in [1, V/2) and k values.
        raise ValueError(
            f"vocab_size must be > input_seq_len = {input_seq_len} (Zoology's precondition), got {vocab_size}"
        )
    return vocab_size, num_examples, input_seq_len, power_a, num_kv_pairs


def multiquery_ar(
    vocab_size: int,
    num_examples: int,
    input_seq_len: int,
    seed: int,
    power_a: float = 0.01,
    num_kv_pairs: int = 8,
    random_non_queries: bool = True,
) -> TaskData:
    """Generate a multi-query associative recall segment (protocol in the module docstring).

    Args:
        vocab_size: ``V``; keys are drawn from ``[1, V // 2)``, values from ``[V // 2, V)``.
        num_examples: ``B >= 1``.
        input_seq_len: ``T``, even, ``T >= 4 * num_kv_pairs`` and ``T < V``.
        seed: int in ``[0, 2**32)``; the same arguments and seed give the same tensors.
        power_a: power-law parameter ``a > 0`` of the query placement (Zoology's default 0.01).
        num_kv_pairs: ``k >= 1`` key-value pairs, each queried once.
        random_non_queries: fill the unused positions with uniform tokens from ``[0, V)`` instead of 0.

    Returns:
        :class:`TaskData` ``(inputs, labels)``, both ``[B, T]`` int64; ``labels`` is ``IGNORE_INDEX``
        except at the ``k`` query positions of each example, where it is the queried key's value.
    """
    vocab_size, num_examples, input_seq_len, power_a, num_kv_pairs = check_mqar_args(
        vocab_size, num_examples, input_seq_len, power_a, num_kv_pairs
    )
    seed = check_seed(seed)
    if not isinstance(random_non_queries, (bool, np.bool_)):
        raise ValueError(f"random_non_queries must be a bool, got {random_non_queries!r}")
    rng = np.random.default_rng(seed)
    b, t, k = num_examples, input_seq_len, num_kv_pairs
    half = vocab_size // 2

    keys = sample_distinct(rng, 1, half, b, k)  # [B, k]
    values = sample_distinct(rng, half, vocab_size, b, k)  # [B, k]

    # Successive power-law draws of one slot per key: key i gets the i-th draw (Gumbel top-k).
    num_slots = (t - 2 * k) // 2
    scores = np.log(query_offset_pmf(num_slots, power_a)) + rng.gumbel(size=(b, num_slots))
    slots = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [B, k]
    query_pos = 2 * k + 2 * slots  # [B, k]

    inputs = np.zeros((b, t), dtype=np.int64)
    inputs[:, 0 : 2 * k : 2] = keys
    inputs[:, 1 : 2 * k : 2] = values
    if random_non_queries:
        # Drawn for every position so the stream does not depend on where the queries fell; only the
        # positions of the query region that hold no query keep it.
        fill = rng.integers(0, vocab_size, size=(b, t), dtype=np.int64)
        inputs[:, 2 * k :] = fill[:, 2 * k :]
    np.put_along_axis(inputs, query_pos, keys, axis=1)

    labels = np.full((b, t), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, query_pos, values, axis=1)
    return TaskData(torch.from_numpy(inputs), torch.from_numpy(labels))


@dataclass(frozen=True)
class MQARSegment:
    """One MQAR data segment (Zoology's ``MQARConfig``), validated on construction.

    Attributes:
        vocab_size: ``V``.
        input_seq_len: ``T``.
        num_kv_pairs: ``k``.
        num_examples: ``B``.
        power_a: power-law parameter of the query placement.
        random_non_queries: uniform filler instead of 0.
    """

    vocab_size: int = 8_192
    input_seq_len: int = 64
    num_kv_pairs: int = 8
    num_examples: int = 1_000
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        check_mqar_args(self.vocab_size, self.num_examples, self.input_seq_len, self.power_a, self.num_kv_pairs)
        if not isinstance(self.random_non_queries, (bool, np.bool_)):
            raise ValueError(f"random_non_queries must be a bool, got {self.random_non_queries!r}")

    def build(self, seed: int) -> TaskData:
        """Generate the segment with ``seed`` (see :func:`probseq.tasks.split_seeds` for train/test seeds).

        Returns:
            :class:`TaskData` ``(inputs, labels)``, both ``[B, T]`` int64.
        """
        return multiquery_ar(
            vocab_size=self.vocab_size,
            num_examples=self.num_examples,
            input_seq_len=self.input_seq_len,
            seed=seed,
            power_a=self.power_a,
            num_kv_pairs=self.num_kv_pairs,
            random_non_queries=self.random_non_queries,
        )
