"""Mamba-2's SSD mixer (Dao & Gu, 2024) as the superposition filter (docs/design-model.md §7).

``h_t = exp(Δ_t A) h_{t−1} + Δ_t x_t B_tᵀ``, ``y_t = h_t C_t + D x_t``: the superposition design with
``decay = exp(Δ A)``, evidence weight ``β = Δ``, values ``x``, keys ``B``, queries ``C`` and scale 1.
Constructor, parameter names (``in_proj conv1d dt_bias A_log D norm out_proj``) and shapes follow
mamba_ssm / flash-linear-attention's ``Mamba2``::

    z, xBC, dt = in_proj(u)
    x, B, C    = SiLU(conv1d(xBC))                        depthwise causal conv over x, B and C
    Δ          = clamp(softplus(dt + dt_bias), dt_limit);  A = −exp(A_log)
    y          = superposition_filter(C, B, x, g=Δ·A, β=Δ, scale=1) + D·x
    out        = out_proj(RMSNorm(y ⊙ SiLU(z)))          group-wise, norm after the gate

Head ``h`` reads the ``B, C`` of group ``h // (num_heads / n_groups)``, as mamba_ssm's kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from probseq.layers.conv import ShortConvolution
from probseq.layers.norm import GatedRMSNorm
from probseq.layers.state import RecurrentState, StateLayout, read_state, write_state
from probseq.layers.utils import (
    check_forward_keywords,
    check_mask_width,
    check_no_extra,
    check_positive,
    hold_padding,
    inverse_softplus_step,
    layer_inputs,
    log_uniform_decay_rate,
    num_sequences,
    repeat_heads,
    upcast,
    zero_padding,
)
from probseq.ops import superposition_filter


def _check_ranges(A_init_range, dt_min, dt_max, dt_init_floor, conv_init) -> None:  # noqa: N803 (mamba_ssm's name)
    """The initialisation ranges: ``A ~ U(A_init_range)`` and ``Δ`` log-uniform in ``[dt_min, dt_max]`` take
    logarithms, so a negative or zero bound would give NaN or infinite parameters."""
    low, high = A_init_range
    if not 0 < low <= high < float("inf"):
        raise ValueError(f"A_init_range must be (low, high) with 0 < low <= high < inf, got {A_init_range!r}")
    if not 0 < dt_min <= dt_max < float("inf"):
        raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max < inf, got {dt_min!r}, {dt_max!r}")
    if not 0 <= dt_init_floor < float("inf"):
        raise ValueError(f"dt_init_floor must be a finite float >= 0, got {dt_init_floor!r}")
    if conv_init is not None and not 0 < conv_init < float("inf"):
        raise ValueError(
            f"conv_init must be None or a finite float > 0 (weights ~ U(-conv_init, conv_init)), got {conv_init!r}"
        )


class Mamba2(nn.Module):
    """fla / mamba_ssm ``Mamba2``'s constructor (same defaults) and fla's forward.

    ``backend`` (fla's conv-kernel choice) is accepted and ignored; ``hidden_act`` must be SiLU;
    ``chunk_size`` is the chunk length of the filter's chunked form (64, not mamba_ssm's 256: that is its GPU
    kernel's tile; in PyTorch a chunk costs ``O(C²)`` per head in masks and scores, and at the MQAR model's
    T = 256 a single 256-token chunk made Mamba-2's training step 1.5× slower than with C = 64); ``validate``
    checks ``hidden_states`` and the filter's values (as in :class:`~probseq.layers.BayesianLayer`).
    """

    def __init__(
        self,
        num_heads: int | None = None,
        head_dim: int = 64,
        hidden_size: int = 2048,
        state_size: int = 128,
        expand: int = 2,
        n_groups: int = 1,
        conv_kernel: int = 4,
        conv_init: float | None = None,
        use_conv_bias: bool = True,
        hidden_act: str = "silu",
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        use_bias: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        layer_idx: int | None = None,
        backend: str = "cuda",
        *,
        validate: bool = False,
        **kwargs,
    ):
        super().__init__()
        # validate: hidden_states and the filter's values checked (NaN/Inf, ranges, a finite result) with one host
        # synchronisation each per call; off by default, as in a training loop (docs/numerics.md, "Validation").
        self.validate = bool(validate)
        check_no_extra("Mamba2", kwargs)
        check_positive(
            head_dim=head_dim,
            hidden_size=hidden_size,
            state_size=state_size,
            expand=expand,
            n_groups=n_groups,
            conv_kernel=conv_kernel,
            chunk_size=chunk_size,
        )
        intermediate_size = expand * hidden_size
        if intermediate_size % head_dim:
            raise ValueError(f"expand * hidden_size = {intermediate_size} must be divisible by head_dim={head_dim}")
        inferred_heads = intermediate_size // head_dim
        if num_heads not in (None, 0, inferred_heads):
            raise ValueError(
                f"num_heads * head_dim = {num_heads * head_dim} must equal expand * hidden_size = {intermediate_size}"
            )
        num_heads = inferred_heads
        if num_heads % n_groups:
            raise ValueError(f"num_heads={num_heads} must be divisible by n_groups={n_groups}")
        if hidden_act not in ("silu", "swish"):
            raise ValueError(f"Mamba2 supports hidden_act='silu' only, got {hidden_act!r}")
        if not 0 <= dt_limit[0] <= dt_limit[1]:
            raise ValueError(f"dt_limit must be (low, high) with 0 <= low <= high, got {dt_limit!r}")
        _check_ranges(A_init_range, dt_min, dt_max, dt_init_floor, conv_init)

        self.hidden_size, self.expand, self.intermediate_size = hidden_size, expand, intermediate_size
        self.num_heads, self.head_dim, self.ssm_state_size, self.n_groups = num_heads, head_dim, state_size, n_groups
        self.conv_kernel_size, self.conv_init, self.use_conv_bias = conv_kernel, conv_init, use_conv_bias
        self.activation, self.A_init_range, self.D_has_hdim = hidden_act, tuple(A_init_range), D_has_hdim
        self.rmsnorm, self.norm_before_gate, self.norm_eps = rmsnorm, norm_before_gate, norm_eps
        self.dt_min, self.dt_max, self.dt_limit = dt_min, dt_max, tuple(dt_limit)
        self.use_bias, self.chunk_size, self.layer_idx = use_bias, chunk_size, layer_idx
        self.conv_dim = intermediate_size + 2 * n_groups * state_size

        self.conv1d = ShortConvolution(self.conv_dim, conv_kernel, bias=use_conv_bias, activation="silu")
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.in_proj = nn.Linear(hidden_size, intermediate_size + self.conv_dim + num_heads, bias=use_bias)
        self.dt_bias = nn.Parameter(inverse_softplus_step(num_heads, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = True
        self.A_log = nn.Parameter(log_uniform_decay_rate(num_heads, *A_init_range))
        self.A_log._no_weight_decay = True
        self.norm = (
            GatedRMSNorm(
                intermediate_size,
                eps=norm_eps,
                norm_before_gate=norm_before_gate,
                group_size=intermediate_size // n_groups,
            )
            if rmsnorm
            else None
        )
        self.D = nn.Parameter(torch.ones(intermediate_size if D_has_hdim else num_heads))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(intermediate_size, hidden_size, bias=use_bias)

    def state_layout(self) -> StateLayout:
        """One conv state ``[N, conv_dim, W]`` and the SSM state ``[N, H, P, N_state]`` (probseq.layers.state)."""
        return StateLayout(
            RecurrentState,
            ((self.conv_dim, self.conv_kernel_size),),
            (self.num_heads, self.head_dim, self.ssm_state_size),
        )

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[Tensor, None, object]:
        """``hidden_states [B, T, D] → (o [B, T, D], None, past_key_values)``; ``kwargs``: ``cu_seqlens``."""
        u, mask, full, cu_seqlens = layer_inputs(
            self, hidden_states, attention_mask, kwargs.get("cu_seqlens"), self.in_proj.weight
        )
        last = read_state(self, past_key_values, num_sequences(u, cu_seqlens))
        check_mask_width(full, u.shape[1], cached=last is not None)
        check_forward_keywords(self, kwargs)

        z, xbc, dt = self.in_proj(u).split([self.intermediate_size, self.conv_dim, self.num_heads], -1)
        xbc, conv_state = self.conv1d(
            xbc,
            mask=mask,
            cache=None if last is None else last.conv[0],
            output_final_state=use_cache,
            cu_seqlens=cu_seqlens,
        )
        x, b, c = xbc.split(
            [self.intermediate_size, self.n_groups * self.ssm_state_size, self.n_groups * self.ssm_state_size], -1
        )
        x = rearrange(x, "b t (h p) -> b t h p", p=self.head_dim)
        groups = self.num_heads // self.n_groups
        b = repeat_heads(rearrange(b, "b t (g n) -> b t g n", n=self.ssm_state_size), groups)
        c = repeat_heads(rearrange(c, "b t (g n) -> b t g n", n=self.ssm_state_size), groups)
        delta = F.softplus(upcast(dt) + upcast(self.dt_bias)).clamp(*self.dt_limit)
        log_decay = delta * -upcast(self.A_log).exp()
        b, log_decay, _, _ = hold_padding(mask, b, log_decay)

        out = superposition_filter(
            c,
            b,
            x,
            log_decay,
            delta,
            scale=1.0,
            initial_state=None if last is None else last.memory,
            output_final_state=bool(use_cache),
            chunk_size=self.chunk_size,
            cu_seqlens=cu_seqlens,
            validate=self.validate,
        )
        if use_cache:
            write_state(self, past_key_values, RecurrentState((conv_state,), out.state), hidden_states.shape[1])

        d = self.D.view(self.num_heads, self.head_dim) if self.D_has_hdim else self.D[:, None]
        y = rearrange(out.output + x * d.to(x.dtype), "b t h p -> b t (h p)")
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z)
        return zero_padding(self.out_proj(y.to(hidden_states.dtype)), mask), None, past_key_values
