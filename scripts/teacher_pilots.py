"""The teacher pilots: short pretraining runs that choose a recipe for a small teacher that retrieves.

    python scripts/teacher_pilots.py plan                                          # the pilots, nothing is run
    python scripts/teacher_pilots.py time --root ~/.cache/probseq/teacher_pilots   # tokens/s of each model shape
    python scripts/teacher_pilots.py run --root ~/.cache/probseq/teacher_pilots    # time (if not done), then pilots
    python scripts/teacher_pilots.py report --root ~/.cache/probseq/teacher_pilots --out results/ruler/teacher_pilots
    python scripts/teacher_pilots.py archive --root ~/.cache/probseq/teacher_pilots   # at every stop; commit them
    python scripts/teacher_pilots.py restore --root ~/.cache/probseq/teacher_pilots   # on a machine without them

``run`` times every model shape with a few optimizer steps (``ROOT/timing.json``, once), then trains the pilots
one after another, each ``probseq pretrain --preset small --out ROOT/<pilot> --set …`` in its own process (log:
``ROOT/<pilot>.log``), each resumable; rerun the same command after an interruption (a pilot with a
``train_log.json`` is done and skipped). ``report`` reads what has finished and writes ``pilots.csv``,
``curves.png``, ``curves/<pilot>.csv`` and the results table of ``README.md`` in ``--out``. Nothing here looks at
RULER: pilots are compared on the retrieval probes (:mod:`probseq.ruler.probes`), a validation set of our own.

The plan (fixed before the runs; ``results/ruler/teacher_pilots/README.md`` states it in words; amended before any
pilot ran, after a review found retrieval documents cut across training blocks — see that README):

1. **Budget.** Every pilot is sized for ``--minutes`` (default 30) of wall-clock time on 2 threads: its token
   budget (and so its cosine schedule) is its shape's measured tokens/s × ``minutes − 2`` × 0.92 (the rest: six
   periodic evaluations and warm-up); preparing the data before and the final evaluation and export after take the
   remaining ≈ 2 minutes. **The budget is the tokens** (amended before any pilot ran): ``ROOT/timing.json`` is
   measured once, at 2 threads, archived with the records and restored on another machine, so every pilot trains
   its planned tokens whatever host runs it; ``max_minutes = 2 × (minutes − 2)`` is only a safety stop, and a pilot
   it stops before 95 % of its steps is out of the comparison (``cut_short``). A finished pilot counts only if it
   ran the settings the plan gives it (``check_planned``). Time it on an otherwise idle machine: timing refuses
   (and each pilot warns) when the 1-minute load average is above 1, unless ``--ignore-load``.
2. **Round 1 — retrieval share.** ``baseline`` (the ``small`` preset: the corpus as built, ≈ 18 % retrieval
   tokens, documents running across blocks), ``share50`` and ``share80`` (``retrieval_share`` 0.5 and 0.8: every
   retrieval document whole inside one 512-token block).
3. **Round 2 — on the round-1 winner**, fixed once every round-1 pilot has finished (``ROOT/round1_winner.json``):
   ``vocab2k`` (``vocab_size`` 2048), ``narrow_deep`` (hidden 192, 6 layers, 2 heads × 96), ``wide_shallow``
   (hidden 384, 2 layers, 3 heads × 128), ``curriculum`` (short documents first: ``retrieval_curriculum``, 4 stages
   of at most 128, 256, 384 and 512 tokens; at a share of at least 0.5).
4. **Evaluation.** Every pilot evaluates its learning curve every ≈ 1/6 of its steps (32 samples per probe and
   length, lengths 256, 512, 1024) and once at the end with 100 samples: greedy exact match of the 7-digit value
   and its log-likelihood against a uniform guess (``gain``, nats), per probe (``single``, ``multikey``).
5. **Selection rule.** A pilot's *score* is the mean over the two probes of its final exact match at 512 tokens
   (the training context); its *gain* the mean of their answer gains at 512. The best pilot has the highest
   score; pilots within 0.05 of it (differences rounded to 1e-9: exactly 0.05 is within) are told apart by gain
   (then by the plan's order). A pilot that failed
   (``ROOT/<pilot>.failed.json``; not retried unless ``--retry-failed``) or has no final evaluation is out; round 2
   does not start while a round-1 pilot has failed, unless ``--accept-failed``.
6. **The ≤ 6 h teacher.** The round-1 winner's share, plus every round-2 change whose pilot beats the round-1
   winner — ``curriculum``: and ``share50`` if the winner's share is below 0.5 — by more than 0.05 exact match, or
   within 0.05 by more than 0.5 nats of gain (of ``narrow_deep`` / ``wide_shallow`` the better one only), trained
   for ``0.9 × 6 h ×`` its measured tokens/s with ``max_minutes=360``; ``report`` prints the command. The
   combination itself is not piloted: the teacher run's own curve and RULER are its test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from probseq.files import atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
FILL = 0.92  # of the training minutes spent on optimizer steps (the rest: six evaluations ≈ 1 min, first-step warm-up)
CLOSE = 0.05  # exact-match scores closer than this are told apart by the answer gain
SAFETY_STOP = 2  # × the planned training minutes: the budget is tokens, the clock only a safety stop
COMPLETE = 0.95  # of its planned steps: a pilot stopped by the safety stop before this is out of the comparison
TRAIN_LENGTH = 512
TEACHER_HOURS = 6
PROBE_SETS = (
    "probe_samples=32",
    "probe_final_samples=100",
    "probe_lengths=[256,512,1024]",
)
RUN_SETS = (f"num_threads={THREADS}", "progress=false", "save_steps=50", "logging_steps=10")


@dataclass(frozen=True)
class Pilot:
    name: str
    round: int
    sets: tuple[str, ...]  # --set overrides on top of the small preset (round 2: on top of the round-1 winner's)
    what: str
    haystacks: bool = False  # shapes generated documents: needs retrieval_share > 0 (at least 0.5 is used)


PILOTS = (
    Pilot("baseline", 1, (), "the small preset: the corpus as built (≈ 18 % retrieval tokens)"),
    Pilot("share50", 1, ("retrieval_share=0.5",), "half the training tokens retrieval documents"),
    Pilot("share80", 1, ("retrieval_share=0.8",), "80 % retrieval documents"),
    Pilot("vocab2k", 2, ("vocab_size=2048",), "a 2,048-entry tokenizer (a 4× smaller embedding and softmax)"),
    Pilot(
        "narrow_deep",
        2,
        ("hidden_size=192", "num_hidden_layers=6", "num_heads=2", "head_dim=96"),
        "hidden 192, 6 layers, 2 heads × 96",
    ),
    Pilot(
        "wide_shallow",
        2,
        ("hidden_size=384", "num_hidden_layers=2", "num_heads=3", "head_dim=128"),
        "hidden 384, 2 layers, 3 heads × 128",
    ),
    Pilot(
        "curriculum",
        2,
        ("retrieval_curriculum=true", "retrieval_stages=4"),
        "short documents first: 4 stages of at most 128, 256, 384, 512 tokens",
        True,
    ),
)
EXCLUSIVE = (("narrow_deep", "wide_shallow"),)
GAIN_MARGIN = 0.5  # nats: a round-2 change within CLOSE on exact match enters the teacher only this far ahead on gain
HAYSTACK_REFERENCE = "share50"  # what a haystack pilot is compared with when the round-1 winner's share is below 0.5
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_heads", "head_dim", "vocab_size")


# ------------------------------------------------------------------------------------------------ configs


def merge(*groups: tuple[str, ...]) -> list[str]:
    """``key=value`` overrides, later groups winning, in first-seen key order."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key, value = item.split("=", 1)
            merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def base_sets(winner: str | None) -> tuple[str, ...]:
    """Round 2's base: the round-1 winner's overrides."""
    return next(p.sets for p in PILOTS if p.name == winner) if winner else ()


