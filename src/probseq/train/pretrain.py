"""Pretrain a Gated DeltaNet language model on the offline corpus, and export it as an fla checkpoint.

``pretrain(config, out)`` (``probseq pretrain --preset small --out DIR``):

1. the corpus (:func:`probseq.data.prepare_corpus`: KJV Bible + Python docs + retrieval-format text);
2. a byte-level BPE tokenizer trained on its train split (``OUT/tokenizer/``; kept when it exists);
3. the corpus tokenised as documents ``<|bos|> text <|eos|>`` in a seeded random document order, concatenated,
   cut into blocks of ``seq_len`` tokens (``OUT/data/{train,valid}.npy``); a block is ``input_ids`` and its own
   ``labels`` (the model shifts them: next-token cross-entropy at every position but the last);
4. a :class:`~probseq.models.ProbSeqForCausalLM` with ``mixer="gated_deltanet"`` (fla's Gated DeltaNet block:
   pre-norm, short convs, gated output norm, SwiGLU), trained with ``transformers.Trainer`` (AdamW, cosine
   schedule after a linear warmup, gradient clipping, checkpoints in ``OUT/checkpoints/``, resume from the last
   complete one, data parallelism under ``torchrun``); a non-finite gradient norm or loss stops the run at that
   step with :class:`~probseq.train.trainer.TrainingDiverged` (step, learning rate, last finite loss; nothing is
   exported), and so does a validation loss that is not finite;
5. the validation loss, then :func:`probseq.interop.fla.export_fla` writes ``OUT`` as an fla
   ``GatedDeltaNetForCausalLM`` directory (``config.json``, ``model.safetensors``) with the tokenizer files, so
   ``probseq distill --teacher OUT`` reads the same layout as a real fla checkpoint; ``OUT/train_log.json`` has the
   config, token count, timings and the loss history.

The token budget ``tokens`` sets the steps: ``max_steps = ceil(tokens / (batch_size · seq_len ·
gradient_accumulation_steps · world_size))``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from probseq.files import atomic_write_json, finite_or_none, nonfinite_to_none
from probseq.train.run_folder import claim_run_folder
from probseq.train.schema import (
    check_fields,
    check_optimizer_run,
    check_seeds,
    check_warmup,
    from_dict,
    non_negative,
    positive,
    with_overrides,
)
from probseq.train.trainer import (
    AnswerWeightedTrainer,
    LossOnlyTrainer,
    TrainingDiverged,
    progress_bars,
    run_threads,
    run_trainer,
    shared_arguments,
)

TRAIN_LOG = "train_log.json"
RUN_CONFIG = "probseq_run_config.json"


@dataclass(frozen=True, kw_only=True)
class LMRunConfig:
    """What a pretraining and a distillation run share: packed blocks of the corpus, AdamW with a schedule, and run
    settings. The defaults are distillation's; :class:`PretrainConfig` changes five of them.

    Attributes:
        seq_len: tokens per training sequence (the training context).
        batch_size: sequences per device per micro-batch; gradient_accumulation_steps: micro-batches per step.
        weight_decay, warmup (fraction of the steps when < 1, else steps), adam_beta1, adam_beta2, max_grad_norm,
            lr_scheduler: AdamW and its schedule (per stage, in distillation).
        seed: document order and batch order (and the initialisation, in pretraining).
        precision: ``"bf16"`` / ``"fp16"`` autocast on a GPU, ``"fp32"`` none.
        corpus_dir: the corpus cache (``""``: ``~/.cache/probseq/corpus`` or ``$PROBSEQ_CORPUS_DIR``).
        valid_blocks: validation sequences for the logged metrics (at most).
        retrieval_share: fraction of the training tokens that are retrieval-format documents. 0 (the default):
            the corpus as built (its retrieval documents are ≈ 18 % of the tokens). In (0, 1): the training
            stream is built for the run (:func:`mixed_token_array`): the corpus' book documents (KJV, Python docs;
            repeated in reshuffled epochs when the run needs more) and freshly generated retrieval documents
            (stream ``EXTRA_RETRIEVAL_SEED + seed`` in pretraining, ``"distill:<seed>"`` in
            distillation, so a student never sees its teacher's documents; the corpus' own retrieval documents are
            not used) in this proportion, each document whole inside one block (longer ones are dropped), exactly
            the tokens of the run's steps, read in order (no epoch repeats a block).
        retrieval_scale: haystack size of the generated documents at the last stage (``scale`` of
            :func:`~probseq.data.retrieval_text.retrieval_document`; 1: the corpus' sizes); stage ``k`` of
            ``retrieval_stages`` draws at ``1 + (retrieval_scale − 1) · k / (stages − 1)``. Documents longer than
            ``seq_len`` are dropped, so at ``seq_len`` 512 a larger scale mostly shifts the kept documents towards
            the block's length (and the kinds towards the shorter ones): the summary of the mixed stream says how.
        retrieval_curriculum: the run is cut into ``retrieval_stages`` consecutive parts, part ``k`` holding
            retrieval documents of at most ``(k + 1)/stages · seq_len`` tokens (short haystacks first) and its share
            of the book text; off: the stages' blocks shuffled over the whole run.
        retrieval_stages: stages of haystack sizes (and parts of the run, with the curriculum).
        retrieval_queries: half the generated documents are ``queries`` documents — needles for several keys, then
            every key asked and answered (:func:`~probseq.data.retrieval_text.retrieval_document`, ``queries``): one
            retrieval per key instead of one per document.
        save_steps, save_total_limit, logging_steps, progress, num_threads: run settings (not the result).
    """

    seq_len: int = 512
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    corpus_dir: str = ""
    valid_blocks: int = 16
    save_steps: int = 100
    save_total_limit: int = 1
    logging_steps: int = 10
    progress: bool = True
    num_threads: int | None = None
    # the retrieval mix (the teacher pilots); the defaults are the runs made before it: the corpus as built
    retrieval_share: float = 0.0
    retrieval_scale: float = 1.0
    retrieval_curriculum: bool = False
    retrieval_stages: int = 4
    retrieval_queries: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        positive(
            self,
            "seq_len",
            "batch_size",
            "gradient_accumulation_steps",
            "adam_beta1",
            "adam_beta2",
            "logging_steps",
            "save_total_limit",
        )
        non_negative(self, "weight_decay", "warmup", "max_grad_norm", "save_steps", "seed", "valid_blocks")
        check_seeds(self, "seed")
        check_warmup(self.warmup, None)
        check_optimizer_run(self)
        positive(self, "retrieval_scale", "retrieval_stages")
        if not 0 <= self.retrieval_share < 1:
            raise ValueError(f"retrieval_share must be in [0, 1), got {self.retrieval_share}")
        if self.retrieval_scale < 1:
            raise ValueError(f"retrieval_scale must be >= 1, got {self.retrieval_scale}")
        if self.retrieval_share == 0 and (
            self.retrieval_scale != 1 or self.retrieval_curriculum or self.retrieval_queries
        ):
            raise ValueError(
                "retrieval_scale, retrieval_curriculum and retrieval_queries shape the generated retrieval "
                "documents: set retrieval_share > 0 as well"
            )

    def identity(self) -> dict[str, Any]:
        """The fields that decide the trained model (a resumed run must match them). A field added after runs were
        made is left out while it holds its default (:data:`ADDED_FIELDS`), so those runs keep their identity and
        resume."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in RUN_ONLY_FIELDS and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
        }

    def tokens_per_step(self, world_size: int = 1) -> int:
        """Tokens of one optimizer step over ``world_size`` processes."""
        return self.batch_size * self.seq_len * self.gradient_accumulation_steps * world_size

    def training_arguments(
        self, output_dir: Path, *, max_steps: int, learning_rate: float, seed: int, in_order: bool = False
    ):
        """``TrainingArguments`` for a causal-LM run on packed blocks (CPU, one GPU, or ``torchrun``); ``in_order``:
        the blocks in the dataset's order (a curriculum), not shuffled by the Trainer."""
        from transformers import TrainingArguments

        return TrainingArguments(
            output_dir=str(output_dir),
            max_steps=max_steps,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.batch_size,
            learning_rate=learning_rate,
            seed=seed,
            data_seed=seed,
            dataloader_drop_last=True,
            train_sampling_strategy="sequential" if in_order else "random",
            # the Trainer copies this into model.config.use_cache, which is saved: False would make generate() rerun
            # the whole sequence for every new token (training forwards never cache anyway)
            use_cache=True,
            **shared_arguments(self),
        )


