"""``ProbSeqModel`` and ``ProbSeqForCausalLM``: a stack of pre-norm blocks with a mixer per layer.

Transformers integration (5.x): ``save_pretrained`` / ``from_pretrained`` (safetensors),
``AutoModelForCausalLM`` (registered in :mod:`probseq.models`), ``generate`` (greedy, sampling, beam
search; left-padded batches) through :class:`~probseq.models.ProbSeqCache`.

Forward keywords beyond the usual: ``cu_seqlens`` (packed sequences, batch 1) and ``output_variance=True``
(the Bayesian mixers then store their per-head predictive variance ``[B, T, H]`` in
``layer.attn.last_variance``; :meth:`ProbSeqModel.variances` collects them).

Checked at the boundary (a ``ValueError`` naming the argument, :mod:`probseq.models.checks`): ``input_ids`` an
integer ``[B, T]`` of ids in ``[0, vocab_size)`` (the first bad one is named with its position), ``labels`` of the
same shape with ids or ``-100``, ``inputs_embeds`` ``[B, T, hidden_size]`` of the model's dtype, a 2-D
``attention_mask`` ``[B, T]`` or ``[B, S + T]`` with ``S`` cached tokens, ``position_ids`` ``[B, T]``,
``logits_to_keep`` (tensor positions in ``[-T, T)``), a cache filled by a model of another layout, and any other
keyword (a misspelt ``attention_maks=`` is refused with the closest name, not dropped). An empty input
(``T = 0``) gives an empty result (logits ``[B, 0, V]``) and leaves the cache as it was. ``generate`` refuses a
prompt that is not ``[B, T]`` (or ``inputs_embeds`` ``[B, T, D]``), an empty batch or prompt, an
``attention_mask`` of another shape than the prompt's, and a mask row that is all padding.

``from_pretrained`` is strict about the checkpoint: a tensor the model needs that the checkpoint lacks, or one it
holds that the model does not have, is a ``ValueError`` naming them (``strict=False`` loads anyway: missing
tensors get a new model's initialisation, unexpected ones are dropped); so is a tensor whose saved shape differs
from the model's (``ignore_mismatched_sizes=True`` initialises it anew), and a keyword neither transformers nor
the config knows; a damaged or truncated safetensors file is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from probseq.layers import MIXERS, BayesianLayer, GatedRMSNorm, Mamba2, RMSNorm
from probseq.layers.utils import inverse_softplus_step, log_uniform_decay_rate, own_stream
from probseq.models.blocks import ProbSeqBlock
from probseq.models.cache import ProbSeqCache
from probseq.models.checks import (
    IGNORE_INDEX,
    check_attention_mask,
    check_config_keys,
    check_generate_inputs,
    check_input_ids,
    check_inputs_embeds,
    check_keywords,
    check_labels,
    check_logits_to_keep,
    check_position_ids,
)
from probseq.models.configuration import ProbSeqConfig, config_keys
from probseq.ops.cross_entropy import linear_cross_entropy


class ProbSeqPreTrainedModel(PreTrainedModel):
    """Weight initialisation (fla's: normal(``initializer_range``) for linear, conv and embedding weights,
    Mamba-2's gate initialisation for ``A_log`` / ``dt_bias``) and the transformers plumbing."""

    config_class = ProbSeqConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ProbSeqBlock"]
    _is_stateful = True
    _input_embed_layer = "embeddings"

    def __init__(self, config, *inputs, **kwargs):
        check = getattr(config, "_check", None)
        if callable(check):  # values set after the config was built (config.x = …, from_pretrained overrides)
            check()
        _refuse_model_kwargs(config, kwargs)
        super().__init__(config, *inputs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, strict: bool = True, **kwargs
    ):
        """transformers' ``from_pretrained``, strict about the checkpoint.

        Args:
            strict: ``True`` (the default): a tensor the model needs that the checkpoint lacks (it would be
                initialised at random), or one the checkpoint holds that the model does not have, is a
                ``ValueError`` naming them — usually a ``config.json`` that does not describe these weights.
                ``False``: load anyway; missing tensors get a new model's initialisation, unexpected ones are
                dropped, and transformers' load report lists them. Tensors tied to others (a head tied to the
                embeddings) are never missing.
            ignore_mismatched_sizes: ``False`` (the default): a tensor whose shape in the checkpoint differs from
                the model's is a ``ValueError`` naming the directory and every such tensor with both shapes;
                ``True``: transformers' (those tensors get a new model's initialisation).
            output_loading_info, and every other keyword: transformers'. A keyword that is neither
            transformers' nor a key of the config (a misspelt ``retension=``) is a ``ValueError``, as in
            ``ProbSeqConfig.from_pretrained``.

        Raises:
            ValueError: missing or unexpected tensors (with ``strict``), tensors of other shapes (a config.json
                whose sizes do not describe the weights), an unknown keyword, or a damaged or truncated
                safetensors file (named; the ``SafetensorError`` is the ``__cause__``).
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        try:  # mismatched shapes are reported below (transformers raises a RuntimeError pointing at its log)
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        except SafetensorError as error:
            where = _damaged_file(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
            raise ValueError(
                f"{where}: damaged or truncated safetensors file ({error}); save or download the checkpoint again"
            ) from error
        if not ignore_mismatched_sizes:
            _check_shapes(pretrained_model_name_or_path, info)
        if strict:
            _check_loaded_keys(cls.__name__, pretrained_model_name_or_path, info)
        return (model, info) if output_loading_info else model

    def cache_layout(self) -> tuple:
        """What a :class:`ProbSeqCache` filled by this model holds: per mixer, ``(layer_idx, class name,
        ((parameter name, shape), …))`` (see :meth:`ProbSeqCache.check_layout`). Worked out once."""
        layout = self.__dict__.get("_cache_layout")
        if layout is None:
            mixers = [m for m in self.modules() if isinstance(m, tuple(MIXERS.values()))]
            layout = tuple(
                (m.layer_idx, type(m).__name__, tuple((name, tuple(p.shape)) for name, p in m.named_parameters()))
                for m in mixers
            )
            self.__dict__["_cache_layout"] = layout
        return layout

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        self._init_parameters(module, normal=(nn.Linear, nn.Conv1d), zero_bias=(nn.Linear, nn.Conv1d))

    def _init_parameters(self, module: nn.Module, normal: tuple[type, ...], zero_bias: tuple[type, ...]) -> None:
        """normal(``initializer_range``) weights for embeddings and the ``normal`` module types, zero biases for the
        ``zero_bias`` types (other weights keep PyTorch's default), then the norms and mixer parameters."""
        if isinstance(module, (nn.Embedding, *normal)):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, zero_bias) and module.bias is not None:
            init.zeros_(module.bias)
        self._init_mixer_parameters(module)

    def _init_mixer_parameters(self, module: nn.Module) -> None:
        """Norm weights and the mixers' own parameters (decay rates, step sizes, retention)."""
        std = self.config.initializer_range
        if isinstance(module, (RMSNorm, GatedRMSNorm)) and module.weight is not None:
            init.ones_(module.weight)
        if isinstance(module, BayesianLayer):
            init.copy_(module.A_log, log_uniform_decay_rate(module.num_v_heads, 0.0, 16.0))
            init.copy_(module.dt_bias, inverse_softplus_step(module.num_v_heads))
            if module.retention == "learned":
                # from the parameter's own stream: the global one, which draws every parameter Gated DeltaNet has,
                # goes on as it would without it (paired initialisation, docs/training.md)
                weight = torch.empty(module.c_weight.shape).normal_(
                    0.0, std, generator=own_stream("c_weight", module.layer_idx)
                )
                init.copy_(module.c_weight, weight)
                init.zeros_(module.c_bias)
                init.constant_(module.c_scale, module.retention_init)
        elif isinstance(module, Mamba2):
            init.copy_(module.A_log, log_uniform_decay_rate(module.num_heads, *module.A_init_range))
            init.copy_(module.dt_bias, inverse_softplus_step(module.num_heads, module.dt_min, module.dt_max))
            init.ones_(module.D)

    # A head tied to the embeddings is not written to checkpoints. Listing it among the keys not saved lets the
    # Trainer re-tie it on resume instead of warning "There were missing keys …: ['lm_head.weight']". The list
    # is worked out when it is read (at save or load), from the ties that hold then: a head that is not tied
    # (tie_word_embeddings=False, or a checkpoint whose head differs) is always saved.
    @property
    def _keys_to_ignore_on_save(self) -> set[str]:
        ignored = set(self.__dict__.get("_ignored_on_save") or ())
        tied = getattr(self, "all_tied_weights_keys", None) or {}
        return ignored | {key for key, source in tied.items() if self._shares_parameter(key, source)}

    @_keys_to_ignore_on_save.setter
    def _keys_to_ignore_on_save(self, value) -> None:
        self.__dict__["_ignored_on_save"] = set(value or ())

    def _shares_parameter(self, name: str, other: str) -> bool:
        try:
            return self.get_parameter(name) is self.get_parameter(other)
        except AttributeError:
            return False

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own ProbSeqCache (recurrent states, not keys and values)


def _damaged_file(path: str | os.PathLike, subfolder: str) -> str:
    """The safetensors file of a local checkpoint that cannot be opened, or the checkpoint's path."""
    folder = Path(path) / subfolder
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(file)
    return str(path)


def _refuse_model_kwargs(config, kwargs: dict) -> None:
    """The models take their configuration only: a keyword left over by ``from_pretrained`` (one neither
    transformers nor the config knows) is refused as the config refuses it, with the closest key."""
    if not kwargs:
        return
    check_config_keys(type(config).__name__, kwargs, config_keys(type(config)) - set(kwargs))


def _check_shapes(path: str | os.PathLike, info: dict) -> None:
    """Refuse a load whose checkpoint tensors have other shapes than the model's (the config's sizes)."""
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        listed = ", ".join(f"{key} (checkpoint {list(saved)}, model {list(model)})" for key, saved, model in mismatched)
        raise ValueError(
            f"{path}: the checkpoint's tensors do not have the shapes its config.json gives: {listed}. "
            "Its config.json does not describe these weights (vocab_size, hidden_size, heads?); pass "
            "ignore_mismatched_sizes=True to from_pretrained to initialise those tensors anew instead"
        )


def _check_loaded_keys(model_name: str, path: str | os.PathLike, info: dict) -> None:
    """Refuse a load that left tensors missing (randomly initialised) or unexpected (dropped)."""
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    problems = []
    if missing:
        problems.append(f"lacks tensor(s) {missing} that {model_name} needs (they would be initialised at random)")
    if unexpected:
        problems.append(f"holds tensor(s) {unexpected} that {model_name} does not have")
    if problems:
        raise ValueError(
            f"{path}: the checkpoint {'; and it '.join(problems)}. Its config.json does not describe "
            "these weights (another retention, mixer or size?); pass strict=False to from_pretrained to "
            "load it anyway"
        )


def _clear_variance(mixer: nn.Module, batch: int, output_variance: bool, device: torch.device) -> None:
    """A skipped mixer (empty input) must not keep the variance of an earlier call."""
    if hasattr(mixer, "last_variance"):
        mixer.last_variance = torch.zeros(batch, 0, mixer.num_v_heads, device=device) if output_variance else None


# The forward keywords beyond the named arguments: the mixers' (packed sequences, the Bayesian variance) and what
# transformers may pass (generate's cache_position, output_attentions; the Trainer's num_items_in_batch). Any
# other keyword (a misspelt attention_maks=) is an error rather than silently dropped.
FORWARD_KEYWORDS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cache",
    "inputs_embeds",
    "use_cache",
    "output_hidden_states",
    "return_dict",
    "past_key_values",
    "labels",
    "logits_to_keep",
    "cu_seqlens",
    "output_variance",
    "output_attentions",
    "cache_position",
    "num_items_in_batch",
)


