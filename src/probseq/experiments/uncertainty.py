"""``probseq uncertainty`` — where a model's Bayesian layers are uncertain, token by token.

Runs a :class:`~probseq.models.ProbSeqForCausalLM` once over a text with ``output_variance=True`` and reads the
predictive variance ``σ²_t = q̃_tᵀ P_t q̃_t`` of every head of every Bayesian layer (``bayesian`` and
``gated_deltanet`` mixers; docs/layers.md, "The variance side channel"). Writes to ``OUT``:

- ``variance.png`` — heat map: tokens on the x axis (the tokens as tick labels), one row per (layer, head);
- ``variance.csv`` — the same numbers, one row per token: ``position, token`` and one column ``L{l}.H{h}``
  per head of each Bayesian layer;
- ``results.json`` — config, environment, model and tokenizer used, tokens, skipped layers, per-head summaries.

The model is ``--model DIR`` (``save_pretrained`` output). Without ``--model``, or when ``DIR`` holds no
checkpoint, a small randomly initialised Bayesian model is used (``config.json`` without weights: that
config, random weights), and the plot title says so. Tokens come from the tokenizer of ``--tokenizer DIR``
or, failing that, of the model folder; without one the text is read as UTF-8 bytes (ids 0–255, so the
model's vocabulary must have at least 256 entries). Layers without a covariance (attention, DeltaNet,
linear attention, Mamba-2) are skipped, with a note in ``results.json``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from probseq.experiments.common import environment, write_csv
from probseq.files import atomic_write_bytes, atomic_write_json, check_same_config, check_writable

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
BYTE_VOCAB = 256


@dataclass(frozen=True)
class UncertaintyConfig:
    """What ``probseq uncertainty`` runs.

    Attributes:
        text: the text to read.
        model: a ``save_pretrained`` folder, or ``None`` for a randomly initialised model.
        tokenizer: a tokenizer folder (``None``: the model folder's tokenizer, else UTF-8 bytes).
        seed: seed of the random initialisation.
        hidden_size, num_hidden_layers, num_heads, head_dim: the random model's sizes (its vocabulary is the
            tokenizer's, 256 for bytes).
    """

    text: str
    model: str | None = None
    tokenizer: str | None = None
    seed: int = 0
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_heads: int = 2
    head_dim: int = 32

    def __post_init__(self):
        if not self.text:
            raise ValueError("--text must not be empty")


@dataclass
class Tokens:
    ids: list[int]
    labels: list[str]
    source: str  # "bytes" or the tokenizer folder
    vocab_size: int  # ids are below this


def _has_checkpoint(folder: Path) -> bool:
    return any((folder / name).exists() for name in WEIGHT_FILES)


def load_model(config: UncertaintyConfig, vocab_size: int = BYTE_VOCAB):
    """``(model, description, randomly_initialised)``: the checkpoint in ``config.model`` if there is one, else a
    random model (from the folder's ``config.json`` if it has one, else a small Bayesian model with
    ``vocab_size`` entries)."""
    from probseq.models import ProbSeqConfig, ProbSeqForCausalLM

    torch.manual_seed(config.seed)
    folder = None if config.model is None else Path(config.model)
    if folder is not None and not folder.is_dir():
        raise ValueError(f"--model {folder} is not a folder")
    if folder is not None and _has_checkpoint(folder):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder).eval(), str(folder), False
    if folder is not None and (folder / "config.json").exists():
        model_config = ProbSeqConfig.from_pretrained(folder)
        return ProbSeqForCausalLM(model_config).eval(), f"{folder}/config.json (no weights)", True
    model_config = ProbSeqConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        expand_v=1.0,
        mixer="bayesian",
        retention="learned",
        retention_init=0.5,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    return ProbSeqForCausalLM(model_config).eval(), "small Bayesian model", True


def _display(piece: str) -> str:
    return piece.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def byte_tokens(text: str) -> Tokens:
    """UTF-8 byte ids; a character's first byte is labelled with the character, further bytes with ``+``."""
    ids, labels = [], []
    for char in text:
        data = char.encode("utf-8")
        ids += list(data)
        labels += [_display(char)] + ["+"] * (len(data) - 1)
    return Tokens(ids, labels, "bytes", BYTE_VOCAB)


def tokenize(text: str, tokenizer_dir: str | None, model_dir: str | None) -> Tokens:
    """Tokens from ``tokenizer_dir`` (must hold a tokenizer), else ``model_dir``'s tokenizer, else bytes."""
    folder = tokenizer_dir or (
        model_dir if model_dir and any((Path(model_dir) / f).exists() for f in TOKENIZER_FILES) else None
    )
    if folder is None:
        return byte_tokens(text)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a tokenizer from {folder}: {error}") from error
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Tokens(list(ids), [_display(tokenizer.decode([i])) for i in ids], str(folder), len(tokenizer))


def layer_variances(model, ids: list[int]) -> tuple[list[tuple[int, torch.Tensor]], list[str]]:
    """Run ``model`` on ``ids`` with ``output_variance=True``: ``([(layer, variance [T, H])], notes)``; a variance
    that is not finite is a ``ValueError`` naming the layer, head and token (no file would hold a number)."""
    if max(ids) >= model.config.vocab_size:
        raise ValueError(
            f"token id {max(ids)} is outside the model's vocabulary ({model.config.vocab_size}); "
            "give the model's tokenizer with --tokenizer"
        )
    with torch.no_grad():
        model(torch.tensor([ids]), use_cache=False, output_variance=True)
    found, notes = [], []
    for index, variance in enumerate(model.model.variances()):
        if variance is None:
            kind = type(model.model.layers[index].attn).__name__
            notes.append(f"layer {index} ({kind}) has no covariance: skipped")
        else:
            found.append((index, variance[0].float()))
    if not found:
        raise ValueError("the model has no Bayesian layers (mixer 'bayesian' or 'gated_deltanet'): no variance")
    for layer, variance in found:  # [T, H]
        bad = (~torch.isfinite(variance)).nonzero()
        if len(bad):
            t, head = bad[0].tolist()
            raise ValueError(
                f"the predictive variance of layer {layer}, head {head} is not finite at token {t} "
                f"({variance[t, head].item()}): the model's weights are damaged or diverged"
            )
    return found, notes


def plot(matrix: torch.Tensor, rows: list[str], labels: list[str], title: str) -> bytes:
    """Heat map PNG of ``matrix [rows, tokens]``; the title is also stored in the PNG's metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = len(labels)
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 0.22 * tokens + 2)), max(2.5, 0.35 * len(rows) + 1.8)))
    image = ax.imshow(matrix.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    step = max(1, tokens // 150)  # keep the tick labels legible on long texts
    ax.set_xticks(range(0, tokens, step), [labels[i] for i in range(0, tokens, step)], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("token")
    ax.set_ylabel("layer.head")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="predictive variance σ²")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, metadata={"Title": title})
    plt.close(fig)
    return buffer.getvalue()


def run_uncertainty(config: UncertaintyConfig, out: str | os.PathLike) -> dict:
    """Write ``variance.png``, ``variance.csv`` and ``results.json`` to ``out``; return the results. An ``out``
    holding the results of another config is refused before any work."""
    out = check_writable(out)
    check_same_config(out / "results.json", config)
    tokens = tokenize(config.text, config.tokenizer, config.model)
    if not tokens.ids:
        raise ValueError("the text has no tokens")
    model, model_source, random_init = load_model(config, tokens.vocab_size)
    found, notes = layer_variances(model, tokens.ids)

    columns = [
        (f"L{layer}.H{head}", variance[:, head]) for layer, variance in found for head in range(variance.shape[1])
    ]
    matrix = torch.stack([values for _, values in columns])  # [layers·heads, T]
    rows = [
        dict(position=t, token=tokens.labels[t], **{name: values[t].item() for name, values in columns})
        for t in range(len(tokens.ids))
    ]
    model_text = f"randomly initialised model ({model_source})" if random_init else f"model {model_source}"
    title = (
        f"Predictive variance per token and head\n{model_text}; "
        f"{len(tokens.ids)} tokens ({'UTF-8 bytes' if tokens.source == 'bytes' else 'tokenizer'})"
    )
    write_csv(out / "variance.csv", rows)
    atomic_write_bytes(out / "variance.png", plot(matrix, [name for name, _ in columns], tokens.labels, title))
    results = {
        "config": dataclasses.asdict(config),
        "environment": environment(),
        "model": model_source,
        "randomly_initialised": random_init,
        "tokenizer": tokens.source,
        "title": title,
        "tokens": [dict(id=i, label=label) for i, label in zip(tokens.ids, tokens.labels)],
        "layers": [layer for layer, _ in found],
        "notes": notes,
        "heads": {
            name: dict(mean=values.mean().item(), min=values.min().item(), max=values.max().item())
            for name, values in columns
        },
        "files": ["variance.png", "variance.csv", "results.json"],
    }
    atomic_write_json(out / "results.json", results)
    return results


def main(args) -> int:
    config = UncertaintyConfig(text=args.text, model=args.model, tokenizer=args.tokenizer, seed=args.seed)
    results = run_uncertainty(config, args.out)
    for note in results["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(results["title"].replace("\n", ": "))
    print(f"wrote {Path(args.out) / 'variance.png'}, variance.csv and results.json")
    return 0
