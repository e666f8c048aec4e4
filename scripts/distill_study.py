"""The distillation study with a teacher that retrieves, as planned in ``results/ruler/README.md`` ("The next study").

    python scripts/distill_study.py plan --teacher DIR     # the jobs and their commands; nothing is run
    python scripts/distill_study.py run --teacher DIR      # run (or resume) them, two at a time, in the background
    scripts/collect_results.sh                             # then: copy the results and write the comparison

``DIR`` is the teacher's ``probseq pretrain`` folder (an fla checkpoint with ``train_log.json``). Everything lives
under ``--root`` (default ``~/.cache/probseq``, or ``$PROBSEQ_CACHE``), in the layout ``scripts/collect_results.sh``
reads: the models in ``ROOT/distill/<arm>`` (``teacher`` is a link to ``DIR``), RULER in
``ROOT/experiments/ruler/<arm>``, the answer likelihood in ``ROOT/experiments/answer_likelihood``; each job's log
is ``ROOT/experiments/distill_study/<job>.log``.

The jobs (each a ``probseq`` command, one thread, at most two at a time; a job starts when the jobs it needs have
finished):

1. ``gate`` — RULER's niah_single_1 at the training context on the teacher (the plan's sample count). The study
   goes on only if the teacher is off the floor there (score above ``GATE`` points); otherwise ``gate.json`` says
   so, the teacher's own RULER still runs (its curve is reported whatever it is), and no distillation starts.
2. ``distill_bayes`` and ``distill_gdn`` (``--baseline``), side by side: ``probseq distill --preset small --tokens
   5M`` with the teacher's ``retrieval_share`` and ``retrieval_scale`` (from its ``train_log.json``; curriculum
   off), so every arm trains on distillation's own mixed stream.
3. ``ruler_teacher``, ``ruler_bayes``, ``ruler_gdn``: all six tasks at 1×, 2×, 4×, 8× the training context.
4. ``distill_bayes_stationary`` (``retention=stationary``, after both arms), ``ruler_bayes_stationary``.
5. ``likelihood``: ``scripts/ruler_answer_likelihood.py`` on every arm (niah_single_1, niah_multikey_2).

A finished job leaves ``ROOT/experiments/distill_study/<job>.done``; every command resumes from its own checkpoints
or cache, so after an interruption the same ``run`` command goes on where it stopped. A job that fails is recorded
in ``<job>.failed`` (its log says why), its dependants do not start, and ``run`` exits non-zero; the next ``run``
retries it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from probseq.files import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
GATE = 5.0  # points (0–100) of niah_single_1 at the training context: the teacher is off RULER's floor above it
TOKENS = "5M"
SAMPLES = {"niah_single_1": 300, "niah_multikey_2": 300, "niah_multikey_3": 300, "vt": 100, "cwe": 100, "fwe": 100}
LIKELIHOOD_SAMPLES = 100
MULTIPLES = (1, 2, 4, 8)
WORKERS = 2


@dataclass(frozen=True)
class Job:
    name: str
    needs: tuple[str, ...]
    command: tuple[str, ...]
    gated: bool = True  # starts only once the gate has passed


def teacher_recipe(teacher: Path) -> tuple[int, list[str]]:
    """The teacher's training context and the ``--set`` values of its retrieval mix (none for a corpus-as-built
    teacher, or one without ``train_log.json``)."""
    log_path = teacher / "train_log.json"
    config = json.loads(log_path.read_text()).get("config", {}) if log_path.is_file() else {}
    sets = [
        f"{key}={config[key]}"
        for key, default in (("retrieval_share", 0.0), ("retrieval_scale", 1.0))
        if config.get(key, default) != default
    ]
    return int(config.get("seq_len", 512)), sets


def jobs(root: Path, teacher: Path) -> list[Job]:
    context, mix = teacher_recipe(teacher)
    runs, experiments = root / "distill", root / "experiments"
    probseq = (sys.executable, "-m", "probseq.cli")
    lengths = [str(context * m) for m in MULTIPLES]
    per_task = [f"{task}={n}" for task, n in SAMPLES.items()]

    def ruler(arm: str, tasks=tuple(SAMPLES), lengths=lengths) -> tuple[str, ...]:
        return (
            *probseq, "ruler", "--model", str(runs / arm), "--out", str(experiments / "ruler" / arm),
            "--tasks", *tasks, "--lengths", *lengths, "--samples-per-task", *per_task, "--seed", "42",
            "--threads", "1",
        )  # fmt: skip

    def distill(arm: str, *extra: str) -> tuple[str, ...]:
        sets = [*mix, *extra, "num_threads=1", "progress=false"]
        return (
            *probseq, "distill", "--preset", "small", "--teacher", str(runs / "teacher"), "--out", str(runs / arm),
            "--tokens", TOKENS, *(["--baseline"] if arm == "gdn" else []), "--set", *sets,
        )  # fmt: skip

    likelihood = (
        sys.executable, str(REPO / "scripts" / "ruler_answer_likelihood.py"), "--runs", str(runs),
        "--out", str(experiments / "answer_likelihood"), "--lengths", *lengths, "--samples", str(LIKELIHOOD_SAMPLES),
        "--seed", "42", "--threads", "1",
    )  # fmt: skip
    both = ("distill_bayes", "distill_gdn")  # the stationary arm starts after both compared arms
    return [
        Job("gate", (), ruler("teacher", ("niah_single_1",), lengths[:1]), gated=False),
        Job("distill_bayes", ("gate",), distill("bayes")),
        Job("distill_gdn", ("gate",), distill("gdn")),
        Job("ruler_teacher", ("gate",), ruler("teacher"), gated=False),
        Job("ruler_bayes", ("distill_bayes",), ruler("bayes")),
        Job("ruler_gdn", ("distill_gdn",), ruler("gdn")),
        Job("distill_bayes_stationary", both, distill("bayes_stationary", "retention=stationary")),
        Job("ruler_bayes_stationary", ("distill_bayes_stationary",), ruler("bayes_stationary")),
        Job("likelihood", ("ruler_teacher", "ruler_bayes", "ruler_gdn", "ruler_bayes_stationary"), likelihood),
    ]  # fmt: skip


def gate_result(root: Path, teacher: Path) -> dict:
    """The gate's verdict from the teacher's RULER summary (niah_single_1 at the training context)."""
    context, _ = teacher_recipe(teacher)
    summary = root / "experiments" / "ruler" / "teacher" / "summary.csv"
    with summary.open() as handle:
        row = next(
            (r for r in csv.DictReader(handle) if r["task"] == "niah_single_1" and int(r["length"]) == context), None
        )
    if row is None or row["status"] != "ok":
        raise ValueError(f"{summary} has no scored niah_single_1 at {context} tokens")
    score = float(row["score"])
    return {"task": "niah_single_1", "length": context, "score": score, "threshold": GATE, "passed": score > GATE}


def link_teacher(root: Path, teacher: Path) -> None:
    """``ROOT/distill/teacher`` → the teacher's folder (a link; refused when it names another folder)."""
    link = root / "distill" / "teacher"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() != teacher.resolve():
            raise SystemExit(f"{link} is {link.resolve()}, not {teacher}: use another --root or remove the link")
        return
    link.symlink_to(teacher.resolve(), target_is_directory=True)