def pilot_sets(pilot: Pilot, winner: str | None) -> list[str]:
    """The pilot's model and data overrides (no budget, no run settings)."""
    if pilot.round == 1:
        return list(pilot.sets)
    sets = merge(base_sets(winner), pilot.sets)
    if pilot.haystacks:
        share = next((float(s.split("=")[1]) for s in sets if s.startswith("retrieval_share=")), 0.0)
        sets = merge(tuple(sets), (f"retrieval_share={max(share, 0.5)}",))
    return sets


def shape(sets: list[str]) -> dict:
    """The model shape of the small preset with ``sets`` (what its speed depends on)."""
    from probseq.train.pretrain import pretrain_config

    config = pretrain_config("small", sets)
    return {k: getattr(config, k) for k in SHAPE_KEYS}


def shape_key(sets: list[str]) -> str:
    return json.dumps(shape(sets), sort_keys=True)


def budget(sets: list[str], rates: dict, minutes: float) -> tuple[list[str], dict]:
    """The budget overrides of a pilot: ``tokens`` (its shape's tokens/s × training minutes × FILL, whole steps),
    ``max_minutes``, ``probe_every`` (≈ 6 evaluations)."""
    from probseq.train.pretrain import pretrain_config

    config = pretrain_config("small", sets)
    per_step = config.tokens_per_step()
    rate = rates.get(shape_key(sets))
    if rate is None:
        raise SystemExit(f"no timing for the shape {shape(sets)}; run `time` first")
    train_minutes = minutes - 2
    steps = max(1, int(rate * train_minutes * 60 * FILL / per_step))
    every = max(10, round(steps / 6 / 10) * 10)
    stop = SAFETY_STOP * train_minutes
    info = {"tokens_per_second": rate, "steps": steps, "tokens": steps * per_step, "max_minutes": stop}
    return [f"tokens={steps * per_step}", f"max_minutes={stop}", f"probe_every={every}"], info


