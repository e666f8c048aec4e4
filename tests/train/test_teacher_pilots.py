"""The teacher pilots' machinery (docs/distillation.md, "Teacher pilots"): the retrieval probes
(probseq.ruler.probes) and their scorer (probseq.train.probe_eval), the pretraining knobs (retrieval share and
haystack curriculum, time budget, learning curve) and the run identity of older runs. Tiny models and a generated
corpus (``prepare_corpus`` replaced by a stub); seconds."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from probseq.data import corpus as corpus_lib
from probseq.data import retrieval_document, train_tokenizer
from probseq.ruler.probes import MIRRORS, PROBES, probe_sample, probe_set
from probseq.train.pretrain import (
    ADDED_FIELDS,
    EXTRA_RETRIEVAL_SEED,
    PretrainConfig,
    mixed_token_array,
    pretrain,
    pretrain_config,
    stage_scales,
)
from probseq.train.probe_eval import (
    read_curve,
    score_samples,
    summarize,
    t_interval,
    uniform_logp,
    wilson,
)
from probseq.train.schema import from_dict
from tests.helpers import write_fake_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["num_threads=1", "progress=false", "vocab_size=384", "batch_size=2", "seq_len=128", "valid_blocks=2"]
LENGTHS = (256, 384)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    paths = write_fake_corpus(tmp_path_factory.mktemp("corpus"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus_lib, "prepare_corpus", lambda cache_dir=None, **kwargs: paths)
        yield paths


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return train_tokenizer(corpus_lib.iter_documents(corpus, "train"), tmp_path_factory.mktemp("tok") / "t", 1024)


# ------------------------------------------------------------------------------------------------- the probes


def test_retrieval_text_is_unchanged_at_the_default_scale():
    """The haystack ``scale`` knob leaves the corpus' documents as they were (hash of the documents before it)."""
    digest = hashlib.sha256()
    sentences = [f"A sentence of the corpus number {i}, long enough." for i in range(50)]
    for seed in (0, 7):
        for i in range(300):
            kind, text = retrieval_document(seed, i, sentences if i % 2 else ())
            digest.update(kind.encode())
            digest.update(text.encode())
    assert digest.hexdigest() == "5de72135866b724e24139769735b355adeed1a9e6a601fabb6f575b48214d1c2"
    longer = [len(retrieval_document(0, i, (), 3.0)[1]) for i in range(200)]
    assert sum(longer) > 1.5 * sum(len(retrieval_document(0, i)[1]) for i in range(200))


