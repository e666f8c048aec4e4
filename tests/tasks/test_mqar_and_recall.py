"""Synthetic tasks: Zoology's MQAR protocol property by property, and associative recall against its
worked example and a replay oracle (a dict that applies the writes in order)."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect

import numpy as np
import pytest
import torch

from probseq.tasks import (
    FILLER,
    IGNORE_INDEX,
    MAX_SEED,
    MQARSegment,
    RecallConfig,
    TaskData,
    associative_recall,
    multiquery_ar,
    query_offset_pmf,
    split_seeds,
)


@pytest.mark.parametrize("module", ["probseq.tasks.mqar", "probseq.tasks.associative_recall"])
def test_docstring_worked_example(module):
    """The worked examples are doctests: the printed tokens and labels are exactly what the seed gives."""
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


# --------------------------------------------------------------------------------------------- MQAR


def _mqar(**overrides) -> TaskData:
    args = dict(
        vocab_size=100,
        num_examples=300,
        input_seq_len=64,
        seed=0,
        power_a=0.01,
        num_kv_pairs=8,
        random_non_queries=True,
    )
    return multiquery_ar(**(args | overrides))


def _query_positions(labels: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, k]`` positions of the supervised labels, in increasing order (asserts there are k)."""
    mask = labels != IGNORE_INDEX
    assert (mask.sum(1) == k).all(), "every example has exactly num_kv_pairs supervised labels"
    return mask.nonzero()[:, 1].reshape(labels.shape[0], k)


@pytest.mark.parametrize("vocab_size", [100, 101])
@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_structure(vocab_size, random_non_queries):
    """Zoology's layout: k distinct keys in [1, V//2) and k distinct values in [V//2, V) as pairs, then
    one query per key at an even offset after the pair block, labelled (already shifted) with the value
    paired with that key in the same example; −100 everywhere else."""
    k, t, b = 8, 64, 300
    inputs, labels = _mqar(vocab_size=vocab_size, random_non_queries=random_non_queries)
    assert inputs.shape == labels.shape == (b, t) and inputs.dtype == labels.dtype == torch.int64
    half = vocab_size // 2
    keys, values = inputs[:, 0 : 2 * k : 2], inputs[:, 1 : 2 * k : 2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < vocab_size)).all()
    for row in range(b):
        assert len(set(keys[row].tolist())) == k and len(set(values[row].tolist())) == k
    assert (labels[:, : 2 * k] == IGNORE_INDEX).all()

    pos = _query_positions(labels, k)
    assert ((pos - 2 * k) % 2 == 0).all() and (pos >= 2 * k).all() and (pos <= t - 2).all()
    query_keys, targets = inputs.gather(1, pos), labels.gather(1, pos)
    for row in range(b):
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        assert sorted(query_keys[row].tolist()) == sorted(pairs), "each key is queried exactly once"
        assert targets[row].tolist() == [pairs[q] for q in query_keys[row].tolist()]

    unused = torch.ones_like(inputs, dtype=torch.bool)
    unused[:, : 2 * k] = False
    unused.scatter_(1, pos, False)
    fill = inputs[unused]
    if random_non_queries:
        assert fill.min() >= 0 and fill.max() < vocab_size
        assert fill.min() < half <= fill.max()  # the fill spans the whole vocabulary, both halves
        assert abs(fill.double().mean().item() - (vocab_size - 1) / 2) < 0.02 * vocab_size
    else:
        assert (fill == 0).all()


def test_mqar_random_fill_touches_only_unused_positions():
    """Same seed with and without the random fill: identical pairs, queries and labels."""
    plain, filled = _mqar(random_non_queries=False), _mqar(random_non_queries=True)
    assert torch.equal(plain.labels, filled.labels)
    keep = plain.inputs != 0
    assert torch.equal(plain.inputs[keep], filled.inputs[keep])
    assert (filled.inputs[~keep] != 0).float().mean() > 0.9


def test_query_offset_pmf_formula():
    """p(s) ∝ (s + 1)^(a − 1): uniform at a = 1, ratio 2^(a − 1) between slots 1 and 0, decreasing for a < 1."""
    np.testing.assert_allclose(query_offset_pmf(10, 1.0), np.full(10, 0.1))
    p = query_offset_pmf(24, 0.01)
    assert p.sum() == pytest.approx(1.0) and (np.diff(p) < 0).all()
    assert p[1] / p[0] == pytest.approx(2**-0.99) and p[9] / p[0] == pytest.approx(10**-0.99)
    assert np.isfinite(query_offset_pmf(256, 500.0)).all()  # log-space: no overflow