RUN_ONLY_FIELDS = frozenset(
    {
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "progress",
        "num_threads",
        "corpus_dir",
        "valid_blocks",
        # the teacher pilots' run settings: a time budget (a larger one continues the run on the same schedule) and
        # the evaluations of the learning curve (no random draw, no effect on the weights)
        "max_minutes",
        "probe_every",
        "probe_samples",
        "probe_final_samples",
        "probe_lengths",
        "probe_seed",
        # how the loss is computed (the same loss and gradients to float rounding)
        "skip_logits",
    }
)

#: Fields that decide the model, added after runs were made, with the default that reproduces those runs: left out
#: of :meth:`LMRunConfig.identity` while they hold it (a run folder from before them resumes).
ADDED_FIELDS: dict[str, Any] = {
    "retrieval_share": 0.0,
    "retrieval_scale": 1.0,
    "retrieval_curriculum": False,
    "retrieval_stages": 4,
    "retrieval_queries": False,
    "retention": "learned",  # distillation's student (DistillConfig)
    "answer_weight": 1.0,
    "copy_share": 0.0,
    "use_gate": True,
}

#: Generated retrieval documents of a mixed run (``retrieval_share > 0``) come from the stream
#: ``EXTRA_RETRIEVAL_SEED + seed`` of :func:`probseq.data.retrieval_text.retrieval_document`; the corpus' own come
#: from stream 0 (``prepare_corpus``'s seed), the validation probes from their own streams (probseq.ruler.probes).
EXTRA_RETRIEVAL_SEED = 1000
#: The stream of a mixed run's generated retrieval documents per purpose: pretraining's ``EXTRA_RETRIEVAL_SEED +
#: seed`` (an int), distillation's ``"distill:<seed>"`` (a name no int stream can take: a student is never fine-tuned
#: on the documents of any pretraining seed).
RETRIEVAL_STREAMS = {"pretrain": lambda seed: EXTRA_RETRIEVAL_SEED + seed, "distill": lambda seed: f"distill:{seed}"}


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(LMRunConfig):
    """A pretraining run (presets: :data:`PRESETS`); the run fields are :class:`LMRunConfig`'s.

    Attributes:
        hidden_size, num_hidden_layers, num_heads, head_dim, expand_v, hidden_ratio, conv_size,
            tie_word_embeddings, use_gate: the Gated DeltaNet (fla's ``GatedDeltaNetConfig`` fields of the same
            names; ``use_gate``: the output gate ``RMSNorm(o) ⊙ SiLU(g_proj x)``, fla's default, which at fla's
            initialisation delays learning to copy on a pure copy task: docs/distillation.md, "Teacher pilots").
        vocab_size: entries of the BPE tokenizer trained on the corpus (the model's vocabulary).
        tokens: the token budget (sets the number of optimizer steps).
        learning_rate: AdamW's peak learning rate.
        tokenizer: an existing tokenizer folder to use instead of training one (``""``: train).
        max_minutes: a training-time budget (minutes, evaluations included, over resumes; 0: none): the run stops
            at the first step past it, checkpoints, evaluates and exports as a finished run would (``train_log.json``
            ``out_of_time``). The schedule stays that of ``tokens``: size ``tokens`` to fit the budget.
        probe_every: evaluate every that many steps (and before the first, and at the end) on the validation blocks
            and the retrieval probes (:mod:`probseq.ruler.probes`) into the learning curve ``OUT/curve.{json,csv,png}``
            (:mod:`probseq.train.probe_eval`); 0: no probe evaluation.
        probe_samples: samples per probe and length in the periodic evaluations; probe_final_samples: in the final
            one (0: ``probe_samples``; the first ``probe_samples`` are the periodic ones).
        probe_lengths: the probes' lengths in tokens (prompt + answer).
        probe_seed: the probes' seed.
        answer_weight: the weight in the training loss of each generated retrieval document's answer-line tokens (1:
            every token alike; > 1 needs ``retrieval_share`` > 0): the loss is the weighted mean of the next-token
            cross-entropies (:class:`~probseq.train.trainer.AnswerWeightedTrainer`). At share 0.8 the answer lines
            are ≈ 8 % of the tokens, so most of the loss is text no memory can predict (haystack lines, random
            values); a weight of 20 gives the answers ≈ 64 % of it (docs/distillation.md, "Teacher pilots").
        copy_share: fraction of the training blocks replaced by **copy blocks** (:func:`with_copy_blocks`: random
            token spans, each followed by itself again), the blocks chosen at random with the seed; 0 (the
            default): none. Every token of a span's second copy but its first is predictable only by finding the first
            copy — the copy (induction) step a needle's answer needs (docs/distillation.md, "Teacher pilots").
        skip_logits: training steps compute the loss without materialising the ``[B, T, V]`` logits
            (:class:`~probseq.train.trainer.LossOnlyTrainer`): the same loss and gradients to float rounding, far less
            memory at a large ``B·T·V`` (the ``340m`` preset's float32 logits would be 8.4 GB per device and step);
            on a CPU at the ``small`` shape it is no faster (docs/training.md, "The language-model loss").
    """

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_heads: int = 2
    head_dim: int = 128
    expand_v: float = 1.0
    hidden_ratio: int = 4
    conv_size: int = 4
    tie_word_embeddings: bool = True
    use_gate: bool = True
    vocab_size: int = 8192
    tokens: int = 20_000_000
    learning_rate: float = 1.5e-3
    tokenizer: str = ""
    # distillation's defaults, changed
    gradient_accumulation_steps: int = 2
    weight_decay: float = 0.1
    valid_blocks: int = 64
    save_steps: int = 200
    save_total_limit: int = 2
    # the teacher pilots (docs/distillation.md, "Teacher pilots"); the defaults are the runs made before them
    max_minutes: float = 0.0
    probe_every: int = 0
    probe_samples: int = 32
    probe_final_samples: int = 0
    probe_lengths: tuple[int, ...] = (256, 512, 1024)
    probe_seed: int = 0
    skip_logits: bool = False
    answer_weight: float = 1.0
    copy_share: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "probe_samples")
        non_negative(self, "max_minutes", "probe_every", "probe_final_samples", "probe_seed")
        if self.probe_every and (not self.probe_lengths or min(self.probe_lengths) < 64):
            raise ValueError(f"probe_lengths must be lengths >= 64 tokens, got {list(self.probe_lengths)}")
        positive(
            self,
            "hidden_size",
            "num_hidden_layers",
            "num_heads",
            "head_dim",
            "expand_v",
            "hidden_ratio",
            "conv_size",
            "vocab_size",
            "tokens",
            "learning_rate",
            "valid_blocks",
        )
        if not self.answer_weight > 0:  # (a non-finite number is refused by check_fields)
            raise ValueError(f"answer_weight must be > 0, got {self.answer_weight!r}")
        if self.answer_weight != 1 and self.retrieval_share == 0:
            raise ValueError("answer_weight weighs the generated retrieval documents' answers: set retrieval_share > 0")
        if self.answer_weight != 1 and self.retrieval_queries:
            raise ValueError(
                "answer_weight weighs a document's last answer line only, and a queries document has several: "
                "set retrieval_queries=false or answer_weight=1"
            )
        if self.answer_weight != 1 and self.skip_logits:
            raise ValueError("answer_weight != 1 needs the logits: set skip_logits=false")
        if not 0 <= self.copy_share < 1:
            raise ValueError(f"copy_share must be in [0, 1), got {self.copy_share}")
        if self.vocab_size < 260:
            raise ValueError(f"vocab_size must be >= 260 (256 bytes and the special tokens), got {self.vocab_size}")


