"""The loss on pre-shifted labels and the recall metrics.

probseq's tasks give labels already shifted (``labels[t]`` is the target of the prediction made at
position ``t``, ``IGNORE_INDEX`` = −100 where nothing is scored), so the loss is the cross-entropy at the
supervised positions *without* the one-position shift a causal-LM loss applies::

    loss = Σ_{(b, t): labels[b, t] ≠ −100}  −log softmax(logits[b, t])[labels[b, t]]  /  N

with ``N`` the number of supervised positions — of the micro-batch, or of the whole accumulated (and,
under DDP, gathered) batch when the Trainer passes ``num_items_in_batch``, so gradient accumulation and
data parallelism weight every supervised token equally (``weighting="token"``).

``weighting="example"`` weighs every example equally, whatever its number of supervised positions ``n_b``::

    loss = Σ_{b: n_b > 0}  (1/n_b) Σ_{t: labels[b, t] ≠ −100}  −log softmax(logits[b, t])[labels[b, t]]  /  E

with ``E`` the number of examples with ``n_b > 0`` — of the micro-batch, or of the whole accumulated batch
(``num_items_in_batch``, which :class:`~probseq.train.trainer.PreShiftedTrainer` then counts in examples).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from probseq.tasks import IGNORE_INDEX


def pre_shifted_cross_entropy(
    logits: Tensor, labels: Tensor, num_items_in_batch: Tensor | int | None = None, weighting: str = "token"
) -> Tensor:
    """Cross-entropy at the positions with ``labels != IGNORE_INDEX``; no shift.

    Args:
        logits: ``[B, T, V]`` for ``labels [B, T]``, or ``[N, V]`` already gathered at the supervised
            positions (then ``labels`` is ``[B, T]`` with exactly ``N`` supervised entries, or ``[N]``).
        labels: targets, ``IGNORE_INDEX`` where nothing is scored.
        num_items_in_batch: the normaliser — ``N`` supervised positions (``"token"``) or ``E`` examples with a
            supervised position (``"example"``); default: those given here.
        weighting: ``"token"`` (every supervised position weighs the same) or ``"example"`` (every example
            weighs the same: each example's mean over its positions, then the mean over examples; needs ``labels``
            ``[B, T]``). See the module docstring.

    Returns:
        Scalar float32 loss (0 when nothing is supervised).
    """
    if weighting not in ("token", "example"):
        raise ValueError(f"weighting must be 'token' or 'example', got {weighting!r}")
    mask = labels != IGNORE_INDEX
    targets = labels[mask]
    if logits.dim() == labels.dim() + 1 and logits.shape[:-1] == labels.shape:
        logits = logits[mask]
    elif logits.dim() != 2 or logits.shape[0] != targets.numel():
        raise ValueError(
            f"logits must be [*labels.shape, V] or [N, V] with N = {targets.numel()} supervised "
            f"positions, got {list(logits.shape)} for labels {list(labels.shape)}"
        )
    if weighting == "token":
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        count = targets.numel() if num_items_in_batch is None else num_items_in_batch
    else:
        if labels.dim() != 2:
            raise ValueError(
                f"weighting='example' needs labels [B, T] (one row per example), got labels {list(labels.shape)}"
            )
        per_example = mask.sum(-1)  # n_b [B]
        rows = mask.nonzero()[:, 0]  # the example of each supervised position, in the row-major order of logits
        losses = F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
        total = (losses / per_example[rows]).sum()
        count = int((per_example > 0).sum()) if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(count):
        return total / count.to(total.device).clamp_min(1)
    return total / max(count, 1)


def scatter_predictions(logits: Tensor, labels: Tensor) -> Tensor:
    """Argmax predictions ``[B, T]`` (``IGNORE_INDEX`` at unsupervised positions) from logits at the
    supervised positions (``[N, V]``) or everywhere (``[B, T, V]``)."""
    mask = labels != IGNORE_INDEX
    if logits.dim() == 3:
        logits = logits[mask]
    predictions = torch.full_like(labels, IGNORE_INDEX)
    predictions[mask] = logits.argmax(-1)
    return predictions


def per_example_accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fraction of each example's supervised positions predicted right, ``[B]`` (NaN for an example with
    none)."""
    mask = labels != IGNORE_INDEX
    correct = ((predictions == labels) & mask).sum(-1)
    count = mask.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, correct / np.maximum(count, 1), np.nan)


def recall_metrics(eval_prediction) -> dict[str, float]:
    """``compute_metrics`` for ``transformers.Trainer``: from ``EvalPrediction(predictions [N, T],
    label_ids [N, T])``:

    - ``accuracy``: correct supervised positions / supervised positions (Zoology's MQAR accuracy);
    - ``example_accuracy``: mean over examples of the per-example accuracy;
    - ``all_correct``: share of examples with every supervised position right.
    """
    predictions, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    mask = labels != IGNORE_INDEX
    per_example = per_example_accuracy(predictions, labels)
    scored = per_example[~np.isnan(per_example)]
    return {
        "accuracy": float(((predictions == labels) & mask).sum() / max(mask.sum(), 1)),
        "example_accuracy": float(scored.mean()) if scored.size else float("nan"),
        "all_correct": float((scored == 1).mean()) if scored.size else float("nan"),
    }
