"""Mixer layers (probseq.layers): fla compatibility, reductions, decoding, padding and packing.

Oracles that do not share our code: flash-linear-attention's layers for names, shapes and initial values;
fla's pure-PyTorch references (``naive_recurrent_gated_delta_rule``, ``delta_rule_recurrence``,
``naive_gdn_gate``, ``rms_norm_ref``) assembled into the Gated DeltaNet and DeltaNet layer pipelines; and
fla's own Mamba2 layer on its PyTorch path.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from probseq.layers import (
    MIXERS,
    Attention,
    BayesianLayer,
    DeltaNet,
    GatedDeltaNet,
    KVState,
    LinearAttention,
    Mamba2,
    RecurrentState,
)
from tests.helpers import DictCache, assert_close

fla_layers = pytest.importorskip("fla.layers")
from fla.modules.norm.layernorm_gated import rms_norm_ref  # noqa: E402
from fla.ops.delta_rule.naive import delta_rule_recurrence  # noqa: E402
from fla.ops.gated_delta_rule.gate import naive_gdn_gate  # noqa: E402
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule  # noqa: E402

D = 32  # hidden size of every layer here


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, **overrides) -> torch.nn.Module:
    """A tiny layer of each kind (layer_idx 0, float32)."""
    kwargs = {
        "bayesian": dict(
            hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, retention="learned", retention_init=0.5
        ),
        "gated_deltanet": dict(hidden_size=D, head_dim=8, num_heads=2),
        "deltanet": dict(hidden_size=D, num_heads=2, expand_k=0.5, use_gate=True),
        "linear_attention": dict(
            hidden_size=D, num_heads=2, num_kv_heads=1, expand_k=0.5, feature_map="elu", decay="scalar"
        ),
        "mamba2": dict(hidden_size=D, head_dim=8, state_size=8, n_groups=2, chunk_size=16),
        "attention": dict(hidden_size=D, num_heads=4, num_kv_heads=2),
    }[name]
    kwargs.update(layer_idx=0, **overrides)
    return MIXERS[name](**kwargs)


def flat_state(state, name: str) -> list[torch.Tensor]:
    """The tensors of a layer state that the next token depends on (a reset layer never reads P)."""
    if isinstance(state, KVState):
        return [t for t in state if t is not None]  # (no padding: None)
    cov = state.memory.cov if name == "bayesian" else None
    return [*state.conv, state.memory.mean, *([] if cov is None else [cov])]


def inputs(batch=2, length=23, seed=0) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


# --- flash-linear-attention compatibility -----------------------------------------------------------

FLA_PAIRS = [
    ("GatedDeltaNet", GatedDeltaNet, dict(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, conv_bias=True)),
    ("GatedDeltaNet", BayesianLayer, dict(hidden_size=D, head_dim=8, num_heads=2, use_gate=False)),
    ("DeltaNet", DeltaNet, dict(hidden_size=D, num_heads=2, use_gate=True, qk_activation="relu")),
    ("Mamba2", Mamba2, dict(hidden_size=D, head_dim=8, state_size=8, n_groups=2)),
    ("LinearAttention", LinearAttention, dict(hidden_size=D, num_heads=2, num_kv_heads=1)),
]


@pytest.mark.parametrize("fla_name, ours, kwargs", FLA_PAIRS, ids=[f"{p[0]}-{p[1].__name__}" for p in FLA_PAIRS])
def test_same_parameters_and_initialisation_as_fla(fla_name, ours, kwargs):
    extra = {"backend": "triton"} if fla_name == "Mamba2" else {}
    torch.manual_seed(0)
    reference = getattr(fla_layers, fla_name)(**kwargs, **extra).state_dict()
    torch.manual_seed(0)
    layer = ours(**kwargs, **({"retention": "reset"} if ours is BayesianLayer else {}))
    mine = layer.state_dict()
    assert sorted(mine) == sorted(reference)
    for name, value in reference.items():
        assert mine[name].shape == value.shape, name
        assert torch.equal(mine[name], value), f"{name}: initial values differ from fla's under the same seed"


@pytest.mark.parametrize("retention", ["learned", "stationary", "reset"])
def test_fla_gated_deltanet_state_dict_loads_strictly(retention):
    fla_layer = fla_layers.GatedDeltaNet(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4)
    layer = BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, retention=retention)
    layer.load_state_dict(fla_layer.state_dict(), strict=True)
    for name, value in fla_layer.state_dict().items():
        assert torch.equal(layer.state_dict()[name], value)
    if retention == "learned":  # a Bayesian checkpoint missing only part of the retention still fails
        partial = {**fla_layer.state_dict(), "c_bias": torch.zeros(4)}
        with pytest.raises(RuntimeError, match="c_weight"):
            BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4).load_state_dict(partial)


def _spread(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of order one, so that ‖k‖² ≫ 1e-6: fla's l2norm x/sqrt(‖x‖² + 1e-6) and ours x/‖x‖ then
    agree to O(1e-6/‖x‖²), below float32 rounding."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith(("proj.weight", "conv1d.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return layer


def fla_delta_layer_reference(layer: GatedDeltaNet | DeltaNet, x: torch.Tensor) -> torch.Tensor:
    """fla's Gated DeltaNet / DeltaNet layer assembled from fla's pure-PyTorch references (float64 around
    fla's float32 recurrences)."""
    gated = isinstance(layer, GatedDeltaNet)
    x = x.double()
    p = {name: t.detach().double() for name, t in layer.state_dict().items()}
    qk_act = "silu" if gated else layer.qk_activation

    def conv(name, u, act):  # fla's ShortConvolution: depthwise causal conv, then its activation
        w = p[f"{name}.weight"]
        u = F.conv1d(F.pad(u.transpose(1, 2), (w.shape[-1] - 1, 0)), w, groups=w.shape[0]).transpose(1, 2)
        return {"silu": F.silu(u), "relu": F.relu(u), "identity": u}[act]

    def heads(u, d):
        return u.unflatten(-1, (-1, d))

    def l2norm(u):  # fla's l2norm
        return u * torch.rsqrt(u.square().sum(-1, keepdim=True) + 1e-6)

    groups = layer.num_v_heads // layer.num_heads if gated else 1
    q, k = (
        l2norm(heads(conv(f"{n}_conv1d", x @ p[f"{n}_proj.weight"].T, qk_act), layer.head_k_dim)).repeat_interleave(
            groups, 2
        )
        for n in "qk"
    )
    v = heads(conv("v_conv1d", x @ p["v_proj.weight"].T, "silu"), layer.head_v_dim)
    beta = torch.sigmoid(x @ p["b_proj.weight"].T)
    if gated:
        g = naive_gdn_gate(x @ p["a_proj.weight"].T, p["A_log"], p["dt_bias"], output_dtype=torch.float64)
        o, _ = naive_recurrent_gated_delta_rule(q, k, v, beta, g)
    else:
        o, _ = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)))
        o = o.transpose(1, 2)
    o = rms_norm_ref(
        o.double(),
        p["o_norm.weight"],
        None,
        z=heads(x @ p["g_proj.weight"].T, layer.head_v_dim),
        eps=layer.norm_eps,
        norm_before_gate=True,
    )
    return o.flatten(-2) @ p["o_proj.weight"].T


