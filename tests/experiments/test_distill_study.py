"""scripts/distill_study.py: the distillation study's jobs, their order, the teacher gate, failures and resuming —
with the real commands checked for their shape and fake ones (tiny Python processes) run in their place."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "distill_study.py"


@pytest.fixture
def study():
    namespace = runpy.run_path(str(SCRIPT))
    return namespace, namespace["run"].__globals__  # the functions' globals: where a fake replaces a function


def make_teacher(folder: Path, share: float = 0.5) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    config = {"seq_len": 512, "retrieval_share": share, "retrieval_scale": 1.0}
    (folder / "train_log.json").write_text(json.dumps({"config": config}))
    return folder


def test_real_jobs_use_the_teachers_mix_and_the_plans_counts(study, tmp_path, capsys):
    namespace, _ = study
    teacher = make_teacher(tmp_path / "teacher")
    jobs = {job.name: job for job in namespace["jobs"](tmp_path / "root", teacher)}
    assert list(jobs) == [
        "gate",
        "distill_bayes",
        "distill_gdn",
        "ruler_teacher",
        "ruler_bayes",
        "ruler_gdn",
        "distill_bayes_stationary",
        "ruler_bayes_stationary",
        "likelihood",
        "likelihood_stationary",
    ]
    bayes, gdn, stationary = (
        " ".join(jobs[n].command) for n in ("distill_bayes", "distill_gdn", "distill_bayes_stationary")
    )
    assert "retrieval_share=0.5" in bayes and "retrieval_scale" not in bayes  # only what differs from the default
    assert "--baseline" in gdn and "--baseline" not in bayes and "retention=stationary" in stationary
    assert all("--tokens 5M" in c for c in (bayes, gdn, stationary))
    ruler = " ".join(jobs["ruler_bayes"].command)
    assert "--lengths 512 1024 2048 4096" in ruler and "niah_single_1=300" in ruler and "vt=100" in ruler
    gate = " ".join(jobs["gate"].command)
    assert (
        "--tasks niah_single_1 --lengths 512 " in gate
        and str(tmp_path / "root" / "experiments" / "ruler" / "teacher") in gate
    )
    assert not jobs["gate"].gated and not jobs["ruler_teacher"].gated and jobs["distill_bayes"].gated
    from probseq_cli.parsers import build_parser

    for job in jobs.values():  # every probseq command parses as the CLI reads it
        if job.command[1:3] == ("-m", "probseq.cli"):
            parsed = build_parser().parse_args(list(job.command[3:]))
            assert parsed.command == job.command[3]
    likelihood = runpy.run_path(str(SCRIPT.parent / "ruler_answer_likelihood.py"))
    (tmp_path / "empty").mkdir()
    for name in ("likelihood", "likelihood_stationary"):  # every other option parses; no model found: exit 2
        command = list(jobs[name].command[2:])
        arms = command.index("--models" if "--models" in command else "--runs")
        command[arms : command.index("--out")] = ["--runs", str(tmp_path / "empty")]
        with pytest.raises(SystemExit) as stop:
            likelihood["main"](command)
        assert stop.value.code == 2 and "no model" in capsys.readouterr().err
    assert "teacher=" in " ".join(jobs["likelihood"].command) and "--runs" in jobs["likelihood_stationary"].command
    plain = make_teacher(tmp_path / "plain", share=0.0)
    assert "retrieval_share" not in " ".join(namespace["jobs"](tmp_path / "root", plain)[1].command)


def fake_jobs(namespace, gate_score: float, failing: str | None = None):
    """Jobs of the real names and dependencies whose commands append their name to ``ROOT/order.txt`` (the gate's
    also writes the teacher's RULER summary with ``gate_score``; ``failing`` exits 3)."""

    def jobs(root: Path, teacher: Path):
        out = []
        for job in namespace["jobs"](root, teacher):
            code = f"import pathlib; pathlib.Path({str(root / 'order.txt')!r}).open('a').write({job.name!r} + '\\n')"
            if job.name == "gate":
                summary = root / "experiments" / "ruler" / "teacher" / "summary.csv"
                code += (
                    f"; p = pathlib.Path({str(summary)!r}); p.parent.mkdir(parents=True, exist_ok=True)"
                    f"; p.write_text('task,length,score,ci_low,ci_high,samples,prompt_tokens,status\\n"
                    f"niah_single_1,512,{gate_score},0,0,300,400,ok\\n')"
                )
            if job.name == failing:
                code += "; raise SystemExit(3)"
            out.append(type(job)(job.name, job.needs, (sys.executable, "-c", code), job.gated))
        return out

    return jobs


def run(namespace, root: Path, teacher: Path) -> int:
    return namespace["main"](["run", "--teacher", str(teacher), "--root", str(root), "--poll", "0.05"])


def test_runs_every_job_after_what_it_needs_and_skips_finished_ones(study, tmp_path):
    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=62.0)
    assert run(namespace, root, teacher) == 0
    order = (root / "order.txt").read_text().split()
    assert sorted(order) == sorted(job.name for job in module["jobs"](root, teacher))
    for job in module["jobs"](root, teacher):
        assert all(order.index(need) < order.index(job.name) for need in job.needs), job.name
    state = root / "experiments" / "distill_study"
    assert json.loads((state / "gate.json").read_text())["passed"] is True
    assert (root / "distill" / "teacher").resolve() == teacher.resolve()
    assert run(namespace, root, teacher) == 0  # everything done: nothing runs again
    assert (root / "order.txt").read_text().split() == order


