"""The RULER comparison of the distillation study's arms (scripts/ruler_compare.py, probseq.experiments.ruler_compare,
ruler_arms, ruler_paired): arms discovered from their folders, the long summary, paired differences with verdicts
and flags, the niah mean, the samples a half-width of 5 points needs, loud failures, and the plot — on fake
``probseq ruler`` folders."""

from __future__ import annotations

import csv
import gzip
import json
import math
import runpy

import pytest

from probseq.experiments import ruler_arms, ruler_compare
from probseq.experiments.ruler_eval import mean_ci
from probseq.experiments.ruler_paired import MARGIN, Paired, flags, niah_mean, pair, samples_needed, verdict
from tests.helpers import REPO

FIELDS = ["task", "length", "score", "ci_low", "ci_high", "samples", "prompt_tokens", "status"]


def write_arm(
    root, arm, units, predictions="predictions.jsonl.gz", references=lambda task, length, i: [f"r{i}"], sha=None
):
    """A ``probseq ruler`` folder ``root/ruler/arm``: ``units`` maps ``(task, length)`` to per-sample scores (a
    unit scored ``ok``) or to a status (a skipped unit); ``predictions``: the predictions file's name, or None."""
    folder = root / "ruler" / arm
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    with (folder / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for (task, length), scores in units.items():
            if isinstance(scores, str):
                row = {"task": task, "length": length, "samples": 0, "status": scores}
                writer.writerow(row | dict.fromkeys(("score", "ci_low", "ci_high", "prompt_tokens"), ""))
                continue
            mean, low, high = mean_ci(scores)
            row = {"task": task, "length": length, "score": mean, "ci_low": low, "ci_high": high}
            writer.writerow(row | {"samples": len(scores), "prompt_tokens": length - 10, "status": "ok"})
            for i, score in enumerate(scores):
                refs = references(task, length, i)
                line = {"task": task, "length": length, "index": i, "references": refs, "score": score}
                lines.append(line if sha is None else {**line, "prompt_sha": sha(task, length, i)})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if predictions == "predictions.jsonl.gz":
        (folder / predictions).write_bytes(gzip.compress(text.encode()))
    elif predictions is not None:
        (folder / predictions).write_text(text)
    (folder / "results.json").write_text(json.dumps({"seconds": 1800.0}))
    return folder


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
def test_ruler_compare_tabulates_and_plots_the_three_arms(tmp_path, capsys):
    """scripts/ruler_compare.py: every arm's score per task and length with its interval, the mean over the tasks
    scored at every length by every arm (a skipped unit drops its task from the mean), and each stage's time."""
    for offset, arm in enumerate(("teacher", "bayes", "gdn")):
        units = {}
        for task, length in [("niah_single_1", 512), ("niah_single_1", 1024), ("vt", 512), ("vt", 1024)]:
            skipped = task == "vt" and length == 512 and arm == "bayes"
            units[(task, length)] = "needs 600 tokens" if skipped else [10 * offset + length / 512] * 4
        write_arm(tmp_path, arm, units)
    (tmp_path / "distill" / "teacher").mkdir(parents=True)
    (tmp_path / "distill" / "teacher" / "train_log.json").write_text(
        json.dumps({"train_seconds": 7200.0, "tokens": 1000})
    )
    (tmp_path / "distill" / "bayes").mkdir(parents=True)
    (tmp_path / "distill" / "bayes" / "train_log.json").write_text(
        json.dumps({"tokens": 500, "stages": [{"train_seconds": 1800.0}, {"train_seconds": 1800.0}]})
    )
    main = runpy.run_path(str(REPO / "scripts" / "ruler_compare.py"))["main"]
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "ruler" / "comparison.md").read_text()
    assert "| niah_single_1 | 1024 | 2.0 [2.0, 2.0] | 12.0 [12.0, 12.0] | 22.0 [22.0, 22.0] |" in text
    assert "| vt | 512 | 1.0 [1.0, 1.0] | needs 600 tokens | 21.0 [21.0, 21.0] |" in text
    assert "| mean of 1 tasks | 512 | 1.0 | 11.0 | 21.0 |" in text  # vt is not scored everywhere: left out
    assert "| pretrain (GDN teacher) | 2.00 | 1,000 |" in text and "| distill, Bayesian arm | 1.00 | 500 |" in text
    assert "| ruler, gdn | 0.50 | |" in text
    assert (tmp_path / "ruler" / "comparison.png").stat().st_size > 10_000
    assert main([str(tmp_path / "empty")]) == 1


