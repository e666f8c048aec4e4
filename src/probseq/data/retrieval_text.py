"""Retrieval-format text for pretraining: the formats RULER asks about, written as ordinary documents.

A language model that never saw "One of the special magic numbers for … is: …." or ``VAR ABCDE = 12345`` has
no reason to answer RULER's questions in kind, whatever its memory can do. These documents show it the
formats, with the question and its answer written out, so that RULER measures retrieval rather than format
recognition. They are *not* RULER samples:

- keys and values come from :class:`random.Random` streams seeded from ``("probseq-retrieval-text", seed,
  index)`` (RULER's generators seed ``random.Random(seed)`` with small integers and draw in another order);
- the haystack mixes filler sentences (RULER's noise sentences among others, and sentences of the corpus when
  given) instead of RULER's fixed noise line;
- the instructions and questions are paraphrases drawn per document from several templates; RULER's answer
  sentence is one of them, so the evaluation's answer prefix is a familiar continuation;
- documents are short (about 80–700 tokens); a mixed pretraining stream keeps each whole inside one training block
  and drops those longer than a block (:func:`probseq.train.pretrain.mixed_token_array`).

Kinds (one is drawn per document, :data:`KINDS`):

============  =================================================================================
``needle``    key-value needles ("One of the special magic numbers for {key} is: {value}.") in
              filler, distractor needles sometimes, one or several keys asked
``kv_list``   a list of ``key: value`` pairs (words, numbers, uuids), one key asked
``variables`` chains of assignments ``VAR X = 12345``, ``VAR Y = VAR X`` in filler; every variable
              that holds the value is listed
``words``     a numbered word list in which a few words repeat; the most frequent are named
``coded``     random coded words with Zipf counts; the most frequent ones are named
``queries``   only with ``queries=True``: needles for 2–8 keys in filler, then every key asked and
              answered in a random order (dense retrieval in the needle format)
============  =================================================================================

Example (``needle``, abridged)::

    Remember the special magic numbers hidden in the text below.
    The grass is green. The sky is blue. One of the special magic numbers for quiet-harbor is: 4830217. …
    Question: What is the special magic number for quiet-harbor?
    Answer: The special magic number for quiet-harbor mentioned in the provided text is 4830217.
"""

from __future__ import annotations

import functools
import io
import random
import string
import uuid
from collections.abc import Iterator, Sequence
from importlib import resources

KINDS = ("needle", "kv_list", "variables", "words", "coded")
WEIGHTS = (0.4, 0.15, 0.2, 0.15, 0.1)

NEEDLE = "One of the special magic {noun} for {key} is: {value}."
FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
    "The river runs to the sea.",
    "A cat sleeps on the warm stone.",
    "The wind moves through the trees.",
    "Bread is baked in the morning.",
    "The train left the station on time.",
    "Snow covers the quiet hills.",
    "The library opens at nine.",
    "A small boat drifts near the shore.",
    "The clock on the wall ticks softly.",
)
INSTRUCTIONS = (
    "Some special magic {noun} are hidden within the following text. Remember them, you will be asked about "
    "them later.",
    "Remember the special magic {noun} hidden in the text below.",
    "Read the text carefully; it contains special magic {noun}.",
    "The following passage hides a few special magic {noun}.",
)
QUESTIONS = (
    "Question: What is the special magic {one} for {key}?",
    "What is the special magic {one} for {key} mentioned in the provided text?",
    "Which special magic {one} belongs to {key}?",
)
ANSWERS = (
    "Answer: The special magic {one} for {key} mentioned in the provided text is {value}.",
    "The special magic {one} for {key} mentioned in the provided text is {value}",
    "Answer: {value}",
    "The special magic {one} for {key} is {value}.",
)


@functools.cache
def _words(name: str) -> tuple[str, ...]:
    """wonderwords' word file ``name`` (the package RULER draws its words from)."""
    text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return tuple(w for w in (line.strip() for line in io.StringIO(text)) if w and " " not in w)


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return f"{rng.choice(_words('adjectivelist.txt'))}-{rng.choice(_words('nounlist.txt'))}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def draw_value(rng: random.Random, kind: str) -> str:
    """A needle key or value of ``kind`` as these documents draw them: ``"numbers"`` (7 digits), ``"words"``
    (adjective-noun) or ``"uuids"``."""
    return _value(rng, kind)


def _top(bound: int, scale: float) -> int:
    """The upper bound of a haystack-size draw at ``scale`` (1: the bound itself, so the draws are unchanged)."""
    return max(bound, round(bound * scale))


def _filler(rng: random.Random, sentences: Sequence[str], count: int) -> list[str]:
    pool = sentences if sentences and rng.random() < 0.5 else FILLER
    return [rng.choice(pool) for _ in range(count)]


