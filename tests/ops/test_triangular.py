"""probseq.ops.triangular.solve_lower against torch's direct solve, for both memory layouts of the right-hand side."""

from __future__ import annotations

import pytest
import torch

from probseq.ops.triangular import solve_lower
from tests.helpers import assert_close


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("unitriangular", [False, True])
def test_solve_lower_matches_the_direct_solve(layout, transpose, unitriangular):
    gen = torch.Generator().manual_seed(0)
    lower = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64).tril() + 3 * torch.eye(5, dtype=torch.float64)
    rhs = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    if layout == "column-major":
        rhs = rhs.transpose(-1, -2).contiguous().transpose(-1, -2)
    matrix = lower.tril(-1) + torch.eye(5, dtype=torch.float64) if unitriangular else lower
    expected = torch.linalg.solve(matrix.transpose(-1, -2) if transpose else matrix, rhs)
    actual = solve_lower(lower, rhs, transpose=transpose, unitriangular=unitriangular)
    assert_close(actual, expected, 1e-12)
    if layout == "row-major":
        assert actual.is_contiguous()  # no column-major result to copy later


def test_solve_lower_gradients():
    gen = torch.Generator().manual_seed(1)
    lower = (torch.randn(2, 4, 4, generator=gen, dtype=torch.float64).tril() + 3 * torch.eye(4)).requires_grad_()
    rhs = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: solve_lower(a.tril(), b, unitriangular=False), (lower, rhs))
    assert torch.autograd.gradcheck(lambda a, b: solve_lower(a.tril(), b, transpose=True), (lower, rhs))
