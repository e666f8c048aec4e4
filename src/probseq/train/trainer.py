"""``train(config) -> metrics``: a :class:`TrainConfig` run on ``transformers.Trainer``.

The Trainer (with accelerate) does the training loop: AdamW, the learning-rate schedule with warmup,
gradient accumulation, clipping, bf16/fp16 autocast, logging and tqdm progress bars, checkpoints
(``output_dir/checkpoint-<step>/``: ``model.safetensors``, ``config.json``, optimizer, scheduler, RNG states,
``trainer_state.json``), ``resume_from_checkpoint`` (restores all of them and skips the batches already
seen, so a resumed run ends where an uninterrupted one does), and data parallelism under ``torchrun``.
probseq adds:

- :class:`LossOnlyTrainer`: a causal LM's training steps ask for the loss only (``skip_logits=True``: no
  ``[B, T, V]`` logits, :func:`probseq.ops.cross_entropy.linear_cross_entropy`), pretraining's Trainer;
- :class:`AnswerWeightedTrainer`: a causal LM's loss weighted per target token (pretraining's answer weight);
- :class:`PreShiftedTrainer`: the loss on pre-shifted labels (:func:`~probseq.train.metrics.pre_shifted_cross_entropy`,
  logits only at supervised positions when the model can) and argmax predictions for the metrics;
- :func:`~probseq.train.metrics.recall_metrics`: accuracy at supervised positions, per-example accuracy;
- seeding (``transformers.set_seed(seed)`` before the model is built; data generated from ``data_seed``);
- a guard against resuming a different run: ``output_dir`` keeps the config it was started with
  (:mod:`probseq.train.run_folder`);
- the final weights kept for reuse (``output_dir/final/``, :func:`save_final`; :mod:`probseq.train.saved`);
- no weight decay on biases, norm weights and parameters marked ``_no_weight_decay``
  (:meth:`PreShiftedTrainer.get_decay_parameter_names`);
- :class:`DivergenceGuard`: a non-finite gradient norm or logged loss stops the run at that step, which
  :func:`train` reports as :class:`TrainingDiverged` (the step, the learning rate, the last finite loss); the
  loss is logged as it is (``logging_nan_inf_filter=False``: the Trainer's default would log a NaN step as the
  mean of the finite ones so far, ``0.0`` right after a log, and drop NaN evaluation batches from the loss).

Distributed runs (one process per device; the global batch is ``batch_size · grad_accum · world_size``)::

    torchrun --nproc_per_node 2 my_script.py     # CPU: gloo; GPU: nccl (TrainConfig → ddp_backend)

For a model that outgrows one device, shard it with FSDP (GPU, torchrun)::

    TrainConfig(..., fsdp="full_shard auto_wrap", fsdp_wrap=("ConvBlock", "BayesianLayer"))
    # → TrainingArguments(fsdp="full_shard auto_wrap",
    #                     fsdp_config={"transformer_layer_cls_to_wrap": ["ConvBlock", "BayesianLayer"]})
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from probseq.console import progress_enabled
from probseq.cpu import flush_subnormals
from probseq.files import atomic_write_json, finite_or_none
from probseq.layers.norm import GatedRMSNorm, RMSNorm
from probseq.models.mqar_model import ZoologyConfig, ZoologyModel
from probseq.tasks import IGNORE_INDEX
from probseq.train.config import TrainConfig
from probseq.train.data import SegmentBatches, TokenDataset, generate, pad_collate
from probseq.train.metrics import pre_shifted_cross_entropy, recall_metrics, scatter_predictions
from probseq.train.retention import RetentionTrace, retention_trace, split_retention_groups
from probseq.train.run_folder import check_saved_config, claimed_run_folder

# The config a run's output_dir was started with (its identity fields), checked before resuming.
CONFIG_FILE = "probseq_train_config.json"
# A finished run's weights: output_dir/final/ holds model.safetensors and config.json (save_pretrained), the whole
# TrainConfig (FINAL_CONFIG) and the run's metrics (FINAL_METRICS); probseq.train.saved reads them back.
FINAL_DIR, FINAL_CONFIG, FINAL_METRICS = "final", "train_config.json", "metrics.json"


class LossOnlyTrainer(Trainer):
    """``Trainer`` whose training steps call the model with ``skip_logits=True``: the same loss and gradients
    (to float rounding) without materialising the logits, whose passes over ``B·T·V`` floats cost more than the
    LM head's products on a CPU (docs/training.md, "The language-model loss"). Evaluation and prediction steps
    (``return_outputs=True``) get the logits as before. For :class:`~probseq.models.ProbSeqForCausalLM`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not return_outputs and model.training and inputs.get("labels") is not None:
            inputs = {**inputs, "skip_logits": True}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class AnswerWeightedTrainer(Trainer):
    """``Trainer`` for a causal LM whose training batches carry ``loss_weights`` ``[B, T]``: the loss is the
    weighted mean of the next-token cross-entropies over the micro-batch,

        L = Σ_{b,t≥1} w[b,t] · CE(logits[b,t−1], labels[b,t]) / Σ_{b,t≥1} w[b,t],

    ``w[b,t]`` weighing the prediction *of* token ``t`` (the pretraining answer weight, docs/distillation.md). The
    Trainer divides each micro-batch's loss by the accumulation steps (``loss_is_scaled_for_ga=False``), so with
    every weight 1 it is the plain causal-LM loss of packed blocks (every block has the same number of targets).
    Evaluation batches (no ``loss_weights``) get the model's own loss; a training batch without them is an error.
    The logged training loss is the weighted one (the validation loss is not)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.get("loss_weights")
        if weights is None:
            if model.training:  # a weighted run must never train on the plain loss unnoticed
                raise ValueError("a training batch without loss_weights (were the dataset's columns removed?)")
            return super().compute_loss(model, inputs, return_outputs, None)  # evaluation: the model's mean
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k not in ("loss_weights", "labels")})
        logits, targets = outputs.logits[:, :-1].float(), labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view_as(targets)
        w = weights[:, 1:].to(losses.dtype) * (targets != IGNORE_INDEX)
        loss = (w * losses).sum() / w.sum().clamp_min(torch.finfo(losses.dtype).tiny)
        return (loss, outputs) if return_outputs else loss


class PreShiftedTrainer(Trainer):
    """``Trainer`` whose loss is the cross-entropy on pre-shifted labels (no shift), normalised by the
    supervised tokens of the whole accumulated, all-device batch (``num_items_in_batch``) — or, with
    ``loss_weighting="example"``, each example's mean over its supervised tokens normalised by the examples of that
    batch (``num_items_in_batch`` then counts the examples with a supervised token).

    Evaluation returns argmax predictions ``[B, T]`` (``IGNORE_INDEX`` where unscored) instead of logits,
    so ``compute_metrics`` sees ``EvalPrediction(predictions, label_ids)`` of token ids.
    """

    def __init__(self, *args, loss_weighting: str = "token", retention_lr_scale: float = 1.0, **kwargs):
        if loss_weighting not in ("token", "example"):
            raise ValueError(f"loss_weighting must be 'token' or 'example', got {loss_weighting!r}")
        self.loss_weighting = loss_weighting
        self.retention_lr_scale = retention_lr_scale
        super().__init__(*args, **kwargs)
        # Count the supervised tokens of each accumulated batch (the loss normaliser) — every label, as the
        # labels are already shifted — and treat the loss as normalised by that count.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = False
        forward = self.accelerator.unwrap_model(self.model).forward
        self.gathers_logits = "logits_mask" in inspect.signature(forward).parameters

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The loss normaliser of an accumulated batch (gathered over devices by the Trainer): its supervised
        tokens, or with ``loss_weighting="example"`` its examples with a supervised token (each such row counted as
        one supervised label)."""
        if self.loss_weighting == "example":
            batch_samples = [
                {"labels": torch.where((batch["labels"] != IGNORE_INDEX).any(-1), 0, IGNORE_INDEX)}
                if "labels" in batch
                else batch
                for batch in batch_samples
            ]
        return super()._get_num_items_in_batch(batch_samples, device)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """transformers' rule (no decay for biases and parameters named like a norm), less
        :func:`no_decay_parameter_names`: the parameters marked ``_no_weight_decay`` and every norm weight."""
        exempt = no_decay_parameter_names(model)
        return [name for name in super().get_decay_parameter_names(model) if name not in exempt]

    def create_optimizer(self, model=None):
        """transformers' AdamW groups, the learned retention's parameters in groups of their own at
        ``learning_rate × retention_lr_scale`` (:func:`probseq.train.retention.split_retention_groups`)."""
        optimizer = super().create_optimizer(model)
        split_retention_groups(optimizer, self.model if model is None else model, self.retention_lr_scale)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        if self.gathers_logits:  # the LM head only where a label is
            logits = model(input_ids=inputs["input_ids"], logits_mask=labels != IGNORE_INDEX).logits
        else:
            logits = model(input_ids=inputs["input_ids"]).logits
        loss = pre_shifted_cross_entropy(logits, labels, num_items_in_batch, self.loss_weighting)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every device's tokens and DDP averages the gradients
            loss = loss * self.accelerator.num_processes
        if not return_outputs:
            return loss
        return loss, {"predictions": scatter_predictions(logits.detach(), labels)}


