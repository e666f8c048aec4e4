"""The distillation study with a teacher that retrieves, as planned in ``results/ruler/README.md`` ("The next study").

    python scripts/distill_study.py plan --teacher DIR     # the jobs and their commands; nothing is run
    python scripts/distill_study.py run --teacher DIR      # run (or resume) them, two at a time
    PROBSEQ_CACHE=~/.cache/probseq/distill_study scripts/collect_results.sh   # copy the results, write the comparison
    python scripts/distill_study.py topup --teacher DIR    # the plan's one top-up of undecided lengths; collect again

``DIR`` is the teacher's ``probseq pretrain`` folder (an fla checkpoint with ``train_log.json``). Everything lives
under ``--root`` (default ``~/.cache/probseq/distill_study``, apart from the first study's files), in the layout
``scripts/collect_results.sh`` reads with ``PROBSEQ_CACHE=ROOT``: the models in ``ROOT/distill/<arm>`` (``teacher``
is a link to ``DIR``), RULER in ``ROOT/experiments/ruler/<arm>``, the answer likelihood in
``ROOT/experiments/answer_likelihood``; each job's log is ``ROOT/experiments/distill_study/<job>.log``. Collecting
replaces the first study's per-arm files under ``results/ruler/`` and ``results/distill/`` (git keeps them).

The jobs (each one process on one thread, at most two at a time; a job starts when the jobs it needs have
finished):

1. ``gate`` — RULER's niah_single_1 at the training context on the teacher (the plan's sample count). The study
   goes on only if the teacher is off the floor there (score above ``GATE`` points); otherwise ``gate.json`` says
   so, the teacher's own RULER still runs (its curve is reported whatever it is), and no distillation starts. The
   verdict is recomputed from the teacher's summary whenever the driver runs.
2. ``distill_bayes`` and ``distill_gdn`` (``--baseline``), side by side: ``probseq distill --preset small --tokens
   5M`` with the teacher's ``retrieval_share`` and ``retrieval_scale`` (from its ``train_log.json``; curriculum
   off; its ``seq_len`` when not the preset's 512), so every arm trains on distillation's own mixed stream.
3. ``ruler_teacher``, ``ruler_bayes``, ``ruler_gdn``: all six tasks at 1×, 2×, 4×, 8× the training context.
4. ``distill_bayes_stationary`` (``retention=stationary``, after both arms), ``ruler_bayes_stationary``.
5. ``likelihood`` (teacher, ``bayes``, ``gdn``) and ``likelihood_stationary`` (adds the third arm):
   ``scripts/ruler_answer_likelihood.py`` (niah_single_1, niah_multikey_2).

A finished job leaves ``ROOT/experiments/distill_study/<job>.done``; every command resumes from its own checkpoints
or cache, so after an interruption the same ``run`` command goes on where it stopped. A job that fails is recorded
in ``<job>.failed`` (its log says why), its dependants do not start, and ``run`` exits non-zero; the next ``run``
retries it. One driver per root at a time (a lock); Ctrl-C or SIGTERM stops the running jobs (SIGINT: they
checkpoint) and waits for them.

``topup`` reads ``paired.csv`` (``results/ruler/``, after collecting) and, for every length where the niah mean of
``bayes`` − ``gdn`` is undecided, reruns every arm's RULER with each niah task's ``samples_needed`` at that length
(at least the plan's count, at most ``TOPUP_MAX``; ``--samples-per-task TASK@LENGTH=N``): the plan allows one, so
``topup.json`` records it and a finished one is not repeated.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import os
import shlex
import signal
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
TOPUP_MAX = 1000  # samples per task and length at most, in the plan's one top-up
DISTILL_CONTEXT = 512  # the small preset's seq_len
MULTIPLES = (1, 2, 4, 8)
WORKERS = 2
DEFAULT_ROOT = "~/.cache/probseq/distill_study"  # apart from the first study's ~/.cache/probseq/distill


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


def probseq_command(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "probseq.cli", *args)


def ruler_command(root: Path, teacher: Path, arm: str, extra: dict[str, int] | None = None, tasks=None, lengths=None):
    """``probseq ruler`` of ``arm`` at the plan's lengths and counts (``extra``: ``{"task@length": n}`` on top)."""
    context, _ = teacher_recipe(teacher)
    counts = [f"{task}={n}" for task, n in SAMPLES.items()] + [f"{key}={n}" for key, n in (extra or {}).items()]
    return probseq_command(
        "ruler", "--model", str(root / "distill" / arm), "--out", str(root / "experiments" / "ruler" / arm),
        "--tasks", *(tasks or SAMPLES), "--lengths", *(lengths or [str(context * m) for m in MULTIPLES]),
        "--samples-per-task", *counts, "--seed", "42", "--threads", "1",
    )  # fmt: skip