def test_queries_documents_ask_every_needle_and_answer_it():
    """``queries=True``: about half the documents are ``queries`` documents, each asking every needle's key once and
    answering it with that needle's value; the other documents keep the usual kinds; off, nothing changes (above)."""
    kinds = [retrieval_document(3, i, (), queries=True)[0] for i in range(400)]
    assert 0.4 < kinds.count("queries") / len(kinds) < 0.6 and {"needle", "kv_list"} <= set(kinds)
    checked = 0
    for i in range(400):
        kind, text = retrieval_document(3, i, (), queries=True)
        if kind != "queries":
            continue
        needles = dict(re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", text))
        lines = text.split("\n")
        first = next(i for i, line in enumerate(lines) if line.endswith("?"))  # the first question
        pairs = list(zip(lines[first::2], lines[first + 1 :: 2]))
        assert 2 <= len(needles) == len(pairs) and first + 2 * len(pairs) == len(lines)
        asked = []
        for question, answer in pairs:
            key = next(k for k in needles if f" {k}" in question)  # the key the question asks
            asked.append(key)
            assert answer.rstrip(".").endswith(f" {needles[key]}")  # answered with that key's value
        assert sorted(asked) == sorted(needles)  # every key asked exactly once
        checked += 1
    assert checked > 100
    with pytest.raises(ValueError, match="retrieval_share"):
        pretrain_config("small", ["retrieval_queries=true"])


def test_probes_are_deterministic_fit_their_length_and_mirror_ruler(tokenizer):
    for probe in PROBES:
        for length in LENGTHS:
            records = probe_set(probe, tokenizer, length, 6, seed=0)
            assert records == probe_set(probe, tokenizer, length, 6, seed=0)
            assert records[:3] == probe_set(probe, tokenizer, length, 3, seed=0)  # a prefix of a larger set
            assert records != probe_set(probe, tokenizer, length, 6, seed=1)
            for r in records:
                full = tokenizer(r["prompt"] + r["separator"] + r["answer"])["input_ids"]
                assert len(full) == r["tokens"] <= length and r["tokens"] > length - 40  # filled up to the length
                assert len(r["answer"]) == 7 and r["answer"].isdigit()
                needle = f"One of the special magic numbers for {r['key']} is: {r['answer']}."
                assert r["prompt"].count(needle) == 1 and r["prompt"].count(r["answer"]) == 1
                assert r["prompt"].endswith(
                    f"Answer: The special magic number for {r['key']} mentioned in the provided text is"
                )
                if probe == "single":
                    assert r["needles"] == 1 and r["lines"] > 10
                else:  # every haystack line a needle for another key
                    assert r["needles"] == r["lines"] >= 3
    assert MIRRORS == {"single": "niah_single_1", "multikey": "niah_multikey_2"}


def test_probes_are_disjoint_from_pretraining_documents(tokenizer):
    """No probe needle (key and value) occurs in the corpus' retrieval stream (0) or in the generated stream of a
    mixed run (EXTRA_RETRIEVAL_SEED + seed), nor does a probe's prompt."""
    probes = [r for p in PROBES for n in LENGTHS for r in probe_set(p, tokenizer, n, 20, seed=0)]
    needles = {f"for {r['key']} is: {r['answer']}." for r in probes}
    keys = {r["key"] for r in probes}
    values = {r["answer"] for r in probes}
    documents = [retrieval_document(0, i)[1] for i in range(1500)]
    documents += [retrieval_document(EXTRA_RETRIEVAL_SEED, i, (), 2.0)[1] for i in range(800)]
    text = "\n".join(documents)
    assert not [n for n in needles if n in text]
    assert not [k for k in keys if f"for {k} is: " in text and any(f"for {k} is: {v}" in text for v in values)]
    assert not any(r["prompt"][:200] in text for r in probes)


# ------------------------------------------------------------------------------------------------- the scorer


class AnswerStub(torch.nn.Module):
    """A causal LM that predicts the next token of its input with logit ``margin`` (0 elsewhere): greedy decoding
    reproduces whatever sequence it is fed; ``wrong_at`` shifts one predicted position to another token, and
    ``then`` is what it predicts after the end of a sequence."""

    def __init__(self, vocab: int, margin: float = 5.0, wrong_at: int | None = None, then: int = 2):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.margin, self.wrong_at, self.then = vocab, margin, wrong_at, then

    def forward(self, input_ids, logits_to_keep=0, use_cache=False):
        batch, length = input_ids.shape
        nxt = torch.cat([input_ids[:, 1:], torch.zeros(batch, 1, dtype=torch.long)], dim=1)
        nxt[nxt == 0] = self.then  # after the end of a sequence (the padding of a batch is id 0)
        if self.wrong_at is not None:
            nxt[:, self.wrong_at] = (nxt[:, self.wrong_at] + 1) % self.vocab
        logits = torch.zeros(batch, length, self.vocab)
        logits.scatter_(-1, nxt[..., None], self.margin)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        return type("Out", (), {"logits": logits})


def test_scorer_exact_match_and_loglikelihood_arithmetic(tokenizer):
    records = probe_set("single", tokenizer, 256, 3) + probe_set("multikey", tokenizer, 256, 3)
    vocab, margin = len(tokenizer), 5.0
    # the right tokens, then eos: exact match; log p per token = margin − log(e^margin + V − 1)
    rows = score_samples(AnswerStub(vocab, margin), tokenizer, records, batch_tokens=600)  # batches of 2
    per_token = margin - math.log(math.exp(margin) + vocab - 1)
    for row in rows:
        assert row["exact"] == 1.0
        assert row["logp"] == pytest.approx(7 * per_token, rel=1e-5)  # the 7 digits, not the space before them
        assert row["uniform"] == pytest.approx(-7 * math.log(10)) == uniform_logp("1234567")
        assert row["gain"] == pytest.approx(row["logp"] + 7 * math.log(10))
    # ... but the number goes on with a digit: not an exact match
    digit = tokenizer.convert_tokens_to_ids("5")
    assert all(r["exact"] == 0.0 for r in score_samples(AnswerStub(vocab, then=digit), tokenizer, records))
    # a uniform model: log p = −7 log V, no exact match
    flat = score_samples(AnswerStub(vocab, margin=0.0), tokenizer, records)
    assert all(r["logp"] == pytest.approx(-7 * math.log(vocab), rel=1e-5) for r in flat)
    summary = summarize(rows)
    assert set(summary) == {"single", "multikey"} and summary["single"]["256"]["samples"] == 3
    assert summary["single"]["256"]["exact"] == 1.0 and summary["single"]["256"]["exact_high"] == 1.0
    assert summary["multikey"]["256"]["mirrors"] == "niah_multikey_2"


def test_scorer_rejects_a_wrong_digit(tokenizer):
    record = probe_sample("single", tokenizer, 256, 0)
    n = len(tokenizer(record["prompt"])["input_ids"])
    # the stub's predicted token at position n + 3 (the third digit) is wrong: no exact match, lower likelihood
    wrong = score_samples(AnswerStub(len(tokenizer), wrong_at=n + 3), tokenizer, [record])[0]
    right = score_samples(AnswerStub(len(tokenizer)), tokenizer, [record])[0]
    assert wrong["exact"] == 0.0 and right["exact"] == 1.0 and wrong["logp"] < right["logp"] - 4


def test_intervals():
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1 / math.sqrt(3), rel=1e-3)


# ------------------------------------------------------------------------------------------ config and identity


def test_default_fields_keep_the_identity_of_older_runs():
    """The first distillation study's teacher (2026-11-30; its config kept in tests/train/data, as its
    train_log.json recorded it) was made before the new fields: its config, read back, has the same identity (so its
    run folder resumes), and so does every preset; a new field set to another value changes it."""
    old = json.loads((Path(__file__).parent / "data" / "teacher_config_2026-11-30.json").read_text())
    old_run_only = {"save_steps", "save_total_limit", "logging_steps", "progress", "num_threads", "corpus_dir"}
    old_identity = {k: v for k, v in old.items() if k not in old_run_only | {"valid_blocks"}}
    config = from_dict(PretrainConfig, old)
    assert json.loads(json.dumps(config.identity())) == old_identity
    for preset in ("tiny", "small", "340m"):
        identity = pretrain_config(preset).identity()
        assert not set(identity) & (set(ADDED_FIELDS) | {"max_minutes", "probe_every", "probe_lengths"})
    assert pretrain_config("small", ["retrieval_share=0.5"]).identity()["retrieval_share"] == 0.5
    # run settings, not part of the identity
    assert (
        pretrain_config("small", ["max_minutes=30", "probe_every=100"]).identity()
        == pretrain_config("small").identity()
    )
    with pytest.raises(ValueError, match="retrieval_share"):
        pretrain_config("small", ["retrieval_curriculum=true"])
    with pytest.raises(ValueError, match="retrieval_share"):
        pretrain_config("small", ["retrieval_share=1"])
    args = pretrain_config("tiny").training_arguments(Path("/tmp/x"), max_steps=1, learning_rate=1e-3, seed=0)
    assert args.train_sampling_strategy == "random"  # old runs: the Trainer's shuffled blocks


def _answers_in_whole_documents(block: list[int], answer: list[int], bos: int, eos: int) -> tuple[int, int]:
    """(answers, answers whose document begins and ends inside the block): a retrieval document's "Answer:" line
    with the document's bos before it and its eos after it, both in the block."""
    found = whole = 0
    for i in range(len(block) - len(answer) + 1):
        if block[i : i + len(answer)] == answer:
            found += 1
            whole += bos in block[:i] and eos in block[i:]
    return found, whole


