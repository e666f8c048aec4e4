"""Scoring a language model on the retrieval probes (:mod:`probseq.ruler.probes`), and the learning curve of a
pretraining run (docs/architecture.md, floor 6; docs/distillation.md, "Teacher pilots").

**Per sample** (:func:`score_samples`): one teacher-forced forward pass over ``prompt + separator + answer``.

- *Exact match*: greedy decoding after the prompt emits the continuation ``separator + answer`` token for token,
  and then no digit (``"12345678"`` is not ``"1234567"``). Greedy decoding emits a token sequence iff the argmax at
  every position of that sequence under teacher forcing is its next token, so one forward pass decides it: no
  generation loop.
- *Answer log-likelihood*: ``log p(answer | prompt + separator)`` in nats, summed over the answer's tokens (the
  digits; leading whitespace-only tokens are the separator and are not counted), against a *uniform guess* over the
  answer's digits, ``−len(answer) · ln 10`` (−16.12 nats for 7 digits). ``gain`` = log-likelihood − uniform: 0 for a
  model that knows the format but not the value, ``len(answer) · ln 10`` for certainty.

**Per probe and length** (:func:`summarize`): exact match (fraction of samples) with its 95 % Wilson interval, the
mean log-likelihood and gain with 95 % t-intervals.

**Learning curve** (:class:`ProbeCurve`): a ``TrainerCallback`` that evaluates every ``every`` optimizer steps (and
before the first): the validation loss on the run's validation blocks and the probes. ``OUT/curve.json`` (rows:
``step``, ``tokens``, ``seconds`` (training time over resumes, evaluations included), ``eval_seconds``,
``train_loss`` (mean since the previous log), ``valid_loss``, ``learning_rate``, ``samples``, ``final``, and
``probes: {probe: {length: summary}}``), ``OUT/curve.csv`` (the same, flat: ``single@512.exact`` …) and
``OUT/curve.png``. A resumed run drops the rows after the checkpoint it resumes from (the lost steps are redone)
and continues: no step appears twice.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import torch

from probseq.files import atomic_write_bytes, atomic_write_json, atomic_write_text, nonfinite_to_none, read_json
from probseq.ruler.probes import MIRRORS, PROBES, probe_set
from probseq.stats import t_interval_95

CURVE_JSON, CURVE_CSV, CURVE_PNG = "curve.json", "curve.csv", "curve.png"
Z95 = 1.959963984540054


def uniform_logp(answer: str) -> float:
    """``log`` of a uniform guess over the answer's digits: ``−len(answer) · ln 10``."""
    return -len(answer) * math.log(10)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion (``(nan, nan)`` for no trial)."""
    if n == 0:
        return math.nan, math.nan
    p, z2 = successes / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval of the mean (one value: the value itself, twice)."""
    mean, half = t_interval_95(values)
    return mean, mean - half, mean + half


def build_probe_sets(tokenizer, probes, lengths, samples: int, seed: int = 0) -> list[dict]:
    """Every sample of every ``(probe, length)``, probe by probe (:func:`probseq.ruler.probes.probe_set`)."""
    return [
        record
        for probe in probes
        for length in lengths
        for record in probe_set(probe, tokenizer, length, samples, seed)
    ]


def _digit_start(tokenizer, vocab_size: int) -> torch.Tensor:
    """``[V]`` bool: the token's text starts with a digit (a greedy continuation that lengthens the number)."""
    texts = [tokenizer.decode([i]) for i in range(vocab_size)]
    return torch.tensor([t[:1].isdigit() for t in texts], dtype=torch.bool)


