"""The paired robustness studies (recall, MQAR): calibrate, choose on validation, then pair seeds.

    python scripts/paired_study.py run recall --root ~/.cache/probseq/experiments/recall_paired [--workers 2]
    python scripts/paired_study.py report recall --root ~/.cache/probseq/experiments/recall_paired \
        --out results/recall_paired

(``mqar`` likewise.) On a machine that has the committed results but not the runs (``~/.cache`` is not kept between
machines): ``rank mqar --root R --first-study results/mqar_paired`` trains only the ranking arms, ``confirm recall
--root R --first-study results/recall_paired`` the confirmation, each taking the first study's choices from its
committed ``summary.json``/``calibration.csv``; ``archive --root R --out results/<study>/units`` copies every finished
run's record (a few kB) for committing, and ``restore`` (same arguments) puts them back, so a study resumes unit by
unit on the next machine. ``run`` trains everything the plan below needs, stage by stage, as ``probseq recall`` /
``probseq mqar`` sweeps (each resumable and cached, one single-threaded process per sweep; ``--workers`` sweeps at
once, each arm going on to its stage 2 as soon as its stage 1 is done, so no core waits while another arm finishes
its grid), and is itself resumable: rerun the same command. The schedule orders the runs, never changes one.
``report`` reads what has finished and writes the tables and the plot (partial results are marked as such).

The plan (fixed before the runs; ``results/{recall,mqar}_paired/README.md`` state it in words):

1. **Recipe.** The task's ``cpu`` preset with Zoology's two-layer model (one conv block, one mixer), every
   example weighing the same in the loss (MQAR: every batch from one segment, as Zoology), fla's initialisation,
   paired initial weights and batches per seed.
2. **Stage 1, learning rate per arm, on validation data.** Seeds 0–2 over the arm's lr grid. The chosen lr maximises
   the mean over seeds of the mean *validation* accuracy over all validation points. An optimum on the grid's
   edge extends the grid by a half-decade on that side (at most twice) and chooses again.
3. **Which Bayesian variant is "the Bayesian Layer"** — learned or stationary retention — is chosen from stage 1
   alone (seeds 0–2 at each variant's chosen lr): the higher mean validation accuracy over the primary endpoints'
   validation points.
4. **Stage 2, paired seeds.** Seeds 0 … N−1 (N = 10) of every arm at its chosen lr. **Stage 3**: if any primary
   endpoint is *undecided* at N = 10, Gated DeltaNet and the Bayesian Layer get seeds 10–19 (20 in all), and the
   20-seed analysis is the final one for every endpoint (the 10-seed look stays in the table, marked as such).
5. **Endpoints** (test data): recall: accuracy at 16 pairs, 32 pairs and 4 collisions; MQAR: at (512, 128) and
   (1024, 256), the two points beyond training. Statistic: the per-seed paired
   difference Bayesian Layer − Gated DeltaNet, its mean and 95 % t-interval over the N seeds. Verdict: better
   (interval above 0), worse (below 0), indistinguishable (contains 0 with half-width ≤ 0.05), undecided
   (contains 0, half-width > 0.05). Secondary: the same over the seeds where both runs learned the training
   regime; MQAR also at its hardest training points (128, 32) and (256, 64) (amended before stage 1).
6. **Calibration check.** A run has *learned* when its validation accuracy at the task's ``learned_point`` (recall:
   inside; MQAR: (64, 4), the plateau's tell) is ≥ 0.9; the baselines (attention, Gated DeltaNet, DeltaNet) should
   learn in ≥ 9 of 10 seeds at their chosen lr.

Outside the plan, labelled exploratory wherever it appears: the last sweep of ``run`` trains Gated DeltaNet at the
Bayesian variants' chosen lrs (as many seeds as stages 2–3), and ``report`` pairs them at that common lr.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from probseq.experiments.common import write_csv
from probseq.files import atomic_write_bytes
from probseq.train.sweep import split_accuracy, sweep_units

ROOT = Path(__file__).resolve().parents[1]
DELTA_GRID = (3e-4, 1e-3, 3e-3)
STAGE1_SEEDS = (0, 1, 2)
PAIRED_SEEDS = 10
FLOOR = 0.1  # amendment before MQAR's stage 1: a comparison where both arms' means are below is 'at the floor'
EXTENDED_SEEDS = 20  # stage 3, when a primary endpoint is undecided at PAIRED_SEEDS
LEARNED = 0.9  # validation accuracy at the task's learned_point at or above which a run has learned
MAX_EXTENSIONS = 2
PILOT_DIR = "steps_pilot"  # the steps pilot's sweep, outside every arm's folder (its steps may not be the study's)


@dataclass(frozen=True)
class StepsPilot:
    """Gated DeltaNet at ``lrs`` × ``seeds`` for ``steps``: if at least ``needed`` runs learn, the study trains for
    ``steps``, else for ``fallback`` steps."""

    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    fallback: int
    needed: int


@dataclass(frozen=True)
class Task:
    command: str  # the probseq subcommand
    base: tuple[str, ...]  # --set overrides of every sweep
    primary: tuple[str, ...]  # endpoint names (test_<name> / valid_<name>)
    learned_point: str  # the validation point that says a run learned the training regime
    also: tuple[str, ...]  # other test points in runs.csv
    steps_pilot: StepsPilot | None = None  # the plan's rule for the number of steps (MQAR), None: the preset's
    secondary: tuple[str, ...] = ()  # further test points analysed like the primary ones (never a stage-3 trigger)
    arm_changes: tuple[Arm, ...] = ()  # this task's version of an arm of ARMS (same name)
    only_arms: tuple[str, ...] | None = None  # the arms of ARMS this task runs (None: every arm)
    fixed_variant: str | None = None  # the Bayesian Layer fixed in advance (None: chosen by plan item 3)
    # the ranking check against a committed ranking.json (its arms that this task does not rerun stand as they are)
    ranking_reference: str | None = None


@dataclass(frozen=True)
class Arm:
    name: str
    mixer: str
    grid: tuple[float, ...]
    sets: tuple[str, ...] = ()
    paired: bool = True  # part of stage 2 (else: stage 1 only, the ranking check)


ARMS = (
    Arm("gated_deltanet", "gated_deltanet", DELTA_GRID),
    Arm("bayesian_learned", "bayesian", DELTA_GRID, ("retention=learned",)),
    Arm("deltanet", "deltanet", DELTA_GRID),
    Arm("attention", "attention", (1e-3, 3e-3, 1e-2)),
    Arm("bayesian_stationary", "bayesian", DELTA_GRID, ("retention=stationary",)),
    Arm("linear_attention", "linear_attention", (1e-3, 3e-3, 1e-2), paired=False),
    Arm("mamba2", "mamba2", (3e-4, 1e-3, 3e-3), paired=False),
)
BAYESIAN = ("bayesian_learned", "bayesian_stationary")
ARM_BY_NAME = {arm.name: arm for arm in ARMS}


TASKS = {
    "recall": Task(
        "recall",
        ("n_layers=2", "loss_weighting=example", "num_threads=1"),
        ("num_pairs=16", "num_pairs=32", "collisions=4"),
        "inside",
        ("inside", "gap=256", "key_noise=0.5"),
    ),
    "mqar": Task(
        "mqar",
        ("n_layers=2", "loss_weighting=example", "batching=by_segment", "num_threads=1"),
        ("T512_k128", "T1024_k256"),
        "T64_k4",
        ("T64_k4", "T128_k32", "T256_k64"),
        StepsPilot(lrs=(1e-3, 3e-3), seeds=(0, 1, 2), steps=1500, fallback=3000, needed=5),
        # amendment before stage 1 (results/mqar_paired/README.md): the hardest training points, off the floor
        secondary=("T128_k32", "T256_k64"),
        # amendment before stage 1: Zoology's Mamba-2 model (two Mamba-2 blocks, no conv block; its init) and a grid
        # up to 1e-2 for the ranking-only Mamba-2 arm (recall showed fla's init leaves Mamba-2's memory path at
        # Adam's eps, and Zoology's layout the best variant: results/recall_paired/mamba2/)
        arm_changes=(Arm("mamba2", "mamba2", (1e-3, 3e-3, 1e-2), ("init=zoology", "layout=mixers"), paired=False),),
    ),
}
# The primary comparison again under a slow initial decay (results/mqar_paired/README.md, "The primary comparison
# under a slow initial decay", planned before its runs): the MQAR study's recipe and 1,500 steps (its pilot's choice),
# every decay rate at 0.01× its initial value, Gated DeltaNet and the stationary Bayesian Layer only (the first
# study's choice), each over lr {1e-3, 3e-3, 1e-2}.
TASKS["mqar_slow_decay"] = dataclasses.replace(
    TASKS["mqar"],
    base=(*TASKS["mqar"].base, "max_steps=1500", "decay_init_scale=0.01"),
    steps_pilot=None,
    arm_changes=(
        Arm("gated_deltanet", "gated_deltanet", (1e-3, 3e-3, 1e-2)),
        Arm("bayesian_stationary", "bayesian", (1e-3, 3e-3, 1e-2), ("retention=stationary",)),
    ),
    only_arms=("gated_deltanet", "bayesian_stationary"),
    fixed_variant="bayesian_stationary",
    # linear attention, DeltaNet and attention have no decay rate: their ranking-check runs stand
    ranking_reference="results/mqar_paired/ranking.json",
)
# the arms of a reference ranking that stand beside a rerun under another decay initialisation (no decay rate)
UNDECAYED_ARMS = ("attention", "deltanet", "linear_attention")


def task_arms(task: Task) -> tuple[Arm, ...]:
    """The arms of ``task``: ARMS, with the task's ``arm_changes`` in place of the arms of the same name."""
    changes = {arm.name: arm for arm in task.arm_changes}
    arms = tuple(changes.get(arm.name, arm) for arm in ARMS)
    return arms if task.only_arms is None else tuple(arm for arm in arms if arm.name in task.only_arms)


