"""Retrieval probes: a validation set of our own, in RULER's niah format but not RULER's samples
(docs/architecture.md, floor 5; scored by :mod:`probseq.train.probe_eval`).

The teacher pilots (docs/distillation.md, "Teacher pilots") choose a pretraining recipe by how well the model
retrieves. Choosing on RULER itself would tune the recipe to the benchmark it is then measured on, so they choose on
these probes: prompts built from :mod:`probseq.data.retrieval_text`'s formats (its needle sentence, instructions,
questions and answer sentence — the formats pretraining shows) that mirror two RULER tasks:

============  ==================  ==========================================================================
probe         mirrors             prompt
============  ==================  ==========================================================================
``single``    ``niah_single_1``   one needle "One of the special magic numbers for {key} is: {value}." (an
                                  adjective-noun key, a 7-digit value) among filler lines
                                  (:data:`~probseq.data.retrieval_text.FILLER`), then the question
``multikey``  ``niah_multikey_2`` the same needle among needles for other keys (every haystack line is a
                                  distractor needle, as RULER's ``needle`` haystack), one key asked
============  ==================  ==========================================================================

A prompt is ``instruction \\n haystack lines \\n question \\n answer prefix``, the answer prefix being
"Answer: The special magic number for {key} mentioned in the provided text is" (the start of the answer sentence
pretraining documents end with); the expected continuation is ``" " + value``. The haystack is as long as fits:
the prompt and its answer together hold at most ``length`` tokens of the evaluated model's tokenizer (``<|bos|>``
included), the needle at a depth drawn uniformly.

**Independent of pretraining and of RULER.** Every sample draws from its own ``random.Random`` seeded with the
string ``"probseq-retrieval-probe:{probe}:{seed}:{length}:{index}"``; pretraining's retrieval documents draw from
``"probseq-retrieval-text:{seed}:{index}"`` streams, RULER from ``random.Random(<small int>)``: no stream is shared
whatever the seeds (``tests/train/test_teacher_pilots.py`` checks that no probe needle appears in pretraining's
documents). Deterministic given ``(probe, tokenizer, length, samples, seed)``, and the first ``n`` samples of a set
do not depend on how many are drawn, so a larger final set contains the periodic one.
"""

from __future__ import annotations

import random

from probseq.data.retrieval_text import FILLER, INSTRUCTIONS, NEEDLE, QUESTIONS, draw_value
from probseq.ruler.common import count_tokens

PROBES = ("single", "multikey")
#: The RULER task each probe mirrors.
MIRRORS = {"single": "niah_single_1", "multikey": "niah_multikey_2"}
ANSWER_PREFIX = "Answer: The special magic number for {key} mentioned in the provided text is"
SEPARATOR = " "
STREAM = "probseq-retrieval-probe"


def _prompt(instruction: str, lines: list[str], question: str, key: str) -> str:
    return "\n".join([instruction, "\n".join(lines), question, ANSWER_PREFIX.format(key=key)])


def _token_count(tokenizer, text: str) -> int:
    """Tokens the model reads for ``text``: with the special tokens ``tokenizer(text)`` adds (``<|bos|>``)."""
    try:
        return len(tokenizer(text)["input_ids"])
    except (TypeError, KeyError):  # not a transformers tokenizer: count without special tokens, plus a bos
        return count_tokens(tokenizer, text) + 1


def probe_sample(probe: str, tokenizer, length: int, index: int, seed: int = 0) -> dict:
    """Sample ``index`` of the probe set ``(probe, length, seed)``.

    Returns:
        ``{"probe", "length", "index", "prompt", "separator", "answer", "key", "lines", "needles", "depth",
        "tokens"}``: the prompt ends with the answer prefix; ``separator + answer`` is the expected continuation
        (``answer``: the 7-digit value); ``lines``: haystack lines including the needle; ``needles``: needle
        sentences in the prompt; ``depth``: the needle's line index over the line count; ``tokens``: of prompt +
        continuation (at most ``length``).
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose from {PROBES}")
    rng = random.Random(f"{STREAM}:{probe}:{seed}:{length}:{index}")
    key, value = draw_value(rng, "words"), draw_value(rng, "numbers")
    instruction = rng.choice(INSTRUCTIONS).format(noun="numbers")
    question = rng.choice(QUESTIONS).format(one="number", key=key)
    depth = rng.random()
    pool = max(8, length // 3)  # more lines than any prompt of `length` tokens holds (a line is >= 4 tokens)
    if probe == "single":
        filler = [rng.choice(FILLER) for _ in range(pool)]
    else:
        filler = []
        while len(filler) < pool:
            other = draw_value(rng, "words")
            if other != key:
                filler.append(NEEDLE.format(noun="numbers", key=other, value=draw_value(rng, "numbers")))
    needle = NEEDLE.format(noun="numbers", key=key, value=value)

    def build(count: int) -> tuple[str, list[str]]:
        lines = filler[:count]
        lines.insert(round(depth * count), needle)
        return _prompt(instruction, lines, question, key), lines

    def tokens(count: int) -> int:
        return _token_count(tokenizer, build(count)[0] + SEPARATOR + value)

    lo, hi, best = 0, pool, None  # the largest haystack that fits (the token count grows with the line count)
    while lo <= hi:
        mid = (lo + hi) // 2
        if tokens(mid) <= length:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise ValueError(f"length {length} is too short for a {probe} probe: the needle alone needs {tokens(0)} tokens")
    prompt, lines = build(best)
    return {
        "probe": probe,
        "length": length,
        "index": index,
        "prompt": prompt,
        "separator": SEPARATOR,
        "answer": value,
        "key": key,
        "lines": len(lines),
        "needles": sum("special magic numbers for" in line for line in lines),
        "depth": round(depth * best) / max(best, 1),
        "tokens": tokens(best),
    }


def probe_set(probe: str, tokenizer, length: int, samples: int, seed: int = 0) -> list[dict]:
    """Samples ``0 … samples − 1`` of the probe set ``(probe, length, seed)`` (:func:`probe_sample`)."""
    return [probe_sample(probe, tokenizer, length, index, seed) for index in range(samples)]


__all__ = ["ANSWER_PREFIX", "MIRRORS", "PROBES", "SEPARATOR", "probe_sample", "probe_set"]
