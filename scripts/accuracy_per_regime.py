"""Float32 accuracy of every form per gate regime, against the float64 recurrence (docs/numerics.md).

Usage: ``.venv/bin/python scripts/accuracy_per_regime.py`` — prints the markdown table quoted in
docs/numerics.md ("Accuracy per regime") and the README. B = 1, H = 2, T = 2048, K = V = 16, unit keys,
seed 0; the relative error is ``‖x − x_ref‖ / ‖x_ref‖`` of the outputs and of the final mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probseq.ops import bayes_filter

T, H, K = 2048, 2, 16


def regimes(gen: torch.Generator) -> dict[str, dict]:
    shape = (1, T, H)
    rand = lambda: torch.rand(shape, generator=gen)  # noqa: E731
    ones = torch.ones(shape)
    return {
        "random gates (γ, β ~ U, α ≈ 0.98)": dict(g=-0.02 * rand(), beta=rand(), gamma=rand()),
        "reset (Gated DeltaNet, γ = None)": dict(g=-0.02 * rand(), beta=rand(), gamma=None),
        "near RLS (γ = 0.999, β ∈ [0.5, 1])": dict(g=None, beta=0.5 + 0.5 * rand(), gamma=0.999 * ones),
        "RLS, γ = β = 1, r_min = 1e-4": dict(g=None, beta=ones, gamma=ones),
        "RLS, γ = β = 1, r_min = 1e-5": dict(g=None, beta=ones, gamma=ones, r_min=1e-5),
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, T, H, K, generator=gen)
    k = F.normalize(torch.randn(1, T, H, K, generator=gen), dim=-1)
    v = torch.randn(1, T, H, K, generator=gen)
    forms = [
        ("recurrent", dict(impl="recurrent")),
        ("chunked C=64", dict(impl="chunked")),
        ("chunked C=16", dict(impl="chunked", chunk_size=16)),
        ("chunked C=64, float64 covariance path", dict(impl="chunked", covariance_dtype=torch.float64)),
    ]
    print("| regime | form | output rel. error | final mean rel. error |")
    print("|---|---|---:|---:|")
    for name, gates in regimes(gen).items():
        r_min = gates.pop("r_min", 1e-4)
        double = {n: None if x is None else x.double() for n, x in gates.items()}
        ref = bayes_filter(
            q.double(), k.double(), v.double(), **double, r_min=r_min, impl="recurrent", output_final_state=True
        )
        for form, kwargs in forms:
            with torch.no_grad():
                out = bayes_filter(q, k, v, **gates, r_min=r_min, output_final_state=True, **kwargs)
            print(
                f"| {name} | {form} | {rel(out.output, ref.output):.1e} | {rel(out.state.mean, ref.state.mean):.1e} |"
            )


if __name__ == "__main__":
    main()