def sweep_dir(root: Path, arm: Arm, label: str) -> Path:
    return root / arm.name / label


def run_sweep(
    task: Task,
    root: Path,
    arm: Arm,
    label: str,
    lrs: list[float],
    seeds: list[int],
    workers: int,
    extra: tuple[str, ...] = (),
    out: Path | None = None,
) -> dict:
    """Train one sweep with ``workers`` processes (resumable); return its unit records by (lr, seed)."""
    out = out or sweep_dir(root, arm, label)
    command = [
        str(ROOT / ".venv/bin/probseq"),
        task.command,
        "--preset",
        "cpu",
        "--out",
        str(out),
        "--set",
        f'mixers=["{arm.mixer}"]',
        f"learning_rates={json.dumps(lrs)}",
        f"seeds={json.dumps(seeds)}",
        *task.base,
        *extra,
        *arm.sets,
    ]
    print(f"== {arm.name} {label}: lrs {lrs}, seeds {seeds}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    logs = [open(out.parent / f"{label}.worker{w}.log", "a") for w in range(workers)]
    processes = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    codes = [p.wait() for p in processes]
    for log in logs:
        log.close()
    if any(codes):
        raise SystemExit(f"{arm.name} {label} failed (exit codes {codes}); see {out.parent}/{label}.worker*.log")
    return read_sweep(out)


def read_sweep(out: Path) -> dict:
    """(lr, seed) → metrics of every finished unit of the sweep in ``out``: its ``results.json`` (written when the
    sweep ends), and before that the units finished so far (``out/cache/*.json``, each record with its config)."""
    records = {}
    for path in sorted((out / "cache").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            config = record["config"]
            records[(float(config["learning_rate"]), int(config["seed"]))] = record["metrics"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{path}: not a finished unit's record ({error}); delete it to train the unit again")
    return records | {(u["learning_rate"], u["seed"]): u["metrics"] for u in sweep_units(out)}


def has_learned(task: Task, metrics: dict) -> bool:
    """Whether a run learned the training regime: validation accuracy at ``task.learned_point`` ≥ ``LEARNED``."""
    return (split_accuracy(metrics, f"valid_{task.learned_point}") or 0) >= LEARNED


def mean_valid(metrics: dict, points: tuple[str, ...] | None = None) -> float:
    """Mean validation accuracy over ``points`` (every validation point when None); 0 for a diverged run."""
    evaluation = metrics.get("eval", {})
    names = [n for n in evaluation if n.startswith("valid_")] if points is None else [f"valid_{p}" for p in points]
    values = [split_accuracy(metrics, n) for n in names]
    return 0.0 if any(v is None for v in values) else statistics.fmean(values)


def choose_lr(records: dict, seeds: tuple[int, ...]) -> tuple[float, dict[float, float]]:
    """The lr with the highest mean over ``seeds`` of the mean validation accuracy (ties: the smaller lr)."""
    scores = {}
    for lr in sorted({lr for lr, _ in records}):
        runs = [records[(lr, s)] for s in seeds if (lr, s) in records]
        if len(runs) == len(seeds):
            scores[lr] = statistics.fmean(mean_valid(m) for m in runs)
    best = max(scores, key=lambda lr: (scores[lr], -lr))
    return best, scores


def choose_steps(task: Task, root: Path, workers: int) -> tuple[str, ...]:
    """The plan's steps rule (``task.steps_pilot``): the ``--set`` overrides that fix the study's steps."""
    pilot = task.steps_pilot
    if pilot is None:
        return ()
    gdn = ARM_BY_NAME["gated_deltanet"]
    out = root / PILOT_DIR
    records = run_sweep(
        task, root, gdn, "steps_pilot", list(pilot.lrs), list(pilot.seeds), workers, (f"max_steps={pilot.steps}",), out
    )
    learned = sum(has_learned(task, m) for m in records.values())
    steps = pilot.steps if learned >= pilot.needed else pilot.fallback
    print(f"   steps pilot: {learned} of {len(records)} runs learned -> {steps} steps", flush=True)
    return (f"max_steps={steps}",)


def stage1(
    task: Task, root: Path, arm: Arm, workers: int, extra: tuple[str, ...] = (), stop: threading.Event | None = None
) -> tuple[float, dict]:
    """Stage 1 of one arm: the grid, extended while the optimum sits on an edge; the chosen lr and the records.
    ``stop`` (set by a failure elsewhere): no further extension starts."""
    records = dict(run_sweep(task, root, arm, "grid", list(arm.grid), list(STAGE1_SEEDS), workers, extra))
    for _ in range(MAX_EXTENSIONS + 1):
        best, scores = choose_lr(records, STAGE1_SEEDS)
        lrs = sorted(scores)
        if best not in (lrs[0], lrs[-1]):
            break
        step = 10 ** (-0.5 if best == lrs[0] else 0.5)
        new = float(f"{best * step:.3g}")
        if len([lr for lr in lrs if lr not in arm.grid]) >= MAX_EXTENSIONS:
            break
        if stop is not None and stop.is_set():
            raise SystemExit(f"{arm.name}: stage 1 stopped (another sweep failed)")
        records |= run_sweep(task, root, arm, f"lr{new:g}", [new], list(STAGE1_SEEDS), workers, extra)
    best, _ = choose_lr(records, STAGE1_SEEDS)
    return best, records


def bayesian_layer(task: Task, records: dict, chosen: dict) -> str | None:
    """Plan item 3: the Bayesian variant with the higher stage-1 mean validation accuracy at the primary points
    (the task's ``fixed_variant`` when its plan fixed it in advance)."""
    if task.fixed_variant is not None:
        return task.fixed_variant if task.fixed_variant in chosen else None
    if not all(b in chosen for b in BAYESIAN):
        return None

    def primary_valid(name):
        return statistics.fmean(mean_valid(records[name][(chosen[name], s)], task.primary) for s in STAGE1_SEEDS)

    return max(BAYESIAN, key=primary_valid)


def run(args: argparse.Namespace) -> None:
    """Every stage, keeping every worker busy: each paired arm is a chain (stage 1, then stage 2 at its chosen lr) and
    the chains run ``workers`` at a time, those that decide the primary comparison (Gated DeltaNet and the two
    Bayesian variants) first; once those three are done, the Bayesian Layer is chosen and stage 3 runs if the first
    look leaves a primary endpoint undecided; then the ranking-only arms' stage 1 and the exploratory same-lr runs.
    Only the order of the runs depends on this schedule, never a run or a choice."""
    task, root = TASKS[args.task], Path(args.root).expanduser()
    chosen, records = {}, {}
    extra = choose_steps(task, root, args.workers)
    arms = task_arms(task)
    by_name = {arm.name: arm for arm in arms}
    seeds = list(range(PAIRED_SEEDS))

    stop = threading.Event()  # set by the first failure: no further sweep starts

    def paired_chain(arm: Arm) -> None:
        chosen[arm.name], records[arm.name] = stage1(task, root, arm, 1, extra, stop)
        print(f"   {arm.name}: chosen lr {chosen[arm.name]:g}", flush=True)
        if stop.is_set():
            return
        run_sweep(task, root, arm, "paired", [chosen[arm.name]], seeds, 1, extra)

    def ranking_chain(arm: Arm) -> None:
        chosen[arm.name], _ = stage1(task, root, arm, 1, extra, stop)
        print(f"   {arm.name}: chosen lr {chosen[arm.name]:g}", flush=True)

    decisive = tuple(name for name in ("gated_deltanet", *BAYESIAN) if name in by_name)
    paired = sorted((arm for arm in arms if arm.paired), key=lambda arm: (arm.name not in decisive, arms.index(arm)))
    with Sweeps(args.workers, stop) as sweeps:  # one worker per sweep, this many sweeps at once
        chains = {arm.name: sweeps.submit(paired_chain, arm) for arm in paired}
        sweeps.wait([chains[name] for name in decisive])
        if stop.is_set():  # another chain failed: raise its error (nothing is chosen on unfinished stages)
            sweeps.wait(list(chains.values()))
            raise SystemExit("stopped")
        variant = bayesian_layer(task, records, chosen)
        print(f"   the Bayesian Layer: {variant}", flush=True)
        first_look = {name: all_records(root, by_name[name]) for name in ("gated_deltanet", variant)}
        extended = needs_extension(task, first_look, chosen, variant)
        later = []
        if extended:
            print("   a primary endpoint is undecided at 10 seeds: stage 3, seeds 10-19", flush=True)
            stage3 = list(range(PAIRED_SEEDS, EXTENDED_SEEDS))
            later += [
                sweeps.submit(run_sweep, task, root, by_name[name], "extended", [chosen[name]], stage3, 1, extra)
                for name in ("gated_deltanet", variant)
            ]
        later += [sweeps.submit(ranking_chain, arm) for arm in arms if not arm.paired]
        sweeps.wait([*chains.values(), *later])
    # Exploratory, outside the plan (``same_lr_rows``): GDN at the Bayesian variants' lrs, as many seeds as stage 2/3.
    same_lrs = sorted({chosen[b] for b in BAYESIAN if b in chosen} - {chosen["gated_deltanet"]})
    if same_lrs:
        seeds = list(range(EXTENDED_SEEDS if extended else PAIRED_SEEDS))
        run_sweep(task, root, by_name["gated_deltanet"], "same_lr", same_lrs, seeds, args.workers, extra)
    print("done; python scripts/paired_study.py report --root ... --out ...", flush=True)


def recorded_steps(task: Task, first_study: Path) -> tuple[str, ...]:
    """The steps rule applied to the steps pilot's outcome as the study's committed ``summary.json`` records it
    (``{"steps_pilot": {"runs", "learned"}}``), so a later stage can run on a machine that no longer holds the
    pilot's runs without training them again."""
    pilot = task.steps_pilot
    if pilot is None:
        return ()
    path = first_study / "summary.json"
    try:
        record = json.loads(path.read_text())["steps_pilot"]
        runs, learned = int(record["runs"]), int(record["learned"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: no readable steps_pilot record ({error})") from error
    if runs != len(pilot.lrs) * len(pilot.seeds):
        raise SystemExit(f"{path}: the steps pilot has {runs} runs, the plan {len(pilot.lrs) * len(pilot.seeds)}")
    return (f"max_steps={pilot.steps if learned >= pilot.needed else pilot.fallback}",)


def rank(args: argparse.Namespace) -> None:
    """Only the ranking-only arms' stage 1 (``run``'s last chains), at the steps the committed first study's pilot
    fixed: for a machine that has the study's committed results but not its runs."""
    task, root = TASKS[args.task], Path(args.root).expanduser()
    extra = recorded_steps(task, Path(args.first_study))
    arms = [arm for arm in task_arms(task) if not arm.paired]
    print(f"   ranking arms {[arm.name for arm in arms]}, {extra}", flush=True)
    chosen = {}

    def chain(arm: Arm) -> None:
        chosen[arm.name], _ = stage1(task, root, arm, 1, extra, stop)
        print(f"   {arm.name}: chosen lr {chosen[arm.name]:g}", flush=True)

    stop = threading.Event()
    with Sweeps(args.workers, stop) as sweeps:
        sweeps.wait([sweeps.submit(chain, arm) for arm in arms])
    print("done; python scripts/paired_study.py rank-report ... --out ...", flush=True)


EXTENSION_LABEL = "extended"  # the sweeps of seeds 10–19 (stage 3, or the precision extension)


def committed_choice(first_study: Path) -> tuple[str, dict[str, float]]:
    """The Bayesian Layer and every arm's chosen lr, as the study's committed ``summary.json`` records them."""
    path = first_study / "summary.json"
    try:
        summary = json.loads(path.read_text())
        variant, chosen = summary["bayesian_layer"], {k: float(v) for k, v in summary["chosen_lr"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SystemExit(f"{path}: no readable bayesian_layer and chosen_lr ({error})") from error
    if variant not in BAYESIAN or not {"gated_deltanet", variant} <= set(chosen):
        raise SystemExit(f"{path}: bayesian_layer {variant!r} or its lr, or Gated DeltaNet's, is missing")
    return variant, chosen


def extension_seeds(args: argparse.Namespace) -> int:
    """The number of paired seeds after the extension (``--seeds``; stage 3's 20 by default)."""
    total = getattr(args, "seeds", EXTENDED_SEEDS)
    if total <= PAIRED_SEEDS:
        raise SystemExit(f"--seeds {total}: an extension needs more than the first look's {PAIRED_SEEDS} seeds")
    return total


def extend(args: argparse.Namespace) -> None:
    """Seeds 10–19 (10 … ``--seeds`` − 1) of Gated DeltaNet and the Bayesian Layer at their chosen lrs (the
    committed first study's), the sweeps stage 3 would run: for a decided first look whose interval is still wider
    than the precision asked for. Outside the plan's rule (which extends only an undecided endpoint): a deviation,
    stated where it is reported. Finished seeds (restored records included, and with ``--earlier`` the rows of an
    earlier report's ``runs.csv``) are not trained again."""
    task, root, first = TASKS[args.task], Path(args.root).expanduser(), Path(args.first_study)
    extra = recorded_steps(task, first)
    variant, chosen = committed_choice(first)
    earlier = earlier_extension_rows(args, chosen)
    todo = {
        name: [s for s in range(PAIRED_SEEDS, extension_seeds(args)) if s not in earlier[name]]
        for name in ("gated_deltanet", variant)
    }
    with Sweeps(args.workers) as sweeps:
        sweeps.wait(
            [
                sweeps.submit(
                    run_sweep, task, root, ARM_BY_NAME[name], EXTENSION_LABEL, [chosen[name]], seeds, 1, extra
                )
                for name, seeds in todo.items()
                if seeds
            ]
        )
    print("done; python scripts/paired_study.py extend-report ... --out ...", flush=True)


def committed_runs(first_study: Path) -> list[dict]:
    """The rows of the study's committed ``runs.csv`` (``run_row``'s), typed."""
    path = first_study / "runs.csv"

    def number(text: str) -> float | None:
        return float(text) if text else None

    try:
        with path.open(newline="") as handle:
            return [
                {
                    **{k: number(v) for k, v in r.items() if k.startswith("test_")},
                    "arm": r["arm"],
                    "lr": float(r["lr"]),
                    "seed": int(r["seed"]),
                    "learned": r["learned"] == "True",
                    "retention_scale": r.get("retention_scale") or None,
                }
                for r in csv.DictReader(handle)
            ]
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"{path}: not a readable runs table ({error})") from error


def earlier_extension_rows(args: argparse.Namespace, chosen: dict[str, float]) -> dict[str, dict[int, dict]]:
    """arm → seed → row of the runs an earlier ``extend-report`` committed (``--earlier``: its folder), at the
    arm's chosen lr and an extension seed: what a machine that lost the runs' folders need not train again. Empty
    (for every arm in ``chosen``) without ``--earlier``."""
    rows = {name: {} for name in chosen}
    if getattr(args, "earlier", None):
        for r in committed_runs(Path(args.earlier)):
            if r["arm"] in rows and r["lr"] == chosen[r["arm"]] and r["seed"] >= PAIRED_SEEDS:
                rows[r["arm"]][r["seed"]] = r
    return rows


REPRODUCED = 1e-3  # largest test-accuracy difference of a run trained again that still counts as the same run


def check_reproduced(row: dict, before: dict, run: str, source: str) -> None:
    """A run trained again here against its committed row: the same ``learned`` verdict and every test accuracy
    within ``REPRODUCED`` (float rounding in training or evaluation flips a handful of the ~10⁵ test answers);
    prints the largest difference, raises beyond it."""
    points = [k for k in before if k.startswith("test_") and before[k] is not None]
    gap = max((abs(row[k] - before[k]) for k in points), default=0.0)
    print(f"{run}: trained again, largest test-accuracy difference from {source}'s row {gap:.2e}", flush=True)
    if row["learned"] != before["learned"] or gap > REPRODUCED:
        raise SystemExit(f"{run} was trained again and differs from {source}'s row ({before} against {row})")


def extend_report(args: argparse.Namespace) -> None:
    """The 20-seed (``--seeds``) analysis: the committed first look's runs (seeds 0–9, ``--first-study/runs.csv``) and
    the extension's (seeds 10–19, or up to ``--seeds`` − 1, under ``--root``), paired as ``paired_analysis`` pairs
    them, and with ``--earlier`` an earlier report's rows for the runs not under ``--root`` (a run under both must
    reproduce its row: :func:`check_reproduced`); ``partial`` until all pairs are in. Writes ``runs.csv`` (the
    extension's runs), ``paired.csv``, ``summary.json`` and the plot in ``--out``."""
    task, root, first, out = TASKS[args.task], Path(args.root).expanduser(), Path(args.first_study), Path(args.out)
    variant, chosen = committed_choice(first)
    extra = recorded_steps(task, first)
    total = extension_seeds(args)
    names = ("gated_deltanet", variant)
    rows = {name: {} for name in names}
    for r in committed_runs(first):
        if r["arm"] in rows and r["lr"] == chosen[r["arm"]] and r["seed"] < PAIRED_SEEDS:
            rows[r["arm"]][r["seed"]] = r
    earlier = earlier_extension_rows(args, chosen)
    new = []
    for name in names:
        for (lr, seed), m in sorted(read_sweep(sweep_dir(root, ARM_BY_NAME[name], EXTENSION_LABEL)).items()):
            if lr == chosen[name] and PAIRED_SEEDS <= seed < total:
                if m.get("status") == "ok" and extra and f"max_steps={m.get('steps')}" != extra[0]:
                    raise SystemExit(f"{name} seed {seed} trained {m.get('steps')} steps, the study {extra[0]}")
                rows[name][seed] = run_row(task, name, lr, seed, m)
                before = earlier[name].get(seed)
                if before is not None:
                    check_reproduced(rows[name][seed], before, f"{name} seed {seed}", args.earlier)
                new.append(rows[name][seed])
        for seed, r in sorted(earlier[name].items()):
            if seed < total and seed not in rows[name]:
                rows[name][seed] = r
                new.append(r)
    new.sort(key=lambda r: (names.index(r["arm"]), r["seed"]))
    seeds = sorted(set(rows[variant]) & set(rows["gated_deltanet"]))
    final = len(seeds) == total
    both = [s for s in seeds if rows[variant][s]["learned"] and rows["gated_deltanet"][s]["learned"]]
    bayes, gdn = rows[variant], rows["gated_deltanet"]
    label = f"{total} seeds (precision extension)"
    paired = difference_rows(task, variant, bayes, gdn, label, seeds, final)
    paired += difference_rows(task, variant, bayes, gdn, f"{label}, both learned", both, final)
    if task.secondary:
        paired += difference_rows(task, variant, bayes, gdn, f"{label}, secondary points", seeds, final, task.secondary)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", new)
    write_csv(out / "paired.csv", paired)
    learned = {name: sum(r["learned"] for r in rows[name].values()) for name in names}
    summary = {"bayesian_layer": variant, "lrs": {n: chosen[n] for n in names}, "seeds": seeds, "learned": learned}
    (out / "summary.json").write_text(json.dumps({**summary, "paired": paired}, indent=1) + "\n")
    plot(paired, out / "paired_differences.png")
    print(json.dumps({**summary, "paired": paired}, indent=1))


def read_calibration(path: Path) -> list[dict]:
    """The rows of a committed ``calibration.csv`` (``report``'s), typed."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [
            {
                "arm": r["arm"],
                "lr": float(r["lr"]),
                "seeds": int(r["seeds"]),
                "learned": int(r["learned"]),
                "mean_valid_all": float(r["mean_valid_all"]),
                "stage1_score": float(r["stage1_score"]) if r["stage1_score"] else None,
                "chosen": r["chosen"] == "True",
            }
            for r in rows
        ]
    except (OSError, KeyError, ValueError) as error:
        raise SystemExit(f"{path}: not a readable calibration table ({error})") from error


MAMBA2_LEARNS = 2  # of the 3 stage-1 seeds at its chosen lr: "Mamba-2 learns the easy segment" (fixed before its runs)


def rank_report(args: argparse.Namespace) -> None:
    """The plan's ranking check from stage 1 alike for every arm (seeds 0–2 at its chosen lr, the stage-1 score:
    mean validation accuracy over every point): the ranking arms' runs under ``--root`` beside the other arms' rows
    of the committed ``--out/calibration.csv``. Writes ``ranking.csv`` (every ranking arm's lr, ``calibration.csv``'s
    columns), ``ranking.json`` (each arm's chosen lr and score, best first, and the three checks) and
    ``ranking.png``."""
    task, root, out = TASKS[args.task], Path(args.root).expanduser(), Path(args.out)
    committed = [r for r in read_calibration(out / "calibration.csv") if r["chosen"]]
    rows, scores, learned, edge, provisional = [], {}, {}, {}, []
    for arm in (a for a in task_arms(task) if not a.paired):
        records = all_records(root, arm, stage1_only=True)
        try:
            best, arm_scores = choose_lr(records, STAGE1_SEEDS)
        except ValueError:  # no lr has all stage-1 seeds yet
            continue
        lrs = sorted(arm_scores)
        edge[arm.name] = best in (lrs[0], lrs[-1])
        # stage 1 is over (as ``stage1`` stops): every lr run has all its seeds, and the optimum is interior or
        # the grid was extended as often as allowed; until then the arm's choice is provisional
        if {lr for lr, _ in records} != set(arm_scores) or (
            edge[arm.name] and len([lr for lr in lrs if lr not in arm.grid]) < MAX_EXTENSIONS
        ):
            provisional.append(arm.name)
        for lr in sorted({lr for lr, _ in records}):
            runs = [m for (rate, _), m in records.items() if rate == lr]
            rows.append(
                {
                    "arm": arm.name,
                    "lr": lr,
                    "seeds": len(runs),
                    "learned": sum(has_learned(task, m) for m in runs),
                    "mean_valid_all": round(statistics.fmean(mean_valid(m) for m in runs), 4),
                    "stage1_score": round(arm_scores[lr], 4) if lr in arm_scores else None,
                    "chosen": lr == best,
                }
            )
        scores[arm.name] = (best, arm_scores[best])
        learned[arm.name] = sum(has_learned(task, records[(best, s)]) for s in STAGE1_SEEDS)
    write_csv(out / "ranking.csv", rows)
    for r in committed:
        scores.setdefault(r["arm"], (r["lr"], r["stage1_score"]))
    order = sorted(scores, key=lambda name: -scores[name][1])
    checks = ranking_checks(scores) | {
        "mamba2_learns_the_easy_segment": learned["mamba2"] >= MAMBA2_LEARNS if "mamba2" in learned else None,
    }
    summary = {
        "statistic": "stage-1 score: mean over seeds 0-2 at the arm's chosen lr of the mean validation accuracy",
        "ranking": [{"arm": n, "lr": scores[n][0], "stage1_score": round(scores[n][1], 4)} for n in order],
        "learned_at_chosen_lr": learned,
        "chosen_on_grid_edge": edge,
        "checks": checks,
        "provisional": provisional,  # arms whose stage 1 is not over: their lr and score may still change
        "complete": not provisional and set(learned) == {a.name for a in task_arms(task) if not a.paired},
    }
    (out / "ranking.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_ranking(summary["ranking"], out / "ranking.png")
    print(json.dumps(summary, indent=1))


def ranking_checks(scores: dict[str, tuple[float, float]]) -> dict[str, bool | None]:
    """The ranking check's order checks from each arm's ``(lr, stage-1 score)``: attention first, and the delta
    rule (Gated DeltaNet and DeltaNet) above linear attention (None: an arm the check needs has no score)."""
    delta = ("gated_deltanet", "deltanet", "linear_attention")
    best = max(scores, key=lambda name: scores[name][1]) if scores else None
    return {
        "attention_first": best == "attention" if "attention" in scores else None,
        "delta_rule_above_linear_attention": (
            all(scores[name][1] > scores["linear_attention"][1] for name in delta[:2])
            if all(name in scores for name in delta)
            else None
        ),
    }


def reference_ranking(task: Task, scores: dict[str, tuple[float, float]]) -> dict | None:
    """The ranking check of a task that reruns some arms (``task.ranking_reference``): this task's arms at their
    chosen lr (``scores``: arm → (lr, stage-1 score)) beside the reference's arms without a decay rate, best first,
    with the order checks; ``None`` without a reference or before Gated DeltaNet's stage 1 is over."""
    if task.ranking_reference is None or "gated_deltanet" not in scores:
        return None
    reference = json.loads((ROOT / task.ranking_reference).read_text())
    merged = {r["arm"]: (r["lr"], r["stage1_score"]) for r in reference["ranking"] if r["arm"] in UNDECAYED_ARMS}
    merged |= scores
    order = sorted(merged, key=lambda name: -merged[name][1])
    return {
        "reference": task.ranking_reference,
        "ranking": [
            {"arm": n, "lr": merged[n][0], "stage1_score": round(merged[n][1], 4), "this_study": n in scores}
            for n in order
        ],
        "checks": ranking_checks(merged),
    }


def plot_ranking(ranking: list[dict], path: Path) -> None:
    if not ranking:
        return
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = [r["arm"] for r in ranking]
    ax.bar(range(len(names)), [r["stage1_score"] for r in ranking], color="tab:blue")
    labels = [f"{n.replace('_', chr(10))}\nlr {r['lr']:g}" for n, r in zip(names, ranking)]
    ax.set_xticks(range(len(names)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean validation accuracy\n(seeds 0-2, all points)")
    ax.set_title("MQAR ranking check (stage 1 at each arm's chosen lr)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def archive(args: argparse.Namespace) -> None:
    """Copy each finished run's record under ``--root`` (``<arm>/<label>/cache/<name>-<fingerprint>.json``, a few
    kB) to ``--out/<arm>/<label>/``, to be committed: the runs' folders live in ``~/.cache``, which a later session
    may not have. ``restore`` puts them back; a sweep then reads each as its own finished unit (the file name
    carries the run's fingerprint, and the sweep checks the record against its unit), so nothing trains twice.
    A record already archived with other contents is an error (the fingerprint does not cover the code: the same
    run trained again by other code must not replace it silently)."""
    root, out = Path(args.root).expanduser(), Path(args.out)
    copies, conflicts = [], []
    for path in sorted(root.glob("*/*/cache/*.json")):
        target = out / path.parent.parent.relative_to(root) / path.name
        if not target.exists():
            copies.append((path, target))
        elif target.read_bytes() != path.read_bytes():
            conflicts.append(str(target))
    if conflicts:
        raise SystemExit(f"archived records differ from the runs' (nothing copied): {conflicts}")
    for path, target in copies:
        atomic_write_bytes(target, path.read_bytes())
    print(f"{len(copies)} record(s) copied to {out}")


RECORD_NAME = re.compile(r".+-[0-9a-f]{12}\.json")  # <unit name>-<fingerprint>.json, a sweep's cache file


def restore(args: argparse.Namespace) -> None:
    """Put ``archive``'s records (``--out/<arm>/<label>/<name>-<fingerprint>.json``; nothing else) back under
    ``--root`` (``<arm>/<label>/cache/``). A record already there is kept; one that differs is named."""
    root, out = Path(args.root).expanduser(), Path(args.out)
    restored, differing = 0, []
    for path in sorted(out.glob("*/*/*.json")):
        if not RECORD_NAME.fullmatch(path.name):
            continue
        target = root / path.parent.relative_to(out) / "cache" / path.name
        if not target.exists():
            atomic_write_bytes(target, path.read_bytes())
            restored += 1
        elif target.read_bytes() != path.read_bytes():
            differing.append(str(target))
    print(f"{restored} record(s) restored under {root}; rerun the study's command to take them")
    if differing:
        print(f"kept the root's own records where they differ from the archive's: {differing}")


class Sweeps:
    """A pool of ``slots`` threads, each driving single-worker sweeps, run in order of submission. The first failure
    (or Ctrl-C) stops what has not started — a call submitted earlier but not begun becomes a no-op — lets the
    running sweeps end (they stay resumable), then is raised by :meth:`wait`."""

    def __init__(self, slots: int, stopped: threading.Event | None = None):
        self.pool = ThreadPoolExecutor(max_workers=max(1, slots))
        self.stopped = stopped or threading.Event()

    def submit(self, call, *args):
        def guarded():
            if self.stopped.is_set():
                return None
            try:
                return call(*args)
            except BaseException:
                self.stopped.set()
                raise

        return self.pool.submit(guarded)

    def wait(self, futures: list) -> list:
        """The results of ``futures``; the first failure among them is raised as soon as it happens."""
        for future in as_completed(futures):
            future.result()
        return [future.result() for future in futures]

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if error is not None:
            self.stopped.set()
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.shutdown()
        return False


# ------------------------------------------------------------------------------------------------ report


def all_records(root: Path, arm: Arm, stage1_only: bool = False) -> dict:
    """(lr, seed) → metrics of every finished run of ``arm`` (``stage1_only``: of its stage-1 sweeps, the grid and
    its edge extensions, where its lr is chosen — not the exploratory ``same_lr`` sweep's lrs)."""
    records = {}
    for out in sorted((root / arm.name).glob("*/")):
        if not stage1_only or out.name == "grid" or out.name.startswith("lr"):
            records |= read_sweep(out)
    return records


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % t half-width (Student's t with n − 1 degrees of freedom; infinite for one value)."""
    from probseq.train.sweep import mean_ci95  # noqa: PLC0415

    mean, half = mean_ci95(values)
    return mean, half if len(values) > 1 else math.inf


def run_row(task: Task, arm: str, lr: float, seed: int, metrics: dict) -> dict:
    """One run's row of ``runs.csv``: whether it learned, its test accuracies, its trained ρ."""
    scale = metrics.get("retention_scale")
    return {
        "arm": arm,
        "lr": lr,
        "seed": seed,
        "learned": has_learned(task, metrics),
        **{
            f"test_{p}": split_accuracy(metrics, f"test_{p}")
            for p in dict.fromkeys((*task.also, *task.primary, *task.secondary))
        },
        "retention_scale": json.dumps(scale) if scale else None,
    }


def difference_rows(
    task: Task, variant: str, bayes: dict, gdn: dict, analysis: str, seeds: list, final: bool, points=None
):
    """Per endpoint (``points``, default the primary ones): the paired differences Bayesian − GDN over ``seeds``,
    mean and 95 % t-interval, beside each arm's mean accuracy (a floor or a ceiling shows there); the verdict only
    when ``final`` (the seed count the plan requires is complete), "partial" before."""
    rows = []
    for point in task.primary if points is None else points:
        key = f"test_{point}"
        both = [s for s in seeds if bayes[s][key] is not None and gdn[s][key] is not None]
        if not both:
            continue
        mean, half = t_interval([bayes[s][key] - gdn[s][key] for s in both])
        means = [round(statistics.fmean(arm[s][key] for s in both), 4) for arm in (bayes, gdn)]
        rows.append(
            {
                "analysis": analysis,
                "bayesian": variant,
                "endpoint": point,
                "seeds": len(both),
                "bayesian_mean": means[0],
                "gdn_mean": means[1],
                "mean_difference": round(mean, 4),
                "half_width_95": round(half, 4),
                "low": round(mean - half, 4),
                "high": round(mean + half, 4),
                "verdict": verdict(mean, half) if final else "partial",
                "at_floor": max(means) < FLOOR,  # both arms below FLOOR: a verdict here says little about memory
            }
        )
    return rows


def paired_analysis(task: Task, variant: str, bayes: dict[int, dict], gdn: dict[int, dict]) -> list[dict]:
    """Plan items 4–5 on the run rows (seed → ``run_row``) of the Bayesian Layer and Gated DeltaNet at their
    chosen lrs. The first look is seeds 0–9; if one of its primary endpoints is undecided, the final analysis is
    seeds 0–19 (stage 3) and the first look stays in the table as "first look (10 seeds)". Rows: "all" (every
    paired seed of the final analysis) and "both learned" (the seeds where both runs learned the training regime)."""
    seeds = sorted(set(bayes) & set(gdn))
    first = [s for s in seeds if s < PAIRED_SEEDS]
    first_rows = difference_rows(task, variant, bayes, gdn, "all", first, len(first) == PAIRED_SEEDS)
    extend = any(r["verdict"] == "undecided" for r in first_rows)
    required = EXTENDED_SEEDS if extend else PAIRED_SEEDS
    final_seeds = [s for s in seeds if s < required]
    final = len(final_seeds) == required
    both = [s for s in final_seeds if bayes[s]["learned"] and gdn[s]["learned"]]
    rows = [dict(r, analysis="first look (10 seeds)") for r in first_rows] if extend else []
    rows += difference_rows(task, variant, bayes, gdn, "all", final_seeds, final)
    rows += difference_rows(task, variant, bayes, gdn, "both learned", both, final)
    if task.secondary:
        rows += difference_rows(task, variant, bayes, gdn, "secondary points", final_seeds, final, task.secondary)
    return rows


def same_lr_rows(task: Task, records: dict, chosen: dict) -> list[dict]:
    """Exploratory, outside the plan: each Bayesian variant − Gated DeltaNet with GDN at the *variant's* chosen lr
    (every seed both have there), so a difference can be read apart from the arms' lr choices."""
    rows = []
    for variant in BAYESIAN:
        lr = chosen.get(variant)
        if lr is None or lr == chosen["gated_deltanet"]:
            continue
        at_lr = {
            name: {s: run_row(task, name, lr, s, m) for (rate, s), m in records[name].items() if rate == lr}
            for name in ("gated_deltanet", variant)
        }
        seeds = sorted(set(at_lr["gated_deltanet"]) & set(at_lr[variant]))
        label = f"same lr {lr:g} (exploratory)"
        final = len(seeds) >= PAIRED_SEEDS
        rows += difference_rows(task, variant, at_lr[variant], at_lr["gated_deltanet"], label, seeds, final)
    return rows


def needs_extension(task: Task, records: dict, chosen: dict, variant: str) -> bool:
    """Whether the first look (seeds 0–9) leaves a primary endpoint undecided, so stage 3 must run."""
    rows = {
        name: {s: run_row(task, name, lr, s, m) for (lr, s), m in records[name].items() if lr == chosen[name]}
        for name in ("gated_deltanet", variant)
    }
    analysis = paired_analysis(task, variant, rows[variant], rows["gated_deltanet"])
    return any(r["analysis"] == "first look (10 seeds)" for r in analysis)


def verdict(mean: float, half: float) -> str:
    if mean - half > 0:
        return "better"
    if mean + half < 0:
        return "worse"
    return "indistinguishable" if half <= 0.05 else "undecided"


def report(args: argparse.Namespace) -> None:
    task, root, out = TASKS[args.task], Path(args.root).expanduser(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = task_arms(task)
    records = {arm.name: all_records(root, arm) for arm in arms}
    calibration, chosen = [], {}
    for arm in arms:
        if not records[arm.name]:
            continue
        lrs = sorted({lr for lr, _ in records[arm.name]})
        try:
            chosen[arm.name], scores = choose_lr(all_records(root, arm, stage1_only=True), STAGE1_SEEDS)
        except ValueError:  # no lr has all stage-1 seeds yet
            scores = {}
        for lr in lrs:
            runs = {s: m for (rate, s), m in records[arm.name].items() if rate == lr}
            learned = sum(has_learned(task, m) for m in runs.values())
            calibration.append(
                {
                    "arm": arm.name,
                    "lr": lr,
                    "seeds": len(runs),
                    "learned": learned,
                    "mean_valid_all": round(statistics.fmean(mean_valid(m) for m in runs.values()), 4),
                    "stage1_score": round(scores[lr], 4) if lr in scores else None,
                    "chosen": lr == chosen.get(arm.name),
                }
            )
    write_csv(out / "calibration.csv", calibration)

    variant = bayesian_layer(task, records, chosen)
    runs, paired = [], []
    for arm in arms:
        for (lr, seed), m in sorted(records[arm.name].items()):
            if lr == chosen.get(arm.name):
                runs.append(run_row(task, arm.name, lr, seed, m))
    write_csv(out / "runs.csv", runs)
    if variant and "gated_deltanet" in chosen:
        paired = paired_analysis(
            task,
            variant,
            {r["seed"]: r for r in runs if r["arm"] == variant},
            {r["seed"]: r for r in runs if r["arm"] == "gated_deltanet"},
        )
        paired += same_lr_rows(task, records, chosen)
    write_csv(out / "paired.csv", paired)
    summary = {"chosen_lr": chosen, "bayesian_layer": variant, "paired": paired}
    stage1 = {
        r["arm"]: (r["lr"], r["stage1_score"]) for r in calibration if r["chosen"] and r["stage1_score"] is not None
    }
    ranking = reference_ranking(task, stage1)
    if ranking is not None:
        summary["ranking_check"] = ranking
    if task.steps_pilot is not None:
        pilot = read_sweep(root / PILOT_DIR)
        learned = sum(has_learned(task, m) for m in pilot.values())
        summary["steps_pilot"] = {"runs": len(pilot), "learned": learned}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(paired, out / "paired_differences.png")
    print(json.dumps(summary, indent=1))


def plot(paired: list[dict], path: Path) -> None:
    if not paired:
        return
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = list(dict.fromkeys((r["analysis"], r["bayesian"]) for r in paired))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(paired) + 2), 3.6))
    points = list(dict.fromkeys(r["endpoint"] for r in paired))
    width = 0.8 / len(groups)
    for g, (analysis, variant) in enumerate(groups):
        rows = [r for r in paired if (r["analysis"], r["bayesian"]) == (analysis, variant)]
        xs = [points.index(r["endpoint"]) - 0.4 + width * (g + 0.5) for r in rows]
        n = "/".join(sorted({str(r["seeds"]) for r in rows}))
        ax.errorbar(
            xs,
            [r["mean_difference"] for r in rows],
            yerr=[r["half_width_95"] for r in rows],
            fmt="o",
            capsize=3,
            label=f"{variant.removeprefix('bayesian_')}: {analysis}, n={n}",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(points)), points, fontsize=8)
    ax.set_ylabel("Bayesian − GDN accuracy (test)")
    ax.set_title("paired differences per seed, mean and 95 % t-interval", fontsize=9)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- confirmation


CONFIRM_SEEDS = tuple(range(20, 40))  # fresh seeds: the first study's 0–19 suggested the hypothesis
CONFIRM_LABEL = "confirm"


def committed_stage1_scores(first_study: Path, name: str) -> dict[float, float]:
    """lr → stage-1 score of arm ``name`` as the first study's committed ``calibration.csv`` records it."""
    rows = read_calibration(first_study / "calibration.csv")
    return {r["lr"]: r["stage1_score"] for r in rows if r["arm"] == name and r["stage1_score"] is not None}


def stage1_scores(root: Path, name: str, first_study: Path | None = None) -> dict[float, float]:
    """lr → stage-1 score (``choose_lr``'s) of arm ``name``: from its stage-1 runs under ``root``, over the scores
    the committed ``first_study`` records (when given; a run under ``root`` wins)."""
    scores = committed_stage1_scores(first_study, name) if first_study is not None else {}
    records = all_records(root, ARM_BY_NAME[name], stage1_only=True)
    if records:
        scores |= choose_lr(records, STAGE1_SEEDS)[1]
    if not scores:
        raise SystemExit(f"{name}: no stage-1 runs under {root}" + (f" nor in {first_study}" if first_study else ""))
    return scores


def common_lr(
    task: Task,
    root: Path,
    arms: tuple[str, str],
    workers: int = 1,
    extra: tuple[str, ...] = (),
    train: bool = True,
    first_study: Path | None = None,
) -> tuple[float, dict[float, float]]:
    """The confirmation's common learning rate, on stage-1 validation data only: among the lrs both ``arms`` have
    (seeds 0–2 of their stage-1 sweeps), the one with the highest mean over the two arms of their stage-1 scores
    (ties: the smaller lr). On an edge of that common grid, the nearest lr beyond it that one arm has is added —
    the other arm trains it (seeds 0–2, a stage-1 sweep ``lr<value>``), at most twice — unless it cannot win: its
    joint score is at most (the score the arm has + 1) / 2. ``train=False``: never train (a missing run is an error).
    ``first_study``: the first study's committed results, whose stage-1 scores stand in for runs ``root`` lacks.

    Returns:
        ``(lr, {lr: joint score})``.
    """
    for _ in range(3):
        scores = [stage1_scores(root, a, first_study) for a in arms]
        joint = {lr: (scores[0][lr] + scores[1][lr]) / 2 for lr in sorted(set(scores[0]) & set(scores[1]))}
        best = max(joint, key=lambda lr: (joint[lr], -lr))
        common = sorted(joint)
        beyond = []
        if best in (common[0], common[-1]):
            side = [lr for arm_scores in scores for lr in arm_scores if (lr < best if best == common[0] else lr > best)]
            if side:
                nearest = max(side) if best == common[0] else min(side)
                has = [i for i, arm_scores in enumerate(scores) if nearest in arm_scores]
                if len(has) == 1 and (scores[has[0]][nearest] + 1) / 2 > joint[best]:
                    beyond = [(arms[1 - has[0]], nearest)]
        if not beyond:
            return best, joint
        name, lr = beyond[0]
        if not train:
            raise SystemExit(f"the common lr needs {name} at lr {lr:g} (seeds 0-2) first: run `confirm`")
        run_sweep(task, root, ARM_BY_NAME[name], f"lr{lr:g}", [lr], list(STAGE1_SEEDS), workers, extra)
    raise SystemExit("the common lr is still on the grid's edge after two extensions")


def confirm_arms(task: Task, root: Path, first_study: Path | None = None) -> tuple[str, str]:
    """Gated DeltaNet and the Bayesian Layer the first study chose (plan item 3, stage 1 only): from its stage-1
    runs under ``root``, or as its committed ``summary.json`` records it when ``first_study`` is given."""
    if first_study is not None:
        path = first_study / "summary.json"
        try:
            variant = json.loads(path.read_text())["bayesian_layer"]
        except (OSError, ValueError, KeyError) as error:
            raise SystemExit(f"{path}: no readable bayesian_layer ({error})") from error
        if variant not in BAYESIAN:
            raise SystemExit(f"{path}: bayesian_layer is {variant!r}, not one of {BAYESIAN}")
        return "gated_deltanet", variant
    records, chosen = {}, {}
    for name in ("gated_deltanet", *BAYESIAN):
        records[name] = all_records(root, ARM_BY_NAME[name], stage1_only=True)
        chosen[name] = choose_lr(records[name], STAGE1_SEEDS)[0]
    variant = bayesian_layer(task, records, chosen)
    if variant is None:
        raise SystemExit("the first study has not chosen its Bayesian Layer yet (stage 1 unfinished)")
    return "gated_deltanet", variant


def confirm(args: argparse.Namespace) -> None:
    """The confirmation study (results/recall_confirm/README.md): both arms at the common lr, seeds 20–39."""
    task, root = TASKS[args.task], Path(args.root).expanduser()
    first = Path(args.first_study) if args.first_study else None
    extra = recorded_steps(task, first) if first is not None else choose_steps(task, root, args.workers)
    arms = confirm_arms(task, root, first)
    lr, joint = common_lr(task, root, arms, args.workers, extra, first_study=first)
    print(f"   common lr {lr:g} (joint stage-1 scores {json.dumps({f'{k:g}': round(v, 4) for k, v in joint.items()})})")
    with Sweeps(args.workers) as sweeps:
        sweeps.wait(
            [
                sweeps.submit(
                    run_sweep, task, root, ARM_BY_NAME[name], CONFIRM_LABEL, [lr], list(CONFIRM_SEEDS), 1, extra
                )
                for name in arms
            ]
        )
    print("done; python scripts/paired_study.py confirm-report ... --out ...", flush=True)


def confirm_report(args: argparse.Namespace) -> None:
    """``runs.csv``, ``paired.csv`` (the confirmation's paired differences: all seeds, both learned; partial until
    all 20 are in), ``summary.json`` and the plot, in ``--out``."""
    task, root, out = TASKS[args.task], Path(args.root).expanduser(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = Path(args.first_study) if args.first_study else None
    gdn, variant = confirm_arms(task, root, first)
    lr, joint = common_lr(task, root, (gdn, variant), train=False, first_study=first)
    rows = {
        name: {
            s: run_row(task, name, rate, s, m)
            for (rate, s), m in read_sweep(sweep_dir(root, ARM_BY_NAME[name], CONFIRM_LABEL)).items()
            if rate == lr and s in CONFIRM_SEEDS
        }
        for name in (gdn, variant)
    }
    write_csv(out / "runs.csv", [r for name in (gdn, variant) for _, r in sorted(rows[name].items())])
    seeds = sorted(set(rows[gdn]) & set(rows[variant]))
    final = len(seeds) == len(CONFIRM_SEEDS)
    both = [s for s in seeds if rows[gdn][s]["learned"] and rows[variant][s]["learned"]]
    label = f"confirmation, common lr {lr:g}"
    paired = difference_rows(task, variant, rows[variant], rows[gdn], label, seeds, final)
    paired += difference_rows(task, variant, rows[variant], rows[gdn], f"{label}, both learned", both, final)
    write_csv(out / "paired.csv", paired)
    learned = {name: sum(r["learned"] for r in rows[name].values()) for name in (gdn, variant)}
    summary = {
        "common_lr": lr,
        "joint_stage1_scores": {f"{k:g}": round(v, 4) for k, v in joint.items()},
        "bayesian_layer": variant,
        "seeds": seeds,
        "learned": learned,
        "paired": paired,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(paired, out / "paired_differences.png")
    print(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, *options: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        if "no task" not in options:
            sub.add_argument("task", choices=sorted(TASKS))
        sub.add_argument("--root", required=True, help="the study's runs (e.g. ~/.cache/probseq/experiments/…)")
        if "out" in options:
            sub.add_argument("--out", required=True)
        if "workers" in options:
            sub.add_argument("--workers", type=int, default=2)
        return sub

    command("run", "train every stage (resumable)", "workers")
    command("report", "tables and plot from what has finished", "out")
    first_study = "the study's committed results (its summary.json and calibration.csv), e.g. results/mqar_paired"
    command("rank", "only the ranking arms' stage 1 (resumable)", "workers").add_argument(
        "--first-study", required=True, help=first_study
    )
    command("rank-report", "the ranking check: the ranking arms beside the committed calibration", "out")
    command(
        "extend",
        "seeds 10-19 (10 to --seeds - 1) of GDN and the Bayesian Layer at the committed choices (resumable)",
        "workers",
    )
    command("extend-report", "the 20-seed (--seeds) analysis: committed seeds 0-9 and the extension's", "out")
    for name in ("extend", "extend-report"):
        commands.choices[name].add_argument("--first-study", required=True, help=first_study)
        commands.choices[name].add_argument(
            "--seeds", type=int, default=EXTENDED_SEEDS, help="paired seeds in all after the extension (default 20)"
        )
        commands.choices[name].add_argument(
            "--earlier",
            help="an earlier extend-report's --out (its runs.csv): its runs count as done (for a machine that lost "
            "their folders); a run trained again must reproduce its row (test accuracies within 1e-3)",
        )
    for name, help, options in (
        ("confirm", "the confirmation study at a common lr (resumable)", "workers"),
        ("confirm-report", "the confirmation's tables and plot", "out"),
    ):
        command(name, help, options).add_argument(
            "--first-study", help=f"{first_study}; for a root without the first study's runs"
        )
    for name, help in (
        ("archive", "copy every finished run's record under --root to --out (small JSON; commit them)"),
        ("restore", "copy archived records from --out back under --root, so the sweeps take them instead of training"),
    ):
        command(name, help, "out", "no task")
    args = parser.parse_args(argv)
    handlers = {
        "run": run,
        "rank": rank,
        "rank-report": rank_report,
        "extend": extend,
        "extend-report": extend_report,
        "report": report,
        "confirm": confirm,
        "confirm-report": confirm_report,
        "archive": archive,
        "restore": restore,
    }
    handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
