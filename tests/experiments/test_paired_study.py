"""scripts/paired_study.py (the paired robustness studies' plan as code) and the demo report's quote of its result:
the lr choice on validation data, the edge rule's inputs, the variant choice, the paired differences and verdicts,
and ``probseq reproduce``'s paragraph built from a committed ``summary.json``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import runpy
import statistics
import threading
import time
from pathlib import Path

import pytest

from probseq.experiments import reproduce
from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "paired_study.py"


@pytest.fixture(scope="module")
def study():
    return runpy.run_path(str(SCRIPT))


def _metrics(valid: float, test: dict[str, float] | None = None, status: str = "ok") -> dict:
    points = ("inside", "num_pairs=16", "num_pairs=32", "collisions=4", "gap=256", "key_noise=0.5")
    evaluation = {f"valid_{p}": {"accuracy": valid} for p in points}
    evaluation |= {f"test_{p}": {"accuracy": (test or {}).get(p, valid)} for p in points}
    return {"status": status, "eval": evaluation}


def _write_sweep(folder: Path, units: dict[tuple[float, int], dict]) -> None:
    folder.mkdir(parents=True)
    body = {f"u{i}": {"learning_rate": lr, "seed": s, "metrics": m} for i, ((lr, s), m) in enumerate(units.items())}
    (folder / "results.json").write_text(json.dumps({"units": body}))


def test_choose_lr_takes_the_best_mean_validation_and_the_smaller_lr_on_ties(study):
    records = {(lr, s): _metrics(v) for lr, v in ((1e-3, 0.5), (3e-3, 0.8), (1e-2, 0.8)) for s in (0, 1, 2)}
    best, scores = study["choose_lr"](records, (0, 1, 2))
    assert best == 3e-3 and scores == pytest.approx({1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.8})
    records[(3e-3, 2)] = _metrics(0.0, status="diverged")  # a diverged run counts as 0
    best, scores = study["choose_lr"](records, (0, 1, 2))
    assert best == 1e-2 and scores[3e-3] == pytest.approx(0.8 * 2 / 3)
    del records[(1e-2, 1)]  # an lr without every stage-1 seed is not chosen
    assert study["choose_lr"](records, (0, 1, 2))[0] == 3e-3


@pytest.mark.parametrize(
    ("mean", "half", "word"),
    [(0.1, 0.05, "better"), (-0.1, 0.05, "worse"), (0.01, 0.05, "indistinguishable"), (0.01, 0.2, "undecided")],
)
def test_verdict_rule(study, mean, half, word):
    assert study["verdict"](mean, half) == word


@pytest.mark.integration
def test_report_pairs_seeds_and_writes_the_verdicts(study, tmp_path):
    """Two paired arms over 10 seeds: the paired mean difference and t-interval per endpoint equal a direct
    computation; the Bayesian variant is the one better on validation at the primary points, not on test."""
    root, out = tmp_path / "root", tmp_path / "out"
    gdn_test = {s: 0.50 + 0.02 * s for s in range(10)}
    bayes_gain = {s: 0.10 + 0.01 * (s % 3) for s in range(10)}
    _write_sweep(
        root / "gated_deltanet" / "grid",
        {(lr, s): _metrics(v) for lr, v in ((3e-4, 0.7), (1e-3, 0.9), (3e-3, 0.8)) for s in range(3)},
    )
    _write_sweep(
        root / "gated_deltanet" / "paired",
        {(1e-3, s): _metrics(0.95, {"num_pairs=16": gdn_test[s]}) for s in range(10)},
    )
    # learned: better on test, worse on validation; stationary: better on validation → the Bayesian Layer
    _write_sweep(
        root / "bayesian_learned" / "grid",
        {(lr, s): _metrics(0.6, {"num_pairs=16": 1.0}) for lr in (3e-4, 1e-3, 3e-3) for s in range(3)},
    )
    stationary = {(lr, s): _metrics(v) for lr, v in ((3e-4, 0.8), (1e-3, 0.95), (3e-3, 0.9)) for s in range(3)}
    _write_sweep(root / "bayesian_stationary" / "grid", stationary)
    _write_sweep(
        root / "bayesian_stationary" / "paired",
        {(1e-3, s): _metrics(0.95, {"num_pairs=16": gdn_test[s] + bayes_gain[s]}) for s in range(10)},
    )
    study["main"](["report", "recall", "--root", str(root), "--out", str(out)])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["bayesian_layer"] == "bayesian_stationary"
    assert summary["chosen_lr"]["gated_deltanet"] == 1e-3
    row = next(r for r in summary["paired"] if r["endpoint"] == "num_pairs=16" and r["analysis"] == "all")
    diffs = list(bayes_gain.values())
    half = statistics.stdev(diffs) / 10**0.5 * 2.2622  # t_{0.975, 9}
    assert row["seeds"] == 10 and row["mean_difference"] == pytest.approx(statistics.fmean(diffs), abs=1e-4)
    assert row["half_width_95"] == pytest.approx(half, abs=2e-4)
    assert row["verdict"] == "better"
    equal = next(r for r in summary["paired"] if r["endpoint"] == "collisions=4" and r["analysis"] == "all")
    assert equal["mean_difference"] == 0 and equal["verdict"] == "indistinguishable"
    with open(out / "calibration.csv") as f:
        calibration = list(csv.DictReader(f))
    assert {r["arm"] for r in calibration} == {"gated_deltanet", "bayesian_learned", "bayesian_stationary"}
    assert (out / "paired_differences.png").stat().st_size > 0

    # the demo report quotes it
    quoted = reproduce.read_paired_studies(tmp_path / "evidence")
    assert quoted == {}
    (tmp_path / "evidence" / "recall_paired").mkdir(parents=True)
    (out / "summary.json").rename(tmp_path / "evidence" / "recall_paired" / "summary.json")
    quoted = reproduce.read_paired_studies(tmp_path / "evidence")
    text = reproduce.paired_verdict("recall", quoted["recall"])
    assert "`bayesian_stationary`" in text and f"num_pairs=16 {row['mean_difference']:+.3f}" in text
    assert "**better**" in text and "**indistinguishable**" in text


def test_demo_report_says_when_the_paired_study_is_missing_unfinished_or_damaged(tmp_path):
    assert "not in this checkout" in reproduce.paired_verdict("mqar", None)
    unfinished = {"chosen_lr": {}, "bayesian_layer": None, "paired": []}
    assert "under way" in reproduce.paired_verdict("recall", unfinished)
    (tmp_path / "mqar_paired").mkdir()
    (tmp_path / "mqar_paired" / "summary.json").write_text("{not json")
    found = reproduce.read_paired_studies(tmp_path)
    assert "error" in found["mqar"] and "unreadable" in reproduce.paired_verdict("mqar", found["mqar"])
    assert reproduce.read_paired_studies(None) == {}


def test_demo_report_says_a_verdict_at_the_floor_is_at_the_floor():
    """The plan's amendment: a verdict where both arms are below 0.1 is reported as "at the floor"."""
    row = {"analysis": "all", "seeds": 10, "mean_difference": 0.02, "low": 0.001, "high": 0.039, "verdict": "better"}
    summary = {
        "bayesian_layer": "bayesian_stationary",
        "paired": [
            {**row, "endpoint": "T512_k128", "at_floor": False},
            {**row, "endpoint": "T1024_k256", "at_floor": True},
        ],
    }
    text = reproduce.paired_verdict("mqar", summary)
    assert "T512_k128 +0.020 [+0.001, +0.039] over 10 seeds: **better**" in text
    assert "T1024_k256 +0.020 [+0.001, +0.039] over 10 seeds: **at the floor** (both arms below 0.1" in text


