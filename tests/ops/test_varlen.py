"""Variable-length packing: filtering packed sequences with ``cu_seqlens`` equals filtering each on its own."""

from __future__ import annotations

import pytest
import torch

from probseq.ops import BayesState, bayes_filter, superposition_filter
from tests.helpers import assert_close, bayes_inputs

FIELDS = ("q", "k", "v", "g", "beta", "gamma")


@pytest.mark.parametrize("retention", ["random", "zeros", "reset"])
@pytest.mark.parametrize("impl", ["reference", "recurrent", "chunked"])
def test_bayes_varlen_equals_separate_runs(impl, retention):
    """Every sequence's outputs, variances, final mean and covariance and gradients equal a separate run —
    with random γ, an all-zero γ tensor and the covariance reset (γ = None), whose padding must not reset
    the final covariance of a shorter sequence (an empty one keeps its P_0)."""
    lengths = [5, 0, 17, 1, 9]
    total = sum(lengths)
    x = bayes_inputs(1, total, 2, 6, 4, seed=5, with_state=False, regime="reset" if retention != "random" else "random")
    fields = FIELDS if retention != "reset" else FIELDS[:-1]
    gen = torch.Generator().manual_seed(0)
    states = BayesState(
        torch.randn(len(lengths), 2, 4, 6, dtype=torch.float64, generator=gen),
        torch.eye(6, dtype=torch.float64).expand(len(lengths), 2, 6, 6) * 0.5,
    )
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    leaves = {n: x[n].clone().requires_grad_() for n in fields}
    if retention == "reset":
        leaves["gamma"] = None
    packed = bayes_filter(
        **leaves,
        initial_state=states,
        output_final_state=True,
        output_variance=True,
        impl=impl,
        chunk_size=4,
        cu_seqlens=cu,
    )
    (packed.output.sum() + packed.state.mean.sum() + packed.variance.sum()).backward()
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone_leaves = {n: x[n][:, start:end].clone().requires_grad_() for n in fields}
        if retention == "reset":
            alone_leaves["gamma"] = None
        alone = bayes_filter(
            **alone_leaves,
            initial_state=BayesState(states.mean[i : i + 1], states.cov[i : i + 1]),
            output_final_state=True,
            output_variance=True,
            impl="reference",
        )
        assert_close(packed.output[:, start:end], alone.output, 1e-9, f"seq {i} output")
        assert_close(packed.variance[:, start:end], alone.variance, 1e-9, f"seq {i} variance")
        assert_close(packed.state.mean[i : i + 1], alone.state.mean, 1e-9, f"seq {i} mean")
        assert_close(packed.state.cov[i : i + 1], alone.state.cov, 1e-9, f"seq {i} cov")
        if end > start:
            (alone.output.sum() + alone.state.mean.sum() + alone.variance.sum()).backward()
            for n in fields:
                assert_close(leaves[n].grad[:, start:end], alone_leaves[n].grad, 1e-9, f"seq {i} d{n}")


def test_superposition_varlen_equals_separate_runs():
    lengths = [7, 12, 3]
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, sum(lengths), 2, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, sum(lengths), 2, 3, generator=gen, dtype=torch.float64)
    g = -torch.rand(1, sum(lengths), 2, 4, generator=gen, dtype=torch.float64)
    cu = torch.tensor([0, 7, 19, 22])
    packed = superposition_filter(q, k, v, g, output_final_state=True, cu_seqlens=cu, chunk_size=4)
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone = superposition_filter(
            q[:, start:end],
            k[:, start:end],
            v[:, start:end],
            g[:, start:end],
            output_final_state=True,
            impl="reference",
        )
        assert_close(packed.output[:, start:end], alone.output, 1e-9, f"seq {i}")
        assert_close(packed.state.mean[i : i + 1], alone.state.mean, 1e-9, f"seq {i} state")
