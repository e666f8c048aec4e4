"""Pieces shared by the RULER task families: haystacks, needle values, word pools, token counting,
RULER's haystack-size search and the split of a finished prompt into ``input`` / ``answer_prefix``.

Randomness follows RULER's scheme so that a seed means the same thing: one ``random.Random(seed)``
stands for the generator scripts' seeded module-level ``random`` (every draw, including those made
while searching for the haystack size, advances it), and the places where RULER shuffles with a
fresh ``random.Random(seed)`` do the same here.
"""

from __future__ import annotations

import bisect
import functools
import io
import uuid
from collections.abc import Sequence
from importlib import resources

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."


def count_tokens(tokenizer, text: str) -> int:
    """Number of tokens of ``text``, without special tokens (RULER counts ``tokenizer.tokenize(text)``).

    Accepts a transformers tokenizer, a ``tokenizers.Tokenizer``, or anything with ``encode``.
    """
    tokenize = getattr(tokenizer, "tokenize", None)
    if callable(tokenize):
        return len(tokenize(text))
    if callable(getattr(tokenizer, "encode", None)):
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(text)
    else:
        ids = tokenizer(text, add_special_tokens=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(getattr(ids, "ids", ids))


@functools.cache
def wordlist(name: str) -> tuple[str, ...]:
    """One of wonderwords' word files ("nounlist.txt", ...), one entry per line, as RULER reads them."""
    text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return tuple(line.rstrip() for line in io.StringIO(text).readlines())


class SortedCompounds(Sequence):
    """``sorted(set(f"{a}-{n}" for a in adjs for n in nouns))`` without building its millions of strings.

    Prefixes ``a + "-"`` that are not prefixes of one another order whole blocks, so each adjective
    is a block of the sorted nouns; only an adjective that extends another one by ``"-..."`` (e.g.
    "blue" and "blue-eyed") mixes with it, and such a group is materialised and sorted.
    """

    def __init__(self, adjs, nouns):
        self._nouns = sorted(set(nouns))
        groups: list[list[str]] = []
        for adj in sorted(set(adjs), key=lambda a: a + "-"):
            if groups and (adj + "-").startswith(groups[-1][0] + "-"):
                groups[-1].append(adj)
            else:
                groups.append([adj])
        self._blocks, self._starts, total = [], [], 0
        for group in groups:
            if len(group) == 1:
                block, size = group[0] + "-", len(self._nouns)
            else:
                block = sorted({f"{a}-{n}" for a in group for n in self._nouns})
                size = len(block)
            self._blocks.append(block)
            self._starts.append(total)
            total += size
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        b = bisect.bisect_right(self._starts, i) - 1
        block, j = self._blocks[b], i - self._starts[b]
        return block + self._nouns[j] if isinstance(block, str) else block[j]


@functools.cache
def compound_words() -> SortedCompounds:
    """RULER's niah word keys: every adjective-noun pair of wonderwords, sorted and deduplicated."""
    return SortedCompounds(wordlist("adjectivelist.txt"), wordlist("nounlist.txt"))


def random_value(rng, kind: str) -> str:
    """A needle key or value: a 7-digit number, an adjective-noun word, or a uuid4 string."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rng.choice(compound_words())
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"needle type {kind!r}: expected 'numbers', 'words' or 'uuids'")


def largest_fitting(n_tokens, budget: int, lo: int, hi: int) -> int | None:
    """RULER's binary search: the largest size in ``[lo, hi]`` whose prompt has ``n_tokens(size) <=
    budget`` (each probe draws a fresh prompt), or None if none does."""
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if n_tokens(mid) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def draw_fitting(make, size: int, step: int, budget: int):
    """Draw ``make(size) -> (text, answer, n_tokens)`` until ``n_tokens <= budget``, shrinking ``size``
    by ``step`` after each miss, as RULER does per sample. RULER retries forever once ``size`` is
    down to ``step``; here that is an error."""
    while True:
        text, answer, n = make(size)
        if n <= budget:
            return text, answer, n
        if size <= step:
            raise ValueError(
                f"max_seq_length too small: the smallest haystack ({size}) gives a "
                f"{n}-token prompt, over the {budget} tokens left for the input"
            )
        size -= step


def split_prompt(text: str, answer_prefix: str) -> tuple[str, str]:
    """Cut the answer prefix off the end of a prompt, locating it by its first 10 characters (RULER)."""
    cut = text.rfind(answer_prefix[:10])
    return text[:cut], text[cut:]


def record(index: int, text: str, outputs: list[str], length: int, answer_prefix: str) -> dict:
    """RULER's jsonl record; ``length`` counts the whole prompt (input + answer prefix) plus the
    tokens to generate, as RULER's does."""
    inp, prefix = split_prompt(text, answer_prefix)
    return {
        "index": index,
        "input": inp,
        "outputs": list(outputs),
        "length": length,
        "length_w_model_temp": length,
        "answer_prefix": prefix,
    }