@torch.no_grad()
def score_samples(model, tokenizer, records: list[dict], batch_tokens: int = 4096) -> list[dict]:
    """Exact match and answer log-likelihood of every record (see the module docstring).

    Args:
        model: a causal LM: ``model(input_ids=…, logits_to_keep=positions)`` returns ``.logits`` ``[B, P, V]`` at the
            1-D tensor of ``positions`` (as :class:`~probseq.models.ProbSeqForCausalLM`); put in eval mode by the
            caller.
        tokenizer: the model's; ``tokenizer(prompt)`` must tokenise the prompt as a prefix of prompt + continuation
            (a ``ValueError`` otherwise).
        records: :func:`probseq.ruler.probes.probe_sample` records.
        batch_tokens: sequences per forward pass × their longest length, at most (right padding: the model is causal,
            so the padding after a sequence changes none of its logits).

    Returns:
        Per record ``{"probe", "length", "index", "exact", "logp", "uniform", "gain", "tokens"}``.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = []
    for record in records:
        prompt = record["prompt"] + record["separator"]
        context = tokenizer(record["prompt"])["input_ids"]
        full = tokenizer(prompt + record["answer"])["input_ids"]
        if full[: len(context)] != context or len(full) == len(context):
            raise ValueError(
                f"{record['probe']} probe {record['index']}: the prompt's tokens are not a prefix of prompt + "
                f"{record['separator'] + record['answer']!r} with this tokenizer"
            )
        answer = full[len(context) :]
        skip = 0  # separator tokens: whitespace only, before the value
        while skip < len(answer) - 1 and not tokenizer.decode(answer[: skip + 1]).strip():
            skip += 1
        encoded.append((record, full, len(context), skip))
    digits: torch.Tensor | None = None
    rows: list[dict] = []
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][1]))
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * len(encoded[order[stop]][1]) <= batch_tokens:
            stop += 1
        batch = [encoded[i] for i in order[start:stop]]
        width = max(len(full) for _, full, _, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, (_, full, _, _) in enumerate(batch):
            ids[row, : len(full)] = torch.tensor(full)
        # the positions whose logits decide: from the prompt's last token to the answer's last token
        positions = sorted({p for _, full, n, _ in batch for p in range(n - 1, len(full))})
        column = {p: c for c, p in enumerate(positions)}
        logits = model(
            input_ids=ids.to(device), logits_to_keep=torch.tensor(positions, device=device), use_cache=False
        ).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        if digits is None:
            digits = _digit_start(tokenizer, logits.shape[-1])
        for row, (record, full, n, skip) in enumerate(batch):
            answer = full[n:]
            cols = [column[p] for p in range(n - 1, len(full) - 1)]  # the logits that predict each answer token
            target = torch.tensor(answer)
            greedy = logprobs[row, cols].argmax(-1)
            after = int(logprobs[row, column[len(full) - 1]].argmax())
            exact = bool((greedy == target).all()) and not bool(digits[after])
            logp = float(logprobs[row, cols[skip:]].gather(-1, target[skip:, None]).sum())
            uniform = uniform_logp(record["answer"])
            rows.append(
                {
                    "probe": record["probe"],
                    "length": record["length"],
                    "index": record["index"],
                    "exact": float(exact),
                    "logp": logp,
                    "uniform": uniform,
                    "gain": logp - uniform,
                    "tokens": len(full),
                }
            )
        start = stop
    rows.sort(key=lambda r: (PROBES.index(r["probe"]) if r["probe"] in PROBES else 99, r["length"], r["index"]))
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{probe: {str(length): {"samples", "exact", "exact_low", "exact_high", "logp", "logp_low", "logp_high",
    "uniform", "gain", "gain_low", "gain_high", "tokens", "mirrors"}}}`` (95 % intervals; JSON keys are strings)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for probe, length in sorted({(r["probe"], r["length"]) for r in rows}, key=lambda u: (str(u[0]), u[1])):
        unit = [r for r in rows if (r["probe"], r["length"]) == (probe, length)]
        hits = int(sum(r["exact"] for r in unit))
        low, high = wilson(hits, len(unit))
        logp = t_interval([r["logp"] for r in unit])
        gain = t_interval([r["gain"] for r in unit])
        out.setdefault(probe, {})[str(length)] = {
            "samples": len(unit),
            "exact": hits / len(unit),
            "exact_low": low,
            "exact_high": high,
            "logp": logp[0],
            "logp_low": logp[1],
            "logp_high": logp[2],
            "uniform": sum(r["uniform"] for r in unit) / len(unit),
            "gain": gain[0],
            "gain_low": gain[1],
            "gain_high": gain[2],
            "tokens": sum(r["tokens"] for r in unit) / len(unit),
            "mirrors": MIRRORS.get(probe, ""),
        }
    return out


@torch.no_grad()
def valid_loss(model, blocks, batch_size: int) -> float | None:
    """Mean next-token cross-entropy over ``blocks`` (a :class:`~probseq.train.pretrain.PackedBlocks`), block by
    block averaged as the Trainer's evaluation does (every block has the same number of predicted tokens)."""
    if len(blocks) == 0:
        return None
    device = next(model.parameters()).device
    losses = []
    for start in range(0, len(blocks), batch_size):
        ids = torch.stack([blocks[i]["input_ids"] for i in range(start, min(start + batch_size, len(blocks)))])
        ids = ids.to(device)
        losses.append(float(model(input_ids=ids, labels=ids, use_cache=False).loss) * len(ids))
    return sum(losses) / len(blocks)


