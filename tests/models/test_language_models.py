"""ProbSeq language models (probseq.models): generate vs the parallel forward, padding and packing, the
cache, save/load and the Auto classes, gradients, bf16, configuration errors, fla checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import probseq.models  # noqa: F401  (registers the Auto classes)
from probseq.layers import MIXERS, KVState, RecurrentState
from probseq.models import ProbSeqCache, ProbSeqConfig, ProbSeqForCausalLM, ProbSeqModel
from tests.helpers import TINY_LM_PAD, TINY_LM_VOCAB, assert_close, tiny_lm, tiny_lm_config

CASES = [*MIXERS, "hybrid"]  # every mixer alone, and Bayesian layers with attention every 2nd layer


pytestmark = pytest.mark.usefixtures("one_thread")


def prompts(batch: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, TINY_LM_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids, attention_mask=None, new_tokens=6):
    return model.generate(
        ids,
        attention_mask=attention_mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )


@pytest.mark.parametrize("case", CASES)
def test_generate_equals_full_forward(case):
    model = tiny_lm(case)
    ids = prompts()
    lengths = []
    hook = model.model.embeddings.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    out = greedy(model, ids)
    hook.remove()
    assert lengths == [9, 1, 1, 1, 1, 1], "generate must prefill once, then feed one token per step"
    assert out.sequences.shape == (2, 15)
    with torch.no_grad():
        full = model(out.sequences, use_cache=False).logits
    stepped = torch.stack(out.logits, dim=1)  # logits of the prefill's last token, then of each step
    assert_close(stepped, full[:, 8:14], 1e-5, f"{case}: generate (prefill + steps) vs one parallel forward")
    assert bool((out.sequences[:, 9:] == full[:, 8:14].argmax(-1)).all())


@pytest.mark.parametrize("case", CASES)
def test_left_padded_generate_equals_sequences_one_by_one(case):
    model = tiny_lm(case)
    lengths, width = [9, 5, 2], 9
    ids = torch.full((3, width), TINY_LM_PAD)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = prompts(1, n, seed=i)[0]
        mask[i, width - n :] = 1
    batch = greedy(model, ids, mask)
    for i, n in enumerate(lengths):
        alone = greedy(model, ids[i : i + 1, width - n :])
        assert torch.equal(batch.sequences[i, width:], alone.sequences[0, n:]), f"{case}: sequence {i}"
        assert_close(
            torch.stack(batch.logits, 1)[i : i + 1],
            torch.stack(alone.logits, 1),
            1e-5,
            f"{case}: logits of sequence {i}, left-padded batch vs alone",
        )


def test_sampling_generate():
    model = tiny_lm("hybrid")
    ids = prompts()
    top1 = model.generate(ids, max_new_tokens=5, do_sample=True, top_k=1)
    assert torch.equal(top1, greedy(model, ids, new_tokens=5).sequences)
    torch.manual_seed(1)
    first = model.generate(ids, max_new_tokens=5, do_sample=True, temperature=1.5, num_return_sequences=2)
    torch.manual_seed(1)
    again = model.generate(ids, max_new_tokens=5, do_sample=True, temperature=1.5, num_return_sequences=2)
    assert first.shape == (4, 14) and torch.equal(first, again)
    assert bool((first >= 0).all()) and bool((first < TINY_LM_VOCAB).all())


def test_beam_search_runs_through_the_cache():
    model = tiny_lm("hybrid")
    out = model.generate(prompts(), max_new_tokens=4, num_beams=3, do_sample=False)
    assert out.shape == (2, 13)


def test_cache_reorders_and_stays_constant_size():
    model = tiny_lm("hybrid")
    ids = prompts()
    out = model(ids, use_cache=True)
    cache = out.cache
    assert isinstance(cache, ProbSeqCache) and cache.get_seq_length() == 9
    recurrent, kv = cache.get_layer_state(0), cache.get_layer_state(1)
    assert isinstance(recurrent, RecurrentState) and isinstance(kv, KVState)
    assert recurrent.memory.cov.shape == (2, 2, 8, 8)  # P [B, H, K, K]
    shapes = [t.shape for t in (*recurrent.conv, *recurrent.memory)]
    for _ in range(3):
        model(ids[:, :1], cache=cache, use_cache=True)
    recurrent = cache.get_layer_state(0)
    assert [t.shape for t in (*recurrent.conv, *recurrent.memory)] == shapes  # no growth with position
    assert cache.get_layer_state(1).keys.shape[1] == 12 and cache.get_seq_length() == 12
    before = [t.clone() for t in recurrent.memory]
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.get_layer_state(0).memory.mean, before[0].flip(0))
    cache.batch_repeat_interleave(2)
    assert cache.get_layer_state(0).memory.cov.shape[0] == 4
    with pytest.raises(NotImplementedError):
        cache.crop(-1)


@pytest.mark.parametrize("case", CASES)
def test_cu_seqlens_packing_equals_padding(case):
    model = tiny_lm(case).model
    lengths, width = [7, 3, 9], 9
    parts = [prompts(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    ids = torch.full((3, width), TINY_LM_PAD)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, (n, part) in enumerate(zip(lengths, parts)):
        ids[i, width - n :], mask[i, width - n :] = part, 1
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, use_cache=False).last_hidden_state
        packed = model(torch.cat(parts)[None], cu_seqlens=torch.tensor([0, 7, 10, 19])).last_hidden_state
    start = 0
    for i, n in enumerate(lengths):
        assert_close(packed[:, start : start + n], padded[i : i + 1, width - n :], 1e-5, f"{case}: sequence {i}")
        start += n


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, tie):
    model = tiny_lm("hybrid", tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    files = os.listdir(tmp_path)
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, ProbSeqConfig) and config.layer_mixers == ["bayesian", "attention"]
    for loaded in (ProbSeqForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert type(loaded) is ProbSeqForCausalLM
        reference, state = model.state_dict(), loaded.state_dict()
        assert sorted(state) == sorted(reference)
        for name, value in reference.items():
            assert torch.equal(state[name], value), name
        ids = prompts()
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)
        assert (loaded.lm_head.weight is loaded.model.embeddings.weight) == tie


def test_a_head_left_untied_on_load_is_saved(tmp_path):
    # a config that asks for tying over a checkpoint with its own head: transformers keeps the head untied,
    # and saving the loaded model must then write it (the keys not saved are the ties that hold at save time)
    model = tiny_lm("hybrid", tie_word_embeddings=False)
    assert model._keys_to_ignore_on_save == set()
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    loaded = ProbSeqForCausalLM.from_pretrained(tmp_path / "a").eval()
    assert loaded.lm_head.weight is not loaded.model.embeddings.weight
    loaded.save_pretrained(tmp_path / "b")
    again = ProbSeqForCausalLM.from_pretrained(tmp_path / "b").eval()
    with torch.no_grad():
        assert torch.equal(again(prompts()).logits, model(prompts()).logits)
    assert tiny_lm("hybrid", tie_word_embeddings=True)._keys_to_ignore_on_save == {"lm_head.weight"}


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_parameter(case):
    model = tiny_lm(case).train()
    ids = prompts(length=12)
    loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()), name


@pytest.mark.parametrize("case", CASES)
def test_bf16_autocast_forward_backward_is_finite(case):
    model = tiny_lm(case).train()
    ids = prompts(length=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and bool(torch.isfinite(out.logits).all())
    out.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("num_items", [None, 7])
def test_skip_logits_gives_the_same_loss_and_gradients(num_items):
    """skip_logits=True (the loss without the [B, T, V] logits) against transformers' loss on the logits: same
    value and gradients, with ignored labels and with the Trainer's num_items_in_batch."""
    model = tiny_lm("gated_deltanet", tie_word_embeddings=True).train()
    ids = prompts(length=12)
    labels = ids.clone()
    labels[0, 3:6] = -100
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    results = []
    for skip in (False, True):
        model.zero_grad()
        out = model(ids, labels=labels, skip_logits=skip, **extra)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_grads), (skipped, skipped_grads) = results
    assert skipped.logits is None and full.logits is not None
    assert_close(skipped.loss, full.loss, 1e-6, "loss")
    for name, grad in full_grads.items():
        assert_close(skipped_grads[name], grad, 1e-5, name)
    with pytest.raises(ValueError, match="pass labels"):
        model(ids, skip_logits=True)
    model.zero_grad()  # nothing supervised: a NaN loss (as transformers') and zero gradients, not NaN ones
    out = model(ids, labels=torch.full_like(ids, -100), skip_logits=True)
    out.loss.backward()
    assert out.loss.isnan() and all(p.grad is None or not p.grad.isnan().any() for p in model.parameters())


