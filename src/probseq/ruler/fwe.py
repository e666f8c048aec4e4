"""Frequent words extraction (RULER ``freq_words_extraction.py``): random 6-letter "coded" words with
Zipf (zeta, exponent ``alpha``) counts; the top-ranked one is replaced by the noise word '...' and the
model names the next three."""

from __future__ import annotations

import math
import random
import string

import numpy as np

from .common import count_tokens, record

TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most"
    " frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please"
    " ignore the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
TOKENS_TO_GENERATE = 50

# Bernoulli numbers B_2, B_4, ..., B_12 for the Euler-Maclaurin tail of the zeta sum
_BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730)


def zeta(s: float, terms: int = 20) -> float:
    """Riemann zeta for real ``s > 1`` (RULER uses scipy's): the first ``terms - 1`` terms plus the
    Euler-Maclaurin remainder, added with ``math.fsum``; gives pi^2/6 to the last bit at s = 2."""
    if s <= 1:
        raise ValueError("zeta needs s > 1")
    parts = [n**-s for n in range(1, terms)]
    parts += [terms ** (1 - s) / (s - 1), terms**-s / 2]
    rising = s  # s (s+1) ... (s+2j-2)
    for j, b in enumerate(_BERNOULLI, start=1):
        parts.append(b / math.factorial(2 * j) * rising * terms ** (-s - 2 * j + 1))
        rising *= (s + 2 * j - 1) * (s + 2 * j)
    return math.fsum(parts)


def _vocab(rng, seed, size, word_len):
    words = ["".join(rng.choices(string.ascii_lowercase, k=word_len)) for _ in range(size)]
    while len(set(words)) < size:
        words.append("".join(rng.choices(string.ascii_lowercase, k=word_len)))
    words = sorted(set(words))
    random.Random(seed).shuffle(words)
    words[0] = "..."  # the most frequent word is noise
    return words


def _fit_text(tokenizer, rng, seed, template, max_len, num_words, word_len, vocab_size, step, alpha):
    """RULER's fitting for fwe: one vocabulary per call; with ``num_words`` given, shrink it by ``step``
    until the prompt fits ``max_len`` tokens; otherwise grow from ``max_len // word_len`` until it
    reaches ``max_len`` and step back once. Returns ``(prompt, answer, num_words)``."""
    vocab = _vocab(rng, seed, vocab_size, word_len)
    scale = np.arange(1, len(vocab) + 1) ** -float(alpha)  # as RULER: numpy powers of the ranks

    def text_for(n):
        counts = (n * scale / zeta(alpha)).astype(int)
        words = [w for w, c in zip(vocab, counts) for _ in range(c)]
        random.Random(seed).shuffle(words)
        return template.format(context=" ".join(words), query="")

    if num_words > 0:
        while count_tokens(tokenizer, text_for(num_words)) > max_len:
            num_words -= step
            if num_words <= 0:
                raise ValueError(f"max_seq_length too small for fwe ({max_len} input tokens)")
    else:
        num_words = max_len // word_len
        while count_tokens(tokenizer, text_for(num_words)) < max_len:
            num_words += step
        num_words -= step
    return text_for(num_words), vocab[1:4], num_words


def generate(tokenizer, max_seq_length, num_samples, seed, template, *, alpha, coded_wordlen, vocab_size):
    rng = random.Random(seed)
    max_len = max_seq_length - TOKENS_TO_GENERATE
    vocab_size = max_len // 50 if vocab_size == -1 else vocab_size
    if vocab_size < 4:
        raise ValueError(f"max_seq_length {max_seq_length} too small for fwe (vocabulary of {vocab_size})")
    step = max(1, max_len // 32)  # RULER's step; 0 (an endless loop there) only below 32 tokens
    args = (coded_wordlen, vocab_size, step, alpha)
    _, _, num_words = _fit_text(tokenizer, rng, seed, template, max_len, -1, *args)
    out = []
    for index in range(num_samples):
        text, answer, _ = _fit_text(tokenizer, rng, seed, template, max_len, num_words, *args)
        length = count_tokens(tokenizer, text) + TOKENS_TO_GENERATE
        out.append(record(index, text, answer, length, ANSWER_PREFIX))
    return out
