"""``probseq ruler`` — RULER retrieval scores of a language model at several context lengths.

For each task × length (a *unit*): ``probseq.ruler.generate(task, tokenizer, length, samples, seed)`` builds
``samples`` prompts that fill ``length`` tokens of the model's own tokenizer (RULER's length fitting, less the
task's tokens to generate); the model completes ``input + answer_prefix`` greedily (``model.generate``, batches
of ``batch_size`` left-padded prompts, ``tokens_to_generate(task)`` new tokens, stopping at eos); each completion
is scored with ``probseq.ruler.score`` (RULER's substring recall, 0–100). Writes to ``OUT``:

- ``summary.csv`` — one row per unit: ``task, length, score`` (mean over samples), ``ci_low, ci_high`` (95 %
  normal interval of the mean over samples, clipped to [0, 100]), ``samples``, ``prompt_tokens`` (mean),
  ``status`` (``ok``, or why the unit was skipped — e.g. ``vt`` needs more than 512 tokens for its solved example);
- ``predictions.jsonl`` — one line per sample: task, length, index, references, prediction, score;
- ``results.json`` — config, environment, the model, and the units;
- ``ruler.png`` — score vs length (log scale), one line per task, with the intervals.

``--model`` is a ``save_pretrained`` folder of any causal LM (probseq's are registered with ``AutoModelForCausalLM``)
or an fla ``GatedDeltaNetForCausalLM`` folder (``model_type = "gated_deltanet"``), which is converted on the fly
(``convert_fla(retention="reset")``: the same model); its tokenizer files must be in the folder.

Resumable: every finished unit is cached in ``OUT/cache/<key>/`` (the key covers the model's weights file sizes and
times, samples, seed, new tokens and dtype), so a rerun computes only the missing units; a cache file that is not
JSON or not a unit's record (of this task and length) is an error naming the file (delete it to recompute). Before
any work, an unwritable ``OUT`` is an error, and so is an ``OUT`` holding the results of another model, samples,
seed, dtype or ``--max-new-tokens`` (use another ``--out``); other ``--tasks`` or ``--lengths`` in the same ``OUT``
evaluate only the units not cached yet, and the outputs then cover the units asked for.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from probseq.experiments.common import ResultCache, environment, write_csv
from probseq.files import (
    NUMBER,
    ListOf,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_same_config,
    check_writable,
    read_json,
)

DEFAULT_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe")
#: RulerConfig fields that change no unit's result: which units to evaluate (each is cached on its own, so other
#: tasks or lengths in the same ``--out`` add units), and how (batching, device, threads, progress bars).
CHOICE_FIELDS = ("tasks", "lengths", "batch_size", "device", "num_threads", "progress")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RulerConfig:
    """What ``probseq ruler`` evaluates.

    Attributes:
        model: the model folder (``save_pretrained`` or fla Gated DeltaNet), with its tokenizer.
        tasks: RULER tasks (names of ``probseq.ruler.TASKS``).
        lengths: context lengths in tokens (prompt + tokens to generate).
        samples: samples per task and length.
        seed: the generators' seed (RULER's; the same for every unit, as RULER does per task).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: new tokens per completion (``None``: the task's ``tokens_to_generate``).
        dtype: the model's dtype during evaluation.
        device: ``"auto"`` (GPU when there is one), ``"cpu"`` or ``"cuda"``.
        num_threads: ``torch.set_num_threads`` (``None``: leave it).
        progress: tqdm progress bars (on a terminal; never in a log file).
    """

    model: str
    tasks: tuple[str, ...] = DEFAULT_TASKS
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    samples: int = 20
    seed: int = 42
    batch_size: int = 4
    max_new_tokens: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self):
        from probseq.ruler import TASKS

        if not self.model:
            raise ValueError("--model must name a model folder")
        if not self.tasks:
            raise ValueError("--tasks must name at least one task")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"--tasks: unknown RULER task(s) {unknown}; available: {sorted(TASKS)}")
        if not self.lengths or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in self.lengths):
            raise ValueError(f"--lengths must be positive integers, got {self.lengths!r}")
        for name in ("samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class _UnitKey:
    """What a cached unit depends on (besides its task and length)."""

    weights: str
    samples: int
    seed: int
    max_new_tokens: int | None
    dtype: str


def _weights_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return json.dumps([(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files])


def load_model(folder: str | os.PathLike, dtype: str = "float32", device: str = "auto"):
    """``(model, tokenizer, description)``; an fla Gated DeltaNet folder is converted (``retention="reset"``)."""
    from transformers import AutoModelForCausalLM

    import probseq.models  # noqa: F401  (registers probseq's models with AutoModelForCausalLM)
    from probseq.data import load_tokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {folder} is not a model folder (no config.json)")
    model_config = read_json(folder / "config.json", "is the folder a model's?")
    if not isinstance(model_config, dict):
        raise ValueError(
            f"--model {folder}/config.json must hold a model config (a JSON object), got {type(model_config).__name__}"
        )
    model_type = model_config.get("model_type")
    if model_type == "gated_deltanet":
        from probseq.interop.fla import convert_fla

        with tempfile.TemporaryDirectory(prefix="probseq-ruler-") as tmp:
            model = convert_fla(folder, tmp, retention="reset")
        description = f"{folder} (fla Gated DeltaNet, converted with retention='reset')"
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load a model from {folder}: {error}") from None
        description = f"{folder} ({type(model).__name__}, {getattr(model.config, 'mixer', model_type)})"
    tokenizer = load_tokenizer(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device=device, dtype=DTYPES[dtype]).eval(), tokenizer, description


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % normal interval of the mean, unclipped (a single sample: the mean itself)."""
    n = len(values)
    mean = sum(values) / n
    half = 1.96 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n) if n > 1 else 0.0
    return mean, mean - half, mean + half


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """:func:`mean_interval` of scores, clipped to [0, 100]."""
    mean, low, high = mean_interval(values)
    return mean, max(0.0, low), min(100.0, high)


