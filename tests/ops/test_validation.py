"""Bad input is a clear ValueError naming the argument and the expected shape or range (docs/numerics.md)."""

from __future__ import annotations

import pytest
import torch

from probseq import presets
from probseq.ops import BayesState, bayes_filter, bayes_step, superposition_filter
from tests.helpers import FIELDS, bayes_inputs


def _call(**changes):
    x = {n: bayes_inputs(2, 5, 3, 4, 2, seed=0, with_state=False)[n] for n in FIELDS}
    x.update(changes)
    return bayes_filter(**x)


X = bayes_inputs(2, 5, 3, 4, 2, seed=0, with_state=False)


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(k=X["k"][0]), r"k must have shape \[B, T, H, K\]"),
        (dict(q=X["q"][..., :3]), r"q must have the shape of k"),
        (dict(v=X["v"][:, :4]), r"v must have shape \[B, T, H, V\]"),
        (dict(g=X["g"][:, :4]), r"g \(log decay\) must have shape \[B, T, H\] = \[2, 5, 3\]"),
        (dict(beta=X["beta"][..., None]), r"beta must have shape \[B, T, H\]"),
        (dict(gamma=X["gamma"].mT), r"gamma \(certainty retention\) must have shape"),
        (dict(g=X["g"].abs() + 0.1), r"g \(log decay\) must lie in \(-inf, 0\]"),
        (dict(beta=X["beta"] - 1.0), r"beta must lie in \[0, 1\]"),
        (dict(beta=X["beta"] + 1.0), r"beta must lie in \[0, 1\]"),
        (dict(gamma=X["gamma"] - 1.0), r"gamma \(certainty retention\) must lie in \[0, 1\]"),
        (dict(gamma=X["gamma"] * float("nan")), r"gamma \(certainty retention\) must lie in \[0, 1\]"),
        (dict(q=X["q"].long()), r"q must have a floating dtype"),
        (dict(impl="fast"), r"impl must be one of"),
        (dict(chunk_size=0), r"chunk_size must be a positive int"),
        (dict(mean_chunk_size=2.5), r"mean_chunk_size must be a positive int"),
        (dict(mean_chunk_size=True), r"mean_chunk_size must be a positive int"),
        (dict(scale=-1.0), r"scale must be a finite float > 0"),
        (dict(r_min=-1.0), r"r_min must be a finite float >= 0"),
        (
            dict(initial_state=torch.zeros(2, 3, 4, 2)),
            r"initial_state.mean must have shape \[B, H, V, K\] = \[2, 3, 2, 4\]",
        ),
        (
            dict(initial_state=BayesState(torch.zeros(2, 3, 2, 4), torch.zeros(2, 3, 4))),
            r"initial_state.cov must have shape",
        ),
        (
            dict(
                initial_state=BayesState(
                    torch.zeros(2, 3, 2, 4, dtype=torch.float64),
                    2 * torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4),
                )
            ),
            r"initial_state.cov must be a covariance within \[0, I\]",
        ),
        (dict(cu_seqlens=torch.tensor([0, 5])), r"cu_seqlens requires packed inputs with B == 1"),
    ],
)
def test_bayes_filter_rejects(changes, match):
    with pytest.raises(ValueError, match=match):
        _call(**changes)


def test_cu_seqlens_checks():
    x = {n: bayes_inputs(1, 6, 1, 4, 2, seed=0, with_state=False)[n] for n in FIELDS}
    for cu, match in [
        (torch.tensor([0, 4]), "end at T = 6"),
        (torch.tensor([0, 4, 2, 6]), "nondecreasing"),
        (torch.tensor([0.0, 6.0]), "integer tensor"),
    ]:
        with pytest.raises(ValueError, match=match):
            bayes_filter(**x, cu_seqlens=cu)


def test_asymmetric_initial_covariance_is_symmetrised():
    x = bayes_inputs(1, 8, 1, 4, 2, seed=1)
    mean, cov = x["initial_state"]
    skew = torch.zeros_like(cov)
    skew[..., 0, 1], skew[..., 1, 0] = 1e-3, -1e-3
    a = bayes_filter(**{n: x[n] for n in FIELDS}, initial_state=BayesState(mean, cov + skew), output_final_state=True)
    b = bayes_filter(**{n: x[n] for n in FIELDS}, initial_state=BayesState(mean, cov), output_final_state=True)
    assert torch.equal(a.output, b.output)


def test_step_and_superposition_reject():
    x = bayes_inputs(2, 1, 3, 4, 2, seed=0, with_state=False)
    q, k, v, g, beta, gamma = (x[n][:, 0] for n in FIELDS)
    with pytest.raises(ValueError, match=r"k must have shape \[B, H, K\]"):
        bayes_step(q, x["k"], v, g, beta, gamma, None)
    with pytest.raises(ValueError, match=r"gamma must have shape \[B, H\]"):
        bayes_step(q, k, v, g, beta, gamma[:, :2], None)
    with pytest.raises(ValueError, match=r"state.mean must have shape"):
        bayes_step(q, k, v, g, beta, gamma, BayesState(torch.zeros(1, 3, 2, 4), None))
    with pytest.raises(ValueError, match=r"beta \(evidence weight\) must lie in \[0, inf\]"):
        superposition_filter(x["q"], x["k"], x["v"], beta=-x["beta"])
    with pytest.raises(ValueError, match=r"gamma \(certainty retention\) applies to regression designs only"):
        from probseq.design import DesignModel, LinearReadout, MatrixNormalPrior, MemoryDynamics, SuperpositionWrite
        from probseq.ops import run_filter

        run_filter(
            DesignModel(
                MatrixNormalPrior(), MemoryDynamics(None, x["gamma"]), SuperpositionWrite(), LinearReadout(1.0)
            ),
            x["q"],
            x["k"],
            x["v"],
        )
    with pytest.raises(ValueError, match=r"dt must lie in \(0, inf\]"):
        presets.mamba2(x["v"], -x["beta"], -torch.ones(3), x["k"], x["q"])
    with pytest.raises(ValueError, match=r"A must have shape \[H\]"):
        presets.mamba2(x["v"], x["beta"], -torch.ones(2), x["k"], x["q"])
