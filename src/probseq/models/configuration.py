"""``ProbSeqConfig``: a decoder-only language model with a chosen mixer per layer.

Every block is pre-norm: ``h = h + mixer(RMSNorm(h))``, ``h = h + SwiGLU(RMSNorm(h))``. The mixer of each
layer is ``mixer`` (a name of :data:`probseq.layers.MIXERS`), except the layers listed in ``attn_layers``
(or every ``attn_every``-th layer), which are softmax attention — the hybrid pattern.

Sizes of the recurrent mixers are given per head: ``num_heads`` heads of key dim ``head_dim`` and value
dim ``head_dim · expand_v`` (``bayesian``, ``gated_deltanet``, ``deltanet``, ``linear_attention``; the
last two are converted to fla's ``expand_k``/``expand_v`` ratios). ``mamba2`` uses ``expand``,
``head_dim`` (its ``P``), ``state_size`` (``N``) and ``n_groups``; its head count is
``expand · hidden_size / head_dim``. Attention layers use ``attn_num_heads`` (default ``num_heads``)
heads of ``hidden_size / attn_num_heads``, ``attn_num_kv_heads``, ``rope_theta``.

A bad configuration raises ``ValueError`` at construction, naming the field and its value: a key the class does
not know (a misspelt ``retension`` would otherwise be ignored and its default used; transformers' own keys such
as ``architectures``, ``dtype``/``torch_dtype``, ``transformers_version``, ``auto_map`` and generation keys are
accepted), a size or count that is not a positive int, a rate, ratio or epsilon that is not a finite number
``> 0``, a choice outside its allowed values, a flag that is not a bool, a special token id outside
``[0, vocab_size)``, a hybrid pattern out of range, and — by building every mixer the config uses once on the
``meta`` device — head sizes that do not divide and mixer options a layer refuses (e.g.
``allow_neg_eigval=True``). Values changed after construction (``config.norm_eps = …``, or the overrides of
``from_pretrained(…, norm_eps=…)``) are checked again when a model is built from the config.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
from transformers import GenerationConfig, PretrainedConfig

from probseq.layers import MIXERS, RETENTIONS
from probseq.layers.linear_attention import DECAYS, FEATURE_MAPS
from probseq.layers.norm import GATE_ACTIVATIONS
from probseq.models.checks import (
    boolean,
    check_config_keys,
    check_dtype,
    one_of,
    positive_int,
    positive_real,
    real_in,
    token_id,
)


def _generation_keys() -> set[str]:
    """Generation settings a config.json may still hold (transformers drops them when it loads one)."""
    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    return set(defaults()) if callable(defaults) else set()


# Keys of a config.json that are transformers' own, not a model's: its config fields, what it reads or drops on
# load, and what other versions and tools write. A config accepts them; any other key it does not know is an error.
TRANSFORMERS_KEYS = frozenset(
    {field.name for field in dataclasses.fields(PretrainedConfig)}
    | _generation_keys()
    | {
        "model_type",
        "torch_dtype",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "auto_map",
        "num_labels",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "_attn_implementation_internal",
        "_experts_implementation_internal",
        "_attn_implementation_autoset",
        "per_layer_config",
        "quantization_config",
        "tokenizer_class",
        "prefix",
        "sep_token_id",
        "decoder_start_token_id",
        "task_specific_params",
        "finetuning_task",
        "is_decoder",
        "add_cross_attention",
        "cross_attention_hidden_size",
        "tie_encoder_decoder",
        "pruned_heads",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "custom_pipelines",
        "transformers_weights",
    }
)


def config_keys(config_class: type) -> set[str]:
    """The keys ``config_class(**kwargs)`` takes: its own arguments and :data:`TRANSFORMERS_KEYS`."""
    parameters = inspect.signature(config_class.__init__).parameters
    own = {name for name, p in parameters.items() if name != "self" and p.kind is not p.VAR_KEYWORD}
    return own | TRANSFORMERS_KEYS


class ProbSeqConfig(PretrainedConfig):
    """Configuration of :class:`~probseq.models.ProbSeqForCausalLM` (``model_type = "probseq"``).

    Args:
        vocab_size, hidden_size, num_hidden_layers: the usual.
        mixer: the default mixer of every layer (``"bayesian"``, ``"gated_deltanet"``, ``"deltanet"``,
            ``"linear_attention"``, ``"mamba2"`` or ``"attention"``).
        retention, retention_init, r_min: the Bayesian Layer's certainty retention (``"reset"``,
            ``"stationary"``, ``"learned"``), the initial scale ``ρ`` of ``learned`` (0: function-preserving)
            and the noise floor (``None``: the layer's default).
        num_heads, num_v_heads, head_dim, expand_v: recurrent heads (see the module docstring).
        use_gate, use_short_conv, conv_size, conv_bias, output_gate_activation: fla's GDN / DeltaNet options.
        allow_neg_eigval: fla's option, refused (``True`` raises).
        chunk_size: chunk length of the chunked filters (``None``: each layer's own default — the delta-rule
            layers' depends on the key head dim, :func:`~probseq.layers.utils.delta_chunk_size`).
        feature_map, decay: ``linear_attention``'s feature map (default ``"elu"``, parameter-free; fla's default
            is ``"elementwise_product"``) and decay (``None``, ``"scalar"``, ``"channel"``).
        state_size, expand, n_groups: ``mamba2``.
        attn_layers, attn_every: hybrid pattern (explicit layer indices, or every n-th layer: ``n−1, 2n−1, …``).
        attn_num_heads, attn_num_kv_heads, qkv_bias, rope_theta, max_position_embeddings: attention layers.
        hidden_ratio, intermediate_size: SwiGLU width (fla's rule when ``intermediate_size`` is ``None``).
        norm_eps, initializer_range, tie_word_embeddings, use_cache, pad/bos/eos_token_id: the usual.
    """

    model_type = "probseq"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        mixer: str = "bayesian",
        retention: str = "learned",
        retention_init: float = 0.0,
        r_min: float | None = None,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        head_dim: int = 256,
        expand_v: float = 2.0,
        use_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        output_gate_activation: str = "swish",
        chunk_size: int | None = None,
        feature_map: str = "elu",
        decay: str | None = None,
        state_size: int = 64,
        expand: int = 2,
        n_groups: int = 1,
        attn_layers: list[int] | None = None,
        attn_every: int | None = None,
        attn_num_heads: int | None = None,
        attn_num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        hidden_ratio: float | None = 4,
        intermediate_size: int | None = None,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.mixer, self.retention, self.retention_init, self.r_min = mixer, retention, retention_init, r_min
        self.num_heads, self.num_v_heads, self.head_dim, self.expand_v = num_heads, num_v_heads, head_dim, expand_v
        self.use_gate, self.use_short_conv = use_gate, use_short_conv
        self.conv_size, self.conv_bias = conv_size, conv_bias
        self.allow_neg_eigval, self.output_gate_activation = allow_neg_eigval, output_gate_activation
        self.chunk_size, self.feature_map, self.decay = chunk_size, feature_map, decay
        self.state_size, self.expand, self.n_groups = state_size, expand, n_groups
        self.attn_layers = list(attn_layers) if isinstance(attn_layers, (list, tuple)) else attn_layers
        self.attn_every, self.attn_num_heads, self.attn_num_kv_heads = attn_every, attn_num_heads, attn_num_kv_heads
        self.qkv_bias, self.rope_theta, self.max_position_embeddings = qkv_bias, rope_theta, max_position_embeddings
        self.hidden_ratio, self.intermediate_size = hidden_ratio, intermediate_size
        self.norm_eps, self.initializer_range, self.use_cache = norm_eps, initializer_range, use_cache
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        check_config_keys(type(self).__name__, kwargs, config_keys(type(self)))
        for name in ("dtype", "torch_dtype"):  # transformers would look the name up in torch (an AttributeError)
            check_dtype(name, kwargs.get(name))
        self._check()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' ``from_dict``, with the overrides in ``kwargs`` held to the same rules as the dict: a key
        the config does not know is an error (transformers would drop it), and the values are checked again."""
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config, unused = super().from_dict(config_dict, return_unused_kwargs=True, **kwargs)
        if not return_unused:  # from_pretrained of a model hands the unused ones on to the model's constructor
            check_config_keys(cls.__name__, unused, config_keys(cls))
        config._check()
        return (config, unused) if return_unused else config

    @property
    def layer_mixers(self) -> list[str]:
        """The mixer name of every layer."""
        attn = set(self.attn_layers or ())
        if self.attn_every:
            attn |= set(range(self.attn_every - 1, self.num_hidden_layers, self.attn_every))
        return ["attention" if i in attn else self.mixer for i in range(self.num_hidden_layers)]

    def _check(self) -> None:
        """Every field (see the module docstring); a ``ValueError`` names the first bad one and its value."""
        self._check_values()
        self._check_pattern()
        # Every distinct mixer once, on the meta device: the layers' own checks, at no memory cost.
        from probseq.models.blocks import build_mixer

        seen = set()
        for index, name in enumerate(self.layer_mixers):
            if name not in seen:
                seen.add(name)
                with torch.device("meta"):
                    build_mixer(self, index)

    def _check_values(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_heads",
            "head_dim",
            "conv_size",
            "state_size",
            "expand",
            "n_groups",
        ):
            positive_int(name, getattr(self, name))
        for name in (
            "num_v_heads",
            "chunk_size",
            "attn_num_heads",
            "attn_num_kv_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            positive_int(name, getattr(self, name), optional=True)
        for name in ("expand_v", "norm_eps", "initializer_range"):
            positive_real(name, getattr(self, name))
        positive_real("hidden_ratio", self.hidden_ratio, optional=True)  # SwiGLU width 2/3 · ratio · hidden
        positive_real("rope_theta", self.rope_theta, optional=True)  # None: attention without rotary embedding
        real_in("retention_init", self.retention_init, 0.0, 1.0)  # ρ, a fraction of the stationary retention
        real_in("r_min", self.r_min, 0.0, math.inf, optional=True)  # the noise floor, r ≥ r_min ≥ 0
        for name in (
            "use_gate",
            "use_short_conv",
            "conv_bias",
            "allow_neg_eigval",
            "qkv_bias",
            "use_cache",
            "tie_word_embeddings",
        ):
            boolean(name, getattr(self, name))
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}: mixer must be one of {tuple(MIXERS)}")
        one_of("retention", self.retention, RETENTIONS)
        one_of("output_gate_activation", self.output_gate_activation, GATE_ACTIVATIONS)
        one_of("feature_map", self.feature_map, FEATURE_MAPS)
        one_of("decay", self.decay, DECAYS)
        token_id("pad_token_id", self.pad_token_id, self.vocab_size)
        token_id("bos_token_id", self.bos_token_id, self.vocab_size)
        token_id("eos_token_id", self.eos_token_id, self.vocab_size, many=True)

    def _check_pattern(self) -> None:
        if self.attn_layers is not None and not isinstance(self.attn_layers, (list, tuple)):
            raise ValueError(f"attn_layers must be a list of layer indices or None, got {self.attn_layers!r}")
        if self.attn_layers is not None and self.attn_every is not None:
            raise ValueError("give the hybrid pattern either as attn_layers or as attn_every, not both")
        if self.attn_layers is not None:
            bad = [
                i
                for i in self.attn_layers
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers
            ]
            if bad or len(set(self.attn_layers)) != len(self.attn_layers):
                raise ValueError(
                    f"attn_layers must be distinct layer indices in [0, {self.num_hidden_layers}), "
                    f"got {self.attn_layers}"
                )
        positive_int("attn_every", self.attn_every, optional=True)
