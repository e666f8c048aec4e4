"""The reliability contract of the mixer layers (probseq.layers): a correct result or a clear ``ValueError``
naming the argument, at the layer's boundary (docs/reliability.md). Each test is a regression test of a case found
by a review of the layers, named for what it checks; the last section holds cases of the same kind found next to
them."""

from __future__ import annotations

import inspect

import pytest
import torch

from probseq.layers import (
    MIXERS,
    BayesianLayer,
    GatedRMSNorm,
    KVState,
    LinearAttention,
    Mamba2,
    RMSNorm,
    SwiGLU,
)
from probseq.layers.mlp import swiglu_size
from tests.helpers import DictCache

D = 32  # hidden size of every layer here
NAN, INF = float("nan"), float("inf")

# every form each mixer can run in: fla's ``mode`` names (None: the layer has no choice)
MODES = {
    "bayesian": ("chunk", "fused_recurrent"),
    "gated_deltanet": ("chunk", "fused_recurrent"),
    "deltanet": ("chunk", "fused_recurrent"),
    "linear_attention": ("chunk", "fused_chunk", "fused_recurrent"),
    "mamba2": (None,),
    "attention": (None,),
}
CASES = [(name, mode) for name in MIXERS for mode in MODES[name]]
CASE_IDS = [f"{name}-{mode}" if mode else name for name, mode in CASES]


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, mode: str | None = None, **overrides) -> torch.nn.Module:
    """A tiny float32 layer of each kind (layer_idx 0); chunked forms use chunks of 8 tokens."""
    kwargs = {
        "bayesian": dict(
            hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, retention="learned", retention_init=0.5, chunk_size=8
        ),
        "gated_deltanet": dict(hidden_size=D, head_dim=8, num_heads=2, chunk_size=8),
        "deltanet": dict(hidden_size=D, num_heads=2, expand_k=0.5, use_gate=True, chunk_size=8),
        "linear_attention": dict(
            hidden_size=D, num_heads=2, num_kv_heads=1, expand_k=0.5, feature_map="elu", decay="scalar", chunk_size=8
        ),
        "mamba2": dict(hidden_size=D, head_dim=8, state_size=8, n_groups=2, chunk_size=8),
        "attention": dict(hidden_size=D, num_heads=4, num_kv_heads=2),
    }[name]
    if mode is not None:
        kwargs["mode"] = mode
    kwargs.update(layer_idx=0, **overrides)
    torch.manual_seed(0)
    return MIXERS[name](**kwargs).eval()


def inputs(batch=2, length=19, seed=0) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


def left_padded(lengths=(19, 7, 2), length=19) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[B, T, D]`` and fla's 0/1 mask ``[B, T]`` (long) of a left-padded batch."""
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, length - n :] = 1
    return inputs(len(lengths), length), mask


def state_tensors(state) -> list[torch.Tensor]:
    if isinstance(state, KVState):
        return [t for t in state if t is not None]  # (no padding: None)
    return [*state.conv, *(t for t in state.memory if t is not None)]


def cached_state(name: str, batch: int = 2):
    """The state a ``name`` layer leaves in a cache after 5 tokens of a batch of ``batch``."""
    cache = DictCache()
    make(name)(inputs(batch, 5), past_key_values=cache, use_cache=True)
    return cache


# --- one mask convention, fla's 0/1 padding mask --------------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
def test_additive_float_mask_is_refused(name):
    layer = make(name)
    x, mask = left_padded()
    additive = torch.zeros(mask.shape).masked_fill(mask == 0, -INF)  # HF's other convention: 0 keep, -inf drop
    with pytest.raises(ValueError, match=r"attention_mask must be fla's 0/1 padding mask.*additive"):
        layer(x, attention_mask=additive)
    with pytest.raises(ValueError, match="attention_mask must be fla's 0/1 padding mask"):
        layer(x, attention_mask=additive.clamp(min=-1e9))  # the finite variant
    # what is accepted reads the same whatever its dtype; the advice in the message works
    expected = layer(x, attention_mask=mask)[0]
    for accepted in (mask.bool(), mask.float(), mask.to(torch.int32), additive == 0):
        assert torch.equal(layer(x, attention_mask=accepted)[0], expected)


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_non_binary_mask_is_refused(name, scale):
    layer = make(name)
    x, mask = left_padded()
    with pytest.raises(ValueError, match=r"exactly 0 or 1; got torch.float32 values such as \[" + f"{scale}"):
        layer(x, attention_mask=scale * mask)
    with pytest.raises(ValueError, match="exactly 0 or 1"):
        layer(x, attention_mask=mask.float().masked_fill(mask == 0, NAN))