def test_a_teacher_at_the_floor_stops_the_distillation_but_not_its_own_curve(study, tmp_path, capsys):
    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=2.0)
    assert run(namespace, root, teacher) == 0
    assert (root / "order.txt").read_text().split() == ["gate", "ruler_teacher"]
    gate = json.loads((root / "experiments" / "distill_study" / "gate.json").read_text())
    assert gate == {"task": "niah_single_1", "length": 512, "score": 2.0, "threshold": 5.0, "passed": False}
    assert "no distillation" in capsys.readouterr().out


def test_a_failed_job_holds_back_its_dependants_and_is_retried(study, tmp_path):
    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=62.0, failing="distill_gdn")
    assert run(namespace, root, teacher) == 1
    order = (root / "order.txt").read_text().split()
    assert "distill_gdn" in order and "ruler_bayes" in order
    assert not {"ruler_gdn", "distill_bayes_stationary", "likelihood"} & set(order)
    state = root / "experiments" / "distill_study"
    assert (state / "distill_gdn.failed").exists() and not (state / "distill_gdn.done").exists()
    module["jobs"] = fake_jobs(namespace, gate_score=62.0)  # fixed: the rerun does only what is left
    assert run(namespace, root, teacher) == 0
    rerun = (root / "order.txt").read_text().split()[len(order) :]
    assert rerun[0] == "distill_gdn" and "gate" not in rerun and "ruler_bayes" not in rerun
    assert not (state / "distill_gdn.failed").exists()


def test_refuses_a_root_linked_to_another_teacher(study, tmp_path):
    namespace, module = study
    root = tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=62.0)
    assert run(namespace, root, make_teacher(tmp_path / "a")) == 0
    with pytest.raises(SystemExit, match="not .*use another --root"):
        run(namespace, root, make_teacher(tmp_path / "b"))


def test_distills_at_the_teachers_context(study, tmp_path):
    namespace, _ = study
    teacher = make_teacher(tmp_path / "teacher")
    log = json.loads((teacher / "train_log.json").read_text())
    log["config"]["seq_len"] = 1024
    (teacher / "train_log.json").write_text(json.dumps(log))
    jobs = {job.name: job for job in namespace["jobs"](tmp_path / "root", teacher)}
    assert "seq_len=1024" in jobs["distill_gdn"].command
    assert "--lengths 1024 2048 4096 8192" in " ".join(jobs["ruler_gdn"].command)


def test_never_more_jobs_at_once_than_workers(study, tmp_path):
    """Jobs record how many run beside them (a file per running job): with 2 workers, never 3."""
    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    base = fake_jobs(namespace, gate_score=62.0)
    live = tmp_path / "live"
    live.mkdir()

    def jobs(root, teacher):
        out = []
        for job in base(root, teacher):
            code = job.command[2] + (
                f"; import time, os; m = pathlib.Path({str(live)!r}) / {job.name!r}; m.touch()"
                f"; n = len(os.listdir({str(live)!r})); time.sleep(0.3)"
                f"; pathlib.Path({str(tmp_path / 'widths.txt')!r}).open('a').write(f'{{n}}\\n'); m.unlink()"
            )
            out.append(type(job)(job.name, job.needs, (sys.executable, "-c", code), job.gated))
        return out

    module["jobs"] = jobs
    assert run(namespace, root, teacher) == 0
    widths = [int(n) for n in (tmp_path / "widths.txt").read_text().split()]
    assert max(widths) == 2 and len(widths) == 10


