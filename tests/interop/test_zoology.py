"""Zoology mixers (probseq.interop.zoology): shapes, causality, gradients, state sizes against a hand count and
against the decoding cache, dotted-path import as Zoology does it, and refused arguments."""

from __future__ import annotations

import importlib

import pytest
import torch

from probseq.interop import zoology
from probseq.models import ProbSeqCache

D, HEADS = 32, 2  # tiny: two heads of 16
MIXERS = {  # case → constructor keywords (the class is the part before "-")
    "BayesianMixer": {"retention": "learned", "retention_init": 0.5, "chunk_size": 8},
    "BayesianMixer-stationary": {"retention": "stationary", "chunk_size": 8},
    "BayesianMixer-reset": {"retention": "reset", "chunk_size": 8},
    "GatedDeltaNetMixer": {"chunk_size": 8},
    "DeltaNetMixer": {"chunk_size": 8},
    "LinearAttentionMixer": {"chunk_size": 8},
    "Mamba2Mixer": {"state_size": 8, "chunk_size": 8},
    "AttentionMixer": {},
}

# Hand counts at d_model = 32, two heads (K = V = 16, conv kernel 4), T = 100:
#   Bayesian:        2·(16·16 + 16·16) + (32 + 32 + 32)·4 = 1024 + 384
#   reset, GDN, DN:  2·16·16           + (32 + 32 + 32)·4 =  512 + 384
#   linear attn:     2·16·16                              =  512
#   Mamba-2:         heads 2 of P = 2·32/2 = 32, N = 8: 2·32·8 + conv (64 + 2·8)·4 = 512 + 320
#   attention:       2·32·100
HAND_COUNT = {
    "BayesianMixer": 1408,
    "BayesianMixer-stationary": 1408,
    "BayesianMixer-reset": 896,
    "GatedDeltaNetMixer": 896,
    "DeltaNetMixer": 896,
    "LinearAttentionMixer": 512,
    "Mamba2Mixer": 832,
    "AttentionMixer": 6400,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(case: str) -> zoology.ZoologyMixer:
    torch.manual_seed(0)
    return getattr(zoology, case.split("-")[0])(D, layer_idx=0, num_heads=HEADS, **MIXERS[case])


def inputs(batch: int = 2, length: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", MIXERS)
def test_shape_in_equals_out(case):
    mixer = build(case)
    x = inputs()
    y = mixer(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()


@pytest.mark.parametrize("case", MIXERS)
def test_causal(case):
    mixer = build(case)
    x = inputs()
    cut = 6
    changed = x.clone()
    changed[:, cut + 1 :] = torch.randn_like(changed[:, cut + 1 :])
    with torch.no_grad():
        y, y_changed = mixer(x), mixer(changed)
    torch.testing.assert_close(y_changed[:, : cut + 1], y[:, : cut + 1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y_changed[:, cut + 1 :], y[:, cut + 1 :])


@pytest.mark.parametrize("case", MIXERS)
def test_gradients_flow(case):
    mixer = build(case)
    x = inputs().requires_grad_(True)
    mixer(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    for name, parameter in mixer.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    if case == "BayesianMixer":  # the certainty retention learns
        assert mixer.layer.c_scale.grad.abs().sum() > 0


@pytest.mark.parametrize("case", MIXERS)
def test_state_size_matches_hand_count_and_cache(case):
    mixer = build(case)
    length = 100
    assert mixer.state_size(sequence_length=length) == HAND_COUNT[case]
    # the same number from the tensors a decoding step carries (batch 1)
    cache = ProbSeqCache()
    with torch.no_grad():
        mixer.layer(torch.randn(1, length, D), past_key_values=cache, use_cache=True)
    state = cache.get_layer_state(0)
    if case == "AttentionMixer":
        carried = state.keys.numel() + state.values.numel()
    else:
        carried = sum(t.numel() for t in state.conv) + state.memory.mean.numel()
        if case in ("BayesianMixer", "BayesianMixer-stationary"):  # the reset path never reads P
            carried += state.memory.cov.numel()
    assert carried == HAND_COUNT[case]


def test_defaults_for_zoology_sizes():
    for d_model, heads in ((64, 1), (128, 2), (256, 4), (48, 1)):
        mixer = zoology.BayesianMixer(d_model)
        layer = mixer.layer
        assert (layer.num_heads, layer.head_k_dim, layer.head_v_dim) == (heads, d_model // heads, d_model // heads)
        assert layer.retention == "learned"
    # equal d_model, equal memory: GDN, DeltaNet and linear attention carry the same V·K per head
    sizes = {
        name: getattr(zoology, name)(128, use_short_conv=False).state_size()
        for name in ("GatedDeltaNetMixer", "DeltaNetMixer")
    }
    sizes["LinearAttentionMixer"] = zoology.LinearAttentionMixer(128).state_size()
    assert set(sizes.values()) == {2 * 64 * 64}
    assert zoology.BayesianMixer(128, use_short_conv=False).state_size() == 2 * (64 * 64 + 64 * 64)
    assert zoology.AttentionMixer(128).state_size(sequence_length=64) == 2 * 128 * 64


@pytest.mark.parametrize(
    "name",
    ["BayesianMixer", "GatedDeltaNetMixer", "DeltaNetMixer", "LinearAttentionMixer", "Mamba2Mixer", "AttentionMixer"],
)
def test_importable_by_dotted_path(name):
    # as zoology.utils.import_from_str, then ModuleConfig.instantiate(d_model=..., layer_idx=..., **kwargs)
    module_name, obj_name = f"probseq.zoology.{name}".rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), obj_name)
    assert cls is getattr(zoology, name)
    mixer = cls(d_model=64, layer_idx=1, l_max=32)
    assert mixer(torch.randn(1, 5, 64)).shape == (1, 5, 64)
    assert isinstance(mixer.state_size(sequence_length=32), int)


@pytest.mark.parametrize(
    "name",
    ["BayesianMixer", "GatedDeltaNetMixer", "DeltaNetMixer", "LinearAttentionMixer", "Mamba2Mixer", "AttentionMixer"],
)
def test_bad_arguments_raise(name):
    cls = getattr(zoology, name)
    with pytest.raises(ValueError, match="unsupported argument"):
        cls(64, no_such_option=1)
    with pytest.raises(ValueError, match="divisible"):
        cls(30, num_heads=4)
    with pytest.raises(ValueError, match="l_max"):
        cls(64, l_max=0)
    with pytest.raises(ValueError, match="d_model"):
        cls(0)
    with pytest.raises(ValueError, match="expects x of shape"):
        cls(64)(torch.randn(1, 5, 32))


def test_bad_layer_options_raise():
    with pytest.raises(ValueError, match="retention"):
        zoology.BayesianMixer(64, retention="forever")
    with pytest.raises(ValueError, match="retention"):
        zoology.GatedDeltaNetMixer(64, retention="learned")
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        zoology.DeltaNetMixer(64, allow_neg_eigval=True)
    with pytest.raises(ValueError, match="feature_map"):
        zoology.LinearAttentionMixer(64, feature_map="hedgehog")


def test_variance_side_channel():
    mixer = build("BayesianMixer")
    x = inputs()
    y = mixer(x, output_variance=True)
    assert mixer.last_variance.shape == (2, 13, HEADS)
    assert (mixer.last_variance >= 0).all()
    torch.testing.assert_close(y, mixer(x))


def test_zoology_config_keywords_are_taken():
    """Zoology's configs pass ``dropout`` to attention and ``d_state`` to Mamba-2: both were refused."""
    from probseq.zoology import AttentionMixer, Mamba2Mixer

    assert Mamba2Mixer(64, d_state=8).layer.ssm_state_size == 8
    with pytest.raises(ValueError, match="name the same size"):
        Mamba2Mixer(64, d_state=8, state_size=16)
    mixer = AttentionMixer(64, dropout=0.5)
    x = torch.randn(2, 9, 64)
    mixer.eval()
    assert torch.equal(mixer(x), mixer(x))  # no dropout at evaluation
    mixer.train()
    torch.manual_seed(0)
    dropped = mixer(x)
    mixer.eval()
    assert not torch.allclose(dropped, mixer(x))
    with pytest.raises(ValueError, match="pass num_heads"):
        AttentionMixer(200)
