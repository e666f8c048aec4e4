"""scripts/retention_variants.py's report: one row per run with its trained ρ, the paired difference to Gated
DeltaNet per seed with a t-interval, the learned count on validation, and the ρ-trace plot."""

from __future__ import annotations

import csv
import json
import runpy
import statistics
from pathlib import Path

import pytest

from probseq.train.sweep import mean_ci95

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "retention_variants.py"
POINTS = ("T32_k4", "T32_k8", "T64_k16", "T128_k32")


def _unit(lr: float, seed: int, accuracy: float, rho: float | None = None, status: str = "ok") -> dict:
    evaluation = {f"{split}_{p}": {"accuracy": accuracy} for split in ("valid", "test") for p in POINTS}
    metrics = {"status": status, "eval": evaluation}
    if rho is not None:
        metrics["retention_scale"] = {"layers.1": [rho, rho]}
        metrics["retention_trace"] = [
            {"step": s, "retention_scale": rho * s / 20, "retention_grad_norm": 0.1, "other_grad_norm": 1.0}
            for s in (10, 20)
        ]
    return {"learning_rate": lr, "seed": seed, "metrics": metrics}


def _write(root: Path, name: str, units: list[dict]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps({"units": {f"u{i}": u for i, u in enumerate(units)}}))


def test_report_pairs_each_variant_with_gated_deltanet_by_seed(tmp_path):
    study = runpy.run_path(str(SCRIPT))
    root, out = tmp_path / "root", tmp_path / "out"
    gdn = {0: 0.95, 1: 0.2, 2: 0.9}
    learned = {0: 0.97, 1: 0.5, 2: 0.6}
    _write(root, "gated_deltanet", [_unit(3e-3, s, a) for s, a in gdn.items()])
    _write(root, "learned", [_unit(3e-3, s, a, rho=0.25) for s, a in learned.items()])
    _write(root, "stationary", [_unit(3e-3, 0, 0.99), _unit(3e-3, 1, 0.0, status="diverged")])

    study["report"](type("Args", (), {"root": str(root), "out": str(out)}))

    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 8
    assert {r["trained_rho"] for r in runs if r["variant"] == "learned"} == {"0.25"}
    summary = {r["variant"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["gated_deltanet"]["learned"] == "2"  # valid (32, 8) >= 0.9 in seeds 0 and 2
    assert summary["learned"]["learned"] == "1"
    mean, half = mean_ci95([learned[s] - gdn[s] for s in gdn])
    assert summary["learned"]["vs_gdn_T64_k16"] == f"{mean:+.3f} ± {half:.3f}"
    assert float(summary["learned"]["mean_T128_k32"]) == pytest.approx(statistics.fmean(learned.values()), abs=1e-4)
    # a diverged run scores 0 and is still paired
    assert summary["stationary"]["vs_gdn_T64_k16"] == "{:+.3f} ± {:.3f}".format(*mean_ci95([0.99 - 0.95, 0.0 - 0.2]))
    assert (out / "rho_trace.png").stat().st_size > 0
