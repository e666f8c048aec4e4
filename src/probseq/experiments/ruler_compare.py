"""RULER of the distillation study's arms side by side: ``python scripts/ruler_compare.py [RESULTS] [--context N]``.

``RESULTS`` (default ``results``) holds one ``probseq ruler`` folder per arm, ``ruler/<arm>/`` (``summary.csv``,
``predictions.jsonl.gz``, ``results.json``; arms named ``teacher``, ``gdn``, ``bayes``, ``bayes_<variant>``:
:mod:`probseq.experiments.ruler_arms`) and, when present, ``distill/<arm>/train_log.json`` (``probseq pretrain`` /
``probseq distill``); ``scripts/collect_results.sh`` copies them there. ``--context``: the training context the
lengths are multiples of (default: the teacher's ``seq_len`` in ``distill/teacher/train_log.json``, else 512).
Writes to ``RESULTS/ruler/``:

- ``summary.csv`` — long format, one row per arm × task × length: ``arm, task, length, multiple`` (length /
  training context), ``samples, score, ci_low, ci_high, prompt_tokens, status``. A unit an arm could not generate
  (``skipped: <why>``, e.g. niah_multikey_3, vt and cwe at 512 tokens) or did not run (``missing: …``) has its row;
- ``paired.csv`` — per pair (each Bayesian arm − ``gdn``, each arm − ``teacher``), per task and length and per
  length for the ``niah mean`` (the niah tasks scored at that length by both arms, listed in ``tasks``): ``pairs``
  (shared prompts), ``discordant``, ``score`` and ``score_versus`` (both arms on those prompts), ``difference``,
  ``ci_low``, ``ci_high``, ``half_width``, ``verdict`` (better / worse / indistinguishable / undecided /
  uninformative), ``flag`` (at floor / at ceiling / no discordant pairs) and ``samples_needed`` (per niah task:
  the count that gives the niah mean a half-width of 5 points; on the niah mean's row, their sum) —
  :mod:`probseq.experiments.ruler_paired` defines each;
- ``comparison.md`` — the score per task and length of every arm with its 95 % interval, the mean over the tasks
  scored at every length, the paired tables, the ``--samples-per-task`` a top-up needs, and each stage's time
  (training time over all resumes, RULER's evaluation time);
- ``comparison.png`` — score vs length, one panel per task and one for the mean, one line per arm (the teacher
  dashed, in black), and the niah mean's paired difference of every Bayesian arm − ``gdn`` per length.

An arm in a pair without the predictions pairing needs is an error (exit status 2), never a missing table.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

from probseq.experiments.ruler_arms import (
    BASELINE,
    BAYES,
    TEACHER,
    arm_pairs,
    discover_arms,
    is_arm,
    is_bayesian,
    label,
    read_predictions,
)
from probseq.experiments.ruler_paired import MARGIN, Paired, flags, niah_mean, pair, samples_needed, verdict

DEFAULT_CONTEXT = 512
SUMMARY_COLUMNS = ("arm", "task", "length", "multiple", "samples", "score", "ci_low", "ci_high", "prompt_tokens")


def is_niah(task: str) -> bool:
    return task.startswith("niah_")


def multiple(length: int, context: int) -> int | float:
    ratio = length / context
    return int(ratio) if ratio.is_integer() else round(ratio, 3)


def units_of(arms: dict[str, list[dict]]) -> list[tuple[str, int]]:
    """Every ``(task, length)`` of any arm: tasks in the order first seen, lengths ascending."""
    tasks = list(dict.fromkeys(row["task"] for rows in arms.values() for row in rows))
    lengths = sorted({int(row["length"]) for rows in arms.values() for row in rows})
    present = {(row["task"], int(row["length"])) for rows in arms.values() for row in rows}
    return [(task, length) for task in tasks for length in lengths if (task, length) in present]


def long_summary(arms: dict[str, list[dict]], context: int) -> list[dict]:
    """``summary.csv``'s rows: every arm × every unit of any arm (one an arm lacks: ``missing: …``)."""
    out = []
    for arm, rows in arms.items():
        by_unit = {(row["task"], int(row["length"])): row for row in rows}
        for task, length in units_of(arms):
            row = by_unit.get((task, length))
            values = {key: row[key] for key in SUMMARY_COLUMNS[4:]} if row else dict.fromkeys(SUMMARY_COLUMNS[4:], "")
            status = row["status"] if row else "missing: not in this arm's summary.csv (not evaluated)"
            head = {"arm": arm, "task": task, "length": length, "multiple": multiple(length, context)}
            out.append({**head, **values, "status": status})
    return out