# Normalisation modules: their weights (gains, 1 at the start) are not decayed towards 0.
NORM_TYPES = (RMSNorm, GatedRMSNorm, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)


def no_decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """The parameters AdamW must not decay, beyond transformers' rule (biases, parameters named like a norm):
    those marked ``_no_weight_decay`` by their layer (``A_log``, ``dt_bias``, Mamba-2's ``D``, the learned
    retention's ``c_scale`` — decay would pull ``ρ`` towards 0, i.e. towards Gated DeltaNet) and every weight of a
    normalisation module (:data:`NORM_TYPES`; ``norms.0.weight`` escapes transformers' name patterns). Names as
    ``model.named_parameters()`` gives them (a tied parameter once)."""
    exempt = set()
    for prefix, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if getattr(parameter, "_no_weight_decay", False) or isinstance(module, NORM_TYPES):
                exempt.add(f"{prefix}.{name}" if prefix else name)
    return exempt


class TrainingClock(TrainerCallback, ExportableState):
    """Seconds of training behind the current weights, summed over resumes (docs/training.md).

    The running total is saved with every checkpoint (``trainer_state.json`` → ``stateful_callbacks``) and read
    back when a run resumes, so ``seconds`` is the time of the steps that produced the final weights; steps lost
    to an interruption (after the last checkpoint, then redone) are not counted twice. Evaluation is outside.
    ``restored`` says whether the resumed checkpoint had a total (one written before the clock existed has
    none); ``stepped`` whether an optimizer step began in this call (so a failure came after the resume).
    """

    def __init__(self):
        self.seconds_before = 0.0
        self.restored = False
        self.stepped = False
        self._started: float | None = None

    @staticmethod
    def saved_seconds(state) -> float | None:
        """The total stored in a ``TrainerState`` (``None`` when the checkpoint predates the clock)."""
        saved = (state.stateful_callbacks or {}).get(TrainingClock.__name__)
        if isinstance(saved, list):  # the Trainer's format for several callbacks of one class: the last one
            saved = saved[-1] if saved else None
        return float(saved["attributes"]["seconds"]) if saved else None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.seconds_before + running

    @seconds.setter
    def seconds(self, value: float) -> None:  # what restoring the callback from its saved state sets
        self.seconds_before, self._started = float(value), None

    def on_train_begin(self, args, state, control, **kwargs):
        saved = self.saved_seconds(state)  # the resumed checkpoint's state is loaded by now
        self.restored = saved is not None
        self.seconds_before, self._started = saved or 0.0, time.perf_counter()
        # the Trainer updates stateful_callbacks[name] at each save and fails with a KeyError if the resumed
        # checkpoint has no entry (one written before the clock existed)
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_step_begin(self, args, state, control, **kwargs):
        self.stepped = True

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = self.seconds

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"seconds": self.seconds}}