class ProbSeqModel(ProbSeqPreTrainedModel):
    """Embeddings → blocks → final RMSNorm; returns ``BaseModelOutputWithPast(last_hidden_state, cache,
    hidden_states)``."""

    # The body of a causal LM checkpoint loads into the base model: its head is not an unexpected tensor.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.weight$"]

    def __init__(self, config: ProbSeqConfig, **kwargs):
        super().__init__(config, **kwargs)  # a keyword is refused there (one from_pretrained did not use)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(ProbSeqBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def variances(self) -> list[Tensor | None]:
        """Per layer, the predictive variance ``[B, T, H]`` of the last forward run with
        ``output_variance=True`` (``None`` for mixers without a covariance)."""
        return [getattr(block.attn, "last_variance", None) for block in self.layers]

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: ProbSeqCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: ProbSeqCache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        check_keywords(f"{type(self).__name__}.forward", kwargs, FORWARD_KEYWORDS)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the cache once (cache= or its old name past_key_values=)")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, ProbSeqCache):
            raise ValueError(f"cache must be a ProbSeqCache, got {type(cache).__name__}")
        batch, length = self._check_inputs(input_ids, inputs_embeds, attention_mask, position_ids, cache)
        if use_cache is None:  # packed sequences (training layout) are not cached by default
            use_cache = self.config.use_cache and not self.training and kwargs.get("cu_seqlens") is None
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if use_cache and cache is None:
            cache = ProbSeqCache()
        if cache is not None:
            cache.check_layout(self.cache_layout())
        if kwargs.pop("output_attentions", False):
            raise ValueError("ProbSeq models do not return attention weights (output_attentions)")
        if position_ids is not None:
            kwargs["position_ids"] = position_ids

        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for block in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if length == 0:  # an empty input passes every block unchanged: an empty result, the cache untouched
                _clear_variance(block.attn, batch, bool(kwargs.get("output_variance")), hidden_states.device)
                continue
            hidden_states = block(
                hidden_states, attention_mask=attention_mask, past_key_values=cache, use_cache=use_cache, **kwargs
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        cache = cache if use_cache else None
        if not return_dict:
            return tuple(x for x in (hidden_states, cache, all_hidden_states) if x is not None)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states)

    def _check_inputs(
        self,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        cache: ProbSeqCache | None,
    ) -> tuple[int, int]:
        """The boundary checks of :meth:`forward` (module docstring); returns ``(B, T)``."""
        if input_ids is not None:
            check_input_ids(input_ids, self.config.vocab_size)
            batch, length = input_ids.shape
        else:
            check_inputs_embeds(inputs_embeds, self.config.hidden_size, self.embeddings.weight.dtype)
            batch, length = inputs_embeds.shape[:2]
        check_attention_mask(attention_mask, batch, length, cache.get_seq_length() if cache is not None else 0)
        check_position_ids(position_ids, batch, length)
        return batch, length