def test_ruler_compare_pairs_the_bayesian_arm_with_the_baseline_per_prompt(tmp_path):
    """The paired difference Bayesian − GDN baseline per unit, over the prompts both arms scored (the first
    min(n, n') samples); samples with different references (not the same prompts) are an error."""
    write_arm(tmp_path, "bayes", {("vt", 512): [100, 100, 0, 50], ("vt", 1024): [0, 0]})
    write_arm(tmp_path, "gdn", {("vt", 512): [0, 100, 0, 50, 100, 100], ("vt", 1024): [100, 0], ("cwe", 512): [100]})
    ruler_compare.compare(tmp_path)
    rows = read_csv(tmp_path / "ruler" / "paired.csv")
    by_unit = {(r["task"], r["length"]): r for r in rows}
    assert set(by_unit) == {("vt", "512"), ("vt", "1024")}  # cwe: only one arm scored it; vt is not niah
    row = by_unit[("vt", "512")]
    mean, low, high = float(row["difference"]), float(row["ci_low"]), float(row["ci_high"])
    assert (mean, int(row["pairs"]), int(row["discordant"])) == (25.0, 4, 1)  # differences 100, 0, 0, 0: sd 50
    assert low < 0 < 25 < high and math.isclose(high - mean, 1.96 * 50 / 2)
    assert (float(row["score"]), float(row["score_versus"])) == (62.5, 37.5)  # gdn's first 4 samples only
    assert float(by_unit[("vt", "1024")]["difference"]) == -50.0
    text = (tmp_path / "ruler" / "comparison.md").read_text()
    assert "| vt | 512 | +25.0 | [-24.0, +74.0] | 4 | 1 | 62.5 vs 37.5 | undecided |" in text
    write_arm(tmp_path, "gdn", {("vt", 512): [0]}, references=lambda *_: ["other"])
    with pytest.raises(ValueError, match="different samples"):
        ruler_compare.compare(tmp_path)


def test_paired_difference_and_the_niah_mean():
    """var of the mean difference = var(d) / n; the niah mean of k tasks: variance Σ_k var_k / n_k / k²."""
    one = pair([100, 100, 0, 0, 100], [0, 100, 0, 100, 0])  # d = 100, 0, 0, -100, 100
    d = [100, 0, 0, -100, 100]
    mean = sum(d) / 5
    assert one.difference == mean == one.score - one.score_versus and one.discordant == 3 and one.n == 5
    assert math.isclose(one.variance, sum((x - mean) ** 2 for x in d) / 4 / 5)
    assert math.isclose(one.half_width, 1.96 * math.sqrt(one.variance))
    two = pair([100] * 10, [0] * 5 + [100] * 5)
    three = pair([0, 100, 0], [0, 100, 100])
    both = niah_mean([one, two, three])
    assert math.isclose(both.difference, (one.difference + two.difference + three.difference) / 3)
    assert math.isclose(both.variance, (one.variance + two.variance + three.variance) / 9)
    assert (both.n, both.discordant) == (18, 3 + 5 + 1)
    with pytest.raises(ValueError, match="equally many"):
        pair([1, 2], [1])


@pytest.mark.parametrize(
    "scores, versus, expected, flag",
    [
        ([100] * 30, [0] * 15 + [100] * 15, "better", ""),
        ([0] * 15 + [100] * 15, [100] * 30, "worse", ""),
        ([50] * 400, [50] * 399 + [0], "indistinguishable", ""),
        ([100, 0] * 10, [0, 100] * 10, "undecided", ""),
        ([0] * 50, [0] * 50, "uninformative", "at floor; no discordant pairs"),
        ([100] * 50, [100] * 50, "uninformative", "at ceiling; no discordant pairs"),
        ([50] * 50, [50] * 50, "uninformative", "no discordant pairs"),
        ([0] * 49 + [100], [0] * 50, "uninformative", "at floor"),
    ],
    ids=["better", "worse", "indistinguishable", "undecided", "floor", "ceiling", "all-agree", "floor-one-pair"],
)
def test_a_degenerate_or_floor_interval_is_not_indistinguishable(scores, versus, expected, flag):
    p = pair(scores, versus)
    assert verdict(p) == expected and flags(p) == flag


