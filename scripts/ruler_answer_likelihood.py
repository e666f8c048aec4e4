"""Below RULER's exact-match floor: does a model prefer the needle's value over a foil, given the prompt?

``python scripts/ruler_answer_likelihood.py (--runs DIR | --models NAME=DIR …) --out DIR
[--tasks niah_single_1 niah_multikey_2] [--lengths 512 1024 2048 4096] [--samples 50]
[--samples-per-task TASK=N …] [--seed 42] [--threads N]``

RULER scores a completion 100 only if it contains the whole 7-digit value; a small model can carry a retrieval
signal that never reaches an exact match. For the same prompts as ``probseq ruler`` (``probseq.ruler.generate``,
same seed, and the same counts: ``--samples`` and ``--samples-per-task`` as there), this scores the answer by its
likelihood instead: ``log p(" " + value | input + answer_prefix)`` summed over the value's tokens (teacher forcing),
for the reference value and for a *foil* of the same form, chosen so that it does not depend on where the needle
sits (:func:`foils`):

- ``niah_single_1`` (one needle in noise): the reference of the next sample (sample ``i + 1``, drawn for it even
  for the last one, so a sample's foil does not depend on the count) — a number absent from the prompt, so the
  margin measures copying the one number present;
- ``niah_multikey_2`` (the needle among needles for other keys): the value of the needle *adjacent* to the
  reference's in the same prompt — the line before it for an even sample index, after it for an odd one (the other
  side at the haystack's edge). Both sit at almost the same depth, so the margin measures retrieving the value of
  the asked key rather than preferring an early or a recent value; a fixed foil such as the prompt's first needle
  (depth ≈ 0, against a reference at a random depth) would mix retrieval with recency.

**Arms.** ``--runs DIR`` takes every model folder under ``DIR`` named as an arm of the study (``teacher``, ``gdn``,
``bayes``, ``bayes_<variant>``: :mod:`probseq.experiments.ruler_arms`); ``--models NAME=DIR`` names them one by
one (both may be given). The paired tables are those of ``scripts/ruler_compare.py``: each Bayesian arm − ``gdn``,
each arm − ``teacher``, among the arms present.

**Resumable per arm and unit.** Each (task, length) of a model is cached with its per-sample log-likelihoods in
``OUT/cache/<key>/<task>-<length>.json`` (the key: the model's weights file sizes and times, the seed and the foil
scheme); a rerun computes only what is missing — a new arm, a new unit, or the new samples of a larger count (the
generators are prefix-stable), loading a model only when it has work.

Writes ``OUT/answer_likelihood.csv`` (per model, task and length: mean margin ``log p(reference) − log p(foil)`` in
nats with its 95 % interval, the fraction of samples where the reference is more likely, the reference's mean
log-probability) and ``OUT/answer_likelihood.md`` (that table, and per pair, task and length the paired difference
of the margin). Reference and foil have the same number of tokens (the tokenizer splits digits one by one); a prompt
whose tokens are not a prefix of prompt + answer is an error.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from probseq_cli.parsers import plain_text

TASKS = ("niah_single_1", "niah_multikey_2")
NEEDLE = re.compile(r"One of the special magic numbers for [^\n]+? is: (\d{7})\.")
#: Names the foil scheme in the cache key: another scheme never reuses these log-likelihoods.
FOIL_SCHEME = "single: next sample's reference; multikey: adjacent needle, side by index parity"
ROW_SPEC = {
    "task": str,
    "length": int,
    "index": int,
    "reference": str,
    "foil": str,
    "logp_reference": (int, float),
    "logp_foil": (int, float),
}


@dataclass(frozen=True)
class LikelihoodKey:
    """What a unit's log-likelihoods depend on (besides task, length and sample index)."""

    weights: str
    seed: int
    foils: str = FOIL_SCHEME


def _other_value(ref: str) -> str:
    """The next 7-digit number after ``ref``, wrapping within 1000000–9999999."""
    return str((int(ref) - 999_999) % 9_000_000 + 1_000_000)


def adjacent_needle_value(record: dict) -> str:
    """The value of the needle next to the reference's in ``record``'s prompt: the one before it for an even
    ``index``, after it for an odd one, the other side when that one is missing (a value equal to the reference
    is passed over, looking further on that side first)."""
    values = NEEDLE.findall(record["input"])
    ref = record["outputs"][0]
    if ref not in values:
        raise ValueError(f"sample {record['index']}: the reference {ref} is not a needle of the prompt")
    at = values.index(ref)
    before = [values[j] for j in range(at - 1, -1, -1)]
    after = [values[j] for j in range(at + 1, len(values))]
    sides = (before, after) if record["index"] % 2 == 0 else (after, before)
    for side in sides:
        for value in side:
            if value != ref:
                return value
    raise ValueError(f"niah_multikey_2 sample {record['index']}: no other needle value in the prompt")


