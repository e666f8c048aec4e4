"""Gated DeltaNet (Yang et al., 2024) as the covariance-reset Bayesian Layer (docs/design-model.md §6).

``M_t = α_t M_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ`` is the regression design with ``γ = 0`` and noise
``r = (1 − β)/β`` (no floor) for unit-norm keys, so this layer is :class:`BayesianLayer` with
``retention="reset"``: the same code path, parameters and forward as fla's ``GatedDeltaNet`` layer.
"""

from __future__ import annotations

from probseq.layers.bayesian import BayesianLayer


class GatedDeltaNet(BayesianLayer):
    """fla ``GatedDeltaNet``'s constructor and forward (see :class:`BayesianLayer`; ``allow_neg_eigval`` is
    refused). ``chunk_size`` is the chunk length of the chunked form (``None``: half the key head dim between 32
    and 64, :func:`~probseq.layers.utils.delta_chunk_size`)."""

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_v: float = 2,
        head_dim: int = 256,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        mode: str = "chunk",
        use_gate: bool = True,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        layer_idx: int | None = None,
        norm_eps: float = 1e-5,
        output_gate_activation: str = "swish",
        *,
        chunk_size: int | None = None,
        validate: bool = False,
        **kwargs,
    ):
        for name in ("retention", "retention_init", "r_min", "mean_chunk_size"):
            if name in kwargs:
                raise ValueError(
                    f"GatedDeltaNet is the covariance reset (retention='reset', r_min=0); it takes no "
                    f"{name!r} — use BayesianLayer"
                )
        super().__init__(
            hidden_size,
            expand_v,
            head_dim,
            num_heads,
            num_v_heads,
            mode,
            use_gate,
            use_short_conv,
            allow_neg_eigval,
            conv_size,
            conv_bias,
            layer_idx,
            norm_eps,
            output_gate_activation,
            retention="reset",
            chunk_size=chunk_size,
            validate=validate,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