class TimeBudget(TrainerCallback):
    """Ends training cleanly once the run's training time (a :class:`TrainingClock`'s, summed over resumes) reaches
    ``seconds``: the step that crosses it is checkpointed and the Trainer returns, so the caller evaluates and
    exports as after a complete run, and a rerun with the same budget trains nothing more (:func:`run_trainer`).
    ``stopped_at`` is the step it stopped at (``None``: it did not stop the run). Added before the
    :class:`DivergenceGuard`, which cancels the checkpoint of a diverged step."""

    def __init__(self, clock: TrainingClock, seconds: float):
        self.clock, self.seconds = clock, seconds
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock.seconds >= self.seconds and state.global_step < state.max_steps:
            control.should_training_stop = True
            control.should_save = True
            self.stopped_at = state.global_step


class TrainingDiverged(ValueError):
    """A run stopped because its gradient norm or its loss stopped being finite (:class:`DivergenceGuard`), or its
    trained model's evaluation loss is not finite.

    ``record`` is what :func:`train` knows of the run, strict JSON (``None`` for a value that is not finite):
    ``"status": "diverged"``, ``"diverged": {"step", "learning_rate", "scheduled_learning_rate", "cause", "loss",
    "grad_norm", "last_finite_loss", "last_finite_loss_step", "message"}``, the model's size, no evaluation; the
    sweeps cache it as the unit's result (``None`` from :func:`pretrain <probseq.train.pretrain.pretrain>` and
    distillation). A ``ValueError``: the command line prints the message as one line (exit code 2); the usual cure
    is a smaller learning rate."""

    def __init__(self, message: str, record: dict[str, Any] | None = None):
        super().__init__(message)
        self.record = record