def foils(task: str, records: list[dict]) -> list[str]:
    """One foil value per record (see the module docstring); for ``niah_single_1`` record ``i``'s foil is record
    ``i + 1``'s reference (the last record wraps to the first: draw one record more than you score)."""
    references = [r["outputs"][0] for r in records]
    if task == "niah_single_1":
        following = [references[(i + 1) % len(references)] for i in range(len(references))]
        # (a repeated value, or a single record: the next 7-digit number)
        return [other if other != ref else _other_value(ref) for ref, other in zip(references, following)]
    if task == "niah_multikey_2":
        return [adjacent_needle_value(record) for record in records]
    raise ValueError(f"unsupported task {task!r}; supported: {TASKS}")


@torch.no_grad()
def answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """``log p(answer | prompt)``, summed over the answer's tokens."""
    prefix = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + answer)["input_ids"]
    if full[: len(prefix)] != prefix or len(full) == len(prefix):
        raise ValueError(f"the prompt's tokens are not a prefix of prompt + {answer!r}")
    ids = torch.tensor([full], device=next(model.parameters()).device)
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prefix) - 1 : -1].float()
    return float(torch.log_softmax(logits, -1).gather(-1, ids[0, len(prefix) :, None]).sum())


def unit_rows(model, tokenizer, task: str, length: int, cached: list[dict], samples: int, seed: int) -> list[dict]:
    """Rows ``{task, length, index, reference, foil, logp_reference, logp_foil}`` of samples ``0 … samples − 1``:
    the ``cached`` ones (checked against the generator), then the new ones computed."""
    from tqdm.auto import tqdm

    from probseq.experiments.ruler_units import check_same_samples
    from probseq.ruler import generate

    records = generate(task, tokenizer, length, samples + 1, seed)  # one more: the last sample's single_1 foil
    check_same_samples(cached, records, lambda row: [row["reference"]], f"the cache of {task}-{length}")
    rows = list(cached)
    todo = list(zip(records, foils(task, records)))[len(cached) : samples]
    for record, foil in tqdm(todo, desc=f"{task} {length}", leave=False, disable=None):
        prompt = record["input"] + record["answer_prefix"]
        rows.append(
            {
                "task": task,
                "length": length,
                "index": record["index"],
                "reference": record["outputs"][0],
                "foil": foil,
                "logp_reference": answer_logprob(model, tokenizer, prompt, " " + record["outputs"][0]),
                "logp_foil": answer_logprob(model, tokenizer, prompt, " " + foil),
            }
        )
    return rows


def _unit_problem(value: dict, task: str, length: int) -> str | None:
    if (value["task"], value["length"]) != (task, length):
        return f"it is the unit of {value['task']} at {value['length']} tokens"
    if [r["index"] for r in value["rows"]] != list(range(len(value["rows"]))):
        return "its rows are not samples 0 … m − 1 in order"
    return None


def score_arm(folder: str, out: Path, tasks, lengths, counts: dict[str, int], seed: int) -> list[dict]:
    """Every unit of the model in ``folder``, from ``out``'s cache where it holds enough samples, computing (and
    caching) only the rest; the model is loaded only when some unit has work."""
    from probseq.experiments.common import ResultCache
    from probseq.experiments.ruler_eval import load_model, weights_fingerprint
    from probseq.files import ListOf

    cache = ResultCache(out, LikelihoodKey(weights_fingerprint(Path(folder)), seed))
    spec = {"task": str, "length": int, "rows": ListOf(ROW_SPEC)}
    loaded = None
    rows = []
    for task in tasks:
        for length in lengths:
            name, samples = f"{task}-{length}", counts[task]
            unit = cache.get(name, spec, lambda value, t=task, n=length: _unit_problem(value, t, n))
            cached = unit["rows"] if unit is not None else []
            if len(cached) < samples:
                if loaded is None:
                    loaded = load_model(folder)
                cached = unit_rows(*loaded[:2], task, length, cached, samples, seed)
                cache.put(name, {"task": task, "length": length, "rows": cached})
            rows += cached[:samples]
    return rows


