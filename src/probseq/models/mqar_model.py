"""Zoology's MQAR model built from probseq's pieces: ``[short-conv block, mixer] × n``, no MLP (or, with
``layout="mixers"``, ``n`` mixer blocks and no conv block: Zoology's Mamba-2 models).

Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient Language Models" (2023).
Their MQAR models (``zoology/experiments/.../configs.py``) alternate a gated short-convolution block
(``BaseConv``, kernel 3) with the sequence mixer under test (``Hybrid`` picks ``configs[layer_idx % 2]``),
use no state mixer (``torch.nn.Identity`` instead of an MLP), tie the LM head to the embeddings and give
every mixer the same ``d_model``; their MQAR configs use ``n_layers = 2`` (one conv block, then the mixer; their
Mamba-2 models are two Mamba-2 blocks without conv blocks: ``block_type="Mamba2Block"`` and the bare
``Mamba2`` as sequence mixer in ``zoology/experiments/models_repo.py``, which ``layout="mixers"`` builds).
This is the same architecture written with probseq's layers::

    h = embed(x)
    for i in range(n_layers):
        h = h + (conv_block if i is even else mixer)(RMSNorm(h))     # pre-norm residual blocks
    logits = lm_head(RMSNorm(h))                                      # lm_head tied to embed

(``layout="mixers"``: every block is a mixer.)

    conv_block(u) = ShortConv_kernel(u) ⊙ Linear(u)                   # Zoology's BaseConv (gated conv)

Differences from Zoology's code, on purpose: RMSNorm instead of LayerNorm, and a plain pre-norm residual
(Zoology's ``TransformerBlock`` with an identity state mixer adds ``LayerNorm(residual)`` back into the
residual and ``BaseConv`` adds its own skip; neither changes what the task asks of the mixer), and fla's
weight initialisation by default (``init="fla"``; Zoology's is ``init="zoology"``, which learned MQAR in fewer
quick runs: results/mqar_quick_init/README.md).

The mixer is any name of :data:`probseq.layers.MIXERS`, built by :func:`probseq.models.blocks.build_mixer`
from a :class:`~probseq.models.ProbSeqConfig` with Zoology's head settings for MQAR
(:meth:`ZoologyConfig.mixer_config`): attention 1 head; DeltaNet / Gated DeltaNet / Bayesian / linear
attention 2 heads of ``d_model / 2`` (``expand_v = 1``, no output gate, as Zoology's GDN and DeltaNet
runs); Mamba-2 ``expand = 2``, head dim 64 (or ``d_model`` when smaller), ``state_size = 16``.

``forward(input_ids, logits_mask=None)``: with ``logits_mask [B, T]`` (bool) the LM head runs only at the
masked positions and ``logits`` is ``[N, vocab]`` for the ``N`` masked positions in row-major order — at
vocab 8192 the head dominates the cost, and MQAR scores a few positions per sequence. Without it,
``logits`` is ``[B, T, vocab]``. The model computes no loss: labels are pre-shifted in probseq's tasks,
and :mod:`probseq.train` owns the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers import initialization as init
from transformers.utils import ModelOutput

from probseq.layers import MIXERS, RETENTIONS, Attention, Mamba2, RMSNorm, ShortConvolution
from probseq.models.blocks import build_mixer
from probseq.models.cache import ProbSeqCache
from probseq.models.checks import (
    boolean,
    check_config_keys,
    check_dtype,
    check_input_ids,
    describe,
    one_of,
    positive_int,
    positive_real,
    real_in,
)
from probseq.models.configuration import ProbSeqConfig, config_keys
from probseq.models.modeling import ProbSeqPreTrainedModel

INITS = ("fla", "zoology")
LAYOUTS = ("alternating", "mixers")


class ZoologyConfig(PretrainedConfig):
    """Configuration of :class:`ZoologyModel` (``model_type = "probseq_zoology"``).

    Args:
        vocab_size: tokens.
        d_model: width of every block (the same for every mixer).
        n_layers: blocks; with ``layout="alternating"`` even indices are conv blocks, odd ones the mixer
            (4 = ``[conv, mixer] × 2``; at least 2), with ``"mixers"`` every block is a mixer (at least 1).
        mixer: a name of :data:`probseq.layers.MIXERS`.
        conv_kernel: kernel of the conv blocks (Zoology: 3).
        num_heads: heads of the mixer (``None``: Zoology's setting, see the module docstring).
        expand_v: value-dim ratio of the recurrent mixers.
        state_size: Mamba-2's ``N``.
        use_gate: output gate of the delta-rule mixers.
        retention, retention_init: the Bayesian Layer's certainty retention.
        feature_map: linear attention's feature map.
        norm_eps, initializer_range, tie_word_embeddings: the usual.
        init: weight initialisation, ``"fla"`` (the default) or ``"zoology"`` (Zoology's; :class:`ZoologyModel`).
        layout: the blocks, ``"alternating"`` (the default: conv block, mixer, conv block, …; Zoology's models but
            Mamba-2) or ``"mixers"`` (``n_layers`` mixers and no conv block; Zoology's Mamba-2 models, which are two
            Mamba-2 blocks). A config saved before this field loads as ``"alternating"``, the model it was.
        decay_init_scale: every mixer's initial decay rates ``A`` (``A_log``: Gated DeltaNet, the Bayesian Layer,
            Mamba-2) multiplied by this after initialisation, so its initial half-lives are divided by it (1: the
            default, the mixers' own initialisation; 0.01: a hundred times longer memory at step 0). Nothing else
            changes: the same seed draws the same weights. Applied once, at construction: a saved model's
            ``A_log`` loads as saved (a checkpoint that lacks it, loaded with ``strict=False``, gets the mixer's
            own unscaled initialisation).

    As :class:`~probseq.models.ProbSeqConfig`, a key the class does not know or an invalid value (a size that is
    not a positive int, an epsilon or rate that is not a finite number > 0, a choice outside its values) is a
    ``ValueError`` naming it, at construction and again when a model is built.
    """

    model_type = "probseq_zoology"

    def __init__(
        self,
        vocab_size: int = 8192,
        d_model: int = 64,
        n_layers: int = 4,
        mixer: str = "bayesian",
        conv_kernel: int = 3,
        num_heads: int | None = None,
        expand_v: float = 1.0,
        state_size: int = 16,
        use_gate: bool = False,
        retention: str = "learned",
        retention_init: float = 0.0,
        feature_map: str = "elu",
        norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        init: str = "fla",
        layout: str = "alternating",
        decay_init_scale: float = 1.0,
        **kwargs,
    ):
        self.vocab_size, self.d_model, self.n_layers, self.mixer = vocab_size, d_model, n_layers, mixer
        self.conv_kernel, self.num_heads, self.expand_v, self.state_size = conv_kernel, num_heads, expand_v, state_size
        self.use_gate, self.retention, self.retention_init = use_gate, retention, retention_init
        self.feature_map, self.norm_eps, self.initializer_range = feature_map, norm_eps, initializer_range
        self.init, self.tie_word_embeddings, self.layout = init, tie_word_embeddings, layout
        self.decay_init_scale = decay_init_scale
        check_config_keys(type(self).__name__, kwargs, config_keys(type(self)))
        for name in ("dtype", "torch_dtype"):  # transformers would look the name up in torch (an AttributeError)
            check_dtype(name, kwargs.get(name))
        self._check()
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As :meth:`ProbSeqConfig.from_dict`: unknown override keys are an error, the values are checked again."""
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config, unused = super().from_dict(config_dict, return_unused_kwargs=True, **kwargs)
        if not return_unused:
            check_config_keys(cls.__name__, unused, config_keys(cls))
        config._check()
        return (config, unused) if return_unused else config

    def _check(self) -> None:
        """Every field, naming the first bad one; then the mixer is built once on the meta device (bad head
        sizes fail here)."""
        for name in ("vocab_size", "d_model", "n_layers", "conv_kernel", "state_size"):
            positive_int(name, getattr(self, name))
        one_of("layout", self.layout, LAYOUTS)
        if self.layout == "alternating" and self.n_layers < 2:
            raise ValueError(
                f"n_layers must be >= 2 with layout='alternating' (a conv block and a mixer), got {self.n_layers}"
            )
        positive_int("num_heads", self.num_heads, optional=True)
        for name in ("expand_v", "norm_eps", "initializer_range", "decay_init_scale"):
            positive_real(name, getattr(self, name))
        real_in("retention_init", self.retention_init, 0.0, 1.0)
        boolean("use_gate", self.use_gate)
        boolean("tie_word_embeddings", self.tie_word_embeddings)
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}: mixer must be one of {tuple(MIXERS)}")
        one_of("init", self.init, INITS)
        one_of("retention", self.retention, RETENTIONS)
        self.mixer_config()  # a ProbSeqConfig: its own checks, and the mixer built once on the meta device

    def is_conv_block(self, index: int) -> bool:
        """Whether block ``index`` is a conv block (even indices of the alternating layout), else the mixer."""
        return self.layout == "alternating" and index % 2 == 0

    @property
    def conv_blocks(self) -> int:
        """How many of the ``n_layers`` blocks are conv blocks."""
        return sum(self.is_conv_block(i) for i in range(self.n_layers))

    def mixer_config(self) -> ProbSeqConfig:
        """The :class:`ProbSeqConfig` the mixers are built from (Zoology's head settings for MQAR)."""
        d = self.d_model
        heads = self.num_heads or (1 if self.mixer == "attention" else 2)
        if self.mixer != "mamba2" and d % heads:
            raise ValueError(f"d_model={d} must be divisible by num_heads={heads}")
        if self.mixer == "mamba2":
            head_dim = min(64, d)
            if self.num_heads:  # heads = expand · d_model / head_dim
                head_dim = 2 * d // self.num_heads
        else:
            head_dim = d // heads
        return ProbSeqConfig(
            vocab_size=self.vocab_size,
            hidden_size=d,
            num_hidden_layers=self.n_layers,
            mixer=self.mixer,
            num_heads=heads,
            head_dim=head_dim,
            expand_v=self.expand_v,
            use_gate=self.use_gate,
            retention=self.retention,
            retention_init=self.retention_init,
            feature_map=self.feature_map,
            state_size=self.state_size,
            expand=2,
            attn_num_heads=heads,
            norm_eps=self.norm_eps,
            max_position_embeddings=1 << 20,
            bos_token_id=None,
            eos_token_id=None,
        )  # the mixers use no token ids


class ConvBlock(nn.Module):
    """Zoology's ``BaseConv``: ``ShortConv(u) ⊙ Linear(u)`` (depthwise causal conv, no activation)."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.conv = ShortConvolution(d_model, kernel_size, bias=True, activation=None)
        self.projection = nn.Linear(d_model, d_model)

    def forward(self, u: Tensor) -> Tensor:
        return self.conv(u)[0] * self.projection(u)


@dataclass
class ZoologyOutput(ModelOutput):
    """``logits``: ``[B, T, vocab]``, or ``[N, vocab]`` at the ``N`` positions of ``logits_mask``."""

    logits: Tensor | None = None


class ZoologyModel(ProbSeqPreTrainedModel):
    """Embeddings → ``n_layers`` pre-norm residual blocks (conv, mixer, conv, mixer, …; with ``layout="mixers"``
    mixer, mixer, …) → RMSNorm → tied head. A mixer's ``layer_idx`` (its slot in a cache) is its block index.

    Weight initialisation (``config.init``): ``"fla"`` (the default, and every committed ``cpu`` run's) is
    :class:`~probseq.models.ProbSeqPreTrainedModel`'s: fla's normal(0.02) for every linear and convolution
    weight. ``"zoology"`` is Zoology's ``_init_weights``
    (``zoology/model.py``): embeddings and linear weights normal(0.02) — for Mamba-2 the linear weights keep
    PyTorch's default (Kaiming uniform) — biases zero, convolutions left at PyTorch's default (uniform
    ±1/√kernel for the depthwise short convolutions), and the output projections Zoology's mixers call
    ``out_proj`` (attention; Mamba-2) rescaled: normal(0.02 / √(2 n_layers)), for Mamba-2 Kaiming uniform
    / √(Mamba-2 layers). Both keep the mixers' own parameters (Mamba-2/GDN decay rates and step
    sizes, the Bayesian retention start). docs/training.md, "Initialisation", compares the two on MQAR.
    """

    config_class = ZoologyConfig
    base_model_prefix = "zoology"
    _no_split_modules = ["ConvBlock"]
    _tied_weights_keys = {"lm_head.weight": "embeddings.weight"}

    def __init__(self, config: ZoologyConfig, **kwargs):
        super().__init__(config, **kwargs)  # a keyword is refused there (one from_pretrained did not use)
        mixer_config = config.mixer_config()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.norms = nn.ModuleList(RMSNorm(config.d_model, eps=config.norm_eps) for _ in range(config.n_layers))
        self.layers = nn.ModuleList(
            ConvBlock(config.d_model, config.conv_kernel) if config.is_conv_block(i) else build_mixer(mixer_config, i)
            for i in range(config.n_layers)
        )
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        if config.init == "zoology":
            self._rescale_output_projections()
        if config.decay_init_scale != 1.0:
            self._scale_initial_decay(config.decay_init_scale)

    @torch.no_grad()
    def _scale_initial_decay(self, scale: float) -> None:
        """``A ← scale · A`` for every mixer's decay rate (``A_log ← A_log + ln scale``): initial half-lives
        ``ln 2 / (A Δ)`` divided by ``scale``; no random draw."""
        for layer in self.layers:
            if hasattr(layer, "A_log"):
                layer.A_log.add_(math.log(scale))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if self.config.init == "fla":
            return super()._init_weights(module)
        # Zoology's: linear weights normal (Mamba-2's keep PyTorch's Kaiming default), convolutions untouched
        self._init_parameters(
            module, normal=() if self.config.mixer == "mamba2" else (nn.Linear,), zero_bias=(nn.Linear,)
        )

    @torch.no_grad()
    def _rescale_output_projections(self) -> None:
        """Zoology's GPT-2-style 1/√depth scaling of the output projections it names ``out_proj``; after
        ``post_init`` (which may visit a layer before its linear children). Depth is Zoology's ``n_layers``: every
        block for the conv/mixer models, the Mamba-2 blocks alone for Mamba-2 (Zoology's Mamba-2 models have no
        conv blocks; with ``layout="mixers"`` that is every block)."""
        n, std = self.config.n_layers, self.config.initializer_range
        mamba_layers = sum(isinstance(layer, Mamba2) for layer in self.layers)
        for layer in self.layers:
            if isinstance(layer, Mamba2):
                init.kaiming_uniform_(layer.out_proj.weight, a=math.sqrt(5))
                layer.out_proj.weight.div_(math.sqrt(mamba_layers))
            elif isinstance(layer, Attention):
                init.normal_(layer.o_proj.weight, mean=0.0, std=std / math.sqrt(2 * n))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def hidden_states(self, input_ids: Tensor, cache: ProbSeqCache | None = None) -> Tensor:
        """Final hidden states ``[B, T, D]``; with ``cache``, the mixers write their decoding states into it.

        ``input_ids`` must be an integer ``[B, T]`` of ids in ``[0, vocab_size)`` and ``cache`` one this model (or
        one of its layout) filled (``ValueError`` otherwise); an empty input (``T = 0``) gives ``[B, 0, D]``.
        With ``layout="mixers"`` a filled cache continues the sequence (decoding chunk by chunk gives the full
        forward's states); the conv blocks keep no decoding state, so with them only an empty cache is taken
        (continuing one would restart the conv blocks: a ``ValueError``)."""
        check_input_ids(input_ids, self.config.vocab_size)
        if cache is not None:
            if not isinstance(cache, ProbSeqCache):
                raise ValueError(f"cache must be a ProbSeqCache, got {type(cache).__name__}")
            cache.check_layout(self.cache_layout())
            if self.config.conv_blocks and any(slot.get_seq_length() for slot in cache.layers):
                raise ValueError(
                    "cannot continue a filled cache with conv blocks (layout='alternating'): they keep no decoding "
                    "state; start from a new ProbSeqCache(), or use layout='mixers'"
                )
        h = self.embeddings(input_ids)
        if input_ids.shape[1] == 0:  # nothing to mix: an empty result, the cache untouched
            return self.norm(h)
        for index, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            if self.config.is_conv_block(index):
                h = h + layer(norm(h))
            else:
                h = h + layer(norm(h), past_key_values=cache, use_cache=cache is not None)[0]
        return self.norm(h)

    def forward(self, input_ids: Tensor, logits_mask: Tensor | None = None, **kwargs) -> ZoologyOutput:
        """Logits of next-token prediction.

        Args:
            input_ids: ``[B, T]`` token ids.
            logits_mask: ``[B, T]`` bool; when given, logits only at these positions.

        Returns:
            :class:`ZoologyOutput` with ``logits [B, T, V]`` or ``[N, V]``.
        """
        if kwargs:
            raise ValueError(f"ZoologyModel.forward got unexpected arguments {sorted(kwargs)}")
        hidden = self.hidden_states(input_ids)
        if logits_mask is not None:
            if (
                not isinstance(logits_mask, Tensor)
                or logits_mask.shape != input_ids.shape
                or logits_mask.dtype != torch.bool
            ):
                raise ValueError(
                    f"logits_mask must be a bool tensor of shape {list(input_ids.shape)}, got {describe(logits_mask)}"
                )
            hidden = hidden[logits_mask]
        return ZoologyOutput(logits=self.lm_head(hidden))

    @torch.no_grad()
    def state_size(self, sequence_length: int) -> int:
        """Numbers in the decoding state after ``sequence_length`` tokens (Zoology's ``state_size``; bytes in
        float32 are 4×): every mixer's cached state (conv states, memory, the covariance of a Bayesian Layer
        whose retention is not ``reset``; keys and values for attention) plus each conv block's last ``kernel``
        inputs (none with ``layout="mixers"``). Measured by running the mixers with a cache; ``sequence_length``
        must be a positive int."""
        positive_int("sequence_length", sequence_length)
        cache = ProbSeqCache()
        was_training = self.training
        self.eval()
        try:
            self.hidden_states(torch.zeros(1, sequence_length, dtype=torch.long, device=self.device), cache)
        finally:
            self.train(was_training)
        total = 0
        stack = []
        for index, slot in enumerate(cache.layers):
            state = slot.state
            retention = getattr(self.layers[index], "retention", "reset")
            if getattr(state, "memory", None) is not None and retention == "reset":
                # γ = 0 resets the covariance before every write: what the layer caches of it is not state
                state = state._replace(memory=state.memory._replace(cov=None))
            stack.append(state)
        while stack:
            item = stack.pop()
            if isinstance(item, Tensor):
                total += item.numel()
            elif isinstance(item, tuple):
                stack.extend(item)
        return total + self.config.conv_blocks * self.config.d_model * self.config.conv_kernel


AutoConfig.register(ZoologyConfig.model_type, ZoologyConfig, exist_ok=True)
AutoModel.register(ZoologyConfig, ZoologyModel, exist_ok=True)

__all__ = ["ConvBlock", "ZoologyConfig", "ZoologyModel", "ZoologyOutput"]