def _needle(rng: random.Random, sentences: Sequence[str], scale: float) -> str:
    key_kind = rng.choice(("words", "words", "uuids", "numbers"))
    value_kind = rng.choice(("numbers", "numbers", "uuids", "words"))
    noun = {"numbers": "numbers", "words": "words", "uuids": "uuids"}[value_kind]
    one = noun[:-1]
    num_keys = rng.choice((1, 1, 2, 3, 4))
    pairs = [(_value(rng, key_kind), _value(rng, value_kind)) for _ in range(num_keys)]
    lines = _filler(rng, sentences, rng.randint(4, _top(40, scale)))
    if rng.random() < 0.3:  # distractor needles with other keys
        for _ in range(rng.randint(1, _top(6, scale))):
            lines.insert(
                rng.randint(0, len(lines)),
                NEEDLE.format(noun=noun, key=_value(rng, key_kind), value=_value(rng, value_kind)),
            )
    for key, value in pairs:
        lines.insert(rng.randint(0, len(lines)), NEEDLE.format(noun=noun, key=key, value=value))
    key, value = rng.choice(pairs)
    separator = rng.choice(("\n", " "))
    return "\n".join(
        [
            rng.choice(INSTRUCTIONS).format(noun=noun),
            separator.join(lines),
            rng.choice(QUESTIONS).format(one=one, key=key),
            rng.choice(ANSWERS).format(one=one, key=key, value=value),
        ]
    )


def _needle_queries(rng: random.Random, sentences: Sequence[str], scale: float) -> str:
    """Needles for 2–8 distinct keys (× ``scale``) among filler, then a question and its answer for *every* key, in
    a random order: the needle format with one retrieval per key instead of one per document."""
    key_kind = rng.choice(("words", "words", "uuids", "numbers"))
    value_kind = rng.choice(("numbers", "numbers", "uuids", "words"))
    noun, one = value_kind, value_kind[:-1]
    count, pairs = rng.randint(2, _top(8, scale)), {}
    while len(pairs) < count:
        pairs.setdefault(_value(rng, key_kind), _value(rng, value_kind))
    lines = _filler(rng, sentences, rng.randint(4, _top(30, scale)))
    for key, value in pairs.items():
        lines.insert(rng.randint(0, len(lines)), NEEDLE.format(noun=noun, key=key, value=value))
    asked = list(pairs.items())
    rng.shuffle(asked)
    questions = []
    for key, value in asked:
        questions.append(rng.choice(QUESTIONS).format(one=one, key=key))
        questions.append(rng.choice(ANSWERS).format(one=one, key=key, value=value))
    separator = rng.choice(("\n", " "))
    return "\n".join([rng.choice(INSTRUCTIONS).format(noun=noun), separator.join(lines), *questions])


def _kv_list(rng: random.Random, sentences: Sequence[str], scale: float) -> str:
    key_kind, value_kind = rng.choice((("uuids", "uuids"), ("words", "numbers"), ("words", "words")))
    pairs = [(_value(rng, key_kind), _value(rng, value_kind)) for _ in range(rng.randint(3, _top(16, scale)))]
    style = rng.choice(('"{k}": "{v}"', "{k}: {v}", "{k} = {v}"))
    key, value = rng.choice(pairs)
    body = "\n".join(style.format(k=k, v=v) for k, v in pairs)
    return (
        f"Here is a list of keys and their values.\n{body}\nWhat is the value of {key}?\n"
        f"Answer: The value of {key} is {value}."
    )


def _names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=rng.choice((3, 5, 5))))
        if name not in names:
            names.append(name)
    return names


def _variables(rng: random.Random, sentences: Sequence[str], scale: float) -> str:
    hops, chains = rng.randint(1, 5), rng.choice((1, 1, 2))
    names = _names(rng, (hops + 1) * chains)
    lines = _filler(rng, sentences, rng.randint(3, _top(30, scale)))
    answer_names, value = [], ""
    for c in range(chains):
        vs = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        start = str(rng.randint(10000, 99999))
        statements = [f"VAR {vs[0]} = {start}"] + [f"VAR {vs[j + 1]} = VAR {vs[j]}" for j in range(hops)]
        positions = sorted(rng.sample(range(len(lines) + len(statements)), len(statements)))
        for position, statement in zip(positions, statements):
            lines.insert(position, statement)
        if c == 0:
            answer_names, value = vs, start
    question = rng.choice(
        (
            "Question: Find all variables that are assigned the value {v} in the text above.",
            "Which variables are assigned the value {v}?",
        )
    )
    answer = rng.choice(
        (
            "Answer: According to the chain(s) of variable assignment in the text above, {n} variables "
            "are assigned the value {v}, they are: {names}",
            "Answer: {names}",
        )
    )
    return "\n".join(
        [
            "Track the chains of variable assignment in the following text.",
            "\n".join(lines),
            question.format(v=value),
            answer.format(n=len(answer_names), v=value, names=" ".join(answer_names)),
        ]
    )