def test_samples_needed_gives_the_niah_mean_a_half_width_of_five_points():
    parts = {"niah_single_1": pair([100, 0] * 20, [0, 0] * 20), "niah_multikey_2": pair([100, 0] * 20, [0, 100] * 20)}
    needed = samples_needed(parts)
    assert needed["niah_single_1"] < needed["niah_multikey_2"]  # its differences vary less: fewer samples

    def at(p: Paired, n: int) -> Paired:  # the same per-pair variance with n pairs
        return Paired(n, p.discordant, p.score, p.score_versus, p.difference, p.sd**2 / n)

    grown = niah_mean([at(parts[t], needed[t]) for t in parts])
    assert grown.half_width <= MARGIN and grown.half_width > MARGIN * 0.98
    fewer = niah_mean([at(parts[t], needed[t] - 2) for t in parts])
    assert fewer.half_width > MARGIN
    assert samples_needed({"niah_single_1": pair([0] * 10, [0] * 10)}) == {"niah_single_1": 0}


def test_arms_are_discovered_from_their_folders(tmp_path):
    for arm in ("gdn", "bayes_stationary", "teacher", "bayes", "teacher_pilots", "other"):
        write_arm(tmp_path, arm, {("niah_single_1", 512): [0, 100]})
    (tmp_path / "ruler" / "bayes_empty").mkdir()  # no summary.csv: not an arm
    arms = ruler_arms.discover_arms(tmp_path / "ruler")
    assert list(arms) == ["teacher", "bayes", "bayes_stationary", "gdn"]
    assert ruler_arms.arm_pairs(arms) == [
        ("bayes", "gdn"),
        ("bayes_stationary", "gdn"),
        ("bayes", "teacher"),
        ("bayes_stationary", "teacher"),
        ("gdn", "teacher"),
    ]
    assert ruler_arms.arm_pairs(["bayes", "teacher"]) == [("bayes", "teacher")]
    assert ruler_arms.label("bayes_stationary") == "Bayesian Layers (distilled, stationary)"


def study(tmp_path, arms=("teacher", "bayes", "bayes_stationary", "gdn")):
    """Four arms at 512 and 1024 tokens; niah_multikey_3, vt and cwe do not fit 512; bayes_stationary lacks fwe."""
    scores = {"teacher": [0, 100, 100, 0], "bayes": [100, 100, 100, 0], "bayes_stationary": [0, 0, 100, 0]}
    for arm in arms:
        base = scores.get(arm, [100, 0, 100, 0])
        units = {}
        for task in ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe"):
            for length in (512, 1024):
                if task == "fwe" and arm == "bayes_stationary":
                    continue
                fits = length > 512 or task in ("niah_single_1", "niah_multikey_2", "fwe")
                units[(task, length)] = base * (2 if task == "niah_single_1" else 1) if fits else f"skipped: {task}"
        write_arm(tmp_path, arm, units)


def test_the_long_summary_has_a_row_for_every_arm_task_and_length(tmp_path):
    study(tmp_path)
    assert ruler_compare.main([str(tmp_path), "--context", "512"]) == 0
    rows = read_csv(tmp_path / "ruler" / "summary.csv")
    assert list(rows[0]) == [
        "arm",
        "task",
        "length",
        "multiple",
        "samples",
        "score",
        "ci_low",
        "ci_high",
        "prompt_tokens",
        "status",
    ]
    assert len(rows) == 4 * 6 * 2
    by_key = {(r["arm"], r["task"], r["length"]): r for r in rows}
    assert by_key[("gdn", "vt", "512")]["status"] == "skipped: vt" and by_key[("gdn", "vt", "512")]["samples"] == "0"
    assert by_key[("bayes_stationary", "fwe", "1024")]["status"].startswith("missing:")
    assert by_key[("bayes", "niah_single_1", "1024")] | {"score": "", "ci_low": "", "ci_high": ""} == {
        "arm": "bayes",
        "task": "niah_single_1",
        "length": "1024",
        "multiple": "2",
        "samples": "8",
        "score": "",
        "ci_low": "",
        "ci_high": "",
        "prompt_tokens": "1014",
        "status": "ok",
    }
    assert float(by_key[("bayes", "niah_single_1", "1024")]["score"]) == 75.0