class ProbSeqForCausalLM(ProbSeqPreTrainedModel, GenerationMixin):
    """Language model head on :class:`ProbSeqModel` (tied to the embeddings with ``tie_word_embeddings``)."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: ProbSeqConfig, **kwargs):
        super().__init__(config, **kwargs)  # a keyword is refused there (one from_pretrained did not use)
        self.model = ProbSeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_decoder(self) -> ProbSeqModel:
        return self.model

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: ProbSeqCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: ProbSeqCache | None = None,
        skip_logits: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits ``[B, T, vocab]`` (the last ``logits_to_keep`` positions when it is positive), the loss
        of next-token prediction when ``labels`` are given, and the cache.

        ``skip_logits=True`` (with ``labels``) computes the loss without materialising the logits
        (:func:`probseq.ops.cross_entropy.linear_cross_entropy`: the same loss and gradients to float rounding, at a
        fraction of the memory traffic) and returns ``logits=None`` — for training loops that only need the loss."""
        check_keywords(f"{type(self).__name__}.forward", kwargs, FORWARD_KEYWORDS)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        source = input_ids if input_ids is not None else inputs_embeds
        check_logits_to_keep(
            logits_to_keep, source.shape[1] if isinstance(source, Tensor) and source.dim() >= 2 else None
        )
        if skip_logits and labels is None:
            raise ValueError("skip_logits=True computes only the loss: pass labels as well")
        if labels is not None and isinstance(source, Tensor) and source.dim() >= 2:
            check_labels(labels, tuple(source.shape[:2]), self.config.vocab_size, logits_to_keep)
            labels = labels.long()  # any integer dtype: the loss takes int64 targets
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = loss = None
        if skip_logits:
            # transformers' causal-LM loss (position t predicts labels[t + 1]; a mean over the supervised positions,
            # or a sum over num_items_in_batch), without the [B, T, V] logits
            total = linear_cross_entropy(hidden_states[:, :-1], self.lm_head.weight, labels[:, 1:], validate=False)
            count = (labels[:, 1:] != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
            count = torch.as_tensor(count, device=total.device)
            # nothing supervised: a NaN loss, as transformers' mean over no token, but zero gradients (not 0 · ∞)
            loss = torch.where(count > 0, total / count.clamp_min(1), torch.nan)
        else:
            logits = self.lm_head(hidden_states)
        if labels is not None and not skip_logits:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, num_items_in_batch=num_items_in_batch
            )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if not return_dict:
            output = tuple(x for x in (logits, outputs.cache, outputs.hidden_states) if x is not None)
            return (loss, *output) if loss is not None else output
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )

    def generate(self, inputs: Tensor | None = None, *args, **kwargs):
        """transformers' ``generate``. The prompt must be ``[B, T]`` token ids (``inputs_embeds`` ``[B, T, D]``) with
        ``B >= 1``; a prompt of no tokens (``[B, 0]``) is refused: there is no last token whose logits would give
        the first new one (``inputs=None`` starts from ``bos_token_id``). An ``attention_mask`` must have the
        prompt's shape, and a row of it that is all padding is refused, naming the row."""
        prompt, name = inputs, "inputs"
        for key in ("input_ids", "inputs_embeds"):
            if prompt is None and kwargs.get(key) is not None:
                prompt, name = kwargs[key], key
        if prompt is not None:
            check_generate_inputs(prompt, name, kwargs.get("attention_mask"))
        return super().generate(inputs, *args, **kwargs)


__all__ = ["ProbSeqForCausalLM", "ProbSeqModel", "ProbSeqPreTrainedModel"]