def _word_list(rng: random.Random, sentences: Sequence[str], scale: float) -> str:
    pool = _words("nounlist.txt") + _words("adjectivelist.txt") + _words("verblist.txt")
    top = rng.choice((3, 5, 10))
    words = rng.sample(pool, top + rng.randint(10, _top(60, scale)))
    common, rare = words[:top], words[top:]
    listed = common * rng.randint(3, 6) + rare
    rng.shuffle(listed)
    numbered = " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))
    answer = " ".join(f"{i + 1}. {w}" for i, w in enumerate(common))
    return (
        f"Below is a numbered list of words. Some words appear more often than others.\n{numbered}\n"
        f"Question: What are the {top} most common words in the above list?\n"
        f"Answer: The top {top} words that appear most often in the list are: {answer}"
    )


def _coded(rng: random.Random, sentences: Sequence[str], scale: float) -> str:
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.choice((4, 5, 6)))) for _ in range(rng.randint(8, 30))]
    vocab = list(dict.fromkeys(vocab))
    total = rng.randint(60, _top(250, scale))
    norm = sum(1 / (i + 1) ** 2 for i in range(len(vocab)))
    counts = [max(1, int(total / (i + 1) ** 2 / norm)) for i in range(len(vocab))]
    # strictly decreasing at the top so that the answer is unique
    for i in range(min(4, len(counts)) - 1, 0, -1):
        counts[i - 1] = max(counts[i - 1], counts[i] + 1)
    text = [w for w, c in zip(vocab, counts) for _ in range(c)]
    rng.shuffle(text)
    return (
        f"Read the following coded text and count how often each coded word appears. {' '.join(text)}\n"
        "Question: What are the three most frequently appeared words in the above coded text?\n"
        f"Answer: According to the coded text above, the three most frequently appeared words are: "
        f"{' '.join(vocab[:3])}"
    )


_MAKERS = {
    "needle": _needle,
    "kv_list": _kv_list,
    "variables": _variables,
    "words": _word_list,
    "coded": _coded,
    "queries": _needle_queries,
}
#: With ``queries=True`` (:func:`retrieval_document`): half the documents are ``queries`` documents, the other half
#: the usual kinds in their usual proportions.
QUERY_KINDS = (*KINDS, "queries")
QUERY_WEIGHTS = (*(w / 2 for w in WEIGHTS), 0.5)


def retrieval_document(
    seed: int | str, index: int, sentences: Sequence[str] = (), scale: float = 1.0, queries: bool = False
) -> tuple[str, str]:
    """Document ``index`` of the stream ``seed``: ``(kind, text)``.

    Args:
        seed: the stream (any int or string; documents of different seeds are independent).
        index: position in the stream.
        sentences: extra filler sentences (e.g. from the corpus), used in about half of the haystacks.
        scale: haystack size: the upper bound of every size draw (filler lines, distractor needles, listed pairs,
            listed words, coded words) times ``scale`` (the lower bounds stay). 1 (the default) draws exactly the
            documents of the corpus; 3 makes needle haystacks up to about 120 lines (≈ 700 tokens).
        queries: draw half the documents as ``queries`` documents (every needle's key asked and answered, in a
            random order: one retrieval per key instead of one per document) and the rest as without it
            (:data:`QUERY_KINDS`, :data:`QUERY_WEIGHTS`); off (the default), the stream is exactly as before it.
    """
    if not scale >= 1:
        raise ValueError(f"scale must be >= 1, got {scale!r}")
    rng = random.Random(f"probseq-retrieval-text:{seed}:{index}")
    kind = rng.choices(QUERY_KINDS, QUERY_WEIGHTS)[0] if queries else rng.choices(KINDS, WEIGHTS)[0]
    return kind, _MAKERS[kind](rng, sentences, scale)


def retrieval_documents(
    seed: int, characters: int, sentences: Sequence[str] = (), scale: float = 1.0
) -> Iterator[tuple[str, str]]:
    """Documents of stream ``seed`` (at haystack ``scale``) until they hold at least ``characters`` characters."""
    total, index = 0, 0
    while total < characters:
        kind, text = retrieval_document(seed, index, sentences, scale)
        yield kind, text
        total += len(text)
        index += 1


__all__ = [
    "ANSWERS",
    "FILLER",
    "INSTRUCTIONS",
    "KINDS",
    "NEEDLE",
    "QUESTIONS",
    "draw_value",
    "retrieval_document",
    "retrieval_documents",
]