def test_mixed_stream_keeps_every_retrieval_document_in_one_block(corpus, tokenizer, tmp_path):
    """Every generated retrieval document lies whole inside one training block (its needle, question and answer
    together), documents longer than a block are dropped and counted, the share of retrieval tokens is met, and
    the curriculum puts short documents first (stage k of 3: at most (k + 1)/3 of a block)."""
    sets = [*TINY, "seq_len=512", "retrieval_share=0.6", "retrieval_scale=3", "retrieval_stages=3"]
    config = pretrain_config("tiny", [*sets, "retrieval_curriculum=true"])
    assert stage_scales(config) == [1.0, 2.0, 3.0]
    tokens, summary = mixed_token_array(tokenizer, tmp_path, config, blocks=60)
    assert tokens.shape == (60 * 512,)
    share = summary["retrieval_tokens"] / (summary["retrieval_tokens"] + summary["book_tokens"])
    assert 0.6 <= share < 0.7 and summary["book_epochs"] > 0
    assert sum(summary["dropped"].values()) > 0 and sum(summary["kinds"].values()) == summary["retrieval_documents"]
    again, _ = mixed_token_array(tokenizer, tmp_path, config, blocks=60)  # cached
    assert np.array_equal(tokens, again)

    answer = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    counts = [
        _answers_in_whole_documents(block.tolist(), answer, tokenizer.bos_token_id, tokenizer.eos_token_id)
        for block in np.asarray(tokens).reshape(60, 512)
    ]
    found, whole = (sum(c) for c in zip(*counts))
    assert found >= 0.3 * summary["retrieval_documents"] and whole == found  # every answer with its document
    text = tokenizer.decode(np.asarray(tokens).tolist())
    joined = len(re.findall(r"\? The special magic \w+ for \S+ mentioned in the provided text is", text))
    apart = len(re.findall(r"\?\n(?:Answer: )?The special magic \w+ for \S+ mentioned in the provided text is", text))
    assert joined > 0 and apart > 0  # RULER's one-line question and answer, and the corpus' two lines

    lengths = summary["retrieval_document_tokens"]
    assert lengths[0] < lengths[-1] <= 512  # longer haystacks at the last stage, never longer than a block
    parts = summary["parts"]
    assert [p[0] for p in parts] == sorted(p[0] for p in parts) and parts[-1][1] == 60
    plain = pretrain_config("tiny", sets)
    shuffled, plain_summary = mixed_token_array(tokenizer, tmp_path, plain, blocks=60)
    assert lengths[0] <= 512 // 3 < plain_summary["retrieval_document_tokens"][0]  # the curriculum's short first stage
    assert not np.array_equal(shuffled, tokens)


def test_mixed_stream_reaches_a_high_share_and_refuses_one_it_cannot(corpus, tokenizer, tmp_path):
    """Blocks are filled looking ahead for documents that fit the space left, so 80 % is reached in every part
    (greedy filling stopped near 72 %); a share the documents cannot fill is an error, not a silent shortfall."""
    config = pretrain_config("tiny", [*TINY, "seq_len=512", "retrieval_share=0.8"])
    _, summary = mixed_token_array(tokenizer, tmp_path, config, blocks=80)
    assert all(share >= 0.79 for share in summary["share_reached"])
    with pytest.raises(ValueError, match="retrieval_share 0.99 cannot be reached"):
        mixed_token_array(
            tokenizer, tmp_path, pretrain_config("tiny", [*TINY, "seq_len=512", "retrieval_share=0.99"]), 40
        )


def test_distillation_draws_a_stream_of_its_own(corpus, tokenizer, tmp_path):
    """Distillation's mixed stream (``purpose="distill"``) has the same make-up as pretraining's with the same
    settings but other documents: a student is not fine-tuned on its teacher's retrieval documents. Pretraining's
    stream is what it was (its cache key unchanged: no purpose in it)."""
    config = pretrain_config("tiny", [*TINY, "seq_len=512", "retrieval_share=0.5"])
    pretraining, pre_summary = mixed_token_array(tokenizer, tmp_path, config, blocks=40)
    distilling, summary = mixed_token_array(tokenizer, tmp_path, config, blocks=40, purpose="distill")
    assert "purpose" not in pre_summary and summary["purpose"] == "distill"
    # pretraining's stream is not moved by distillation's (pinned at MIX_VERSION 4, measured when it was set)
    assert hashlib.sha256(np.asarray(pretraining).tobytes()).hexdigest().startswith("680e4d5a4cd3aa33")
    assert all(share >= 0.49 for share in summary["share_reached"] + pre_summary["share_reached"])

    def values(tokens) -> set[str]:
        return set(re.findall(r" is:? (\d{7})\b", tokenizer.decode(tokens.tolist())))  # needles and answers

    assert len(values(pretraining)) > 10 and len(values(distilling)) > 10
    assert not values(pretraining) & values(distilling)  # no needle value of one stream in the other
    assert len([p for p in tmp_path.glob("mix-*.npy") if not p.name.endswith(".answers.npy")]) == 2  # cached apart
    with pytest.raises(ValueError, match="purpose must be one of"):
        mixed_token_array(tokenizer, tmp_path, config, blocks=40, purpose="finetune")