def _paired_row(arm: str, versus: str, task: str, tasks: list[str], length: int, context: int, p: Paired) -> dict:
    return {
        "arm": arm,
        "versus": versus,
        "task": task,
        "tasks": " ".join(tasks),
        "length": length,
        "multiple": multiple(length, context),
        "pairs": p.n,
        "discordant": p.discordant,
        "score": p.score,
        "score_versus": p.score_versus,
        "difference": p.difference,
        "ci_low": p.ci_low,
        "ci_high": p.ci_high,
        "half_width": p.half_width,
        "verdict": verdict(p),
        "flag": flags(p),
        "samples_needed": None,
    }


def check_same_prompts(arm: str, versus: str, key: tuple[str, int], first: dict, second: dict) -> None:
    """Paired samples must be the same prompts: their references agree (else the arms saw different samples)."""
    for index in first.keys() & second.keys():
        if first[index]["references"] != second[index]["references"]:
            raise ValueError(
                f"{arm} and {versus} were scored on different samples at {(*key, index)}: "
                f"{first[index]['references']} vs {second[index]['references']}"
            )
        shas = (first[index].get("prompt_sha"), second[index].get("prompt_sha"))
        if None not in shas and shas[0] != shas[1]:  # same references, other prompts (e.g. another tokenizer)
            raise ValueError(
                f"{arm} and {versus} were scored on different prompts at {(*key, index)} (same references, other "
                "text: their tokenizers or generators differ)"
            )


def paired_rows(arms: dict[str, list[dict]], predictions: dict[str, dict], context: int) -> list[dict]:
    """``paired.csv``'s rows for every pair of :func:`arm_pairs`: each unit scored ``ok`` by both arms (over their
    shared samples: the first ``min(n_arm, n_versus)``), then per length the niah mean with ``samples_needed``."""
    out = []
    for arm, versus in arm_pairs(arms):
        by_length: dict[int, dict[str, tuple[Paired, dict]]] = defaultdict(dict)
        for task, length in units_of(arms):
            first, second = predictions[arm].get((task, length)), predictions[versus].get((task, length))
            if not first or not second:
                continue
            check_same_prompts(arm, versus, (task, length), first, second)
            shared = sorted(first.keys() & second.keys())
            p = pair([float(first[i]["score"]) for i in shared], [float(second[i]["score"]) for i in shared])
            row = _paired_row(arm, versus, task, [task], length, context, p)
            out.append(row)
            if is_niah(task):
                by_length[length][task] = (p, row)
        for length, parts in sorted(by_length.items()):
            needed = samples_needed({task: p for task, (p, _) in parts.items()})
            for task, (_, row) in parts.items():
                row["samples_needed"] = needed[task]
            mean = niah_mean([p for p, _ in parts.values()])
            row = _paired_row(arm, versus, "niah mean", list(parts), length, context, mean)
            out.append({**row, "samples_needed": sum(needed.values())})
    return out


def score_table(arms: dict[str, list[dict]]) -> tuple[list[str], list[tuple]]:
    """Rows ``(task, length, {arm: (score, low, high) or status})``, tasks in RULER's order, then the mean over
    the tasks every arm scored at every length."""
    cells: dict[tuple[str, int], dict[str, object]] = defaultdict(dict)
    tasks: list[str] = []
    for arm, rows in arms.items():
        for row in rows:
            key = (row["task"], int(row["length"]))
            tasks += [row["task"]] if row["task"] not in tasks else []
            cells[key][arm] = (
                (float(row["score"]), float(row["ci_low"]), float(row["ci_high"]))
                if row["status"] == "ok"
                else row["status"]
            )
    lengths = sorted({length for _, length in cells})
    table = [(task, length, cells[(task, length)]) for task in tasks for length in lengths if (task, length) in cells]
    # the mean over the tasks every arm scored at every length (one task set for the whole curve)
    common = [t for t in tasks if all(isinstance(cells.get((t, n), {}).get(a), tuple) for n in lengths for a in arms)]
    if common:
        for length in lengths:
            means = {arm: sum(cells[(t, length)][arm][0] for t in common) / len(common) for arm in arms}
            table.append((f"mean of {len(common)} tasks", length, {arm: (m, None, None) for arm, m in means.items()}))
    return tasks, table


