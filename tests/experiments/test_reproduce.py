"""probseq reproduce end to end on a tiny override preset: REPORT.md with every claim and a verdict, a rerun
entirely from the cache, an unwritable --out failing before any work, Ctrl-C handled without a traceback."""

from __future__ import annotations

import os

import pytest

from probseq import cli
from probseq.experiments import reproduce

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

TINY = [
    "collision.key_dim=4",
    "collision.value_dim=2",
    "collision.trials=16",
    "collision.batch_trials=16",
    "collision.max_repeats=6",
    "collision.rhos=[0.0,0.5]",
    "collision.capacity_points=3",
    "collision.confident_writes=2",
    "collision.colliding_writes=3",
    *(
        f"recall.{o}"
        for o in [
            'mixers=["bayesian","gated_deltanet"]',
            "d_model=16",
            "learning_rates=[0.01]",
            "seeds=[0]",
            "num_keys=8",
            "num_values=12",
            "train_pairs=[2]",
            "train_gaps=[0]",
            "distractors=1",
            "train_examples=16",
            "eval_pairs=[4]",
            "eval_gaps=[4]",
            "eval_collisions=[2]",
            "eval_key_noise=[0.4]",
            "test_examples=8",
            "valid_examples=8",
            "max_steps=2",
            "batch_size=8",
            "eval_batch_size=16",
            "save_steps=1",
            "num_threads=1",
            "n_layers=2",
        ]
    ),
    *(
        f"mqar.{o}"
        for o in [
            'mixers=["bayesian","gated_deltanet"]',
            "d_models=[16]",
            "learning_rates=[0.01]",
            "seeds=[0]",
            "vocab_size=64",
            "train_segments=[[16,2]]",
            "train_examples=[16]",
            "test_segments=[[16,2],[32,4]]",
            "test_examples=8",
            "valid_examples=8",
            "max_steps=2",
            "batch_size=8",
            "eval_batch_size=16",
            "save_steps=1",
            "num_threads=1",
        ]
    ),
]
CLAIMS = [
    "## 1. Design-model framework",
    "## 2. The Bayesian Layer carries a mean and a covariance",
    "## 3. Unification",
    "## 4. DeltaNet, Gated DeltaNet and Longhorn are covariance-reset reductions",
    "## 5. Closed-form retrieval dynamics",
    "## 6. Learned robustness",
    "### 6a. Associative recall",
    "### 6b. Zoology MQAR",
    "## 7. Distillation",
    "## 8. Efficiency",
]


def _argv(out) -> list[str]:
    return ["reproduce", "--preset", "quick", "--out", str(out), *(a for o in TINY for a in ("--set", o))]