def jobs(root: Path, teacher: Path) -> list[Job]:
    context, mix = teacher_recipe(teacher)
    runs, experiments = root / "distill", root / "experiments"
    lengths = [str(context * m) for m in MULTIPLES]
    if context != DISTILL_CONTEXT:  # distil at the teacher's own context
        mix = [*mix, f"seq_len={context}"]

    def distill(arm: str, *extra: str) -> tuple[str, ...]:
        sets = [*mix, *extra, "num_threads=1", "progress=false"]
        return probseq_command(
            "distill", "--preset", "small", "--teacher", str(runs / "teacher"), "--out", str(runs / arm),
            "--tokens", TOKENS, *(["--baseline"] if arm == "gdn" else []), "--set", *sets,
        )  # fmt: skip

    def likelihood(*models: str) -> tuple[str, ...]:
        arms = ["--models", *(f"{arm}={runs / arm}" for arm in models)] if models else ["--runs", str(runs)]
        return (
            sys.executable, str(REPO / "scripts" / "ruler_answer_likelihood.py"), *arms,
            "--out", str(experiments / "answer_likelihood"), "--lengths", *lengths,
            "--samples", str(LIKELIHOOD_SAMPLES), "--seed", "42", "--threads", "1",
        )  # fmt: skip

    both = ("distill_bayes", "distill_gdn")  # the stationary arm starts after both compared arms
    return [
        Job("gate", (), ruler_command(root, teacher, "teacher", tasks=["niah_single_1"], lengths=lengths[:1]), False),
        Job("distill_bayes", ("gate",), distill("bayes")),
        Job("distill_gdn", ("gate",), distill("gdn")),
        Job("ruler_teacher", ("gate",), ruler_command(root, teacher, "teacher"), gated=False),
        Job("ruler_bayes", ("distill_bayes",), ruler_command(root, teacher, "bayes")),
        Job("ruler_gdn", ("distill_gdn",), ruler_command(root, teacher, "gdn")),
        Job("distill_bayes_stationary", both, distill("bayes_stationary", "retention=stationary")),
        Job("ruler_bayes_stationary", ("distill_bayes_stationary",), ruler_command(root, teacher, "bayes_stationary")),
        # the compared arms' likelihood does not wait for the secondary one; the second job adds it (cached per arm)
        Job("likelihood", ("ruler_teacher", "ruler_bayes", "ruler_gdn"), likelihood("teacher", "bayes", "gdn")),
        Job("likelihood_stationary", ("likelihood", "ruler_bayes_stationary"), likelihood()),
    ]


def gate_result(root: Path, teacher: Path) -> dict:
    """The gate's verdict from the teacher's RULER summary (niah_single_1 at the training context); a
    ``ValueError`` when the summary has no such scored unit."""
    context, _ = teacher_recipe(teacher)
    summary = root / "experiments" / "ruler" / "teacher" / "summary.csv"
    if not summary.is_file():
        raise ValueError(f"{summary} does not exist")
    with summary.open() as handle:
        row = next(
            (r for r in csv.DictReader(handle) if r["task"] == "niah_single_1" and int(r["length"]) == context), None
        )
    if row is None or row["status"] != "ok":
        raise ValueError(f"{summary} has no scored niah_single_1 at {context} tokens")
    score = float(row["score"])
    return {"task": "niah_single_1", "length": context, "score": score, "threshold": GATE, "passed": score > GATE}