def _rows(values: dict[int, float], learned: bool = True) -> dict[int, dict]:
    points = ("num_pairs=16", "num_pairs=32", "collisions=4")
    return {s: {"learned": learned, **{f"test_{p}": v for p in points}} for s, v in values.items()}


def test_an_undecided_first_look_extends_the_primary_comparison_to_20_seeds(study):
    """Plan: at 10 seeds a primary endpoint whose interval contains 0 with half-width > 0.05 sends Gated DeltaNet
    and the Bayesian Layer to seeds 10–19; the 20-seed analysis is then the final one, the first look kept."""
    task = study["TASKS"]["recall"]
    gdn = _rows({s: 0.5 for s in range(20)})
    noisy = {s: 0.5 + (0.3 if s % 2 else -0.25) for s in range(20)}  # mean +0.025, sd ≈ 0.29 → undecided
    first = study["paired_analysis"](task, "bayesian_learned", _rows({s: noisy[s] for s in range(10)}), gdn)
    looks = {r["analysis"] for r in first}
    assert looks == {"first look (10 seeds)", "all", "both learned"}
    assert {r["verdict"] for r in first if r["analysis"] == "first look (10 seeds)"} == {"undecided"}
    assert {r["verdict"] for r in first if r["analysis"] != "first look (10 seeds)"} == {"partial"}

    final = study["paired_analysis"](task, "bayesian_learned", _rows(noisy), gdn)
    rows = [r for r in final if r["analysis"] == "all"]
    mean, half = study["t_interval"]([noisy[s] - 0.5 for s in range(20)])
    assert all(r["seeds"] == 20 and r["mean_difference"] == round(mean, 4) for r in rows)
    assert {r["verdict"] for r in rows} == {study["verdict"](mean, half)}

    decided = study["paired_analysis"](task, "bayesian_learned", _rows({s: 0.7 for s in range(10)}), gdn)
    assert {r["analysis"] for r in decided} == {"all", "both learned"}  # no extension when every endpoint is decided
    assert {r["verdict"] for r in decided} == {"better"}


def test_mqar_secondary_points_are_analysed_like_the_primary_ones_but_never_extend_the_study(study):
    """The amendment before stage 1: (128, 32) and (256, 64) get paired differences of their own, each row with both
    arms' mean accuracy (a floor shows there); an undecided secondary point does not send the study to 20 seeds."""
    task = study["TASKS"]["mqar"]
    points = (*task.primary, *task.secondary)
    gdn = {s: {"learned": True, **{f"test_{p}": 0.05 for p in points}} for s in range(10)}
    bayes = {
        s: {
            "learned": True,
            **{f"test_{p}": 0.06 for p in task.primary},  # decided: +0.01, no spread
            **{f"test_{p}": 0.05 + (0.4 if s % 2 else -0.3) for p in task.secondary},  # undecided
        }
        for s in range(10)
    }
    rows = study["paired_analysis"](task, "bayesian_learned", bayes, gdn)
    assert {r["analysis"] for r in rows} == {"all", "both learned", "secondary points"}  # no first look: no stage 3
    secondary = [r for r in rows if r["analysis"] == "secondary points"]
    assert [r["endpoint"] for r in secondary] == list(task.secondary)
    assert {r["verdict"] for r in secondary} == {"undecided"}
    primary = [r for r in rows if r["analysis"] == "all"]
    assert {(r["bayesian_mean"], r["gdn_mean"], r["verdict"]) for r in primary} == {(0.06, 0.05, "better")}
    assert {r["at_floor"] for r in primary} == {True}  # both below 0.1: a verdict at the floor, reported as such
    assert {r["at_floor"] for r in secondary} == {False}


def test_the_mqar_mamba2_arm_is_zoologys_mamba2_model_and_the_recall_arms_are_unchanged(study):
    """The amendment before MQAR's stage 1 changes that task's ranking-only Mamba-2 arm alone."""
    mqar = {arm.name: arm for arm in study["task_arms"](study["TASKS"]["mqar"])}
    recall = {arm.name: arm for arm in study["task_arms"](study["TASKS"]["recall"])}
    assert list(mqar) == list(recall) == [arm.name for arm in study["ARMS"]]
    assert mqar["mamba2"].sets == ("init=zoology", "layout=mixers") and max(mqar["mamba2"].grid) == 1e-2
    assert not mqar["mamba2"].paired
    assert recall["mamba2"] == study["ARM_BY_NAME"]["mamba2"]
    assert all(mqar[name] == recall[name] for name in mqar if name != "mamba2")


def _fake_study(value, delay=0.02, fail=None):
    """The script's module with ``run_sweep`` replaced by a fake that writes every unit's metrics at once:
    ``value(arm, label, lr, seed, split)`` is each accuracy; ``fail`` an arm name whose sweeps raise. Returns the
    module's namespace and the list of calls ``(arm, label, lrs, seeds, workers, sets, extra)`` in start order."""
    study = runpy.run_path(str(SCRIPT))
    names = study["run"].__globals__
    task = study["TASKS"]["mqar"]
    points = (*task.also, *task.primary, *task.secondary)
    calls, active, lock = [], [0, 0], threading.Lock()  # active: now, peak

    def fake_sweep(task_, root, arm, label, lrs, seeds, workers, extra=(), out=None):
        with lock:
            calls.append((arm.name, label, tuple(lrs), tuple(seeds), workers, arm.sets, tuple(extra)))
            active[0] += 1
            active[1] = max(active)
        try:
            if arm.name == fail:
                raise SystemExit(f"{arm.name} {label} failed")
            time.sleep(delay)
            units = {
                (lr, s): {
                    "status": "ok",
                    "steps": int(dict(e.split("=") for e in extra).get("max_steps", 1500)),
                    "eval": {
                        f"{split}_{p}": {"accuracy": value(arm.name, label, lr, s, split)}
                        for split in ("valid", "test")
                        for p in points
                    },
                }
                for lr in lrs
                for s in seeds
            }
            folder = out or study["sweep_dir"](root, arm, label)
            folder.mkdir(parents=True, exist_ok=True)
            merged = {**study["read_sweep"](folder), **units}
            body = {
                f"u{i}": {"learning_rate": lr, "seed": s, "metrics": m} for i, ((lr, s), m) in enumerate(merged.items())
            }
            (folder / "results.json").write_text(json.dumps({"units": body}))
            return units
        finally:
            with lock:
                active[0] -= 1

    names["run_sweep"] = fake_sweep
    names["choose_steps"] = lambda task_, root, workers: ("max_steps=1",)
    study["_peak"] = active
    return study, calls