# ------------------------------------------------------------------------------------------------ timing


class _Vocabulary:
    """What :func:`probseq.train.pretrain.model_config` reads of a tokenizer, for a model of ``size`` entries."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def host() -> str:
    """The CPU model and core count, as the timing records them."""
    model = platform.processor() or "unknown CPU"
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model} × {os.cpu_count()}"


def measure(sets: list[str], threads: int, steps: int, micro_batches: int | None = None) -> dict:
    """Seconds per optimizer step of the small preset with ``sets`` on random tokens (AdamW, ``threads``
    threads, one warm-up step first); ``micro_batches`` (default: the preset's accumulation) per step."""
    import torch

    from probseq.cpu import flush_subnormals
    from probseq.models import ProbSeqForCausalLM
    from probseq.train.pretrain import model_config, pretrain_config

    config = pretrain_config("small", sets)
    micro = micro_batches or config.gradient_accumulation_steps
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ProbSeqForCausalLM(model_config(config, _Vocabulary(config.vocab_size)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, config.vocab_size, (config.batch_size, config.seq_len))
    times = []
    with flush_subnormals():
        for step in range(steps + 1):
            started = time.perf_counter()
            for _ in range(micro):
                (model(input_ids=ids, labels=ids).loss / micro).backward()
            optimizer.step()
            optimizer.zero_grad()
            if step:  # the first step warms up
                times.append(time.perf_counter() - started)
    seconds = sum(times) / len(times)
    tokens = config.batch_size * config.seq_len * micro
    return {
        "shape": shape(sets),
        "host": host(),
        "threads": threads,
        "tokens_per_step": tokens,
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def all_shapes() -> dict[str, list[str]]:
    """Every distinct model shape of the plan (round 2 on any winner has the same shapes)."""
    shapes = {}
    for pilot in PILOTS:
        sets = pilot_sets(pilot, "baseline")
        shapes.setdefault(shape_key(sets), sets)
    return shapes


BUSY_LOAD = 1.0  # a 1-minute load average above this: another job shares the cores


def check_idle(args: argparse.Namespace, what: str) -> None:
    """The budgets come from a timing on an idle machine and assume one: refuse to time (warn before a pilot) when
    the load average says another job is running, unless ``--ignore-load``."""
    if getattr(args, "ignore_load", False):
        return
    load = os.getloadavg()[0]
    for _ in range(0 if what == "timing" else 12):  # after a pilot the 1-minute average needs a minute to fall
        if load <= BUSY_LOAD:
            return
        time.sleep(10)
        load = os.getloadavg()[0]
    if load <= BUSY_LOAD:
        return
    message = (
        f"the machine is busy (1-minute load average {load:.1f} > {BUSY_LOAD}): {what} assumes an idle machine; "
        "stop the other job first, or pass --ignore-load"
    )
    if what == "timing":
        raise SystemExit(message)
    print(f"   warning: {message}", flush=True)


def timing(args: argparse.Namespace) -> dict:
    """Measure (or read ``ROOT/timing.json``) tokens/s of every shape; returns ``{shape key: tokens/s}``."""
    root = Path(args.root).expanduser()
    path = root / "timing.json"
    if path.exists() and not getattr(args, "again", False):
        rows = json.loads(path.read_text())
        wrong = sorted({r.get("threads") for r in rows} - {THREADS}, key=str)
        if wrong:
            raise SystemExit(
                f"{path} was measured with {wrong} thread(s); the pilots run on {THREADS}: "
                "rerun `time --again` on an idle machine (before any pilot has run)"
            )
        hosts = {r.get("host") for r in rows}
        if hosts != {host()}:
            print(
                f"   note: {path} was measured on {', '.join(map(str, sorted(hosts, key=str)))}, this is {host()}: "
                "the budgets stay the plan's (tokens); this host may take longer per pilot",
                flush=True,
            )
    else:
        check_idle(args, "timing")
        rows = []
        for sets in all_shapes().values():
            row = measure(sets, args.threads, args.steps, args.micro_batches)
            print(
                f"   {json.dumps(row['shape'])}: {row['seconds_per_step']:.2f} s/step, "
                f"{row['tokens_per_second']:,.0f} tokens/s, {row['parameters']:,} parameters",
                flush=True,
            )
            rows.append(row)
        if not args.micro_batches:  # a partial measurement is not a pilot budget
            root.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1) + "\n")
    return {json.dumps(r["shape"], sort_keys=True): r["tokens_per_second"] for r in rows}


# ------------------------------------------------------------------------------------------------ run


def read_log(root: Path, name: str) -> dict | None:
    path = root / name / "train_log.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_failure(root: Path, name: str) -> dict | None:
    """The failure marker of a pilot whose run ended with an error (a divergence among them),
    ``ROOT/<name>.failed.json``; ``run`` does not retry it unless asked (``--retry-failed``)."""
    path = root / f"{name}.failed.json"
    return json.loads(path.read_text()) if path.exists() else None


def score(log: dict | None) -> tuple[float, float] | None:
    """(mean exact match, mean answer gain) over the probes at the training length, from the final evaluation;
    ``None`` when there is none."""
    if cut_short(log):
        return None
    probes = (log or {}).get("probes") or {}
    units = [probes.get(p, {}).get(str(TRAIN_LENGTH)) for p in ("single", "multikey")]
    if not all(units) or any(u.get("gain") is None for u in units):
        return None
    return sum(u["exact"] for u in units) / 2, sum(u["gain"] for u in units) / 2


def cut_short(log: dict | None) -> bool:
    """The safety stop ended the pilot before ``COMPLETE`` of its planned steps: its learning rate had not decayed
    (and a curriculum had not reached its long documents), so its score is not comparable — out of the selection."""
    log = log or {}
    return bool(log.get("out_of_time")) and log.get("steps", 0) < COMPLETE * log.get("max_steps", 0)


def _apart(a: float, b: float) -> float:
    """``a − b`` rounded to 1e-9: scores move in steps of 1/200, so a difference of exactly CLOSE must compare as
    CLOSE, not as its float rounding."""
    return round(a - b, 9)


def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Plan item 6: ``a`` is better than ``b`` (exact match by more than CLOSE, or within CLOSE and a gain more than
    GAIN_MARGIN higher: a change enters the teacher only when its pilot is clearly ahead)."""
    if abs(_apart(a[0], b[0])) > CLOSE:
        return a[0] > b[0]
    return _apart(a[1], b[1]) > GAIN_MARGIN


def best(names: list[str], scores: dict[str, tuple[float, float] | None]) -> str | None:
    """Plan item 5: the highest score; within CLOSE of it, the highest gain; then the plan's order."""
    scored = [n for n in names if scores.get(n) is not None]
    if not scored:
        return None
    top = max(scores[n][0] for n in scored)
    close = [n for n in scored if _apart(top, scores[n][0]) <= CLOSE]
    return max(close, key=lambda n: (scores[n][1], -names.index(n)))


def round1_winner(root: Path) -> str | None:
    """The round-1 winner: read from ``ROOT/round1_winner.json`` once :func:`decide_round1` wrote it (round 2 was
    built on it), else what the finished round-1 pilots give (provisional)."""
    path = root / WINNER_FILE
    if path.exists():
        return json.loads(path.read_text())["winner"]
    names = [p.name for p in PILOTS if p.round == 1]
    return best(names, {n: score(read_log(root, n)) for n in names})


WINNER_FILE = "round1_winner.json"


def decide_round1(root: Path, accept_failed: bool = False) -> str:
    """Fix the round-1 winner before round 2 starts: every round-1 pilot finished (a failed one only with
    ``accept_failed``: a failure may be the machine's, not the recipe's — rerun it with ``--retry-failed`` first),
    the winner saved."""
    path = root / WINNER_FILE
    if path.exists():
        return json.loads(path.read_text())["winner"]
    names = [p.name for p in PILOTS if p.round == 1]
    missing = [n for n in names if read_log(root, n) is None and read_failure(root, n) is None]
    if missing:
        raise SystemExit(f"round 2 waits for every round-1 pilot; not finished: {', '.join(missing)}")
    failed = [n for n in names if read_log(root, n) is None]
    if failed and not accept_failed:
        raise SystemExit(
            f"round-1 pilots failed: {', '.join(failed)} (see ROOT/<pilot>.log); rerun them with --retry-failed, or "
            "pass --accept-failed to choose the winner without them"
        )
    scores = {n: score(read_log(root, n)) for n in names}
    winner = best(names, scores)
    if winner is None:
        raise SystemExit("no round-1 pilot has a final evaluation (all failed); round 2 has nothing to build on")
    atomic_write_json(path, {"winner": winner, "scores": scores})
    return winner


def reference(pilot: Pilot, winner: str) -> str:
    """What a round-2 pilot is compared with: the round-1 winner, or — for a haystack pilot, which runs at a share
    of at least 0.5 — ``share50`` when the winner's share is lower (so the comparison changes one thing)."""
    if not pilot.haystacks:
        return winner
    share = next((float(s.split("=")[1]) for s in base_sets(winner) if s.startswith("retrieval_share=")), 0.0)
    return winner if share >= 0.5 else HAYSTACK_REFERENCE


def command(root: Path, pilot: Pilot, sets: list[str]) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from probseq_cli import main; sys.exit(main())",
        "pretrain",
        "--preset",
        "small",
        "--out",
        str(root / pilot.name),
        "--set",
        *sets,
    ]


