"""Typed, validated training configs: frozen dataclasses, built from dicts or ``key=value`` overrides.

A :class:`TrainConfig` is everything one training run depends on — the model (:class:`ModelSpec`), the data
(:class:`~probseq.train.data.MQARData` or :class:`~probseq.train.data.RecallData`, told apart by ``kind``),
the optimisation and the run settings. It is checked on construction: every field against its type
annotation (``Literal`` choices, ``X | None``, ``tuple[X, ...]``, nested dataclasses), then the ranges.
:func:`from_dict` and :func:`with_overrides` build one from plain data; an unknown key or a wrong type is
a ``ValueError`` that names the key by its dotted path (``model.d_model``, ``data.train[0].seq_len``).

This module imports no torch (the CLI stays fast).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from probseq.train.data import MQARData, RecallData
from probseq.train.schema import (
    check_fields,
    check_optimizer_run,
    check_seeds,
    check_warmup,
    from_dict,
    non_negative,
    positive,
    with_overrides,
)

MixerName = Literal["bayesian", "gated_deltanet", "deltanet", "linear_attention", "mamba2", "attention"]
MIXER_NAMES: tuple[str, ...] = typing.get_args(MixerName)


@dataclass(frozen=True)
class ModelSpec:
    """The MQAR model (:class:`probseq.models.mqar_model.ZoologyModel`); the vocabulary comes from the data.

    Attributes:
        mixer: the sequence mixer (a name of :data:`probseq.layers.MIXERS`).
        d_model: width of every block.
        n_layers: blocks, alternating conv block and mixer (4 = ``[conv, mixer] × 2``), or with
            ``layout="mixers"`` that many mixers.
        num_heads: mixer heads (``None``: Zoology's setting per mixer).
        expand_v: value-dim ratio of the recurrent mixers.
        state_size: Mamba-2's ``N``.
        conv_kernel: kernel of the conv blocks.
        use_gate: output gate of the delta-rule mixers.
        retention: the Bayesian Layer's certainty retention.
        retention_init: the starting scale ``ρ`` of the ``learned`` retention (0: Gated DeltaNet's reset,
            1: up to the stationary retention; docs/layers.md).
        init: weight initialisation (:class:`probseq.models.mqar_model.ZoologyModel`): ``"zoology"`` (Zoology's)
            or ``"fla"``. The default stays ``"fla"``, what every run cached before this field had.
        layout: the blocks (:class:`probseq.models.mqar_model.ZoologyConfig`): ``"alternating"`` (conv block,
            mixer, …; the default, what every run cached before this field had) or ``"mixers"`` (``n_layers``
            mixers, no conv block: Zoology's Mamba-2 models).
        decay_init_scale: the mixers' initial decay rates multiplied by this
            (:class:`probseq.models.mqar_model.ZoologyConfig`; 1, the default: their own initialisation).
    """

    mixer: MixerName = "bayesian"
    d_model: int = 64
    n_layers: int = 4
    num_heads: int | None = None
    expand_v: float = 1.0
    state_size: int = 16
    conv_kernel: int = 3
    use_gate: bool = False
    retention: Literal["reset", "stationary", "learned"] = "learned"
    retention_init: float = 0.0
    init: Literal["fla", "zoology"] = "fla"
    layout: Literal["alternating", "mixers"] = "alternating"
    decay_init_scale: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        positive(self, "d_model", "n_layers", "state_size", "conv_kernel", "expand_v", "decay_init_scale")
        if not 0 <= self.retention_init <= 1:
            raise ValueError(f"retention_init must be in [0, 1], got {self.retention_init!r}")
        if self.num_heads is not None:
            positive(self, "num_heads")
        if self.layout == "alternating" and self.n_layers < 2:
            raise ValueError(
                f"n_layers must be >= 2 with layout='alternating' (a conv block and a mixer), got {self.n_layers}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """One training run (``transformers.Trainer`` underneath; see :func:`probseq.train.train`).

    Attributes:
        model: the model.
        data: the task and its train / valid / test splits.
        learning_rate, weight_decay, max_grad_norm, adam_beta1, adam_beta2: AdamW (torch's).
        lr_scheduler: schedule after ``warmup`` (a fraction of ``max_steps`` when < 1, else steps).
        max_steps: optimizer steps.
        batch_size: examples per device per micro-batch; the global batch is
            ``batch_size · gradient_accumulation_steps · world_size``.
        gradient_accumulation_steps: micro-batches per optimizer step.
        eval_batch_size: examples per device per evaluation batch.
        seed: model initialisation and data order (``transformers.set_seed``).
        data_seed: data generation (``None``: ``seed``); train/valid seeds and test seeds are disjoint
            (:func:`probseq.tasks.split_seeds`).
        precision: ``"bf16"`` / ``"fp16"`` autocast (accelerate), ``"fp32"`` none.
        output_dir: checkpoints (``checkpoint-<step>/``, safetensors) and the run's config; ``""`` for a
            temporary folder that is deleted afterwards (then nothing can be resumed; the sweeps of
            :mod:`probseq.train.sweep` set it per run).
        save_steps: checkpoint every that many steps (0: none).
        save_total_limit: checkpoints kept (oldest deleted first).
        resume: continue from the last checkpoint in ``output_dir`` if there is one. ``False`` refuses a folder
            that holds checkpoints or final weights (they would be mixed with the new run's: checkpoint rotation
            keeps the highest step, so a later resume would continue the old run); delete them to start over.
        logging_steps: log the training loss every that many steps.
        progress: tqdm progress bars (on a terminal only: never ``\r`` frames in a log file).
        num_threads: ``torch.set_num_threads`` for the run (``None``: leave it).
        compile: ``torch.compile`` the model (the Trainer's ``torch_compile``; inductor). The filters and every
            layer trace as one graph (``tests/ops/test_compile.py``); results agree with eager to float rounding.
        fsdp, fsdp_wrap: ``TrainingArguments.fsdp`` (e.g. ``"full_shard auto_wrap"``) and the block classes
            it wraps (``fsdp_config["transformer_layer_cls_to_wrap"]``); for models that outgrow a device.
        loss_weighting: how the cross-entropy of a batch averages its supervised tokens
            (:func:`~probseq.train.metrics.pre_shifted_cross_entropy`): ``"token"`` (the default, what every run
            cached before this field had) weighs every supervised token of the (accumulated, all-device) batch
            equally, so an example with 64 queries weighs 16× one with 4; ``"example"`` takes each example's mean
            over its supervised tokens, then the mean over the batch's examples (Zoology's: every example weighs
            the same).
        batching: how train batches are drawn from the train segments: ``"mixed"`` (the default, what every run
            cached before this field had: one shuffled set of every segment's examples, a batch padded to its
            longest example) or ``"by_segment"`` (Zoology's: every batch from one segment, no padding; the order
            of the batches shuffled each epoch; :class:`~probseq.train.data.SegmentBatches`). Within a batch of
            one MQAR segment every example has the same number of queries, so the two loss weightings agree.
        retention_lr_scale: the learned retention's own parameters (``c_weight``, ``c_bias``, ``c_scale``) train at
            ``learning_rate × retention_lr_scale`` (:mod:`probseq.train.retention`); 1 (the default, what every run
            cached before this field had) is the run's learning rate.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    data: MQARData | RecallData = field(default_factory=MQARData)
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup: float = 0.1
    max_steps: int = 1000
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 128
    seed: int = 0
    data_seed: int | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    output_dir: str = ""
    save_steps: int = 0
    save_total_limit: int | None = 1
    resume: bool = True
    logging_steps: int = 50
    progress: bool = True
    num_threads: int | None = None
    compile: bool = False
    fsdp: str = ""
    fsdp_wrap: tuple[str, ...] = ()
    loss_weighting: Literal["token", "example"] = "token"
    batching: Literal["mixed", "by_segment"] = "mixed"
    retention_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        positive(
            self,
            "learning_rate",
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "eval_batch_size",
            "logging_steps",
            "adam_beta1",
            "adam_beta2",
            "retention_lr_scale",
        )
        non_negative(self, "weight_decay", "max_grad_norm", "warmup", "save_steps", "seed")
        if self.data_seed is not None and self.data_seed < 0:
            raise ValueError(f"data_seed must be >= 0 or None, got {self.data_seed}")
        check_seeds(self, "seed", "data_seed")
        check_warmup(self.warmup, self.max_steps)
        check_optimizer_run(self)
        examples = [split.num_examples for split in self.data.train]
        if self.batching == "mixed" and sum(examples) < self.batch_size:
            raise ValueError(
                f"the train split has {sum(examples)} examples, fewer than one batch (batch_size={self.batch_size})"
            )
        if self.batching == "by_segment" and max(examples) < self.batch_size:
            raise ValueError(
                f"batching='by_segment' needs a train segment of at least one batch (batch_size={self.batch_size}); "
                f"the segments have {examples} examples"
            )
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1 or None, got {self.save_total_limit}")

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (not where it is written, how it is shown or checkpointed).
        A field added after runs were cached is left out while it holds its default (``ADDED_FIELDS``), so
        those runs keep their keys."""
        identity = {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}
        for (section, name), default in ADDED_FIELDS.items():
            fields = identity if section is None else identity[section]
            if name in fields and fields[name] == default:
                del fields[name]
        return identity

    def fingerprint(self) -> str:
        """A short stable hash of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# Fields added after runs were cached, with the default that reproduces those runs: (section, field) → default
# (section None: a field of TrainConfig itself).
ADDED_FIELDS = {
    ("model", "retention_init"): 0.0,
    ("model", "init"): "fla",
    ("model", "layout"): "alternating",
    ("model", "decay_init_scale"): 1.0,
    (None, "loss_weighting"): "token",
    (None, "compile"): False,
    (None, "batching"): "mixed",
    (None, "retention_lr_scale"): 1.0,
}

# Settings that change neither the trained parameters nor the metrics.
RUN_ONLY_FIELDS = frozenset(
    {
        "output_dir",
        "save_steps",
        "save_total_limit",
        "resume",
        "logging_steps",
        "progress",
        "num_threads",
        "eval_batch_size",
    }
)


__all__ = ["MIXER_NAMES", "RUN_ONLY_FIELDS", "MixerName", "ModelSpec", "TrainConfig", "from_dict", "with_overrides"]
