"""Causal softmax attention with rotary position embeddings and a KV cache, on PyTorch SDPA.

Constructor and parameter names follow flash-linear-attention's ``Attention`` (``q_proj k_proj v_proj
o_proj``, optional ``q_norm k_norm``; head dim ``hidden_size / num_heads``; grouped-query heads), with
GPT-NeoX-style (non-interleaved) rotary embeddings of base ``rope_theta``.

Positions: ``position_ids`` from ``kwargs`` if given (``generate`` passes them), else from the padding
mask (``cumsum(mask) − 1``, so a left-padded sequence gets the positions it has alone), else from
``cu_seqlens`` (restarting at each sequence), else ``cached + arange(T)``. Padded keys are masked out;
packed sequences attend within themselves only. The mask is read as the recurrent mixers read it
(:func:`probseq.layers.utils.full_padding_mask`: bool or exactly 0/1, anything else refused), and padded
hidden states are replaced by zeros before the projections, so NaN or Inf there never reaches a real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from probseq.layers.norm import RMSNorm
from probseq.layers.state import KVState, StateLayout, read_state, write_state
from probseq.layers.utils import (
    check_forward_keywords,
    check_mask_width,
    check_no_extra,
    check_positive,
    layer_inputs,
    upcast,
    zero_padding,
)
from probseq.ops.varlen import Packing


def rotate(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary embedding of ``x [B, T, H, D]`` at integer ``positions [B, T]`` (non-interleaved halves)."""
    half = x.shape[-1] // 2
    xf = upcast(x)  # float32 (float64 for a float64 layer)
    inv_freq = theta ** (-torch.arange(half, device=x.device, dtype=xf.dtype) / half)
    angles = positions.to(xf.dtype)[..., None, None] * inv_freq  # [B, T, 1, D/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., 2 * half :]], dim=-1)
    return rotated.to(x.dtype)


def _check_position_ids(position_ids: Tensor, batch: int, length: int) -> None:
    """``position_ids [B, S]``, ``[1, S]`` or ``[S]`` with ``S ≥ T`` (the last ``T`` are the current tokens)."""
    layout = (
        isinstance(position_ids, Tensor)
        and position_ids.dtype != torch.bool
        and (position_ids.dim() == 1 or (position_ids.dim() == 2 and position_ids.shape[0] in (1, batch)))
    )
    if layout and position_ids.shape[-1] >= length:
        return
    got = list(position_ids.shape) if isinstance(position_ids, Tensor) else type(position_ids).__name__
    raise ValueError(
        f"position_ids must be a tensor [B, T] or [1, T] of positions covering the {length} current "
        f"tokens (batch {batch}), got {got}"
    )