def test_the_paired_table_has_every_pair_and_the_niah_mean(tmp_path):
    study(tmp_path)
    assert ruler_compare.main([str(tmp_path)]) == 0  # no training log: the context is 512
    rows = read_csv(tmp_path / "ruler" / "paired.csv")
    assert list(dict.fromkeys((r["arm"], r["versus"]) for r in rows)) == ruler_arms.arm_pairs(
        ["teacher", "bayes", "bayes_stationary", "gdn"]
    )
    means = {(r["arm"], r["versus"], r["length"]): r for r in rows if r["task"] == "niah mean"}
    at_512, at_1024 = means[("bayes", "gdn", "512")], means[("bayes", "gdn", "1024")]
    assert at_512["tasks"] == "niah_single_1 niah_multikey_2" and at_512["multiple"] == "1"
    assert at_1024["tasks"] == "niah_single_1 niah_multikey_2 niah_multikey_3" and at_1024["multiple"] == "2"
    units = {(r["arm"], r["versus"], r["task"], r["length"]): r for r in rows}
    parts = [units[("bayes", "gdn", t, "1024")] for t in ("niah_single_1", "niah_multikey_2", "niah_multikey_3")]
    assert math.isclose(float(at_1024["difference"]), sum(float(p["difference"]) for p in parts) / 3)
    variances = [(float(p["half_width"]) / 1.96) ** 2 for p in parts]
    assert math.isclose(float(at_1024["half_width"]), 1.96 * math.sqrt(sum(variances) / 9))
    assert int(at_1024["pairs"]) == 8 + 4 + 4
    assert int(at_1024["samples_needed"]) == sum(int(p["samples_needed"]) for p in parts)
    assert units[("bayes", "gdn", "vt", "1024")]["samples_needed"] == ""  # not a niah task
    assert ("bayes_stationary", "gdn", "fwe", "1024") not in units  # only one arm scored it
    for row in rows:
        assert row["verdict"] in ("better", "worse", "indistinguishable", "undecided", "uninformative")
    text = (tmp_path / "ruler" / "comparison.md").read_text()
    assert "| niah mean (niah_single_1, niah_multikey_2, niah_multikey_3) | 1024 |" in text
    # the plan's one top-up: bayes − gdn only, undecided lengths only, per task and length, capped
    needed = ruler_compare.top_up([ruler_row(r) for r in rows])
    undecided = {
        r["length"]
        for r in rows
        if (r["arm"], r["versus"], r["task"]) == ("bayes", "gdn", "niah mean") and r["verdict"] == "undecided"
    }
    assert needed and {unit.split("@")[1] for unit in needed} <= undecided
    assert {unit.split("@")[0] for unit in needed} <= {"niah_single_1", "niah_multikey_2", "niah_multikey_3"}
    assert all(4 < n <= ruler_compare.TOPUP_MAX for n in needed.values())
    assert ruler_compare.top_up(rows) == needed  # the same from the CSV's strings
    capped = ruler_compare.top_up([ruler_row(r) for r in rows], cap=5)  # units already at 5 pairs or more drop out
    assert capped and set(capped) < set(needed) and set(capped.values()) == {5}
    assert ", ".join(f"{unit}: {n}" for unit, n in needed.items()) in text


def ruler_row(row: dict) -> dict:
    """A paired.csv row as paired_rows returns it (numbers, None for an empty samples_needed)."""
    return {**row, "samples_needed": int(row["samples_needed"]) if row["samples_needed"] else None}


