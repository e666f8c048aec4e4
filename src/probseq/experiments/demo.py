"""The demo's two no-training checks, used by ``probseq reproduce`` (``make demo``):

1. *Unification* (:func:`unification_rows`): every preset against an independent implementation of its
   named model.
2. *Exactness* (:func:`exactness_rows`): the Bayesian Layer's chunked filter against dense Gaussian
   conditioning.

``probseq demo`` is an alias of ``probseq reproduce --preset quick`` (:mod:`probseq.experiments.reproduce`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probseq import presets
from probseq.ops import bayes_filter, dense_conditioning, regression_design
from probseq.oracles import fla_references, longhorn_argmin, ssd_quadratic


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def unification_rows(seed: int = 0) -> list[dict]:
    """Each preset (float32, chunked) against an independent implementation of its named model."""
    gen = torch.Generator().manual_seed(seed)
    b, t, h, kd, vd = 2, 64, 2, 16, 16

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = randn(b, t, h, kd), randn(b, t, h, kd), randn(b, t, h, vd)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    g = F.logsigmoid(randn(b, t, h) + 3)
    gk = F.logsigmoid(randn(b, t, h, kd) + 3)
    beta = torch.rand(b, t, h, generator=gen)
    rows = []

    def row(name, design, oracle, ours, theirs):
        rows.append(dict(preset=name, design=design, oracle=oracle, rel_error=_rel(ours, theirs)))

    fla = fla_references()
    if fla is not None:
        row(
            "linear_attention",
            "superposition",
            "fla naive_recurrent_linear_attn",
            presets.linear_attention(q, k, v).output,
            fla["linear_attention"](q, k, v)[0],
        )
        row(
            "simple_gla",
            "superposition",
            "fla naive_recurrent_simple_gla",
            presets.simple_gla(q, k, v, g).output,
            fla["simple_gla"](q, k, v, g)[0],
        )
        row(
            "gla",
            "superposition",
            "fla naive_recurrent_gla",
            presets.gla(q, k, v, gk).output,
            fla["gla"](q, k, v, gk)[0],
        )
        row(
            "deltanet",
            "regression, γ = 0",
            "fla delta_rule_recurrence",
            presets.deltanet(qn, kn, v, beta).output,
            fla["deltanet"](*(x.transpose(1, 2) for x in (qn, kn, v)), beta.transpose(1, 2))[0].transpose(1, 2),
        )
        row(
            "gated_deltanet",
            "regression, γ = 0",
            "fla naive_recurrent_gated_delta_rule",
            presets.gated_deltanet(qn, kn, v, g, beta).output,
            fla["gated_deltanet"](qn, kn, v, beta, g)[0],
        )
    dt = F.softplus(randn(b, t, h) - 1)
    A = -torch.exp(randn(h) * 0.5)
    row(
        "mamba2",
        "superposition",
        "SSD quadratic form (probseq.oracles)",
        presets.mamba2(v, dt, A, k, q).output,
        ssd_quadratic(v, dt, A, k, q)[0],
    )
    beta_raw = torch.rand(b, t, h, generator=gen) * 3 + 0.01
    row(
        "longhorn",
        "regression, γ = 0",
        "online-regression argmin (probseq.oracles)",
        presets.longhorn(q, k, v, beta_raw).output,
        longhorn_argmin(q, k, v, beta_raw, kd**-0.5)[0],
    )
    return rows


def exactness_rows(seed: int = 0) -> list[dict]:
    """The chunked Bayesian Layer (float64) against dense conditioning of its design model."""
    gen = torch.Generator().manual_seed(seed)
    b, t, h, kd, vd = 2, 10, 2, 4, 3
    f64 = dict(generator=gen, dtype=torch.float64)
    q, k, v = torch.randn(b, t, h, kd, **f64), torch.randn(b, t, h, kd, **f64), torch.randn(b, t, h, vd, **f64)
    rows = []
    for label, gamma in [
        ("γ ~ U(0, 1)", torch.rand(b, t, h, **f64)),
        ("γ = 1 (RLS)", torch.ones(b, t, h, dtype=torch.float64)),
        ("γ = 0 (Gated DeltaNet)", torch.zeros(b, t, h, dtype=torch.float64)),
    ]:
        g, beta = -torch.rand(b, t, h, **f64) * 0.3, torch.rand(b, t, h, **f64) * 0.9 + 0.05
        design = regression_design(g, beta, gamma, scale=kd**-0.5)
        dense = dense_conditioning(design, q, k, v)
        ours = bayes_filter(
            q, k, v, g, beta, gamma, output_final_state=True, output_variance=True, impl="chunked", chunk_size=4
        )
        rows.append(
            dict(
                case=label,
                output=_rel(ours.output, dense.output),
                variance=_rel(ours.variance, dense.variance),
                mean=_rel(ours.state.mean, dense.state.mean),
                cov=_rel(ours.state.cov, dense.state.cov),
            )
        )
    return rows