def link_teacher(root: Path, teacher: Path) -> None:
    """``ROOT/distill/teacher`` → the teacher's folder (a link; refused when something else is there)."""
    link = root / "distill" / "teacher"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() != teacher.resolve():
            raise SystemExit(
                f"{link} is {link.resolve()}, not a link to {teacher}: use another --root (or remove {link})"
            )
        return
    link.symlink_to(teacher.resolve(), target_is_directory=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def study_lock(state: Path):
    """One driver per ``--root`` at a time (two would train into the same folders)."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / "run.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another distill_study.py is running on {state.parent.parent} (lock {handle.name})")
        yield


class Stopped(Exception):
    """SIGTERM: stop like Ctrl-C."""


def _stop(signum, frame):
    raise Stopped


def _default_sigint() -> None:
    """In a job, before it starts: SIGINT at its default, so that Python turns it into KeyboardInterrupt (the job
    checkpoints and stops). A driver started in the background (``nohup … &``) inherits SIGINT ignored, and so would
    its jobs — they would then run on until killed, losing what they had not saved."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def schedule(todo: list[Job], state: Path, workers: int, poll: float, gate=None) -> tuple[set[str], set[str]]:
    """Run ``todo`` (skipping jobs with a ``.done`` marker), at most ``workers`` at a time, each after the jobs it
    needs; ``gate()``, called once when the job ``gate`` is done, is ``True`` (open), ``False`` (shut) or ``None``
    (the verdict cannot be read: the gate counts as failed), and a gated job starts only after ``True``. Returns
    ``(done, failed)``. On Ctrl-C or SIGTERM the running jobs get SIGINT (they checkpoint and stop), then are waited
    for (killed after a minute), and the signal goes on.
    """
    jobs_by_name = {job.name: job for job in todo}
    done = {name for name in jobs_by_name if (state / f"{name}.done").exists()}
    for name in jobs_by_name:
        (state / f"{name}.failed").unlink(missing_ok=True)
    failed: set[str] = set()
    running: dict[str, subprocess.Popen] = {}

    verdict = True if gate is None or "gate" not in jobs_by_name else None  # None: not known yet
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            for name, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode == 0:
                    (state / f"{name}.done").touch()
                    done.add(name)
                else:
                    failed.add(name)
                    (state / f"{name}.failed").write_text(f"exit {process.returncode}; see {name}.log\n")
                log(f"{name}: {'done' if name in done else 'FAILED'}")
            if verdict is None and "gate" in done and "gate" not in failed:
                verdict = gate()
                if verdict is None:
                    failed.add("gate")
            ready = [
                job
                for name, job in jobs_by_name.items()
                if name not in done | failed | set(running)
                and all(n in done for n in job.needs)
                and not any(n in failed for n in job.needs)
                and (not job.gated or verdict is True)
            ]
            for job in ready[: max(0, workers - len(running))]:
                log(f"{job.name}: {shlex.join(job.command)}")
                with (state / f"{job.name}.log").open("a") as handle:
                    running[job.name] = subprocess.Popen(
                        job.command,
                        cwd=REPO,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "OMP_NUM_THREADS": "1"},
                        preexec_fn=_default_sigint,
                    )
            if not running:
                return done, failed
            time.sleep(poll)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in running.values():
            process.send_signal(signal.SIGINT)
        for name, process in running.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log(f"{name}: stopped (rerun to resume)")


def _gate(root: Path, teacher: Path, state: Path):
    """The ``gate`` callable of :func:`schedule`: the verdict, written to ``gate.json`` (recomputed from the
    teacher's summary on every run, so a lost ``gate.json`` cannot open the gate); ``None`` with ``gate.failed``
    when the summary cannot be read."""

    def gate() -> bool | None:
        try:
            result = gate_result(root, teacher)
        except ValueError as error:
            (state / "gate.failed").write_text(f"{error}\n")
            return None
        if not (state / "gate.json").exists() or json.loads((state / "gate.json").read_text()) != result:
            atomic_write_json(state / "gate.json", result)
            log(f"gate: {result}")
        return result["passed"]

    return gate


