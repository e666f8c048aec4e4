"""Chunked form of the superposition design: chunked linear attention with decay masks
(docs/chunked-algorithm.md); it needs no covariance path."""

from __future__ import annotations

import torch
from torch import Tensor

from probseq.ops.chunks import from_chunks, to_chunks
from probseq.ops.segsum import segment_ratios


def superposition_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor | None,
    weight: Tensor | None,
    mean: Tensor,
    scale: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Chunked linear attention with decay masks; inputs as :func:`superposition_recurrent`.

    Per chunk, with ``b_t = Σ_{l≤t} log α_l`` (in-chunk) and ``ṽ_j = β_j v_j``::

        O = diag-decayed Q̃ M_0ᵀ + (decay mask ∘ Q̃ Kᵀ) Ṽ
        M_C = M_0 ⊙ exp(b_C) + Ṽᵀ (exp(b_C − b_j) ⊙ K)

    A scalar decay needs the ``[C, C]`` mask ``exp(segsum)``; a per-channel decay needs ``[C, C, K]``
    (memory ``O(T C K)`` per head: prefer ``C = 16`` there). Padding tokens (``k = 0``, ``α = 1``) leave
    the state unchanged.
    """
    batch, length, heads, _ = k.shape
    mean = mean.flatten(0, 1)
    if weight is not None:
        v = v * weight[..., None]
    q, k, v = (to_chunks(x, chunk_size) for x in (q * scale, k, v))
    if log_decay is None:
        log_decay = k.new_zeros(k.shape[:-1])
    else:
        log_decay = to_chunks(log_decay, chunk_size)
    per_channel = log_decay.dim() == k.dim()
    if per_channel:  # [N,B·H,C,K]: masks per key channel
        seg = segment_ratios(log_decay.transpose(-1, -2))  # [N,B·H,K,C,C]
        scores = torch.einsum("nbtk,nbjk,nbktj->nbtj", q, k, seg)
        q_decayed = q * log_decay.cumsum(-2).exp()
        k_decayed = k * seg[..., -1, :].transpose(-1, -2)  # exp(b_C − b_j) per channel
        carry = log_decay.sum(-2).exp()[..., None, :]  # [N,B·H,1,K] multiplies columns of M
    else:
        mask = segment_ratios(log_decay)
        scores = mask * (q @ k.transpose(-1, -2))
        q_decayed = q * log_decay.cumsum(-1).exp()[..., None]
        k_decayed = k * mask[..., -1, :, None]
        carry = log_decay.sum(-1).exp()[..., None, None]
    intra = scores @ v  # [N,B·H,C,V], all chunks at once
    outputs = []
    for intra_n, q_n, k_n, v_n, carry_n in zip(
        intra.unbind(0), q_decayed.unbind(0), k_decayed.unbind(0), v.unbind(0), carry.unbind(0)
    ):
        outputs.append(intra_n + q_n @ mean.transpose(-1, -2))
        mean = carry_n * mean + v_n.transpose(-1, -2) @ k_n
    return from_chunks(torch.stack(outputs), length, batch), mean.unflatten(0, (batch, heads))