def test_run_keeps_every_core_busy_with_single_worker_sweeps_in_the_plans_order(tmp_path):
    """``run`` drives each arm's sweeps with one worker and ``--workers`` of them at once; each paired arm goes from its
    stage 1 to its stage 2 without waiting for the other arms (no core idles while one arm's grid ends), the arms
    that decide the primary comparison (GDN, both Bayesian variants) first, the ranking-only arms after them."""

    def value(arm, label, lr, seed, split):  # the middle of every grid is best (no extension); Bayesian +0.1
        grid = sorted(ARMS[arm].grid)
        return (0.8 if lr == grid[1] else 0.5) + (0.1 if arm.startswith("bayesian") else 0.0)

    study, calls = _fake_study(value)
    ARMS = {arm.name: arm for arm in study["task_arms"](study["TASKS"]["mqar"])}
    study["run"](argparse.Namespace(task="mqar", root=str(tmp_path), workers=2))

    assert study["_peak"][1] == 2  # two sweeps at once
    assert all(call[4] == 1 for call in calls)  # one worker each
    order = [(call[0], call[1]) for call in calls]
    paired_arms = [name for name, arm in ARMS.items() if arm.paired]
    ranking_arms = [name for name, arm in ARMS.items() if not arm.paired]
    decisive = ["gated_deltanet", "bayesian_learned", "bayesian_stationary"]
    stage2 = [name for name, label in order if label == "paired"]
    assert sorted(stage2) == sorted(paired_arms)
    for name in paired_arms:  # every arm's stage 2 right after its own grid, not after every arm's
        assert order.index((name, "grid")) < order.index((name, "paired"))
    first_other = min(order.index((name, "grid")) for name in paired_arms if name not in decisive)
    assert max(order.index((name, "grid")) for name in decisive) < first_other  # the primary comparison first
    assert order.index(("gated_deltanet", "paired")) < first_other  # GDN's stage 2 before the other arms begin
    last_decisive = max(order.index((name, "paired")) for name in decisive)
    assert last_decisive < min(order.index((name, "grid")) for name in ranking_arms)
    assert not {"extended", "same_lr"} & {label for _, label in order}  # decided at 10 seeds; one common lr
    mamba = [call for call in calls if call[0] == "mamba2"]
    assert mamba[0][2] == (1e-3, 3e-3, 1e-2) and mamba[0][5] == ("init=zoology", "layout=mixers")