@pytest.mark.parametrize("mode", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("name", ["gated_deltanet", "deltanet"])
def test_delta_layers_match_fla_reference(name, mode):
    if name == "gated_deltanet":
        layer = GatedDeltaNet(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, mode=mode, chunk_size=8)
    else:
        layer = DeltaNet(hidden_size=D, num_heads=2, use_gate=True, qk_activation="relu", mode=mode, chunk_size=8)
    layer = _spread(layer)
    x = inputs(length=21)
    expected = fla_delta_layer_reference(layer, x)
    assert_close(layer(x)[0], expected, 1e-5, f"{name} layer (float32) vs fla")
    assert_close(copy.deepcopy(layer).double()(x.double())[0], expected, 1e-5, f"{name} layer (float64) vs fla")


def test_mamba2_layer_matches_fla_torch_forward():
    """fla's Mamba2 on CPU runs its pure-PyTorch SSD (``torch_forward``); its Triton-only activation and gated
    norm are swapped for PyTorch's SiLU and fla's ``rms_norm_ref``. One group: fla's CPU path tiles the B/C
    groups over heads, whereas mamba_ssm's kernels (and fla's CUDA path, and ours) give head ``h`` group
    ``h // (heads/groups)``."""
    kwargs = dict(hidden_size=D, head_dim=8, state_size=8, n_groups=1, chunk_size=16)
    torch.manual_seed(0)
    reference = fla_layers.Mamba2(**kwargs, backend="triton")
    reference.act = F.silu
    norm = reference.norm
    norm.forward = lambda x, z=None: rms_norm_ref(
        x, norm.weight, None, z=z, eps=norm.eps, group_size=norm.group_size, norm_before_gate=norm.norm_before_gate
    )
    torch.manual_seed(0)
    layer = Mamba2(**kwargs)
    x = inputs(length=37)
    with torch.no_grad():
        assert_close(layer(x)[0], reference(x)[0], 1e-5, "Mamba2 layer vs fla's torch_forward")


def test_reset_retention_is_gated_deltanet():
    gdn = _spread(GatedDeltaNet(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4))
    bayes = BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, retention="reset")
    bayes.load_state_dict(gdn.state_dict())
    x = inputs()
    assert_close(bayes(x)[0], gdn(x)[0], 1e-6, "Bayesian(reset) vs GatedDeltaNet")