def run(args: argparse.Namespace) -> int:
    root, teacher = Path(args.root).expanduser(), Path(args.teacher).expanduser()
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"--teacher {teacher} is not a model folder (no config.json)")
    link_teacher(root, teacher)
    state = root / "experiments" / "distill_study"
    state.mkdir(parents=True, exist_ok=True)
    todo = {job.name: job for job in jobs(root, teacher)}
    done = {name for name in todo if (state / f"{name}.done").exists()}
    for name in todo:
        (state / f"{name}.failed").unlink(missing_ok=True)
    failed: set[str] = set()
    running: dict[str, subprocess.Popen] = {}
    gate = json.loads((state / "gate.json").read_text()) if (state / "gate.json").exists() else None

    def blocked(job: Job) -> bool:
        return (job.gated and gate is not None and not gate["passed"]) or any(n in failed for n in job.needs)

    while True:
        for name, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            if process.returncode == 0:
                if name == "gate":
                    gate = gate_result(root, teacher)
                    atomic_write_json(state / "gate.json", gate)
                    print(f"[{time.strftime('%H:%M:%S')}] gate: {gate}", flush=True)
                (state / f"{name}.done").touch()
                done.add(name)
            else:
                failed.add(name)
                (state / f"{name}.failed").write_text(f"exit {process.returncode}; see {name}.log\n")
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done' if name in done else 'FAILED'}", flush=True)
        ready = [
            job
            for name, job in todo.items()
            if name not in done | failed | set(running) and not blocked(job) and all(n in done for n in job.needs)
        ]
        for job in ready[: max(0, args.workers - len(running))]:
            print(f"[{time.strftime('%H:%M:%S')}] {job.name}: {shlex.join(job.command)}", flush=True)
            with (state / f"{job.name}.log").open("a") as log:
                running[job.name] = subprocess.Popen(
                    job.command,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "OMP_NUM_THREADS": "1"},
                )
        if not running:
            break
        time.sleep(args.poll)
    left = [name for name in todo if name not in done]
    if gate is not None and not gate["passed"]:
        print(f"the teacher is at RULER's floor at its training context ({gate}): no distillation (the plan's gate)")
    if failed:
        print(f"failed: {', '.join(sorted(failed))} (logs in {state}); rerun to retry", file=sys.stderr)
        return 1
    print("finished" if not left else f"not run: {', '.join(left)}")
    return 0


def plan(args: argparse.Namespace) -> int:
    root, teacher = Path(args.root).expanduser(), Path(args.teacher).expanduser()
    for job in jobs(root, teacher):
        needs = f" (after {', '.join(job.needs)})" if job.needs else ""
        print(f"{job.name}{needs}:\n    {shlex.join(job.command)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("plan", "run"):
        p = sub.add_parser(name)
        p.add_argument("--teacher", required=True, help="the teacher's probseq pretrain folder")
        p.add_argument("--root", default=os.environ.get("PROBSEQ_CACHE", "~/.cache/probseq"))
        if name == "run":
            p.add_argument("--workers", type=int, default=WORKERS)
            p.add_argument("--poll", type=float, default=10.0, help="seconds between checks of the running jobs")
    args = parser.parse_args(argv)
    return {"plan": plan, "run": run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