def test_mqar_power_law_placement():
    """Query slots follow successive power-law sampling without replacement, key i taking draw i:
    key 1's slot has pmf p exactly; every draw's mean slot and every slot's inclusion rate match
    numpy's sequential weighted sampler (``Generator.choice(p=..., replace=False)``, Zoology's sampler)."""
    b, t, k, a = 4000, 64, 8, 0.01
    num_slots = (t - 2 * k) // 2
    inputs, labels = _mqar(num_examples=b, input_seq_len=t, num_kv_pairs=k, power_a=a, seed=11)
    pos = _query_positions(labels, k)
    key_pos = {}
    for row in range(b):
        where = dict(zip(inputs[row].gather(0, pos[row]).tolist(), pos[row].tolist()))
        key_pos[row] = [where[key] for key in inputs[row, 0 : 2 * k : 2].tolist()]
    slots = (np.array([key_pos[row] for row in range(b)]) - 2 * k) // 2  # [B, k], slot of key i

    p = query_offset_pmf(num_slots, a)
    first = np.bincount(slots[:, 0], minlength=num_slots) / b
    assert 0.5 * np.abs(first - p).sum() < 0.05  # total variation to the exact pmf
    coarse = first.reshape(4, -1).sum(1)
    assert (np.diff(coarse) < 0).all(), "queries concentrate right after the pairs"

    rng = np.random.default_rng(123)
    oracle = np.stack([rng.choice(num_slots, size=k, replace=False, p=p) for _ in range(b)])
    np.testing.assert_allclose(slots.mean(0), oracle.mean(0), atol=0.7)
    inclusion = np.bincount(slots.ravel(), minlength=num_slots) / b
    oracle_inclusion = np.bincount(oracle.ravel(), minlength=num_slots) / b
    np.testing.assert_allclose(inclusion, oracle_inclusion, atol=0.05)


def test_mqar_power_a_one_is_uniform_and_farther():
    b, t, k = 3000, 64, 8
    num_slots = (t - 2 * k) // 2
    far, near = _mqar(num_examples=b, power_a=1.0, seed=5), _mqar(num_examples=b, power_a=0.01, seed=5)
    far_slots = ((_query_positions(far.labels, k) - 2 * k) // 2).numpy()
    near_slots = ((_query_positions(near.labels, k) - 2 * k) // 2).numpy()
    inclusion = np.bincount(far_slots.ravel(), minlength=num_slots) / b
    np.testing.assert_allclose(inclusion, np.full(num_slots, k / num_slots), atol=0.05)
    assert near_slots.mean() < far_slots.mean() - 3


def test_mqar_seeding():
    a, b, c = _mqar(seed=3), _mqar(seed=3), _mqar(seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs) and not torch.equal(a.labels, c.labels)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(input_seq_len=63), "input_seq_len must be even"),
        (dict(input_seq_len=30), r"input_seq_len must be >= 4 \* num_kv_pairs = 32"),
        (dict(vocab_size=64), "vocab_size must be > input_seq_len"),
        (dict(vocab_size=100.0), "vocab_size must be an int"),
        (dict(num_kv_pairs=0), "num_kv_pairs"),
        (dict(num_kv_pairs=True), "num_kv_pairs"),
        (dict(num_examples=0), "num_examples"),
        (dict(power_a=0.0), "power_a"),
        (dict(power_a=-1.0), "power_a"),
        (dict(power_a=float("nan")), "power_a"),
        (dict(power_a=float("inf")), "power_a"),
        (dict(seed=-1), "seed"),
        (dict(seed=MAX_SEED), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(random_non_queries="yes"), "random_non_queries"),
    ],
)
def test_mqar_argument_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        _mqar(**overrides)


def test_mqar_boundary_lengths_are_accepted():
    """The tightest legal case, T = 4k and V = T + 1: every slot is used."""
    inputs, labels = _mqar(vocab_size=33, input_seq_len=32, num_kv_pairs=8, num_examples=20)
    pos = _query_positions(labels, 8)
    assert torch.equal(pos, torch.arange(16, 32, 2).expand(20, 8))


def test_mqar_segment():
    seg = MQARSegment(vocab_size=100, input_seq_len=64, num_kv_pairs=8, num_examples=50, power_a=0.1)
    built, direct = seg.build(7), multiquery_ar(100, 50, 64, 7, power_a=0.1, num_kv_pairs=8)
    assert torch.equal(built.inputs, direct.inputs) and torch.equal(built.labels, direct.labels)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.vocab_size = 10
    with pytest.raises(ValueError, match="input_seq_len must be even"):
        MQARSegment(input_seq_len=63)
    with pytest.raises(ValueError, match="random_non_queries"):
        MQARSegment(random_non_queries=1)


