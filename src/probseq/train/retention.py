"""The learned certainty retention during training: its own learning rate, and a trace of ``ρ`` and its gradient.

The Bayesian Layer's learned retention ``γ_t = α_t² · ρ · σ(c_weight·x_t + c_bias)`` has three parameter tensors of
its own per layer (``c_weight [H, D]``, ``c_bias [H]``, ``c_scale [H]`` = ``ρ`` before its clamp to [0, 1]). With
Adam every parameter moves by about the learning rate per step whatever its gradient's scale, so at a learning rate
that suits the keys and values, ``ρ`` (a number in [0, 1]) can cross its whole range in a few dozen steps while the
keys are still being learned. ``TrainConfig.retention_lr_scale`` gives these parameters their own learning rate
(the run's times the scale), and :class:`RetentionTrace` records ``ρ`` and the gradient norms at every logging
step (``trainer.state.log_history``; ``train``'s metrics ``"retention_trace"``), so one can see where it went.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback


def retention_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Name → parameter for every learned-retention parameter (``c_weight``, ``c_bias``, ``c_scale`` of each
    Bayesian Layer with ``retention="learned"``); empty for other models."""
    from probseq.layers import BayesianLayer  # noqa: PLC0415

    found = {}
    for module_name, module in model.named_modules():
        if isinstance(module, BayesianLayer) and module.retention == "learned":
            for name in BayesianLayer.RETENTION_PARAMETERS:
                found[f"{module_name}.{name}" if module_name else name] = getattr(module, name)
    return found


def split_retention_groups(optimizer: torch.optim.Optimizer, model: torch.nn.Module, scale: float) -> None:
    """Move the learned-retention parameters of every param group of ``optimizer`` into a group of their own with
    the group's learning rate times ``scale`` (its other settings, weight decay included, kept). Call before a
    learning-rate scheduler is built (it reads each group's ``lr`` as its ``initial_lr``). ``scale = 1``: nothing
    changes."""
    if scale == 1:
        return
    ids = {id(p) for p in retention_parameters(model).values()}
    if not ids:
        return
    groups = []
    for group in optimizer.param_groups:
        own = [p for p in group["params"] if id(p) in ids]
        rest = [p for p in group["params"] if id(p) not in ids]
        if rest:
            groups.append({**group, "params": rest})
        if own:
            groups.append({**group, "params": own, "lr": group["lr"] * scale})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.param_groups.append(group)


class RetentionTrace(TrainerCallback):
    """At every logging step, add to the log entry (``state.log_history[-1]``): ``retention_scale`` (the mean
    clamped ``ρ`` over layers and heads), ``retention_grad_norm`` and ``other_grad_norm`` (the L2 norms of the
    gradients of the retention parameters and of every other parameter at that step, after clipping; computed on
    logging steps only). Nothing for a model without learned retention."""

    def __init__(self):
        self.own: dict[str, torch.nn.Parameter] = {}
        self.others: list[torch.nn.Parameter] = []
        self.grad_norms: dict[int, tuple[float, float]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.own = retention_parameters(model)
        ids = {id(p) for p in self.own.values()}
        self.others = [p for p in model.parameters() if id(p) not in ids]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1  # the step this update completes, as the log entry will name it
        if not self.own or step % args.logging_steps:
            return
        norms = [
            torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()
            for params in (list(self.own.values()), self.others)
        ]
        self.grad_norms = {step: (norms[0], norms[1])}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.own or not state.log_history or "loss" not in state.log_history[-1]:
            return
        entry = state.log_history[-1]
        scales = torch.cat(
            [p.detach().float().clamp(0, 1).flatten() for n, p in self.own.items() if n.endswith("c_scale")]
        )
        entry["retention_scale"] = float(scales.mean())
        if entry["step"] in self.grad_norms:
            entry["retention_grad_norm"], entry["other_grad_norm"] = self.grad_norms[entry["step"]]


def retention_trace(state) -> list[dict[str, Any]]:
    """``[{"step", "retention_scale", "retention_grad_norm", "other_grad_norm"}]`` from a Trainer state's log
    history (the entries :class:`RetentionTrace` extended); empty when there are none."""
    keys = ("retention_scale", "retention_grad_norm", "other_grad_norm")
    return [
        {"step": entry["step"], **{k: entry[k] for k in keys if k in entry}}
        for entry in state.log_history
        if "retention_scale" in entry
    ]


__all__ = ["RetentionTrace", "retention_parameters", "retention_trace", "split_retention_groups"]