def test_an_arm_without_the_predictions_pairing_needs_is_an_error(tmp_path, capsys):
    study(tmp_path, arms=("bayes", "gdn"))
    (tmp_path / "ruler" / "gdn" / "predictions.jsonl.gz").unlink()
    assert ruler_compare.main([str(tmp_path)]) == 2
    assert "gdn: no predictions (predictions.jsonl.gz or predictions.jsonl)" in capsys.readouterr().err
    assert not (tmp_path / "ruler" / "paired.csv").exists()
    # a stale file (an earlier run's, fewer samples than summary.csv counts) is an error too
    write_arm(tmp_path, "gdn", {("niah_single_1", 512): [0, 100]}, predictions="predictions.jsonl")
    write_arm(tmp_path / "later", "gdn", {("niah_single_1", 512): [0, 100, 0, 100]}, predictions=None)
    (tmp_path / "later" / "ruler" / "gdn" / "summary.csv").replace(tmp_path / "ruler" / "gdn" / "summary.csv")
    assert ruler_compare.main([str(tmp_path)]) == 2
    assert "has 2 samples of niah_single_1 at 512 tokens, its summary.csv 4" in capsys.readouterr().err
    # one arm alone pairs with nothing: no predictions needed
    single = tmp_path / "single"
    write_arm(single, "bayes", {("niah_single_1", 512): [0, 100]}, predictions=None)
    assert ruler_compare.main([str(single)]) == 0


def test_predictions_of_an_older_run_are_read_and_the_gz_wins(tmp_path):
    write_arm(tmp_path, "bayes", {("niah_single_1", 512): [100, 100]}, predictions="predictions.jsonl")
    write_arm(tmp_path, "gdn", {("niah_single_1", 512): [0, 100]}, predictions="predictions.jsonl")
    ruler_compare.compare(tmp_path)
    row = read_csv(tmp_path / "ruler" / "paired.csv")[0]
    assert float(row["difference"]) == 50.0
    (tmp_path / "ruler" / "gdn" / "predictions.jsonl").write_text("not json: the .gz is read\n")
    write_arm(tmp_path, "gdn", {("niah_single_1", 512): [100, 100]}, predictions="predictions.jsonl.gz")
    ruler_compare.compare(tmp_path)
    assert float(read_csv(tmp_path / "ruler" / "paired.csv")[0]["difference"]) == 0.0


def test_the_plot_draws_one_line_per_arm_and_the_teacher_distinctly(tmp_path):
    import matplotlib.pyplot as plt

    study(tmp_path)
    arms = ruler_arms.discover_arms(tmp_path / "ruler")
    predictions = {arm: ruler_arms.read_predictions(tmp_path / "ruler" / arm, rows) for arm, rows in arms.items()}
    fig = ruler_compare.figure(arms, ruler_compare.paired_rows(arms, predictions, 512))
    try:
        score_panels = [ax for ax in fig.axes if ax.get_title() == "niah_single_1"]
        lines = {line.get_label(): line for line in score_panels[0].get_lines()}
        assert set(lines) == {ruler_arms.label(a) for a in arms}
        teacher = lines[ruler_arms.label("teacher")]
        assert teacher.get_linestyle() == "--" and teacher.get_color() == "black"
        assert all(line.get_linestyle() == "-" for name, line in lines.items() if line is not teacher)
        assert len({line.get_color() for line in lines.values()}) == 4
        assert list(teacher.get_xdata()) == [512, 1024]  # the teacher's curve across lengths
        assert any(ax.get_title().startswith("niah mean: arm − gdn") for ax in fig.axes)
    finally:
        plt.close(fig)