# --- padded positions never reach real tokens ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name, mode", CASES, ids=CASE_IDS)
def test_nonfinite_padding_never_reaches_real_tokens(name, mode, bad):
    layer = make(name, mode)
    x, mask = left_padded()
    padded = (mask == 0)[..., None]
    clean, poisoned = x.masked_fill(padded, 3.0), x.masked_fill(padded, bad)
    caches = DictCache(), DictCache()
    expected = layer(clean, attention_mask=mask, past_key_values=caches[0], use_cache=True)[0]
    poisoned.requires_grad_()
    out = layer(poisoned, attention_mask=mask, past_key_values=caches[1], use_cache=True)[0]
    assert torch.equal(out, expected), f"{name}: real tokens differ when the padding holds {bad}"
    assert bool((out[mask == 0] == 0).all()), "padded positions output zeros"
    for got, want in zip(state_tensors(caches[1].states[0]), state_tensors(caches[0].states[0])):
        assert torch.equal(got, want), f"{name}: the cached state depends on the padding"
    out.square().sum().backward()
    assert bool((poisoned.grad[mask == 0] == 0).all())
    for pname, p in layer.named_parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all()), f"{name}.{pname}: non-finite gradient"


# --- a cache slot of another layer type or batch ---------------------------------------------------------------

FOREIGN = {
    "bayesian": "mamba2",
    "gated_deltanet": "linear_attention",
    "deltanet": "mamba2",
    "linear_attention": "bayesian",
    "mamba2": "deltanet",
    "attention": "bayesian",
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_cache_of_another_layer_type_is_refused(name):
    layer = make(name)
    other = "attention" if name != "attention" else "mamba2"
    kind = "KVState" if name != "attention" else "RecurrentState"
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} \(layer_idx=0\).*holds a {kind}"):
        layer(inputs(2, 1), past_key_values=cached_state(other), use_cache=True)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} \(layer_idx=0\).*another layer type"):
        layer(inputs(2, 1), past_key_values=cached_state(FOREIGN[name]), use_cache=True)


@pytest.mark.parametrize("name", list(MIXERS))
def test_cache_of_another_batch_size_is_refused(name):
    layer = make(name)
    cache = cached_state(name, batch=2)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__} \(layer_idx=0\).*batch size 2.*has 3 seq"):
        layer(inputs(3, 1), past_key_values=cache, use_cache=True)
    if name != "attention":  # packed sequences: one state per sequence
        with pytest.raises(ValueError, match="batch size 2.*has 3 seq"):
            layer(inputs(1, 6), cu_seqlens=torch.tensor([0, 2, 4, 6]), past_key_values=cache, use_cache=True)


# --- cu_seqlens that do not match the input --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize(
    "cu_seqlens, match",
    [
        ([0, 5, 14], r"cu_seqlens must start at 0 and end at T = 12, got \[0, 5, 14\]"),
        ([0, 5, 10], r"cu_seqlens must start at 0 and end at T = 12"),
        ([1, 5, 12], r"cu_seqlens must start at 0 and end at T = 12, got \[1, 5, 12\]"),
        ([0, 7, 5, 12], r"cu_seqlens must be nondecreasing, got \[0, 7, 5, 12\]"),
        ([0.0, 5.0, 12.0], "cu_seqlens must be a 1-d integer tensor"),
        ([[0, 5, 12]], "cu_seqlens must be a 1-d integer tensor"),
    ],
    ids=["end-beyond-T", "end-before-T", "start-1", "decreasing", "float", "2-d"],
)
def test_mismatched_cu_seqlens_give_the_ops_errors(name, cu_seqlens, match):
    with pytest.raises(ValueError, match=match):
        make(name)(inputs(1, 12), cu_seqlens=torch.tensor(cu_seqlens))