#: the plan's cap on a unit's samples after its one top-up (results/ruler/README.md, "The next study")
TOPUP_MAX = 1000


def top_up(paired: list[dict], floor: dict[str, int] | None = None, cap: int = TOPUP_MAX) -> dict[str, int]:
    """The plan's one top-up: at every length where the niah mean of ``bayes`` − ``gdn`` is ``undecided``, each niah
    task's ``samples_needed`` there (at least ``floor[task]``, at most ``cap``), as ``{"task@length": n}`` where it
    exceeds the pairs scored. ``paired``: ``paired.csv``'s rows, as :func:`paired_rows` returns them or as read
    from the file (strings). Decided lengths, other arms (a secondary ``bayes_<variant>``) and other tasks get
    nothing."""
    rows = [r for r in paired if r["arm"] == BAYES and r["versus"] == BASELINE]
    undecided = {str(r["length"]) for r in rows if r["task"] == "niah mean" and r["verdict"] == "undecided"}
    counts = {}
    for row in rows:
        if row["task"] == "niah mean" or str(row["length"]) not in undecided or row["samples_needed"] in (None, ""):
            continue
        wanted = min(cap, max(int(row["samples_needed"]), (floor or {}).get(row["task"], 0)))
        if wanted > int(row["pairs"]):
            counts[f"{row['task']}@{row['length']}"] = wanted
    return counts


def check_one_teacher(root: Path, arms) -> None:
    """Every arm comes from one teacher: the ``teacher`` each distillation arm's ``distill/<arm>/train_log.json``
    names, and the model of ``ruler/teacher/results.json``, are one folder. A results folder holding arms of two
    studies (a collect that left an earlier study's arm beside a new teacher) is refused, naming them."""
    teachers = {}
    for arm in arms:
        if arm == TEACHER:
            path = root / "ruler" / TEACHER / "results.json"
            model = json.loads(path.read_text()).get("model") if path.is_file() else None
            if isinstance(model, str):
                teachers[arm] = model.split(" (")[0]
        else:
            path = root / "distill" / arm / "train_log.json"
            teacher = json.loads(path.read_text()).get("config", {}).get("teacher") if path.is_file() else None
            if isinstance(teacher, str):
                teachers[arm] = teacher
    if len(set(teachers.values())) > 1:
        raise ValueError(
            "the arms come from different teachers — results of two studies side by side: "
            + "; ".join(f"{arm}: {teacher}" for arm, teacher in sorted(teachers.items()))
        )


def stage_times(root: Path, arms) -> list[tuple[str, float, int]]:
    """``(stage, hours, tokens)`` from the training logs of every arm folder under ``distill/``, then RULER's
    evaluation time of every arm."""
    stages = []
    distill = root / "distill"
    names = [p.name for p in distill.iterdir() if p.is_dir() and is_arm(p.name)] if distill.is_dir() else []
    for arm in [a for a in (TEACHER, *sorted(n for n in names if is_bayesian(n)), BASELINE) if a in names]:
        path = distill / arm / "train_log.json"
        if path.exists():
            log = json.loads(path.read_text())
            seconds = log.get("train_seconds") or sum(
                s.get("train_seconds", s.get("seconds", 0)) for s in log.get("stages", [])
            )
            stages.append((_stage_name(arm), seconds / 3600, int(log.get("tokens", 0))))
    for arm in arms:
        path = root / "ruler" / arm / "results.json"
        if path.exists():
            results = json.loads(path.read_text())
            stages.append((f"ruler, {arm}", results.get("seconds", 0.0) / 3600, 0))
    return stages


def _stage_name(arm: str) -> str:
    if arm == TEACHER:
        return "pretrain (GDN teacher)"
    if arm == BASELINE:
        return "distill, GDN baseline arm"
    return "distill, Bayesian arm" + ("" if arm == "bayes" else f" ({arm[len('bayes') + 1 :]})")


