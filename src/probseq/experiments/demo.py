"""``probseq demo`` — a quick reproduction of the paper's claims on a laptop CPU.

Writes ``OUT/report.md`` (tables, plot links), ``OUT/results.json`` and the plots of each section:

1. *Unification*: every preset against an independent implementation of its named model.
2. *Exactness*: the Bayesian Layer's chunked filter against dense Gaussian conditioning.
3. *Closed-form retrieval dynamics and robustness*: the collision study (simulation vs theory).
4. *Uncertainty*: the predictive variance a small Bayesian model assigns to each token and head
   (``probseq uncertainty``; randomly initialised until a trained checkpoint exists).
5. *Efficiency*: the benchmark's ratio table, only with ``--bench`` (timings need an idle machine;
   ``make bench`` runs them on their own).

Each section's result is cached under ``OUT/cache``: an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from probseq import presets
from probseq.experiments.common import ResultCache, atomic_write_json, atomic_write_text, environment
from probseq.ops import bayes_filter, dense_conditioning, regression_design
from probseq.oracles import fla_references, longhorn_argmin, ssd_quadratic


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    bench: bool = False

DEMO_TEXT = ("The key to the blue box is 4. The key to the red box is 7. The key to the blue box is 9. "
             "Which key opens the blue box?")


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
        row("linear_attention", "superposition", "fla naive_recurrent_linear_attn",
            presets.linear_attention(q, k, v).output, fla["linear_attention"](q, k, v)[0])
        row("simple_gla", "superposition", "fla naive_recurrent_simple_gla",
            presets.simple_gla(q, k, v, g).output, fla["simple_gla"](q, k, v, g)[0])
        row("gla", "superposition", "fla naive_recurrent_gla", presets.gla(q, k, v, gk).output,
            fla["gla"](q, k, v, gk)[0])
        row("deltanet", "regression, γ = 0", "fla delta_rule_recurrence", presets.deltanet(qn, kn, v, beta).output,
            fla["deltanet"](*(x.transpose(1, 2) for x in (qn, kn, v)), beta.transpose(1, 2))[0].transpose(1, 2))
        row("gated_deltanet", "regression, γ = 0", "fla naive_recurrent_gated_delta_rule",
            presets.gated_deltanet(qn, kn, v, g, beta).output, fla["gated_deltanet"](qn, kn, v, beta, g)[0])
    dt = F.softplus(randn(b, t, h) - 1)
    A = -torch.exp(randn(h) * 0.5)
    row("mamba2", "superposition", "SSD quadratic form (probseq.oracles)", presets.mamba2(v, dt, A, k, q).output,
        ssd_quadratic(v, dt, A, k, q)[0])
    beta_raw = torch.rand(b, t, h, generator=gen) * 3 + 0.01
    row("longhorn", "regression, γ = 0", "online-regression argmin (probseq.oracles)",
        presets.longhorn(q, k, v, beta_raw).output, longhorn_argmin(q, k, v, beta_raw, kd ** -0.5)[0])
    return rows


def exactness_rows(seed: int = 0) -> list[dict]:
    """The chunked Bayesian Layer (float64) against dense conditioning of its design model."""
    gen = torch.Generator().manual_seed(seed)
    b, t, h, kd, vd = 2, 10, 2, 4, 3
    f64 = dict(generator=gen, dtype=torch.float64)
    q, k, v = torch.randn(b, t, h, kd, **f64), torch.randn(b, t, h, kd, **f64), torch.randn(b, t, h, vd, **f64)
    rows = []
    for label, gamma in [("γ ~ U(0, 1)", torch.rand(b, t, h, **f64)), ("γ = 1 (RLS)", torch.ones(b, t, h, dtype=torch.float64)),
                         ("γ = 0 (Gated DeltaNet)", torch.zeros(b, t, h, dtype=torch.float64))]:
        g, beta = -torch.rand(b, t, h, **f64) * 0.3, torch.rand(b, t, h, **f64) * 0.9 + 0.05
        design = regression_design(g, beta, gamma, scale=kd ** -0.5)
        dense = dense_conditioning(design, q, k, v)
        ours = bayes_filter(q, k, v, g, beta, gamma, output_final_state=True, output_variance=True, impl="chunked",
                            chunk_size=4)
        rows.append(dict(case=label, output=_rel(ours.output, dense.output), variance=_rel(ours.variance, dense.variance),
                         mean=_rel(ours.state.mean, dense.state.mean), cov=_rel(ours.state.cov, dense.state.cov)))
    return rows


def run_demo(config: DemoConfig, out: str | Path) -> dict:
    from probseq import bench
    from probseq.experiments import collision, uncertainty

    out = Path(out)
    cache = ResultCache(out, config)
    started = time.perf_counter()
    sections = {}
    for name, compute in [
        ("unification", lambda: unification_rows(config.seed)),
        ("exactness", lambda: exactness_rows(config.seed)),
        ("collision", lambda: collision.run_collision(
            dataclasses.replace(collision.PRESETS["quick"], seed=config.seed), out / "collision")),
        ("uncertainty", lambda: uncertainty.run_uncertainty(
            uncertainty.UncertaintyConfig(text=DEMO_TEXT, seed=config.seed), out / "uncertainty")),
        ("bench", (lambda: bench.run_bench(bench.PRESETS["quick"])) if config.bench else None),
    ]:
        if compute is None:
            continue
        result = cache.get(name)
        if result is None:
            print(f"[demo] {name} ...", file=sys.stderr)
            result = compute()
            cache.put(name, result)
        sections[name] = result
    results = {"config": dataclasses.asdict(config), "environment": environment(), "sections": sections,
               "collision_plots": sorted(p.name for p in (out / "collision").glob("*.png")),
               "seconds": time.perf_counter() - started}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", report(results))
    return results


def report(results: dict) -> str:
    from probseq import bench
    from probseq.experiments import collision

    s = results["sections"]
    env = results["environment"]
    lines = ["# probseq demo — Memory by Design: Probabilistic Sequence Layers", "",
             f"torch {env['torch']}, {env['cpu_count']} CPUs, {env['torch_threads']} threads; "
             f"1-minute load average at the end {env['load_average_1min'] or float('nan'):.2f}. "
             "Reproduce with `make demo`.", ""]
    lines += ["## Claims and where they are reproduced", "",
              "| # | claim | here |", "|---|---|---|",
              "| 1 | design model → exact Bayesian filter → readout | §2 (dense conditioning) and `probseq.design` |",
              "| 2 | Bayesian Layer: mean + covariance, predictive variance | §2, §3 |",
              "| 3 | linear attention, GLA, Mamba-2/SSD are exact filters of one design | §1 |",
              "| 4 | DeltaNet, Gated DeltaNet, Longhorn are covariance-reset reductions | §1 |",
              "| 5 | closed-form retrieval dynamics, verified empirically | §3 |",
              "| 6 | robustness beyond the training regime | §3 (collision study); learned recall and MQAR: not yet |",
              "| 7 | distillation into Gated DeltaNet, RULER | not yet |",
              "| 8 | efficient: chunk-parallel training, constant-memory decoding | §5 with `--bench`; `make bench` |", ""]
    lines += ["## 1. Unification: every preset is its named model", "",
              "Relative error of the output, float32 preset vs the independent implementation (T = 64).", "",
              "| preset | design | independent implementation | rel. error |", "|---|---|---|---:|"]
    lines += [f"| `{r['preset']}` | {r['design']} | {r['oracle']} | {r['rel_error']:.1e} |" for r in s["unification"]]
    lines += ["", "## 2. The Bayesian Layer is the exact filter of its design model", "",
              "Chunked filter (float64, C = 4, T = 10) against one dense Gaussian conditioning of the joint "
              "model (no recursion); relative errors.", "",
              "| case | output | variance | M_T | P_T |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['output']:.1e} | {r['variance']:.1e} | {r['mean']:.1e} | {r['cov']:.1e} |"
              for r in s["exactness"]]
    lines += ["", "## 3. Closed-form retrieval dynamics vs simulation (collision study)", "",
              collision.format_table(s["collision"]), ""]
    lines += [f"![{name}](collision/{name})" for name in results["collision_plots"]]
    if "uncertainty" in s:
        u = s["uncertainty"]
        lines += ["", "## 4. The Bayesian Layer's predictive variance, per token and head", "",
                  f"{u['title'].splitlines()[-1]}: `probseq uncertainty --text \"...\" --out DIR`. Each row is one "
                  "head of one Bayesian layer, each column a token; the variance `q̃ᵀ P q̃` of the retrieved "
                  "association — what no attention layer can show.", "",
                  "![predictive variance](uncertainty/variance.png)"]
    if "bench" in s:
        lines += ["", "## 5. Efficiency (`probseq bench --preset quick`)", "", bench.format_tables(s["bench"])]
    lines += ["", f"Total time: {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="quick reproduction of the paper's claims on CPU",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench", action="store_true",
                        help="add the benchmark section (minutes; timings need an idle machine)")
    parser.set_defaults(run=_run_cli)


def _run_cli(args) -> int:
    results = run_demo(DemoConfig(seed=args.seed, bench=args.bench), args.out)
    print(report(results))
    print(f"wrote {Path(args.out) / 'report.md'}")
    return 0
