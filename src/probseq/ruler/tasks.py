"""RULER task registry and the one entry point, :func:`generate`.

Task arguments are those of RULER's ``scripts/synthetic.yaml`` (plus the generator scripts' own
defaults for arguments the yaml leaves out); templates, answer prefixes and tokens to generate come
from ``scripts/data/synthetic/constants.py``; metrics from ``scripts/eval/synthetic/constants.py``.
"""

from __future__ import annotations

from . import cwe, fwe, niah, vt

_FAMILIES = {"niah": niah, "variable_tracking": vt, "common_words_extraction": cwe, "freq_words_extraction": fwe}


def _task(family: str, **args) -> dict:
    mod = _FAMILIES[family]
    return {
        "family": family,
        "args": args,
        "tokens_to_generate": mod.TOKENS_TO_GENERATE,
        "template": mod.TEMPLATE,
        "answer_prefix": mod.ANSWER_PREFIX,
        "metric": "string_match_all",
    }


def _niah(haystack: str, key: str, value: str) -> dict:
    return _task(
        "niah",
        type_haystack=haystack,
        type_needle_k=key,
        type_needle_v=value,
        num_needle_k=1,
        num_needle_v=1,
        num_needle_q=1,
    )


TASKS: dict[str, dict] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "vt": _task("variable_tracking", type_haystack="noise", num_chains=1, num_hops=4),
    "cwe": _task("common_words_extraction", freq_cw=30, freq_ucw=3, num_cw=10, num_fewshot=1),
    "fwe": _task("freq_words_extraction", alpha=2.0, coded_wordlen=6, vocab_size=-1),
}


def tokens_to_generate(task: str) -> int:
    """Tokens RULER reserves for (and lets the model generate as) the answer of ``task``."""
    return _config(task)["tokens_to_generate"]


def _config(task: str) -> dict:
    if task not in TASKS:
        raise KeyError(f"unknown RULER task {task!r}; available: {sorted(TASKS)}")
    return TASKS[task]


def generate(
    task: str,
    tokenizer,
    max_seq_length: int,
    num_samples: int,
    seed: int = 42,
    *,
    haystack: str | None = None,
    model_template: str = "{task_template}",
    **task_args,
) -> list[dict]:
    """``num_samples`` RULER samples of ``task`` whose prompts fill ``max_seq_length`` tokens of
    ``tokenizer`` (the evaluated model's), less the task's tokens to generate.

    Each record: ``index``, ``input`` (the prompt up to the answer prefix), ``outputs`` (reference
    strings), ``answer_prefix`` (to append to ``input`` before generating), ``length`` (tokens of
    input + answer prefix + tokens to generate, as RULER counts it) and ``length_w_model_temp``
    (equal to ``length``); niah records also carry ``token_position_answer``.

    Args:
        haystack: override the haystack, "noise" or "needle" (niah) / "noise" (vt); RULER's
            "essay" (Paul Graham essays) is not available offline and raises.
        model_template: RULER's chat wrapper, e.g. ``"[INST] {task_template} [/INST]"``; the
            default is RULER's "base" (no wrapper).
        task_args: override other task arguments (e.g. ``num_hops=2``).
    """
    cfg = _config(task)
    args = dict(cfg["args"])
    if haystack is not None:
        task_args["type_haystack"] = haystack
    unknown = set(task_args) - set(args)
    if unknown:
        raise TypeError(f"{task}: unknown task arguments {sorted(unknown)}; known: {sorted(args)}")
    args.update(task_args)
    if args.get("type_haystack") == "essay":
        raise NotImplementedError(
            "RULER's essay haystack (Paul Graham essays) is not available offline; use haystack='noise' or 'needle'"
        )
    if max_seq_length <= cfg["tokens_to_generate"]:
        raise ValueError(
            f"max_seq_length {max_seq_length} leaves no room beside {cfg['tokens_to_generate']} tokens to generate"
        )
    template = model_template.format(task_template=cfg["template"]) + cfg["answer_prefix"]
    mod = _FAMILIES[cfg["family"]]
    return mod.generate(tokenizer, max_seq_length, num_samples, seed, template, **args)
