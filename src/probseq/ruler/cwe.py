"""Common words extraction (RULER ``common_words_extraction.py``): a numbered list in which
``num_cw`` words repeat often and the rest rarely; the model names the frequent ones. One solved
short list precedes each prompt. Below 4096 tokens RULER uses fixed lighter repeat counts (6 and 1,
example 20 words at 3 and 1) instead of ``freq_cw`` / ``freq_ucw`` (example 40 words at 10 and 3)."""

from __future__ import annotations

import functools
import random

from .common import compound_words, count_tokens, draw_fitting, largest_fitting, record, wordlist

TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize"
    " the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the"
    " above list?"
)
ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
TOKENS_TO_GENERATE = 120


@functools.cache
def _pool(seed: int) -> tuple[str, ...]:
    """wonderwords' nouns, adjectives and verbs, deduplicated, sorted, shuffled with the seed."""
    words = sorted(set(wordlist("nounlist.txt") + wordlist("adjectivelist.txt") + wordlist("verblist.txt")))
    random.Random(seed).shuffle(words)
    return tuple(words)


def _numbered(words) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _word_list(rng, seed, num_words, common_repeats, uncommon_repeats, num_cw):
    pool = _pool(seed)
    # beyond the pool RULER samples from english_words.json (a Git-LFS file, not shipped with the
    # code); the adjective-noun compounds of niah stand in for it
    words = rng.sample(pool if num_words <= len(pool) else compound_words(), num_words)
    common, rare = words[:num_cw], words[num_cw:]
    listed = common * common_repeats + rare * uncommon_repeats
    random.Random(seed).shuffle(listed)
    return _numbered(listed), common


def generate(tokenizer, max_seq_length, num_samples, seed, template, *, freq_cw, freq_ucw, num_cw, num_fewshot):
    rng = random.Random(seed)
    if max_seq_length < 4096:
        shot_args, main_args = (20, 3, 1), (6, 1)
    else:
        shot_args, main_args = (40, 10, 3), (freq_cw, freq_ucw)

    def make(num_words):
        shots = [_word_list(rng, seed, *shot_args, num_cw) for _ in range(num_fewshot)]
        context, answer = _word_list(rng, seed, num_words, *main_args, num_cw)
        solved = [template.format(context=c, query="") + " " + _numbered(a) for c, a in shots]
        text = "\n".join(solved) + "\n" + template.format(context=context, query="")
        return text, answer, count_tokens(tokenizer, text)

    step = 10  # words per step
    per_word = make(4096)[2] / 4096
    hi = max(int(max_seq_length // per_word) * 2, 2 * step)
    budget = max_seq_length - TOKENS_TO_GENERATE
    size = largest_fitting(lambda n: make(n)[2], budget, step, hi) or step
    out = []
    for index in range(num_samples):
        text, answer, n = draw_fitting(make, size, step, budget)
        out.append(record(index, text, answer, n + TOKENS_TO_GENERATE, ANSWER_PREFIX))
    return out
