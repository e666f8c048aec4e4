"""A byte-level BPE tokenizer trained offline with ``tokenizers``, saved as a ``PreTrainedTokenizerFast`` folder.

- Model: BPE over bytes (GPT-2's byte-to-unicode alphabet, so every string encodes; no unknown token).
- Pre-tokenizer: digits one by one (``Digits(individual_digits=True)``, as LLaMA's tokenizer does — a model then
  copies a 7-digit number token by token instead of through arbitrary digit merges), then GPT-2's byte-level
  regex split.
- Special tokens: ``<|pad|>`` = 0, ``<|bos|>`` = 1, ``<|eos|>`` = 2 (the ids :class:`~probseq.models.ProbSeqConfig`
  and fla's ``GatedDeltaNetConfig`` expect for bos / eos). ``tokenizer(text)`` prepends ``<|bos|>`` (LLaMA's
  convention, so an fla checkpoint's tokenizer and this one are used alike); ``tokenizer.tokenize(text)`` —
  what RULER counts — has no special tokens. Pretraining documents are ``<|bos|> text <|eos|>``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 8192, min_frequency: int = 2):
    """Train the byte-level BPE on ``texts`` and save it to ``out_dir`` (atomically: a temporary folder, then a
    rename; an existing ``out_dir`` is replaced).

    Args:
        texts: the training documents.
        out_dir: the tokenizer folder (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``).
        vocab_size: entries including the 3 special tokens and the 256 bytes.
        min_frequency: a merge must occur at least this often.

    Returns:
        The ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(
            f"vocab_size must be > {256 + len(SPECIAL_TOKENS)} (bytes and special tokens), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        fast.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fast


def load_tokenizer(folder: str | os.PathLike):
    """``AutoTokenizer.from_pretrained(folder)``, with a ``ValueError`` naming the folder when it holds none."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # an fla folder's config.json has a model type transformers does not know: harmless
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a tokenizer from {folder}: {error}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


__all__ = ["BOS", "EOS", "PAD", "SPECIAL_TOKENS", "load_tokenizer", "train_tokenizer"]