def test_variance_side_channel():
    model = tiny_lm("hybrid").model
    ids = prompts()
    model(ids)
    assert model.variances() == [None, None]
    model(ids, output_variance=True)
    bayes, attention = model.variances()
    assert bayes.shape == (2, 9, 2) and bool((bayes > 0).all()) and attention is None


def test_learned_retention_model_starts_function_preserving():
    gdn = tiny_lm("gated_deltanet", retention_init=0.0)
    bayes = ProbSeqForCausalLM(tiny_lm_config("bayesian", retention="learned", retention_init=0.0)).eval()
    bayes.load_state_dict(gdn.state_dict(), strict=True)
    ids = prompts()
    assert_close(bayes(ids).logits, gdn(ids).logits, 1e-5, "Bayesian (learned, start) vs Gated DeltaNet")
    bayes(ids, labels=ids).loss.backward()
    for block in bayes.model.layers:
        assert bool((block.attn.c_scale.grad != 0).all())


def test_gated_deltanet_and_bayesian_models_start_paired_for_one_seed():
    """Without copying weights: one seed gives the Bayesian models (reset, stationary, learned) Gated DeltaNet's
    parameters bit for bit (the learned retention's c_weight comes from its own stream, so the MLPs and the head
    drawn after it are not shifted), and at ρ = 0 the loss is GDN's bit for bit and the gradients GDN's (exactly
    for reset, to float rounding for learned: γ is a tensor of zeros, so the filter's general path runs)."""
    ids = prompts(length=12)
    runs = {}
    for name, overrides in {
        "gdn": dict(case="gated_deltanet"),
        "reset": dict(retention="reset"),
        "stationary": dict(retention="stationary"),
        "learned": dict(retention="learned"),
    }.items():
        model = tiny_lm(seed=4, retention_init=0.0, **({"case": "bayesian"} | overrides)).train()
        loss = model(ids, labels=ids).loss
        loss.backward()
        runs[name] = (
            {n: p.detach() for n, p in model.named_parameters()},
            loss.detach(),
            {n: p.grad for n, p in model.named_parameters()},
        )
    gdn_params, gdn_loss, gdn_grads = runs.pop("gdn")
    for name, (params, loss, grads) in runs.items():
        assert sorted(set(params) - set(gdn_params)) == (
            [f"model.layers.{i}.attn.{p}" for i in (0, 1) for p in ("c_bias", "c_scale", "c_weight")]
            if name == "learned"
            else []
        ), name
        for key, value in gdn_params.items():
            assert torch.equal(params[key], value), (name, key)
        if name != "stationary":
            assert torch.equal(loss, gdn_loss), name
            for key, value in gdn_grads.items():
                torch.testing.assert_close(
                    grads[key],
                    value,
                    rtol=0 if name == "reset" else 1e-4,
                    atol=0 if name == "reset" else 1e-5 * float(value.abs().max()),
                )