class DivergenceGuard(TrainerCallback):
    """Stops training at the first optimizer step whose gradient norm, or logged loss, is not finite.

    Before each update (``on_pre_optimizer_step``) the guard takes ``‖g‖₂`` over every gradient (after clipping,
    which leaves non-finite gradients non-finite: ``g · c/‖g‖`` with ``‖g‖ = NaN`` or ``∞``); every log is checked
    for a non-finite ``loss`` as well (a loss can overflow while its gradients stay finite). On the first
    non-finite value it records ``diverged = {"step", "scheduled_learning_rate", "cause"}`` and sets
    ``control.should_training_stop``; that step's loss is logged as it is, and no checkpoint is written at it, so
    the run folder keeps the last finite one (a resumed run diverges again at the same step). Under ``torchrun``
    every process takes the same decision: the flag is the maximum over processes. Costs one norm over the
    gradients and one device sync per step. Under ``fp16`` only the logged loss is checked: loss scaling
    overflows on purpose (non-finite gradients at that step, which the scaler skips, lowering its scale).
    """

    def __init__(self):
        self.diverged: dict[str, Any] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        if self.diverged is not None or model is None or args.fp16:
            return  # fp16: an overflow step's gradients are inf by design, and the loss scaler skips that step
        grads = [
            p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # a shard under FSDP
            for p in model.parameters()
            if p.grad is not None
        ]
        if grads:
            bad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
        else:  # nothing to check here, but every process must join the reduction below
            bad = torch.zeros((), device=next(model.parameters()).device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            rate = lr_scheduler.get_last_lr()[0] if lr_scheduler is not None else args.learning_rate
            self._stop(control, state.global_step + 1, rate, "the gradient norm")

    def on_step_end(self, args, state, control, **kwargs):
        if self.diverged is not None and self.diverged["step"] == state.global_step:
            control.should_log = True  # the diverging step's loss, as it is
            control.should_save = control.should_evaluate = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.diverged is None and "loss" in logs and not math.isfinite(logs["loss"]):
            self._stop(control, state.global_step, logs.get("learning_rate", args.learning_rate), "the loss")
            control.should_save = control.should_evaluate = False
        if self.diverged is not None and self.diverged["step"] == state.global_step and "loss" in logs:
            self.diverged.update(loss=logs["loss"], grad_norm=logs.get("grad_norm"))

    def _stop(self, control, step: int, learning_rate: float, cause: str) -> None:
        self.diverged = {"step": step, "scheduled_learning_rate": float(learning_rate), "cause": cause}
        control.should_training_stop = True


def zoology_config(config: TrainConfig) -> ZoologyConfig:
    """The run's model config: every check of the model's shape (heads dividing ``d_model``, …), no weights."""
    spec = config.model
    return ZoologyConfig(
        vocab_size=config.data.vocab,
        d_model=spec.d_model,
        n_layers=spec.n_layers,
        mixer=spec.mixer,
        conv_kernel=spec.conv_kernel,
        num_heads=spec.num_heads,
        expand_v=spec.expand_v,
        state_size=spec.state_size,
        use_gate=spec.use_gate,
        retention=spec.retention,
        retention_init=spec.retention_init,
        init=spec.init,
        layout=spec.layout,
        decay_init_scale=spec.decay_init_scale,
    )


def build_model(config: TrainConfig) -> ZoologyModel:
    """The run's model, initialised from ``transformers.set_seed(config.seed)``."""
    model_config = zoology_config(config)
    set_seed(config.seed)
    return ZoologyModel(model_config)


def shared_arguments(config) -> dict[str, Any]:
    """The ``TrainingArguments`` settings every probseq Trainer run shares (:func:`training_arguments` and
    :meth:`probseq.train.pretrain.PretrainConfig.training_arguments`), read from the fields both configs name alike:
    torch's AdamW, the schedule, clipping, precision, checkpoints and logging; no evaluation loop and no reporting
    (the runs evaluate themselves); a non-finite loss logged as it is (:class:`DivergenceGuard` stops the run
    there); progress bars on a terminal only; CPU unless a GPU is present; gloo/nccl under ``torchrun``."""
    return dict(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=not progress_enabled(config.progress),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=_ddp_backend(),
    )


def training_arguments(config: TrainConfig, output_dir: str | os.PathLike) -> TrainingArguments:
    """The ``TrainingArguments`` of a run (everything the Trainer does is configured here)."""
    fsdp_config = {"transformer_layer_cls_to_wrap": list(config.fsdp_wrap)} if config.fsdp_wrap else None
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        # by segment, every item of the train dataset is a whole batch (SegmentBatches)
        per_device_train_batch_size=1 if config.batching == "by_segment" else config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        label_names=["labels"],
        fsdp=config.fsdp or None,
        fsdp_config=fsdp_config,
        torch_compile=config.compile,
        **shared_arguments(config),
    )