@torch.no_grad()
def complete(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, progress: bool = False
) -> tuple[list[str], list[int]]:
    """Greedy completions of ``prompts`` (left-padded batches): ``(continuations, prompt token counts)``."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    texts, counts = [], []
    for start in tqdm(
        range(0, len(prompts), batch_size), desc="batches", leave=False, disable=None if progress else True
    ):  # None: on a terminal only
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        # use_cache=True whatever the saved config says (a Trainer saves use_cache=False): without the recurrent
        # cache every new token reruns the whole prompt
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = output[:, batch["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        counts += batch["attention_mask"].sum(-1).tolist()
    return texts, counts


# A finished unit as cached (:func:`run_unit`'s dict).
UNIT_SPEC = {
    "task": str,
    "length": int,
    "status": str,
    "score": (NUMBER, type(None)),
    "ci_low": (NUMBER, type(None)),
    "ci_high": (NUMBER, type(None)),
    "samples": int,
    "prompt_tokens": (NUMBER, type(None)),
    "seconds": NUMBER,
    "predictions": ListOf({"score": NUMBER, "prediction": str}),
}


def _unit_problem(unit: dict, task: str, length: int) -> str | None:
    """A cached unit (that matches :data:`UNIT_SPEC`) of another task or length, or an ``ok`` unit without a
    score."""
    if (unit["task"], unit["length"]) != (task, length):
        return f"it is the unit of {unit['task']} at {unit['length']} tokens"
    if unit["status"] == "ok" and unit["score"] is None:
        return "status is ok but score is null"
    return None


def run_unit(model, tokenizer, task: str, length: int, config: RulerConfig) -> dict:
    """One task at one length: ``{"task", "length", "status", "score", "ci_low", "ci_high", "samples",
    "prompt_tokens", "seconds", "predictions": [...]}``."""
    from probseq.ruler import generate, score, tokens_to_generate

    started = time.perf_counter()
    unit = {"task": task, "length": length}
    try:
        records = generate(task, tokenizer, length, config.samples, config.seed)
    except ValueError as error:  # the length cannot hold the task (e.g. vt's solved example needs ~500 tokens)
        return {
            **unit,
            "status": f"skipped: {error}",
            "score": None,
            "ci_low": None,
            "ci_high": None,
            "samples": 0,
            "prompt_tokens": None,
            "seconds": time.perf_counter() - started,
            "predictions": [],
        }
    new_tokens = config.max_new_tokens or tokens_to_generate(task)
    texts, counts = complete(
        model,
        tokenizer,
        [r["input"] + r["answer_prefix"] for r in records],
        new_tokens,
        config.batch_size,
        config.progress,
    )
    predictions = []
    for record, text, count in zip(records, texts, counts):
        predictions.append(
            {
                "task": task,
                "length": length,
                "index": record["index"],
                "prompt_tokens": count,
                "references": record["outputs"],
                "prediction": text,
                "score": score(task, [text], [record["outputs"]]),
            }
        )
    mean, low, high = mean_ci([p["score"] for p in predictions])
    return {
        **unit,
        "status": "ok",
        "score": mean,
        "ci_low": low,
        "ci_high": high,
        "samples": len(predictions),
        "prompt_tokens": sum(counts) / len(counts),
        "seconds": time.perf_counter() - started,
        "predictions": predictions,
    }


def plot(units: list[dict], title: str) -> bytes:
    """PNG: score vs length per task, with the 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    tasks = list(dict.fromkeys(u["task"] for u in units))
    for task in tasks:
        rows = sorted((u for u in units if u["task"] == task and u["status"] == "ok"), key=lambda u: u["length"])
        if not rows:
            continue
        x = [u["length"] for u in rows]
        y = [u["score"] for u in rows]
        err = [[u["score"] - u["ci_low"] for u in rows], [u["ci_high"] - u["score"] for u in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=task)
    ax.set_xscale("log", base=2)
    lengths = sorted({u["length"] for u in units})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_ylim(-3, 103)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("RULER score (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, metadata={"Title": title})
    plt.close(fig)
    return buffer.getvalue()


def run_ruler(config: RulerConfig, out: str | os.PathLike) -> dict:
    """Evaluate ``config`` into ``out`` (resuming finished units); returns ``results.json``'s content. An ``out``
    holding the results of another model, samples, seed, dtype or ``max_new_tokens`` is refused before any work
    (:data:`CHOICE_FIELDS`: other tasks or lengths only add units)."""
    from tqdm.auto import tqdm

    out = check_writable(out)
    check_same_config(out / "results.json", config, ignore=CHOICE_FIELDS)
    folder = Path(config.model)
    if not folder.is_dir():
        raise ValueError(f"--model {folder} is not a folder")
    before = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        cache = ResultCache(
            out,
            _UnitKey(_weights_fingerprint(folder), config.samples, config.seed, config.max_new_tokens, config.dtype),
        )
        model = tokenizer = description = None
        units = []
        todo = [(task, length) for task in config.tasks for length in config.lengths]
        for task, length in tqdm(todo, desc="RULER units", disable=None if config.progress else True):
            name = f"{task}-{length}"
            unit = cache.get(name, UNIT_SPEC, lambda value, t=task, n=length: _unit_problem(value, t, n))
            if unit is None:
                if model is None:
                    model, tokenizer, description = load_model(folder, config.dtype, config.device)
                unit = run_unit(model, tokenizer, task, length, config)
                cache.put(name, unit)
            units.append(unit)
    finally:
        torch.set_num_threads(before)
    summary = [
        {
            key: unit[key]
            for key in ("task", "length", "score", "ci_low", "ci_high", "samples", "prompt_tokens", "status")
        }
        for unit in units
    ]
    write_csv(out / "summary.csv", summary)
    atomic_write_text(
        out / "predictions.jsonl",
        "".join(json.dumps(p, allow_nan=False) + "\n" for u in units for p in u["predictions"]),
    )
    title = f"RULER: {folder.name}"
    atomic_write_bytes(out / "ruler.png", plot(units, title))
    results = {
        "config": dataclasses.asdict(config),
        "environment": environment(),
        "model": description or str(folder),
        "units": summary,
        "seconds": sum(u["seconds"] for u in units),
        "files": ["summary.csv", "predictions.jsonl", "results.json", "ruler.png"],
    }
    atomic_write_json(out / "results.json", results)
    return results


def _list(text: list[str], kind=str) -> tuple:
    items = [item for part in text for item in part.replace(",", " ").split()]
    try:
        return tuple(kind(item) for item in items)
    except ValueError:
        raise ValueError(f"cannot read {items} as {kind.__name__}s") from None


def main(args) -> int:
    config = RulerConfig(
        model=args.model,
        tasks=_list(args.tasks),
        lengths=_list(args.lengths, int),
        samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        dtype=args.dtype,
        device=args.device,
        num_threads=args.threads,
        progress=not args.no_progress,
    )
    results = run_ruler(config, args.out)
    for unit in results["units"]:
        shown = (
            f"{unit['score']:6.2f}  [{unit['ci_low']:.1f}, {unit['ci_high']:.1f}]"
            if unit["status"] == "ok"
            else unit["status"]
        )
        print(f"{unit['task']:>16} {unit['length']:>6}  {shown}")
    print(f"wrote {Path(args.out) / 'summary.csv'}, predictions.jsonl, results.json, ruler.png", file=sys.stderr)
    return 0


__all__ = ["DEFAULT_TASKS", "RulerConfig", "complete", "load_model", "main", "mean_ci", "run_ruler", "run_unit"]