# --- T = 0 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, mode", CASES, ids=CASE_IDS)
def test_empty_input_gives_empty_output_and_a_consistent_state(name, mode):
    layer = make(name, mode)
    empty, x = inputs(2, 0), inputs(2, 9)
    assert layer(empty)[0].shape == (2, 0, D)
    # T = 0 into a fresh cache: continuing from it is a fresh start
    cache = DictCache()
    assert layer(empty, past_key_values=cache, use_cache=True)[0].shape == (2, 0, D)
    assert torch.allclose(layer(x, past_key_values=cache, use_cache=True)[0], layer(x)[0], atol=1e-6)
    # T = 0 after some tokens leaves the state as it was
    cache = DictCache()
    layer(x[:, :4], past_key_values=cache, use_cache=True)
    before = [t.clone() for t in state_tensors(cache.states[0])]
    assert layer(empty, attention_mask=torch.ones(2, 4, dtype=torch.long), past_key_values=cache, use_cache=True)[
        0
    ].shape == (2, 0, D)
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(cache.states[0]), before))
    # packed: no tokens at all
    assert layer(inputs(1, 0), cu_seqlens=torch.tensor([0, 0]))[0].shape == (1, 0, D)


# --- hidden_states of the wrong size or dtype -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize(
    "x, match",
    [
        (
            torch.randn(2, 5, D - 1),
            r"hidden_states must have shape \[B, T, D\] with D = hidden_size = 32 of \w+, "
            r"got \[2, 5, 31\]",
        ),
        (
            torch.ones(2, 5, D, dtype=torch.long),
            r"hidden_states has dtype torch.int64, \w+'s parameters are torch.float32",
        ),
        (
            torch.ones(2, 5, D, dtype=torch.float16),
            r"hidden_states has dtype torch.float16, \w+'s parameters are "
            r"torch.float32",
        ),
        (
            torch.ones(2, 5, D, dtype=torch.float64),
            r"hidden_states has dtype torch.float64, \w+'s parameters are "
            r"torch.float32",
        ),
    ],
    ids=["width", "int64", "float16", "float64"],
)
def test_wrong_hidden_size_or_dtype_is_named(name, x, match):
    with pytest.raises(ValueError, match=match):
        make(name)(x)