def test_split_seeds_disjoint():
    """Train seeds in [0, 2^31), test seeds in [2^31, 2^32); distinct, deterministic per master seed."""
    seeds = split_seeds(123, num_train=50, num_test=40)
    assert len(seeds.train) == 50 and len(seeds.test) == 40
    assert all(0 <= s < MAX_SEED // 2 for s in seeds.train)
    assert all(MAX_SEED // 2 <= s < MAX_SEED for s in seeds.test)
    assert len(set(seeds.train)) == 50 and len(set(seeds.test)) == 40
    assert not set(seeds.train) & set(seeds.test)
    assert split_seeds(123, 50, 40) == seeds and split_seeds(124, 50, 40) != seeds
    assert split_seeds(123, 0, 0) == ((), ())
    seg = MQARSegment(vocab_size=100, num_examples=20)
    assert not torch.equal(seg.build(seeds.train[0]).inputs, seg.build(seeds.test[0]).inputs)
    for kwargs, match in [
        (dict(seed=-1, num_train=1, num_test=1), "seed"),
        (dict(seed=0, num_train=-1, num_test=1), "num_train"),
        (dict(seed=0, num_train=1, num_test=2.0), "num_test"),
    ]:
        with pytest.raises(ValueError, match=match):
            split_seeds(**kwargs)


# ------------------------------------------------------------------------------- associative recall


def _replay(config: RecallConfig, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    """Oracle: apply one example's writes to a dict (clean key → value, last write wins) and check every
    scored label, plus the layout around the queries."""
    tokens, targets = inputs.tolist(), labels.tolist()
    memory: dict[int, int] = {}
    for p in range(0, 2 * config.num_writes, 2):
        memory[config.clean_key(inputs[p]).item()] = tokens[p + 1]
    q0 = config.query_start
    query_pos = [q0 + 2 * j for j in range(config.num_queries)]
    assert [p for p, y in enumerate(targets) if y != IGNORE_INDEX] == query_pos
    for p in query_pos:
        assert targets[p] == memory[config.clean_key(inputs[p]).item()]
        if p + 1 < config.seq_len:
            assert tokens[p + 1] == targets[p], "the answer follows its query"
    assert all(tok == FILLER for tok in tokens[2 * config.num_writes : q0]), "gap"
    assert all(tok == FILLER for tok in tokens[q0 + 2 * config.num_queries :]), "trailing filler"


@pytest.mark.parametrize(
    "config",
    [
        RecallConfig(),
        RecallConfig(
            num_pairs=6,
            num_queries=4,
            collisions=3,
            distractors=5,
            key_noise=0.3,
            gap=7,
            num_keys=16,
            num_values=20,
            seq_len=48,
        ),
        RecallConfig(
            num_pairs=3,
            num_queries=3,
            collisions=3,
            distractors=0,
            key_noise=1.0,
            gap=0,
            num_keys=3,
            num_values=6,
            seq_len=17,
        ),  # seq_len = min_seq_len: the last answer is a label only
    ],
)
def test_recall_matches_replay_oracle(config):
    inputs, labels = config.build(num_examples=200, seed=1)
    assert inputs.shape == labels.shape == (200, config.seq_len) and inputs.dtype == labels.dtype == torch.int64
    assert inputs.min() >= 0 and inputs.max() < config.vocab_size
    for row in range(200):
        _replay(config, inputs[row], labels[row])


def test_recall_write_and_query_counts():
    """Per example: num_pairs + distractors distinct keys written, exactly `collisions` of them twice
    (both collided writes queried, the later value the target, the earlier one different), queried keys
    distinct, never-queried keys = unqueried pairs + distractors, one distinct value per write."""
    config = RecallConfig(
        num_pairs=6,
        num_queries=4,
        collisions=2,
        distractors=3,
        key_noise=0.5,
        gap=3,
        num_keys=12,
        num_values=16,
        seq_len=40,
    )
    inputs, labels = config.build(num_examples=300, seed=2)
    w, q0 = config.num_writes, config.query_start
    for row in range(300):
        write_keys = config.clean_key(inputs[row, 0 : 2 * w : 2]).tolist()
        write_values = inputs[row, 1 : 2 * w : 2].tolist()
        queried = config.clean_key(inputs[row, q0 : q0 + 2 * config.num_queries : 2]).tolist()
        assert all(v in config.value_tokens for v in write_values) and len(set(write_values)) == w
        assert len(set(write_keys)) == config.num_pairs + config.distractors
        twice = [key for key in set(write_keys) if write_keys.count(key) == 2]
        assert len(twice) == config.collisions and all(write_keys.count(key) <= 2 for key in write_keys)
        assert len(set(queried)) == config.num_queries and set(queried) <= set(write_keys)
        assert set(twice) <= set(queried)
        assert len(set(write_keys) - set(queried)) == config.num_pairs - config.num_queries + config.distractors
        for key in twice:
            first, last = [i for i, kk in enumerate(write_keys) if kk == key]
            target = labels[row, q0 + 2 * queried.index(key)].item()
            assert target == write_values[last] != write_values[first]


def test_recall_collided_keys_spread_over_query_order():
    """The collided key is a uniform pick among the queried ones: its rank in the query order is uniform
    (it is not always asked first)."""
    config = RecallConfig(num_pairs=4, num_queries=4, collisions=1, num_keys=8, num_values=8, seq_len=17)
    inputs, labels = config.build(num_examples=2000, seed=3)
    q_keys = inputs[:, config.query_start :: 2][:, : config.num_queries]
    write_keys = inputs[:, 0 : 2 * config.num_writes : 2]
    collided = torch.stack([row.bincount(minlength=9).argmax() for row in write_keys])
    rank = (q_keys == collided[:, None]).float().argmax(1)
    counts = torch.bincount(rank, minlength=4).double() / 2000
    assert (counts - 0.25).abs().max() < 0.05


def test_recall_key_noise_mapping():
    """Twin of key k is k + K; clean_key inverts it; the noise rate is key_noise, on writes and queries."""
    config = RecallConfig(
        num_keys=10, num_values=20, num_pairs=5, num_queries=5, collisions=2, key_noise=0.3, seq_len=40
    )
    keys = torch.arange(1, 11)
    assert torch.equal(config.noisy_twin(keys), keys + 10)
    assert torch.equal(config.clean_key(config.noisy_twin(keys)), keys)
    assert torch.equal(config.clean_key(keys), keys)
    assert list(config.noisy_key_tokens) == list(range(11, 21)) and config.value_tokens.start == 21
    assert config.vocab_size == 41
    with pytest.raises(ValueError, match="keys"):
        config.noisy_twin(torch.tensor([11]))
    with pytest.raises(ValueError, match="tokens"):
        config.clean_key(torch.tensor([21]))

    def key_tokens(c: RecallConfig, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q0 = c.query_start
        return x[:, 0 : 2 * c.num_writes : 2], x[:, q0 : q0 + 2 * c.num_queries : 2]

    for noise, expected in [(0.0, 0.0), (1.0, 1.0), (0.3, 0.3)]:
        c = dataclasses.replace(config, key_noise=noise)
        inputs, _ = c.build(num_examples=1000, seed=4)
        for occurrences in key_tokens(c, inputs):
            rate = (occurrences > c.num_keys).double().mean().item()
            assert abs(rate - expected) < 0.03


def test_recall_seeding_and_defaults():
    a = associative_recall(num_examples=50, seed=9, collisions=2, key_noise=0.2, distractors=4, gap=3)
    b = RecallConfig(collisions=2, key_noise=0.2, distractors=4, gap=3).build(num_examples=50, seed=9)
    c = associative_recall(num_examples=50, seed=10, collisions=2, key_noise=0.2, distractors=4, gap=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    defaults = {
        name: p.default
        for name, p in inspect.signature(associative_recall).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert defaults == {f.name: f.default for f in dataclasses.fields(RecallConfig)}


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(num_pairs=0), "num_pairs"),
        (dict(num_queries=0), "num_queries"),
        (dict(num_queries=9), "num_queries must be <= num_pairs"),
        (dict(collisions=5), "collisions must be <= num_queries"),
        (dict(collisions=-1), "collisions"),
        (dict(distractors=-1), "distractors"),
        (dict(key_noise=1.5), "key_noise"),
        (dict(key_noise=-0.1), "key_noise"),
        (dict(key_noise=float("nan")), "key_noise"),
        (dict(gap=-1), "gap"),
        (dict(gap=2.0), "gap"),
        (dict(num_keys=7), "num_keys must be >= num_pairs \\+ distractors = 8"),
        (dict(num_values=7), "num_values must be >= num_pairs \\+ distractors \\+ collisions = 8"),
        (dict(seq_len=22), "seq_len must be >= .* = 23"),
    ],
)
def test_recall_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        RecallConfig(**overrides)
    with pytest.raises(ValueError, match=match):
        associative_recall(num_examples=1, seed=0, **overrides)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0, seed=0), "num_examples"),
        (dict(num_examples=1, seed=-1), "seed"),
        (dict(num_examples=1, seed=2**32), "seed"),
    ],
)
def test_recall_build_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecallConfig().build(**kwargs)