def summary(name: str, rows: list[dict]) -> list[dict]:
    from probseq.experiments.ruler_eval import mean_interval

    units = sorted({(r["task"], r["length"]) for r in rows}, key=lambda u: (TASKS.index(u[0]), u[1]))
    out = []
    for task, length in units:
        unit = [r for r in rows if (r["task"], r["length"]) == (task, length)]
        margin, low, high = mean_interval([r["logp_reference"] - r["logp_foil"] for r in unit])
        out.append(
            {
                "model": name,
                "task": task,
                "length": length,
                "margin": margin,
                "ci_low": low,
                "ci_high": high,
                "reference_preferred": sum(r["logp_reference"] > r["logp_foil"] for r in unit) / len(unit),
                "logp_reference": sum(r["logp_reference"] for r in unit) / len(unit),
                "samples": len(unit),
            }
        )
    return out


def paired(first: list[dict], second: list[dict]) -> list[tuple]:
    """``(task, length, mean, low, high, n)`` of the margin difference first − second over the samples both
    scored, per unit and over all."""
    from probseq.experiments.ruler_eval import mean_interval

    key = lambda r: (r["task"], r["length"], r["index"])  # noqa: E731
    other = {key(r): r for r in second}
    by_unit: dict[tuple, list[float]] = {}
    for r in first:
        s = other.get(key(r))
        if s is None:
            continue
        if (s["reference"], s["foil"]) != (r["reference"], r["foil"]):
            raise ValueError(f"the two models were scored on different samples at {key(r)}")
        by_unit.setdefault(key(r)[:2], []).append(
            (r["logp_reference"] - r["logp_foil"]) - (s["logp_reference"] - s["logp_foil"])
        )
    every = [d for diffs in by_unit.values() for d in diffs]
    return [(t, n, *mean_interval(d), len(d)) for (t, n), d in by_unit.items()] + (
        [("all", "all", *mean_interval(every), len(every))] if every else []
    )


def discover_models(runs: Path) -> dict[str, str]:
    """``arm → model folder`` for every folder under ``runs`` named as an arm, with a ``config.json``."""
    from probseq.experiments.ruler_arms import arm_order, is_arm

    found = {p.name: str(p) for p in runs.iterdir() if p.is_dir() and is_arm(p.name) and (p / "config.json").is_file()}
    return {arm: found[arm] for arm in arm_order(found)}


def markdown(table: list[dict], rows: dict[str, list[dict]]) -> str:
    from probseq.experiments.ruler_arms import arm_pairs, is_arm, label

    text = io.StringIO()
    text.write(
        "| model | task | length | margin (nats) | 95 % interval | reference preferred | log p(reference) |\n"
        "|---|---|---:|---:|---|---:|---:|\n"
    )
    for r in table:
        text.write(
            f"| {r['model']} | {r['task']} | {r['length']} | {r['margin']:+.2f} | [{r['ci_low']:+.2f}, "
            f"{r['ci_high']:+.2f}] | {r['reference_preferred']:.2f} | {r['logp_reference']:.1f} |\n"
        )
    for arm, versus in arm_pairs([name for name in rows if is_arm(name)]):
        text.write(
            f"\nMargin of {arm} − margin of {versus} ({label(arm)} − {label(versus)}), paired over the same "
            "samples (nats; 95 % interval):\n\n"
            "| task | length | difference | 95 % interval | pairs |\n|---|---:|---:|---|---:|\n"
        )
        for task, length, mean, low, high, n in paired(rows[arm], rows[versus]):
            text.write(f"| {task} | {length} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | {n} |\n")
    return text.getvalue()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--runs", default=None, help="folder of the arms' model folders (teacher, gdn, bayes*)")
    parser.add_argument("--models", nargs="+", default=[], help="NAME=DIR …")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--samples-per-task", nargs="+", default=None, metavar="TASK=N", help="as probseq ruler's")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from probseq.experiments.common import write_csv
    from probseq.experiments.ruler_eval import per_task_counts
    from probseq.files import atomic_write_text

    models = discover_models(Path(args.runs)) if args.runs else {}
    for item in args.models:
        name, sep, folder = item.partition("=")
        if not sep or name in models:
            parser.error(f"--models: {item!r} is not NAME=DIR with a new NAME")
        models[name] = folder
    if not models:
        parser.error("no model: give --runs DIR (with arm folders) or --models NAME=DIR")
    per_task = per_task_counts(args.samples_per_task)
    if args.samples < 1 or any(n < 1 for n in per_task.values()) or set(per_task) - set(TASKS):
        parser.error(f"--samples and --samples-per-task need counts >= 1 of the tasks {TASKS}")
    counts = {task: per_task.get(task, args.samples) for task in args.tasks}
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = {}, []
    for name, folder in models.items():
        rows[name] = score_arm(folder, out, args.tasks, args.lengths, counts, args.seed)
        table += summary(name, rows[name])
    write_csv(out / "answer_likelihood.csv", table)
    text = markdown(table, rows)
    atomic_write_text(out / "answer_likelihood.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