@pytest.mark.parametrize("name", list(MIXERS))
def test_half_input_needs_autocast_or_a_half_layer(name):
    with pytest.raises(ValueError, match="hidden_states has dtype torch.bfloat16"):
        make(name)(inputs().bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(make(name)(inputs().bfloat16())[0].float()).all()
    assert make(name).double()(inputs().double())[0].dtype == torch.float64


# --- validate=True names hidden_states and the position ------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
def test_validate_is_an_explicit_constructor_argument(name):
    parameter = inspect.signature(MIXERS[name]).parameters["validate"]
    assert parameter.default is False and parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert make(name, validate=True).validate is True and make(name).validate is False


@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("name, mode", CASES, ids=CASE_IDS)
def test_validate_names_hidden_states_and_the_first_bad_position(name, mode, bad):
    layer = make(name, mode, validate=True)
    x = inputs(2, 9)
    x[1, 5, 3] = bad
    x[1, 7, 0] = bad
    with pytest.raises(ValueError, match=r"hidden_states contains NaN or Inf \(.*; first at batch 1, time 5\)"):
        layer(x)
    packed = x[1:]  # packed sequences: the time is the packed position
    with pytest.raises(ValueError, match=r"hidden_states contains NaN or Inf.*first at batch 0, time 5"):
        layer(packed, cu_seqlens=torch.tensor([0, 4, 9]))


@pytest.mark.parametrize("name, mode", CASES, ids=CASE_IDS)
def test_validate_ignores_padded_positions(name, mode):
    layer = make(name, mode, validate=True)
    x, mask = left_padded()
    poisoned = x.masked_fill((mask == 0)[..., None], NAN)
    assert torch.equal(layer(poisoned, attention_mask=mask)[0], layer(x, attention_mask=mask)[0])


# --- extra: the same class of problem elsewhere in the layers ------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("cache", [(), {}, [None]], ids=["tuple", "dict", "list"])
def test_wrong_typed_past_key_values_is_named(name, cache):
    with pytest.raises(ValueError, match="past_key_values must be a cache with get_layer_state"):
        make(name)(inputs(2, 3), past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("name", list(MIXERS))
def test_non_tensor_inputs_are_named(name):
    layer = make(name)
    with pytest.raises(ValueError, match="hidden_states must be a torch.Tensor"):
        layer(inputs(2, 3).numpy())
    with pytest.raises(ValueError, match="attention_mask must be a torch.Tensor"):
        layer(inputs(2, 3), attention_mask=[[1, 1, 1], [0, 1, 1]])


@pytest.mark.parametrize("name", list(MIXERS))
def test_packed_batch_with_an_empty_sequence(name):
    """A zero-length sequence in ``cu_seqlens`` (the short conv's state index was −1)."""
    layer = make(name)
    x = inputs(1, 9)
    cache = DictCache()
    out = layer(x, cu_seqlens=torch.tensor([0, 0, 4, 4, 9]), past_key_values=cache, use_cache=name != "attention")[0]
    alone = torch.cat([layer(x[:, :4])[0], layer(x[:, 4:])[0]], 1)
    assert torch.allclose(out, alone, atol=1e-6)
    if name != "attention":  # the empty sequences keep a fresh state
        fresh = DictCache()
        layer(inputs(1, 0), past_key_values=fresh, use_cache=True)
        for got, want in zip(state_tensors(cache.states[0]), state_tensors(fresh.states[0])):
            assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[0])


def test_attention_refuses_packed_sequences_continuing_a_cache():
    layer = make("attention")
    cache = cached_state("attention", batch=1)
    with pytest.raises(ValueError, match="cannot continue packed sequences"):
        layer(inputs(1, 5), cu_seqlens=torch.tensor([0, 2, 5]), past_key_values=cache)


def test_attention_position_ids_of_the_wrong_shape_are_named():
    layer = make("attention")
    with pytest.raises(ValueError, match=r"position_ids must be a tensor \[B, T\] or \[1, T\].*got \[1, 3\]"):
        layer(inputs(2, 5), position_ids=torch.arange(3)[None])
    with pytest.raises(ValueError, match=r"position_ids must be a tensor.*got \[3, 5\]"):
        layer(inputs(2, 5), position_ids=torch.arange(5).expand(3, 5))
    full = layer(inputs(2, 5))[0]
    assert torch.equal(layer(inputs(2, 5), position_ids=torch.arange(5)[None])[0], full)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, A_init_range=(-1, 16)), "A_init_range"),
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, A_init_range=(0, 16)), "A_init_range"),
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, dt_min=0.0), "dt_min"),
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, dt_min=0.2, dt_max=0.1), "dt_min"),
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, dt_init_floor=-1.0), "dt_init_floor"),
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, conv_init=-1.0), "conv_init"),
        (lambda: BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, norm_eps=-1.0), "norm_eps"),
        (lambda: BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, norm_eps=NAN), "norm_eps"),
        (lambda: BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, r_min=INF), "r_min"),
        (lambda: LinearAttention(hidden_size=D, num_heads=2, norm_eps=-1e-5), "norm_eps"),
        (lambda: LinearAttention(hidden_size=D, num_heads=2, chunk_size=0), "chunk_size"),
        (lambda: Mamba2(hidden_size=D, head_dim=8, state_size=8, norm_eps=-1.0), "norm_eps"),
        (lambda: RMSNorm(0), "hidden_size"),
        (lambda: RMSNorm(8, eps=-1e-6), "eps"),
        (lambda: GatedRMSNorm(8, eps=INF), "eps"),
        (lambda: SwiGLU(-1, 16), "hidden_size"),
        (lambda: swiglu_size(D, -4), "hidden_ratio"),
        (lambda: swiglu_size(D, NAN), "hidden_ratio"),
        (lambda: swiglu_size(0, 4), "hidden_size"),
    ],
)
def test_constructor_values_that_gave_nan_parameters_or_late_errors_are_named(build, match):
    """A negative ``A_init_range`` or ``norm_eps`` gave NaN parameters or outputs; a zero ``dt_min`` a bare
    ``math domain error``; ``hidden_ratio = -4`` an error naming ``intermediate_size``."""
    with pytest.raises(ValueError, match=match):
        build()


