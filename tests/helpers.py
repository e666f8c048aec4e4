"""Shared test helpers (not fixtures; those are in tests/conftest.py): the repository root, the tolerance table,
random inputs in the library's layout, relative errors, and the tiny models, configs, corpora and command lines that
several test files build. Tests import what they use: ``from tests.helpers import assert_close``."""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from probseq.ops import BayesState

if TYPE_CHECKING:
    from probseq.data.corpus import CorpusPaths
    from probseq.models import ProbSeqConfig, ProbSeqForCausalLM
    from probseq.train import TrainConfig

#: The repository's root (the folder holding src/, tests/, docs/, results/ and scripts/).
REPO = Path(__file__).resolve().parents[1]

# One tolerance table (docs/numerics.md, "How the tests compare numbers"): relative error of outputs, states and
# gradients vs a float64 reference. Quantities summed over time get the same bound: the relative error does not grow
# with T
# at the lengths tested here.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}

#: Names of documents outside the repository that citations once used (spelt in lower case here, so that a
#: case-sensitive grep for them over the repository finds only what is left to fix).
OUTSIDE_DOCUMENTS = re.compile(
    r"\b(" + "|".join(name.upper() for name in ("spec", "architecture", "conventions")) + r")\b"
)

#: The filter inputs of :func:`bayes_inputs`, in the order of ``bayes_filter``'s and ``bayes_step``'s arguments.
FIELDS = ("q", "k", "v", "g", "beta", "gamma")


# ------------------------------------------------------------------------------------------ numbers


def stable_seed(*parts) -> int:
    """A seed from test parameters that does not change with ``PYTHONHASHSEED`` (unlike ``hash``)."""
    return zlib.crc32(repr(parts).encode()) % 1000


