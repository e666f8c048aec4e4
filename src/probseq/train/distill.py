"""Distil a pretrained Gated DeltaNet LM into Bayesian Layers, and the matched-compute GDN baseline.

``distill(config, out)`` (``probseq distill --teacher DIR --out DIR --tokens N [--baseline]``; the protocol is
docs/distillation.md):

**Student arm.** ``student = convert_fla(teacher, retention="learned")``: every Gated DeltaNet layer becomes a
:class:`~probseq.layers.BayesianLayer` with ``ρ = 0`` — the same function (logged: ``max_abs_logit_diff`` of the
converted model against the teacher). Its retention scale is then set to ``ρ = retention_init`` (default 0.5:
``γ = α² · ρ · sigmoid(c_weight x + c_bias)`` ≈ α²/4 at the start), so the layers keep certainty from the first step
and stage 1 has something to align; ``retention_init = 0`` keeps the exact start, where stage 1's loss and
gradient are zero (a function-preserving start is a stationary point of a teacher-matching loss).

- *Stage 1 — layer-wise output matching* (``stage1_fraction`` of the tokens, default 25 %): forward hooks read
  the frozen teacher's mixer inputs ``x_l = RMSNorm(h_l)`` and outputs ``y_l`` of every recurrent layer; the
  student's mixers get the teacher's ``x_l`` (its own residual stream is ignored) and
  ``L₁ = mean_l ‖ŷ_l − y_l‖² / ‖y_l‖²`` (each layer's MSE normalised by the teacher output's mean square, so that
  layers count alike). Only the recurrent mixers' parameters train (nothing else reaches the loss).
- *Stage 2 — logits* (the rest of the tokens): ``L₂ = kl_weight · T² · KL(softmax(z_T/T) ‖ softmax(z_S/T)) +
  lm_weight · CE(next token)``, temperature ``T = 1``, every position; all parameters train.

``retention="stationary"`` converts into stationary Bayesian Layers instead (``γ = α²``; a third arm, not the
teacher's function at the start). With ``retrieval_share > 0`` the blocks come from distillation's own mixed stream
(:func:`~probseq.train.pretrain.mixed_token_array` with ``purpose="distill"``: the teacher's make-up, other
documents), stage 1 on its first blocks and stage 2 on the rest, in order; otherwise from the corpus as built.

**Baseline arm** (``baseline=True``): the teacher itself (``mixer="gated_deltanet"``) is fine-tuned with the same
data (same blocks in the same order), tokens, steps, batch, stage split, parameter subsets and optimiser, and
``L₂`` (LM + the same KL against the frozen original teacher) in both stages — the only difference from the
student arm is the layer type (and stage 1's objective, which is zero for an unchanged GDN).

**Compute.** ``tokens`` is the unit: ``steps = ceil(tokens / (batch_size · seq_len · gradient_accumulation_steps ·
world_size))``, ``stage1_steps = round(stage1_fraction · steps)``; both arms log the tokens they trained on
(``train_log.json``: ``tokens`` and per stage). Each stage is a ``transformers.Trainer`` run (AdamW, warmup then
cosine, checkpoints in ``OUT/stage{1,2}/checkpoints``, resumed after an interruption; stage 2 uses another batch
order seed so it does not start by replaying stage 1's blocks; a non-finite gradient norm or loss stops the stage
with :class:`~probseq.train.trainer.TrainingDiverged`, and nothing of it is saved). ``OUT`` gets the final
``save_pretrained`` model, the
teacher's tokenizer and ``train_log.json`` (tokens, stage logs, and validation ``mse``, ``nmse``, ``kl``, ``lm``
before and after each stage).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from probseq.files import NUMBER, ListOf, atomic_write_json, finite_or_none, json_problem, nonfinite_to_none, read_json
from probseq.train.pretrain import (
    LMRunConfig,
    PackedBlocks,
    check_run_config,
    copy_tokenizer,
    corpus_token_arrays,
    mixed_token_array,
)
from probseq.train.schema import from_dict, non_negative, positive, with_overrides
from probseq.train.trainer import TrainingDiverged, progress_bars, run_threads, run_trainer

Objective = Literal["mse", "kl_lm"]


@dataclass(frozen=True, kw_only=True)
class DistillConfig(LMRunConfig):
    """A distillation run (either arm); the data, optimiser and run fields are :class:`LMRunConfig`'s.

    Attributes:
        teacher: the fla ``GatedDeltaNetForCausalLM`` directory (with its tokenizer).
        tokens: the token budget of the whole run (both stages).
        baseline: fine-tune the GDN teacher itself instead of converting it.
        stage1_fraction: share of the steps spent in stage 1.
        retention: the student's certainty retention: ``"learned"`` (``γ = α² · ρ · sigmoid(c_weight x + c_bias)``,
            starting at ``ρ = retention_init``) or ``"stationary"`` (``γ = α²``: the stationary memory; the
            conversion then does not start at the teacher's function, and ``retention_init`` is not used).
        retention_init: ``ρ`` of the student's Bayesian Layers when training starts (0: the exact conversion).
        stage1_learning_rate, learning_rate: peak learning rates of stage 1 and stage 2.
        kl_weight, lm_weight, temperature: stage 2's loss.
    """

    teacher: str
    tokens: int
    baseline: bool = False
    retention: Literal["learned", "stationary"] = "learned"
    stage1_fraction: float = 0.25
    retention_init: float = 0.5
    stage1_learning_rate: float = 1e-4
    learning_rate: float = 3e-4
    kl_weight: float = 1.0
    lm_weight: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.teacher:
            raise ValueError("teacher must name the fla teacher directory")
        positive(self, "tokens", "stage1_learning_rate", "learning_rate", "temperature")
        non_negative(self, "kl_weight", "lm_weight")
        for name in ("stage1_fraction", "retention_init"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.kl_weight == 0 and self.lm_weight == 0:
            raise ValueError("kl_weight and lm_weight are both 0: stage 2 would have no loss")
        if self.baseline and self.retention != "learned":
            raise ValueError(f"retention={self.retention!r} names the student's layers; the baseline has none")


#: Settings per model size (``--preset``); ``tokens`` and ``teacher`` come from the command line.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(seq_len=128, batch_size=4, save_steps=8, logging_steps=4, valid_blocks=4),
    "small": dict(),
    "340m": dict(
        seq_len=2048,
        batch_size=8,
        gradient_accumulation_steps=4,
        stage1_learning_rate=1e-4,
        learning_rate=1e-4,
        precision="bf16",
        save_steps=500,
        logging_steps=20,
        valid_blocks=32,
    ),
}


def distill_config(
    preset: str, teacher: str, tokens: int, baseline: bool = False, overrides: list[str] | tuple[str, ...] = ()
) -> DistillConfig:
    """The preset with ``teacher``, ``tokens``, ``baseline`` and ``key=value`` overrides (an unknown key or a wrong
    type is a ``ValueError`` naming the key)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {tuple(PRESETS)}")
    base = from_dict(
        DistillConfig, {**PRESETS[preset], "teacher": str(teacher), "tokens": tokens, "baseline": baseline}
    )
    return with_overrides(base, list(overrides))


def stage_steps(config: DistillConfig, world_size: int = 1) -> tuple[int, int, int]:
    """``(tokens_per_step, stage1_steps, stage2_steps)`` of ``config``."""
    tokens_per_step = config.tokens_per_step(world_size)
    total = max(1, math.ceil(config.tokens / tokens_per_step))
    first = min(total, round(config.stage1_fraction * total))
    return tokens_per_step, first, total - first


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------


def recurrent_layers(model) -> list[int]:
    """Indices of the layers whose mixer is a (Gated DeltaNet / Bayesian) recurrent layer — the converted ones."""
    from probseq.layers import BayesianLayer

    return [i for i, block in enumerate(model.model.layers) if isinstance(block.attn, BayesianLayer)]


def load_teacher(teacher_dir: str | os.PathLike):
    """The fla teacher as a probseq Gated DeltaNet (``mixer="gated_deltanet"``; float32, eval mode, frozen)."""
    from probseq.interop.fla import convert_fla
    from probseq.models import ProbSeqForCausalLM

    with tempfile.TemporaryDirectory(prefix="probseq-teacher-") as tmp:
        try:
            reset = convert_fla(teacher_dir, tmp, retention="reset", dtype="float32")
        except FileNotFoundError as error:
            raise ValueError(f"--teacher: {error}") from None
    config = copy.deepcopy(reset.config)
    config.mixer = "gated_deltanet"  # retention="reset" *is* Gated DeltaNet; name it so
    teacher = ProbSeqForCausalLM(config)
    teacher.load_state_dict(reset.state_dict(), strict=True)
    teacher.eval().requires_grad_(False)
    return teacher


def convert_student(teacher_dir: str | os.PathLike, dst: Path, retention: str = "learned"):
    """``convert_fla(teacher, dst, retention=retention)`` in float32 (saved in ``dst``): with ``"learned"``,
    Bayesian Layers at ``ρ = 0``, the teacher's function; with ``"stationary"``, ``γ = α²`` (not the teacher's
    function: the certainty is kept from the first token)."""
    from probseq.interop.fla import convert_fla

    return convert_fla(teacher_dir, dst, retention=retention, dtype="float32").train()


def retention_scales(model) -> dict[str, list[float]]:
    """``ρ`` per head (``clamp(c_scale, 0, 1)``, as the layer applies it) of every learned-retention Bayesian Layer
    of ``model``, by layer index (empty for other models)."""
    from probseq.layers import BayesianLayer

    return {
        str(module.layer_idx): module.c_scale.detach().clamp(0, 1).tolist()
        for module in model.modules()
        if isinstance(module, BayesianLayer) and module.retention == "learned"
    }


def set_retention(student, rho: float) -> None:
    """``ρ = rho`` (``c_scale``) in every learned-retention Bayesian Layer of ``student``."""
    from probseq.layers import BayesianLayer

    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, BayesianLayer) and module.retention == "learned":
                module.c_scale.fill_(rho)
    student.config.retention_init = rho


