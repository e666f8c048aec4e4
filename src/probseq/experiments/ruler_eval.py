"""``probseq ruler`` — RULER retrieval scores of a language model at several context lengths.

For each task × length (a *unit*): ``probseq.ruler.generate(task, tokenizer, length, samples, seed)`` builds
``samples`` prompts that fill ``length`` tokens of the model's own tokenizer (RULER's length fitting, less the
task's tokens to generate); the model completes ``input + answer_prefix`` greedily (``model.generate``, batches
of ``batch_size`` left-padded prompts, ``tokens_to_generate(task)`` new tokens, stopping at eos); each completion
is scored with ``probseq.ruler.score`` (RULER's substring recall, 0–100). ``--samples N`` is the count of every
task; ``--samples-per-task niah_single_1=300,niah_multikey_2=300`` overrides it for the tasks named. Writes to
``OUT``:

- ``summary.csv`` — one row per unit: ``task, length, score`` (mean over samples), ``ci_low, ci_high`` (95 %
  normal interval of the mean over samples, clipped to [0, 100]), ``samples``, ``prompt_tokens`` (mean),
  ``status`` (``ok``, or why the unit was skipped — e.g. ``vt`` needs more than 512 tokens for its solved example);
- ``predictions.jsonl.gz`` — gzip of one JSON line per sample: task, length, index, prompt_tokens, references,
  prediction, score, prompt_sha (a hash of the prompt, for pairing); gzip keeps it small enough to copy into a
  repository (~50 bytes a sample with the hash);
- ``results.json`` — config, environment, the model, and the units;
- ``ruler.png`` — score vs length (log scale), one line per task, with the intervals.

``--model`` is a ``save_pretrained`` folder of any causal LM (probseq's are registered with ``AutoModelForCausalLM``)
or an fla ``GatedDeltaNetForCausalLM`` folder (``model_type = "gated_deltanet"``), which is converted on the fly
(``convert_fla(retention="reset")``: the same model); its tokenizer files must be in the folder.

Resumable, sample by sample: every unit's scored samples are cached in ``OUT/cache/<key>/<task>-<length>.json``,
written every :data:`SAVE_EVERY` completions while a unit grows (an interruption loses at most those)
(the key covers the model's weights file sizes and times, seed, new tokens and dtype — not the sample count:
RULER's generators are prefix-stable, :mod:`probseq.experiments.ruler_units`). A rerun computes only the missing
units; a larger ``--samples`` (or ``--samples-per-task``) scores only the new samples of each unit, a smaller one
reports the first ones. A cache file that is not JSON or not a unit's record (of this task and length) is an error
naming the file (delete it to recompute). Before any work, an unwritable ``OUT`` is an error, and so is an ``OUT``
holding the results of another model, seed, dtype or ``--max-new-tokens`` (use another ``--out``); other
``--tasks``, ``--lengths`` or sample counts in the same ``OUT`` evaluate only what is not cached yet, and the
outputs then cover the units and counts asked for. An ``OUT`` written before per-sample caching (its cache keyed
with the count, ``predictions.jsonl``) is read as it is: its units are copied into the new layout, and the run
writes ``predictions.jsonl.gz`` in place of ``predictions.jsonl``.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from probseq.experiments.common import ResultCache, environment, write_csv
from probseq.experiments.ruler_units import (
    LEGACY_UNIT_SPEC,
    UNIT_SPEC,
    UnitKey,
    check_same_samples,
    from_legacy,
    legacy_unit_problem,
    legacy_units,
    prompt_sha,
    unit_name,
    unit_problem,
)
from probseq.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_same_config,
    check_writable,
    json_problem,
    read_json,
)
from probseq.train.result_cache import ADVICE, read_result

DEFAULT_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe")
#: RulerConfig fields that change no unit's result: which units and samples to evaluate (each unit is cached on its
#: own, sample by sample, so other tasks, lengths or sample counts in the same ``--out`` add units or samples), and
#: how (batching, device, threads, progress bars).
CHOICE_FIELDS = ("tasks", "lengths", "samples", "samples_per_task", "batch_size", "device", "num_threads", "progress")
SUMMARY_COLUMNS = ("task", "length", "score", "ci_low", "ci_high", "samples", "prompt_tokens", "status")
FILES = ("summary.csv", "predictions.jsonl.gz", "results.json", "ruler.png")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RulerConfig:
    """What ``probseq ruler`` evaluates.

    Attributes:
        model: the model folder (``save_pretrained`` or fla Gated DeltaNet), with its tokenizer.
        tasks: RULER tasks (names of ``probseq.ruler.TASKS``).
        lengths: context lengths in tokens (prompt + tokens to generate).
        samples: samples per task and length (a top-up of a cached unit scores only the new ones).
        samples_per_task: ``{task: samples}`` for tasks that take another count than ``samples`` (e.g. more for
            the niah tasks, whose mean the study's paired interval is about); a key ``"task@length"`` sets one
            unit's count (a top-up of one length), before the task's.
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
    samples_per_task: dict[str, int] = field(default_factory=dict)
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
        unknown = [key for key in self.samples_per_task if not _count_key_ok(key, TASKS)]
        if unknown:
            raise ValueError(f"--samples-per-task: unknown RULER task(s) {unknown}; available: {sorted(TASKS)}")
        for task, count in self.samples_per_task.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"--samples-per-task: {task}={count!r} must be a count >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    def samples_for(self, task: str, length: int | None = None) -> int:
        """The sample count of ``task`` at ``length``: its ``samples_per_task`` entry ``"task@length"``, else
        ``"task"``, else ``samples``."""
        return self.samples_per_task.get(f"{task}@{length}", self.samples_per_task.get(task, self.samples))


def _count_key_ok(key: str, tasks) -> bool:
    """``key`` is ``TASK`` or ``TASK@LENGTH`` (a positive whole number of tokens) of a known task."""
    task, at, length = key.partition("@")
    return task in tasks and (not at or (length.isdigit() and int(length) > 0))


def weights_fingerprint(folder: Path) -> str:
    """The names, sizes and modification times of a model folder's weights and JSON files (a cache key part)."""
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


def _failed_unit(unit: dict | None, task: str, length: int, samples: int, reason: str, seconds: float) -> dict:
    """``unit`` (or a new unit file) marked as not drawable at ``samples`` prompts; its predictions stay."""
    unit = unit or {"task": task, "length": length, "seconds": 0.0, "predictions": []}
    return {**unit, "seconds": unit["seconds"] + seconds, "skipped": {"samples": samples, "reason": reason}}


def needs_work(unit: dict | None, samples: int) -> bool:
    """Whether a unit file (:mod:`~probseq.experiments.ruler_units`' layout, or None) lacks what ``samples``
    prompts need: fewer predictions, and no skip that holds for that count."""
    if unit is None:
        return True
    if len(unit["predictions"]) >= samples:
        return False
    return unit["skipped"] is None or samples < unit["skipped"]["samples"]


#: completions between two saves of a growing unit: an interruption loses at most these (plus a batch)
SAVE_EVERY = 32


def grow_unit(
    model,
    tokenizer,
    unit: dict | None,
    task: str,
    length: int,
    samples: int,
    config: RulerConfig,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """The unit file ``unit`` (None: none yet) grown to ``samples`` predictions: RULER's ``samples`` prompts are
    generated, the cached ones checked against them, and only the others completed and scored — ``save(unit)``
    after every :data:`SAVE_EVERY` of them (at least a batch), so an interrupted unit resumes from its last save.
    A length that cannot hold the task (e.g. vt's solved example needs ~500 tokens) marks the unit skipped at that
    count."""
    from probseq.ruler import generate, score, tokens_to_generate

    started = time.perf_counter()
    cached = unit["predictions"] if unit is not None else []
    try:
        records = generate(task, tokenizer, length, samples, config.seed)
    except ValueError as error:
        return _failed_unit(unit, task, length, samples, str(error), time.perf_counter() - started)
    check_same_samples(cached, records, lambda row: row["references"], f"the cache of {unit_name(task, length)}")
    grown = {
        "task": task,
        "length": length,
        "seconds": unit["seconds"] if unit is not None else 0.0,
        "predictions": list(cached),
        "skipped": None,
    }
    todo = records[len(cached) :]
    step = max(SAVE_EVERY, config.batch_size)
    for start in range(0, len(todo), step):
        part = todo[start : start + step]
        texts, counts = complete(
            model,
            tokenizer,
            [r["input"] + r["answer_prefix"] for r in part],
            config.max_new_tokens or tokens_to_generate(task),
            config.batch_size,
            config.progress,
        )
        for record, text, count in zip(part, texts, counts):
            grown["predictions"].append(
                {
                    "task": task,
                    "length": length,
                    "index": record["index"],
                    "prompt_tokens": count,
                    "references": record["outputs"],
                    "prediction": text,
                    "score": score(task, [text], [record["outputs"]]),
                    "prompt_sha": prompt_sha(record),
                }
            )
        now = time.perf_counter()
        grown["seconds"] += now - started
        started = now
        if save is not None and start + step < len(todo):  # the caller stores the finished unit itself
            save(grown)
    grown["seconds"] += time.perf_counter() - started
    return grown


def unit_summary(unit: dict, samples: int) -> dict:
    """The first ``samples`` predictions of a unit file as a row of ``summary.csv`` (with ``seconds`` and the
    ``predictions`` used): ``{"task", "length", "score", "ci_low", "ci_high", "samples", "prompt_tokens", "status",
    "seconds", "predictions"}``."""
    row = {"task": unit["task"], "length": unit["length"]}
    predictions = unit["predictions"][:samples]
    if len(predictions) < samples:  # needs_work said the skip holds for this count
        empty = dict.fromkeys(("score", "ci_low", "ci_high", "prompt_tokens"))
        status = f"skipped: {unit['skipped']['reason']}"
        return {**row, **empty, "samples": 0, "status": status, "seconds": unit["seconds"], "predictions": []}
    mean, low, high = mean_ci([p["score"] for p in predictions])
    return {
        **row,
        "score": mean,
        "ci_low": low,
        "ci_high": high,
        "samples": samples,
        "prompt_tokens": sum(p["prompt_tokens"] for p in predictions) / samples,
        "status": "ok",
        "seconds": unit["seconds"],
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


def _cached_unit(cache: ResultCache, legacy: Callable[[], dict], task: str, length: int) -> dict | None:
    """The unit file of ``task`` at ``length`` (:mod:`~probseq.experiments.ruler_units`' layout): from the cache,
    else converted from a folder an older ``probseq ruler`` wrote (``legacy()``: :func:`legacy_units`), else None.
    A file with wrong content is an error naming it."""
    name = unit_name(task, length)
    unit = cache.get(name, UNIT_SPEC, lambda value: unit_problem(value, task, length))
    if unit is not None or name not in legacy():
        return unit
    path, samples = legacy()[name]
    old = read_result(path, name, LEGACY_UNIT_SPEC, lambda value: legacy_unit_problem(value, task, length, samples))
    unit = from_legacy(old, samples)
    problem = json_problem(unit, UNIT_SPEC) or unit_problem(unit, task, length)
    if problem is not None:
        raise ValueError(f"cached result {path} does not hold a result of {name}: {problem}; {ADVICE}")
    return unit


def predictions_gz(units: list[dict]) -> bytes:
    """``predictions.jsonl.gz``: one JSON line per sample of ``units`` (:func:`unit_summary` rows), gzip with no
    timestamp (the same predictions give the same bytes)."""
    text = "".join(json.dumps(p, allow_nan=False) + "\n" for u in units for p in u["predictions"])
    return gzip.compress(text.encode(), mtime=0)


def run_ruler(config: RulerConfig, out: str | os.PathLike) -> dict:
    """Evaluate ``config`` into ``out`` (resuming finished units, topping up their samples); returns
    ``results.json``'s content. An ``out`` holding the results of another model, seed, dtype or ``max_new_tokens``
    is refused before any work (:data:`CHOICE_FIELDS`: other tasks, lengths or sample counts only add units or
    samples)."""
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
        key = UnitKey(weights_fingerprint(folder), config.seed, config.max_new_tokens, config.dtype)
        cache = ResultCache(out, key)
        legacy = functools.cache(lambda: legacy_units(out, key))
        model = tokenizer = description = None
        units = []
        todo = [(task, length) for task in config.tasks for length in config.lengths]
        for task, length in tqdm(todo, desc="RULER units", disable=None if config.progress else True):
            samples, name = config.samples_for(task, length), unit_name(task, length)
            unit = _cached_unit(cache, legacy, task, length)
            stored = unit is not None and cache.path(name).exists()  # not when converted from the old layout
            if needs_work(unit, samples):
                if model is None:
                    model, tokenizer, description = load_model(folder, config.dtype, config.device)
                save = functools.partial(cache.put, name)
                unit, stored = grow_unit(model, tokenizer, unit, task, length, samples, config, save), False
            if not stored:
                cache.put(name, unit)
            units.append(unit_summary(unit, samples))
    finally:
        torch.set_num_threads(before)
    summary = [{key: unit[key] for key in SUMMARY_COLUMNS} for unit in units]
    write_csv(out / "summary.csv", summary)
    atomic_write_bytes(out / "predictions.jsonl.gz", predictions_gz(units))
    (out / "predictions.jsonl").unlink(missing_ok=True)  # an older run's: predictions.jsonl.gz replaces it
    title = f"RULER: {folder.name}"
    atomic_write_bytes(out / "ruler.png", plot(units, title))
    results = {
        "config": dataclasses.asdict(config),
        "environment": environment(),
        "model": description or str(folder),
        "units": summary,
        "seconds": sum(u["seconds"] for u in units),
        "files": list(FILES),
    }
    atomic_write_json(out / "results.json", results)
    return results


def _list(text: list[str], kind=str) -> tuple:
    items = [item for part in text for item in part.replace(",", " ").split()]
    try:
        return tuple(kind(item) for item in items)
    except ValueError:
        raise ValueError(f"cannot read {items} as {kind.__name__}s") from None


def per_task_counts(text: list[str] | None) -> dict[str, int]:
    """``--samples-per-task niah_single_1=300,niah_multikey_2=300`` (space or comma separated ``TASK=N``, or
    ``TASK@LENGTH=N`` for one unit) as ``{key: n}``; the names and counts are checked by :class:`RulerConfig`."""
    counts = {}
    for item in _list(text or []):
        task, sep, count = item.partition("=")
        if not sep or not task:
            raise ValueError(f"--samples-per-task: {item!r} is not TASK=N")
        if task in counts:
            raise ValueError(f"--samples-per-task: {task} is given twice")
        try:
            counts[task] = int(count)
        except ValueError:
            raise ValueError(f"--samples-per-task: {item!r}: {count!r} is not a count") from None
    return counts


def main(args) -> int:
    config = RulerConfig(
        model=args.model,
        tasks=_list(args.tasks),
        lengths=_list(args.lengths, int),
        samples=args.samples,
        samples_per_task=per_task_counts(args.samples_per_task),
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
    print(f"wrote {Path(args.out) / 'summary.csv'}, predictions.jsonl.gz, results.json, ruler.png", file=sys.stderr)
    return 0


__all__ = [
    "DEFAULT_TASKS",
    "RulerConfig",
    "complete",
    "grow_unit",
    "load_model",
    "main",
    "mean_ci",
    "mean_interval",
    "per_task_counts",
    "run_ruler",
    "unit_summary",
    "weights_fingerprint",
]