def _checked_teacher(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    root, teacher = Path(args.root).expanduser(), Path(args.teacher).expanduser()
    if not (teacher / "config.json").is_file():
        raise SystemExit(f"--teacher {teacher} is not a model folder (no config.json)")
    link_teacher(root, teacher)
    return root, teacher, root / "experiments" / "distill_study"


def run(args: argparse.Namespace) -> int:
    root, teacher, state = _checked_teacher(args)
    with study_lock(state):
        todo = jobs(root, teacher)
        done, failed = schedule(todo, state, args.workers, args.poll, _gate(root, teacher, state))
    gate = json.loads((state / "gate.json").read_text()) if (state / "gate.json").exists() else None
    if gate is not None and not gate["passed"]:
        print(f"the teacher is at RULER's floor at its training context ({gate}): no distillation (the plan's gate)")
    if failed:
        print(f"failed: {', '.join(sorted(failed))} (logs in {state}); rerun to retry", file=sys.stderr)
        return 1
    left = [job.name for job in todo if job.name not in done]
    print("finished" if not left else f"not run: {', '.join(left)}")
    return 0


def topup_counts(paired: Path) -> dict[str, int]:
    """The plan's one top-up (:func:`probseq.experiments.ruler_compare.top_up`) from ``paired.csv``: at least the
    plan's count per task, at most ``TOPUP_MAX``, as ``{"task@length": n}``."""
    from probseq.experiments.ruler_compare import top_up

    with paired.open() as handle:
        return top_up(list(csv.DictReader(handle)), SAMPLES, TOPUP_MAX)


def topup(args: argparse.Namespace) -> int:
    root, teacher, state = _checked_teacher(args)
    with study_lock(state):
        record = state / "topup.json"
        before = json.loads(record.read_text()) if record.exists() else None
        if before is not None and before["finished"]:
            print(f"the plan allows one top-up, and it was made ({record}: {before['counts']})")
            return 0
        # an interrupted top-up resumes with its recorded counts (paired.csv may have moved with partial results)
        counts = before["counts"] if before is not None else topup_counts(Path(args.paired))
        if not counts:
            print(f"no undecided niah mean in {args.paired}: no top-up")
            return 0
        arms = [job.name.removeprefix("ruler_") for job in jobs(root, teacher) if job.name.startswith("ruler_")]
        arms = [arm for arm in arms if (state / f"ruler_{arm}.done").exists()]
        atomic_write_json(record, {"counts": counts, "arms": arms, "finished": False})
        todo = [Job(f"topup_ruler_{arm}", (), ruler_command(root, teacher, arm, counts), gated=False) for arm in arms]
        done, failed = schedule(todo, state, args.workers, args.poll)
        if failed:
            print(f"failed: {', '.join(sorted(failed))} (logs in {state}); rerun to retry", file=sys.stderr)
            return 1
        atomic_write_json(record, {"counts": counts, "arms": arms, "finished": True})
    print(f"topped up {', '.join(arms)} to {counts}; now scripts/collect_results.sh (PROBSEQ_CACHE={root})")
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
    for name in ("plan", "run", "topup"):
        p = sub.add_parser(name)
        p.add_argument("--teacher", required=True, help="the teacher's probseq pretrain folder")
        p.add_argument("--root", default=DEFAULT_ROOT, help=f"where everything lives (default {DEFAULT_ROOT})")
        if name != "plan":
            p.add_argument("--workers", type=int, default=WORKERS)
            p.add_argument("--poll", type=float, default=10.0, help="seconds between checks of the running jobs")
        if name == "topup":
            p.add_argument("--paired", default=str(REPO / "results" / "ruler" / "paired.csv"))
    args = parser.parse_args(argv)
    return {"plan": plan, "run": run, "topup": topup}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