def test_a_lost_or_unreadable_gate_verdict_keeps_the_gate_shut(study, tmp_path):
    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=2.0)
    assert run(namespace, root, teacher) == 0
    state = root / "experiments" / "distill_study"
    (state / "gate.json").unlink()  # lost: recomputed from the teacher's summary, still shut
    assert run(namespace, root, teacher) == 0
    assert "distill_bayes" not in (root / "order.txt").read_text().split()
    assert json.loads((state / "gate.json").read_text())["passed"] is False
    (root / "experiments" / "ruler" / "teacher" / "summary.csv").write_text("task,length,score,status\n")
    assert run(namespace, root, teacher) == 1  # unreadable: the gate counts as failed, nothing gated starts
    assert "no scored niah_single_1" in (state / "gate.failed").read_text()
    assert "distill_bayes" not in (root / "order.txt").read_text().split()


def test_one_driver_per_root(study, tmp_path):
    import fcntl

    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=62.0)
    state = root / "experiments" / "distill_study"
    state.mkdir(parents=True)
    with (state / "run.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit, match="another distill_study.py is running"):
            run(namespace, root, teacher)
    assert not (root / "order.txt").exists()


@pytest.mark.parametrize("in_the_background", [False, True])
def test_sigterm_stops_the_running_jobs_and_waits_for_them(study, tmp_path, in_the_background):
    """A driver stopped by SIGTERM sends its running jobs SIGINT and waits for them: none outlives it — also when the
    driver was started in the background (``nohup … &``: SIGINT ignored, which its jobs must not inherit)."""
    import os
    import signal
    import subprocess
    import time

    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    pids = tmp_path / "pids"
    driver = (
        "import runpy, sys, pathlib\n"
        f"ns = runpy.run_path({str(SCRIPT)!r}); g = ns['run'].__globals__\n"
        "Job = ns['Job']\n"
        'code = (\'import os, pathlib, time; pathlib.Path(%r).open("a").write(str(os.getpid()) + "\\\\n"); \''
        f"        'time.sleep(60)') % {str(pids)!r}\n"
        "g['jobs'] = lambda root, teacher: [Job('a', (), (sys.executable, '-c', code), False),"
        " Job('b', (), (sys.executable, '-c', code), False)]\n"
        f"sys.exit(ns['main'](['run', '--teacher', {str(teacher)!r}, '--root', {str(root)!r}, '--poll', '0.05']))\n"
    )
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if in_the_background else None
    process = subprocess.Popen([sys.executable, "-c", driver], preexec_fn=ignore_sigint)
    deadline = time.time() + 30
    while time.time() < deadline and len(pids.read_text().split() if pids.exists() else []) < 2:
        time.sleep(0.1)
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) != 0
    for pid in children:  # gone (SIGINT ended the sleep): not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_one_top_up_of_undecided_lengths(study, tmp_path, capsys):
    namespace, module = study
    teacher, root = make_teacher(tmp_path / "teacher"), tmp_path / "root"
    module["jobs"] = fake_jobs(namespace, gate_score=62.0)
    assert run(namespace, root, teacher) == 0
    paired = tmp_path / "paired.csv"
    header = "arm,versus,task,length,pairs,verdict,samples_needed\n"
    rows = [
        "bayes,gdn,niah_single_1,1024,300,undecided,450",
        "bayes,gdn,niah_multikey_2,1024,300,undecided,2400",  # capped at TOPUP_MAX
        "bayes,gdn,niah_multikey_3,1024,300,indistinguishable,120",  # below the plan's count: unchanged
        "bayes,gdn,niah mean,1024,300,undecided,2970",
        "bayes,gdn,niah_single_1,2048,300,indistinguishable,900",  # a decided length: no top-up
        "bayes,gdn,niah mean,2048,300,indistinguishable,900",
        "bayes_stationary,gdn,niah mean,4096,300,undecided,900",  # a secondary pair: no top-up
    ]
    paired.write_text(header + "\n".join(rows) + "\n")
    counts = namespace["topup_counts"](paired)
    assert counts == {"niah_single_1@1024": 450, "niah_multikey_2@1024": 1000}
    recorded = []
    module["schedule"] = lambda todo, *a, **k: (recorded.extend(todo), ({j.name for j in todo}, set()))[1]
    argv = ["topup", "--teacher", str(teacher), "--root", str(root), "--paired", str(paired)]
    assert namespace["main"](argv) == 0
    assert sorted(j.name for j in recorded) == [
        f"topup_ruler_{a}" for a in ("bayes", "bayes_stationary", "gdn", "teacher")
    ]
    command = " ".join(recorded[0].command)
    assert "niah_single_1@1024=450 niah_multikey_2@1024=1000" in command and "niah_single_1=300" in command
    state = root / "experiments" / "distill_study"
    assert json.loads((state / "topup.json").read_text())["finished"] is True
    recorded.clear()
    assert namespace["main"](argv) == 0  # one top-up only
    assert not recorded and "allows one top-up" in capsys.readouterr().out
