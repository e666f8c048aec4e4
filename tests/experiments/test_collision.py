"""The collision study (the paper's collision study): outputs, agreement with theory, resumability, config checks."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest

from probseq import cli
from probseq.experiments import collision
from probseq.experiments.collision import PRESETS, CollisionConfig, run_collision
from probseq.experiments.common import apply_overrides

TINY = CollisionConfig(
    key_dim=4,
    value_dim=2,
    trials=64,
    batch_trials=40,
    max_repeats=8,
    rhos=(0.0, 0.5, 0.9),
    capacity_points=4,
    confident_writes=4,
    colliding_writes=6,
    gammas=(1.0, 0.9),
)
MODELS = ["linear_attention", "deltanet", "gated_deltanet", "bayes_gamma1", "bayes_gamma0.9"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("collision")
    return out, run_collision(TINY, out)


@pytest.mark.integration
def test_end_to_end_outputs(tiny_run):
    out, results = tiny_run
    assert {"results.json", "collision.csv"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"collision_{s}.png" for s in collision.SCENARIOS)
    saved = json.loads((out / "results.json").read_text())
    timeless = lambda d: {k: v for k, v in d.items() if k != "runtime_s"}  # noqa: E731
    assert timeless(saved) == timeless(results)
    assert saved["config"] == json.loads(json.dumps(dataclasses.asdict(TINY))) and saved["seed"] == TINY.seed
    assert {"torch", "python", "cpu_count"} <= set(saved["environment"])
    assert list(saved["scenarios"]) == list(collision.SCENARIOS)
    for entry in saved["scenarios"].values():
        assert list(entry["models"]) == MODELS
        for unit in entry["models"].values():
            for metric in unit["metrics"].values():
                assert len(metric["mean"]) == len(metric["ci95"]) == len(unit["x"])
                assert (metric["theory"] is None) == (metric["agreement"] is None)
    assert len(saved["scenarios"]["repeated_key"]["models"]["deltanet"]["x"]) == TINY.max_repeats
    assert saved["scenarios"]["overlapping_keys"]["models"]["deltanet"]["x"] == list(TINY.rhos)
    assert saved["scenarios"]["confident_memory"]["models"]["deltanet"]["x"] == list(range(TINY.colliding_writes + 1))

    with open(out / "collision.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {"scenario", "model", "metric", "x", "mean", "ci95", "theory"}
    expected_rows = sum(
        len(unit["x"]) * len(unit["metrics"])
        for entry in saved["scenarios"].values()
        for unit in entry["models"].values()
    )
    assert len(rows) == expected_rows

    table = collision.format_table(saved)
    for scenario in collision.SCENARIOS.values():
        assert scenario.title in table
    assert "Bayesian (γ=0.9)" in table and "Gated DeltaNet" in table


@pytest.mark.integration
def test_theory_curves_where_closed_forms_exist(tiny_run):
    """Which (scenario, model) pairs carry a theory curve: every closed form in probseq.theory is used."""
    _, results = tiny_run
    has_theory = {
        (s, m, metric)
        for s, entry in results["scenarios"].items()
        for m, unit in entry["models"].items()
        for metric, values in unit["metrics"].items()
        if values["theory"] is not None
    }
    for model in MODELS:
        assert ("repeated_key", model, "error") in has_theory
        assert ("overlapping_keys", model, "error") in has_theory
    assert {
        ("random_keys", "linear_attention", "error"),
        ("random_keys", "bayes_gamma1", "error"),
        ("random_keys", "deltanet", "signal"),
        ("random_keys", "gated_deltanet", "signal"),
        ("confident_memory", "bayes_gamma1", "error"),
        ("confident_memory", "deltanet", "error"),
        ("confident_memory", "gated_deltanet", "error"),
        ("confident_memory", "linear_attention", "error"),
    } <= has_theory
    assert ("confident_memory", "bayes_gamma0.9", "error") not in has_theory


@pytest.mark.integration
def test_simulation_agrees_with_theory(tmp_path):
    """Every theory curve lies within ~4 standard errors (2.1 CI half-widths) of the simulation."""
    config = dataclasses.replace(
        TINY,
        key_dim=8,
        trials=1500,
        batch_trials=1500,
        max_repeats=16,
        rhos=(0.0, 0.3, 0.6, 0.9),
        capacity_points=6,
        colliding_writes=8,
    )
    results = run_collision(config, tmp_path)
    checked = 0
    for scenario, entry in results["scenarios"].items():
        for model, unit in entry["models"].items():
            for metric, values in unit["metrics"].items():
                if values["agreement"] is not None:
                    checked += 1
                    ratio = values["agreement"]["max_diff_over_ci"]
                    assert ratio < 2.1, f"{scenario}/{model}/{metric}: |sim − theory| = {ratio:.2f} CI"
    assert checked == 19


@pytest.mark.integration
def test_resume_recomputes_only_missing_units(tiny_run, tmp_path, monkeypatch):
    source, first = tiny_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    cached = sorted((out / "cache").rglob("*.json"))
    assert len(cached) == len(collision.SCENARIOS) * len(MODELS)
    cached[3].unlink()  # as if the run had been interrupted before this unit finished

    computed = []
    original = collision.run_unit
    monkeypatch.setattr(collision, "run_unit", lambda *args: computed.append(args[:2]) or original(*args))
    second = run_collision(TINY, out)
    assert len(computed) == 1
    assert second["scenarios"] == first["scenarios"]
    assert (out / "collision.csv").read_bytes() == (source / "collision.csv").read_bytes()
    run_collision(TINY, out)
    assert len(computed) == 1  # nothing left to compute


@pytest.mark.integration
def test_units_do_not_depend_on_other_units(tmp_path):
    """A unit's seed comes from (seed, scenario, model): dropping a model leaves the others unchanged."""
    fewer = run_collision(dataclasses.replace(TINY, gammas=(1.0,)), tmp_path)
    assert (
        fewer["scenarios"]["overlapping_keys"]["models"]["deltanet"]["metrics"]
        == run_collision(TINY, tmp_path / "all")["scenarios"]["overlapping_keys"]["models"]["deltanet"]["metrics"]
    )