def planned(rates: dict, minutes: float, winner: str | None, pilot: Pilot) -> tuple[list[str], dict]:
    """The pilot's ``--set`` overrides: its model and data, its budget, the probes, the run settings."""
    sets = pilot_sets(pilot, winner)
    extra, info = budget(sets, rates, minutes)
    return merge(tuple(sets), tuple(extra), PROBE_SETS, RUN_SETS), info


def check_planned(pilot: Pilot, log: dict, sets: list[str]) -> None:
    """A finished pilot counts only if it ran what the plan asks of it now: the same settings for every field its
    ``--set`` overrides name (model, data, tokens, probes); else it is another plan's run — refuse to count it."""
    from probseq.train.pretrain import pretrain_config

    planned_config = json.loads(json.dumps(dataclasses.asdict(pretrain_config("small", sets))))
    ran = log.get("config") or {}
    keys = [s.split("=", 1)[0] for s in sets if s.split("=", 1)[0] not in ("max_minutes", "progress", "num_threads")]
    differ = [k for k in keys if ran.get(k) != planned_config.get(k)]
    if differ:
        raise SystemExit(
            f"{pilot.name} finished with other settings than the plan gives it now ({', '.join(differ)}: "
            f"{[ran.get(k) for k in differ]} vs {[planned_config.get(k) for k in differ]}); move its folder away to "
            "run it again"
        )