def test_learned_retention_starts_function_preserving_with_a_gradient():
    gdn = _spread(GatedDeltaNet(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4))
    bayes = BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, num_v_heads=4, retention="learned")
    bayes.load_state_dict(gdn.state_dict(), strict=True)  # the distillation start: GDN weights, γ ≡ 0
    x = inputs(length=40)
    gamma = bayes.certainty_retention(x, -torch.rand(2, 40, 4))
    assert gamma is not None and bool((gamma == 0).all()) and gamma.requires_grad
    out = bayes(x)[0]
    assert_close(out, gdn(x)[0], 1e-5, "learned retention at its start vs Gated DeltaNet")
    (out * torch.randn_like(out)).sum().backward()
    grad = bayes.c_scale.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert bool((grad != 0).all()), f"every head's retention scale must get a gradient, got {grad}"


def test_retention_scale_clamps_forward_and_passes_gradient():
    layer = BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, retention="learned")
    with torch.no_grad():
        layer.c_scale.copy_(torch.tensor([-0.5, 1.5]))
    x = inputs()
    gamma = layer.certainty_retention(x, torch.zeros(2, 23, 2))
    assert bool((gamma[..., 0] == 0).all()) and bool((gamma <= 1).all())
    layer(x)[0].square().sum().backward()
    assert bool((layer.c_scale.grad != 0).all())


def test_stationary_retention_is_alpha_squared():
    layer = BayesianLayer(hidden_size=D, head_dim=8, num_heads=2, retention="stationary")
    g = -torch.rand(2, 5, 2)
    assert_close(layer.certainty_retention(inputs(length=5), g), torch.exp(g) ** 2, 1e-6, "γ = α²")


def test_the_bayesian_layer_chunks_its_mean_path_like_gated_deltanet_by_default():
    """K = 32: covariance path in chunks of 16, mean path in Gated DeltaNet's 32; a given ``chunk_size`` sets both
    unless ``mean_chunk_size`` is given too. The output does not depend on the pair (float rounding)."""
    kwargs = dict(hidden_size=64, head_dim=32, num_heads=2, retention="stationary", layer_idx=0)
    default = BayesianLayer(**kwargs)
    assert (default.chunk_size, default.mean_chunk_size) == (16, 32)
    assert GatedDeltaNet(hidden_size=64, head_dim=32, num_heads=2).mean_chunk_size == 32
    one = BayesianLayer(**kwargs, chunk_size=16)
    assert (one.chunk_size, one.mean_chunk_size) == (16, 16)
    assert BayesianLayer(**kwargs, chunk_size=8, mean_chunk_size=64).mean_chunk_size == 64
    one.load_state_dict(default.state_dict())
    x = torch.randn(2, 70, 64)
    assert default.filter_inputs(x)["mean_chunk_size"] == 32
    assert_close(default(x)[0], one(x)[0], 1e-5, "mean path in chunks of 32 vs 16")
    with pytest.raises(ValueError, match="mean_chunk_size must be a positive int"):
        BayesianLayer(**kwargs, mean_chunk_size=0)


def test_variance_side_channel():
    layer = make("bayesian")
    x = inputs()
    layer(x)
    assert layer.last_variance is None
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[1, :5] = 0
    layer(x, attention_mask=mask, output_variance=True)
    var = layer.last_variance
    assert var.shape == (2, 23, 4) and bool((var >= 0).all()) and bool((var[1, :5] == 0).all())
    assert bool((var[:, 5:] > 0).all())