def _score_cell(value) -> str:
    if isinstance(value, tuple):
        score, low, high = value
        return f"{score:.1f}" + (f" [{low:.1f}, {high:.1f}]" if low is not None else "")
    return str(value)


def markdown(arms: dict[str, list[dict]], paired: list[dict], stages: list[tuple[str, float, int]]) -> str:
    """``comparison.md``: the score table, a paired table per pair, the top-up, the stage times."""
    _, table = score_table(arms)
    out = io.StringIO()
    out.write("| task | length | " + " | ".join(label(a) for a in arms) + " |\n")
    out.write("|---|---:|" + "---:|" * len(arms) + "\n")
    for task, length, cell in table:
        out.write(f"| {task} | {length} | " + " | ".join(_score_cell(cell.get(arm, "—")) for arm in arms) + " |\n")
    pairs = list(dict.fromkeys((row["arm"], row["versus"]) for row in paired))
    for arm, versus in pairs:
        out.write(
            f"\n{label(arm)} − {label(versus)}, paired over the same prompts (score points; 95 % interval; "
            f"indistinguishable: contains 0, half-width ≤ {MARGIN:g}; niah mean: over the tasks named):\n\n"
            "| task | length | difference | 95 % interval | pairs | discordant | scores | verdict | flag "
            "| samples needed |\n|---|---:|---:|---|---:|---:|---|---|---|---:|\n"
        )
        for row in (r for r in paired if (r["arm"], r["versus"]) == (arm, versus)):
            task = row["task"] if row["task"] != "niah mean" else f"niah mean ({', '.join(row['tasks'].split())})"
            needed = "" if row["samples_needed"] is None else str(row["samples_needed"])
            out.write(
                f"| {task} | {row['length']} | {row['difference']:+.1f} | [{row['ci_low']:+.1f}, "
                f"{row['ci_high']:+.1f}] | {row['pairs']} | {row['discordant']} | {row['score']:.1f} vs "
                f"{row['score_versus']:.1f} | {row['verdict']} | {row['flag']} | {needed} |\n"
            )
    needed = top_up(paired)
    if needed:
        counts = ", ".join(f"{unit}: {n}" for unit, n in needed.items())
        out.write(
            f"\nThe plan's one top-up (lengths where the niah mean of Bayesian − baseline is undecided; each niah "
            f"task to the samples a half-width of {MARGIN:g} points needs there, at most {TOPUP_MAX}): {counts} — "
            "`python scripts/distill_study.py topup` runs it (only the new samples are scored).\n"
        )
    if stages:
        out.write("\n| stage | time (h) | tokens |\n|---|---:|---:|\n")
        for name, hours, tokens in stages:  # training time over all resumes; for ruler, the evaluation time
            out.write(f"| {name} | {hours:.2f} | {tokens:,} |\n" if tokens else f"| {name} | {hours:.2f} | |\n")
    return out.getvalue()