@pytest.mark.parametrize(
    "override",
    [
        "trial=3",
        "trials=many",
        "trials=1.5",
        "impl=gpu",
        "beta=1.5",
        "gammas=[0.5, 2]",
        "gammas=0.5",
        "rhos=[1.2]",
        "key_dim=0",
    ],
)
def test_bad_overrides_raise(override):
    with pytest.raises(ValueError):
        apply_overrides(PRESETS["quick"], [override])


def test_overrides_and_presets():
    config = apply_overrides(PRESETS["quick"], ["trials=32", "gammas=[1, 0.5]", "impl=recurrent"])
    assert config.trials == 32 and config.gammas == (1.0, 0.5) and config.impl == "recurrent"
    assert PRESETS["full"].key_dim > PRESETS["quick"].key_dim
    assert collision.capacity_grid(PRESETS["quick"])[-1] == 4 * PRESETS["quick"].key_dim


@pytest.mark.integration
def test_cli(tmp_path, capsys, monkeypatch):
    overrides = [f"{k}={json.dumps(v)}" for k, v in dataclasses.asdict(TINY).items() if k != "seed"]
    assert (
        cli.main(["collision", "--out", str(tmp_path), "--seed", "3", *[x for o in overrides for x in ("--set", o)]])
        == 0
    )
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 3
    assert "(a) one key, noisy values" in capsys.readouterr().out
    # another seed into the same --out is refused before any work (the first run's results stay)
    monkeypatch.setattr(collision, "ResultCache", lambda *a: pytest.fail("the run started"))
    assert (
        cli.main(["collision", "--out", str(tmp_path), "--seed", "4", *[x for o in overrides for x in ("--set", o)]])
        == 2
    )
    assert "seed (3 there, 4 now)" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 3


@pytest.mark.integration
def test_a_rerun_with_another_batch_of_trials_is_the_same_config(tiny_run, tmp_path):
    """``batch_trials`` bounds memory and changes no result: it may differ in the same ``--out``."""
    source, first = tiny_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    again = run_collision(dataclasses.replace(TINY, batch_trials=64), out)
    assert again["scenarios"] == first["scenarios"]
    with pytest.raises(ValueError, match=r"trials \(64 there, 32 now\)"):
        run_collision(dataclasses.replace(TINY, trials=32), out)
