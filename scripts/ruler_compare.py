"""RULER of the three distillation arms side by side: ``python scripts/ruler_compare.py [RESULTS]``.

``RESULTS`` (default ``results``) holds ``ruler/<arm>/summary.csv`` (``probseq ruler``, one folder per arm:
``teacher``, ``bayes``, ``gdn``) and, when present, ``distill/<arm>/train_log.json`` (``probseq pretrain`` /
``probseq distill``); ``scripts/collect_results.sh`` copies both there. Writes ``ruler/comparison.md`` (the score
per task and length for every arm with its 95 % interval, the mean over the tasks scored at every length, the
Bayesian arm minus the GDN baseline paired over the same prompts when both have ``predictions.jsonl``, and each
stage's time: training time over all resumes, evaluation time for RULER)
and ``ruler/comparison.png`` (score vs length, one panel per task and one for the mean, one line per arm).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

ARMS = {
    "teacher": "GDN teacher (pretrained)",
    "bayes": "Bayesian Layers (distilled)",
    "gdn": "GDN fine-tuned (matched-compute baseline)",
}


def read_arms(root: Path) -> dict[str, list[dict]]:
    """``arm → summary rows`` for every arm with a ``summary.csv``."""
    arms = {}
    for arm in ARMS:
        path = root / "ruler" / arm / "summary.csv"
        if path.exists():
            with path.open() as handle:
                arms[arm] = list(csv.DictReader(handle))
    return arms


def score_table(arms: dict[str, list[dict]]) -> tuple[list[str], list[tuple]]:
    """Rows ``(task, length, {arm: (score, low, high) or status})``, tasks in RULER's order, then the mean over
    the tasks every arm scored at that length."""
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


def paired_difference(
    root: Path, arm: str = "bayes", other: str = "gdn"
) -> list[tuple[str, str, float, float, float, int]]:
    """``arm − other`` on the same prompts, from both arms' ``predictions.jsonl``: rows ``(task, length, mean
    difference, 95 % low, 95 % high, pairs)`` per unit scored by both, then ``("all", "all", …)`` over every pair.

    Both arms see identical prompts (RULER's generators with one seed and one tokenizer: the student keeps its
    teacher's), so the difference is paired per sample; the interval is the normal one of the mean difference.
    A pair whose references differ means the prompts were not the same: an error, not a silent mismatch.
    """

    def read(name):
        path = root / "ruler" / name / "predictions.jsonl"
        if not path.exists():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {(r["task"], int(r["length"]), int(r["index"])): r for r in rows}

    from probseq.experiments.ruler_eval import mean_interval

    first, second = read(arm), read(other)
    if first is None or second is None:
        return []
    by_unit: dict[tuple[str, int], list[float]] = defaultdict(list)
    for key in sorted(first.keys() & second.keys()):
        if first[key]["references"] != second[key]["references"]:
            raise ValueError(
                f"{arm} and {other} were scored on different samples at {key}: "
                f"{first[key]['references']} vs {second[key]['references']}"
            )
        by_unit[key[:2]].append(float(first[key]["score"]) - float(second[key]["score"]))
    rows = [(task, str(length), *mean_interval(diffs), len(diffs)) for (task, length), diffs in by_unit.items()]
    every = [d for diffs in by_unit.values() for d in diffs]
    return rows + ([("all", "all", *mean_interval(every), len(every))] if every else [])


def stage_times(root: Path) -> list[tuple[str, float, int]]:
    """``(stage, hours of training, tokens)`` from the training logs that exist."""
    stages = []
    for arm, name in (
        ("teacher", "pretrain (GDN teacher)"),
        ("bayes", "distill, Bayesian arm"),
        ("gdn", "distill, GDN baseline arm"),
    ):
        path = root / "distill" / arm / "train_log.json"
        if path.exists():
            log = json.loads(path.read_text())
            seconds = log.get("train_seconds") or sum(
                s.get("train_seconds", s.get("seconds", 0)) for s in log.get("stages", [])
            )
            stages.append((name, seconds / 3600, int(log.get("tokens", 0))))
    for arm in ARMS:
        path = root / "ruler" / arm / "results.json"
        if path.exists():
            results = json.loads(path.read_text())
            stages.append((f"ruler, {arm}", results.get("seconds", 0.0) / 3600, 0))
    return stages


def markdown(arms: dict[str, list[dict]], root: Path) -> str:
    _, table = score_table(arms)
    out = io.StringIO()
    out.write("| task | length | " + " | ".join(ARMS[a] for a in arms) + " |\n")
    out.write("|---|---:|" + "---:|" * len(arms) + "\n")
    for task, length, cell in table:
        shown = []
        for arm in arms:
            value = cell.get(arm, "—")
            if isinstance(value, tuple):
                score, low, high = value
                shown.append(f"{score:.1f}" + (f" [{low:.1f}, {high:.1f}]" if low is not None else ""))
            else:
                shown.append(str(value))
        out.write(f"| {task} | {length} | " + " | ".join(shown) + " |\n")
    differences = paired_difference(root)
    if differences:
        out.write(
            f"\n{ARMS['bayes']} − {ARMS['gdn']}, paired over the same prompts (score points; 95 % interval):\n\n"
            "| task | length | difference | 95 % interval | pairs |\n|---|---:|---:|---|---:|\n"
        )
        for task, length, mean, low, high, count in differences:
            out.write(f"| {task} | {length} | {mean:+.1f} | [{low:+.1f}, {high:+.1f}] | {count} |\n")
    stages = stage_times(root)
    if stages:
        out.write("\n| stage | time (h) | tokens |\n|---|---:|---:|\n")
        for name, hours, tokens in stages:  # training time over all resumes; for ruler, the evaluation time
            out.write(f"| {name} | {hours:.2f} | {tokens:,} |\n" if tokens else f"| {name} | {hours:.2f} | |\n")
    return out.getvalue()


def plot(arms: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probseq.files import save_figure

    tasks, table = score_table(arms)
    panels = tasks + sorted({t for t, _, _ in table if t.startswith("mean")})
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False, sharey=True)
    for ax, panel in zip(axes.flat, panels):
        for arm in arms:
            points = [(n, c[arm]) for t, n, c in table if t == panel and isinstance(c.get(arm), tuple)]
            if not points:
                continue
            lengths = [n for n, _ in points]
            ax.plot(lengths, [v[0] for _, v in points], marker="o", label=ARMS[arm])
            if all(v[1] is not None for _, v in points):
                ax.fill_between(lengths, [v[1] for _, v in points], [v[2] for _, v in points], alpha=0.15)
        ax.set_xscale("log", base=2)
        ticks = sorted({n for _, n, _ in table})
        ax.set_xticks(ticks, [str(n) for n in ticks], fontsize=7)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylim(-2, 102)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("RULER score")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(folder: str = "results") -> int:
    root = Path(folder)
    arms = read_arms(root)
    if not arms:
        print(f"no ruler/<arm>/summary.csv under {root}")
        return 1
    text = markdown(arms, root)
    (root / "ruler" / "comparison.md").write_text(text)
    plot(arms, root / "ruler" / "comparison.png")
    print(text + f"\nwrote {root / 'ruler' / 'comparison.md'} and comparison.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