def rel_err(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-6) -> float:
    """``‖a − e‖ / max(‖e‖, floor)`` in float64 (the floor keeps exactly-zero expectations meaningful);
    NaN or Inf anywhere counts as an infinite error."""
    actual, expected = actual.detach().double(), expected.detach().double()
    if not torch.isfinite(actual).all():
        return float("inf")
    return ((actual - expected).norm() / expected.norm().clamp_min(floor)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


# ------------------------------------------------------------------------------------------ filter inputs


def random_cov(batch: int, heads: int, key_dim: int, dtype=torch.float64, generator=None) -> torch.Tensor:
    """A covariance strictly inside (0, I): (I + A Aᵀ)⁻¹."""
    a = torch.randn(batch, heads, key_dim, key_dim, dtype=torch.float64, generator=generator)
    return torch.linalg.inv(torch.eye(key_dim, dtype=torch.float64) + a @ a.transpose(-1, -2)).to(dtype)


def bayes_inputs(
    batch=2,
    length=37,
    heads=2,
    key_dim=8,
    value_dim=6,
    *,
    dtype=torch.float64,
    seed=0,
    regime="random",
    unit_keys=True,
    with_state=True,
):
    """Random Bayesian-layer inputs; ``regime`` picks the gates.

    Returns:
        dict with q, k, v [B,T,H,·], g, beta, gamma [B,T,H] and initial_state (or None).
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, length, heads)

    def rand(*size):
        return torch.rand(*size, generator=gen, dtype=torch.float64)

    q = torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(*shape, key_dim, generator=gen, dtype=torch.float64)
    k = F.normalize(k, dim=-1) if unit_keys else k
    v = torch.randn(*shape, value_dim, generator=gen, dtype=torch.float64)
    g = -rand(*shape) * 0.5
    beta = rand(*shape) * 0.9 + 0.05
    gamma = rand(*shape)
    if regime == "retain":  # near recursive least squares
        g, gamma, beta = -rand(*shape) * 0.01, 0.99 + 0.01 * rand(*shape), 0.5 + 0.5 * rand(*shape)
    elif regime == "reset":
        gamma = torch.zeros(shape, dtype=torch.float64)
    elif regime == "mixed":  # exact zeros and ones in the gates
        gamma = torch.where(rand(*shape) < 0.3, torch.zeros(()), torch.where(rand(*shape) < 0.3, torch.ones(()), gamma))
        g = torch.where(rand(*shape) < 0.2, torch.zeros(()), g)
    state = None
    if with_state:
        state = BayesState(
            torch.randn(batch, heads, value_dim, key_dim, generator=gen, dtype=torch.float64),
            random_cov(batch, heads, key_dim, generator=gen),
        )
    out = dict(q=q, k=k, v=v, g=g, beta=beta, gamma=gamma, initial_state=state)
    return {name: _cast(x, dtype) for name, x in out.items()}


def _cast(x, dtype):
    if x is None:
        return None
    if isinstance(x, BayesState):
        return BayesState(*(t.to(torch.promote_types(dtype, torch.float32)) for t in x))
    return x.to(dtype)


# ------------------------------------------------------------------------------------------ layers and models


class DictCache:
    """The minimal cache protocol of probseq.layers.state (the models' ProbSeqCache is tested elsewhere): each layer's
    state, and how many tokens each layer has seen."""

    def __init__(self):
        self.states, self.seen = {}, {}

    def get_layer_state(self, layer_idx):
        return self.states.get(layer_idx)

    def update_layer_state(self, layer_idx, state, num_tokens):
        self.states[layer_idx] = state
        self.seen[layer_idx] = self.seen.get(layer_idx, 0) + num_tokens


#: Vocabulary size and padding id of :func:`tiny_lm`.
TINY_LM_VOCAB, TINY_LM_PAD = 61, 0


def tiny_lm_kwargs(case: str = "bayesian", **overrides) -> dict:
    """A tiny ProbSeqConfig's arguments: ``case`` is a mixer name, or ``"hybrid"`` (Bayesian layers with attention
    every second layer)."""
    kwargs = dict(
        vocab_size=TINY_LM_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=8,
        expand_v=1.0,
        intermediate_size=48,
        retention_init=0.5,
        state_size=8,
        attn_num_heads=4,
        attn_num_kv_heads=2,
        chunk_size=8,
        pad_token_id=TINY_LM_PAD,
        bos_token_id=None,
        eos_token_id=None,
    )
    if case == "hybrid":
        kwargs.update(mixer="bayesian", attn_every=2)
    else:
        kwargs.update(mixer=case)
    kwargs.update(overrides)
    return kwargs


def tiny_lm_config(case: str = "bayesian", **overrides) -> ProbSeqConfig:
    from probseq.models import ProbSeqConfig

    return ProbSeqConfig(**tiny_lm_kwargs(case, **overrides))


def tiny_lm(case: str = "bayesian", seed: int = 0, **overrides) -> ProbSeqForCausalLM:
    """A tiny ProbSeqForCausalLM (:func:`tiny_lm_config`), initialised from ``seed``, in eval mode."""
    from probseq.models import ProbSeqForCausalLM

    torch.manual_seed(seed)
    return ProbSeqForCausalLM(tiny_lm_config(case, **overrides)).eval()


# ------------------------------------------------------------------------------------------ training and commands


def tiny_train_config(**changes) -> TrainConfig:
    """A six-step MQAR training run of a Bayesian Layer model (d_model 16, one thread, no progress bar)."""
    from probseq.train import ModelSpec, MQARData, MQARSplit, TrainConfig

    config = TrainConfig(
        model=ModelSpec(mixer="bayesian", d_model=16),
        data=MQARData(
            vocab_size=64, train=(MQARSplit(32, 4, 32),), valid=(MQARSplit(32, 4, 16),), test=(MQARSplit(48, 6, 16),)
        ),
        learning_rate=1e-2,
        warmup=0.25,
        max_steps=6,
        batch_size=8,
        eval_batch_size=16,
        seed=5,
        num_threads=1,
        progress=False,
        logging_steps=1,
    )
    return dataclasses.replace(config, **changes)


def quick_preset_argv(command: str, out, overrides: list[str]) -> list[str]:
    """``probseq <command> --preset quick --out <out> --set <override> …`` as ``cli.main``'s argument list."""
    return [command, "--preset", "quick", "--out", str(out), *(arg for o in overrides for arg in ("--set", o))]


def write_fake_corpus(root: Path) -> CorpusPaths:
    """A small corpus in the real layout (jsonl files + manifest): sentences and generated retrieval text."""
    from probseq.data import corpus as corpus_lib
    from probseq.data import retrieval_documents

    texts = {
        "kjv": [
            f"In the beginning God created the heaven and the earth, chapter {i}. And the earth was without "
            f"form, and void; and darkness was upon the face of the deep. " * 2
            for i in range(120)
        ],
        "python_docs": [
            f"The function number {i} returns a list of values. Call it with a key and a default; it "
            "raises KeyError when the key is missing and returns None otherwise. " * 2
            for i in range(120)
        ],
        "retrieval": [text for _, text in retrieval_documents(7, 60_000)],
    }
    paths = corpus_lib.corpus_paths(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"version": corpus_lib.CORPUS_VERSION, "sources": {}, "files": {}}
    for name, docs in texts.items():
        data = "".join(json.dumps({"source": name, "id": str(i), "text": t}) + "\n" for i, t in enumerate(docs))
        paths.files[name].write_bytes(data.encode())
        manifest["files"][name] = {
            "documents": len(docs),
            "characters": sum(map(len, docs)),
            "bytes": len(data.encode()),
        }
    paths.manifest.write_text(json.dumps(manifest))
    return paths
