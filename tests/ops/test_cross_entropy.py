"""The chunked linear cross-entropy against ``F.cross_entropy`` of the materialised logits: loss and both
gradients, with ignored positions, chunk sizes that do not divide the rows, float32, float64 and bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probseq.ops.cross_entropy import linear_cross_entropy


def _case(rows=(3, 7), dim=5, vocab=11, dtype=torch.float64, seed=0, ignored=0.3):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*rows, dim, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(vocab, dim, generator=gen, dtype=dtype).requires_grad_()
    targets = torch.randint(0, vocab, rows, generator=gen)
    targets[torch.rand(rows, generator=gen) < ignored] = -100
    return hidden, weight, targets


def _reference(hidden, weight, targets):
    logits = (hidden @ weight.T).float() if hidden.dtype != torch.float64 else hidden @ weight.T
    return F.cross_entropy(logits.reshape(-1, weight.shape[0]), targets.reshape(-1), reduction="sum", ignore_index=-100)


def _grads(loss_fn, hidden, weight, targets, scale=1.0):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, targets)
    (scale * loss).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("rows", [1, 4, 21, None])
def test_matches_materialised_cross_entropy_float64(rows):
    hidden, weight, targets = _case()
    ours = _grads(lambda h, w, y: linear_cross_entropy(h, w, y, rows=rows), hidden, weight, targets, scale=0.7)
    ref = _grads(_reference, hidden, weight, targets, scale=0.7)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(ours[1:], ref[1:]):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_matches_materialised_cross_entropy_float32():
    hidden, weight, targets = _case(rows=(4, 33), dim=16, vocab=300, dtype=torch.float32, seed=1)
    ours = _grads(lambda h, w, y: linear_cross_entropy(h, w, y, rows=10), hidden, weight, targets)
    ref = _grads(_reference, hidden, weight, targets)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-4)
    for a, b in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradcheck():
    hidden, weight, targets = _case(rows=(2, 3), dim=3, vocab=5)
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, rows=2), (hidden, weight))


def test_only_the_inputs_that_need_a_gradient_get_one():
    hidden, weight, targets = _case()
    weight.requires_grad_(False)
    linear_cross_entropy(hidden, weight, targets).backward()
    assert hidden.grad is not None and weight.grad is None
    hidden, weight, targets = _case()
    hidden.requires_grad_(False)
    linear_cross_entropy(hidden, weight, targets).backward()
    assert weight.grad is not None and hidden.grad is None
    with torch.no_grad():  # no gradient is computed (needs_input_grad alone would still say so)
        assert linear_cross_entropy(*_case()).requires_grad is False
    from probseq.ops import cross_entropy

    seen = []
    real = cross_entropy._LinearCrossEntropy.apply
    cross_entropy._LinearCrossEntropy.apply = lambda *args: seen.append(args[-1]) or real(*args)
    try:
        with torch.no_grad():
            linear_cross_entropy(*_case())
        linear_cross_entropy(*_case())
    finally:
        cross_entropy._LinearCrossEntropy.apply = real
    assert seen == [False, True]


def test_nothing_supervised_gives_zero_loss_and_zero_gradients():
    hidden, weight, targets = _case(ignored=1.0)
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    assert loss.item() == 0.0
    assert not hidden.grad.any() and not weight.grad.any()


def test_ignored_positions_get_no_gradient():
    hidden, weight, targets = _case(ignored=0.5)
    linear_cross_entropy(hidden, weight, targets).backward()
    ignored = targets == -100
    assert ignored.any() and not hidden.grad[ignored].any() and hidden.grad[~ignored].abs().sum(-1).gt(0).all()


def test_bf16_autocast_follows_the_materialised_path():
    hidden, weight, targets = _case(rows=(2, 40), dim=32, vocab=500, dtype=torch.float32, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _grads(lambda h, w, y: linear_cross_entropy(h, w, y, rows=16), hidden, weight, targets)
        ref = _grads(_reference, hidden, weight, targets)
    assert ours[1].dtype == ours[2].dtype == torch.float32
    torch.testing.assert_close(ours[0], ref[0], rtol=2e-2, atol=0)
    for a, b in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


def test_double_backward_is_refused():
    hidden, weight, targets = _case()
    (grad,) = torch.autograd.grad(linear_cross_entropy(hidden, weight, targets), hidden, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once_differentiable|does not require grad"):
        grad.sum().backward()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h, w, y: linear_cross_entropy(h, w[:, :-1], y), "same D"),
        (lambda h, w, y: linear_cross_entropy(h, w, y[:, :-1]), "targets must be integer ids"),
        (lambda h, w, y: linear_cross_entropy(h, w, y.double()), "targets must be integer ids"),
        (lambda h, w, y: linear_cross_entropy(h, w, torch.full_like(y, 11)), r"in \[0, 11\)"),
        (lambda h, w, y: linear_cross_entropy(h, w, torch.full_like(y, -3)), r"got -3"),
        (lambda h, w, y: linear_cross_entropy(h, w, y, rows=0), "rows must be >= 1"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(*_case())
