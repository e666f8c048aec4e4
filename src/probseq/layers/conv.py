"""Depthwise causal short convolution with a decoding state.

``y_t = act(Σ_{j<W} w_j · x_{t−W+1+j} + b)`` per channel, with zeros before the start of each sequence.
The parameters are those of an ``nn.Conv1d(D, D, W, groups=D)`` (``weight [D, 1, W]``, ``bias [D]``),
as in flash-linear-attention's ``ShortConvolution`` and Mamba-2's ``conv1d``, so their checkpoints load.
The state is fla's cache layout ``[N, D, W]``: the last ``W`` inputs of each sequence.

The delta-rule layers (:class:`~probseq.layers.BayesianLayer`, :class:`~probseq.layers.DeltaNet`) convolve their
q, k and v projections with three of them, as fla's layers do: :func:`add_qkv_convolutions`,
:func:`qkv_conv_layout` and :func:`convolve_qkv` are that plumbing, once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probseq.layers.utils import zero_padding
from probseq.ops.varlen import Packing

ACTIVATIONS = (None, "silu", "swish")


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution over ``[B, T, D]`` inputs.

    Args:
        hidden_size: channels ``D``.
        kernel_size: ``W``.
        bias: add a per-channel bias.
        activation: ``"silu"`` / ``"swish"`` (the same) or ``None``.
    """

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False, activation: str | None = "silu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"conv kernel size must be a positive int, got {kernel_size!r}")
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=kernel_size - 1, bias=bias)
        self.hidden_size = hidden_size
        self.activation = activation

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: Tensor | None = None,
        output_final_state: bool = False,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Convolve ``x``, continuing from ``cache``.

        Args:
            x: ``[B, T, D]`` (``B = 1`` with ``cu_seqlens``).
            mask: ``[B, T]`` real tokens, padding anywhere (left, right or between real tokens): each row's
                real tokens are convolved as one contiguous sequence after ``cache``, so every real token and
                the final state are what the sequence gives alone; outputs at padded positions are zero.
            cache: ``[N, D, W]`` state from the previous call (``N`` = batch or number of sequences).
            output_final_state: return the new state.
            cu_seqlens: ``[N + 1]`` packed sequence boundaries; the convolution restarts at each one.

        Returns:
            ``(y [B, T, D], state [N, D, W] or None)``; for ``T = 0`` (or an empty packed sequence) ``y`` is
            empty and the state is ``cache`` (zeros without one).
        """
        if cu_seqlens is not None:
            packing = Packing(cu_seqlens, x.device)
            y, state = self._convolve(packing.pad(x), cache, output_final_state, packing.lengths)
            return packing.unpad(y), state
        if mask is None:
            return self._convolve(x, cache, output_final_state, None)
        # real tokens first, in order (a stable sort of the padding flags), convolved as a packed batch of
        # per-row lengths; then back to their positions. Padding is skipped, not convolved as zeros: a zero in
        # the window would change the tokens after it, and a right-padded prefill's state would hold zeros.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [B, T]
        index = order[:, :, None].expand_as(x)
        compact = zero_padding(x.gather(1, index), mask.gather(1, order))  # NaN at a padded token never spreads
        y, state = self._convolve(compact, cache, output_final_state, mask.sum(1))
        return zero_padding(torch.zeros_like(y).scatter(1, index, y), mask), state

    def _convolve(
        self, x: Tensor, cache: Tensor | None, output_final_state: bool, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        batch, length, channels = x.shape
        width = self.kernel_size[0]
        if cache is not None and tuple(cache.shape) != (batch, channels, width):
            raise ValueError(
                f"conv state must have shape [N, D, W] = {[batch, channels, width]}, got {list(cache.shape)}"
            )
        # the last W inputs before the first token (zeros for a fresh sequence), then the T inputs: [N, W + T, D],
        # channels last as x is (a transposed [N, D, T] layout made SiLU and the conv's backward several times slower)
        history = x.new_zeros(batch, width, channels) if cache is None else cache.to(x.dtype).transpose(1, 2)
        inputs = torch.cat([history, x], dim=1)
        taps = self.weight[:, 0, :].t()  # [W, D]
        y = causal_depthwise_conv(inputs[:, 1:], taps, self.bias)  # [N, T, D]
        if self.activation is not None:
            y = F.silu(y)
        state = None
        if output_final_state:
            # the last W inputs of each sequence: inputs[:, len : len + W] (the history itself if len = 0)
            ends = torch.full((batch,), length, device=x.device, dtype=torch.long) if lengths is None else lengths
            index = ends[:, None] + torch.arange(width, device=x.device)
            state = inputs.gather(1, index[:, :, None].expand(batch, width, channels)).transpose(1, 2)
        return y, state


class _CausalDepthwiseConv(torch.autograd.Function):
    """``y[:, t] = bias + Σ_j taps[j] ⊙ p[:, t + j]`` over ``p [N, T + W − 1, D]``, ``taps [W, D]``: W multiply-adds of
    shifted views forward, and backward ``∂p[:, t + j] += taps[j] ⊙ g[:, t]``, ``∂taps[j] = Σ g ⊙ p[:, j : j + T]``,
    ``∂bias = Σ g`` — a few passes over ``[N, T, D]`` instead of the depthwise convolution's backward."""

    @staticmethod
    def forward(ctx, padded: Tensor, taps: Tensor, bias: Tensor | None) -> Tensor:
        width = taps.shape[0]
        length = padded.shape[1] - width + 1
        y = padded[:, width - 1 :] * taps[width - 1]
        for j in range(width - 1):
            y.addcmul_(padded[:, j : j + length], taps[j])
        if bias is not None:
            y += bias
        ctx.save_for_backward(padded, taps)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        padded, taps = ctx.saved_tensors
        width, length = taps.shape[0], grad.shape[1]
        grad_padded = grad_taps = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_padded = padded.new_zeros(padded.shape)
            for j in range(width):
                grad_padded[:, j : j + length].addcmul_(grad, taps[j])
        if ctx.needs_input_grad[1]:
            grad_taps = torch.stack([(grad * padded[:, j : j + length]).sum((0, 1)) for j in range(width)])
            grad_taps = grad_taps.to(taps.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1)).to(ctx.bias_dtype)
        return grad_padded, grad_taps, grad_bias