def test_run_extends_an_undecided_study_and_report_chooses_lrs_on_stage_1_sweeps_only(tmp_path):
    """An undecided first look sends GDN and the Bayesian Layer to seeds 10–19 (in parallel); a Bayesian lr found by
    edge extensions (9.49e-5) brings GDN's exploratory same-lr sweep there — which ``report`` must not take as a
    candidate for GDN's lr even where it scores higher."""

    def value(arm, label, lr, seed, split):
        if arm.startswith("bayesian"):
            if split == "test":
                return 0.5 + (0.3 if seed % 2 else -0.25)  # paired difference undecided at 10 seeds
            return 0.8 if abs(lr - 9.49e-5) < 1e-9 else 0.5  # optimum below the grid: two edge extensions
        if arm == "gated_deltanet" and label == "same_lr":
            return 0.95  # higher than GDN's stage-1 optimum, but not a stage-1 lr
        if split == "test":
            return 0.5
        return 0.8 if lr == 1e-3 else 0.5

    study, calls = _fake_study(value, delay=0.0)
    study["run"](argparse.Namespace(task="mqar", root=str(tmp_path), workers=2))
    labels = [(call[0], call[1]) for call in calls]
    assert ("bayesian_learned", "lr9.49e-05") in labels and ("bayesian_learned", "lr3e-05") in labels
    extended = [call for call in calls if call[1] == "extended"]
    assert sorted(call[0] for call in extended) == ["bayesian_learned", "gated_deltanet"]
    assert all(call[3] == tuple(range(10, 20)) for call in extended)
    same_lr = [call for call in calls if call[1] == "same_lr"]
    assert same_lr[0][0] == "gated_deltanet" and 9.49e-5 in same_lr[0][2] and same_lr[0][3] == tuple(range(20))

    out = tmp_path / "report"
    study["report"](argparse.Namespace(task="mqar", root=str(tmp_path), out=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chosen_lr"]["gated_deltanet"] == 1e-3 and summary["chosen_lr"]["bayesian_learned"] == 9.49e-5
    final = [r for r in summary["paired"] if r["analysis"] == "all"]
    assert final and all(r["seeds"] == 20 for r in final)


def test_the_slow_decay_study_runs_gdn_and_the_stationary_bayesian_layer_only_and_pairs_them(tmp_path):
    """``mqar_slow_decay`` (the primary comparison again, every decay rate at 0.01× at step 0): the MQAR recipe plus
    ``decay_init_scale=0.01`` and 1,500 steps, no steps pilot, only Gated DeltaNet and the stationary Bayesian Layer
    (fixed in advance, never chosen) over lr {1e-3, 3e-3, 1e-2}; ``report`` pairs exactly those two."""

    def value(arm, label, lr, seed, split):  # 3e-3 best for both (interior); Bayesian +0.2 on test
        return (0.8 if lr == 3e-3 else 0.5) + (0.2 if arm.startswith("bayesian") and split == "test" else 0.0)

    study, calls = _fake_study(value, delay=0.0)
    task = study["TASKS"]["mqar_slow_decay"]
    assert task.base == (*study["TASKS"]["mqar"].base, "max_steps=1500", "decay_init_scale=0.01")
    study["run"](argparse.Namespace(task="mqar_slow_decay", root=str(tmp_path), workers=2))
    assert {call[0] for call in calls} == {"gated_deltanet", "bayesian_stationary"}
    assert sorted((call[0], call[1]) for call in calls) == [
        ("bayesian_stationary", "grid"),
        ("bayesian_stationary", "paired"),
        ("gated_deltanet", "grid"),
        ("gated_deltanet", "paired"),
    ]
    assert all(call[2] == (1e-3, 3e-3, 1e-2) for call in calls if call[1] == "grid")
    assert [call[5] for call in calls if call[0] == "bayesian_stationary"][0] == ("retention=stationary",)

    out = tmp_path / "report"
    study["report"](argparse.Namespace(task="mqar_slow_decay", root=str(tmp_path), out=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bayesian_layer"] == "bayesian_stationary"
    assert summary["chosen_lr"] == {"gated_deltanet": 3e-3, "bayesian_stationary": 3e-3}
    primary = [r for r in summary["paired"] if r["analysis"] == "all"]
    assert [r["endpoint"] for r in primary] == ["T512_k128", "T1024_k256"]
    assert all(r["bayesian"] == "bayesian_stationary" for r in primary)
    assert all(r["mean_difference"] == pytest.approx(0.2) and r["seeds"] == 10 for r in primary)
    # the ranking check: this study's Gated DeltaNet (0.8) beside the committed first study's arms without a decay
    # rate (its Gated DeltaNet, Mamba-2 and Bayesian arms left out)
    reference = json.loads((REPO / "results" / "mqar_paired" / "ranking.json").read_text())
    standing = {r["arm"]: r["stage1_score"] for r in reference["ranking"]}
    ranking = summary["ranking_check"]
    assert ranking["reference"] == "results/mqar_paired/ranking.json"
    arms = {r["arm"]: r for r in ranking["ranking"]}
    assert set(arms) == {"gated_deltanet", "bayesian_stationary", "attention", "deltanet", "linear_attention"}
    assert arms["gated_deltanet"]["stage1_score"] == pytest.approx(0.8) and arms["gated_deltanet"]["this_study"]
    assert arms["linear_attention"]["stage1_score"] == standing["linear_attention"]
    assert not arms["linear_attention"]["this_study"]
    scores = [r["stage1_score"] for r in ranking["ranking"]]
    assert scores == sorted(scores, reverse=True)
    expected = 0.8 > standing["linear_attention"] and standing["deltanet"] > standing["linear_attention"]
    assert ranking["checks"]["delta_rule_above_linear_attention"] is expected
    assert ranking["checks"]["attention_first"] is (standing["attention"] > 0.8 + 0.0)


def test_ranking_checks_read_the_order(study):
    checks = study["ranking_checks"]
    scores = {"attention": (1e-2, 0.9), "gated_deltanet": (3e-3, 0.7), "deltanet": (3e-3, 0.72)}
    assert checks(scores) == {"attention_first": True, "delta_rule_above_linear_attention": None}
    assert checks(scores | {"linear_attention": (3e-2, 0.69)})["delta_rule_above_linear_attention"] is True
    assert checks(scores | {"linear_attention": (3e-2, 0.71)})["delta_rule_above_linear_attention"] is False
    assert checks(scores | {"linear_attention": (3e-2, 0.95)})["attention_first"] is False


def test_a_failing_arm_stops_the_arms_not_yet_started(tmp_path):
    """The first failure cancels the queued arms (the running ones end; every sweep stays resumable)."""
    study, calls = _fake_study(lambda *a: 0.8, delay=0.3, fail="bayesian_learned")
    with pytest.raises(SystemExit, match="bayesian_learned grid failed"):
        study["run"](argparse.Namespace(task="mqar", root=str(tmp_path), workers=2))
    started = {call[0] for call in calls}
    assert {"gated_deltanet", "bayesian_learned"} <= started
    assert "bayesian_stationary" not in started and "paired" not in {call[1] for call in calls}


@pytest.mark.parametrize("strong_extension", [False, True])
def test_confirmation_takes_a_common_lr_on_stage_1_validation_and_pairs_fresh_seeds(tmp_path, strong_extension):
    """The confirmation (results/recall_confirm/README.md): the common lr maximises the two arms' mean stage-1 score
    over the lrs both have; an edge optimum is checked against the nearest lr beyond it that one arm has — the other
    arm trains it only if it could still win — and both arms then run seeds 20–39 there, paired in the report."""

    def value(arm, label, lr, seed, split):
        if split == "test":  # Bayesian +0.02 at every seed: a tight positive difference
            return 0.5 + 0.01 * (seed % 3) + (0.02 if arm == "bayesian_learned" else 0.0)
        if arm == "bayesian_learned":
            if abs(lr - 9.49e-5) < 1e-12:
                return 0.99 if strong_extension else 0.6
            return {3e-4: 0.9, 1e-3: 0.8, 3e-3: 0.7}[lr]
        if arm == "gated_deltanet":
            return {9.49e-5: 0.95, 3e-4: 0.85, 1e-3: 0.86, 3e-3: 0.8}.get(round(lr, 7), 0.8)
        return 0.5  # the stationary retention: not the Bayesian Layer

    study, calls = _fake_study(value, delay=0.0)
    fake_sweep = study["run"].__globals__["run_sweep"]  # the fake (runpy's returned dict holds the real one)
    assert fake_sweep is not study["run_sweep"]
    task, root, arms = study["TASKS"]["mqar"], tmp_path, study["ARM_BY_NAME"]
    for name in ("gated_deltanet", "bayesian_learned", "bayesian_stationary"):
        fake_sweep(task, root, arms[name], "grid", list(arms[name].grid), [0, 1, 2], 1)
    if strong_extension:  # the learned arm's grid reached 9.49e-5 (an edge extension of its own stage 1)
        fake_sweep(task, root, arms["bayesian_learned"], "lr9.49e-05", [9.49e-5], [0, 1, 2], 1)
    calls.clear()
    study["confirm"](argparse.Namespace(task="mqar", root=str(root), workers=2, first_study=None))
    labels = [(c[0], c[1]) for c in calls]
    # joint scores: 3e-4 0.875, 1e-3 0.83, 3e-3 0.75 → 3e-4, the common grid's lower edge; with the learned arm's
    # 9.49e-5 at 0.99 the bound (0.99 + 1)/2 beats 0.875: GDN trains it (0.95 → joint 0.97, the new optimum)
    expected_lr = 9.49e-5 if strong_extension else 3e-4
    assert (("gated_deltanet", "lr9.49e-05") in labels) == strong_extension
    confirm = [c for c in calls if c[1] == "confirm"]
    assert sorted(c[0] for c in confirm) == ["bayesian_learned", "gated_deltanet"]
    assert all(c[2] == (expected_lr,) and c[3] == tuple(range(20, 40)) and c[4] == 1 for c in confirm)

    out = tmp_path / "report"
    study["confirm_report"](argparse.Namespace(task="mqar", root=str(root), out=str(out), first_study=None))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["common_lr"] == expected_lr and summary["bayesian_layer"] == "bayesian_learned"
    rows = [r for r in summary["paired"] if r["analysis"] == f"confirmation, common lr {expected_lr:g}"]
    assert {r["endpoint"] for r in rows} == set(task.primary)
    assert all(
        r["seeds"] == 20 and r["mean_difference"] == pytest.approx(0.02) and r["verdict"] == "better" for r in rows
    )
    assert (out / "paired_differences.png").is_file()


def _committed_first_study(folder: Path, steps_learned: int = 6) -> Path:
    """A first study's committed results as ``report`` writes them: ``calibration.csv`` and ``summary.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        ("gated_deltanet", 3e-4, 0.80, False),
        ("gated_deltanet", 1e-3, 0.85, False),
        ("gated_deltanet", 3e-3, 0.86, True),
        ("deltanet", 3e-3, 0.70, True),
        ("attention", 1e-2, 0.94, True),
        ("bayesian_learned", 3e-4, 0.90, True),
        ("bayesian_learned", 1e-3, 0.80, False),
        ("bayesian_learned", 3e-3, 0.70, False),
        ("bayesian_stationary", 3e-3, 0.74, True),
    ]
    with (folder / "calibration.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "lr", "seeds", "learned", "mean_valid_all", "stage1_score", "chosen"])
        writer.writerows([arm, lr, 3, 3, score, score, chosen] for arm, lr, score, chosen in rows)
    summary = {
        "bayesian_layer": "bayesian_learned",
        "chosen_lr": {arm: lr for arm, lr, _, chosen in rows if chosen},
        "steps_pilot": {"runs": 6, "learned": steps_learned},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.mark.parametrize(("steps_learned", "steps"), [(6, 1500), (4, 3000)])
def test_rank_trains_only_the_ranking_arms_at_the_committed_steps_and_checks_the_ranking(
    tmp_path, steps_learned, steps
):
    """``rank`` on a machine without the study's runs: only the ranking-only arms' stage 1, at the steps the committed
    pilot record implies (the plan's rule, no pilot retrained); ``rank-report`` ranks every arm by its stage-1 score
    at its chosen lr, the ranking arms' from their runs, the others' from the committed ``calibration.csv``."""

    def value(arm, label, lr, seed, split):  # linear attention 0.6 at its best lr; Mamba-2 learns in 2 of 3 seeds
        if arm == "linear_attention":
            return 0.6 if lr == 3e-3 else 0.4
        return 0.95 if seed else 0.3

    study, calls = _fake_study(value, delay=0.0)
    out = _committed_first_study(tmp_path / "results", steps_learned)
    study["rank"](argparse.Namespace(task="mqar", root=str(tmp_path / "root"), first_study=str(out), workers=2))
    assert {c[0] for c in calls} == {"linear_attention", "mamba2"}
    assert all(c[6] == (f"max_steps={steps}",) for c in calls)

    study["rank_report"](argparse.Namespace(task="mqar", root=str(tmp_path / "root"), out=str(out)))
    summary = json.loads((out / "ranking.json").read_text())
    order = [r["arm"] for r in summary["ranking"]]
    assert (
        order[:2] == ["attention", "bayesian_learned"]
        and order.index("linear_attention") == order.index("deltanet") + 1
    )
    by_arm = {r["arm"]: r for r in summary["ranking"]}
    assert by_arm["linear_attention"] == {"arm": "linear_attention", "lr": 3e-3, "stage1_score": 0.6}
    assert by_arm["gated_deltanet"]["lr"] == 3e-3  # the committed chosen row, not another lr
    assert summary["checks"] == {
        "attention_first": True,
        "delta_rule_above_linear_attention": True,
        "mamba2_learns_the_easy_segment": True,
    }
    assert summary["learned_at_chosen_lr"]["mamba2"] == 2 and summary["complete"]
    assert summary["chosen_on_grid_edge"] == {"linear_attention": False, "mamba2": True}  # all tied: the smallest lr
    assert summary["provisional"] == []

    assert [c[1] for c in calls if c[0] == "mamba2"] == ["grid", "lr0.000316", "lr9.99e-05"]  # two edge extensions

    # as stage 1 stood before Mamba-2's second extension finished: its optimum on the edge, so provisional
    task, arms, partial = (
        study["TASKS"]["mqar"],
        study["run"].__globals__["task_arms"](study["TASKS"]["mqar"]),
        tmp_path / "partial",
    )
    fake_sweep = study["run"].__globals__["run_sweep"]
    by_name = {arm.name: arm for arm in arms}
    fake_sweep(task, partial, by_name["linear_attention"], "grid", [1e-3, 3e-3, 1e-2], [0, 1, 2], 1)
    fake_sweep(task, partial, by_name["mamba2"], "grid", [1e-3, 3e-3, 1e-2], [0, 1, 2], 1)
    fake_sweep(task, partial, by_name["mamba2"], "lr0.000316", [3.16e-4], [0, 1, 2], 1)
    study["rank_report"](argparse.Namespace(task="mqar", root=str(partial), out=str(out)))
    assert json.loads((out / "ranking.json").read_text())["provisional"] == ["mamba2"]
    assert not json.loads((out / "ranking.json").read_text())["complete"]
    study["rank_report"](argparse.Namespace(task="mqar", root=str(tmp_path / "root"), out=str(out)))
    with (out / "ranking.csv").open() as handle:
        assert {r["arm"] for r in csv.DictReader(handle)} == {"linear_attention", "mamba2"}
    assert (out / "ranking.png").is_file()


def test_rank_refuses_a_first_study_without_its_steps_record(tmp_path):
    study, calls = _fake_study(lambda *a: 0.5, delay=0.0)
    (tmp_path / "summary.json").write_text(json.dumps({"bayesian_layer": "bayesian_learned"}))
    with pytest.raises(SystemExit, match="no readable steps_pilot"):
        study["rank"](
            argparse.Namespace(task="mqar", root=str(tmp_path / "root"), first_study=str(tmp_path), workers=2)
        )
    assert not calls


def test_confirmation_from_the_committed_first_study_takes_its_choices_without_its_runs(tmp_path):
    """``confirm --first-study``: the Bayesian Layer from the committed ``summary.json``, the common lr from the
    stage-1 scores of the committed ``calibration.csv`` (3e-4: joint 0.85 against 0.825 and 0.78), the steps from
    its pilot record; nothing of the first study is retrained."""
    study, calls = _fake_study(lambda arm, label, lr, seed, split: 0.9, delay=0.0)
    out = _committed_first_study(tmp_path / "results")
    root = tmp_path / "root"
    study["confirm"](argparse.Namespace(task="mqar", root=str(root), workers=2, first_study=str(out)))
    assert sorted(c[0] for c in calls) == ["bayesian_learned", "gated_deltanet"]
    assert all(c[1] == "confirm" and c[2] == (3e-4,) and c[6] == ("max_steps=1500",) for c in calls)
    report = tmp_path / "report"
    study["confirm_report"](argparse.Namespace(task="mqar", root=str(root), out=str(report), first_study=str(out)))
    summary = json.loads((report / "summary.json").read_text())
    assert summary["common_lr"] == 3e-4 and summary["joint_stage1_scores"] == {
        "0.0003": 0.85,
        "0.001": 0.825,
        "0.003": 0.78,
    }


def test_the_committed_recall_study_fixes_the_confirmations_common_lr_as_its_plan_states(study):
    """The recall confirmation's plan (results/recall_confirm/README.md) computed its common lr, 3e-4, from the first
    study's committed stage-1 scores; reading them back gives the same lr and joint scores."""
    first = REPO / "results" / "recall_paired"
    task = study["TASKS"]["recall"]
    arms = study["confirm_arms"](task, REPO / "no-such-root", first)
    lr, joint = study["common_lr"](task, REPO / "no-such-root", arms, train=False, first_study=first)
    assert arms == ("gated_deltanet", "bayesian_learned") and lr == 3e-4
    assert joint == pytest.approx({3e-4: 0.9025, 1e-3: 0.8624, 3e-3: 0.87635})


@pytest.mark.integration
def test_archived_records_restored_on_a_fresh_machine_are_taken_not_trained(study, tmp_path, monkeypatch):
    """``archive`` copies a finished sweep's unit records out of the root; on a machine with neither the root nor
    the runs' folders, ``restore`` puts them back and the same sweep takes them instead of training again."""
    import shutil  # noqa: PLC0415

    import probseq.train.trainer as trainer_module  # noqa: PLC0415
    from probseq.experiments import mqar  # noqa: PLC0415
    from probseq.experiments.common import apply_overrides  # noqa: PLC0415
    from probseq.train.sweep import run_units, runs_root  # noqa: PLC0415
    from tests.experiments.test_mqar_and_recall_sweeps import TINY_MQAR  # noqa: PLC0415

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = dataclasses.replace(
        apply_overrides(mqar.PRESETS["quick"], TINY_MQAR),
        mixers=("attention",),
        learning_rates=(0.01,),
        seeds=(0, 1),
        max_steps=2,
    )
    units = config.units()
    root, archive = tmp_path / "root", tmp_path / "results" / "units"
    first = run_units(units, "mqar", root / "attention" / "grid", log=lambda line: None).metrics
    study["archive"](argparse.Namespace(task="mqar", root=str(root), out=str(archive)))
    assert sorted(p.name for p in archive.glob("attention/grid/*.json")) == sorted(
        f"{u.name}-{u.config.fingerprint()}.json" for u in units
    )
    shutil.rmtree(root)
    shutil.rmtree(runs_root())  # a fresh machine: no run folder, no final/ to take a unit from

    study["restore"](argparse.Namespace(task="mqar", root=str(root), out=str(archive)))

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trainer_module, "train", no_training)
    again = run_units(units, "mqar", root / "attention" / "grid", log=lambda line: None)
    assert again.metrics == first and again.from_cache == len(units)


def _run_rows(study, value, arm: str, lr: float, seeds) -> list[dict]:
    """Rows of a committed ``runs.csv`` (``run_row``'s columns) for ``arm`` at ``lr``: every run learned, test
    accuracies from ``value(arm, label, lr, seed, split)``."""
    task = study["TASKS"]["mqar"]
    points = dict.fromkeys((*task.also, *task.primary, *task.secondary))
    return [
        {"arm": arm, "lr": lr, "seed": s, "learned": True, **{f"test_{p}": value(arm, "", lr, s, "t") for p in points}}
        for s in seeds
    ]


def _bayesian_ahead_by_a_tenth(arm, label, lr, seed, split):
    """Every run learned; the Bayesian Layer's test accuracy is GDN's + 0.1 on every seed."""
    return 0.95 if split == "valid" else 0.3 + 0.01 * seed + (0.1 if arm == "bayesian_learned" else 0.0)


def test_extension_runs_seeds_10_to_19_at_the_committed_choices_and_pairs_all_20(tmp_path):
    """``extend``: GDN and the committed Bayesian Layer at their committed lrs, seeds 10–19 only; ``extend-report``
    pairs the committed runs.csv's seeds 0–9 with them: the 20-seed mean difference and t-interval equal a direct
    computation, and an unfinished extension is ``partial``."""

    def value(arm, label, lr, seed, split):
        if split == "valid":
            return 0.95  # every run learned
        return 0.3 + 0.01 * seed + (0.05 + 0.04 * (seed % 4) if arm == "bayesian_learned" else 0.0)

    study, calls = _fake_study(value, delay=0.0)
    first = _committed_first_study(tmp_path / "results")
    committed = [
        row
        for arm, lr in (("gated_deltanet", 3e-3), ("bayesian_learned", 3e-4), ("deltanet", 3e-3))
        for row in _run_rows(study, value, arm, lr, range(10))
    ]
    committed.append({**committed[0], "lr": 1e-3, "seed": 0, "test_T512_k128": 0.99})  # another lr: not paired
    study["write_csv"](first / "runs.csv", committed)
    root, out = tmp_path / "root", tmp_path / "extension"
    study["extend"](argparse.Namespace(task="mqar", root=str(root), first_study=str(first), workers=2))
    assert sorted((c[0], c[2], c[3], c[6]) for c in calls) == [
        ("bayesian_learned", (3e-4,), tuple(range(10, 20)), ("max_steps=1500",)),
        ("gated_deltanet", (3e-3,), tuple(range(10, 20)), ("max_steps=1500",)),
    ]
    study["extend_report"](argparse.Namespace(task="mqar", root=str(root), first_study=str(first), out=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == list(range(20)) and summary["learned"] == {"gated_deltanet": 20, "bayesian_learned": 20}
    differences = [0.05 + 0.04 * (s % 4) for s in range(20)]
    mean, half = statistics.fmean(differences), 2.0930 * statistics.stdev(differences) / 20**0.5  # t_{0.975, 19}
    row = next(r for r in summary["paired"] if r["endpoint"] == "T512_k128" and "both" not in r["analysis"])
    assert row["seeds"] == 20 and row["mean_difference"] == pytest.approx(mean, abs=1e-4)
    assert row["half_width_95"] == pytest.approx(half, abs=1e-4) and row["verdict"] == "better"

    # a run of another step count (trained by other code or settings) is refused, not paired
    folder = root / "bayesian_learned" / "extended"
    units = json.loads((folder / "results.json").read_text())
    key = next(iter(units["units"]))
    units["units"][key]["metrics"]["steps"] = 3000
    (folder / "results.json").write_text(json.dumps(units))
    with pytest.raises(SystemExit, match="trained 3000 steps"):
        study["extend_report"](argparse.Namespace(task="mqar", root=str(root), first_study=str(first), out=str(out)))
    units["units"][key]["metrics"]["steps"] = 1500
    (folder / "results.json").write_text(json.dumps(units))

    for folder in (root / "gated_deltanet" / "extended",):  # one extension run missing: partial
        units = json.loads((folder / "results.json").read_text())["units"]
        units.pop(next(iter(units)))
        (folder / "results.json").write_text(json.dumps({"units": units}))
    study["extend_report"](argparse.Namespace(task="mqar", root=str(root), first_study=str(first), out=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["seeds"]) == 19 and {r["verdict"] for r in summary["paired"]} == {"partial"}


def test_a_wider_extension_asks_for_every_extension_seed_and_pairs_all_of_them(tmp_path):
    """``extend --seeds 24`` after a finished 20-seed extension: the sweeps are asked for seeds 10–23 (the finished
    10–19 come from the real sweep's cache, so only 20–23 train) and ``extend-report --seeds 24`` pairs 24 seeds;
    fewer seeds than the first look's are refused."""

    value = _bayesian_ahead_by_a_tenth
    study, calls = _fake_study(value, delay=0.0)
    first = _committed_first_study(tmp_path / "results")
    study["write_csv"](
        first / "runs.csv",
        _run_rows(study, value, "gated_deltanet", 3e-3, range(10))
        + _run_rows(study, value, "bayesian_learned", 3e-4, range(10)),
    )
    root, out = tmp_path / "root", tmp_path / "extension"
    args = dict(task="mqar", root=str(root), first_study=str(first))
    study["extend"](argparse.Namespace(**args, workers=2))
    calls.clear()
    study["extend"](argparse.Namespace(**args, workers=2, seeds=24))
    assert sorted((c[0], c[3]) for c in calls) == [
        ("bayesian_learned", tuple(range(10, 24))),
        ("gated_deltanet", tuple(range(10, 24))),
    ]
    study["extend_report"](argparse.Namespace(**args, out=str(out), seeds=24))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == list(range(24))
    row = next(r for r in summary["paired"] if r["endpoint"] == "T512_k128" and "both" not in r["analysis"])
    assert row["seeds"] == 24 and row["mean_difference"] == pytest.approx(0.1, abs=1e-6)
    assert row["analysis"].startswith("24 seeds") and row["verdict"] == "better"  # all 24 in: final, not partial
    study["extend_report"](argparse.Namespace(**args, out=str(out), seeds=28))  # 24 of 28 in: partial
    assert {r["verdict"] for r in json.loads((out / "summary.json").read_text())["paired"]} == {"partial"}
    for seeds in (10, 0):
        with pytest.raises(SystemExit, match="more than the first look"):
            study["extend"](argparse.Namespace(**args, workers=2, seeds=seeds))


def test_an_extension_resumed_on_a_new_machine_takes_the_committed_runs_and_checks_a_retrained_one(tmp_path):
    """``extend --earlier DIR`` (an earlier ``extend-report``'s folder; the runs' folders are gone) trains only the
    seeds that table lacks; ``extend-report --earlier`` pairs its rows with the new runs as if all had trained here;
    a seed trained again must reproduce its committed row (to 1e-3, float rounding), or the report refuses."""

    study, calls = _fake_study(_bayesian_ahead_by_a_tenth, delay=0.0)
    first = _committed_first_study(tmp_path / "results")

    def rows(arm, lr, seeds):
        return _run_rows(study, _bayesian_ahead_by_a_tenth, arm, lr, seeds)

    study["write_csv"](
        first / "runs.csv", rows("gated_deltanet", 3e-3, range(10)) + rows("bayesian_learned", 3e-4, range(10))
    )
    earlier = tmp_path / "earlier"  # GDN 10-15 and Bayes 10-13 done; a row at another lr is not a done seed
    earlier.mkdir()
    study["write_csv"](
        earlier / "runs.csv",
        rows("gated_deltanet", 3e-3, range(10, 16))
        + rows("bayesian_learned", 3e-4, range(10, 14))
        + rows("bayesian_learned", 1e-3, [14]),
    )
    root, out = tmp_path / "root", tmp_path / "extension"
    args = dict(task="mqar", root=str(root), first_study=str(first), seeds=20, earlier=str(earlier))
    study["extend"](argparse.Namespace(**args, workers=2))
    assert sorted((c[0], c[3]) for c in calls) == [
        ("bayesian_learned", tuple(range(14, 20))),
        ("gated_deltanet", tuple(range(16, 20))),
    ]
    study["extend_report"](argparse.Namespace(**args, out=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == list(range(20)) and summary["learned"] == {"gated_deltanet": 20, "bayesian_learned": 20}
    row = next(r for r in summary["paired"] if r["endpoint"] == "T512_k128" and "both" not in r["analysis"])
    assert row["seeds"] == 20 and row["mean_difference"] == pytest.approx(0.1, abs=1e-6) and row["verdict"] == "better"
    with (out / "runs.csv").open(newline="") as handle:
        table = [(r["arm"], int(r["seed"])) for r in csv.DictReader(handle)]
    assert table == [("gated_deltanet", s) for s in range(10, 20)] + [("bayesian_learned", s) for s in range(10, 20)]

    # a committed seed trained again here reproduces its row: accepted; one that does not is refused
    study["extend"](argparse.Namespace(**{**args, "earlier": None}, workers=2))  # retrains the committed seeds too
    study["extend_report"](argparse.Namespace(**args, out=str(out)))
    changed = rows("gated_deltanet", 3e-3, range(10, 16))
    changed[2]["test_T512_k128"] += 0.0005  # float rounding: the same run
    study["write_csv"](earlier / "runs.csv", changed)
    study["extend_report"](argparse.Namespace(**args, out=str(out)))
    changed[2]["test_T512_k128"] += 0.01
    study["write_csv"](earlier / "runs.csv", changed)
    with pytest.raises(SystemExit, match="gated_deltanet seed 12 was trained again and differs"):
        study["extend_report"](argparse.Namespace(**args, out=str(out)))


def test_the_ranking_checks_say_none_without_the_arms_they_compare(study, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "calibration.csv").write_text(
        "arm,lr,seeds,learned,mean_valid_all,stage1_score,chosen\nattention,0.01,3,3,0.9,0.9,True\n"
    )
    study["rank_report"](argparse.Namespace(task="mqar", root=str(tmp_path / "root"), out=str(out)))
    summary = json.loads((out / "ranking.json").read_text())
    assert summary["checks"] == {
        "attention_first": True,
        "delta_rule_above_linear_attention": None,
        "mamba2_learns_the_easy_segment": None,
    }
    assert not summary["complete"]


def test_archive_refuses_to_replace_a_different_record_and_restore_takes_only_run_records(study, tmp_path, capsys):
    root, out = tmp_path / "root", tmp_path / "units"
    record = root / "gated_deltanet" / "grid" / "cache" / "gated_deltanet-d64-lr0.003-s0-0123456789ab.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"a": 1}')
    study["main"](["archive", "--root", str(root), "--out", str(out)])
    archived = out / "gated_deltanet" / "grid" / record.name
    assert archived.read_text() == '{"a": 1}'
    record.write_text('{"a": 2}')  # the same run's record, trained again by other code
    with pytest.raises(SystemExit, match="differ"):
        study["main"](["archive", "--root", str(root), "--out", str(out)])
    assert archived.read_text() == '{"a": 1}'

    (out / "summary.json").write_text("{}")  # not a run record: never restored
    (out / "mamba2" / "notes").mkdir(parents=True)
    (out / "mamba2" / "notes" / "summary.json").write_text("{}")
    fresh = tmp_path / "fresh"
    study["main"](["restore", "--root", str(fresh), "--out", str(out)])
    assert [p.relative_to(fresh) for p in fresh.rglob("*.json")] == [Path("gated_deltanet/grid/cache") / record.name]
    study["main"](["restore", "--root", str(root), "--out", str(out)])  # the root's own record is kept, and named
    assert record.read_text() == '{"a": 2}' and str(record) in capsys.readouterr().out


def test_demo_report_quotes_the_ranking_check_and_the_precision_extension(tmp_path):
    folder = tmp_path / "mqar_paired"
    (folder / "extension").mkdir(parents=True)
    row = {"analysis": "all", "seeds": 10, "mean_difference": 0.11, "low": 0.04, "high": 0.18, "verdict": "better"}
    (folder / "summary.json").write_text(
        json.dumps({"bayesian_layer": "bayesian_stationary", "paired": [{**row, "endpoint": "T512_k128"}]})
    )
    ranking = {
        "ranking": [
            {"arm": "attention", "lr": 0.01, "stage1_score": 0.94},
            {"arm": "linear_attention", "lr": 0.01, "stage1_score": 0.65},
        ],
        "checks": {
            "attention_first": True,
            "delta_rule_above_linear_attention": False,
            "mamba2_learns_the_easy_segment": None,
        },
        "complete": False,
    }
    (folder / "ranking.json").write_text(json.dumps(ranking))
    label = "20 seeds (precision extension)"
    extension = {"paired": [{**row, "analysis": label, "seeds": 20, "endpoint": "T512_k128", "low": 0.06}]}
    (folder / "extension" / "summary.json").write_text(json.dumps(extension))
    text = reproduce.paired_verdict("mqar", reproduce.read_paired_studies(tmp_path)["mqar"])
    assert "T512_k128 +0.110 [+0.040, +0.180] over 10 seeds: **better**" in text
    assert (
        "Precision extension (outside the plan, seeds 10–19 added): T512_k128 +0.110 [+0.060, +0.180] over 20" in text
    )
    # the widest finished extension is quoted: extension24 over extension (20), not the partial extension100
    for name, seeds, verdict in (("extension24", 24, "better"), ("extension100", 30, "partial")):
        rows = [{**row, "analysis": f"{seeds} seeds", "seeds": seeds, "endpoint": "T512_k128", "verdict": verdict}]
        (folder / name).mkdir()
        (folder / name / "summary.json").write_text(json.dumps({"seeds": list(range(seeds)), "paired": rows}))
    wide = reproduce.paired_verdict("mqar", reproduce.read_paired_studies(tmp_path)["mqar"])
    assert (
        "Precision extension (outside the plan, seeds 10–23 added): T512_k128 +0.110 [+0.040, +0.180] over 24" in wide
    )
    assert "**provisional**" in text and "attention 0.940 > linear_attention 0.650" in text
    assert "attention first: holds" in text and "delta rule above linear attention: **fails**" in text
    assert "mamba2 learns the easy segment: not yet known" in text
    (folder / "ranking.json").write_text("{broken")
    assert "Ranking check: unreadable" in reproduce.paired_verdict(
        "mqar", reproduce.read_paired_studies(tmp_path)["mqar"]
    )


def test_demo_report_quotes_the_repeat_under_a_slow_initial_decay(tmp_path):
    """results/<study>_slow_decay/summary.json (``report mqar_slow_decay``) is quoted after the first study: its
    "all seeds" rows and its ranking check; "under way" without rows; a damaged file is named."""
    (tmp_path / "mqar_paired").mkdir()
    row = {"analysis": "all", "seeds": 10, "mean_difference": 0.11, "low": 0.04, "high": 0.18, "verdict": "better"}
    (tmp_path / "mqar_paired" / "summary.json").write_text(
        json.dumps({"bayesian_layer": "bayesian_stationary", "paired": [{**row, "endpoint": "T512_k128"}]})
    )
    folder = tmp_path / "mqar_slow_decay"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"paired": []}))
    text = reproduce.paired_verdict("mqar", reproduce.read_paired_studies(tmp_path)["mqar"])
    assert "Repeat under a slow initial decay (`results/mqar_slow_decay/`): under way." in text
    repeat = {
        "paired": [
            {**row, "endpoint": "T512_k128", "mean_difference": 0.225, "low": 0.139, "high": 0.312},
            {**row, "analysis": "secondary points", "endpoint": "T128_k32"},
        ],
        "ranking_check": {
            "ranking": [
                {"arm": "gated_deltanet", "stage1_score": 0.7002},
                {"arm": "linear_attention", "stage1_score": 0.6958},
            ],
            "checks": {"attention_first": None, "delta_rule_above_linear_attention": True},
        },
    }
    (folder / "summary.json").write_text(json.dumps(repeat))
    text = reproduce.paired_verdict("mqar", reproduce.read_paired_studies(tmp_path)["mqar"])
    assert text.index("T512_k128 +0.110") < text.index("Repeated with every decay rate at 0.01×")
    assert "T512_k128 +0.225 [+0.139, +0.312] over 10 seeds: **better**" in text and "T128_k32" not in text
    assert "gated_deltanet 0.700 > linear_attention 0.696" in text
    assert "delta rule above linear attention: holds" in text and "attention first: not yet known" in text
    assert text.count("Precision extension") == 0
    # the repeat's own precision extension (extension30/, extend-report), quoted after its first look
    (folder / "extension30").mkdir()
    label = "30 seeds (precision extension)"
    extended = {**row, "analysis": label, "seeds": 30, "endpoint": "T512_k128", "mean_difference": 0.2, "low": 0.16}
    (folder / "extension30" / "summary.json").write_text(
        json.dumps({"seeds": list(range(30)), "paired": [{**extended, "high": 0.24}]})
    )
    text = reproduce.paired_verdict("mqar", reproduce.read_paired_studies(tmp_path)["mqar"])
    assert (
        "Precision extension (outside the plan, seeds 10–29 added): T512_k128 +0.200 [+0.160, +0.240] over 30" in text
    )
    assert text.index("Repeated with every decay rate") < text.index("seeds 10–29 added")
    (folder / "summary.json").write_text("{broken")
    text = reproduce.paired_verdict("mqar", reproduce.read_paired_studies(tmp_path)["mqar"])
    assert "Repeat under a slow initial decay (`results/mqar_slow_decay/`): unreadable" in text


def test_demo_report_quotes_the_confirmation_study_once_every_seed_is_in(tmp_path):
    """results/<study>_confirm/summary.json (confirm-report) is quoted beside the paired study: "under way" while
    its rows are partial, the verdicts once final, the both-learned rows left to its README."""
    (tmp_path / "recall_paired").mkdir()
    row = {"analysis": "all", "seeds": 20, "mean_difference": 0.02, "low": -0.1, "high": 0.14, "verdict": "undecided"}
    (tmp_path / "recall_paired" / "summary.json").write_text(
        json.dumps({"bayesian_layer": "bayesian_learned", "paired": [{**row, "endpoint": "num_pairs=16"}]})
    )
    (tmp_path / "recall_confirm").mkdir()
    label = "confirmation, common lr 0.0003"
    confirm = {"analysis": label, "endpoint": "num_pairs=32", "seeds": 11, "mean_difference": 0.004}
    confirm.update({"low": -0.006, "high": 0.014, "verdict": "partial", "at_floor": False})
    summary = {"common_lr": 3e-4, "seeds": list(range(20, 31)), "paired": [confirm]}
    (tmp_path / "recall_confirm" / "summary.json").write_text(json.dumps(summary))
    text = reproduce.paired_verdict("recall", reproduce.read_paired_studies(tmp_path)["recall"])
    assert "common lr 0.0003 chosen on validation): under way (11 paired seeds finished" in text
    final = {**confirm, "seeds": 20, "verdict": "indistinguishable"}
    both = {**final, "analysis": f"{label}, both learned"}
    summary = {**summary, "seeds": list(range(20, 40)), "paired": [final, both]}
    (tmp_path / "recall_confirm" / "summary.json").write_text(json.dumps(summary))
    text = reproduce.paired_verdict("recall", reproduce.read_paired_studies(tmp_path)["recall"])
    assert "num_pairs=32 +0.004 [-0.006, +0.014] over 20 seeds: **indistinguishable**" in text
    assert text.count("num_pairs=32") == 1  # the both-learned row is not quoted
    (tmp_path / "recall_confirm" / "summary.json").write_text("{broken")
    text = reproduce.paired_verdict("recall", reproduce.read_paired_studies(tmp_path)["recall"])
    assert "Confirmation (`results/recall_confirm/`): unreadable" in text


def test_a_sweep_still_running_is_read_from_its_finished_units(study, tmp_path):
    """Before a sweep writes results.json, its finished units' cache records are what the reports read."""
    folder = tmp_path / "mamba2" / "grid"
    (folder / "cache").mkdir(parents=True)
    for seed in (0, 1):
        record = {"unit": f"u{seed}", "config": {"learning_rate": 0.003, "seed": seed}, "metrics": _metrics(0.5 + seed)}
        (folder / "cache" / f"mamba2-d64-lr0.003-s{seed}-0123456789ab.json").write_text(json.dumps(record))
    assert sorted(study["read_sweep"](folder)) == [(0.003, 0), (0.003, 1)]
    _write_sweep(folder.parent / "done", {(0.01, 0): _metrics(0.9)})
    assert study["read_sweep"](folder.parent / "done") == {(0.01, 0): _metrics(0.9)}
    (folder / "cache" / "broken-0123456789ab.json").write_text("{")
    with pytest.raises(SystemExit, match="not a finished unit"):
        study["read_sweep"](folder)
