"""Variable tracking (RULER ``variable_tracking.py``): chains ``VAR B = VAR A`` hidden in noise; the
model lists every variable that ends up holding the chain's number. One short solved example (built
first, fitted to 500 tokens, with 3-letter names and the value 12345) precedes each prompt, with its
names and value redrawn per sample.

The answer prefix is RULER's current text (``scripts/data/synthetic/constants.py``): "… variables are assigned the
value …". RULER spelt it "assgined" until its commit 4a216f4 ("fix typo", 2025-05-13), so scores published with an
older RULER saw the typo; its ``variable_tracking.py`` still has the old spelling in its unused ``--template``
default, but ``prepare.py`` passes the constants' text."""

from __future__ import annotations

import random
import string

import numpy as np

from .common import NOISE, count_tokens, draw_fitting, largest_fitting, record

TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above."
)
ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v}"
    " variables are assigned the value {query}, they are: "
)
TOKENS_TO_GENERATE = 30
ICL_MAX_SEQ_LENGTH = 500


def _names(rng, count, letters):
    """``count`` distinct upper-case names. RULER draws until it has that many distinct ones but keeps
    the repeats in its list; here a repeat is dropped (same draws, distinct names in every case)."""
    names = ["".join(rng.choices(string.ascii_uppercase, k=letters)) for _ in range(count)]
    while len(set(names)) < count:
        names.append("".join(rng.choices(string.ascii_uppercase, k=letters)))
    return list(dict.fromkeys(names))


def _prompt(rng, nprng, template, size, num_chains, num_hops, icl):
    hops = min(10, num_hops) if icl else num_hops
    names = _names(rng, (hops + 1) * num_chains, 3 if icl else 5)
    chains, variables = [], []
    for c in range(num_chains):
        vs = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        start = "12345" if icl else str(nprng.randint(10000, 99999))
        chains.append([f"VAR {vs[0]} = {start}"] + [f"VAR {vs[j + 1]} = VAR {vs[j]} " for j in range(hops)])
        variables.append(vs)
    lines = [NOISE] * size
    for chain in chains:  # statements in chain order at sorted random positions
        for j, pos in enumerate(sorted(rng.sample(range(len(lines)), len(chain)))):
            lines.insert(pos + j, chain[j])
    context = "\n".join(lines).replace(". \n", ".\n")
    value = chains[0][0].split("=")[-1].strip()
    return template.format(context=context, query=value, num_v=num_hops + 1), variables[0]


def _fit(make, max_seq_length, step, extra_tokens):
    """RULER's haystack-size search for vt: ``extra_tokens`` = solved example + tokens to generate."""
    per_line = make(step)[2] / step
    hi = max(int(max_seq_length / per_line * 3), 2 * step)
    return largest_fitting(lambda n: make(n)[2] + extra_tokens, max_seq_length, step, hi) or step


def generate(tokenizer, max_seq_length, num_samples, seed, template, *, type_haystack, num_chains, num_hops):
    if type_haystack != "noise":
        raise ValueError(f"vt haystack {type_haystack!r}: only 'noise' is supported (essay is not)")
    rng, nprng = random.Random(seed), np.random.RandomState(seed)

    def maker(tmpl, icl):
        def make(size):
            text, names = _prompt(rng, nprng, tmpl, size, num_chains, num_hops, icl)
            return text, names, count_tokens(tokenizer, text)

        return make

    # the solved example: RULER's first pass, always with the bare task template
    make_icl = maker(TEMPLATE + ANSWER_PREFIX, True)
    size = _fit(make_icl, ICL_MAX_SEQ_LENGTH, 5, 0)
    text, names, _ = draw_fitting(make_icl, size, 5, ICL_MAX_SEQ_LENGTH)
    example = text + " " + " ".join(names) + "\n"

    def redraw(ex):  # new names for the example's answer variables, new start value
        for old in ex.strip().split()[-(num_hops + 1) :]:
            ex = ex.replace(old, "".join(rng.choices(string.ascii_uppercase, k=len(old))))
        return ex.replace("12345", str(nprng.randint(10000, 99999)))

    make_main = maker(template, False)

    def make(size):
        text, names, _ = make_main(size)
        cut = text.index(TEMPLATE[:20])  # example goes between the model template and the task
        text = text[:cut] + redraw(example) + "\n" + text[cut:]
        return text, names, count_tokens(tokenizer, text)

    step = 5 if max_seq_length < 4096 else 10
    size = _fit(make_main, max_seq_length, step, count_tokens(tokenizer, example) + TOKENS_TO_GENERATE)
    out = []
    for index in range(num_samples):
        text, names, n = draw_fitting(make, size, step, max_seq_length - TOKENS_TO_GENERATE)
        out.append(record(index, text, names, n + TOKENS_TO_GENERATE, ANSWER_PREFIX))
    return out