#: ``tiny``: a smoke test (seconds); ``small``: the CPU teacher (5.8 M parameters); ``340m``: fla's Gated DeltaNet
#: 340M layout (flame's ``configs/gated_deltanet_340M.json``: hidden 1024, 21 layers, 6 heads × 256, ``expand_v``
#: 2, SwiGLU ratio 4, untied) with its recipe's optimiser (lr 3e-4, 32 × 2048 tokens per device and step) — a GPU
#: run; docs/distillation.md.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=32,
        vocab_size=1024,
        seq_len=128,
        tokens=16_384,
        batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=3e-3,
        save_steps=16,
        logging_steps=4,
        valid_blocks=8,
    ),
    "small": dict(),
    "340m": dict(
        hidden_size=1024,
        num_hidden_layers=21,
        num_heads=6,
        head_dim=256,
        expand_v=2.0,
        tie_word_embeddings=False,
        vocab_size=32000,
        seq_len=2048,
        tokens=2_000_000_000,
        batch_size=32,
        gradient_accumulation_steps=1,
        learning_rate=3e-4,
        warmup=0.03,
        precision="bf16",
        skip_logits=True,
        save_steps=1000,
        logging_steps=32,
    ),
}


def pretrain_config(preset: str = "small", overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """The preset ``preset`` with ``key=value`` overrides (an unknown key or a wrong type is a ``ValueError``
    naming the key)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {tuple(PRESETS)}")
    return with_overrides(from_dict(PretrainConfig, PRESETS[preset]), list(overrides))


def model_config(config: PretrainConfig, tokenizer):
    """The :class:`~probseq.models.ProbSeqConfig` of the Gated DeltaNet (special-token ids from ``tokenizer``;
    ``None``: ``config.vocab_size`` and no special ids — the shape alone, checked before a run claims its folder)."""
    from probseq.models import ProbSeqConfig

    special = (
        {}
        if tokenizer is None
        else {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    )
    return ProbSeqConfig(
        vocab_size=config.vocab_size if tokenizer is None else len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        mixer="gated_deltanet",
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        expand_v=config.expand_v,
        hidden_ratio=config.hidden_ratio,
        conv_size=config.conv_size,
        use_gate=config.use_gate,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.seq_len,
        **special,
    )


# ---------------------------------------------------------------------------------------------------------
# Data: token arrays and packed blocks (shared with distillation)
# ---------------------------------------------------------------------------------------------------------


def tokenize_documents(tokenizer, documents: list[str], seed: int) -> np.ndarray:
    """``<|bos|> doc <|eos|>`` for every document, in a random order drawn from ``seed``, concatenated.

    The bos comes from ``tokenizer(doc)`` (a tokenizer that adds none gets one prepended when it has a bos
    token), the eos is appended. Returns uint16 ids when the vocabulary fits, else int32.
    """
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token (documents are separated by it)")
    pieces = []
    for start in range(0, len(order), 256):
        batch = [documents[i] for i in order[start : start + 256]]
        for ids in tokenizer(batch, add_special_tokens=True)["input_ids"]:
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
            pieces.append(np.asarray([*ids, eos], dtype=np.int64))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return tokens.astype(np.uint16 if len(tokenizer) <= 65536 else np.int32)


class PackedBlocks(torch.utils.data.Dataset):
    """Consecutive blocks of ``seq_len`` tokens of a token array: ``{"input_ids": [T], "labels": [T]}`` (equal;
    the causal-LM loss shifts). Documents run across block boundaries here (the recurrent state starts at zero in
    every block).

    With ``answers`` (a uint8 mask ``[N]`` beside the tokens, :func:`mixed_token_array`) each block also has
    ``"loss_weights": [T]``: ``answer_weight`` where the mask is 1, else 1 (:class:`~probseq.train.trainer.
    AnswerWeightedTrainer`)."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        limit: int | None = None,
        answers: np.ndarray | None = None,
        answer_weight: float = 1.0,
    ):
        if answers is not None and answers.shape != tokens.shape:
            raise ValueError(f"answers has shape {list(answers.shape)}, the tokens {list(tokens.shape)}")
        self.tokens, self.seq_len, self.answers, self.answer_weight = tokens, seq_len, answers, answer_weight
        self.count = len(tokens) // seq_len if limit is None else min(limit, len(tokens) // seq_len)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        block = slice(index * self.seq_len, (index + 1) * self.seq_len)
        ids = torch.from_numpy(self.tokens[block].astype(np.int64))
        if self.answers is None:
            return {"input_ids": ids, "labels": ids.clone()}
        weights = 1 + (self.answer_weight - 1) * torch.from_numpy(self.answers[block].astype(np.float32))
        return {"input_ids": ids, "labels": ids.clone(), "loss_weights": weights}


