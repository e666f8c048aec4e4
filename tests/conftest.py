"""Shared test helpers: random inputs in the library's layout, relative errors, tolerance table."""

from __future__ import annotations

import re
import warnings
import zlib

import pytest
import torch
import torch.nn.functional as F

from probseq.ops import BayesState

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine, where a second OpenMP thread waiting for a busy core only slows them
    down: one intra-op thread for a test module (its module-scoped fixtures included), restored afterwards. A file
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(autouse=True)
def _quiet_fla():
    warnings.filterwarnings("ignore", message=".*Triton is not supported.*")
    warnings.filterwarnings("ignore", message=".*roll back to CPU.*")