def run(args: argparse.Namespace) -> None:
    root = Path(args.root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    rates = timing(args)
    winner = None
    for pilot in PILOTS:
        if args.only and pilot.name not in args.only:
            continue
        if pilot.round == 2 and winner is None:
            winner = decide_round1(root, args.accept_failed)
            print(f"== round 1 winner: {winner}", flush=True)
        done = read_log(root, pilot.name)
        if done is not None:
            check_planned(pilot, done, planned(rates, args.minutes, winner, pilot)[0])
            print(
                f"== {pilot.name}: done"
                + (" (cut short by the safety stop: out of the comparison)" if cut_short(done) else ""),
                flush=True,
            )
            continue
        failure = read_failure(root, pilot.name)
        if failure is not None and not args.retry_failed:
            print(f"== {pilot.name}: failed earlier (exit {failure['exit']}); --retry-failed runs it again", flush=True)
            continue
        check_idle(args, f"the pilot {pilot.name} (its budget)")
        sets, info = planned(rates, args.minutes, winner, pilot)
        print(
            f"== {pilot.name}: {info['steps']} steps, {info['tokens']:,} tokens "
            f"(≈ {info['tokens_per_second']:,.0f} tokens/s), ≤ {info['max_minutes']} min of training; {' '.join(sets)}",
            flush=True,
        )
        with open(root / f"{pilot.name}.log", "a") as log:
            code = subprocess.call(command(root, pilot, sets), stdout=log, stderr=subprocess.STDOUT)
        if code:
            atomic_write_json(root / f"{pilot.name}.failed.json", {"exit": code, "at": time.strftime("%Y-%m-%d %H:%M")})
            print(f"   {pilot.name} failed (exit {code}); see {root / pilot.name}.log", flush=True)
        else:
            (root / f"{pilot.name}.failed.json").unlink(missing_ok=True)
    print(f"done; python scripts/teacher_pilots.py report --root {args.root} --out results/ruler/teacher_pilots")


def plan(args: argparse.Namespace) -> None:
    rates = None
    path = Path(args.root).expanduser() / "timing.json" if args.root else None
    if path is not None and path.exists():
        rates = {json.dumps(r["shape"], sort_keys=True): r["tokens_per_second"] for r in json.loads(path.read_text())}
    for pilot in PILOTS:
        base = "" if pilot.round == 1 else "round-1 winner + "
        shown = " ".join(pilot.sets) or "(the small preset)"
        line = f"{pilot.name:15s} round {pilot.round}: {base}{shown} — {pilot.what}"
        if rates is not None:  # the budget depends on the model shape only, not on the round-1 winner
            info = budget(pilot_sets(pilot, "baseline"), rates, args.minutes)[1]
            line += f"; {info['steps']} steps, {info['tokens']:,} tokens at {info['tokens_per_second']:,.0f} tokens/s"
        print(line)


# ------------------------------------------------------------------------------------------------ report


def summary_row(pilot: Pilot, log: dict) -> dict:
    config = log["config"]
    row = {
        "pilot": pilot.name,
        "round": pilot.round,
        "changes": " ".join(
            f"{k}={config[k]}"
            for k in (*SHAPE_KEYS, "retrieval_share", "retrieval_scale", "retrieval_curriculum")
            if k in config and config[k] != PILOT_DEFAULTS.get(k)
        ),
        "parameters": log["num_parameters"],
        "tokens": log["tokens"],
        "steps": log["steps"],
        "max_steps": log.get("max_steps"),
        "out_of_time": log.get("out_of_time"),
        "cut_short": cut_short(log),
        "train_minutes": round(log["train_seconds"] / 60, 1),
        "tokens_per_second": round(log["tokens"] / log["train_seconds"]) if log["train_seconds"] else None,
        "valid_loss": log["valid_loss"],
    }
    for probe, by_length in (log.get("probes") or {}).items():
        for length, unit in by_length.items():
            row[f"{probe}@{length}.exact"] = round(unit["exact"], 3)
            row[f"{probe}@{length}.exact_ci"] = f"[{unit['exact_low']:.2f}, {unit['exact_high']:.2f}]"
            row[f"{probe}@{length}.gain"] = round(unit["gain"], 2)
            row[f"{probe}@{length}.gain_ci"] = f"[{unit['gain_low']:.2f}, {unit['gain_high']:.2f}]"
    result = score(log)
    row["score"], row["gain"] = (round(result[0], 3), round(result[1], 2)) if result else (None, None)
    return row


PILOT_DEFAULTS = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_heads": 2,
    "head_dim": 128,
    "vocab_size": 8192,
    "retrieval_share": 0.0,
    "retrieval_scale": 1.0,
    "retrieval_curriculum": False,
}