@pytest.mark.integration
def test_reproduce_end_to_end_then_everything_from_the_cache(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(_argv(out)) == 0
    first = capsys.readouterr()
    text = (out / "REPORT.md").read_text()
    positions = [text.index(claim) for claim in CLAIMS]
    assert positions == sorted(positions)  # narrative order
    assert text.count("**Verdict:**") >= 8
    assert "Bayesian vs Gated DeltaNet beyond the training regime:" in text
    assert "inconclusive" in text  # one seed
    assert "make bench" in text and "probseq distill" in text
    plots = [line for line in text.splitlines() if line.startswith("![")]
    order = [
        next(i for i, p in enumerate(plots) if word in p) for word in ("variance", "collision_", "recall_", "mqar_")
    ]
    assert order == sorted(order)  # plots in the claims' order, not alphabetical
    for plot in plots:
        assert (out / plot.split("(")[1].rstrip(")")).exists(), plot
    assert "0 of 6 sections from the cache" in first.out
    assert "USDT" not in first.out + first.err

    assert cli.main(_argv(out)) == 0
    second = capsys.readouterr()
    assert "6 of 6 sections from the cache" in second.out
    assert "[reproduce" in second.err and "training" not in second.err
    rerun = (out / "REPORT.md").read_text()
    assert "This run:" in rerun and "6 of 6 sections from the cache (they took" in rerun


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    called = []
    monkeypatch.setattr(reproduce, "sections", lambda *a: called.append(1) or [])
    assert cli.main(["reproduce", "--out", str(blocker / "sub")]) == 2
    assert "not" in capsys.readouterr().err and not called
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        assert cli.main(["reproduce", "--out", str(locked / "sub")]) == 2


def test_bad_override_is_an_error_before_any_work(tmp_path, capsys, monkeypatch):
    called = []
    monkeypatch.setattr(reproduce, "sections", lambda *a: called.append(1) or [])
    assert cli.main(["reproduce", "--out", str(tmp_path / "o"), "--set", "recall.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err and not called


@pytest.mark.integration
def test_ctrl_c_says_rerun_to_resume_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    real = reproduce.sections

    def interrupted(config, out_dir):
        plan = real(config, out_dir)

        def boom():
            raise KeyboardInterrupt

        return [plan[0], ("exactness", boom)]

    monkeypatch.setattr(reproduce, "sections", interrupted)
    assert cli.main(["reproduce", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted: rerun the same command to resume" in err and "Traceback" not in err
    cache = reproduce.ResultCache(out, reproduce.ReproduceConfig())  # the finished section is kept for the rerun
    assert cache.get("unification") is not None and cache.get("exactness") is None


def test_demo_is_an_alias(tmp_path):
    parser_help = []
    try:
        cli.main(["demo", "--help"])
    except SystemExit as exit_:
        parser_help.append(exit_.code)
    assert parser_help == [0]


def test_cpu_preset_reads_the_background_results_and_never_recomputes(tmp_path, monkeypatch):
    import json

    from probseq.experiments import mqar, recall

    for study in ("recall", "mqar"):
        saved = tmp_path / "experiments" / f"{study}_cpu"
        saved.mkdir(parents=True)
        (saved / "results.json").write_text(json.dumps({"experiment": study, "points": [], "num_units": 54}))
        (saved / "plot.png").write_bytes(b"png")
    monkeypatch.setattr(recall, "run_recall", lambda *a, **k: pytest.fail("recomputed recall"))
    monkeypatch.setattr(mqar, "run_mqar", lambda *a, **k: pytest.fail("recomputed mqar"))
    for study in ("recall", "mqar"):
        results = reproduce._learned(study, reproduce.ReproduceConfig(preset="cpu"), tmp_path / "out")
        assert results["num_units"] == 54 and results["source"].endswith(f"{study}_cpu/results.json")
        assert (tmp_path / "out" / study / "plot.png").exists()


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")


def test_the_report_quotes_the_committed_distillation_study(tmp_path):
    """Section 7 reads ``results/ruler/paired.csv`` (the niah-mean rows of each distilled arm against the GDN
    fine-tune) and the teacher's curve; without the file it says there is no study, a damaged file is named."""
    header = ["arm", "versus", "task", "tasks", "length", "multiple", "pairs", "discordant", "score", "score_versus"]
    header += ["difference", "ci_low", "ci_high", "half_width", "verdict", "flag", "samples_needed"]
    rows = [
        ["bayes", "gdn", "niah mean", "niah_single_1 niah_multikey_2", 512, 1, 600, 0, 50, 50, 0, 0, 0, 0]
        + ["uninformative", "no discordant pairs", 0],
        ["bayes", "gdn", "niah mean", "x", 1024, 2, 900, 6, 33, 32, 1.25, -0.5, 3.0, 1.75, "indistinguishable", "", 1],
        ["bayes", "gdn", "niah_single_1", "niah_single_1", 1024, 2, 300, 6, 99, 98, 1, 0, 2, 1, "better", "", 1],
        ["bayes", "teacher", "niah mean", "x", 1024, 2, 900, 6, 33, 32, 9, 8, 10, 1, "better", "", 1],
        ["bayes_stationary", "gdn", "niah mean", "x", 1024, 2, 900, 6, 33, 33, -0.5, -1, 0, 0.5, "worse", "", 1],
    ]
    _write_csv(tmp_path / "ruler" / "paired.csv", header, rows)
    teacher = [["niah_single_1", 1024, 98.0, 97, 99, 300, 800, "ok"], ["niah_single_1", 512, 99.0, 98, 100, 300, 400]]
    teacher[1].append("ok")
    teacher.append(["niah_multikey_3", 512, "", "", "", 0, "", "skipped: too long"])
    _write_csv(tmp_path / "ruler" / "teacher" / "summary.csv", ["task", "length", "score", "ci_low", "ci_high"]
               + ["samples", "prompt_tokens", "status"], teacher)  # fmt: skip
    found = reproduce.read_distillation(tmp_path)
    assert [(r["arm"], r["length"]) for r in found["niah_mean"]] == [
        ("bayes", "512"), ("bayes", "1024"), ("bayes_stationary", "1024"),
    ]  # fmt: skip
    assert found["teacher"] == {"niah_single_1": {"1024": 98.0, "512": 99.0}}
    text = reproduce.distillation_verdict(found)
    assert text.startswith("**Verdict:**")
    assert "`bayes` − `gdn`: 512 tokens +0.0 [+0.0, +0.0] **uninformative**, no discordant pairs" in text
    assert "1024 tokens +1.2 [-0.5, +3.0] **indistinguishable**" in text
    assert "`bayes_stationary` − `gdn`: 1024 tokens -0.5 [-1.0, +0.0] **worse**" in text
    assert "niah_single_1 99.0 / 98.0 at 512 / 1024 tokens" in text

    assert reproduce.read_distillation(tmp_path / "nowhere") is None
    assert "no distillation study" in reproduce.distillation_verdict(None)
    (tmp_path / "ruler" / "paired.csv").write_text("arm,task\nbayes,niah mean\n")  # columns missing
    damaged = reproduce.read_distillation(tmp_path)
    assert "error" in damaged and "unreadable" in reproduce.distillation_verdict(damaged)


def test_the_committed_distillation_study_is_quoted_per_length():
    """The repository's own ``results/ruler/`` gives the Bayesian arm's niah-mean row at every length of the study."""
    from tests.helpers import REPO

    found = reproduce.read_distillation(REPO / "results")
    assert found is not None and "error" not in found
    lengths = {row["length"] for row in found["niah_mean"] if row["arm"] == "bayes"}
    assert lengths == {"512", "1024", "2048", "4096"}
    assert set(found["teacher"]) == {"niah_single_1", "niah_multikey_2"}