def set_trainable(model, stage: int, layers: list[int]) -> int:
    """Stage 1: only the recurrent mixers (``model.layers[l].attn``, ``l`` in ``layers``); stage 2: everything.
    Returns the trainable parameter count."""
    model.requires_grad_(stage != 1)
    if stage == 1:
        for index in layers:
            model.model.layers[index].attn.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _mixer_taps(
    model, layers: list[int], replace: dict[int, Tensor] | None = None
) -> Iterator[tuple[dict[int, Tensor], dict[int, Tensor]]]:
    """Hooks on the mixers of ``layers``: ``(inputs, outputs)`` dicts filled during a forward; with ``replace``,
    each mixer's input is replaced by ``replace[layer]`` (teacher forcing)."""
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    handles = []
    for index in layers:
        mixer = model.model.layers[index].attn

        def pre(module, args, kwargs, index=index):
            inputs[index] = args[0]
            if replace is not None:
                return (replace[index].to(args[0].dtype), *args[1:]), kwargs
            return None

        def post(module, args, output, index=index):
            outputs[index] = output[0] if isinstance(output, tuple) else output

        handles.append(mixer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mixer.register_forward_hook(post))
    try:
        yield inputs, outputs
    finally:
        for handle in handles:
            handle.remove()


def layerwise_terms(student, teacher, input_ids: Tensor, layers: list[int]) -> dict[str, Tensor]:
    """Stage 1: every student mixer of ``layers`` on the teacher's mixer input, against the teacher's output.

    Returns ``{"loss": nmse, "nmse": …, "mse": …}`` (``mse``: plain mean squared error averaged over the layers).
    """
    base_student = getattr(student, "module", student)
    with torch.no_grad(), _mixer_taps(teacher, layers) as (teacher_in, teacher_out):
        teacher(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    with _mixer_taps(base_student, layers, replace=teacher_in) as (_, student_out):
        student(input_ids=input_ids, use_cache=False, logits_to_keep=1)  # through the (DDP) wrapper
    mse, nmse = [], []
    for index in layers:
        target, output = teacher_out[index].float(), student_out[index].float()
        error = (output - target).pow(2).mean()
        mse.append(error)
        nmse.append(error / target.pow(2).mean().clamp_min(1e-12))
    nmse_mean = torch.stack(nmse).mean()
    return {"loss": nmse_mean, "nmse": nmse_mean.detach(), "mse": torch.stack(mse).mean().detach()}


def logit_terms(
    student,
    teacher,
    input_ids: Tensor,
    temperature: float,
    kl_weight: float,
    lm_weight: float,
    with_difference: bool = False,
) -> dict[str, Tensor]:
    """Stage 2: ``kl_weight · T² · KL(teacher ‖ student) + lm_weight · CE``, means over positions.

    Returns ``{"loss", "kl", "lm"}`` (+ ``"max_abs_logit_diff"`` with ``with_difference``).
    """
    logits = student(input_ids=input_ids, use_cache=False).logits.float()
    with torch.no_grad():
        target = teacher(input_ids=input_ids, use_cache=False).logits.float()
    vocab = logits.shape[-1]
    log_p_student = F.log_softmax(logits / temperature, dim=-1).reshape(-1, vocab)
    log_p_teacher = F.log_softmax(target / temperature, dim=-1).reshape(-1, vocab)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    terms = {"loss": kl_weight * kl + lm_weight * lm, "kl": kl.detach(), "lm": lm.detach()}
    if with_difference:
        terms["max_abs_logit_diff"] = (logits.detach() - target).abs().max()
    return terms


@torch.no_grad()
def evaluate(
    student, teacher, blocks: PackedBlocks, layers: list[int], batch_size: int, temperature: float = 1.0
) -> dict[str, float]:
    """Validation ``mse``, ``nmse`` (stage 1's loss), ``kl``, ``lm`` and the largest ``|Δlogit|`` against the teacher,
    averaged over ``blocks``."""
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    sums: dict[str, float] = defaultdict(float)
    batches, max_diff = 0, 0.0
    for start in range(0, len(blocks), batch_size):
        ids = torch.stack([blocks[i]["input_ids"] for i in range(start, min(len(blocks), start + batch_size))])
        ids = ids.to(device)
        terms = {
            **layerwise_terms(student, teacher, ids, layers),
            **logit_terms(student, teacher, ids, temperature, 1.0, 1.0, with_difference=True),
        }
        for name in ("mse", "nmse", "kl", "lm"):
            sums[name] += float(terms[name])
        max_diff = max(max_diff, float(terms["max_abs_logit_diff"]))
        batches += 1
    student.train(was_training)
    return {**{name: value / max(batches, 1) for name, value in sums.items()}, "max_abs_logit_diff": max_diff}


def distill_trainer_class():
    """:class:`DistillTrainer` (defined on first use: transformers' Trainer is imported lazily)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """``Trainer`` whose loss is stage 1's layer-wise matching (``objective="mse"``) or stage 2's KL + LM
        (``"kl_lm"``) against a frozen ``teacher``; the loss terms are averaged into the logs."""

        def __init__(
            self,
            *args,
            teacher,
            objective: Objective,
            layers: list[int],
            temperature: float = 1.0,
            kl_weight: float = 1.0,
            lm_weight: float = 1.0,
            **kwargs,
        ):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
            self.objective, self.layers = objective, layers
            self.temperature, self.kl_weight, self.lm_weight = temperature, kl_weight, lm_weight
            self.model_accepts_loss_kwargs = False  # micro-batch means; the Trainer divides by accumulation
            self._sums: dict[str, float] = defaultdict(float)
            self._count = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs["input_ids"]
            if self.objective == "mse":
                terms = layerwise_terms(model, self.teacher, ids, self.layers)
            else:
                terms = logit_terms(model, self.teacher, ids, self.temperature, self.kl_weight, self.lm_weight)
            loss = terms.pop("loss")
            for name, value in terms.items():
                self._sums[name] += float(value)
            self._count += 1
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self._count and "loss" in logs:
                logs.update({name: value / self._count for name, value in self._sums.items()})
                self._sums.clear()
                self._count = 0
            super().log(logs, start_time)

    _TRAINER_CLASS = DistillTrainer
    return DistillTrainer


_TRAINER_CLASS = None


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def _stage_arguments(config: DistillConfig, out: Path, stage: int, steps: int):
    """The ``TrainingArguments`` of stage ``stage`` (its learning rate; batch order seed ``seed + stage − 1``; a
    mixed stream's blocks in their order, each block once)."""
    return config.training_arguments(
        out / f"stage{stage}" / "checkpoints",
        max_steps=steps,
        learning_rate=config.stage1_learning_rate if stage == 1 else config.learning_rate,
        seed=config.seed + stage - 1,
        in_order=config.retrieval_share > 0,
    )


def stage_blocks(config: DistillConfig, steps: tuple[int, int], world_size: int) -> list[tuple[int, int]]:
    """The block range ``[start, stop)`` of the mixed stream each stage trains on: consecutive, disjoint, the
    stage's steps × ``batch_size · gradient_accumulation_steps · world_size`` blocks."""
    per_step = config.batch_size * config.gradient_accumulation_steps * world_size
    first = steps[0] * per_step
    return [(0, first), (first, first + steps[1] * per_step)]


def _checked(name: str, metrics: dict[str, float]) -> dict[str, float | None]:
    """Validation ``metrics`` with a value that is not finite (the student's outputs overflow) as ``None``, and a
    warning naming it."""
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        warnings.warn(
            f"validation {name}: {', '.join(f'{k} = {v}' for k, v in bad.items())} is not finite (the "
            "model's outputs overflow); recorded as null in train_log.json",
            stacklevel=2,
        )
    return {key: finite_or_none(value) for key, value in metrics.items()}


def read_stage_log(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """A finished stage's ``stage_log.json``: a ``ValueError`` naming the file when it is not JSON, not a stage
    log, or the log of another stage or objective than ``expected``'s."""
    advice = f"delete {path.parent} to run the stage again"
    log = read_json(path, advice)
    problem = json_problem(
        log,
        {
            "stage": int,
            "objective": str,
            "steps": int,
            "tokens": int,
            "learning_rate": NUMBER,
            "train_loss": (NUMBER, type(None)),
            "history": ListOf(dict),
        },
    )
    if problem is None:
        problem = next(
            (
                f"{key} is {log[key]!r}, this stage's is {value!r}"
                for key, value in expected.items()
                if key in ("stage", "objective") and log[key] != value
            ),
            None,
        )
    if problem is not None:
        raise ValueError(f"{path} is not this stage's log: {problem}; {advice}")
    return log


def distill(config: DistillConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) one arm in ``out``; see the module docstring.

    Returns:
        The ``train_log.json`` content: ``arm`` (``"bayesian"`` / ``"baseline"``), ``config``, ``tokens`` (trained),
        ``tokens_requested``, ``tokens_per_step``, ``stages`` (per stage: ``objective``, ``steps``, ``tokens``,
        ``learning_rate``, ``trainable_parameters``, ``train_loss``, ``seconds`` (this call), ``train_seconds``
        (over all resumes), ``seconds_per_step``, ``history``), ``eval``
        (validation metrics: ``converted``, ``start``, ``after_stage1``, ``after_stage2``), ``retention`` (the
        student's retention; ``None`` for the baseline), ``retention_scale`` (learned retention: ``ρ`` per layer
        and head at ``start``, ``after_stage1``, ``after_stage2``; else ``None``) and ``mix`` (the summary of the
        mixed stream, :func:`~probseq.train.pretrain.mixed_token_array`, when ``retrieval_share > 0``; else
        ``None``).
    """
    from transformers import PrinterCallback, default_data_collator, set_seed

    from probseq.data import load_tokenizer
    from probseq.models import ProbSeqForCausalLM

    out = Path(out)
    if not (Path(config.teacher) / "config.json").is_file():
        raise ValueError(f"--teacher {config.teacher} is not a model directory (no config.json)")
    check_run_config(out, config.identity())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    tokens_per_step, steps1, steps2 = stage_steps(config, world_size)
    trainer_class = distill_trainer_class()
    with run_threads(config.num_threads), progress_bars(config.progress):
        # the first TrainingArguments sets up torch.distributed under torchrun: rank 0 prepares the files first
        probe = _stage_arguments(config, out, 1, max(steps1, 1))
        device = probe.device
        with probe.main_process_first(desc="token arrays and conversion"):
            tokenizer = load_tokenizer(config.teacher)
            teacher = load_teacher(config.teacher).to(device)
            layers = recurrent_layers(teacher)
            if not layers:
                raise ValueError(f"--teacher {config.teacher} has no Gated DeltaNet layers")
            arrays = corpus_token_arrays(tokenizer, out / "data", config.corpus_dir, config.seed)
            mix, ranges = None, stage_blocks(config, (steps1, steps2), world_size)
            if config.retrieval_share > 0:  # distillation's own stream of the teacher's mix: exactly the run's blocks
                blocks = ranges[-1][1]
                arrays["train"], mix = mixed_token_array(tokenizer, None, config, blocks, purpose="distill")
            if config.baseline:
                student = copy.deepcopy(teacher).train().requires_grad_(True)
            elif probe.process_index == 0:
                student = convert_student(config.teacher, out / "converted", config.retention).to(device)
            else:
                with tempfile.TemporaryDirectory(prefix="probseq-student-") as tmp:
                    student = convert_student(config.teacher, Path(tmp), config.retention).to(device)
        train_data = PackedBlocks(arrays["train"], config.seq_len)
        if mix is not None:  # each stage its own blocks of the stream, in order
            stage_data = {
                stage: PackedBlocks(arrays["train"][start * config.seq_len : stop * config.seq_len], config.seq_len)
                for stage, (start, stop) in enumerate(ranges, start=1)
            }
        else:  # every stage draws its batches from the whole corpus
            stage_data = {1: train_data, 2: train_data}
        valid_data = PackedBlocks(arrays["valid"], config.seq_len, limit=config.valid_blocks)
        if len(train_data) < config.batch_size * world_size:
            raise ValueError(
                f"the corpus has {len(train_data)} training sequences of {config.seq_len} tokens, fewer "
                f"than one batch ({config.batch_size} × {world_size} devices)"
            )
        evaluations = {}
        if len(valid_data):
            evaluations["converted"] = _checked(
                "converted", evaluate(student, teacher, valid_data, layers, config.batch_size)
            )
        if not config.baseline and config.retention == "learned":
            set_retention(student, config.retention_init)
        retention = {"start": retention_scales(student)}
        if len(valid_data):
            evaluations["start"] = _checked("start", evaluate(student, teacher, valid_data, layers, config.batch_size))

        stages = []
        for stage, steps in ((1, steps1), (2, steps2)):
            objective: Objective = "mse" if stage == 1 and not config.baseline else "kl_lm"
            final = out / f"stage{stage}" / "final"
            learning_rate = config.stage1_learning_rate if stage == 1 else config.learning_rate
            trainable = set_trainable(student, stage, layers)
            record = {
                "stage": stage,
                "objective": objective,
                "steps": steps,
                "tokens": steps * tokens_per_step,
                "learning_rate": learning_rate,
                "trainable_parameters": trainable,
            }
            log_path = out / f"stage{stage}" / "stage_log.json"
            if steps and (final / "model.safetensors").exists() and log_path.exists():
                student.load_state_dict(ProbSeqForCausalLM.from_pretrained(final).state_dict())
                stages.append(read_stage_log(log_path, record))
            elif steps:
                args = _stage_arguments(config, out, stage, steps)
                set_seed(config.seed + stage - 1)
                trainer = trainer_class(
                    model=student,
                    args=args,
                    train_dataset=stage_data[stage],
                    data_collator=default_data_collator,
                    teacher=teacher,
                    objective=objective,
                    layers=layers,
                    temperature=config.temperature,
                    kl_weight=config.kl_weight,
                    lm_weight=config.lm_weight,
                )
                if not config.progress:
                    trainer.remove_callback(PrinterCallback)
                run = run_trainer(trainer, out / f"stage{stage}" / "checkpoints")
                if run.diverged is not None:  # nothing is saved; the stage's checkpoints before the step stay
                    raise TrainingDiverged(f"distillation stage {stage} in {out}: {run.diverged['message']}")
                student = trainer.accelerator.unwrap_model(trainer.model)
                record.update(
                    train_loss=finite_or_none(run.output.training_loss),
                    resumed_from_step=run.resumed_from_step,
                    seconds=run.seconds,
                    train_seconds=run.train_seconds,
                    seconds_per_step=run.seconds_per_step,
                    history=nonfinite_to_none(trainer.state.log_history),
                )
                if trainer.is_world_process_zero():
                    student.save_pretrained(final)
                    atomic_write_json(log_path, record)
                stages.append(record)
            else:
                stages.append(record)
            retention[f"after_stage{stage}"] = retention_scales(student)
            if len(valid_data):
                evaluations[f"after_stage{stage}"] = _checked(
                    f"after_stage{stage}", evaluate(student, teacher, valid_data, layers, config.batch_size)
                )
    student.requires_grad_(True)
    log = {
        "arm": "baseline" if config.baseline else "bayesian",
        "retention": None if config.baseline else config.retention,
        "kind": "distill",
        "teacher": str(config.teacher),
        "config": dataclasses.asdict(config),
        "tokens": sum(s["tokens"] for s in stages),
        "tokens_requested": config.tokens,
        "tokens_per_step": tokens_per_step,
        "world_size": world_size,
        "stages": stages,
        "eval": evaluations,
        "retention_scale": retention if retention["start"] else None,  # a learned retention's ρ, else none
        "mix": mix,
    }
    if int(os.environ.get("RANK", "0")) == 0:
        with progress_bars(config.progress):
            student.save_pretrained(out)
        copy_tokenizer(tokenizer, out)
        atomic_write_json(out / "train_log.json", log)
    return log


__all__ = [
    "DistillConfig",
    "PRESETS",
    "convert_student",
    "distill",
    "distill_config",
    "distill_trainer_class",
    "evaluate",
    "layerwise_terms",
    "load_teacher",
    "logit_terms",
    "recurrent_layers",
    "set_retention",
    "set_trainable",
    "stage_steps",
]