def _ddp_backend() -> str | None:
    """gloo on CPU, nccl on GPU — under ``torchrun`` only (a single process needs no process group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return "nccl" if torch.cuda.is_available() else "gloo"


def build_trainer(
    config: TrainConfig, output_dir: str | os.PathLike, callbacks: tuple[TrainerCallback, ...] = ()
) -> PreShiftedTrainer:
    """Model, generated data and arguments, assembled into a :class:`PreShiftedTrainer` (not yet run).
    The evaluation datasets are ``trainer.eval_dataset`` (a dict by split name)."""
    args = training_arguments(config, output_dir)
    model = build_model(config)
    splits = generate(config.data, config.effective_data_seed)
    train_dataset = (
        SegmentBatches(splits.train, config.batch_size)
        if config.batching == "by_segment"
        else TokenDataset(splits.train)
    )
    trainer = PreShiftedTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset={name: TokenDataset([d]) for name, d in splits.evaluation.items()},
        data_collator=pad_collate,
        compute_metrics=recall_metrics,
        callbacks=[RetentionTrace(), *callbacks],
        loss_weighting=config.loss_weighting,
        retention_lr_scale=config.retention_lr_scale,
    )
    if not config.progress:
        trainer.remove_callback(PrinterCallback)  # without bars, the Trainer would print every log dict
    if config.batching == "by_segment":
        if len(trainer.train_dataset) < trainer.args.world_size:
            raise ValueError(
                f"the train split has {len(trainer.train_dataset)} full batches by segment, fewer than "
                f"the {trainer.args.world_size} devices"
            )
    elif len(trainer.train_dataset) < config.batch_size * trainer.args.world_size:
        raise ValueError(
            f"the train split has {len(trainer.train_dataset)} examples, fewer than one global batch "
            f"({config.batch_size} × {trainer.args.world_size} devices)"
        )
    return trainer


def train(config: TrainConfig, callbacks: tuple[TrainerCallback, ...] = ()) -> dict[str, Any]:
    """Train (resuming from the last checkpoint in ``config.output_dir`` when ``config.resume``), then
    evaluate every valid and test segment; with an ``output_dir``, keep the final weights in ``output_dir/final/``
    (:func:`save_final`; not for a run that diverged).

    Returns:
        ``{"status": "ok", "fingerprint", "steps", "resumed_from_step", "train_loss", "final_train_loss",
        "seconds_per_step", "train_seconds", "num_parameters", "state_size", "state_bytes", "eval": {split:
        {"accuracy", "example_accuracy", "all_correct", "loss"}}}``, plus ``"retention_scale"`` with
        learned-retention Bayesian layers (each layer's trained ``ρ`` per head) and ``"retention_trace"`` (mean ``ρ``
        and gradient norms at every logging step, :class:`~probseq.train.retention.RetentionTrace`). ``train_loss`` and
        ``seconds_per_step`` cover the steps run by this call (:class:`TrainerRun`), ``final_train_loss`` the last
        logging window, ``train_seconds`` the whole run over its resumes (:class:`TrainingClock`); ``state_size``
        is :meth:`ZoologyModel.state_size` at the longest train sequence and ``state_bytes`` its float32 size.
        Strict JSON: a share that does not exist (no scored example in a split) is ``None``, with a warning.

    Raises:
        TrainingDiverged: the gradient norm or the training loss stopped being finite (:class:`DivergenceGuard`:
            the run stops at that step and is not evaluated), or the trained model's evaluation loss is not
            finite on some split (its outputs overflow: its accuracies would be those of NaN logits); the
            error's ``record`` holds what is known of the run.
    """
    with run_threads(config.num_threads), progress_bars(config.progress), _output_dir(config) as output_dir:
        trainer = build_trainer(config, output_dir, callbacks)
        run = run_trainer(trainer, output_dir, resume=config.resume and bool(config.output_dir))
        model = trainer.accelerator.unwrap_model(trainer.model)
        longest = max(s.task.seq_len if hasattr(s, "task") else s.seq_len for s in config.data.train)
        state_size = model.state_size(longest)
        size = {
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "state_size": state_size,
            "state_bytes": 4 * state_size,
        }
        if run.diverged is None:
            metrics = trainer.evaluate()
            evaluation = {name: _split_metrics(name, metrics) for name in trainer.eval_dataset}
            overflow = [name for name, values in evaluation.items() if not math.isfinite(values["loss"])]
            if overflow:  # diverged in the last steps: finite gradients, weights whose outputs are not finite
                diverged = _evaluation_overflow(trainer, overflow, evaluation)
                run = run._replace(diverged=_divergence(diverged, trainer))
        if run.diverged is not None:
            raise TrainingDiverged(run.diverged["message"], _diverged_record(config, run, size))
        losses = logged_losses(trainer.state)
        evaluation = {
            name: {key: finite_or_none(value) for key, value in values.items()} for name, values in evaluation.items()
        }
        metrics = {
            "status": "ok",
            "fingerprint": config.fingerprint(),
            "steps": run.output.global_step,
            "resumed_from_step": run.resumed_from_step,
            "train_loss": finite_or_none(run.output.training_loss),
            "final_train_loss": finite_or_none(losses[-1]) if losses else None,
            "seconds_per_step": run.seconds_per_step,
            "train_seconds": run.train_seconds,
            **size,
            "eval": evaluation,
            **_retention_scales(model),
        }
        trace = retention_trace(trainer.state)
        if trace:
            metrics["retention_trace"] = trace
        if config.output_dir:
            save_final(trainer, config, metrics, output_dir)
    return metrics


def save_final(trainer: Trainer, config: TrainConfig, metrics: dict[str, Any], output_dir: str | os.PathLike) -> Path:
    """Keep a finished run's weights in ``output_dir/final/``: ``model.safetensors`` and ``config.json``
    (``Trainer.save_model``, which gathers a sharded model), the whole :class:`TrainConfig` (``train_config.json``:
    what built the model and its data, the evaluation batch included) and the run's metrics (``metrics.json``).
    Written into ``.final.partial/``, then renamed to ``final/`` (an older ``final/`` is moved away just before), so
    a reader finds a whole folder or, for that instant, none — never half of one. Every process calls it (FSDP
    gathers); the main process writes. Returns ``final/``."""
    folder = Path(output_dir)
    final, partial = folder / FINAL_DIR, folder / f".{FINAL_DIR}.partial"
    writes = trainer.args.should_save
    if writes:
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted save
    trainer.save_model(str(partial))
    if not writes:
        return final
    try:
        (partial / "training_args.bin").unlink(missing_ok=True)  # the Trainer's pickle: not needed to reuse the model
        atomic_write_json(partial / FINAL_CONFIG, config.to_dict())
        atomic_write_json(partial / FINAL_METRICS, metrics)
        if final.exists():  # a rerun of a finished run: the same weights
            old = Path(tempfile.mkdtemp(dir=folder, prefix=f".{FINAL_DIR}.old."))
            os.replace(final, old / FINAL_DIR)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _split_metrics(name: str, metrics: dict[str, float]) -> dict[str, float]:
    """One evaluation split's accuracy, example accuracy, all-correct share and loss (from ``trainer.evaluate()``'s
    ``eval_<split>_<metric>``); a share that does not exist (no example scored) is NaN, with a warning."""
    prefix = f"eval_{name}_"
    names = ("accuracy", "example_accuracy", "all_correct", "loss")
    values = {
        key[len(prefix) :]: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and key[len(prefix) :] in names
    }
    empty = [key for key, value in values.items() if key != "loss" and not math.isfinite(value)]
    if empty:
        warnings.warn(
            f"evaluation on {name}: {', '.join(empty)} not defined (no example has a scored position); "
            "recorded as null",
            stacklevel=3,
        )
    return values


def _evaluation_overflow(trainer: Trainer, splits: list[str], evaluation: dict[str, dict[str, float]]):
    """A :class:`DivergenceGuard` record for a run whose evaluation loss is not finite on ``splits``."""
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    return {
        "step": trainer.state.global_step,
        "scheduled_learning_rate": rates[-1] if rates else trainer.args.learning_rate,
        "cause": f"the evaluation loss on {', '.join(splits)}",
        "loss": evaluation[splits[0]]["loss"],
        "grad_norm": None,
    }


def _diverged_record(config: TrainConfig, run: TrainerRun, size: dict[str, int]) -> dict[str, Any]:
    """What a diverged run leaves (strict JSON): the step, learning rate, losses and gradient norm (``None`` where
    not finite), the time it took and the model's size; no evaluation."""
    diverged = {
        key: finite_or_none(value) if isinstance(value, float) else value for key, value in run.diverged.items()
    }
    return {
        "status": "diverged",
        "fingerprint": config.fingerprint(),
        "steps": run.diverged["step"],
        "max_steps": config.max_steps,
        "resumed_from_step": run.resumed_from_step,
        "diverged": diverged,
        "train_loss": None,
        "final_train_loss": None,
        "seconds_per_step": run.seconds_per_step,
        "train_seconds": run.train_seconds,
        **size,
        "eval": {},
    }


