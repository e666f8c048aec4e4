"""Collision study (the paper's collision study): what each memory design retrieves when writes collide.

No training. Every model reads with the key it wants to retrieve (``q = k``, ``scale = 1``) from unit
keys, and the error is per value channel, ``E‖o − v‖² / V``. Values are uniform on the sphere of radius
``√V``: zero mean, ``E v vᵀ = I`` (all the theory assumes), and ``‖v‖² = V`` exactly, which removes the
``χ²`` fluctuation of ``‖v‖²`` that every point of a curve would otherwise share. Trials are the batch
dimension ``B`` of one filter call (``H = 1``). Four scenarios:

(a) ``repeated_key`` — one key written ``n`` times with values ``v + σ ξ_i``: error vs ``n``.
    Bayes (``γ = α = 1``) averages, ``σ² n/(n + r)² + r²/(n + r)²``; the delta rule plateaus at
    ``βσ²/(2 − β)``; linear attention grows like ``(n − 1)²``.
(b) ``overlapping_keys`` — ``(a, v_a)`` then ``(b, v_b)`` with ``aᵀb = ρ``, read ``a``: error vs ``ρ``.
(c) ``random_keys`` — ``n = 1..4K`` pairs with random keys: mean in-sample error vs ``n`` (ridge:
    ``(1/n) Σ_j (r/(λ_j + r))²`` over the Gram eigenvalues, the capacity plateau ``(1 − K/n)`` as
    ``r → 0``; linear attention ``(n − 1)/K``) and the signal of the first item
    ``⟨M_n k_1, v_1⟩/‖v_1‖²`` (delta rule: ``β (α (1 − β/K))^{n−1}``).
(d) ``confident_memory`` — ``a`` written ``n`` times, then ``b`` (cosine ``ρ``) ``m`` times: error on
    ``a`` vs ``m`` (weighted ridge for Bayes, ``d_n(1 − c_m ρ²)``/``c_m ρ`` for the delta rule).

Models: linear attention, DeltaNet, Gated DeltaNet (fixed decay ``α``), and the Bayesian Layer
(``α = 1``) with several certainty retentions ``γ``; all with the same write strength ``β``. Theory
curves come from :mod:`probseq.theory` (docs/theory.md) wherever a closed form exists; the agreement of each
curve is recorded as ``max |sim − theory|`` and ``max |sim − theory| / CI95``.

Each (scenario, model) unit is seeded from ``(seed, scenario, model)`` and cached on completion, so an
interrupted run resumes where it stopped and ends with identical results. A cache file that is not JSON or not a
unit of its scenario (another shape, missing metrics, curves of another length, x values other than the ones the
current config simulates, a negative CI) is a ``ValueError`` naming the file; delete it to recompute.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from probseq import presets, theory
from probseq.experiments.common import ResultCache, apply_overrides, environment, write_csv
from probseq.files import (
    NUMBER,
    ListOf,
    MapOf,
    atomic_write_json,
    check_same_config,
    check_writable,
    json_problem,
    save_figure,
)
from probseq.ops import R_MIN, bayes_filter
from probseq.types import BayesState, FilterOutput

F64 = torch.float64
Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class CollisionConfig:
    """The collision study's settings (validated on construction; ``--set key=value`` overrides).

    Attributes:
        seed: base seed; each (scenario, model) unit draws from its own generator.
        key_dim, value_dim: ``K``, ``V``.
        trials: Monte Carlo trials per point (the batch ``B`` of a filter call).
        batch_trials: trials per filter call (bounds memory; results do not depend on it).
        beta: write strength ``β`` of every model (``r = (1 − β)/β``); linear attention writes with 1.
        gdn_alpha: Gated DeltaNet's fixed decay ``α``.
        gammas: certainty retentions ``γ`` of the Bayesian Layers (``α = 1``).
        noise_std: (a) value noise ``σ``.
        max_repeats: (a) writes ``n = 1..max_repeats``.
        rhos: (b) key cosines ``ρ``.
        capacity_points: (c) number of ``n`` values on ``1..4K``.
        confident_writes: (d) writes ``n`` of the confident memory ``a``.
        colliding_writes: (d) colliding writes ``m = 0..colliding_writes`` of ``b``.
        collision_rho: (d) cosine ``ρ`` of ``a`` and ``b``.
        impl: filter form (both are exact; ``chunked`` is faster for long sequences).
    """

    seed: int = 0
    key_dim: int = 16
    value_dim: int = 4
    trials: int = 1024
    batch_trials: int = 1024
    beta: float = 0.5
    gdn_alpha: float = 0.99
    gammas: tuple[float, ...] = (1.0, 0.99, 0.9)
    noise_std: float = 0.5
    max_repeats: int = 128
    rhos: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
    capacity_points: int = 32
    confident_writes: int = 16
    colliding_writes: int = 64
    collision_rho: float = 0.5
    impl: Literal["chunked", "recurrent"] = "chunked"

    def __post_init__(self) -> None:
        reals = dict(
            beta=self.beta,
            gdn_alpha=self.gdn_alpha,
            noise_std=self.noise_std,
            collision_rho=self.collision_rho,
            **{f"gammas[{i}]": g for i, g in enumerate(self.gammas)},
            **{f"rhos[{i}]": rho for i, rho in enumerate(self.rhos)},
        )
        for name, value in reals.items():  # NaN passes every comparison below
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        positive = dict(
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            batch_trials=self.batch_trials,
            max_repeats=self.max_repeats,
            capacity_points=self.capacity_points,
            confident_writes=self.confident_writes,
        )
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.trials < 2:
            raise ValueError(f"trials must be >= 2 (a confidence interval needs two), got {self.trials}")
        if self.colliding_writes < 0:
            raise ValueError(f"colliding_writes must be >= 0, got {self.colliding_writes}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta must lie in (0, 1], got {self.beta}")
        if not 0 < self.gdn_alpha <= 1:
            raise ValueError(f"gdn_alpha must lie in (0, 1], got {self.gdn_alpha}")
        if not self.gammas or any(not 0 <= g <= 1 for g in self.gammas) or len(set(self.gammas)) < len(self.gammas):
            raise ValueError(f"gammas must be distinct values in [0, 1], got {self.gammas}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not self.rhos or any(abs(rho) > 1 for rho in (*self.rhos, self.collision_rho)):
            raise ValueError(f"rhos and collision_rho must lie in [-1, 1], got {self.rhos}, {self.collision_rho}")


PRESETS: dict[str, CollisionConfig] = {
    # CPU, well under 2 minutes on 2 cores.
    "quick": CollisionConfig(),
    # Paper scale: K = 64, n up to 256 random keys, thousands of trials.
    "full": CollisionConfig(
        key_dim=64,
        value_dim=16,
        trials=4096,
        batch_trials=1024,
        max_repeats=1024,
        rhos=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99),
        capacity_points=64,
        confident_writes=64,
        colliding_writes=512,
    ),
}


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """One compared memory: ``kind`` picks the design, ``gamma`` / ``alpha`` its retention and decay."""

    name: str
    label: str
    kind: Literal["linear", "delta", "bayes"]
    gamma: float = 0.0
    alpha: float = 1.0


def models(config: CollisionConfig) -> list[Model]:
    """The compared memories, in plotting order; all write with ``β = config.beta``."""
    return [
        Model("linear_attention", "linear attention", "linear"),
        Model("deltanet", f"DeltaNet (β={config.beta:g})", "delta"),
        Model("gated_deltanet", f"Gated DeltaNet (α={config.gdn_alpha:g})", "delta", alpha=config.gdn_alpha),
        *(Model(f"bayes_gamma{g:g}", f"Bayesian (γ={g:g})", "bayes", gamma=g) for g in config.gammas),
    ]


def write_noise(model: Model, beta: float) -> float:
    """The regression write noise ``r``: exact ``(1 − β)/β`` for the delta rule, floored for Bayes."""
    return theory.noise_from_strength(beta, R_MIN if model.kind == "bayes" else 0.0)


def run_model(
    model: Model, config: CollisionConfig, q: Tensor, k: Tensor, v: Tensor, *, final_state: bool = False
) -> FilterOutput:
    """Filter ``q, k [B, T, K]``, ``v [B, T, V]`` with ``H = 1``, ``scale = 1``, in slices of trials.

    Returns:
        :class:`FilterOutput` with ``output [B, T, V]`` and, when ``final_state``, ``state.mean [B, V, K]``.
    """
    outputs, means = [], []
    for rows in torch.arange(k.shape[0]).split(config.batch_trials):
        out = _filter(model, config, *(x[rows].unsqueeze(2) for x in (q, k, v)), final_state)
        outputs.append(out.output[:, :, 0])
        if final_state:
            means.append(out.state.mean[:, 0])
    state = BayesState(torch.cat(means), None) if final_state else None
    return FilterOutput(torch.cat(outputs), state)


def _filter(model: Model, config: CollisionConfig, q: Tensor, k: Tensor, v: Tensor, final_state: bool):
    """One filter call on ``q, k [B, T, 1, K]``, ``v [B, T, 1, V]``."""
    batch, length = k.shape[:2]
    gate = lambda value: torch.full((batch, length, 1), value, dtype=F64)  # noqa: E731
    common = dict(scale=1.0, output_final_state=final_state, impl=config.impl)
    chunk = min(length, 64)  # a chunk longer than the sequence only adds padding work
    if model.kind == "linear":
        return presets.linear_attention(q, k, v, **common)
    if model.kind == "delta" and model.alpha == 1:
        return presets.deltanet(q, k, v, gate(config.beta), chunk_size=chunk, **common)
    if model.kind == "delta":
        return presets.gated_deltanet(
            q, k, v, gate(math.log(model.alpha)), gate(config.beta), chunk_size=chunk, **common
        )
    return bayes_filter(q, k, v, None, gate(config.beta), gate(model.gamma), chunk_size=chunk, **common)


# ---------------------------------------------------------------------------------------------- statistics


def summarise(samples: Tensor, expected: Tensor | None) -> dict[str, Any]:
    """``samples [trials, X]`` → mean, 95% CI half-width and (if given) theory with its agreement."""
    mean = samples.mean(0)
    ci = Z95 * samples.std(0) / math.sqrt(samples.shape[0])
    metric = {"mean": mean.tolist(), "ci95": ci.tolist(), "theory": None, "agreement": None}
    if expected is not None:
        expected = torch.as_tensor(expected, dtype=F64).expand_as(mean)
        gap = (mean - expected).abs()
        metric["theory"] = expected.tolist()
        metric["agreement"] = {
            "max_abs_diff": gap.max().item(),
            # the CI is ~0 only where the error is deterministic; the floor keeps the ratio finite
            "max_diff_over_ci": (gap / ci.clamp_min(1e-12)).max().item(),
            # share of points whose theory lies in the CI (the slack covers deterministic points)
            "within_ci": (gap <= ci + 1e-9).to(F64).mean().item(),
        }
    return metric


def channel_error(readout: Tensor, target: Tensor) -> Tensor:
    """Per-channel squared error ``‖o − v‖²/V`` over the last dim."""
    return (readout - target).square().mean(-1)


def unit_vectors(gen: torch.Generator, *shape: int) -> Tensor:
    """Vectors uniform on the unit sphere, ``[..., D]`` (keys: ``D = K``)."""
    x = torch.randn(*shape, generator=gen, dtype=F64)
    return x / x.norm(dim=-1, keepdim=True)


def random_values(gen: torch.Generator, *shape: int) -> Tensor:
    """Values uniform on the sphere of radius ``√V``, ``[..., V]``: per-channel power exactly 1."""
    return unit_vectors(gen, *shape) * math.sqrt(shape[-1])


def keys_with_cosine(gen: torch.Generator, rho: Tensor, key_dim: int) -> tuple[Tensor, Tensor]:
    """Unit keys ``a, b`` ``[B, K]`` with ``aᵀb = ρ_b`` exactly, for ``rho [B]``."""
    a = unit_vectors(gen, len(rho), key_dim)
    x = torch.randn(len(rho), key_dim, generator=gen, dtype=F64)
    perp = x - (x * a).sum(-1, keepdim=True) * a
    perp = perp / perp.norm(dim=-1, keepdim=True)
    rho = rho[:, None]
    return a, rho * a + (1 - rho.square()).clamp_min(0).sqrt() * perp


# ---------------------------------------------------------------------------------------------- scenarios


def repeated_key(model: Model, config: CollisionConfig, gen: torch.Generator) -> dict[str, Any]:
    """(a) One key per trial written ``n = 1..N`` times with values ``v + σ ξ_i``; read it after each write."""
    trials, length, noise_var = config.trials, config.max_repeats, config.noise_std**2
    k = unit_vectors(gen, trials, 1, config.key_dim).expand(trials, length, config.key_dim)
    clean = random_values(gen, trials, 1, config.value_dim)
    noisy = clean + config.noise_std * torch.randn(trials, length, config.value_dim, generator=gen, dtype=F64)
    error = channel_error(run_model(model, config, k, k, noisy).output, clean)  # [trials, n]

    n = torch.arange(1, length + 1, dtype=F64)
    r = write_noise(model, config.beta)
    if model.kind == "linear":
        expected = theory.noisy_collision_error_linear(n, noise_var)
    elif model.kind == "delta":
        expected = theory.noisy_collision_error_delta(n, config.beta, noise_var, alpha=model.alpha)
    elif model.gamma == 1:
        expected = theory.noisy_collision_error_bayes(n, r, noise_var)
    else:
        expected = theory.noisy_collision_curve(
            theory.gain_sequence(length, model.gamma, r).gain, noise_var, alpha=model.alpha
        )
    return {"x": n.tolist(), "metrics": {"error": summarise(error, expected)}}


def overlapping_keys(model: Model, config: CollisionConfig, gen: torch.Generator) -> dict[str, Any]:
    """(b) ``(a, v_a)`` then ``(b, v_b)`` with ``aᵀb = ρ``; read ``a``. All ``ρ`` in one call."""
    rho = torch.tensor(config.rhos, dtype=F64)
    trials, points = config.trials, len(rho)
    a, b = keys_with_cosine(gen, rho.repeat(trials), config.key_dim)  # trial-major: row = trial·R + ρ index
    k = torch.stack([a, b], 1)
    v = random_values(gen, trials * points, 2, config.value_dim)
    readout = run_model(model, config, a[:, None].expand_as(k), k, v).output[:, 1]
    error = channel_error(readout, v[:, 0]).view(trials, points)

    if model.kind == "linear":
        expected = theory.two_key_error_linear(rho)
    else:
        c_a, c_b = theory.two_key_coefficients(rho, write_noise(model, config.beta), model.gamma, model.alpha)
        expected = theory.coefficient_error(torch.stack([c_a, c_b], -1), 0)
    return {"x": rho.tolist(), "metrics": {"error": summarise(error, expected)}}


def capacity_grid(config: CollisionConfig) -> list[int]:
    """``capacity_points`` distinct pair counts on ``1..4K``."""
    top = 4 * config.key_dim
    return sorted({round(x) for x in torch.linspace(1, top, min(config.capacity_points, top)).tolist()})


def random_keys(model: Model, config: CollisionConfig, gen: torch.Generator) -> dict[str, Any]:
    """(c) ``n`` pairs with random keys: in-sample error of ``M_n`` and the first item's signal."""
    trials, key_dim, r = config.trials, config.key_dim, write_noise(model, config.beta)
    ns = capacity_grid(config)
    errors, signals, ridge = [], [], []
    for n in ns:
        k = unit_vectors(gen, trials, n, key_dim)
        v = random_values(gen, trials, n, config.value_dim)
        out = run_model(model, config, k[:, :1].expand_as(k), k, v, final_state=True)
        memory = out.state.mean  # [trials, V, K]
        errors.append(channel_error(k @ memory.transpose(1, 2), v).mean(1))
        # ⟨M_n k_1, v_1⟩/‖v_1‖²: the first item's retained signal after n − 1 further writes
        signals.append((out.output[:, -1] * v[:, 0]).sum(-1) / v[:, 0].square().sum(-1))
        if model.kind == "bayes" and model.gamma == 1:
            ridge.append(theory.capacity_error_ridge(k, r).mean())  # exact given these keys
    n = torch.tensor(ns, dtype=F64)
    expected_error = expected_signal = None
    if model.kind == "linear":
        expected_error = theory.capacity_error_linear(n, key_dim)
        expected_signal = torch.ones_like(n)  # crosstalk has mean zero
    elif model.kind == "delta":
        expected_signal = theory.delta_retained_signal(n - 1, config.beta, key_dim, model.alpha)
    elif ridge:
        expected_error = torch.stack(ridge)
    return {
        "x": ns,
        "metrics": {
            "error": summarise(torch.stack(errors, 1), expected_error),
            "signal": summarise(torch.stack(signals, 1), expected_signal),
        },
    }