@pytest.mark.parametrize("name", ["bayesian", "gated_deltanet"])
def test_filter_inputs_are_the_forwards_filter_call(name, monkeypatch):
    """``filter_inputs`` returns exactly the arguments the forward hands ``bayes_filter`` — from a cached state,
    with left padding and the variance requested — and writes neither the cache nor the layer."""
    from probseq.layers import bayesian
    from probseq.layers.utils import gated_output

    layer = make(name).eval()
    x, mask = _left_padded([9, 4], 9)
    cache = DictCache()
    layer(inputs(length=5, seed=1), past_key_values=cache, use_cache=True)  # a state to continue from
    state, seen, variance = cache.states[0], dict(cache.seen), layer.last_variance
    kwargs = dict(attention_mask=mask, past_key_values=cache, use_cache=True, output_variance=True)

    given = layer.filter_inputs(x, **kwargs)
    assert cache.states[0] is state and cache.seen == seen and layer.last_variance is variance
    calls = []
    original = bayesian.bayes_filter
    monkeypatch.setattr(bayesian, "bayes_filter", lambda *a, **kw: calls.append((a, kw)) or original(*a, **kw))
    out = layer(x, **kwargs)[0]
    ((args, passed),) = calls
    assert args == () and sorted(passed) == sorted(given)
    assert passed["initial_state"] is state.memory and (passed["gamma"] is None) == (name == "gated_deltanet")
    for key, value in given.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, passed[key]), key
        elif key == "initial_state":
            assert value is state.memory
        else:
            assert value == passed[key], key
    assert passed["output_variance"] and passed["output_final_state"] and passed["validate"] is layer.validate
    padding = ~mask.bool()[..., None]  # the filter on the given inputs, read out as the layer does, is the layer
    expected = gated_output(layer, original(**given).output, x.masked_fill(padding, 0.0)).masked_fill(padding, 0.0)
    assert torch.equal(out, expected)


# --- decoding, padding, packing: every mixer ----------------------------------------------------------


@pytest.mark.parametrize("name", list(MIXERS))
def test_prefill_then_steps_equals_parallel(name):
    torch.manual_seed(0)
    layer = make(name).eval()
    x = inputs(length=20)
    full = layer(x)[0]
    cache = DictCache()
    outs = [layer(x[:, :13], past_key_values=cache, use_cache=True)[0]]
    outs += [layer(x[:, t : t + 1], past_key_values=cache, use_cache=True)[0] for t in range(13, 17)]
    outs.append(layer(x[:, 17:], past_key_values=cache, use_cache=True)[0])  # a multi-token chunk from a state
    assert_close(torch.cat(outs, 1), full, 1e-5, f"{name}: prefill + steps vs one pass")
    assert cache.seen[0] == 20


def _left_padded(lengths, length, seed=0):
    x = inputs(len(lengths), length, seed)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, length - n :] = 1
    return x, mask


@pytest.mark.parametrize("name", list(MIXERS))
def test_left_padded_batch_equals_sequences_alone(name):
    torch.manual_seed(0)
    layer = make(name).eval()
    lengths, length = [19, 7, 2], 19
    x, mask = _left_padded(lengths, length)
    x = x.masked_fill(~mask.bool()[..., None], 3.0)  # padding content must not matter
    cache = DictCache()
    out = layer(x, attention_mask=mask, past_key_values=cache, use_cache=True)[0]
    for i, n in enumerate(lengths):
        alone_cache = DictCache()
        alone = layer(x[i : i + 1, length - n :], past_key_values=alone_cache, use_cache=True)[0]
        assert_close(out[i : i + 1, length - n :], alone, 1e-5, f"{name}: sequence {i} padded vs alone")
        assert bool((out[i, : length - n] == 0).all()), "padded positions must output zeros"
        if name != "attention":  # the recurrent state is the sequence's own
            pairs = zip(flat_state(cache.states[0], name), flat_state(alone_cache.states[0], name))
            for padded_state, alone_state in pairs:
                assert_close(padded_state[i : i + 1], alone_state, 1e-5, f"{name}: state of sequence {i}")


@pytest.mark.parametrize("name", list(MIXERS))
def test_padding_anywhere_equals_sequences_alone_and_decoding_continues_them(name):
    """Padding between real tokens and after them (a right-padded prompt): every real token, and the next tokens
    decoded from the cache, are what the sequence gives alone — the short convolution skips padded tokens
    instead of convolving zeros (which changed the tokens after a gap and left zeros in a right-padded state)."""
    torch.manual_seed(0)
    layer = make(name).eval()
    length = 12
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[0, 4:7] = False  # a gap
    mask[1, 9:] = False  # right padding
    mask[2, :2] = False  # left padding and a gap
    mask[2, 5] = False
    x = inputs(3, length).masked_fill(~mask[..., None], 3.0)  # padding content must not matter
    steps = inputs(3, 2, seed=1)
    cache = DictCache()
    out = layer(x, attention_mask=mask.long(), past_key_values=cache, use_cache=True)[0]
    full_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], 1)
    step = layer(steps[:, :1], attention_mask=full_mask, past_key_values=cache, use_cache=True)[0]
    for i in range(3):
        real = x[i : i + 1, mask[i]]
        alone = layer(torch.cat([real, steps[i : i + 1, :1]], 1))[0]
        assert_close(out[i : i + 1, mask[i]], alone[:, :-1], 1e-5, f"{name}: sequence {i}, padded vs alone")
        assert bool((out[i, ~mask[i]] == 0).all()), "padded positions must output zeros"
        assert_close(step[i : i + 1], alone[:, -1:], 1e-5, f"{name}: sequence {i}, decoding after its padding")