def _retention_scales(model: torch.nn.Module) -> dict[str, Any]:
    """``{"retention_scale": {layer: [ρ_h]}}`` for the Bayesian Layers with learned retention (the trained
    ``c_scale``, clamped to [0, 1] as the layer uses it: 0 is Gated DeltaNet's reset, 1 allows the stationary
    retention); empty for other models."""
    from probseq.layers import BayesianLayer

    scales = {
        name: module.c_scale.detach().float().clamp(0, 1).tolist()
        for name, module in model.named_modules()
        if isinstance(module, BayesianLayer) and module.retention == "learned"
    }
    return {"retention_scale": scales} if scales else {}


def logged_losses(state) -> list[float]:
    """The training loss of each logging window (``logging_steps`` steps), in order; kept across resumes."""
    return [float(entry["loss"]) for entry in state.log_history if "loss" in entry]


class TrainerRun(NamedTuple):
    """What :func:`run_trainer` ran: the ``TrainOutput`` (``training_loss`` over the steps of this call), the
    step resumed from (``None``: from scratch), this call's seconds, and the run's training time over all its
    resumes (:class:`TrainingClock`; for a run resumed from a checkpoint without a clock, the steps before it
    are counted at this call's rate). ``diverged`` is ``None``, or how the run diverged (:func:`run_trainer`);
    ``out_of_time`` says that the run ended before ``max_steps`` because its time budget ran out."""

    output: Any
    resumed_from_step: int | None
    seconds: float
    train_seconds: float
    diverged: dict[str, Any] | None = None
    out_of_time: bool = False

    @property
    def steps_run(self) -> int:
        return self.output.global_step - (self.resumed_from_step or 0)

    @property
    def seconds_per_step(self) -> float:
        """This call's seconds per step; for a run that had finished before (no step run), the run's mean."""
        if self.steps_run:
            return self.seconds / self.steps_run
        return self.train_seconds / max(self.output.global_step, 1)