def confident_memory(model: Model, config: CollisionConfig, gen: torch.Generator) -> dict[str, Any]:
    """(d) ``a`` written ``n`` times, then ``b`` (cosine ``ρ``) ``m`` times; error on ``a`` after each write."""
    trials, n, m, rho = config.trials, config.confident_writes, config.colliding_writes, config.collision_rho
    a, b = keys_with_cosine(gen, torch.full((trials,), rho, dtype=F64), config.key_dim)
    k = torch.cat([a[:, None].expand(trials, n, -1), b[:, None].expand(trials, m, -1)], 1)
    values = random_values(gen, trials, 2, config.value_dim)
    v = torch.cat([values[:, :1].expand(trials, n, -1), values[:, 1:].expand(trials, m, -1)], 1)
    readout = run_model(model, config, a[:, None].expand_as(k), k, v).output[:, n - 1 :]  # m = 0..M
    error = channel_error(readout, values[:, :1])

    steps = torch.arange(m + 1, dtype=F64)
    r = write_noise(model, config.beta)
    expected = None
    if model.kind == "linear":
        expected = theory.confident_memory_error_linear(n, steps, rho)
    elif model.kind == "delta":
        expected = theory.confident_memory_error_delta(n, steps, rho, config.beta, alpha=model.alpha)
    elif model.gamma == 1:
        expected = theory.confident_memory_error_ridge(n, steps, rho, r)
    return {"x": steps.tolist(), "metrics": {"error": summarise(error, expected)}}


