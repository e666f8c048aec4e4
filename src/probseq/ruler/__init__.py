"""Offline reimplementation of RULER's synthetic retrieval tasks (NVIDIA/RULER, Hsieh et al. 2024).

``generate(task, tokenizer, max_seq_length, num_samples, seed)`` builds RULER-format samples for
``niah_single_1``, ``niah_multikey_2``, ``niah_multikey_3``, ``vt``, ``cwe`` and ``fwe`` with RULER's
default arguments, templates and length fitting; ``metrics`` scores predictions as RULER does.
RULER's essay haystack (Paul Graham essays) is not available offline and is not supported.

Typical use::

    task = "niah_single_1"
    recs = generate(task, tok, 4096, num_samples=100, seed=42)
    preds = [complete(r["input"] + r["answer_prefix"], max_new_tokens=tokens_to_generate(task))
             for r in recs]  # the generated continuation only
    score(task, preds, [r["outputs"] for r in recs])

With the same tokenizer (counted with ``tokenizer.tokenize``), seed and length, the samples are
identical to those of RULER's own generator scripts.

:mod:`probseq.ruler.probes` is not RULER: retrieval probes of our own in RULER's niah format (own templates'
formats, own random streams), the validation set the teacher pilots choose on (docs/distillation.md §9).
"""

from .metrics import postprocess_pred, score, string_match_all, string_match_part
from .tasks import TASKS, generate, tokens_to_generate

__all__ = [
    "TASKS",
    "generate",
    "tokens_to_generate",
    "string_match_all",
    "string_match_part",
    "postprocess_pred",
    "score",
]
