"""ZoologyModel's block layouts (probseq.models.mqar_model): ``"alternating"`` (conv block, mixer, …; the default)
and ``"mixers"`` (every block a mixer: Zoology's Mamba-2 models) — the blocks built, the cache they fill and
continue, the state they count, the checks and the saved config."""

from __future__ import annotations

import json

import pytest
import torch

from probseq.layers import MIXERS, Mamba2
from probseq.models import ZoologyConfig, ZoologyModel
from probseq.models.cache import ProbSeqCache
from probseq.models.mqar_model import ConvBlock

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 32


def model(mixer: str = "mamba2", seed: int = 0, **config) -> ZoologyModel:
    torch.manual_seed(seed)
    return ZoologyModel(ZoologyConfig(vocab_size=VOCAB, d_model=32, mixer=mixer, **config)).eval()


def ids(batch: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_mixers_layout_is_n_layers_mamba2_blocks_and_no_conv_block(n_layers):
    mixers = model(n_layers=n_layers, layout="mixers")
    assert not any(isinstance(m, ConvBlock) for m in mixers.modules())
    assert [type(layer) for layer in mixers.layers] == [Mamba2] * n_layers
    assert [layer.layer_idx for layer in mixers.layers] == list(range(n_layers))  # the cache slot is the block
    assert [entry[0] for entry in mixers.cache_layout()] == list(range(n_layers))
    assert mixers.config.conv_blocks == 0


def test_alternating_layout_is_the_default_conv_block_first():
    default = model(n_layers=4)
    assert default.config.layout == "alternating" and default.config.conv_blocks == 2
    assert [type(layer) for layer in default.layers] == [ConvBlock, Mamba2, ConvBlock, Mamba2]
    assert [entry[0] for entry in default.cache_layout()] == [1, 3]
    three = model(n_layers=3)  # an odd depth ends with a conv block
    assert [type(layer) for layer in three.layers] == [ConvBlock, Mamba2, ConvBlock] and three.config.conv_blocks == 2


def test_alternating_layout_draws_the_same_weights_as_a_config_without_the_field():
    """``layout="alternating"`` given or left out: the same parameters, drawn in the same order."""
    left_out = model(n_layers=4, seed=3, init="zoology").state_dict()
    given = model(n_layers=4, seed=3, init="zoology", layout="alternating").state_dict()
    assert list(left_out) == list(given)
    for name, tensor in left_out.items():
        assert torch.equal(given[name], tensor), name


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_mixers_layout_decoding_from_a_cache_equals_the_full_forward(mixer):
    """A prefix, then one token at a time, then a chunk, each continuing the cache: the full forward's states."""
    mixers, x = model(mixer, n_layers=2, layout="mixers"), ids()
    with torch.no_grad():
        full = mixers.hidden_states(x)
        cache = ProbSeqCache()
        parts = [mixers.hidden_states(x[:, :4], cache)]
        parts += [mixers.hidden_states(x[:, t : t + 1], cache) for t in range(4, 8)]
        parts.append(mixers.hidden_states(x[:, 8:], cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
    assert [cache.get_seq_length(i) for i in range(2)] == [x.shape[1]] * 2


def test_alternating_layout_refuses_to_continue_a_filled_cache():
    """The conv blocks keep no decoding state: continuing would restart them, so it is refused; an empty cache
    (what ``state_size`` uses) is taken."""
    alternating, x = model(n_layers=2), ids()
    cache = ProbSeqCache()
    with torch.no_grad():
        alternating.hidden_states(x[:, :4], cache)
        with pytest.raises(ValueError, match=r"cannot continue a filled cache with conv blocks.*layout='mixers'"):
            alternating.hidden_states(x[:, 4:], cache)


@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet", "attention"])
def test_state_size_counts_the_conv_blocks_of_the_layout(mixer):
    """A conv block adds its last ``kernel`` inputs (``d_model · kernel``); every mixer block its own state, the same
    at every index. The layouts differ by exactly their conv blocks."""
    length, conv = 16, 32 * 3
    one = model(mixer, n_layers=1, layout="mixers").state_size(length)
    assert one > 0
    assert model(mixer, n_layers=2, layout="mixers").state_size(length) == 2 * one
    assert model(mixer, n_layers=3, layout="mixers").state_size(length) == 3 * one
    assert model(mixer, n_layers=2).state_size(length) == one + conv
    assert model(mixer, n_layers=3).state_size(length) == one + 2 * conv
    assert model(mixer, n_layers=4).state_size(length) == 2 * one + 2 * conv


def test_zoology_init_scales_mamba2_out_proj_by_the_mamba2_blocks():
    """Zoology's Mamba-2 depth is its Mamba-2 blocks: Kaiming uniform / √(Mamba-2 blocks) in both layouts."""
    for config in ({"n_layers": 4}, {"n_layers": 2, "layout": "mixers"}):  # two Mamba-2 blocks each
        layers = [layer for layer in model(init="zoology", **config).layers if isinstance(layer, Mamba2)]
        assert len(layers) == 2
        for layer in layers:
            weight = layer.out_proj.weight
            bound = 1 / weight.shape[1] ** 0.5 / 2**0.5  # Kaiming uniform (a = √5) bound is 1/√fan_in
            assert 0.9 * bound < float(weight.detach().abs().max()) <= bound


def test_bad_layouts_and_depths_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"layout must be one of \('alternating', 'mixers'\), got 'mamba'"):
        ZoologyConfig(vocab_size=VOCAB, layout="mamba")
    with pytest.raises(ValueError, match=r"n_layers must be >= 2 with layout='alternating'.*got 1"):
        ZoologyConfig(vocab_size=VOCAB, n_layers=1)
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        ZoologyConfig(vocab_size=VOCAB, n_layers=0, layout="mixers")
    assert ZoologyConfig(vocab_size=VOCAB, n_layers=1, layout="mixers").n_layers == 1


def test_layout_round_trips_and_a_config_saved_before_it_loads_as_alternating(tmp_path):
    mixers = model(n_layers=2, layout="mixers")
    mixers.save_pretrained(tmp_path / "mixers")
    loaded = ZoologyModel.from_pretrained(tmp_path / "mixers")
    assert loaded.config.layout == "mixers" and [type(layer) for layer in loaded.layers] == [Mamba2, Mamba2]
    for name, tensor in mixers.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    old = model(n_layers=2)
    old.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    config = json.loads(path.read_text())
    del config["layout"]  # as written before the field existed
    path.write_text(json.dumps(config))
    loaded = ZoologyModel.from_pretrained(tmp_path / "old")
    assert loaded.config.layout == "alternating" and [type(layer) for layer in loaded.layers] == [ConvBlock, Mamba2]
    assert torch.equal(loaded(ids()).logits, old(ids()).logits)


@pytest.mark.parametrize("mixer", ["gated_deltanet", "bayesian", "mamba2"])
def test_decay_init_scale_multiplies_the_initial_decay_rates_and_nothing_else(mixer):
    """``decay_init_scale=s``: every mixer's ``A_log`` moves by ``ln s`` (initial half-lives ÷ s); every other
    parameter is the one the same seed draws without it, so runs that differ only in it stay paired."""
    plain = model(mixer, seed=5, n_layers=4).state_dict()
    scaled = model(mixer, seed=5, n_layers=4, decay_init_scale=0.01).state_dict()
    assert list(plain) == list(scaled)
    decay_rates = [name for name in plain if name.endswith("A_log")]
    assert len(decay_rates) == 2  # one per mixer block
    for name, tensor in plain.items():
        if name in decay_rates:
            torch.testing.assert_close(scaled[name].exp(), 0.01 * tensor.exp())
        else:
            assert torch.equal(scaled[name], tensor), name


def test_decay_init_scale_is_validated_and_round_trips(tmp_path):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="decay_init_scale"):
            ZoologyConfig(vocab_size=VOCAB, d_model=32, mixer="gated_deltanet", decay_init_scale=bad)
    saved = model("gated_deltanet", decay_init_scale=0.1)
    saved.save_pretrained(tmp_path)
    loaded = ZoologyModel.from_pretrained(tmp_path)
    assert loaded.config.decay_init_scale == 0.1
    assert torch.equal(loaded.layers[1].A_log, saved.layers[1].A_log)  # the saved weights, not scaled again