class Attention(nn.Module):
    """fla ``Attention``'s constructor and forward on SDPA (``window_size`` is refused); ``dropout`` (ours, as
    Zoology's attention has it) drops attention probabilities in training mode.

    ``validate=True`` (ours, as in the recurrent mixers) checks ``hidden_states`` for NaN/Inf at real tokens,
    naming the first bad ``(batch, time)``, with one host synchronisation per call.
    """

    def __init__(
        self,
        hidden_size: int = 2048,
        num_heads: int = 32,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: int | None = None,
        rope_theta: float | None = 10000.0,
        max_position_embeddings: int | None = None,
        layer_idx: int | None = None,
        *,
        dropout: float = 0.0,
        validate: bool = False,
        **kwargs,
    ):
        super().__init__()
        check_no_extra("Attention", kwargs)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout (of attention probabilities, in training) must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.validate = bool(validate)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_positive(hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
        if window_size is not None:
            raise ValueError("sliding-window attention (window_size) is not supported")
        if rope_theta is not None and not rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0 or None (no rotary embedding), got {rope_theta!r}")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.num_kv_groups = num_heads // num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.kv_dim = num_kv_heads * self.head_dim
        self.qkv_bias, self.qk_norm, self.window_size = qkv_bias, qk_norm, window_size
        self.rope_theta, self.max_position_embeddings, self.layer_idx = rope_theta, max_position_embeddings, layer_idx

        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim)
            self.k_norm = RMSNorm(self.head_dim)

    def state_layout(self) -> StateLayout:
        """Keys and values ``[N, S, H_kv, D_h]`` (:mod:`probseq.layers.state`)."""
        return StateLayout(KVState, (), (self.num_kv_heads, self.head_dim))

    def _positions(
        self,
        batch: int,
        length: int,
        past: int,
        attention_mask: Tensor | None,
        cu_seqlens: Tensor | None,
        position_ids: Tensor | None,
        device: torch.device,
    ) -> Tensor:
        if position_ids is not None:
            _check_position_ids(position_ids, batch, length)
            return position_ids[..., position_ids.shape[-1] - length :].expand(batch, length).to(device)
        if cu_seqlens is not None:
            return Packing(cu_seqlens, device).offset[None]
        if attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            return positions[:, positions.shape[1] - length :].to(device)  # (not [:, -length:]: T = 0)
        return (past + torch.arange(length, device=device))[None].expand(batch, length)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[Tensor, None, object]:
        """``hidden_states [B, T, D] → (o [B, T, D], None, past_key_values)``.

        ``attention_mask`` ``[B, S + T]`` (0/1 or bool, 0 = padding) covers the cached and the current tokens;
        ``kwargs`` may hold ``cu_seqlens`` and ``position_ids [B, T]``.
        """
        if output_attentions:
            raise ValueError("Attention runs on SDPA and cannot return attention weights (output_attentions)")
        if kwargs.get("cu_seqlens") is not None and use_cache:
            raise ValueError("Attention cannot cache packed sequences (cu_seqlens with use_cache=True)")
        x, mask, attention_mask, cu_seqlens = layer_inputs(
            self, hidden_states, attention_mask, kwargs.get("cu_seqlens"), self.q_proj.weight
        )
        batch, length, _ = x.shape
        last = read_state(self, past_key_values, batch)
        if last is not None and cu_seqlens is not None:
            raise ValueError("Attention cannot continue packed sequences (cu_seqlens) from a cache (past_key_values)")
        past = 0 if last is None else last.keys.shape[1]
        check_mask_width(attention_mask, length, cached=last is not None)
        check_forward_keywords(self, kwargs)
        if past and (attention_mask is None or attention_mask.shape[1] == length):
            # a step without the cached tokens' mask: take it from the cache (all real if it holds none)
            attention_mask = self._with_cached_padding(last, attention_mask, batch, length, x.device)
        if attention_mask is not None and attention_mask.shape[1] < past + length:
            raise ValueError(
                f"attention_mask must cover the {past} cached and {length} current tokens ([B, S + T]), or "
                f"the current ones only ([B, T]); got {attention_mask.shape[1]} columns"
            )

        q = rearrange(self.q_proj(x), "b t (h d) -> b t h d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b t (h d) -> b t h d", d=self.head_dim)
        v = rearrange(self.v_proj(x), "b t (h d) -> b t h d", d=self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            positions = self._positions(
                batch, length, past, attention_mask, cu_seqlens, kwargs.get("position_ids"), hidden_states.device
            )
            q, k = rotate(q, positions, self.rope_theta), rotate(k, positions, self.rope_theta)
        if last is not None:
            k, v = torch.cat([last.keys.to(k.dtype), k], dim=1), torch.cat([last.values.to(v.dtype), v], dim=1)
        if use_cache:
            seen = None if attention_mask is None else attention_mask[:, attention_mask.shape[1] - (past + length) :]
            write_state(self, past_key_values, KVState(k, v, seen), length)

        allowed = self._allowed(batch, length, past, attention_mask, cu_seqlens, hidden_states.device)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed,
            is_causal=allowed is None and past == 0 and length > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_groups > 1,
        )
        o = self.o_proj(rearrange(o, "b h t d -> b t (h d)"))
        return zero_padding(o, mask), None, past_key_values

    @staticmethod
    def _with_cached_padding(
        last: KVState, current: Tensor | None, batch: int, length: int, device: torch.device
    ) -> Tensor | None:
        """``[B, S + T]`` bool: the cached keys' padding, then ``current`` (``[B, T]``; ``None``: all real).
        ``None`` when neither holds padding information."""
        if last.padding is None and current is None:
            return None
        ones = torch.ones(batch, last.keys.shape[1] + length, dtype=torch.bool, device=device)
        cached = last.padding if last.padding is not None else ones[:, : last.keys.shape[1]]
        current = current if current is not None else ones[:, last.keys.shape[1] :]
        return torch.cat([cached.to(device, torch.bool), current.to(device, torch.bool)], dim=1)

    @staticmethod
    def _allowed(
        batch: int,
        length: int,
        past: int,
        attention_mask: Tensor | None,
        cu_seqlens: Tensor | None,
        device: torch.device,
    ) -> Tensor | None:
        """Boolean ``[B, 1, T, S + T]`` mask of the keys each query may attend to (``None``: plain causal)."""
        if attention_mask is None and cu_seqlens is None and (past == 0 or length == 1):
            return None
        query = past + torch.arange(length, device=device)
        key = torch.arange(past + length, device=device)
        allowed = (key[None, :] <= query[:, None])[None]  # [1, T, S + T]
        if cu_seqlens is not None:
            sequence = Packing(cu_seqlens, device).sequence
            allowed = allowed & (sequence[:, None] == sequence[None, :])[None]
        if attention_mask is not None:
            valid = attention_mask.to(device)[:, attention_mask.shape[1] - (past + length) :]
            # a padded query sees no real key; let it see itself so its (discarded) row stays finite
            allowed = (allowed & valid[:, None, :]) | (key[None, :] == query[:, None])[None]
        return allowed[:, None]