def run_trainer(
    trainer: Trainer, checkpoints: str | os.PathLike, *, resume: bool = True, max_seconds: float | None = None
) -> TrainerRun:
    """``trainer.train()``, resuming from the last complete checkpoint in ``checkpoints`` (if ``resume``), with a
    :class:`DivergenceGuard`, and with a :class:`TimeBudget` of ``max_seconds`` of training time (``None``: none).
    A checkpoint whose training time has reached ``max_seconds`` counts as the end of the run (nothing more is
    trained; a larger budget continues it on the same schedule).

    A failure before the first optimizer step after a resume is a ``ValueError`` "could not resume from …"
    naming the checkpoint and the cause; a failure after that is raised as it is. A run that diverged returns
    with ``diverged = {"step", "learning_rate", "scheduled_learning_rate", "cause", "loss", "grad_norm",
    "last_finite_loss", "last_finite_loss_step", "message"}`` (the logged values at that step, and the last
    finite logged loss); its caller decides what to do with the weights (they are not finite).
    """
    clock, guard = TrainingClock(), DivergenceGuard()
    budget = TimeBudget(clock, max_seconds) if max_seconds is not None else None
    trainer.add_callback(clock)
    if budget is not None:
        trainer.add_callback(budget)
    trainer.add_callback(guard)
    checkpoint = last_complete_checkpoint(checkpoints) if resume else None
    resumed = int(Path(checkpoint).name.split("-")[-1]) if checkpoint else None
    started = time.perf_counter()
    try:
        if resumed is not None and resumed >= trainer.args.max_steps:
            return _finished_run(trainer, checkpoint, resumed, started)
        if resumed is not None and max_seconds is not None and _checkpoint_seconds(checkpoint) >= max_seconds:
            return _finished_run(trainer, checkpoint, resumed, started)._replace(out_of_time=True)
        with flush_subnormals():  # probseq.cpu: no result changes, the covariance path runs 1.4x faster
            output = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as error:
        if checkpoint is None or clock.stepped:
            raise  # not a resume failure: training went on from the checkpoint
        raise ValueError(
            f"could not resume from {checkpoint} ({type(error).__name__}: {error}); if the checkpoint "
            "is damaged, delete it to start over"
        ) from error
    seconds, train_seconds = time.perf_counter() - started, clock.seconds
    if resumed and not clock.restored:  # a checkpoint from before the clock: estimate the steps before it
        train_seconds += resumed * seconds / max(output.global_step - resumed, 1)
    diverged = _divergence(guard.diverged, trainer) if guard.diverged is not None else None
    out_of_time = budget is not None and budget.stopped_at is not None and diverged is None
    return TrainerRun(output, resumed, seconds, train_seconds, diverged, out_of_time)