@dataclass(frozen=True)
class Scenario:
    """How a scenario is simulated and shown."""

    run: Callable[[Model, CollisionConfig, torch.Generator], dict[str, Any]]
    title: str
    x_label: str
    log_x: bool
    log_y: bool


SCENARIOS: dict[str, Scenario] = {
    "repeated_key": Scenario(repeated_key, "(a) one key, noisy values", "writes n", True, True),
    "overlapping_keys": Scenario(
        overlapping_keys, "(b) two keys with cosine ρ, read the first", "cosine ρ", False, False
    ),
    "random_keys": Scenario(random_keys, "(c) n random keys (capacity)", "pairs n", False, False),
    "confident_memory": Scenario(
        confident_memory, "(d) confident memory, then colliding writes", "colliding writes m", False, True
    ),
}


def unit_seed(seed: int, scenario: str, model: str) -> int:
    """A seed for one (scenario, model) unit that does not depend on which other units ran."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{scenario}/{model}".encode()).digest()[:8], "little")


# A unit's result: the x values and, per metric, mean / CI / theory curves of the same length (what is cached).
CURVE_SPEC = {
    "mean": ListOf(NUMBER),
    "ci95": ListOf(NUMBER),
    "theory": (ListOf(NUMBER), type(None)),
    "agreement": ({"max_abs_diff": NUMBER, "max_diff_over_ci": NUMBER, "within_ci": NUMBER}, type(None)),
}
UNIT_SPEC = {"x": ListOf(NUMBER), "metrics": MapOf(CURVE_SPEC)}
METRICS = {"random_keys": ("error", "signal")}  # every other scenario: ("error",)


def expected_x(scenario: str, config: CollisionConfig) -> list[float]:
    """The x values a unit of ``scenario`` holds under ``config`` (what its simulation writes): (a) ``n = 1..N``,
    (b) the ``rhos``, (c) :func:`capacity_grid`, (d) ``m = 0..colliding_writes``."""
    if scenario == "repeated_key":
        return torch.arange(1, config.max_repeats + 1, dtype=F64).tolist()
    if scenario == "overlapping_keys":
        return torch.tensor(config.rhos, dtype=F64).tolist()
    if scenario == "random_keys":
        return [float(n) for n in capacity_grid(config)]
    return torch.arange(config.colliding_writes + 1, dtype=F64).tolist()


def unit_problem(scenario: str, unit: Any, config: CollisionConfig | None = None) -> str | None:
    """What is wrong with a cached ``unit`` of ``scenario`` (its shape, its metrics, the curves' lengths, negative
    CI half-widths and, given ``config``, x values other than the ones ``config`` simulates), or ``None``."""
    problem = json_problem(unit, UNIT_SPEC)
    if problem is not None:
        return problem
    expected = METRICS.get(scenario, ("error",))
    if sorted(unit["metrics"]) != sorted(expected):
        return f"metrics are {sorted(unit['metrics'])}, the scenario's are {list(expected)}"
    if config is not None and unit["x"] != (x := expected_x(scenario, config)):
        shown = lambda values: f"{len(values)} values {values[:4]}{' …' if len(values) > 4 else ''}"  # noqa: E731
        return f"x holds {shown(unit['x'])}, the config simulates {shown(x)}"
    for name, curve in unit["metrics"].items():
        for key in ("mean", "ci95", "theory"):
            if curve[key] is not None and len(curve[key]) != len(unit["x"]):
                return f"metrics.{name}.{key} has {len(curve[key])} values for {len(unit['x'])} x values"
        if any(ci < 0 for ci in curve["ci95"]):
            return f"metrics.{name}.ci95 holds a negative half-width ({min(curve['ci95'])})"
    return None


def run_unit(scenario: str, model: Model, config: CollisionConfig) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(unit_seed(config.seed, scenario, model.name))
    return SCENARIOS[scenario].run(model, config, gen)


# ---------------------------------------------------------------------------------------------- outputs


def scenario_notes(config: CollisionConfig) -> dict[str, dict[str, Any]]:
    """What each scenario fixes, and reference curves that belong to no single model."""
    r = theory.noise_from_strength(config.beta, 0.0)
    ns = torch.tensor(capacity_grid(config), dtype=F64)
    return {
        "repeated_key": {
            "noise_std": config.noise_std,
            "delta_plateau": theory.delta_noise_plateau(config.beta, config.noise_std**2),
        },
        "overlapping_keys": {},
        "random_keys": {
            "ridge_plateau_r0": theory.capacity_plateau(ns, config.key_dim).tolist(),
            "key_dim": config.key_dim,
        },
        "confident_memory": {
            "confident_writes": config.confident_writes,
            "rho": config.collision_rho,
            "bayes_interference_factor": theory.bayes_interference_factor(
                config.confident_writes, config.collision_rho, r
            ),
            "delta_interference_factor": theory.delta_interference_factor(config.collision_rho, config.beta),
        },
    }


def csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for scenario, entry in results["scenarios"].items():
        for model, unit in entry["models"].items():
            for metric, values in unit["metrics"].items():
                theory_values = values["theory"] or [None] * len(unit["x"])
                rows += [
                    dict(
                        scenario=scenario,
                        model=model,
                        metric=metric,
                        x=x,
                        mean=mu,
                        ci95=ci,
                        theory="" if th is None else th,
                    )
                    for x, mu, ci, th in zip(unit["x"], values["mean"], values["ci95"], theory_values)
                ]
    return rows


def _marker_indices(count: int, log: bool, most: int = 16) -> list[int]:
    """Up to ``most`` indices for error-bar markers (log-spaced on a log axis) so plots stay legible."""
    if count <= most:
        return list(range(count))
    points = torch.logspace(0, math.log10(count), most) - 1 if log else torch.linspace(0, count - 1, most)
    return sorted({min(round(i), count - 1) for i in points.tolist()})


def plot_scenario(name: str, entry: dict[str, Any], labels: dict[str, str], path: Path) -> None:
    """Theory as lines, simulation as markers with 95% CI bars; one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = SCENARIOS[name]
    metrics = list(next(iter(entry["models"].values()))["metrics"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        log_y = spec.log_y and metric == "error"
        for index, (model, unit) in enumerate(entry["models"].items()):
            color = f"C{index}"
            values = unit["metrics"][metric]
            x = unit["x"]
            if values["theory"] is not None:
                ax.plot(x, values["theory"], color=color, lw=1.4)
            keep = _marker_indices(len(x), spec.log_x)
            if log_y:  # exact zeros up to rounding (e.g. linear attention on orthogonal keys) have no log
                keep = [i for i in keep if values["mean"][i] > 1e-20]
            ax.errorbar(
                [x[i] for i in keep],
                [values["mean"][i] for i in keep],
                yerr=[values["ci95"][i] for i in keep],
                fmt="o",
                ms=3.5,
                capsize=2,
                color=color,
                label=labels[model],
            )
        if name == "random_keys" and metric == "error":
            ax.plot(
                next(iter(entry["models"].values()))["x"],
                entry["notes"]["ridge_plateau_r0"],
                "k--",
                lw=1,
                label="ridge plateau as r → 0: (1 − K/n)₊",
            )
            ax.axvline(entry["notes"]["key_dim"], color="0.6", lw=0.8)
        if spec.log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel(spec.x_label)
        ax.set_ylabel("error per value channel" if metric == "error" else "first item's signal ⟨M k₁, v₁⟩/‖v₁‖²")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{spec.title}\nlines: theory (probseq.theory), markers: simulation mean ± 95% CI", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _pick(xs: list[float], log: bool) -> list[int]:
    """First, middle (geometric on a log axis) and last index."""
    middle = math.sqrt(xs[0] * xs[-1]) if log and xs[0] > 0 else (xs[0] + xs[-1]) / 2
    return sorted({0, min(range(len(xs)), key=lambda i: abs(xs[i] - middle)), len(xs) - 1})


def format_table(results: dict[str, Any]) -> str:
    """Markdown summary: per scenario and model, ``mean ± CI95 (theory)`` of the error at three x values,
    and the curve's largest gap to theory in CI half-widths (the points of a curve share their random
    draws, so one ~2-CI deviation can shift a whole curve: judge the maximum, not a fraction)."""
    lines = []
    labels = {m["name"]: m["label"] for m in results["models"]}
    for name, entry in results["scenarios"].items():
        spec = SCENARIOS[name]
        xs = next(iter(entry["models"].values()))["x"]
        picks = _pick(xs, spec.log_x)
        lines += [
            f"**{spec.title}** — error per value channel, mean ± 95% CI (theory)",
            "",
            "| model | "
            + " | ".join(f"{spec.x_label.split()[-1]} = {xs[i]:g}" for i in picks)
            + " | max \\|sim − theory\\| / CI |",
            "|---|" + "---:|" * (len(picks) + 1),
        ]
        for model, unit in entry["models"].items():
            error = unit["metrics"]["error"]
            cells = [
                f"{error['mean'][i]:.3g} ± {error['ci95'][i]:.2g}"
                + ("" if error["theory"] is None else f" ({error['theory'][i]:.3g})")
                for i in picks
            ]
            agree = "—" if error["agreement"] is None else f"{error['agreement']['max_diff_over_ci']:.2g}"
            lines.append(f"| {labels[model]} | " + " | ".join(cells) + f" | {agree} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run_collision(config: CollisionConfig, out: str | Path) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; write ``results.json``, ``collision.csv`` and one PNG per
    scenario; return the results dict (JSON-serialisable). An ``out`` holding the results of another config
    (``batch_trials`` aside, which changes no result) is refused before any work."""
    out = check_writable(out)
    check_same_config(out / "results.json", config, ignore=("batch_trials",))
    cache = ResultCache(out, config)
    started = time.perf_counter()
    compared = models(config)
    units = [(scenario, model) for scenario in SCENARIOS for model in compared]
    scenarios: dict[str, Any] = {}
    notes = scenario_notes(config)
    progress = tqdm(units, desc="collision", unit="unit", file=sys.stderr, disable=None)  # None: a terminal only
    for scenario, model in progress:
        progress.set_postfix_str(f"{scenario}/{model.name}")
        name = f"{scenario}--{model.name}"
        unit = cache.get(name, check=lambda value, scenario=scenario: unit_problem(scenario, value, config))
        if unit is None:
            unit = run_unit(scenario, model, config)
            cache.put(name, unit)
        entry = scenarios.setdefault(
            scenario,
            {
                "title": SCENARIOS[scenario].title,
                "x_label": SCENARIOS[scenario].x_label,
                "notes": notes[scenario],
                "models": {},
            },
        )
        entry["models"][model.name] = unit
    results = {
        "config": dataclasses.asdict(config),
        "seed": config.seed,
        "environment": environment(),
        "models": [dataclasses.asdict(m) for m in compared],
        "scenarios": scenarios,
        "runtime_s": time.perf_counter() - started,
    }
    labels = {m.name: m.label for m in compared}
    for scenario, entry in scenarios.items():
        plot_scenario(scenario, entry, labels, out / f"collision_{scenario}.png")
    write_csv(out / "collision.csv", csv_rows(results))
    atomic_write_json(out / "results.json", results)
    # what was saved, so that a fresh and a reloaded result compare equal (tuples become lists)
    return json.loads(json.dumps(results))


# ---------------------------------------------------------------------------------------------- CLI


def main(args: argparse.Namespace) -> int:
    config = apply_overrides(dataclasses.replace(PRESETS[args.preset], seed=args.seed), args.overrides)
    results = run_collision(config, args.out)
    print(format_table(results))
    print(
        f"wrote {args.out}/results.json, collision.csv and {len(results['scenarios'])} plots "
        f"in {results['runtime_s']:.1f} s"
    )
    return 0