def causal_depthwise_conv(padded: Tensor, taps: Tensor, bias: Tensor | None = None) -> Tensor:
    """Depthwise cross-correlation along time, channels last: ``padded [N, T + W − 1, D]`` (the ``W − 1`` inputs
    before the first output, then ``T``), ``taps [W, D]``, ``bias [D]`` → ``[N, T, D]``; what
    ``F.conv1d(padded.transpose(1, 2), taps.t()[:, None], bias, groups=D).transpose(1, 2)`` computes."""
    if padded.shape[1] < taps.shape[0] - 1:
        raise ValueError(f"need at least W - 1 = {taps.shape[0] - 1} inputs before the first output")
    return _CausalDepthwiseConv.apply(padded, taps, bias)


def add_qkv_convolutions(layer: nn.Module, qk_activation: str | None = "silu") -> None:
    """Give ``layer`` fla's ``q_conv1d``, ``k_conv1d`` (``layer.key_dim`` channels, ``qk_activation``) and
    ``v_conv1d`` (``layer.value_dim`` channels, SiLU), of kernel ``layer.conv_size`` and bias ``layer.conv_bias``
    (created in this order: one seed gives fla's initial weights)."""
    layer.q_conv1d = ShortConvolution(layer.key_dim, layer.conv_size, bias=layer.conv_bias, activation=qk_activation)
    layer.k_conv1d = ShortConvolution(layer.key_dim, layer.conv_size, bias=layer.conv_bias, activation=qk_activation)
    layer.v_conv1d = ShortConvolution(layer.value_dim, layer.conv_size, bias=layer.conv_bias, activation="silu")


def qkv_conv_layout(layer: nn.Module) -> tuple[tuple[int, int], ...]:
    """``(D, W)`` of the q, k and v conv states ``[N, D, W]`` (:class:`~probseq.layers.state.StateLayout`'s
    ``conv``); none without ``layer.use_short_conv``."""
    if not layer.use_short_conv:
        return ()
    return ((layer.key_dim, layer.conv_size),) * 2 + ((layer.value_dim, layer.conv_size),)


def convolve_qkv(
    layer: nn.Module,
    x: Tensor,
    mask: Tensor | None,
    states: tuple[Tensor, ...] | None,
    use_cache: bool,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """``q, k, v = conv(proj(x))`` for the q, k and v projections and convolutions of ``layer``, each continuing
    from its state in ``states`` (``None``: a fresh start). Returns ``(q [B, T, key_dim], k, v [B, T, value_dim],
    the three new states [N, D, W] when use_cache, else ())``."""
    states = states or (None, None, None)
    (q, sq), (k, sk), (v, sv) = (
        conv(proj(x), mask=mask, cache=state, output_final_state=use_cache, cu_seqlens=cu_seqlens)
        for conv, proj, state in zip(
            (layer.q_conv1d, layer.k_conv1d, layer.v_conv1d), (layer.q_proj, layer.k_proj, layer.v_proj), states
        )
    )
    return q, k, v, (sq, sk, sv) if use_cache else ()