def _checkpoint_seconds(checkpoint: str) -> float:
    """The training time a checkpoint's :class:`TrainingClock` recorded (0 when it has none)."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return TrainingClock.saved_seconds(state) or 0.0


def _divergence(diverged: dict[str, Any], trainer: Trainer) -> dict[str, Any]:
    """The guard's record with the logged loss and gradient norm at the diverging step, the last finite logged
    loss before it (the log is restored on resume, so a resumed run reports the same) and a message."""
    step, rate = diverged["step"], diverged["scheduled_learning_rate"]
    finite = [
        (entry["step"], entry["loss"])
        for entry in trainer.state.log_history
        if "loss" in entry and entry["step"] <= step and math.isfinite(entry["loss"])
    ]
    last_step, last_loss = finite[-1] if finite else (None, None)
    loss, norm = diverged.get("loss"), diverged.get("grad_norm")
    values = ", ".join(
        f"{name} {value:.4g}" for name, value in (("loss", loss), ("gradient norm", norm)) if value is not None
    )
    message = (
        f"training diverged at step {step} of {trainer.args.max_steps}: {diverged['cause']} is not finite"
        f"{f' ({values})' if values else ''}; learning rate {trainer.args.learning_rate:g} (scheduled "
        f"{rate:.4g} at that step); "
        + (f"last finite loss {last_loss:.4g} at step {last_step}" if finite else "no finite loss was logged")
        + ". Lower the learning rate (or lengthen the warmup, or clip gradients harder)"
    )
    return {
        **diverged,
        "learning_rate": trainer.args.learning_rate,
        "loss": loss,
        "grad_norm": norm,
        "last_finite_loss": last_loss,
        "last_finite_loss_step": last_step,
        "message": message,
    }


def _finished_run(trainer: Trainer, checkpoint: str, steps: int, started: float) -> TrainerRun:
    """A run stopped after its last checkpoint: the Trainer would run one more step when resumed at
    ``max_steps``, so load the final weights and state instead (``training_loss``: the mean logged loss)."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    model = trainer.accelerator.unwrap_model(trainer.model)
    model.load_state_dict(type(model).from_pretrained(checkpoint).state_dict())
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    state.is_local_process_zero = trainer.is_local_process_zero()
    state.is_world_process_zero = trainer.is_world_process_zero()
    trainer.state = state
    losses = logged_losses(state)
    loss = sum(losses) / len(losses) if losses else float("nan")
    saved = TrainingClock.saved_seconds(state)
    return TrainerRun(
        TrainOutput(steps, loss, {}), steps, time.perf_counter() - started, saved if saved is not None else 0.0
    )


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-<step>`` in ``folder`` that was completely written (the Trainer writes
    ``trainer_state.json`` last); newer, partly written ones (an interruption while saving) are deleted."""
    if not Path(folder).is_dir():
        return None
    while (checkpoint := get_last_checkpoint(str(folder))) is not None:
        try:
            json.loads((Path(checkpoint) / "trainer_state.json").read_text())
            return checkpoint
        except (OSError, json.JSONDecodeError):
            warnings.warn(f"deleting the incomplete checkpoint {checkpoint}", stacklevel=2)
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


@contextlib.contextmanager
def run_threads(count: int | None) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the block (``None``: leave it), restored afterwards."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Without progress bars (not ``enabled``, or stderr not a terminal: :func:`probseq.console.progress_enabled`),
    also silence transformers' and huggingface_hub's own (checkpoint writing)."""
    import huggingface_hub.utils as hub_utils

    before = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    enabled = progress_enabled(enabled)
    if not enabled:
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled:
            if before[0]:
                hf_logging.enable_progress_bar()
            if before[1]:
                hub_utils.enable_progress_bars()


@contextlib.contextmanager
def _output_dir(config: TrainConfig) -> Iterator[Path]:
    """``config.output_dir`` claimed for this config (:func:`~probseq.train.run_folder.claimed_run_folder`), or a
    temporary folder."""
    if not config.output_dir:
        with tempfile.TemporaryDirectory(prefix="probseq-train-") as folder:
            yield Path(folder)
        return
    with claimed_run_folder(config.output_dir, CONFIG_FILE, config.identity(), "output_dir") as folder:
        if not config.resume:
            earlier = sorted(p.name for p in [*folder.glob("checkpoint-*"), folder / FINAL_DIR] if p.exists())
            if earlier:
                raise ValueError(
                    f"resume=False, but {folder} holds {', '.join(earlier)} of an earlier run: its checkpoints "
                    "would be mixed with the new run's (and a later resume would continue the old one). Delete "
                    "them to start over, or resume=True to continue"
                )
        yield folder


__all__ = [
    "CONFIG_FILE",
    "FINAL_CONFIG",
    "FINAL_DIR",
    "FINAL_METRICS",
    "NORM_TYPES",
    "AnswerWeightedTrainer",
    "DivergenceGuard",
    "PreShiftedTrainer",
    "TimeBudget",
    "TrainerRun",
    "TrainingClock",
    "TrainingDiverged",
    "build_model",
    "build_trainer",
    "check_saved_config",
    "last_complete_checkpoint",
    "logged_losses",
    "no_decay_parameter_names",
    "run_trainer",
    "save_final",
    "train",
    "training_arguments",
    "zoology_config",
]