#: Line styles: the teacher dashed in black with open squares, drawn over the others (the reference they are read
#: against, visible where they coincide), the baseline blue, the Bayesian arms in other colours.
TEACHER_STYLE = {"color": "black", "linestyle": "--", "marker": "s", "markerfacecolor": "none", "zorder": 4}
BASELINE_STYLE = {"color": "tab:blue", "linestyle": "-", "marker": "o"}
BAYES_COLOURS = ("tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def arm_style(arm: str, arms) -> dict:
    if arm == TEACHER:
        return TEACHER_STYLE
    if arm == BASELINE:
        return BASELINE_STYLE
    bayesian = [a for a in arms if is_bayesian(a)]
    return {"color": BAYES_COLOURS[bayesian.index(arm) % len(BAYES_COLOURS)], "linestyle": "-", "marker": "o"}


def figure(arms: dict[str, list[dict]], paired: list[dict]):
    """The figure of ``comparison.png`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, table = score_table(arms)
    panels = tasks + sorted({t for t, _, _ in table if t.startswith("mean")})
    differences = [r for r in paired if r["task"] == "niah mean" and r["versus"] == BASELINE]
    count = len(panels) + bool(differences)
    columns = min(4, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    ticks = sorted({n for _, n, _ in table})
    for ax, panel in zip(axes.flat, panels):
        for arm in arms:
            points = [(n, c[arm]) for t, n, c in table if t == panel and isinstance(c.get(arm), tuple)]
            if not points:
                continue
            lengths = [n for n, _ in points]
            style = arm_style(arm, arms)
            ax.plot(lengths, [v[0] for _, v in points], label=label(arm), **style)
            if all(v[1] is not None for _, v in points):
                low, high = [v[1] for _, v in points], [v[2] for _, v in points]
                ax.fill_between(lengths, low, high, alpha=0.12, color=style["color"])
        ax.set_ylim(-2, 102)
        ax.set_title(panel, fontsize=9)
        ax.set_ylabel("RULER score", fontsize=8)
    if differences:
        ax = axes.flat[len(panels)]
        ax.axhspan(-MARGIN, MARGIN, color="0.9", label=f"±{MARGIN:g}")
        ax.axhline(0, color="0.5", linewidth=0.8)
        for arm in dict.fromkeys(r["arm"] for r in differences):
            rows_ = [r for r in differences if r["arm"] == arm]
            x = [r["length"] for r in rows_]
            y = [r["difference"] for r in rows_]
            err = [[r["difference"] - r["ci_low"] for r in rows_], [r["ci_high"] - r["difference"] for r in rows_]]
            ax.errorbar(x, y, yerr=err, capsize=3, label=label(arm), **arm_style(arm, arms))
        ax.set_title(f"niah mean: arm − {BASELINE} (paired)", fontsize=9)
        ax.set_ylabel("difference (points)", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[:count]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(n) for n in ticks], fontsize=7)
        ax.set_xlabel("context length (tokens)", fontsize=8)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_context(root: Path) -> int:
    """The teacher's ``seq_len`` (``distill/teacher/train_log.json``), else :data:`DEFAULT_CONTEXT`."""
    path = root / "distill" / TEACHER / "train_log.json"
    if path.is_file():
        seq_len = json.loads(path.read_text()).get("config", {}).get("seq_len")
        if isinstance(seq_len, int) and seq_len > 0:
            return seq_len
    return DEFAULT_CONTEXT


def compare(root: Path, context: int | None = None) -> str:
    """Write ``summary.csv``, ``paired.csv``, ``comparison.md`` and ``comparison.png`` under ``root/ruler``;
    returns the Markdown. Raises ``ValueError`` when there is no arm, or an arm in a pair lacks predictions."""
    import matplotlib.pyplot as plt

    from probseq.experiments.common import write_csv
    from probseq.files import atomic_write_text, save_figure

    folder = root / "ruler"
    arms = discover_arms(folder)
    if not arms:
        raise ValueError(f"no arm under {folder} (folders teacher, gdn, bayes, bayes_<variant> with a summary.csv)")
    check_one_teacher(root, arms)
    context = context or training_context(root)
    paired_arms = {a for pair_ in arm_pairs(arms) for a in pair_}
    predictions = {arm: read_predictions(folder / arm, arms[arm]) for arm in arms if arm in paired_arms}
    paired = paired_rows(arms, predictions, context)
    write_csv(folder / "summary.csv", long_summary(arms, context))
    write_csv(folder / "paired.csv", paired)
    text = markdown(arms, paired, stage_times(root, arms))
    atomic_write_text(folder / "comparison.md", text)
    fig = figure(arms, paired)
    save_figure(fig, folder / "comparison.png")
    plt.close(fig)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RULER of the study's arms side by side (ruler/comparison.md)")
    parser.add_argument("results", nargs="?", default="results", help="the folder holding ruler/<arm>/")
    parser.add_argument("--context", type=int, default=None, help="training context (default: the teacher's)")
    args = parser.parse_args(argv)
    root = Path(args.results)
    try:
        text = compare(root, args.context)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if discover_arms(root / "ruler") else 1
    folder = root / "ruler"
    print(text + f"\nwrote {folder / 'summary.csv'}, paired.csv, comparison.md and comparison.png")
    return 0


__all__ = ["compare", "figure", "long_summary", "main", "markdown", "paired_rows", "score_table", "top_up"]
