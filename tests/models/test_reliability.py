"""The reliability contract of the language models (probseq.models): their configurations, checkpoints,
forward, ``generate`` and cache. A bad input is a ``ValueError`` naming the argument, its value or shape and
what is expected; what works (save/load bit-identical, decoding = full forward) keeps working
(docs/reliability.md). Each test is a regression test of a case found by a review of the models, or of a problem of
the same class found next to it, named for what it checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import probseq.models  # noqa: F401  (registers the Auto classes)
from probseq.layers import MIXERS
from probseq.models import ProbSeqConfig, ProbSeqForCausalLM, ProbSeqModel, ZoologyConfig, ZoologyModel
from tests.helpers import REPO, TINY_LM_PAD, TINY_LM_VOCAB, tiny_lm, tiny_lm_kwargs

CASES = [*MIXERS, "hybrid"]


pytestmark = pytest.mark.usefixtures("one_thread")


def ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, TINY_LM_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def saved(tmp_path: Path, model=None, name: str = "model") -> Path:
    folder = tmp_path / name
    (model if model is not None else tiny_lm()).save_pretrained(folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------------------------
# An unknown config key is an error; a tensor missing from (or extra in) a checkpoint is an error.


def test_misspelt_key_in_config_json_is_refused(tmp_path):
    folder = saved(tmp_path, tiny_lm(retention="reset"))
    edit_config(folder, retension="reset")
    for load in (
        ProbSeqConfig.from_pretrained,
        AutoConfig.from_pretrained,
        ProbSeqForCausalLM.from_pretrained,
        AutoModelForCausalLM.from_pretrained,
    ):
        with pytest.raises(ValueError, match=r"'retension'.*did you mean 'retention'"):
            load(folder)


def test_unknown_key_in_from_dict_constructor_and_overrides_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'retension'.*'retention'"):
        ProbSeqConfig.from_dict({**tiny_lm_kwargs(), "retension": "reset"})
    with pytest.raises(ValueError, match=r"'num_head'.*'num_heads'"):
        ProbSeqConfig(**tiny_lm_kwargs(), num_head=4)
    with pytest.raises(ValueError, match="'rope_scaling'"):  # a transformers key probseq's attention ignores
        ProbSeqConfig(**tiny_lm_kwargs(), rope_scaling={"type": "linear", "factor": 2.0})
    folder = saved(tmp_path)
    with pytest.raises(ValueError, match=r"'norm_epsilon'.*'norm_eps'"):
        ProbSeqConfig.from_pretrained(folder, norm_epsilon=1e-5)


def test_transformers_keys_still_load(tmp_path):
    model = tiny_lm()
    folder = saved(tmp_path, model)
    config = json.loads((folder / "config.json").read_text())
    assert {"architectures", "dtype", "transformers_version", "model_type"} <= set(config)
    # Keys other transformers versions and tools write: all of them still load.
    edit_config(
        folder,
        torch_dtype="float32",
        _name_or_path="somewhere",
        auto_map={"AutoConfig": "x.Y"},
        max_length=20,
        do_sample=False,
        output_attentions=False,
        tokenizer_class="PreTrainedTokenizerFast",
        _attn_implementation_autoset=True,
        use_bfloat16=False,
        is_decoder=True,
        id2label={"0": "a", "1": "b"},
    )
    loaded = ProbSeqForCausalLM.from_pretrained(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert ProbSeqConfig.from_pretrained(REPO / "results" / "distill" / "bayes").retention == "learned"
    again = ProbSeqConfig.from_dict(loaded.config.to_dict())
    assert again.to_dict() == loaded.config.to_dict()


def _drop_tensor(folder: Path, name: str) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_tensor_missing_from_the_checkpoint_is_an_error(tmp_path):
    model = tiny_lm()
    folder = saved(tmp_path, model)
    _drop_tensor(folder, "model.layers.1.attn.c_weight")
    for load in (ProbSeqForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=r"model\.layers\.1\.attn\.c_weight.*strict=False"):
            load(folder)
    loaded, info = ProbSeqForCausalLM.from_pretrained(folder, strict=False, output_loading_info=True)
    assert info["missing_keys"] == {"model.layers.1.attn.c_weight"}
    assert torch.equal(loaded.model.layers[0].attn.c_weight, model.model.layers[0].attn.c_weight)


def test_checkpoint_of_another_retention_is_an_error(tmp_path):
    """A checkpoint saved with retention='reset' loaded into a 'learned' config."""
    folder = saved(tmp_path, tiny_lm(retention="reset"))
    edit_config(folder, retention="learned")
    with pytest.raises(ValueError, match=r"c_bias.*c_scale.*c_weight"):
        ProbSeqForCausalLM.from_pretrained(folder)


def test_unexpected_tensor_in_the_checkpoint_is_an_error(tmp_path):
    folder = saved(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.attn.extra"] = torch.zeros(3)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.attn\.extra"):
        ProbSeqForCausalLM.from_pretrained(folder)
    assert isinstance(ProbSeqForCausalLM.from_pretrained(folder, strict=False), ProbSeqForCausalLM)


@pytest.mark.parametrize("tie", [True, False])
def test_round_trips_and_tied_heads_still_load(tmp_path, tie):
    model = tiny_lm(tie_word_embeddings=tie)
    folder = saved(tmp_path, model)
    loaded, info = ProbSeqForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert (loaded.lm_head.weight is loaded.model.embeddings.weight) == tie
    base = ProbSeqModel.from_pretrained(folder)  # the body of a causal LM checkpoint: its head is not an error
    assert torch.equal(base.embeddings.weight, model.model.embeddings.weight)
    zoology = ZoologyModel(ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_model=32))
    zoology.save_pretrained(tmp_path / "zoology")
    assert torch.equal(ZoologyModel.from_pretrained(tmp_path / "zoology").lm_head.weight, zoology.lm_head.weight)


# ---------------------------------------------------------------------------------------------------------------
# Every value of the configuration is checked at construction, naming the field.

BAD_VALUES = [
    ("norm_eps", -1.0),
    ("norm_eps", 0.0),
    ("norm_eps", float("nan")),
    ("initializer_range", -0.02),
    ("initializer_range", float("inf")),
    ("hidden_ratio", -4),
    ("expand_v", 0.0),
    ("rope_theta", -1.0),
    ("state_size", -1),
    ("expand", 0),
    ("n_groups", 0),
    ("conv_size", 2.5),
    ("max_position_embeddings", 0),
    ("num_v_heads", 0),
    ("attn_num_heads", 0),
    ("attn_num_kv_heads", -2),
    ("retention_init", 1.5),
    ("r_min", -0.1),
    ("feature_map", "softmax"),
    ("decay", "linear"),
    ("output_gate_activation", "gelu"),
    ("use_gate", "yes"),
    ("use_short_conv", 1),
    ("qkv_bias", None),
    ("tie_word_embeddings", "no"),
    ("pad_token_id", TINY_LM_VOCAB),
    ("pad_token_id", -1),
    ("bos_token_id", 1.0),
    ("eos_token_id", [2, TINY_LM_VOCAB]),
    ("attn_layers", 3),
    ("num_heads", True),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_invalid_config_values_are_refused_naming_the_field(field, value):
    kwargs = tiny_lm_kwargs(**{field: value})
    if field == "hidden_ratio":
        kwargs["intermediate_size"] = None
    with pytest.raises(ValueError, match=rf"^{field}\b.*{value!r}".replace("[", r"\[").replace("(", r"\(")):
        ProbSeqConfig(**kwargs)


def test_valid_edge_values_still_work():
    ProbSeqConfig(**tiny_lm_kwargs("attention", rope_theta=None, max_position_embeddings=None))
    ProbSeqConfig(**tiny_lm_kwargs(hidden_ratio=None, intermediate_size=None, r_min=0, retention_init=1))
    ProbSeqConfig(**tiny_lm_kwargs(eos_token_id=[1, 2], bos_token_id=1, pad_token_id=None, expand_v=2))
    ProbSeqConfig()  # the defaults


def test_values_changed_after_construction_are_checked_when_a_model_is_built(tmp_path):
    config = ProbSeqConfig(**tiny_lm_kwargs())
    config.norm_eps = -1.0
    with pytest.raises(ValueError, match="norm_eps"):
        ProbSeqForCausalLM(config)
    folder = saved(tmp_path)
    with pytest.raises(ValueError, match="initializer_range"):
        ProbSeqConfig.from_pretrained(folder, initializer_range=-0.02)
    with pytest.raises(ValueError, match="hidden_ratio"):
        ProbSeqForCausalLM.from_pretrained(folder, hidden_ratio=-4.0, intermediate_size=None)


def test_zoology_config_is_checked_the_same_way():
    with pytest.raises(ValueError, match="^norm_eps.*-1"):
        ZoologyConfig(vocab_size=TINY_LM_VOCAB, norm_eps=-1.0)
    with pytest.raises(ValueError, match="^initializer_range"):
        ZoologyConfig(vocab_size=TINY_LM_VOCAB, initializer_range=-0.02)
    with pytest.raises(ValueError, match=r"'d_modle'.*'d_model'"):
        ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_modle=64)
    ZoologyConfig(vocab_size=2, d_model=16)  # tiny vocabularies stay valid (the mixer config has no token ids)


# ---------------------------------------------------------------------------------------------------------------
# A zero-length input.


@pytest.mark.parametrize("case", CASES)
def test_forward_of_an_empty_input_is_empty(case):
    model = tiny_lm(case)
    with torch.no_grad():
        out = model(ids(2, 0), output_hidden_states=True)
        assert out.logits.shape == (2, 0, TINY_LM_VOCAB)
        assert len(out.hidden_states) == 3 and all(h.shape == (2, 0, 32) for h in out.hidden_states)
        # with a cache: an empty step changes nothing
        prompt = ids(2, 5)
        cache = model(prompt).cache
        before = [layer.state for layer in cache.layers]
        empty = model(ids(2, 0), cache=cache, attention_mask=torch.ones(2, 5, dtype=torch.long))
        assert empty.logits.shape == (2, 0, TINY_LM_VOCAB) and empty.cache is cache
        assert [layer.state for layer in cache.layers] == before and cache.get_seq_length() == 5
        if case == "bayesian":  # the variance of an empty input is empty, not the last call's
            model(ids(2, 0), output_variance=True)
            assert [v.shape for v in model.model.variances()] == [(2, 0, 2)] * 2
        step = model(ids(2, 1, seed=3), cache=cache).logits
        full = model(torch.cat([prompt, ids(2, 1, seed=3)], 1), use_cache=False).logits
        torch.testing.assert_close(step[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_generate_with_an_empty_prompt_is_refused():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"generate needs at least one prompt token.*\[2, 0\]"):
        model.generate(ids(2, 0), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"generate needs at least one prompt token"):
        model.generate(input_ids=ids(1, 0), max_new_tokens=2)


def test_zoology_forward_of_an_empty_input_is_empty():
    model = ZoologyModel(ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_model=32)).eval()
    assert model(ids(2, 0)).logits.shape == (2, 0, TINY_LM_VOCAB)
    assert model(ids(2, 0), logits_mask=torch.zeros(2, 0, dtype=torch.bool)).logits.shape == (0, TINY_LM_VOCAB)


# ---------------------------------------------------------------------------------------------------------------
# Token ids outside the vocabulary.


@pytest.mark.parametrize("bad", [TINY_LM_VOCAB, TINY_LM_VOCAB + 100, -1])
def test_out_of_vocabulary_input_ids_are_named(bad):
    model = tiny_lm()
    x = ids(2, 6)
    x[1, 4] = bad
    with pytest.raises(ValueError, match=rf"input_ids\[1, 4\] = {bad}.*vocab_size={TINY_LM_VOCAB}"):
        model(x)
    with pytest.raises(ValueError, match=rf"input_ids\[1, 4\] = {bad}.*vocab_size={TINY_LM_VOCAB}"):
        model.generate(x, max_new_tokens=2)
    zoology = ZoologyModel(ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_model=32))
    with pytest.raises(ValueError, match=rf"input_ids\[1, 4\] = {bad}.*vocab_size={TINY_LM_VOCAB}"):
        zoology(x)


@pytest.mark.parametrize("bad", [TINY_LM_VOCAB, -5, -1])
def test_labels_outside_the_vocabulary_are_named(bad):
    model = tiny_lm()
    labels = ids(2, 6, seed=1)
    labels[0, 2] = bad
    with pytest.raises(ValueError, match=rf"labels\[0, 2\] = {bad}.*vocab_size={TINY_LM_VOCAB}.*-100"):
        model(ids(2, 6), labels=labels)
    labels[0, 2] = -100  # the ignore index is the one negative label
    loss = model(ids(2, 6), labels=labels).loss
    assert torch.isfinite(loss)
    assert torch.equal(model(ids(2, 6), labels=labels.int()).loss, loss)  # int32 labels are widened


# ---------------------------------------------------------------------------------------------------------------
# A damaged weights file.


@pytest.mark.parametrize("keep", [0.5, 0.999, 5])
def test_truncated_safetensors_names_the_file(tmp_path, keep):
    folder = saved(tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ValueError, match="damaged or truncated") as info:
        ProbSeqForCausalLM.from_pretrained(folder)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, SafetensorError)
    with pytest.raises(ValueError, match="damaged or truncated"):
        AutoModelForCausalLM.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------------
# The same class of problem at the models' other inputs.


def test_input_ids_must_be_integer_batch_by_time():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor \[B, T\].*float32"):
        model(ids(2, 5).float())
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor \[B, T\] \(int64 or int32\).*uint8"):
        model(ids(2, 5).to(torch.uint8))
    assert torch.equal(model(ids(2, 5).int()).logits, model(ids(2, 5)).logits)
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor \[B, T\].*\[5\]"):
        model(ids(1, 5)[0])
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(ids(1, 5), inputs_embeds=torch.zeros(1, 5, 32))


def test_inputs_embeds_of_the_wrong_size_or_dtype_are_named():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"inputs_embeds must be \[B, T, 32\].*\[1, 5, 16\]"):
        model(inputs_embeds=torch.zeros(1, 5, 16))
    with pytest.raises(ValueError, match=r"inputs_embeds.*float64.*float32"):
        model(inputs_embeds=torch.zeros(1, 5, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"inputs_embeds.*int64"):
        model(inputs_embeds=torch.zeros(1, 5, 32, dtype=torch.long))
    embeds = model.model.embeddings(ids(1, 5))
    assert torch.equal(model(inputs_embeds=embeds).logits, model(ids(1, 5)).logits)


def test_labels_of_the_wrong_shape_are_named():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of the input's shape \[2, 6\].*\[2, 5\]"):
        model(ids(2, 6), labels=ids(2, 5))
    with pytest.raises(ValueError, match=r"labels.*float32"):
        model(ids(2, 6), labels=ids(2, 6).float())
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids(2, 6), labels=ids(2, 6), logits_to_keep=1)


def test_logits_to_keep_must_be_a_count_or_indices():
    model = tiny_lm()
    with pytest.raises(ValueError, match="logits_to_keep must be an int >= 0.*-2"):
        model(ids(2, 6), logits_to_keep=-2)
    assert model(ids(2, 6), logits_to_keep=2).logits.shape == (2, 2, TINY_LM_VOCAB)
    assert model(ids(2, 6), logits_to_keep=torch.tensor([0, 5])).logits.shape == (2, 2, TINY_LM_VOCAB)


def test_attention_mask_of_the_wrong_shape_is_named_at_the_model():
    model = tiny_lm("hybrid")
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, T\] = \[2, 6\].*\[2, 4\]"):
        model(ids(2, 6), attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask.*\[3, 6\]"):
        model(ids(2, 6), attention_mask=torch.ones(3, 6, dtype=torch.long))
    cache = model(ids(2, 6)).cache
    with pytest.raises(ValueError, match=r"attention_mask.*\[2, 1\] or \[2, 7\].*\[2, 9\]"):
        model(ids(2, 1), cache=cache, attention_mask=torch.ones(2, 9, dtype=torch.long))


def test_position_ids_of_the_wrong_shape_are_named():
    model = tiny_lm("attention")
    with pytest.raises(ValueError, match=r"position_ids must be an integer tensor \[B, T\] = \[2, 6\].*\[2, 4\]"):
        model(ids(2, 6), position_ids=torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match=r"position_ids.*float32"):
        model(ids(2, 6), position_ids=torch.arange(6.0)[None])
    positions = torch.arange(6)[None]
    assert torch.equal(model(ids(2, 6), position_ids=positions).logits, model(ids(2, 6)).logits)


def test_cache_of_another_model_is_refused():
    bayes, mamba = tiny_lm("bayesian"), tiny_lm("mamba2")
    cache = bayes(ids(2, 5)).cache
    with pytest.raises(ValueError, match=r"cache was filled by another model.*layer 0.*BayesianLayer.*Mamba2"):
        mamba(ids(2, 1), cache=cache)
    wider = tiny_lm("bayesian", head_dim=16)
    with pytest.raises(ValueError, match=r"cache was filled by another model.*layer 0"):
        wider(ids(2, 1), cache=cache)
    deeper = tiny_lm("bayesian", num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"cache was filled by another model"):
        deeper(ids(2, 1), cache=cache)
    same = tiny_lm("bayesian", seed=1)  # another model of the same shapes may continue it
    assert same(ids(2, 1), cache=cache).logits.shape == (2, 1, TINY_LM_VOCAB)
    zoology = ZoologyModel(ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_model=32, mixer="bayesian"))
    with pytest.raises(ValueError, match=r"cache was filled by another model"):
        zoology.hidden_states(ids(2, 1), cache)


def test_zoology_state_size_needs_a_positive_length():
    model = ZoologyModel(ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_model=32))
    with pytest.raises(ValueError, match="sequence_length must be a positive int, got 0"):
        model.state_size(0)
    assert model.state_size(8) > 0


# ---------------------------------------------------------------------------------------------------------------
# Found next to those: generate's prompt and mask, from_pretrained's keywords and shapes, logits_to_keep
# positions, the config's dtype.


def test_generate_prompt_must_be_batch_by_time():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"generate takes inputs as a tensor \[B, T\] of token ids.*\[6\]"):
        model.generate(ids(1, 6)[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"generate takes input_ids as a tensor \[B, T\].*\[6\]"):
        model.generate(input_ids=ids(1, 6)[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"batch size B >= 1.*inputs of shape \[0, 6\]"):
        model.generate(ids(0, 6), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"generate takes inputs_embeds as a tensor \[B, T, hidden_size\].*\[6, 32\]"):
        model.generate(inputs_embeds=torch.zeros(6, 32), max_new_tokens=2)
    assert model.generate(ids(2, 6), max_new_tokens=2, do_sample=False).shape == (2, 8)


def test_generate_attention_mask_of_the_wrong_shape_is_named():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"attention_mask must have the prompt's shape \[B, T\] = \[2, 6\].*\[2, 5\]"):
        model.generate(ids(2, 6), attention_mask=torch.ones(2, 5, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention_mask must have the prompt's shape.*\[6\]"):
        model.generate(ids(2, 6), attention_mask=torch.ones(6, dtype=torch.long), max_new_tokens=2)


def test_generate_attention_mask_row_of_padding_only_is_refused():
    model = tiny_lm()
    prompt, mask = ids(3, 6), torch.ones(3, 6, dtype=torch.long)
    mask[1] = 0
    prompt[1] = TINY_LM_PAD
    with pytest.raises(ValueError, match=r"attention_mask row\(s\) \[1\] are all padding"):
        model.generate(prompt, attention_mask=mask, max_new_tokens=2, pad_token_id=TINY_LM_PAD)
    mask[1, 4:] = 1  # a left-padded row with real tokens is fine
    assert model.generate(prompt, attention_mask=mask, max_new_tokens=2, pad_token_id=TINY_LM_PAD).shape == (3, 8)


def test_from_pretrained_misspelt_keyword_is_refused(tmp_path):
    folder = saved(tmp_path, tiny_lm(retention="reset"))
    for load in (
        ProbSeqForCausalLM.from_pretrained,
        AutoModelForCausalLM.from_pretrained,
        ProbSeqModel.from_pretrained,
    ):
        with pytest.raises(ValueError, match=r"'retension'.*did you mean 'retention'"):
            load(folder, retension="reset")
    zoology = ZoologyModel(ZoologyConfig(vocab_size=TINY_LM_VOCAB, d_model=32))
    zoology.save_pretrained(tmp_path / "zoology")
    with pytest.raises(ValueError, match=r"'d_modle'.*'d_model'"):
        ZoologyModel.from_pretrained(tmp_path / "zoology", d_modle=32)
    # transformers' own keywords still work
    config = ProbSeqConfig.from_pretrained(folder)
    for kwargs in (
        dict(strict=True),
        dict(dtype=torch.float32),
        dict(torch_dtype="float32"),
        dict(device_map="cpu"),
        dict(config=config),
        dict(retention="reset"),
        dict(output_loading_info=False),
        dict(ignore_mismatched_sizes=False),
        dict(low_cpu_mem_usage=True),
    ):
        assert isinstance(ProbSeqForCausalLM.from_pretrained(folder, **kwargs), ProbSeqForCausalLM), kwargs
    with pytest.raises(ValueError, match=r"'retension'.*'retention'"):
        ProbSeqForCausalLM(config, retension="reset")


@pytest.mark.parametrize("field,size", [("vocab_size", 62), ("hidden_size", 64)])
def test_config_sizes_that_do_not_match_the_weights_are_named(tmp_path, field, size):
    model = tiny_lm()
    folder = saved(tmp_path, model)
    edit_config(folder, **{field: size})
    shapes = {
        "vocab_size": r"model\.embeddings\.weight \(checkpoint \[61, 32\], model \[62, 32\]\)",
        "hidden_size": r"model\.norm\.weight \(checkpoint \[32\], model \[64\]\)",
    }[field]
    for load in (ProbSeqForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=rf"^{folder}: the checkpoint's tensors do not have the shapes.*{shapes}"):
            load(folder)
    with pytest.raises(ValueError, match=shapes):
        ProbSeqForCausalLM.from_pretrained(folder, strict=False)
    loaded, info = ProbSeqForCausalLM.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True)
    assert getattr(loaded.config, field) == size and info["mismatched_keys"]


def test_logits_to_keep_positions_out_of_range_are_named():
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"logits_to_keep\[0\] = 10.*\[-6, 6\).*T = 6"):
        model(ids(2, 6), logits_to_keep=torch.tensor([10]))
    with pytest.raises(ValueError, match=r"logits_to_keep\[1\] = -7"):
        model(ids(2, 6), logits_to_keep=torch.tensor([0, -7]))
    logits = model(ids(2, 6)).logits
    assert torch.equal(model(ids(2, 6), logits_to_keep=torch.tensor([5, -6])).logits, logits[:, [5, 0]])
    assert model(ids(2, 6), logits_to_keep=torch.tensor([], dtype=torch.long)).logits.shape == (2, 0, TINY_LM_VOCAB)


def test_config_dtype_name_is_checked():
    for name in ("dtype", "torch_dtype"):
        with pytest.raises(
            ValueError, match=r"^dtype must be None, a torch\.dtype.*'float32'.*'floatxx'".replace("^dtype", f"^{name}")
        ):
            ProbSeqConfig(**tiny_lm_kwargs(), **{name: "floatxx"})
    with pytest.raises(ValueError, match=r"^dtype.*'floatxx'"):
        ZoologyConfig(vocab_size=TINY_LM_VOCAB, dtype="floatxx")
    assert ProbSeqConfig(**tiny_lm_kwargs(), dtype="bfloat16").dtype == torch.bfloat16
    assert ProbSeqConfig(**tiny_lm_kwargs(), dtype=torch.float16).dtype == torch.float16


def test_forward_misspelt_keyword_is_refused():
    model = tiny_lm()
    mask = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"ProbSeqForCausalLM\.forward.*'attention_maks' \(did you mean "
        r"'attention_mask'\?\)",
    ):
        model(ids(2, 6), attention_maks=mask)
    with pytest.raises(ValueError, match=r"ProbSeqModel\.forward.*'output_varaince' \(did you mean 'output_variance'"):
        model.model(ids(2, 6), output_varaince=True)
    # what transformers and the Trainer pass still works
    logits = model(ids(2, 6), attention_mask=mask).logits
    assert torch.equal(
        model(
            ids(2, 6),
            attention_mask=mask,
            cache_position=torch.arange(6),
            output_attentions=False,
            num_items_in_batch=12,
            output_variance=True,
        ).logits,
        logits,
    )