def test_fla_gated_deltanet_checkpoint_loads():
    fla_models = pytest.importorskip("fla.models")
    fla_config = fla_models.GatedDeltaNetConfig(
        vocab_size=TINY_LM_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=8,
        expand_v=1.0,
        intermediate_size=48,
    )
    fla_model = fla_models.GatedDeltaNetForCausalLM(fla_config)
    model = ProbSeqForCausalLM(tiny_lm_config("bayesian", retention="learned", retention_init=0.0))
    model.load_state_dict(fla_model.state_dict(), strict=True)


def test_auto_classes_are_registered_on_import():
    config = AutoConfig.for_model(
        "probseq",
        vocab_size=TINY_LM_VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_heads=2,
        head_dim=8,
        intermediate_size=48,
    )
    assert isinstance(config, ProbSeqConfig)
    assert type(AutoModelForCausalLM.from_config(config)) is ProbSeqForCausalLM
    assert isinstance(ProbSeqModel(config), ProbSeqModel)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(mixer="transformer"), "unknown mixer"),
        (dict(retention="sometimes"), "retention"),
        (dict(head_dim=3, expand_v=0.5), "expand_v"),
        (dict(num_heads=2, num_v_heads=3), "num_v_heads"),
        (dict(allow_neg_eigval=True), "allow_neg_eigval"),
        (dict(mixer="linear_attention", head_dim=3, expand_v=0.5), "divisible"),
        (dict(mixer="mamba2", head_dim=12), "divisible"),
        (dict(mixer="attention", attn_num_heads=5), "divisible"),
        (dict(mixer="linear_attention", feature_map="dpfp"), "dpfp"),
        (dict(attn_layers=[5]), "attn_layers"),
        (dict(attn_layers=[1], attn_every=2), "either"),
        (dict(hidden_size=0), "hidden_size"),
    ],
)
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_lm_config(**overrides)


def test_initialisation_follows_fla_and_keeps_the_retention_start():
    model = tiny_lm("bayesian", retention_init=0.0, initializer_range=0.02)
    layer = model.model.layers[0].attn
    assert bool((layer.c_scale == 0).all()) and bool((layer.c_bias == 0).all())
    assert bool((layer.A_log.exp() >= 0).all()) and bool((layer.A_log.exp() <= 16).all())
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert bool((dt >= 1e-4).all()) and bool((dt <= 0.1 + 1e-6).all())
    assert abs(layer.q_proj.weight.std().item() - 0.02) < 0.005
    assert abs(model.model.embeddings.weight.std().item() - 0.02) < 0.005
    assert bool((model.model.norm.weight == 1).all())


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = prompts(length=12)
    grads = []
    for checkpointing in (False, True):
        model = tiny_lm("hybrid").train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.model.layers)
        model(ids, labels=ids).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, 1e-5, name)
