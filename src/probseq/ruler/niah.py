"""Needle in a haystack (RULER ``niah.py``): key-value needles hidden in filler lines; the model is
asked for the value(s) of the queried key(s)."""

from __future__ import annotations

import random

from .common import NEEDLE, NOISE, count_tokens, draw_fitting, largest_fitting, random_value, record

TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it."
    " I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
TOKENS_TO_GENERATE = 128
HAYSTACKS = ("noise", "needle")


def _singular(template: str) -> str:
    """RULER's rewording when exactly one value is asked for (applied to the whole prompt template)."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(old, new)
    return template


def _prompt(
    rng, seed, template, size, type_haystack, type_needle_k, type_needle_v, num_needle_k, num_needle_v, num_needle_q
):
    num_k = max(num_needle_k, num_needle_q)
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(random_value(rng, type_needle_k))
        values.append([])
        for _ in range(num_needle_v):
            values[-1].append(random_value(rng, type_needle_v))
            needles.append(NEEDLE.format(type_needle_v=type_needle_v, key=keys[-1], value=values[-1][-1]))
    random.Random(seed).shuffle(needles)

    if type_haystack == "noise":
        lines = [NOISE] * size
    else:  # "needle": distractor needles with their own random keys and values (key drawn first)
        lines = []
        for _ in range(size):
            key = random_value(rng, type_needle_k)
            lines.append(NEEDLE.format(type_needle_v=type_needle_v, key=key, value=random_value(rng, type_needle_v)))
    # insert from the back so the drawn positions refer to the original lines
    for pos, needle in zip(sorted(rng.sample(range(size), len(needles)), reverse=True), needles):
        lines.insert(pos, needle)

    asked = rng.sample(range(num_k), num_needle_q)
    queries = [keys[i] for i in asked]
    answers = [v for i in asked for v in values[i]]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    noun = type_needle_v
    if num_needle_q * num_needle_v == 1:
        template, noun = _singular(template), type_needle_v[:-1]
    return template.format(type_needle_v=noun, context="\n".join(lines), query=query), answers


def generate(tokenizer, max_seq_length, num_samples, seed, template, *, type_haystack, **needles):
    """Samples of one niah configuration. ``template`` is the full prompt template (task template in
    the model template, then the answer prefix); ``needles``: type_needle_k/v, num_needle_k/v/q."""
    if type_haystack not in HAYSTACKS:
        raise ValueError(f"niah haystack {type_haystack!r}: supported {HAYSTACKS} (essay is not)")
    rng = random.Random(seed)
    budget = max_seq_length - TOKENS_TO_GENERATE

    def make(size):
        text, answers = _prompt(rng, seed, template, size, type_haystack, **needles)
        return text, answers, count_tokens(tokenizer, text)

    step = 5 if max_seq_length < 4096 else 25  # haystack lines per step
    per_line = make(step)[2] / step
    hi = max(int(max_seq_length / per_line * 3), 2 * step)
    size = largest_fitting(lambda n: make(n)[2], budget, step, hi) or step

    out = []
    for index in range(num_samples):
        text, answers, n = draw_fitting(make, size, step, budget)
        rec = record(index, text, answers, n + TOKENS_TO_GENERATE, ANSWER_PREFIX)
        before = rec["input"][: rec["input"].find(answers[0])]
        rec["token_position_answer"] = count_tokens(tokenizer, before)
        out.append(rec)
    return out