def corpus_token_arrays(tokenizer, folder: Path, corpus_dir: str, seed: int) -> dict[str, np.ndarray]:
    """The corpus' train and valid splits tokenised (cached as ``folder/{split}.npy`` with a key of the tokenizer
    and the corpus manifest; recomputed when either changes)."""
    from probseq.data import corpus

    paths = corpus.prepare_corpus(corpus_dir or None)  # through the module: tests replace it
    key = json.dumps(
        {
            "tokenizer": tokenizer.backend_tokenizer.to_str()
            if hasattr(tokenizer, "backend_tokenizer")
            else repr(tokenizer),
            "manifest": paths.manifest.read_text(),
            "seed": seed,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in ("train", "valid"):
        path = folder / f"{split}-{digest}.npy"
        if not path.exists():
            tokens = tokenize_documents(tokenizer, list(corpus.iter_documents(paths, split)), seed)
            tmp = folder / f".{path.name}.{os.getpid()}.tmp.npy"  # two runs may build the same stream at once
            np.save(tmp, tokens)
            os.replace(tmp, path)
        arrays[split] = load_token_array(path)
    return arrays


#: 2: every retrieval document whole inside one block, documents longer than ``seq_len`` dropped (1: one stream cut
#: into blocks, so a third to two thirds of the answers were trained without their needle)
#: 3: half the needle documents with question and answer on one line; blocks filled looking ahead
#: 4: only RULER's answer sentence ("… mentioned in the provided text is V") is joined to its question (3 also
#: joined "The special magic number for K is V.", which RULER never writes)
MIX_VERSION = 4
LOOKAHEAD = 32  # documents a retrieval block may skip ahead to fill its space
SHARE_TOLERANCE = 0.01  # a part's retrieval share may fall short of retrieval_share by this much (whole documents)


def stage_scales(config: PretrainConfig) -> list[float]:
    """The haystack scale of each stage of generated retrieval documents (:class:`PretrainConfig`)."""
    stages = config.retrieval_stages
    if stages == 1:
        return [float(config.retrieval_scale)]
    return [1 + (config.retrieval_scale - 1) * k / (stages - 1) for k in range(stages)]


def _document_ids(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """``<|bos|> text <|eos|>`` of every text, as :func:`tokenize_documents` writes them (in the given order; uint16
    ids when the vocabulary fits, else int32)."""
    return [ids for batch in _encoded(tokenizer, texts) for ids in _framed(tokenizer, batch["input_ids"])]


def _answered_document_ids(tokenizer, texts: list[str], starts: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """:func:`_document_ids` of generated documents, and for each how many of its last tokens before the eos are its
    answer: the tokens whose character span ends after ``starts[i]`` (the answer's first character; one tokenizer
    call gives the ids and their offsets, so a fast tokenizer is needed)."""
    ids, counts = [], []
    for begin, batch in zip(range(0, len(texts), 256), _encoded(tokenizer, texts, offsets=True)):
        ids.extend(_framed(tokenizer, batch["input_ids"]))
        first = starts[begin : begin + 256]
        counts.extend(sum(end > start for _, end in spans) for spans, start in zip(batch["offset_mapping"], first))
    return ids, counts


def _encoded(tokenizer, texts: list[str], offsets: bool = False):
    """``tokenizer(batch, add_special_tokens=True)`` of every 256 texts in turn (with ``offset_mapping``)."""
    for start in range(0, len(texts), 256):
        try:
            yield tokenizer(texts[start : start + 256], add_special_tokens=True, return_offsets_mapping=offsets)
        except NotImplementedError:
            raise ValueError(
                "a mixed stream needs a fast tokenizer (character offsets, to find each document's answer)"
            ) from None


def _framed(tokenizer, batch: list[list[int]]) -> list[np.ndarray]:
    """Each id list with a bos in front (unless the tokenizer put one there) and an eos after it."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    dtype = np.uint16 if len(tokenizer) <= 65536 else np.int32
    return [np.asarray([*([bos] if bos is not None and ids[:1] != [bos] else []), *ids, eos], dtype) for ids in batch]


def mixed_token_array(
    tokenizer,
    folder: Path | None,
    config: LMRunConfig,
    blocks: int,
    purpose: Literal["pretrain", "distill"] = "pretrain",
    *,
    answers: bool = False,
) -> tuple[np.ndarray, dict[str, Any]] | tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """The training stream of a run with ``retrieval_share > 0``: ``blocks`` blocks of ``seq_len`` tokens, in the
    order they are trained on (cached as ``folder/mix-<key>.npy`` with its ``.json`` summary; ``folder=None``: the
    corpus' ``streams/`` folder, shared by every run — the key covers the tokenizer, the corpus and every setting,
    so the distillation study's arms build their common stream once).

    **Every retrieval document lies whole inside one block** (a block is one training sequence, and the recurrent
    state starts at zero in each): a document cut by a block boundary would train the answer without its needle.
    Half the needle documents whose answer is RULER's sentence put the question and the answer on one line, as
    RULER's prompts do (the rest on two, as the corpus' own). Generated documents longer than ``seq_len`` (or than
    the curriculum stage's cap) are dropped and the next ones drawn (their count per kind is in the summary: at
    larger haystack scales the long kinds — coded words, word lists — are dropped more often, so the mix of kinds
    shifts towards the short ones).

    With the curriculum, stage ``k`` of ``retrieval_stages`` keeps only documents of at most ``(k + 1)/stages`` of
    ``seq_len`` tokens (short haystacks first; the last stage, every document that fits a block).

    The blocks are cut into ``retrieval_stages`` parts (one part without the curriculum). Part ``k`` uses retrieval
    documents of stage ``k`` (generated from the stream ``RETRIEVAL_STREAMS[purpose](seed)`` at :func:`stage_scales`
    ``[k]``, filler from the corpus' KJV sentences as the corpus' own). A retrieval block takes the next documents
    in stream order that fit its remaining space (looking up to ``LOOKAHEAD`` documents ahead), and the rest of the
    block is book text (the corpus' KJV and Python-docs train documents, consecutive, from epochs each shuffled with
    the seed) split at a random point before and after them. Retrieval blocks are made until the part's retrieval
    tokens reach ``retrieval_share`` of its tokens (a share the documents cannot fill even with every block a
    retrieval block is a ``ValueError``; ``share_reached`` per part in the summary); the other blocks are book text
    alone. The blocks of a part are shuffled among themselves (with the curriculum, part after part; without it,
    the parts' blocks are shuffled together).

    ``purpose="distill"`` draws every random choice (documents, book order, splits, block order) from streams of its
    own: the same settings give another stream than pretraining's, with the same statistics.

    ``answers=True`` also returns the stream's **answer mask** ``[N]`` (uint8): 1 on the tokens of every generated
    document's answer line (its last line; for a needle document whose question and answer share a line, the answer
    sentence after the question), 0 elsewhere (the eos after an answer, book text). It is cached beside the stream; a
    stream cached without its mask is built again for it (the same tokens, checked).

    Returns:
        ``(tokens, summary)`` (``(tokens, summary, answers)`` with ``answers=True``): ``summary`` has
        ``book_tokens``, ``retrieval_tokens``, ``retrieval_documents``, ``retrieval_blocks``, ``book_epochs`` (book
        documents used, in corpus epochs), ``scales``, ``retrieval_document_tokens`` (the mean length of a kept
        document per stage), ``kinds`` (kept documents per kind), ``dropped`` (documents longer than ``seq_len``,
        per kind), ``parts`` (block ranges of the curriculum's parts).
    """
    from probseq.data import corpus
    from probseq.data.retrieval_text import retrieval_document

    paths = corpus.prepare_corpus(config.corpus_dir or None)
    settings = {
        "version": MIX_VERSION,
        "share": config.retrieval_share,
        "scales": stage_scales(config),
        "curriculum": config.retrieval_curriculum,
        "seq_len": config.seq_len,
        "blocks": blocks,
        "seed": config.seed,
        **({} if purpose == "pretrain" else {"purpose": purpose}),  # pretraining's key and summary as before
        **({"queries": True} if config.retrieval_queries else {}),  # the streams made before it keep their keys
    }
    if purpose not in RETRIEVAL_STREAMS:
        raise ValueError(f"purpose must be one of {tuple(RETRIEVAL_STREAMS)}, got {purpose!r}")
    tag = "" if purpose == "pretrain" else f":{purpose}"  # appended to every random stream's name
    key = json.dumps(
        {
            "tokenizer": tokenizer.backend_tokenizer.to_str()
            if hasattr(tokenizer, "backend_tokenizer")
            else repr(tokenizer),
            "manifest": paths.manifest.read_text(),
            **settings,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = paths.manifest.parent / "streams" if folder is None else folder
    path, summary_path = folder / f"mix-{digest}.npy", folder / f"mix-{digest}.json"
    answers_path = folder / f"mix-{digest}.answers.npy"
    if path.exists() and summary_path.exists() and (answers_path.exists() or not answers):
        cached = load_token_array(path), json.loads(summary_path.read_text())
        return (*cached, _answer_mask(answers_path, cached[0])) if answers else cached

    seq_len, scales = config.seq_len, settings["scales"]
    book_texts = list(corpus.iter_documents(paths, "train", ("kjv", "python_docs")))
    if not book_texts:
        raise ValueError("the corpus has no book documents (kjv, python_docs) in its train split")
    book_docs = _document_ids(tokenizer, book_texts)
    sentences = [
        s
        for d in list(corpus.iter_documents(paths, "train", ("kjv",)))[::7]
        for s in re.split(r"(?<=[.;:])\s+", d)
        if 20 <= len(s) <= 160
    ]
    book = _BookTokens(book_docs, f"{config.seed}{tag}")
    stream = RETRIEVAL_STREAMS[purpose](config.seed)
    index = 0  # the next generated document of the stream
    kinds: dict[str, int] = {}
    dropped: dict[str, int] = {}

    def documents(scale: float, longest: int):
        """``(kind, ids, answer)`` of the generated documents that fit a block, in stream order (longer ones counted
        in ``dropped``); ``answer``: how many of the last tokens before the eos are the answer line."""
        nonlocal index
        misses = 0
        while True:
            drawn = [
                _joined(*retrieval_document(stream, index + j, sentences, scale, config.retrieval_queries), index + j)
                for j in range(64)
            ]
            index += len(drawn)
            texts, starts = [text for _, text, _ in drawn], [start for _, _, start in drawn]
            for (kind, _, _), ids, answer in zip(drawn, *_answered_document_ids(tokenizer, texts, starts)):
                if len(ids) > longest:
                    dropped[kind] = dropped.get(kind, 0) + 1
                    misses += 1
                    if misses >= 4096:
                        raise ValueError(
                            f"4096 generated retrieval documents in a row are longer than {longest} tokens (seq_len="
                            f"{seq_len}) at haystack scale {scale:g}: use a longer seq_len or a smaller retrieval_scale"
                        )
                    continue
                misses = 0
                yield kind, ids, answer

    def _joined(kind: str, text: str, number: int) -> tuple[str, str, int]:
        """Half the needle documents whose answer is RULER's sentence (a stream of their own) with the question and
        the answer on one line, as RULER's prompts join them ("…in the provided text? The special magic number for K
        … is V"). Returns ``(kind, text, start)``: ``start``, the answer's first character (of the last line)."""
        if kind == "needle" and random.Random(f"probseq-pretrain-join:{config.seed}:{number}{tag}").random() < 0.5:
            head, question, answer = text.rsplit("\n", 2)
            ruler = answer.startswith("The special magic") and "mentioned in the provided text is" in answer
            if question.endswith("?") and ruler:  # RULER's answer sentence only
                text = f"{head}\n{question} {answer}"
                return kind, text, len(text) - len(answer)
        return kind, text, text.rfind("\n") + 1

    part_blocks = [blocks // len(scales) + (k < blocks % len(scales)) for k in range(len(scales))]
    parts: list[list[np.ndarray]] = []
    masks_of_parts: list[list[np.ndarray]] = []  # the answer masks of the parts' blocks
    retrieval_tokens = retrieval_documents = retrieval_blocks = 0
    mean_lengths, reached = [], []
    for k, (scale, count) in enumerate(zip(scales, part_blocks)):
        rng = random.Random(f"probseq-pretrain-mix:{MIX_VERSION}:{config.seed}:{k}{tag}")
        target, made, kept, part = config.retrieval_share * count * seq_len, 0, 0, []
        # the curriculum's stage k keeps documents of at most (k + 1)/stages of a block: short haystacks first
        longest = seq_len * (k + 1) // len(scales) if config.retrieval_curriculum else seq_len
        source, waiting, part_masks = documents(scale, longest), [], []
        while made < target and len(part) < count:
            contents, masks, free = [], [], seq_len
            while True:  # the next documents in stream order that fit, looking up to LOOKAHEAD ahead
                waiting.extend(next(source) for _ in range(LOOKAHEAD - len(waiting)))
                fits = next((i for i, (_, ids, _) in enumerate(waiting) if len(ids) <= free), None)
                if fits is None:
                    break
                kind, ids, answer = waiting.pop(fits)
                contents.append(ids)
                mask = np.zeros(len(ids), dtype=np.uint8)
                mask[len(ids) - 1 - answer : len(ids) - 1] = 1  # the answer line's tokens, not the eos after it
                masks.append(mask)
                kinds[kind] = kinds.get(kind, 0) + 1
                free -= len(ids)
            before = rng.randint(0, free)
            part.append(np.concatenate([book.take(before), *contents, book.take(free - before)]))
            part_masks.append(np.concatenate([np.zeros(before, np.uint8), *masks, np.zeros(free - before, np.uint8)]))
            made += seq_len - free
            kept += len(contents)
        if made < target - SHARE_TOLERANCE * count * seq_len:
            raise ValueError(
                f"retrieval_share {config.retrieval_share} cannot be reached: with every block of part {k} holding "
                f"retrieval documents they fill {made / (count * seq_len):.3f} of its tokens; lower the share"
            )
        reached.append(made / (count * seq_len))
        retrieval_tokens += made
        retrieval_documents += kept
        retrieval_blocks += len(part)
        mean_lengths.append(made / max(1, kept))
        part.extend(book.take(seq_len) for _ in range(count - len(part)))
        part_masks.extend(np.zeros(seq_len, np.uint8) for _ in range(count - len(part_masks)))
        parts.append(part)
        masks_of_parts.append(part_masks)
    if len(scales) > 1 and not config.retrieval_curriculum:  # one part: the stages' blocks shuffled together
        parts = [[b for part in parts for b in part]]
        masks_of_parts = [[m for part in masks_of_parts for m in part]]
    order, ranges, start = [], [], 0
    for k, part in enumerate(parts):
        shuffled = list(range(start, start + len(part)))
        random.Random(f"probseq-pretrain-blocks:{config.seed}:{k}{tag}").shuffle(shuffled)
        order.extend(shuffled)
        ranges.append([start, start + len(part)])
        start += len(part)
    grid = np.stack([b for part in parts for b in part])
    tokens = grid[np.asarray(order, dtype=np.int64)].reshape(-1)
    mask = np.stack([m for part in masks_of_parts for m in part])[np.asarray(order, dtype=np.int64)].reshape(-1)
    summary = {
        **settings,
        "book_tokens": int(blocks * seq_len - retrieval_tokens),
        "retrieval_tokens": int(retrieval_tokens),
        "retrieval_documents": retrieval_documents,
        "retrieval_blocks": retrieval_blocks,
        "book_epochs": book.used / len(book_docs),
        "retrieval_document_tokens": mean_lengths,
        "share_reached": reached,
        "kinds": kinds,
        "dropped": dropped,
        "parts": ranges,
    }
    folder.mkdir(parents=True, exist_ok=True)
    if path.exists() and not np.array_equal(load_token_array(path), tokens):  # rebuilt for its answer mask
        raise ValueError(f"{path}: the cached stream differs from the one these settings build; delete it")
    for array, target in ((mask, answers_path), (tokens, path)):  # the answers first: a stream implies them
        tmp = folder / f".{target.name}.{os.getpid()}.tmp.npy"  # two runs may build the same stream at once
        np.save(tmp, array)
        os.replace(tmp, target)
    atomic_write_json(summary_path, summary)
    tokens = load_token_array(path)
    return (tokens, summary, _answer_mask(answers_path, tokens)) if answers else (tokens, summary)


#: A copy block's spans are ``COPY_SPAN`` = (shortest, longest) tokens long, uniformly; the random stream of the
#: copy blocks is ``[COPY_STREAM, seed]`` (no other draw of a run uses it).
COPY_SPAN = (8, 64)
COPY_STREAM = 7919


def with_copy_blocks(
    tokens: np.ndarray, seq_len: int, share: float, seed: int, tokenizer, answers: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """The token array with ``round(share · blocks)`` of its ``seq_len`` blocks (chosen at random) replaced by copy
    blocks: segments ``<bos> x x <eos>``, ``x`` a span of ``COPY_SPAN`` tokens drawn uniformly from the vocabulary's
    non-special tokens, packed until the block is full (the last segment cut at the block's end).

    In the second copy of ``x`` every token but the first is predictable exactly — by finding the previous
    occurrence of the token before it and reading what followed (an induction step) — and by nothing else; the first
    copy is unpredictable (≈ ln V nats a token). ``answers`` (a mask beside the tokens) is zeroed on the copy blocks.

    Args:
        tokens: ``[N]`` token ids (not modified: a copy is returned when any block is replaced).
        seq_len: tokens per block; share: fraction of the ``N // seq_len`` blocks to replace, in [0, 1).
        seed: the run's seed (stream ``[COPY_STREAM, seed]``).
        tokenizer: its ``len`` and ``all_special_ids`` give the drawn ids; ``bos_token_id``/``eos_token_id`` the
            separators (a missing bos is left out).

    Returns:
        ``(tokens, answers, replaced)``: ``replaced``, how many blocks are copy blocks.
    """
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1), got {share}")
    count = len(tokens) // seq_len
    replaced = round(share * count)
    if replaced == 0:
        return tokens, answers, 0
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token (a copy block's segments end with it)")
    ids = np.setdiff1d(np.arange(len(tokenizer)), np.asarray(tokenizer.all_special_ids, dtype=np.int64))
    rng = np.random.default_rng([COPY_STREAM, seed])
    chosen = np.sort(rng.permutation(count)[:replaced])
    tokens = np.array(tokens, copy=True)
    answers = None if answers is None else np.array(answers, copy=True)
    head = [] if bos is None else [bos]
    for block in chosen:
        pieces, filled = [], 0
        while filled < seq_len:
            span = rng.choice(ids, size=int(rng.integers(COPY_SPAN[0], COPY_SPAN[1] + 1)))
            segment = np.concatenate([head, span, span, [eos]]).astype(tokens.dtype)
            pieces.append(segment)
            filled += len(segment)
        tokens[block * seq_len : (block + 1) * seq_len] = np.concatenate(pieces)[:seq_len]
        if answers is not None:
            answers[block * seq_len : (block + 1) * seq_len] = 0
    return tokens, answers, replaced


def _answer_mask(path: Path, tokens: np.ndarray) -> np.ndarray:
    """The cached answer mask of a mixed stream (memory-mapped), checked against its tokens."""
    mask = np.load(path, mmap_mode="r")
    if mask.shape != tokens.shape or mask.dtype != np.uint8:
        raise ValueError(f"{path}: not the answer mask of its stream ({mask.dtype} {list(mask.shape)}); delete it")
    return mask


class _BookTokens:
    """The book documents as one token stream (consecutive documents from epochs each shuffled with the seed);
    :meth:`take` hands out the next ``n`` tokens."""

    def __init__(self, documents: list[np.ndarray], seed: int | str):
        self.documents, self.seed = documents, seed
        self.epoch, self.order, self.position = -1, [], 0
        self.buffer, self.used = documents[0][:0], 0

    def _next_document(self) -> np.ndarray:
        if self.position == len(self.order):
            self.epoch += 1
            self.order = list(range(len(self.documents)))
            random.Random(f"probseq-pretrain-books:{self.seed}:{self.epoch}").shuffle(self.order)
            self.position = 0
        self.position += 1
        self.used += 1
        return self.documents[self.order[self.position - 1]]

    def take(self, count: int) -> np.ndarray:
        while len(self.buffer) < count:
            self.buffer = np.concatenate([self.buffer, self._next_document()])
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out


def load_token_array(path: Path) -> np.ndarray:
    """A cached token array ``[N]`` (memory-mapped); a ``ValueError`` naming the file when it is not a 1-D array
    of integers (truncated, or written by something else)."""
    advice = "delete it to tokenise the corpus again"
    try:
        tokens = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path} is not a token array ({error}); {advice}") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"{path} must hold a 1-D array of token ids, got shape {list(tokens.shape)} of {tokens.dtype}; {advice}"
        )
    return tokens


# ---------------------------------------------------------------------------------------------------------
# Trainer plumbing (shared with distillation)
# ---------------------------------------------------------------------------------------------------------


def check_run_config(folder: Path, identity: dict[str, Any]) -> None:
    """Claim ``--out`` for this run (:func:`~probseq.train.run_folder.claim_run_folder`): writable, and not a run of
    another config; the identity is recorded in ``RUN_CONFIG`` there."""
    claim_run_folder(folder, RUN_CONFIG, identity, "--out")


def copy_tokenizer(tokenizer, dst: Path) -> None:
    """Save ``tokenizer``'s files into ``dst`` (next to a model)."""
    tokenizer.save_pretrained(str(dst))


# ---------------------------------------------------------------------------------------------------------
# The learning curve (the teacher pilots)
# ---------------------------------------------------------------------------------------------------------


def learning_curve(config: PretrainConfig, out: Path, tokenizer, valid_data, tokens_per_step: int, trainer):
    """The :class:`~probseq.train.probe_eval.ProbeCurve` of the run, added to ``trainer`` (``None`` when
    ``probe_every`` is 0, and on processes other than the first)."""
    if not config.probe_every or not trainer.is_world_process_zero():
        return None
    from probseq.ruler.probes import PROBES
    from probseq.train.probe_eval import ProbeCurve, build_probe_sets

    records = build_probe_sets(tokenizer, PROBES, config.probe_lengths, config.probe_samples, config.probe_seed)
    curve = ProbeCurve(
        out,
        tokenizer,
        records,
        valid_data,
        config.probe_every,
        tokens_per_step,
        batch_size=config.batch_size,
        title=out.name,
    )
    curve.trainer = trainer  # the TrainingClock that run_trainer adds gives the seconds column
    trainer.add_callback(curve)
    return curve


def final_evaluation(config: PretrainConfig, curve, model, tokenizer, state, run) -> dict:
    """The last row of the learning curve (``final``: with ``probe_final_samples`` samples), unless a rerun of a
    finished run finds it there already; returns its probe summary."""
    from probseq.ruler.probes import PROBES
    from probseq.train.probe_eval import build_probe_sets

    for row in curve.rows:
        if row["step"] == state.global_step and row.get("final"):
            return row["probes"]
    samples = max(config.probe_final_samples, config.probe_samples)
    records = (
        build_probe_sets(tokenizer, PROBES, config.probe_lengths, samples, config.probe_seed)
        if samples != config.probe_samples
        else None
    )
    row = curve.evaluate(model, state, train_loss=curve.last_train_loss, records=records, final=True)
    return row["probes"]


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def pretrain(config: PretrainConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) the pretraining ``config`` in ``out``; export the model there as an fla checkpoint.

    Returns:
        The ``train_log.json`` content: ``config``, ``tokens`` (trained; ``steps × tokens_per_step``),
        ``tokens_per_step``, ``steps``, ``resumed_from_step``, ``seconds``, ``seconds_per_step``,
        ``train_seconds`` (over all resumes), ``tokens_per_second``, ``train_loss``, ``valid_loss``,
        ``num_parameters``, ``corpus_tokens``, ``history``.
    """
    from transformers import PrinterCallback, Trainer, default_data_collator, set_seed

    from probseq.data import corpus as corpus_lib
    from probseq.data import load_tokenizer, train_tokenizer
    from probseq.interop.fla import export_fla
    from probseq.models import ProbSeqForCausalLM

    out = Path(out)
    model_config(config, None)  # a model shape that cannot be built is refused before the folder is claimed
    check_run_config(out, config.identity())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    tokens_per_step = config.tokens_per_step(world_size)
    max_steps = math.ceil(config.tokens / tokens_per_step)
    mixed = config.retrieval_share > 0
    with run_threads(config.num_threads), progress_bars(config.progress):
        args = config.training_arguments(
            out / "checkpoints",
            max_steps=max_steps,
            learning_rate=config.learning_rate,
            seed=config.seed,
            in_order=mixed,
        )
        with args.main_process_first(desc="corpus, tokenizer and token arrays"):
            if config.tokenizer:
                tokenizer = load_tokenizer(config.tokenizer)
            elif (out / "tokenizer" / "tokenizer.json").exists():
                tokenizer = load_tokenizer(out / "tokenizer")
            else:
                paths = corpus_lib.prepare_corpus(config.corpus_dir or None)
                tokenizer = train_tokenizer(
                    corpus_lib.iter_documents(paths, "train"), out / "tokenizer", config.vocab_size
                )
            arrays = corpus_token_arrays(tokenizer, out / "data", config.corpus_dir, config.seed)
            mix = answers = None
            if mixed:
                blocks = max_steps * config.batch_size * config.gradient_accumulation_steps * world_size
                if config.answer_weight != 1:
                    arrays["train"], mix, answers = mixed_token_array(tokenizer, None, config, blocks, answers=True)
                else:
                    arrays["train"], mix = mixed_token_array(tokenizer, None, config, blocks)
        arrays["train"], answers, copy_blocks = with_copy_blocks(
            arrays["train"], config.seq_len, config.copy_share, config.seed, tokenizer, answers
        )
        train_data = PackedBlocks(arrays["train"], config.seq_len, answers=answers, answer_weight=config.answer_weight)
        valid_data = PackedBlocks(arrays["valid"], config.seq_len, limit=config.valid_blocks)
        if len(train_data) < config.batch_size * world_size:
            raise ValueError(
                f"the corpus has {len(train_data)} training sequences of {config.seq_len} tokens, fewer "
                f"than one batch ({config.batch_size} × {world_size} devices)"
            )
        set_seed(config.seed)
        model = ProbSeqForCausalLM(model_config(config, tokenizer))
        trainer_class = (
            AnswerWeightedTrainer if answers is not None else LossOnlyTrainer if config.skip_logits else Trainer
        )
        trainer = trainer_class(model=model, args=args, train_dataset=train_data, data_collator=default_data_collator)
        if not config.progress:
            trainer.remove_callback(PrinterCallback)
        curve = learning_curve(config, out, tokenizer, valid_data, tokens_per_step, trainer)
        run = run_trainer(
            trainer, out / "checkpoints", max_seconds=config.max_minutes * 60 if config.max_minutes else None
        )
        if run.diverged is not None:  # no model is exported; the checkpoints before the step stay
            raise TrainingDiverged(f"pretraining in {out}: {run.diverged['message']}")
        valid_loss = trainer.evaluate(eval_dataset=valid_data).get("eval_loss") if len(valid_data) else None
        if valid_loss is None and len(valid_data):  # fewer blocks than one evaluation batch (the Trainer drops it)
            from probseq.train.probe_eval import valid_loss as blocks_loss

            model = trainer.accelerator.unwrap_model(trainer.model).eval()
            with torch.no_grad():
                valid_loss = blocks_loss(model, valid_data, config.batch_size)
        if valid_loss is not None and not math.isfinite(valid_loss):  # the last updates made the outputs overflow
            raise TrainingDiverged(
                f"pretraining in {out}: the validation loss is not finite ({valid_loss}) after "
                f"step {run.output.global_step}; lower the learning rate"
            )
        model = trainer.accelerator.unwrap_model(trainer.model)
        final_probes = None
        if curve is not None and trainer.is_world_process_zero():
            final_probes = final_evaluation(config, curve, model, tokenizer, trainer.state, run)
    steps = run.output.global_step
    log = {
        "config": dataclasses.asdict(config),
        "kind": "pretrain",
        "mixer": "gated_deltanet",
        "tokens": steps * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "resumed_from_step": run.resumed_from_step,
        "seconds": run.seconds,
        "seconds_per_step": run.seconds_per_step,
        "train_seconds": run.train_seconds,
        "tokens_per_second": tokens_per_step / run.seconds_per_step if run.seconds_per_step else 0.0,
        "train_loss": finite_or_none(run.output.training_loss),
        "valid_loss": finite_or_none(valid_loss),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "corpus_tokens": {split: int(len(a)) for split, a in arrays.items()},
        "history": nonfinite_to_none(trainer.state.log_history),  # grad_norm is inf at an fp16 overflow step
    }
    if config.retrieval_share or config.max_minutes or config.probe_every:  # the teacher pilots' fields
        log.update(max_steps=max_steps, out_of_time=run.out_of_time, mix=mix)
        if final_probes is not None:
            log.update(probes=nonfinite_to_none(final_probes), eval_seconds=curve.eval_seconds)
    if config.copy_share:
        log.update(copy_blocks=copy_blocks)
    if trainer.is_world_process_zero():
        with progress_bars(config.progress):
            export_fla(model, out)
        copy_tokenizer(tokenizer, out)
        atomic_write_json(out / TRAIN_LOG, log)
    return log


__all__ = [
    "PRESETS",
    "LMRunConfig",
    "PackedBlocks",
    "PretrainConfig",
    "corpus_token_arrays",
    "mixed_token_array",
    "model_config",
    "pretrain",
    "pretrain_config",
    "tokenize_documents",
    "with_copy_blocks",
]