def teacher_recipe(root: Path, logs: dict) -> tuple[list[str], list[str]] | None:
    """Plan item 6: the overrides of the ≤ 6 h teacher and the pilots they come from (``None`` before round 1)."""
    winner = round1_winner(root)
    if winner is None:
        return None
    scores = {n: score(log) for n, log in logs.items()}
    sets, used = list(base_sets(winner)), [winner]
    round2 = [p for p in PILOTS if p.round == 2 and scores.get(p.name) is not None]
    winners = [  # better than its one-change reference and than the winner (a share that lost must not come back)
        p
        for p in round2
        if all(scores.get(r) is not None and beats(scores[p.name], scores[r]) for r in {reference(p, winner), winner})
    ]
    for group in EXCLUSIVE:
        members = [p for p in winners if p.name in group]
        if len(members) > 1:
            keep = best([p.name for p in members], scores)
            winners = [p for p in winners if p.name not in group or p.name == keep]
    for pilot in winners:
        sets = merge(tuple(sets), tuple(pilot_sets(pilot, winner)))
        used.append(pilot.name)
    return sets, used


def plot(root: Path, logs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probseq.train.probe_eval import read_curve

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name in logs:
        rows = read_curve(root / name)
        if not rows:
            continue
        tokens = [r["tokens"] / 1e6 for r in rows]
        line = axes[0].plot(tokens, [r["valid_loss"] for r in rows], marker=".", label=name)[0]
        for ax, field in ((axes[1], "exact"), (axes[2], "gain")):
            for probe, style in (("single", "-"), ("multikey", "--")):
                values = [((r["probes"].get(probe) or {}).get(str(TRAIN_LENGTH)) or {}).get(field) for r in rows]
                ax.plot(tokens, values, style, marker=".", color=line.get_color())
    axes[0].set_ylabel("valid loss (nats/token; vocabularies differ)")
    axes[1].set_ylabel(f"exact match at {TRAIN_LENGTH} (— single, -- multikey)")
    axes[2].set_ylabel(f"answer log-lik − uniform at {TRAIN_LENGTH} (nats)")
    axes[2].axhline(0, color="grey", lw=0.8)
    if axes[2].get_ylim()[0] < -5:  # the untrained model's −40 nats would flatten every later point into the zero line
        axes[2].set_ylim(bottom=-5)
        axes[2].set_title("(gains below −5 nats, e.g. before training, off scale)", fontsize=7)
    for ax in axes:
        ax.set_xlabel("training tokens (M)")
    axes[0].legend(fontsize=7)
    fig.suptitle("teacher pilots: learning curves on the retrieval probes (not RULER)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def teacher_command(sets: list[str], used: list[str], logs: dict) -> list[str]:
    """Plan item 6 as Markdown lines: the teacher's command, its tokens from the measured tokens/s of a pilot of the
    same model shape (training time with its evaluations: a conservative rate)."""
    from probseq.train.pretrain import pretrain_config

    key = shape_key(sets)
    rates = [
        log["tokens"] / log["train_seconds"]
        for name, log in logs.items()
        if log.get("train_seconds") and shape_key(pilot_sets(next(p for p in PILOTS if p.name == name), used[0])) == key
    ]
    per_step = pretrain_config("small", sets).tokens_per_step()
    if rates:
        steps = int(0.9 * TEACHER_HOURS * 3600 * min(rates) / per_step)
        budget_sets = (f"tokens={steps * per_step}", f"probe_every={max(50, round(steps / 20 / 50) * 50)}")
        note = f"{steps:,} steps at {min(rates):,.0f} tokens/s (measured by its pilots)"
    else:
        budget_sets, note = ("tokens=<0.9 × 6 h × tokens/s>", "probe_every=200"), "no pilot of its shape has finished"
    teacher = merge(tuple(sets), budget_sets, (f"max_minutes={TEACHER_HOURS * 60}",), PROBE_SETS, RUN_SETS)
    return [
        f"The ≤ {TEACHER_HOURS} h teacher (plan item 6; from {', '.join(used)}; {note}):",
        "",
        "    probseq pretrain --preset small --out runs/teacher_retrieval --set "
        + " ".join(shlex.quote(s) for s in teacher),
    ]


MARKER = "<!-- results: written by scripts/teacher_pilots.py report -->"


def report(args: argparse.Namespace) -> None:
    from probseq.experiments.common import write_csv

    root, out = Path(args.root).expanduser(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = {p.name: log for p in PILOTS if (log := read_log(root, p.name)) is not None}
    rows = [summary_row(p, logs[p.name]) for p in PILOTS if p.name in logs]
    write_csv(out / "pilots.csv", rows)
    (out / "curves").mkdir(exist_ok=True)
    for name in logs:
        for suffix in ("csv", "json"):
            if (root / name / f"curve.{suffix}").exists():
                shutil.copyfile(root / name / f"curve.{suffix}", out / "curves" / f"{name}.{suffix}")
    if logs:
        plot(root, logs, out / "curves.png")
    winner = round1_winner(root)
    recipe = teacher_recipe(root, logs)
    chosen = best([p.name for p in PILOTS], {n: score(log) for n, log in logs.items()})
    text = [
        f"Pilots finished: {len(logs)} of {len(PILOTS)}"
        + (" — **partial**: the choices below are provisional." if len(logs) < len(PILOTS) else "."),
        "",
        f"| pilot | round | changes | parameters | tokens | train min | tokens/s | valid loss | single@{TRAIN_LENGTH} "
        f"exact | multikey@{TRAIN_LENGTH} exact | single gain | multikey gain | score | gain |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cut = " (cut by the safety stop: out of the comparison)" if r["cut_short"] else ""
        s, m = f"single@{TRAIN_LENGTH}", f"multikey@{TRAIN_LENGTH}"
        text.append(
            f"| {r['pilot']} | {r['round']} | {r['changes'] or '—'} | {r['parameters']:,} | {r['tokens']:,}{cut} | "
            f"{r['train_minutes']} | {r['tokens_per_second'] or '—'} | "
            f"{r['valid_loss']:.3f} | {r.get(s + '.exact', '—')} {r.get(s + '.exact_ci', '')} | "
            f"{r.get(m + '.exact', '—')} {r.get(m + '.exact_ci', '')} | {r.get(s + '.gain', '—')} | "
            f"{r.get(m + '.gain', '—')} | {r['score']} | {r['gain']} |"
        )
    text += [
        "",
        f"Round-1 winner: **{winner or '—'}**; best pilot overall: **{chosen or '—'}** (plan item 5).",
    ]
    if recipe is not None:
        sets, used = recipe
        text += ["", *teacher_command(sets, used, logs)]
    readme = out / "README.md"
    head = readme.read_text().split(MARKER)[0] if readme.exists() else "# Teacher pilots\n\n"
    # the status line: the plan's own, or the one an earlier report wrote
    head = re.sub(
        r"\*\*Status: (?:plan, not yet run|\d+ of \d+ pilots run)\.\*\* (?:Everything|The plan) below",
        f"**Status: {len(logs)} of {len(PILOTS)} pilots run.** The plan below",
        head.replace(" — plan, not yet run", "", 1),
        count=1,
    )
    readme.write_text(head.rstrip("\n") + "\n\n" + MARKER + "\n\n" + "\n".join(text) + "\n")
    print("\n".join(text))


# What marks the pilots' progress, each small: the timing, the fixed round-1 winner, each pilot's failure marker, and
# each finished pilot's train_log.json (its "done") and learning curve. Not its weights: no later stage needs them.
# An unfinished pilot's curve is not a record: the pilot restarts from step 0 on a new machine.
RECORDS = ("timing.json", WINNER_FILE, "*.failed.json", "*/train_log.json", "*/curve.json", "*/curve.csv")


def _records(root: Path) -> list[Path]:
    """The files of ``RECORDS`` under ``root``; a curve only beside its pilot's ``train_log.json``."""
    paths = [path for pattern in RECORDS for path in sorted(root.glob(pattern))]
    return [p for p in paths if not p.name.startswith("curve.") or (p.parent / "train_log.json").exists()]


def archive(args: argparse.Namespace) -> None:
    """Copy the pilots' records (``RECORDS``) from ``--root`` to ``--out`` for committing: ``~/.cache`` may not
    survive to the next session's machine, and ``restore`` puts them back there, so ``run`` goes on from the next
    unfinished pilot (a pilot cut off mid-run starts over). A failure marker whose pilot has since finished is
    removed from ``--out``."""
    root, out = Path(args.root).expanduser(), Path(args.out)
    copied = 0
    for path in _records(root):
        target = out / path.relative_to(root)
        if not target.exists() or target.read_bytes() != path.read_bytes():
            atomic_write_bytes(target, path.read_bytes())
            copied += 1
    for stale in out.glob("*.failed.json"):
        if (root / stale.name.removesuffix(".failed.json") / "train_log.json").exists():
            stale.unlink()
    print(f"{copied} record(s) copied to {out}")


def restore(args: argparse.Namespace) -> None:
    """Put ``archive``'s records back under ``--root``; a file already there is kept."""
    root, out = Path(args.root).expanduser(), Path(args.out)
    restored = 0
    for path in _records(out):
        target = root / path.relative_to(out)
        if not target.exists():
            atomic_write_bytes(target, path.read_bytes())
            restored += 1
    print(f"{restored} record(s) restored under {root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan", help="print the pilots (nothing is run)")
    plan_parser.add_argument("--root", default=None, help="with its timing.json: the token budgets too")
    time_parser = commands.add_parser("time", help="tokens/s of every model shape (ROOT/timing.json)")
    run_parser = commands.add_parser("run", help="time the shapes (once), then train the pilots (resumable)")
    report_parser = commands.add_parser("report", help="tables, curves and the choice from what has finished")
    for sub in (plan_parser, time_parser, run_parser):
        sub.add_argument("--minutes", type=float, default=30.0, help="wall-clock minutes per pilot")
    for sub in (time_parser, run_parser):
        sub.add_argument("--root", required=True)
        sub.add_argument("--threads", type=int, default=THREADS, help="threads of the timing (the pilots use 2)")
        sub.add_argument("--steps", type=int, default=3, help="timed optimizer steps per shape (after a warm-up)")
        sub.add_argument("--micro-batches", type=int, default=None, help=argparse.SUPPRESS)
    time_parser.add_argument("--again", action="store_true", help="measure even if timing.json exists")
    for sub in (time_parser, run_parser):
        sub.add_argument("--ignore-load", action="store_true", help="time and run on a busy machine anyway")
    run_parser.add_argument("--only", nargs="+", default=None, choices=[p.name for p in PILOTS])
    run_parser.add_argument("--retry-failed", action="store_true", help="run the pilots that failed earlier again")
    run_parser.add_argument(
        "--accept-failed", action="store_true", help="choose the round-1 winner even if a round-1 pilot failed"
    )
    report_parser.add_argument("--root", required=True)
    report_parser.add_argument("--out", default=str(ROOT / "results/ruler/teacher_pilots"))
    for name, help in (
        ("archive", "copy the pilots' records (done markers, curves, timing) to --out for committing"),
        ("restore", "put archived records back under --root (a new machine goes on where the last one stopped)"),
    ):
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--root", required=True)
        sub.add_argument("--out", default=str(ROOT / "results/ruler/teacher_pilots/records"))
    args = parser.parse_args(argv)
    if args.command == "time":
        timing(args)
    else:
        {"plan": plan, "run": run, "report": report, "archive": archive, "restore": restore}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