def test_swiglu_width_names_its_own_arguments():
    with pytest.raises(ValueError, match=r"hidden_ratio must be a finite float > 0 .*got -4"):
        swiglu_size(D, -4)  # it used to return 0, and SwiGLU then blamed intermediate_size
    assert swiglu_size(D, None) == swiglu_size(D, 4) == 256 and swiglu_size(D, 4, 48) == 48
    assert RMSNorm(8, eps=0.0).eps == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
@pytest.mark.parametrize("name", list(MIXERS))
def test_cpu_mask_with_cuda_hidden_states(name):
    """fla's masks often stay on the CPU; the layer moves them (it failed in torch.where before)."""
    layer = make(name).cuda()
    x, mask = left_padded()
    out = layer(x.cuda(), attention_mask=mask)[0]
    assert torch.allclose(out.cpu(), make(name)(x, attention_mask=mask)[0], atol=1e-5)
    with pytest.raises(ValueError, match="hidden_states is on cpu"):
        layer(x)


# --- found by a review of the layers as a user would adopt them (2026-12-03) -----------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("typo", ["atention_mask", "past_key_value", "cu_seqlen", "use_cahce"])
def test_a_misspelt_forward_keyword_is_refused(name, typo):
    """It was ignored: ``layer(x, atention_mask=m)`` ran unmasked."""
    with pytest.raises(ValueError, match="did you mean"):
        make(name)(inputs(), **{typo: None})


@pytest.mark.parametrize("name", list(MIXERS))
def test_a_models_other_keywords_are_ignored_as_fla_ignores_them(name):
    layer, x = make(name), inputs()
    assert torch.equal(layer(x, num_items_in_batch=7)[0], layer(x)[0])


@pytest.mark.parametrize("name", list(MIXERS))
def test_a_mask_wider_than_the_input_without_a_cache_is_refused(name):
    """It was cut to its last ``T`` columns: a misaligned mask read as 'no padding'."""
    x = inputs(2, 6)
    with pytest.raises(ValueError, match="columns for 6 tokens and no cached state"):
        make(name)(x, attention_mask=torch.ones(2, 9, dtype=torch.long))


@pytest.mark.parametrize("step_mask", ["none", "current"])
def test_attention_steps_remember_the_prompts_padding(step_mask):
    """A decoding step without the cached tokens' mask skipped no padded key and restarted the positions at
    ``S`` (off by 0.42 in a hybrid model); the cache now keeps the prompt's padding."""
    layer = make("attention")
    x, mask = left_padded((19, 7), 19)
    step = inputs(2, 1, seed=3)
    cache, reference = DictCache(), DictCache()
    layer(x, attention_mask=mask, past_key_values=cache, use_cache=True)
    layer(x, attention_mask=mask, past_key_values=reference, use_cache=True)
    full = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    expected = layer(step, attention_mask=full, past_key_values=reference, use_cache=True)[0]
    given = None if step_mask == "none" else torch.ones(2, 1, dtype=torch.long)
    actual = layer(step, attention_mask=given, past_key_values=cache, use_cache=True)[0]
    assert torch.allclose(actual, expected, atol=1e-6)
    assert torch.equal(cache.states[0].padding, reference.states[0].padding)


@pytest.mark.parametrize("name", list(MIXERS))
def test_a_float64_layer_computes_in_float64(name):
    """Gates, norms and rotations were computed in float32 (``.float()``) whatever the layer's dtype: decoding
    agreed with the parallel form to 6e-7 in float64, and ``gradcheck`` failed."""
    layer = make(name).double()
    x = inputs(2, 11).double()
    full = layer(x)[0]
    cache = DictCache()
    steps = [layer(x[:, t : t + 1], past_key_values=cache, use_cache=True)[0] for t in range(11)]
    assert full.dtype == torch.float64
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-12


@pytest.mark.parametrize(
    "norm", [RMSNorm(6), GatedRMSNorm(6), GatedRMSNorm(6, norm_before_gate=False)], ids=["rms", "gated", "gate_first"]
)
def test_norms_pass_gradcheck_in_float64(norm):
    norm = norm.double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    args = (x,) if isinstance(norm, RMSNorm) else (x, z)
    assert torch.autograd.gradcheck(norm, args)
