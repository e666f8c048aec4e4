"""RULER generators and metrics (probseq.ruler) against RULER's protocol, with a small offline tokenizer.

The literal strings below are RULER's (scripts/data/synthetic/constants.py, niah.py,
variable_tracking.py), written out here rather than imported, so the test checks the module.
"""

from __future__ import annotations

import math
import re
import string
import uuid
from collections import Counter

import pytest

from probseq.ruler import TASKS, generate, score, string_match_all, string_match_part, tokens_to_generate
from probseq.ruler.common import SortedCompounds, count_tokens, wordlist
from probseq.ruler.fwe import zeta
from probseq.ruler.metrics import postprocess_pred

ALL = ["niah_single_1", "niah_multikey_2", "niah_multikey_3", "vt", "cwe", "fwe"]
# 1024 and 4096 sit on both sides of RULER's 4096 switch (niah/vt search steps, cwe repeat counts).
# RULER itself cannot go much lower: niah reserves 128 answer tokens and needs >= 5 haystack lines,
# vt puts a ~500-token solved example in front of every prompt.
LENGTHS = [1024, 4096]
N = 2
SEED = 7

NOISE_LITERAL = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@pytest.fixture(scope="module")
def tok():
    """A ~2k byte-level BPE trained offline on the kind of text the tasks produce."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    words = list(wordlist("nounlist.txt") + wordlist("adjectivelist.txt") + wordlist("verblist.txt"))
    corpus = [NOISE_LITERAL] * 50 + [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]
    corpus += [
        f"One of the special magic numbers for {rng.choice(words)}-{rng.choice(words)} is: "
        f"{rng.randint(10**6, 10**7 - 1)}."
        for _ in range(300)
    ]
    corpus += [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(300)]
    corpus += [
        f"VAR {''.join(rng.choices(string.ascii_uppercase, k=5))} = {rng.randint(10000, 99999)}" for _ in range(300)
    ]
    corpus += [" ".join(f"{i + 1}. {rng.choice(words)}" for i in range(40)) for _ in range(30)]
    corpus += [" ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(40)) for _ in range(30)]
    corpus += [TASKS[t]["template"] + TASKS[t]["answer_prefix"] for t in ALL] * 20
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    model.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model)


@pytest.fixture(scope="module")
def samples(tok):
    return {(t, n): generate(t, tok, n, N, SEED) for t in ALL for n in LENGTHS}


def prompt_tokens(tok, rec):
    return count_tokens(tok, rec["input"] + rec["answer_prefix"])


# ---------------------------------------------------------------- length fitting


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", ALL)
def test_prompt_fills_budget(tok, samples, task, length):
    """Every prompt fits max_seq_length - tokens_to_generate and uses >= 70% of it. RULER's search
    finds the largest haystack that fits, so the searched prompt falls short by less than one haystack
    unit; a redrawn sample that overflows then loses one search step (niah: 5 lines below 4096 tokens,
    25 above; vt: 5 / 10 lines; cwe: 10 words) and fwe moves in steps of 1/32 of its words. With this
    tokenizer the worst fill seen over 1k-8k tokens is ~0.79 (niah_multikey_3: 25 uuid needles a step).
    """
    budget = length - tokens_to_generate(task)
    recs = samples[task, length]
    assert [r["index"] for r in recs] == list(range(N))
    for r in recs:
        n = prompt_tokens(tok, r)
        assert r["length"] == r["length_w_model_temp"] == n + tokens_to_generate(task)
        assert 0.7 * budget <= n <= budget, (task, length, n, budget)


def test_too_short_raises(tok):
    with pytest.raises(ValueError):
        generate("niah_single_1", tok, 150, 1, SEED)
    with pytest.raises(ValueError):
        generate("vt", tok, 20, 1, SEED)


# ---------------------------------------------------------------- templates and answers


def niah_parts(rec):
    m = re.search(r"\nWhat is the special magic (\w+) for (.+) mentioned in the provided text\?$", rec["input"])
    assert m, rec["input"][-200:]
    return m.group(1), m.group(2)


@pytest.mark.parametrize(
    "task,kind,key_re,value_re",
    [
        ("niah_single_1", "number", r"[^\s-]+(?: [^\s-]+)*-.+", r"\d{7}"),
        ("niah_multikey_2", "number", r"[^\s-]+(?: [^\s-]+)*-.+", r"\d{7}"),
        (
            "niah_multikey_3",
            "uuid",
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        ),
    ],
)
@pytest.mark.parametrize("length", LENGTHS)
def test_niah_format(samples, task, kind, key_re, value_re, length):
    head = (
        f"A special magic {kind} is hidden within the following text. Make sure to memorize it. "
        f"I will quiz you about the {kind} afterwards.\n"
    )
    for r in samples[task, length]:
        assert r["input"].startswith(head)
        noun, key = niah_parts(r)
        assert noun == kind and re.fullmatch(key_re, key)
        assert r["answer_prefix"] == f" The special magic {kind} for {key} mentioned in the provided text is"
        (value,) = r["outputs"]
        assert re.fullmatch(value_re, value)
        needle = f"One of the special magic {kind}s for {key} is: {value}."
        lines = r["input"][len(head) :].split("\n")[:-1]
        assert lines.count(needle) == 1
        assert r["token_position_answer"] > 0
        if task == "niah_single_1":
            assert sorted(set(lines)) == sorted({NOISE_LITERAL, needle})
        else:  # the haystack is made of needles with other keys
            pat = re.compile(rf"One of the special magic {kind}s for ({key_re}) is: ({value_re})\.")
            found = [pat.fullmatch(line) for line in lines]
            assert all(found) and len(lines) > 10
            assert [m.group(1) for m in found].count(key) == 1


@pytest.mark.parametrize("length", LENGTHS)
def test_vt_format(samples, length):
    for r in samples["vt", length]:
        names = r["outputs"]
        assert len(names) == 5 and len(set(names)) == 5
        assert all(re.fullmatch(r"[A-Z]{5}", v) for v in names)
        m = re.fullmatch(
            r" Answer: According to the chain\(s\) of variable assignment in the text above, 5 "
            r"variables are assigned the value (\d{5}), they are: ",
            r["answer_prefix"],
        )
        assert m
        value = m.group(1)
        task_head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        assert r["input"].startswith(task_head)  # the solved example comes first
        example, main = r["input"].rsplit(task_head, 1)
        # its answer: 3-letter names after the prefix's trailing space and one more (RULER), blank line
        assert re.search(r"they are:  (?:[A-Z]{3} ){4}[A-Z]{3}\n\n$", example)
        assert main.endswith(f"\nQuestion: Find all variables that are assigned the value {value} in the text above.")
        lines = main.split("\n")[:-1]
        chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)]
        assert [ln for ln in lines if ln.startswith("VAR")] == chain  # in order, nothing else
        assert set(lines) - set(chain) == {NOISE_LITERAL}


def numbered_words(text):
    """The words of "1. w 2. w ..." (a word may contain a space: "ad hoc", "contact lens")."""
    return re.split(r"(?:^| )\d+\. ", text)[1:]


@pytest.mark.parametrize("length", LENGTHS)
def test_cwe_format(samples, length):
    head = (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n"
    )
    question = "\nQuestion: What are the 10 most common words in the above list?"
    prefix = " Answer: The top 10 words that appear most often in the list are:"
    common, rare = (6, 1) if length < 4096 else (30, 3)  # RULER's short-context counts
    shot_common, shot_rare, shot_words = (3, 1, 20) if length < 4096 else (10, 3, 40)
    for r in samples["cwe", length]:
        assert r["answer_prefix"] == prefix
        shot, main = r["input"].split("\n" + head)
        assert shot.startswith(head) and main.endswith(question)
        body, shot_answer = shot[len(head) :].split(question + prefix + " ")
        counts = Counter(numbered_words(body))
        assert len(counts) == shot_words
        assert set(numbered_words(shot_answer)) == {w for w, _ in counts.most_common(10)}
        assert sorted(counts.values()) == [shot_rare] * (shot_words - 10) + [shot_common] * 10
        counts = Counter(numbered_words(main[: -len(question)]))
        assert len(r["outputs"]) == 10 and all(counts[w] == common for w in r["outputs"])
        assert all(c == rare for w, c in counts.items() if w not in r["outputs"])
        entries = re.findall(r"(\d+)\. ", main[: -len(question)])
        assert [int(e) for e in entries] == list(range(1, len(entries) + 1))


@pytest.mark.parametrize("length", LENGTHS)
def test_fwe_format(samples, length):
    head = (
        "Read the following coded text and track the frequency of each coded word. "
        "Find the three most frequently appeared coded words. "
    )
    question = (
        "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?"
    )
    for r in samples["fwe", length]:
        assert r["answer_prefix"] == (
            " Answer: According to the coded text above, the three most frequently appeared words are:"
        )
        assert r["input"].startswith(head) and r["input"].endswith(question)
        counts = Counter(r["input"][len(head) : -len(question)].split(" "))
        assert counts.most_common(1)[0][0] == "..."
        del counts["..."]
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in counts)
        answer = r["outputs"]
        assert len(answer) == 3 and all(counts[w] > 0 for w in answer)
        rest = [c for w, c in counts.items() if w not in answer]
        assert min(counts[w] for w in answer) >= max(rest, default=0)
        assert counts[answer[0]] > counts[answer[1]] > counts[answer[2]]  # Zipf ranks 2, 3, 4


def test_vt_answer_prefix_is_ruler_s_current_text():
    """RULER's constants.py spelt "assgined" until its commit 4a216f4 ("fix typo", 2025-05-13); today's text (and
    this one) says "assigned". A published score from an older RULER saw the typo."""
    assert TASKS["vt"]["answer_prefix"] == (
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are"
        " assigned the value {query}, they are: "
    )


def test_model_template(tok):
    (r,) = generate("niah_single_1", tok, 1024, 1, SEED, model_template="[INST] {task_template} [/INST]")
    assert r["input"].startswith("[INST] A special magic number is hidden")
    assert r["input"].endswith(" mentioned in the provided text? [/INST]")
    assert r["answer_prefix"].startswith(" The special magic number for ")
    assert prompt_tokens(tok, r) <= 1024 - 128


# ---------------------------------------------------------------- seeds, options, registry


@pytest.mark.parametrize("task", ALL)
def test_seeded(tok, samples, task):
    again = generate(task, tok, 1024, N, SEED)
    assert again == samples[task, 1024]
    other = generate(task, tok, 1024, N, SEED + 1)
    assert [r["input"] for r in other] != [r["input"] for r in again]
    assert [r["outputs"] for r in other] != [r["outputs"] for r in again]
    assert again[0]["input"] != again[1]["input"]  # samples differ within a run too


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", ALL)
def test_the_first_samples_do_not_depend_on_how_many_are_drawn(tok, samples, task, length):
    """Prefix-stable: the first n samples of a larger set are the n samples (probseq ruler's per-sample cache tops
    a unit up on this)."""
    assert generate(task, tok, length, N + 3, SEED)[:N] == samples[task, length]


def test_registry_and_options(tok):
    assert {t: tokens_to_generate(t) for t in ALL} == {
        "niah_single_1": 128,
        "niah_multikey_2": 128,
        "niah_multikey_3": 128,
        "vt": 30,
        "cwe": 120,
        "fwe": 50,
    }
    assert all(TASKS[t]["metric"] == "string_match_all" for t in ALL)
    assert TASKS["niah_single_1"]["args"]["type_haystack"] == "noise"
    needles = TASKS["niah_multikey_3"]["args"]
    assert needles["type_needle_k"] == needles["type_needle_v"] == "uuids"
    assert TASKS["vt"]["args"] == {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}
    assert TASKS["cwe"]["args"] == {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10, "num_fewshot": 1}
    assert TASKS["fwe"]["args"]["alpha"] == 2.0
    with pytest.raises(NotImplementedError):
        generate("niah_single_1", tok, 1024, 1, haystack="essay")
    with pytest.raises(KeyError):
        generate("niah_single_2", tok, 1024, 1)
    with pytest.raises(TypeError):
        generate("vt", tok, 1024, 1, num_hopz=2)
    (r,) = generate("niah_single_1", tok, 1024, 1, haystack="needle")
    assert NOISE_LITERAL not in r["input"]
    (r,) = generate("vt", tok, 1024, 1, num_hops=2)
    assert len(r["outputs"]) == 3


def test_sorted_compounds_matches_sorted_set():
    adjs = ["blue", "blue-eyed", "ad hoc", "ad", "x-rated", "old", "old-fashioned", "blue", "Zany", "a"]
    nouns = ["ATM", "eyed-cat", "cat", "dog", "a-b", "ad hoc", "zebra", "cat"]
    want = sorted(set(f"{a}-{n}" for a in adjs for n in nouns))
    seq = SortedCompounds(adjs, nouns)
    assert len(seq) == len(want) and list(seq) == want and seq[-1] == want[-1]


def test_cwe_beyond_word_pool():
    """Past wonderwords' 8166 words RULER samples english_words.json (not shipped); compounds stand in."""
    import random

    from probseq.ruler.cwe import _pool, _word_list

    n = len(_pool(0)) + 5
    context, common = _word_list(random.Random(0), 0, n, 2, 1, 10)
    counts = Counter(numbered_words(context))
    assert len(counts) == n and all(counts[w] == 2 for w in common)