FLAT_FIELDS = ("exact", "exact_low", "exact_high", "logp", "gain", "gain_low", "gain_high")


def flat_row(row: dict) -> dict:
    """A curve row as one CSV line: ``{probe}@{length}.{field}`` for the probes' fields."""
    flat = {k: v for k, v in row.items() if k != "probes"}
    for probe, by_length in row.get("probes", {}).items():
        for length, summary in by_length.items():
            for name in FLAT_FIELDS:
                flat[f"{probe}@{length}.{name}"] = summary[name]
    return flat


def write_curve(folder: Path, rows: list[dict], title: str = "") -> None:
    """``curve.json``, ``curve.csv`` and (with matplotlib) ``curve.png`` of ``rows``, each written atomically (a
    value that is not finite, e.g. the loss of a diverged step, as ``None``)."""
    rows = nonfinite_to_none(rows)
    atomic_write_json(folder / CURVE_JSON, rows)
    flat = [flat_row(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(folder / CURVE_CSV, text.getvalue())
    png = plot_curve(rows, title)
    if png is not None:
        atomic_write_bytes(folder / CURVE_PNG, png)


def plot_curve(rows: list[dict], title: str = "") -> bytes | None:
    """Losses, exact match and answer gain against training tokens, as PNG bytes (``None`` without matplotlib or
    rows)."""
    if not rows:
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] / 1e6 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in ("train_loss", "valid_loss"):
        points = [(t, r[name]) for t, r in zip(tokens, rows) if r.get(name) is not None]
        if points:
            axes[0].plot(*zip(*points), marker=".", label=name.replace("_", " "))
    axes[0].set_ylabel("loss (nats/token)")
    axes[0].legend(fontsize=7)
    units = sorted({(p, int(n)) for r in rows for p, by in r.get("probes", {}).items() for n in by})
    for probe, length in units:
        label = f"{probe} @ {length}"
        points = [
            (t, r["probes"][probe][str(length)])
            for t, r in zip(tokens, rows)
            if str(length) in r["probes"].get(probe, {})
        ]
        xs = [t for t, _ in points]
        line = axes[1].plot(xs, [s["exact"] for _, s in points], marker=".", label=label)[0]
        axes[1].fill_between(
            xs,
            [s["exact_low"] for _, s in points],
            [s["exact_high"] for _, s in points],
            alpha=0.12,
            color=line.get_color(),
        )
        axes[2].plot(xs, [s["gain"] for _, s in points], marker=".", label=label, color=line.get_color())
    axes[1].set_ylabel("exact match (95 % Wilson)")
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_ylabel("answer log-lik − uniform (nats)")
    for ax in axes:
        ax.set_xlabel("training tokens (M)")
    if units:
        axes[1].legend(fontsize=7)
    fig.suptitle(title or "learning curve", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def read_curve(folder: Path) -> list[dict]:
    """The rows of ``folder/curve.json`` (``[]`` when there is none)."""
    path = Path(folder) / CURVE_JSON
    if not path.exists():
        return []
    rows = read_json(path, f"delete {path} to start the curve over")
    if not isinstance(rows, list):
        raise ValueError(f"{path} must hold a list of curve rows; delete it to start the curve over")
    return rows


def _transformers_callback():
    from transformers import TrainerCallback

    return TrainerCallback


class ProbeCurve(_transformers_callback()):
    """The learning curve of a run (module docstring): evaluates at step 0, every ``every`` steps, and once more
    when :meth:`evaluate` is called after training.

    Args:
        folder: the run folder (``curve.json`` …).
        tokenizer: the model's.
        records: the probe samples of the periodic evaluations (:func:`build_probe_sets`).
        valid_blocks: the validation blocks (their loss), or ``None``.
        every: optimizer steps between evaluations.
        tokens_per_step: tokens of one optimizer step (the ``tokens`` column).
        batch_size: validation blocks per forward pass.
        title: of the plot.
    """

    def __init__(
        self,
        folder: Path,
        tokenizer,
        records: list[dict],
        valid_blocks,
        every: int,
        tokens_per_step: int,
        batch_size: int = 8,
        title: str = "",
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.folder, self.tokenizer, self.records = Path(folder), tokenizer, records
        self.valid_blocks, self.every, self.tokens_per_step = valid_blocks, every, tokens_per_step
        self.batch_size, self.title = batch_size, title
        self.rows: list[dict] = read_curve(self.folder)
        self.trainer = None  # the Trainer it is added to, whose TrainingClock gives the seconds column (the caller's)
        self.eval_seconds = sum(r.get("eval_seconds", 0.0) for r in self.rows)
        self._last_loss: float | None = None

    # -- the Trainer's events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        kept = [r for r in self.rows if r["step"] <= state.global_step]  # later rows: steps lost and now redone
        if len(kept) != len(self.rows):
            self.rows = kept
            self.eval_seconds = sum(r.get("eval_seconds", 0.0) for r in self.rows)
            write_curve(self.folder, self.rows, self.title)
        if state.global_step == 0 and not any(r["step"] == 0 for r in self.rows) and model is not None:
            self.evaluate(model, state, train_loss=None)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            control.should_log = True  # the training loss up to this step, for the row (on_log)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        self._last_loss = logs["loss"]
        if state.global_step % self.every == 0 and state.is_world_process_zero and model is not None:
            if not any(r["step"] == state.global_step for r in self.rows):
                self.evaluate(model, state, train_loss=logs["loss"], learning_rate=logs.get("learning_rate"))

    # -- the evaluation

    def evaluate(
        self,
        model,
        state,
        *,
        train_loss: float | None,
        learning_rate: float | None = None,
        records: list[dict] | None = None,
        final: bool = False,
    ) -> dict:
        """Evaluate ``model`` now, add the row (replacing one of the same step) and write the curve files; returns
        the row. ``records`` replaces the periodic probe set (a larger final set)."""
        started = time.perf_counter()
        model = getattr(model, "module", model)  # DDP
        training = model.training
        model.eval()
        try:
            loss = valid_loss(model, self.valid_blocks, self.batch_size) if self.valid_blocks is not None else None
            records = self.records if records is None else records
            summary = summarize(score_samples(model, self.tokenizer, records)) if records else {}
        finally:
            model.train(training)
        seconds = time.perf_counter() - started
        self.eval_seconds += seconds
        step = int(state.global_step)
        row = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "seconds": self._seconds(),
            "eval_seconds": round(seconds, 3),
            "train_loss": train_loss,
            "valid_loss": loss,
            "learning_rate": learning_rate,
            "samples": len(records) // max(1, len({(r["probe"], r["length"]) for r in records})) if records else 0,
            "final": final,
            "probes": summary,
        }
        self.rows = [r for r in self.rows if r["step"] != step] + [row]
        self.rows.sort(key=lambda r: r["step"])
        write_curve(self.folder, self.rows, self.title)
        return row

    def _seconds(self) -> float | None:
        """The run's training time so far (its TrainingClock's, over resumes), or ``None`` without one."""
        from probseq.train.trainer import TrainingClock

        callbacks = self.trainer.callback_handler.callbacks if self.trainer is not None else []
        clocks = [c for c in callbacks if isinstance(c, TrainingClock)]
        return round(clocks[-1].seconds, 3) if clocks else None

    @property
    def last_train_loss(self) -> float | None:
        """The last logged training loss of this call (``None`` before the first log)."""
        return self._last_loss


def score_at(rows_or_summary: dict, probe: str, length: int, field: str = "exact") -> float | None:
    """``summary[probe][str(length)][field]`` of a curve row or a :func:`summarize` result (``None`` if absent)."""
    summary = rows_or_summary.get("probes", rows_or_summary)
    return (summary.get(probe) or {}).get(str(length), {}).get(field)


__all__ = [
    "CURVE_CSV",
    "CURVE_JSON",
    "CURVE_PNG",
    "ProbeCurve",
    "build_probe_sets",
    "plot_curve",
    "read_curve",
    "score_at",
    "score_samples",
    "summarize",
    "t_interval",
    "uniform_logp",
    "valid_loss",
    "wilson",
    "write_curve",
]