@pytest.mark.parametrize("name", list(MIXERS))
def test_cu_seqlens_packing_equals_sequences_alone(name):
    torch.manual_seed(0)
    layer = make(name).eval()
    lengths = [9, 1, 14]
    x = inputs(1, sum(lengths))
    cu = torch.tensor([0, 9, 10, 24])
    cache = DictCache()
    packed = layer(x, cu_seqlens=cu, past_key_values=cache, use_cache=name != "attention")[0]
    for i, n in enumerate(lengths):
        alone_cache = DictCache()
        alone = layer(x[:, cu[i] : cu[i + 1]], past_key_values=alone_cache, use_cache=True)[0]
        assert_close(packed[:, cu[i] : cu[i + 1]], alone, 1e-5, f"{name}: packed sequence {i} vs alone")
        if name != "attention":
            pairs = zip(flat_state(cache.states[0], name), flat_state(alone_cache.states[0], name))
            for packed_state, alone_state in pairs:
                assert_close(packed_state[i : i + 1], alone_state, 1e-5, f"{name}: final state of sequence {i}")


@pytest.mark.parametrize("name", list(MIXERS))
def test_gradients_reach_every_parameter_and_bf16_autocast_is_finite(name):
    torch.manual_seed(0)
    layer = make(name)
    x = inputs(length=17).requires_grad_()
    layer(x)[0].square().mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert bool((p.grad != 0).any()), f"{name}.{pname} gets no gradient"
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)[0]
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    out.float().square().mean().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in layer.parameters() if p.grad is not None)


# --- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: BayesianLayer(allow_neg_eigval=True), "allow_neg_eigval"),
        (lambda: GatedDeltaNet(allow_neg_eigval=True), "allow_neg_eigval"),
        (lambda: BayesianLayer(num_heads=4, num_v_heads=6), "num_v_heads"),
        (lambda: BayesianLayer(head_dim=3, expand_v=0.5), "expand_v"),
        (lambda: BayesianLayer(retention="forever"), "retention"),
        (lambda: BayesianLayer(retention_init=2.0), "retention_init"),
        (lambda: BayesianLayer(mode="parallel"), "mode"),
        (lambda: BayesianLayer(output_gate_activation="gelu"), "output_gate_activation"),
        (lambda: BayesianLayer(unknown=1), "unknown"),
        (lambda: GatedDeltaNet(retention="learned"), "retention"),
        (lambda: DeltaNet(qk_norm="sum"), "qk_norm"),
        (lambda: DeltaNet(allow_neg_eigval=True), "allow_neg_eigval"),
        (lambda: DeltaNet(hidden_size=30, num_heads=4), "divisible"),
        (lambda: LinearAttention(feature_map="hedgehog"), "hedgehog"),
        (lambda: LinearAttention(do_feature_map_norm=True), "do_feature_map_norm"),
        (lambda: LinearAttention(decay="vector"), "decay"),
        (lambda: Mamba2(hidden_size=30, head_dim=8), "divisible"),
        (lambda: Mamba2(hidden_act="gelu"), "hidden_act"),
        (lambda: Attention(hidden_size=30, num_heads=4), "divisible"),
        (lambda: Attention(window_size=128), "window_size"),
    ],
)
def test_unsupported_arguments_raise(build, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        build()


def test_bad_masks_and_caches_raise():
    layer = make("bayesian")
    x = inputs()
    with pytest.raises(ValueError, match="padding mask"):
        layer(x, attention_mask=torch.ones(2, 23, 23))
    with pytest.raises(ValueError, match="either attention_mask"):
        layer(x[:1], attention_mask=torch.ones(1, 23), cu_seqlens=torch.tensor([0, 23]))
    with pytest.raises(ValueError, match="batch size 1"):
        layer(x, cu_seqlens=torch.tensor([0, 23]))
    with pytest.raises(ValueError, match="packed"):
        make("attention")(x[:1], cu_seqlens=torch.tensor([0, 23]), past_key_values=DictCache(), use_cache=True)
    with pytest.raises(ValueError, match="layer_idx"):
        BayesianLayer(hidden_size=D, head_dim=8, num_heads=2)(x, past_key_values=DictCache(), use_cache=True)
    assert isinstance(RecurrentState((), None), tuple)
