"""The covariance scan's hand-written backward (probseq.ops.bayes.covariance_scan) against finite differences
and against autograd through the same loop written with plain ops (``scan_reference``, also its double backward)."""

from __future__ import annotations

import pytest
import torch

from probseq.ops.bayes.covariance_scan import covariance_scan, scan_reference
from tests.helpers import assert_close


def _inputs(chunks=3, batch=2, size=4, key_dim=3, dtype=torch.float64, seed=0):
    """Random scan inputs with the structure the chunked path gives them (a positive definite chunk matrix,
    gates in (0, 1], a covariance in (0, I]; writes small enough that every chunk's covariance stays positive
    definite)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen, dtype=dtype)  # noqa: E731
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    k_hat, rhs = 0.5 * randn(chunks, batch, size, key_dim), 0.3 * randn(chunks, batch, size, key_dim)
    cum_sqrt, tail_sqrt = 0.2 + rand(chunks, batch, size, 1), 0.2 + rand(chunks, batch, size, 1)
    root = randn(chunks, batch, size, size)
    b_base = root @ root.transpose(-1, -2) + size * torch.eye(size, dtype=dtype)
    ratio_sqrt = (0.3 + rand(chunks, batch, size, size)).tril()
    retention_chunk, reset_chunk = rand(chunks, batch, 1, 1), 0.5 + 0.5 * rand(chunks, batch, 1, 1)
    root = randn(batch, key_dim, key_dim)
    cov0 = torch.linalg.matrix_exp(-(root @ root.transpose(-1, -2)))  # symmetric, in (0, I]
    tensors = (k_hat, rhs, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0)
    return tuple(t.requires_grad_() for t in tensors)


def _loss(outputs, weights):
    """Σ ⟨output, weight⟩ over the outputs with a weight (``None``: left out, so its gradient is None)."""
    return sum((o * w).sum() for o, w in zip(outputs, weights) if w is not None)


def test_forward_matches_the_plain_loop():
    inputs = _inputs()
    *actual, info = covariance_scan(*inputs)
    for name, a, b in zip(["x", "pivots", "starts", "cov"], actual, scan_reference(*inputs)):
        assert_close(a, b, 1e-12, name)
    assert info.shape == (3, 2) and (info == 0).all()


@pytest.mark.parametrize("used", ["all", "x_and_cov", "cov_only"])
def test_backward_matches_autograd_of_the_plain_loop(used):
    inputs = _inputs(seed=1)
    gen = torch.Generator().manual_seed(2)
    expected_outputs = scan_reference(*inputs)
    mask = {"all": (1, 1, 1, 1), "x_and_cov": (1, 0, 0, 1), "cov_only": (0, 0, 0, 1)}[used]
    weights = [
        torch.randn(o.shape, generator=gen, dtype=o.dtype) if m else None for m, o in zip(mask, expected_outputs)
    ]
    expected = torch.autograd.grad(_loss(expected_outputs, weights), inputs)
    actual = torch.autograd.grad(_loss(covariance_scan(*inputs)[:4], weights), inputs)
    names = ["k_hat", "rhs", "cum_sqrt", "b_base", "ratio_sqrt", "tail_sqrt", "retention_chunk", "reset_chunk", "cov0"]
    for name, a, b in zip(names, actual, expected):
        assert_close(a, b, 1e-10, name)


def test_gradcheck():
    """Finite differences through symmetric parametrisations of the chunk matrix and the covariance (a
    Cholesky factorisation reads one triangle; its gradient is the symmetric one)."""
    inputs = _inputs(chunks=2, batch=1, size=3, key_dim=2, seed=3)

    def scan(k_hat, rhs, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0):
        symmetric = (b_base + b_base.transpose(-1, -2)) / 2, (cov0 + cov0.transpose(-1, -2)) / 2
        args = (k_hat, rhs, cum_sqrt, symmetric[0], ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, symmetric[1])
        return covariance_scan(*args)[:4]

    assert torch.autograd.gradcheck(scan, inputs)


def test_float32_backward_agrees_with_float64():
    inputs64 = _inputs(chunks=4, batch=3, size=8, key_dim=6, seed=4)
    inputs32 = tuple(t.detach().float().requires_grad_() for t in inputs64)
    weights = [torch.randn(o.shape, dtype=torch.float64) for o in scan_reference(*inputs64)]
    g64 = torch.autograd.grad(_loss(covariance_scan(*inputs64)[:4], weights), inputs64)
    g32 = torch.autograd.grad(_loss(covariance_scan(*inputs32)[:4], [w.float() for w in weights]), inputs32)
    for a, b in zip(g32, g64):
        assert_close(a.double(), b, 1e-4)


def test_double_backward_is_exact():
    """create_graph=True differentiates the plain loop: second derivatives agree with finite differences."""
    inputs = _inputs(chunks=2, batch=1, size=3, key_dim=2, seed=5)

    def scan(k_hat, rhs, cum_sqrt, b_base, ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, cov0):
        symmetric = (b_base + b_base.transpose(-1, -2)) / 2, (cov0 + cov0.transpose(-1, -2)) / 2
        args = (k_hat, rhs, cum_sqrt, symmetric[0], ratio_sqrt, tail_sqrt, retention_chunk, reset_chunk, symmetric[1])
        x, pivots, _, cov, _ = covariance_scan(*args)
        return x, pivots, cov

    assert torch.autograd.gradgradcheck(scan, inputs)


def test_bayes_filter_under_autocast_computes_in_float32():
    """The filter leaves autocast (its factorisations never run in half precision): the same result as without."""
    from probseq.ops import bayes_filter

    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 40, 2, 8, generator=gen) for _ in range(3))
    g, beta, gamma = (torch.rand(2, 40, 2, generator=gen) for _ in range(3))
    g = -g
    expected = bayes_filter(q, k, v, g, beta, gamma, impl="chunked", chunk_size=16).output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = bayes_filter(q, k, v, g, beta, gamma, impl="chunked", chunk_size=16).output
    assert actual.dtype == torch.float32
    assert_close(actual, expected, 1e-6)