def test_answer_mask_marks_each_retrieval_documents_answer_line(corpus, tokenizer, tmp_path):
    """The answer mask of a mixed stream is 1 on exactly the answer line of every generated document (the answer
    sentence after a joined question; not the eos after it) and 0 on book text; a stream cached without its mask is
    built again for it, to the same tokens."""
    config = pretrain_config("tiny", [*TINY, "seq_len=512", "retrieval_share=0.6"])
    tokens, summary, answers = mixed_token_array(tokenizer, tmp_path, config, blocks=40, answers=True)
    tokens, answers = np.asarray(tokens), np.asarray(answers)
    assert answers.shape == tokens.shape and answers.dtype == np.uint8 and set(np.unique(answers)) == {0, 1}
    edges = np.flatnonzero(np.diff(np.concatenate([[0], answers, [0]]).astype(int)))
    runs = list(zip(edges[::2], edges[1::2]))
    assert len(runs) == summary["retrieval_documents"]  # one answer per kept document
    starts = ("Answer:", "The special magic", "The value of")
    for begin, end in runs:
        text = tokenizer.decode(tokens[begin:end].tolist()).strip()
        assert text.startswith(starts), text
        assert tokens[end] == tokenizer.eos_token_id  # the document ends right after its answer
        before = tokenizer.decode(tokens[max(0, begin - 12) : begin].tolist())
        assert before.endswith(("\n", "? ", "?")), before  # a line of its own, or the joined question before it
    joined = [b for b, _ in runs if tokenizer.decode(tokens[b - 1 : b].tolist()).endswith("?")]
    assert joined and len(joined) < len(runs)
    share = answers.sum() / summary["retrieval_tokens"]
    assert 0.02 < share < 0.2  # the answer lines are a small part of the retrieval text

    masks = list(tmp_path.glob("mix-*.answers.npy"))
    assert len(masks) == 1
    masks[0].unlink()  # as cached before masks were written
    again, _ = mixed_token_array(tokenizer, tmp_path, config, blocks=40)
    assert np.array_equal(again, tokens) and not masks[0].exists()  # not needed, not built
    again, _, rebuilt = mixed_token_array(tokenizer, tmp_path, config, blocks=40, answers=True)
    assert np.array_equal(again, tokens) and np.array_equal(rebuilt, answers)


def test_answer_weight_weighs_the_loss_of_the_answer_tokens(corpus, tmp_path):
    """``AnswerWeightedTrainer``'s loss is the weighted mean of the next-token cross-entropies (checked by hand);
    with every weight 1 it is the model's own loss; ``answer_weight`` is validated and leaves the identity of runs
    without it unchanged."""
    from transformers import TrainingArguments

    from probseq.models import ProbSeqConfig, ProbSeqForCausalLM
    from probseq.train.pretrain import PackedBlocks
    from probseq.train.trainer import AnswerWeightedTrainer

    torch.manual_seed(0)
    model = ProbSeqForCausalLM(
        ProbSeqConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=16, mixer="gated_deltanet"
        )
    )
    tokens = np.random.default_rng(0).integers(0, 64, 2 * 24).astype(np.uint16)
    answers = np.zeros(len(tokens), np.uint8)
    answers[[5, 6, 7, 30, 31]] = 1
    data = PackedBlocks(tokens, 24, answers=answers, answer_weight=20.0)
    batch = {k: torch.stack([data[i][k] for i in range(2)]) for k in data[0]}
    assert batch["loss_weights"][0, 5] == 20 and batch["loss_weights"][0, 4] == 1
    args = TrainingArguments(str(tmp_path / "t"), report_to="none", use_cpu=True, remove_unused_columns=False)
    trainer = AnswerWeightedTrainer(model=model, args=args)
    loss = trainer.compute_loss(model, batch)
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none")
    w = batch["loss_weights"][:, 1:]
    torch.testing.assert_close(loss, (w * ce).sum() / w.sum())
    plain = {k: v for k, v in batch.items() if k != "loss_weights"}
    ones = {**plain, "loss_weights": torch.ones_like(batch["loss_weights"])}
    torch.testing.assert_close(trainer.compute_loss(model, ones), model(**plain).loss)
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, plain), model(**plain).loss)  # evaluation: unweighted

    assert (
        pretrain_config("small", ["retrieval_share=0.8"]).identity()
        == pretrain_config("small", ["retrieval_share=0.8", "answer_weight=1"]).identity()
    )
    assert pretrain_config("small", ["retrieval_share=0.8", "answer_weight=20"]).identity()["answer_weight"] == 20
    with pytest.raises(ValueError, match="retrieval_share > 0"):
        pretrain_config("small", ["answer_weight=20"])
    with pytest.raises(ValueError, match="answer_weight must be > 0"):
        pretrain_config("small", ["retrieval_share=0.5", "answer_weight=0"])
    with pytest.raises(ValueError, match="answer_weight must be a finite number"):
        PretrainConfig(retrieval_share=0.5, answer_weight=float("inf"))
    with pytest.raises(ValueError, match="retrieval_queries=false or answer_weight=1"):
        pretrain_config("small", ["retrieval_share=0.5", "answer_weight=2", "retrieval_queries=true"])
    model.train()
    with pytest.raises(ValueError, match="without loss_weights"):
        trainer.compute_loss(model, plain)
    with pytest.raises(ValueError, match="skip_logits"):
        pretrain_config("small", ["retrieval_share=0.5", "answer_weight=2", "skip_logits=true"])
    with pytest.raises(ValueError, match="answers has shape"):
        PackedBlocks(tokens, 24, answers=answers[:-1])


def test_queries_stream_is_a_stream_of_its_own(corpus, tokenizer, tmp_path):
    """``retrieval_queries`` builds another stream (its own cache key) holding ``queries`` documents; without it the
    stream is the one before it (pinned in test_distillation_draws_a_stream_of_its_own)."""
    sets = [*TINY, "seq_len=512", "retrieval_share=0.5"]
    plain, plain_summary = mixed_token_array(tokenizer, tmp_path, pretrain_config("tiny", sets), blocks=40)
    config = pretrain_config("tiny", [*sets, "retrieval_queries=true"])
    dense, summary = mixed_token_array(tokenizer, tmp_path, config, blocks=40)
    assert "queries" not in plain_summary["kinds"] and summary["kinds"]["queries"] > 0 and summary["queries"]
    assert not np.array_equal(plain, dense) and all(share >= 0.49 for share in summary["share_reached"])
    answers = len(re.findall(r"mentioned in the provided text is \d{7}", tokenizer.decode(np.asarray(dense).tolist())))
    before = len(re.findall(r"mentioned in the provided text is \d{7}", tokenizer.decode(np.asarray(plain).tolist())))
    assert answers > 1.5 * before  # more retrievals in as many tokens
    assert (
        pretrain_config("tiny", [*sets]).identity()
        == pretrain_config("tiny", [*sets, "retrieval_queries=false"]).identity()
    )


