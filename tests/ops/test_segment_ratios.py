"""``segment_ratios`` (exp of the in-chunk segment sums with a written-out backward) against ``segsum(x).exp()``:
values and gradients, float32 and float64, gates of exactly 0 (``-inf``), and the gradient at γ ≈ 0, whose size
(~1e-15 before its 1/eps² factor) no cancellation may swamp."""

from __future__ import annotations

import torch

from probseq.ops.segsum import _SegmentRatios, log_retention, segment_ratios, segsum


def _log_gates(shape, dtype, seed=0, low=-2.0):
    gen = torch.Generator().manual_seed(seed)
    return (low * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def _value_and_grad(function, x, weights):
    x = x.detach().clone().requires_grad_()
    out = function(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grad


def test_float32_equals_the_masked_cumulative_sum():
    x = _log_gates((3, 4, 32), torch.float32)
    weights = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    new, new_grad = _value_and_grad(segment_ratios, x, weights)
    old, old_grad = _value_and_grad(lambda t: segsum(t).exp(), x, weights)
    exact, exact_grad = _value_and_grad(lambda t: segsum(t).exp(), x.double(), weights.double())
    assert torch.equal(new.triu(1), torch.zeros_like(new))  # zero above the diagonal
    assert torch.equal(new.diagonal(dim1=-2, dim2=-1), torch.ones(3, 4, 32))
    for value, grad in ((new, new_grad), (old, old_grad)):  # both as close to float64 as float32 allows
        assert (value.double() - exact).abs().max() < 1e-6
        assert (grad.double() - exact_grad).abs().max() < 1e-5 * exact_grad.abs().max()


def test_written_out_backward_gradcheck_and_gradgradcheck():
    x = _log_gates((2, 7), torch.float64, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(_SegmentRatios.apply, (x,))
    assert torch.autograd.gradgradcheck(_SegmentRatios.apply, (x,))
    assert segment_ratios(x).dtype == torch.float64  # float64 inputs take segsum itself (the reference precision)


def test_a_gate_of_zero():
    x = torch.tensor([[-0.1, float("-inf"), -0.2, -0.3, -0.05]], dtype=torch.float32)
    weights = torch.randn(1, 5, 5, generator=torch.Generator().manual_seed(3))
    new, new_grad = _value_and_grad(segment_ratios, x, weights)
    old, old_grad = _value_and_grad(lambda t: segsum(t).exp(), x, weights)
    assert torch.allclose(new, old, atol=1e-7) and new[0, 2, 0] == 0 and new[0, 1, 1] == 1
    assert torch.isfinite(new_grad).all() and torch.allclose(new_grad, old_grad, atol=1e-6)


def test_gradient_at_retention_zero_is_not_swamped():
    """γ ≡ 0 (floored at eps²) in the first half of a chunk, padding (γ = 1) after: the gradient into each γ_l equals
    the masked cumulative sum's (which sums only the ratios spanning l) elementwise — no O(1) term of the padded
    part may cancel into it (a difference of row and column sums would)."""
    retention = torch.cat([torch.zeros(2, 16), torch.ones(2, 16)], dim=-1)
    weights = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(4))

    def grad_into_retention(function):
        gamma = retention.clone().requires_grad_()
        out = function(0.5 * log_retention(gamma))
        (grad,) = torch.autograd.grad((out * weights).sum(), gamma)
        return grad.double()

    stable = grad_into_retention(lambda t: segsum(t).exp())
    new = grad_into_retention(segment_ratios)
    scale = stable[:, 1:16].abs()  # the γ = 0 half, ~1e-15 · 1/eps² (γ_0 enters no ratio: its gradient is 0)
    assert (scale > 1).all() and (new[:, 0] == 0).all()
    assert ((new[:, 1:16] - stable[:, 1:16]).abs() / scale).max() < 1e-4