@pytest.mark.integration
def test_collect_results_copies_every_arm_and_the_comparison_fails_when_predictions_are_left_out(tmp_path):
    """scripts/collect_results.sh (run in a copy of the repository's layout): every arm folder (not the pilots)
    is copied with its gzipped predictions; a stale predictions.jsonl is removed; a predictions file over 1 MB is
    left out and the comparison then fails, naming the arm, instead of dropping its paired table."""
    import os
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for script in ("collect_results.sh", "ruler_compare.py"):
        shutil.copy(REPO / "scripts" / script, repo / "scripts" / script)
    (repo / ".venv" / "bin").mkdir(parents=True)
    python = repo / ".venv" / "bin" / "python"  # this interpreter (a symlink would lose its virtualenv)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    cache = tmp_path / "cache"
    study(cache / "experiments", arms=("teacher", "bayes_stationary", "gdn"))
    write_arm(cache / "experiments", "teacher_pilots", {("niah_single_1", 512): [0]})
    stale = repo / "results" / "ruler" / "gdn" / "predictions.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("an older run's\n")
    earlier = repo / "results" / "ruler" / "bayes"  # an arm of an earlier study that this cache does not hold
    earlier.mkdir()
    (earlier / "summary.csv").write_text("task,length\n")
    env = {**os.environ, "PROBSEQ_CACHE": str(cache), "PYTHONPATH": str(REPO / "src")}

    def collect():
        return subprocess.run(
            ["bash", str(repo / "scripts" / "collect_results.sh")], env=env, capture_output=True, text=True, timeout=300
        )

    done = collect()
    assert done.returncode == 0, done.stdout + done.stderr
    arms = sorted(p.name for p in (repo / "results" / "ruler").iterdir() if p.is_dir())
    assert arms == ["bayes_stationary", "gdn", "teacher"]  # the earlier study's bayes was removed, not paired
    assert "removed results/ruler/bayes (not an arm of this study)" in done.stdout
    assert (repo / "results" / "ruler" / "gdn" / "predictions.jsonl.gz").is_file() and not stale.exists()
    assert (repo / "results" / "ruler" / "paired.csv").is_file()
    # an arm's predictions over 1 MB are left out: the comparison says which arm lacks them and exits non-zero
    big = cache / "experiments" / "ruler" / "gdn" / "predictions.jsonl.gz"
    big.write_bytes(big.read_bytes() + bytes(1_100_000))
    (repo / "results" / "ruler" / "gdn" / "predictions.jsonl.gz").unlink()
    done = collect()
    assert "left out (over 1 MB)" in done.stdout and "gdn: no predictions" in done.stderr
    assert done.returncode != 0


def test_arms_of_two_studies_are_refused(tmp_path):
    """A results folder where the distillation arms name another teacher than the teacher arm (an earlier study's
    bayes and gdn beside a new teacher) is an error, not a comparison."""
    study(tmp_path)
    for arm, teacher in (("bayes", "/runs/teacher"), ("gdn", "/runs/teacher"), ("bayes_stationary", "/runs/teacher")):
        (tmp_path / "distill" / arm).mkdir(parents=True)
        (tmp_path / "distill" / arm / "train_log.json").write_text(json.dumps({"config": {"teacher": teacher}}))
    assert ruler_compare.main([str(tmp_path)]) == 0
    (tmp_path / "distill" / "gdn" / "train_log.json").write_text(json.dumps({"config": {"teacher": "/old/teacher"}}))
    with pytest.raises(ValueError, match="different teachers.*gdn: /old/teacher"):
        ruler_compare.compare(tmp_path)


def test_prompts_with_the_same_references_but_other_text_are_not_paired(tmp_path):
    """RULER reuses one random stream, so another tokenizer's prompts (other haystacks) often have the same
    references: the prompt hash tells them apart (predictions without one, of older runs, pair by references)."""
    units = {("niah_single_1", 512): [100, 0, 100]}
    write_arm(tmp_path, "bayes", units, sha=lambda task, length, i: f"a{i}")
    write_arm(tmp_path, "gdn", units, sha=lambda task, length, i: f"a{i}")
    assert ruler_compare.main([str(tmp_path)]) == 0
    write_arm(tmp_path, "gdn", units, sha=lambda task, length, i: f"b{i}")
    with pytest.raises(ValueError, match="different prompts .*same references"):
        ruler_compare.compare(tmp_path)
    write_arm(tmp_path, "gdn", units)  # an older run's predictions, without hashes
    assert ruler_compare.main([str(tmp_path)]) == 0
