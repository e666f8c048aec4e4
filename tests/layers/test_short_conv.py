"""ShortConvolution: the channels-last shifted-sum form (and its written-out backward) against the depthwise
``F.conv1d`` it replaces — outputs, decoding states and every gradient, with a cache, packed sequences and T = 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probseq.layers.conv import ShortConvolution, causal_depthwise_conv


def _reference(conv: ShortConvolution, x, cache=None):
    """fla's ShortConvolution by definition: conv1d over [history (W), x], output at the last T positions."""
    n, t, d = x.shape
    w = conv.kernel_size[0]
    history = x.new_zeros(n, d, w) if cache is None else cache
    inputs = torch.cat([history, x.transpose(1, 2)], -1)
    y = F.conv1d(inputs[..., 1:], conv.weight, conv.bias, groups=d).transpose(1, 2)
    y = F.silu(y) if conv.activation else y
    return y, inputs[..., t : t + w]


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("with_cache", [False, True])
def test_matches_the_depthwise_conv1d_in_outputs_states_and_gradients(width, bias, activation, with_cache):
    torch.manual_seed(width)
    conv = ShortConvolution(6, width, bias=bias, activation=activation).double()
    x = torch.randn(3, 7, 6, dtype=torch.float64, requires_grad=True)
    cache = torch.randn(3, 6, width, dtype=torch.float64, requires_grad=True) if with_cache else None
    y, state = conv(x, cache=cache, output_final_state=True)
    ref_y, ref_state = _reference(conv, x, cache)
    torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, ref_state, rtol=0, atol=0)
    weights = torch.randn_like(y)
    leaves = [x, conv.weight, *([conv.bias] if bias else []), *([cache] if with_cache else [])]
    grads = torch.autograd.grad((y * weights).sum() + state.sum(), leaves)
    ref_grads = torch.autograd.grad((ref_y * weights).sum() + ref_state.sum(), leaves)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_float32_agrees_to_rounding_and_packed_sequences_restart():
    torch.manual_seed(0)
    conv = ShortConvolution(5, 4, bias=True)
    a, b = torch.randn(1, 6, 5), torch.randn(1, 3, 5)
    packed, _ = conv(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 6, 9]))
    for part, start in ((a, 0), (b, 6)):
        alone, _ = conv(part)
        torch.testing.assert_close(packed[:, start : start + part.shape[1]], alone, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(alone, _reference(conv, part)[0], rtol=1e-6, atol=1e-6)


def test_empty_input_returns_the_cache_as_state():
    conv = ShortConvolution(4, 3)
    cache = torch.randn(2, 4, 3)
    y, state = conv(torch.randn(2, 0, 4), cache=cache, output_final_state=True)
    assert y.shape == (2, 0, 4) and torch.equal(state, cache)


def test_written_out_backward_passes_gradcheck():
    torch.manual_seed(1)
    padded = torch.randn(2, 8, 3, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_depthwise_conv, (padded, taps, bias))
    assert torch.autograd.gradcheck(lambda p, w: causal_depthwise_conv(p, w), (padded, taps))
    with pytest.raises(ValueError, match="W - 1"):
        causal_depthwise_conv(padded[:, :2], taps)


def test_mixed_dtypes_give_each_leaf_a_gradient_of_its_own_dtype():
    """Under CPU autocast a bfloat16 input meets float32 weights: every gradient comes back in its leaf's dtype."""
    conv = ShortConvolution(4, 4, bias=True)
    x = torch.randn(2, 5, 4, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = conv(x)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == conv.bias.grad.dtype == torch.float32
    ref_y, _ = _reference(conv.double(), x.detach().double())
    torch.testing.assert_close(y.double(), ref_y, rtol=2e-2, atol=2e-2)
