"""Below RULER's exact-match floor: does a model prefer the needle's value over a foil, given the prompt?

``python scripts/ruler_answer_likelihood.py --models teacher=DIR bayes=DIR gdn=DIR --out DIR
[--tasks niah_single_1 niah_multikey_2] [--lengths 512 1024 2048 4096] [--samples 50] [--threads N]``

RULER scores a completion 100 only if it contains the whole 7-digit value; a small model can carry a retrieval
signal that never reaches an exact match. For the same prompts as ``probseq ruler`` (``probseq.ruler.generate``,
same seed), this scores the answer by its likelihood instead: ``log p(" " + value | input + answer_prefix)`` summed
over the value's tokens (teacher forcing), for the reference value and for a *foil* of the same form:

- ``niah_single_1`` (one needle in noise): the reference of the next sample — a number absent from the prompt, so
  the margin measures copying the one number present;
- ``niah_multikey_2`` (the needle among needles for other keys): another needle's value *in the same prompt*, so
  the margin measures retrieving the value for the asked key rather than any value in the context.

Writes ``OUT/answer_likelihood.csv`` (per model, task and length: mean margin ``log p(reference) − log p(foil)`` in
nats with its 95 % interval, the fraction of samples where the reference is more likely, the reference's mean
log-probability) and ``OUT/answer_likelihood.md`` (that table, and per task and length the paired difference of the
margin between the ``bayes`` and ``gdn`` models when both are given). Reference and foil have the same number of
tokens (the tokenizer splits digits one by one); a prompt whose tokens are not a prefix of prompt + answer is an error.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

import torch

from probseq_cli.parsers import plain_text

TASKS = ("niah_single_1", "niah_multikey_2")
NEEDLE_VALUE = re.compile(r"is: (\d{7})\.")


def foils(task: str, records: list[dict]) -> list[str]:
    """One foil value per record (see the module docstring)."""
    references = [r["outputs"][0] for r in records]
    if task == "niah_single_1":
        following = [references[(i + 1) % len(references)] for i in range(len(references))]
        # (a repeated value, or a single sample: the next 7-digit number, wrapping within 1000000–9999999)
        return [
            other if other != ref else str((int(ref) - 999_999) % 9_000_000 + 1_000_000)
            for ref, other in zip(references, following)
        ]
    if task == "niah_multikey_2":
        out = []
        for record, ref in zip(records, references):
            others = [v for v in NEEDLE_VALUE.findall(record["input"]) if v != ref]
            if not others:
                raise ValueError(f"{task} sample {record['index']}: no other needle value in the prompt")
            out.append(others[0])
        return out
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


def score_model(model, tokenizer, tasks, lengths, samples: int, seed: int) -> list[dict]:
    """Rows ``{task, length, index, reference, foil, logp_reference, logp_foil}``."""
    from tqdm.auto import tqdm

    from probseq.ruler import generate

    rows = []
    for task in tasks:
        for length in lengths:
            records = generate(task, tokenizer, length, samples, seed)
            for record, foil in tqdm(
                list(zip(records, foils(task, records))), desc=f"{task} {length}", leave=False, disable=None
            ):
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
    """``(task, length, mean, low, high, n)`` of the margin difference first − second, per unit and over all."""
    from probseq.experiments.ruler_eval import mean_interval

    key = lambda r: (r["task"], r["length"], r["index"])  # noqa: E731
    other = {key(r): r for r in second}
    by_unit: dict[tuple, list[float]] = {}
    for r in first:
        s = other[key(r)]
        if (s["reference"], s["foil"]) != (r["reference"], r["foil"]):
            raise ValueError(f"the two models were scored on different samples at {key(r)}")
        by_unit.setdefault(key(r)[:2], []).append(
            (r["logp_reference"] - r["logp_foil"]) - (s["logp_reference"] - s["logp_foil"])
        )
    every = [d for diffs in by_unit.values() for d in diffs]
    return [(t, n, *mean_interval(d), len(d)) for (t, n), d in by_unit.items()] + [
        ("all", "all", *mean_interval(every), len(every))
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--models", nargs="+", required=True, help="NAME=DIR …")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.models)
    if args.threads:
        torch.set_num_threads(args.threads)
    from probseq.experiments.common import write_csv
    from probseq.experiments.ruler_eval import load_model
    from probseq.files import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, table = {}, []
    for name, folder in models.items():
        model, tokenizer, _ = load_model(folder)
        rows[name] = score_model(model, tokenizer, args.tasks, args.lengths, args.samples, args.seed)
        table += summary(name, rows[name])
    write_csv(out / "answer_likelihood.csv", table)
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
    if "bayes" in rows and "gdn" in rows:
        text.write(
            "\nMargin of bayes − margin of gdn, paired over the same samples (nats; 95 % interval):\n\n"
            "| task | length | difference | 95 % interval | pairs |\n|---|---:|---:|---|---:|\n"
        )
        for task, length, mean, low, high, n in paired(rows["bayes"], rows["gdn"]):
            text.write(f"| {task} | {length} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | {n} |\n")
    atomic_write_text(out / "answer_likelihood.md", text.getvalue())
    print(text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