def test_count_tokens_backends(tok):
    text = "One of the special magic numbers for blue-dog is: 1234567."
    n = len(tok.tokenize(text))
    assert count_tokens(tok.backend_tokenizer, text) == n  # tokenizers.Tokenizer: encode(...).ids
    assert count_tokens(tok, text) == n


def test_zeta():
    assert zeta(2.0) == math.pi**2 / 6
    assert zeta(4.0) == pytest.approx(math.pi**4 / 90, rel=1e-15)


# ---------------------------------------------------------------- metrics


def test_string_match_all():
    preds = ["The numbers are 1234567 and ABC.", "nothing here", "Foo BAR baz"]
    refs = [["1234567", "abc"], ["x"], ["foo", "bar", "qux"]]
    # (2/2 + 0/1 + 2/3) / 3 * 100 = 55.555... -> 55.56
    assert string_match_all(preds, refs) == 55.56
    assert string_match_all(["AbC"], [["abc"]]) == 100.0
    assert string_match_all(["ab"], [["abc"]]) == 0.0  # the reference must be contained, not the prediction


def test_string_match_part():
    preds = ["The numbers are 1234567 and ABC.", "nothing here", "Foo BAR baz"]
    refs = [["1234567", "abc"], ["x"], ["foo", "bar", "qux"]]
    assert string_match_part(preds, refs) == 66.67  # (1 + 0 + 1) / 3
    assert string_match_part(["only QUX"], [["foo", "qux"]]) == 100.0
    with pytest.raises(ValueError):
        string_match_part([], [])


def test_postprocess_and_score():
    assert postprocess_pred("  a\tb\x00c\n ") == "a\nb\nc"
    assert score("vt", [" ABCDE\x01FGHIJ "], [["abcde", "fghij", "KLMNO"]]) == 66.67