def test_pretraining_with_an_answer_weight_trains_on_the_weighted_loss(corpus, tmp_path, monkeypatch):
    """``answer_weight`` reaches the training batches through the data collator: every training step's batch has
    ``loss_weights`` with the answer weight on the answer lines, and the run finishes with an unweighted validation
    loss."""
    from probseq.train import trainer as trainer_module

    seen = []
    original = trainer_module.AnswerWeightedTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(set(inputs["loss_weights"].unique().tolist()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer_module.AnswerWeightedTrainer, "compute_loss", recording)
    sets = [*TINY, "seq_len=512", "tokens=4096", "retrieval_share=0.5", "answer_weight=5", "save_steps=0"]
    log = pretrain(pretrain_config("tiny", sets), tmp_path)
    assert log["steps"] == 4 and len(seen) == 4 and all(values <= {1.0, 5.0} for values in seen)
    assert set().union(*seen) == {1.0, 5.0} and math.isfinite(log["valid_loss"])


def test_copy_blocks_repeat_random_spans_in_a_share_of_the_blocks(tokenizer):
    """``with_copy_blocks`` replaces ``round(share · blocks)`` blocks (the same ones for a seed, others for another)
    by segments ``<bos> x x <eos>`` of non-special tokens, leaves every other block and the input array alone, zeroes
    the answer mask on the copy blocks, and refuses a bad share; ``copy_share`` is validated and leaves the identity
    of runs without it unchanged."""
    from probseq.train.pretrain import COPY_SPAN, with_copy_blocks

    seq_len, blocks = 128, 40
    tokens = np.random.default_rng(1).integers(0, len(tokenizer), blocks * seq_len + 7).astype(np.uint16)
    answers = np.ones(len(tokens), np.uint8)
    before = tokens.copy()
    out, mask, replaced = with_copy_blocks(tokens, seq_len, 0.25, 3, tokenizer, answers)
    assert replaced == 10 and np.array_equal(tokens, before) and out.dtype == tokens.dtype
    changed = [
        b
        for b in range(blocks)
        if not np.array_equal(out[b * seq_len : (b + 1) * seq_len], before[b * seq_len : (b + 1) * seq_len])
    ]
    assert len(changed) == 10 and np.array_equal(out[blocks * seq_len :], before[blocks * seq_len :])
    for b in range(blocks):
        assert mask[b * seq_len : (b + 1) * seq_len].sum() == (0 if b in changed else seq_len)
    bos, eos, special = tokenizer.bos_token_id, tokenizer.eos_token_id, set(tokenizer.all_special_ids)
    spans = 0
    for b in changed:
        block = out[b * seq_len : (b + 1) * seq_len].tolist()
        assert block[0] == bos
        cuts = [i for i, t in enumerate(block) if t == bos] + [seq_len]
        for start, end in zip(cuts, cuts[1:]):
            segment = block[start + 1 : end]
            if end == seq_len and (not segment or segment[-1] != eos):
                continue  # the last segment, cut at the block's end
            assert segment[-1] == eos
            body = segment[:-1]
            half = len(body) // 2
            assert len(body) % 2 == 0 and body[:half] == body[half:] and COPY_SPAN[0] <= half <= COPY_SPAN[1]
            assert not set(body) & special
            spans += 1
    assert spans >= 10
    again, _, _ = with_copy_blocks(tokens, seq_len, 0.25, 3, tokenizer)
    other, _, _ = with_copy_blocks(tokens, seq_len, 0.25, 4, tokenizer)
    assert np.array_equal(again, out) and not np.array_equal(other, out)
    assert with_copy_blocks(tokens, seq_len, 0.0, 3, tokenizer, answers) == (tokens, answers, 0)
    with pytest.raises(ValueError, match="share must be in"):
        with_copy_blocks(tokens, seq_len, 1.0, 3, tokenizer)
    assert pretrain_config("small").identity() == pretrain_config("small", ["copy_share=0"]).identity()
    assert pretrain_config("small", ["copy_share=0.5"]).identity()["copy_share"] == 0.5
    with pytest.raises(ValueError, match="copy_share must be in"):
        pretrain_config("small", ["copy_share=1"])


def test_pretraining_with_copy_blocks_trains_on_them(corpus, tmp_path, monkeypatch):
    """``copy_share`` reaches the training data of a mixed run: of the blocks trained on, exactly as many are copy
    blocks as the log counts."""
    from probseq.train import pretrain as pretrain_module

    seen = []
    original = pretrain_module.PackedBlocks.__getitem__

    def recording(self, index):
        item = original(self, index)
        if self.count > 2:  # the training blocks, not the validation ones
            seen.append(item["input_ids"])
        return item

    monkeypatch.setattr(pretrain_module.PackedBlocks, "__getitem__", recording)
    sets = [*TINY, "seq_len=512", "tokens=8192", "retrieval_share=0.5", "copy_share=0.5", "save_steps=0"]
    log = pretrain(pretrain_config("tiny", sets), tmp_path)
    assert log["steps"] == 8 and log["copy_blocks"] == 8 and math.isfinite(log["valid_loss"])

    def repeats(ids):  # a copy block: its first segment <bos> x x <eos>
        ids = ids.tolist()
        end = ids.index(ids[0], 1) if ids[0] in ids[1:] else len(ids)
        body = ids[1 : end - 1]
        return len(body) % 2 == 0 and len(body) > 0 and body[: len(body) // 2] == body[len(body) // 2 :]

    assert sum(map(repeats, seen)) == 8 and len(seen) == 16


def test_pretraining_without_the_output_gate_exports_a_model_without_it(corpus, tmp_path):
    """``use_gate=false`` builds the Gated DeltaNet without its output gate (no ``g_proj``), the fla export says so
    and loads back as such; at its default the identity of older runs is unchanged."""
    from probseq.interop.fla import convert_fla

    log = pretrain(pretrain_config("tiny", [*TINY, "tokens=1024", "use_gate=false", "save_steps=0"]), tmp_path / "r")
    assert log["steps"] == 4 and math.isfinite(log["valid_loss"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["use_gate"] is False
    model = convert_fla(tmp_path / "r", tmp_path / "converted")
    assert model.config.use_gate is False and not any("g_proj" in name for name, _ in model.named_parameters())
    assert pretrain_config("small").identity() == pretrain_config("small", ["use_gate=true"]).identity()
    assert pretrain_config("small", ["use_gate=false"]).identity()["use_gate"] is False


def test_mixed_stream_refuses_a_block_no_document_fits(corpus, tokenizer, tmp_path):
    config = pretrain_config("tiny", [*TINY, "seq_len=16", "retrieval_share=0.5"])
    with pytest.raises(ValueError, match=r"longer than 16 tokens \(seq_len=16\)"):
        mixed_token_array(tokenizer, tmp_path, config, blocks=4)


# ------------------------------------------------------------------------------ the learning curve and the budget

PROBE_SETTINGS = ["probe_every=2", "probe_samples=2", "probe_final_samples=3", "probe_lengths=[256]"]


def test_learning_curve_is_written_and_resumes_without_duplicates(corpus, tmp_path):
    settings = [
        *TINY,
        "seq_len=512",  # mixed runs need blocks that hold a generated retrieval document
        "tokens=8192",
        "save_steps=4",
        "logging_steps=1",
        "retrieval_share=0.5",
        *PROBE_SETTINGS,
    ]
    log = pretrain(pretrain_config("tiny", settings), tmp_path)  # 8 steps of 2 × 512 tokens
    assert log["steps"] == 8 and not log["out_of_time"] and log["mix"]["blocks"] == 16
    rows = read_curve(tmp_path)
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8] and [r["final"] for r in rows] == [False] * 4 + [True]
    assert rows[-1]["probes"]["single"]["256"]["samples"] == 3 and rows[1]["probes"]["multikey"]["256"]["samples"] == 2
    assert rows[0]["train_loss"] is None and all(r["train_loss"] is not None for r in rows[1:])
    assert all(r["valid_loss"] > 0 and r["tokens"] == r["step"] * 1024 for r in rows)
    assert [r["seconds"] for r in rows[1:]] == sorted(r["seconds"] for r in rows[1:])
    assert log["probes"] == rows[-1]["probes"]
    for name in ("curve.csv", "curve.png"):
        assert (tmp_path / name).is_file()
    header = (tmp_path / "curve.csv").read_text().splitlines()[0]
    assert "single@256.exact" in header and "multikey@256.gain" in header
    # an interruption after the checkpoint at step 4: the curve's later rows are dropped and redone, once each
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-8")
    log = pretrain(pretrain_config("tiny", settings), tmp_path)
    assert log["resumed_from_step"] == 4 and log["steps"] == 8
    again = read_curve(tmp_path)
    assert [r["step"] for r in again] == [0, 2, 4, 6, 8] and again[:3] == rows[:3] and again[-1]["final"]
    # a rerun of the finished run evaluates nothing more
    pretrain(pretrain_config("tiny", settings), tmp_path)
    assert read_curve(tmp_path) == again


def test_max_minutes_stops_cleanly_and_a_larger_budget_continues(corpus, tmp_path):
    settings = [*TINY, "tokens=1536", "save_steps=100", "probe_every=100", "probe_samples=1", "probe_lengths=[256]"]
    log = pretrain(pretrain_config("tiny", [*settings, "max_minutes=0.00001"]), tmp_path)
    assert log["out_of_time"] and log["steps"] == 1 < log["max_steps"] == 6
    assert (tmp_path / "checkpoints" / "checkpoint-1").is_dir()  # checkpointed where it stopped
    assert (tmp_path / "model.safetensors").is_file() and log["valid_loss"] is not None  # evaluated and exported
    assert read_curve(tmp_path)[-1]["final"] and read_curve(tmp_path)[-1]["step"] == 1
    again = pretrain(pretrain_config("tiny", [*settings, "max_minutes=0.00001"]), tmp_path)
    assert again["out_of_time"] and again["steps"] == 1 and again["resumed_from_step"] == 1  # nothing more
    done = pretrain(pretrain_config("tiny", settings), tmp_path)  # no budget: the same run goes on to its end
    assert not done["out_of_time"] and done["steps"] == 6 and done["resumed_from_step"] == 1
    assert [r["step"] for r in read_curve(tmp_path)] == [0, 1, 6]


# ------------------------------------------------------------------------------------------- scripts/teacher_pilots


def fake_pilot(root: Path, name: str, exact: tuple[float, float], gain: tuple[float, float], **config) -> None:
    """A finished pilot's train_log.json and curve.json, as pretrain writes them."""
    probes = {
        probe: {
            str(length): {
                "samples": 100,
                "exact": e,
                "exact_low": max(0.0, e - 0.1),
                "exact_high": min(1.0, e + 0.1),
                "gain": g,
                "gain_low": g - 1,
                "gain_high": g + 1,
            }
            for length in (256, 512, 1024)
        }
        for probe, e, g in (("single", exact[0], gain[0]), ("multikey", exact[1], gain[1]))
    }
    folder = root / name
    folder.mkdir(parents=True)
    log = {
        "config": {**pretrain_config("small").__dict__, **config},
        "num_parameters": 5_786_384,
        "tokens": 3_072_000,
        "steps": 375,
        "max_steps": 375,
        "out_of_time": False,
        "train_seconds": 1500.0,
        "valid_loss": 4.0,
        "probes": probes,
    }
    (folder / "train_log.json").write_text(json.dumps(log, default=list))
    rows = [{"step": s, "tokens": s * 8192, "valid_loss": 5.0 - s / 375, "probes": probes} for s in (0, 375)]
    (folder / "curve.json").write_text(json.dumps(rows))


def test_pilot_script_plan_selection_and_report(tmp_path):
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "teacher_pilots.py"))
    pilots = {p.name: p for p in script["PILOTS"]}
    # round 2 builds on the round-1 winner; the haystack pilots need generated documents (share >= 0.5)
    assert script["pilot_sets"](pilots["vocab2k"], "share80") == ["retrieval_share=0.8", "vocab_size=2048"]
    assert "retrieval_share=0.5" in script["pilot_sets"](pilots["curriculum"], "baseline")
    rates = {script["shape_key"]([]): 2000.0}
    sets, info = script["budget"]([], rates, 30)
    assert info["steps"] == int(2000 * 28 * 60 * 0.92 / 8192) and f"tokens={info['steps'] * 8192}" in sets
    assert "max_minutes=56" in sets  # the budget is the tokens; the clock a safety stop at twice the plan
    for pilot in script["PILOTS"]:  # every planned pilot is a valid config
        planned, _ = script["planned"]({k: 2000.0 for k in script["all_shapes"]()}, 30, "share50", pilot)
        pretrain_config("small", planned)
    # plan item 5: exact match first; within 0.05, the answer gain
    best, beats = script["best"], script["beats"]
    assert best(["a", "b"], {"a": (0.30, 1.0), "b": (0.20, 9.0)}) == "a"
    assert best(["a", "b"], {"a": (0.30, 1.0), "b": (0.27, 2.0)}) == "b"
    assert best(["a", "b"], {"a": None, "b": (0.0, -1.0)}) == "b" and beats((0.5, 0), (0.4, 9))
    assert not beats((0.3, 2.4), (0.3, 2.0)) and beats((0.3, 2.6), (0.3, 2.0))  # plan item 6: a gain margin
    fake_pilot(tmp_path, "baseline", (0.0, 0.0), (0.1, 0.0))
    fake_pilot(tmp_path, "share50", (0.1, 0.0), (2.0, 1.0), retrieval_share=0.5)
    fake_pilot(tmp_path, "share80", (0.3, 0.1), (4.0, 2.0), retrieval_share=0.8)
    fake_pilot(tmp_path, "vocab2k", (0.5, 0.2), (6.0, 3.0), retrieval_share=0.8, vocab_size=2048)
    fake_pilot(tmp_path, "narrow_deep", (0.1, 0.0), (1.0, 0.0), retrieval_share=0.8, hidden_size=192)
    fake_pilot(tmp_path, "curriculum", (0.7, 0.4), (7.0, 5.0), retrieval_share=0.8, retrieval_curriculum=True)
    assert script["round1_winner"](tmp_path) == "share80" and script["decide_round1"](tmp_path) == "share80"
    assert json.loads((tmp_path / "round1_winner.json").read_text())["winner"] == "share80"
    out = tmp_path / "results"
    out.mkdir()
    (out / "README.md").write_text(
        "# Teacher pilots — plan, not yet run\n\n**Status: plan, not yet run.** Everything below was fixed before "
        f"any pilot ran.\n\n{script['MARKER']}\n\nNot yet run.\n"
    )
    script["main"](["report", "--root", str(tmp_path), "--out", str(out)])
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Teacher pilots\n") and "6 of 7 pilots run" in readme and "Not yet run" not in readme
    assert "best pilot overall: **curriculum**" in readme and "partial" in readme
    # the teacher: share 0.8 + vocab2k + curriculum; narrow_deep lost to share80
    command = next(line for line in readme.splitlines() if "probseq pretrain" in line)
    assert "retrieval_share=0.8" in command and "vocab_size=2048" in command
    assert "retrieval_curriculum=true" in command and "hidden_size" not in command
    csv_rows = (out / "pilots.csv").read_text().splitlines()
    assert len(csv_rows) == 7 and "single@512.exact" in csv_rows[0]
    assert (out / "curves.png").is_file() and (out / "curves" / "share80.csv").exists() is False
    assert (out / "curves" / "share80.json").is_file()
    # a later report updates the status line the earlier one wrote
    fake_pilot(tmp_path, "wide_shallow", (0.1, 0.0), (1.0, 0.0), retrieval_share=0.8, hidden_size=384)
    script["main"](["report", "--root", str(tmp_path), "--out", str(out)])
    readme = (out / "README.md").read_text()
    assert "**Status: 7 of 7 pilots run.** The plan below" in readme and "6 of 7" not in readme


def test_round_two_waits_for_round_one_and_failed_pilots_are_not_retried(tmp_path, monkeypatch):
    """Round 2 starts only when every round-1 pilot has finished or failed, on a winner saved once; a pilot that
    failed (a divergence among the causes) is marked and skipped by a rerun unless --retry-failed; the haystack pilot
    is compared with share50 when the winner's share is below 0.5."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "teacher_pilots.py"))
    pilots = {p.name: p for p in script["PILOTS"]}
    fake_pilot(tmp_path, "baseline", (0.2, 0.1), (3.0, 1.0))
    fake_pilot(tmp_path, "share50", (0.1, 0.0), (2.0, 1.0), retrieval_share=0.5)
    with pytest.raises(SystemExit, match="not finished: share80"):
        script["decide_round1"](tmp_path)
    assert not (tmp_path / "round1_winner.json").exists()
    assert script["reference"](pilots["curriculum"], "baseline") == "share50"
    assert script["reference"](pilots["curriculum"], "share80") == "share80"
    assert script["reference"](pilots["vocab2k"], "baseline") == "baseline"

    calls = []

    def fake_call(command, stdout=None, stderr=None):  # every pilot run fails
        calls.append(command[command.index("--out") + 1])
        return 3

    run_globals = script["run"].__globals__
    monkeypatch.setattr(run_globals["os"], "getloadavg", lambda: (3.0, 3.0, 3.0))  # a busy machine
    with pytest.raises(SystemExit, match="machine is busy"):
        script["main"](["time", "--root", str(tmp_path / "timing")])
    assert not (tmp_path / "timing" / "timing.json").exists()
    monkeypatch.setattr(run_globals["os"], "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(run_globals["time"], "sleep", lambda seconds: None)
    monkeypatch.setitem(run_globals, "timing", lambda args: {k: 2000.0 for k in script["all_shapes"]()})
    monkeypatch.setattr(run_globals["subprocess"], "call", fake_call)
    args = ["run", "--root", str(tmp_path), "--only", "share80"]
    script["main"](args)
    assert calls == [str(tmp_path / "share80")] and script["read_failure"](tmp_path, "share80")["exit"] == 3
    script["main"](args)  # not retried
    assert len(calls) == 1
    script["main"]([*args, "--retry-failed"])
    assert len(calls) == 2
    with pytest.raises(SystemExit, match="round-1 pilots failed: share80"):  # maybe the machine's failure
        script["decide_round1"](tmp_path)
    assert script["decide_round1"](tmp_path, accept_failed=True) == "baseline"  # share80 out of the selection
    # the curriculum (at share 0.5) beats share50 but not the winner: share 0.5, which lost round 1, stays out
    fake_pilot(tmp_path, "curriculum", (0.15, 0.1), (2.0, 1.0), retrieval_share=0.5, retrieval_curriculum=True)
    logs = {n: script["read_log"](tmp_path, n) for n in ("baseline", "share50", "curriculum")}
    assert script["teacher_recipe"](tmp_path, logs) == ([], ["baseline"])
    fake_pilot(tmp_path, "share80", (0.9, 0.9), (9.0, 9.0), retrieval_share=0.8)  # finishing later changes nothing
    assert script["round1_winner"](tmp_path) == "baseline"


def test_budgets_are_tokens_and_only_the_planned_complete_pilots_compete(tmp_path, monkeypatch):
    """Amended before any pilot ran, after a review: a timing at another thread count is refused; a pilot the
    safety stop cut before 95 % of its steps is out of the comparison; a finished pilot of other settings is not
    counted; a difference of exactly 0.05 is 'within 0.05' whatever its float rounding."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "teacher_pilots.py"))
    (tmp_path / "timing.json").write_text(json.dumps([{"shape": {}, "threads": 1, "tokens_per_second": 1229.0}]))
    args = script["main"].__globals__["argparse"].Namespace(root=str(tmp_path), again=False)
    with pytest.raises(SystemExit, match=r"measured with \[1\] thread"):
        script["timing"](args)
    beats, best, score = script["beats"], script["best"], script["score"]
    for high, low in ((0.35, 0.30), (0.55, 0.50), (0.15, 0.10)):  # exactly 0.05 apart: within, so gain decides
        assert not beats((high, 0.0), (low, 0.0)) and beats((low, 1.0), (high, 0.0))
        assert best(["a", "b"], {"a": (high, 0.0), "b": (low, 1.0)}) == "b"
    fake_pilot(tmp_path, "share50", (0.9, 0.9), (9.0, 9.0), retrieval_share=0.5)
    log = script["read_log"](tmp_path, "share50")
    assert score(log) is not None
    cut = {**log, "out_of_time": True, "steps": 300, "max_steps": 375}
    assert script["cut_short"](cut) and score(cut) is None
    assert score({**cut, "steps": 360}) is not None  # 96 %: the schedule had all but ended
    # a finished pilot whose settings are not the plan's is refused, not counted as done
    monkeypatch.setitem(script["run"].__globals__, "timing", lambda args: {k: 2000.0 for k in script["all_shapes"]()})
    with pytest.raises(SystemExit, match="share50 finished with other settings than the plan gives it now"):
        script["main"](["run", "--root", str(tmp_path), "--only", "share50", "--ignore-load"])


def test_the_learning_curve_does_not_change_the_weights(corpus, tmp_path):
    """probe_every is a run setting (not in the identity): evaluating changes no weight."""
    from safetensors.torch import load_file

    settings = [*TINY, "seq_len=512", "tokens=4096", "retrieval_share=0.5"]
    pretrain(pretrain_config("tiny", settings), tmp_path / "plain")
    pretrain(pretrain_config("tiny", [*settings, *PROBE_SETTINGS]), tmp_path / "probed")
    plain, probed = (load_file(tmp_path / name / "model.safetensors") for name in ("plain", "probed"))
    assert plain.keys() == probed.keys() and all(torch.equal(plain[k], probed[k]) for k in plain)
    assert not (tmp_path / "plain" / "curve.json").exists() and read_curve(tmp_path / "probed")


def test_archived_pilot_records_let_a_new_machine_go_on_from_the_next_pilot(tmp_path):
    """``archive`` keeps what marks the pilots' progress (done markers, curves, timing, the round-1 winner, failure
    markers) and nothing heavy; ``restore`` on an empty root makes ``run`` see the same finished pilots and winner."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "teacher_pilots.py"))
    first, records, second = tmp_path / "first", tmp_path / "records", tmp_path / "second"
    fake_pilot(first, "baseline", (0.0, 0.0), (0.1, 0.0))
    fake_pilot(first, "share50", (0.1, 0.0), (2.0, 1.0), retrieval_share=0.5)
    (first / "timing.json").write_text("{}")
    (first / "share80.failed.json").write_text(json.dumps({"exit": 1, "at": "now"}))
    (first / "baseline" / "model.safetensors").write_bytes(b"weights")  # not a record
    (first / "vocab2k").mkdir()
    (first / "vocab2k" / "curve.json").write_text("[]")  # an unfinished pilot's curve: not a record
    (records / "share50.failed.json").parent.mkdir(parents=True)
    (records / "share50.failed.json").write_text("{}")  # failed once, finished since: dropped from the archive
    script["main"](["archive", "--root", str(first), "--out", str(records)])
    assert not list(records.glob("**/*.safetensors")) and (records / "share80.failed.json").exists()
    assert not (records / "vocab2k").exists() and not (records / "share50.failed.json").exists()

    script["main"](["restore", "--root", str(second), "--out", str(records)])
    for name in ("baseline", "share50", "share80"):
        assert script["read_log"](second, name) == script["read_log"](first, name)
        assert script["read_failure"](second, name) == script["read_failure"](first, name)
    assert script["read_log"](second, "baseline") is not None
    assert (second / "timing.json").exists() and not (second / "baseline" / "model.safetensors").exists()
    assert script["round1_winner"](second) == script["round1_winner"](first)
