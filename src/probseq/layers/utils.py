"""Small helpers shared by the mixers: input checks, padding, head layout, fla's modes, initialisation.

Every mixer starts its forward with :func:`layer_inputs`: ``hidden_states`` of the layer's width, dtype and
device; ``attention_mask`` in one convention for all mixers (:data:`MASK_CONVENTION`); ``cu_seqlens``
matching ``T``; with ``validate=True``, finite real tokens. Bad inputs raise a ``ValueError`` naming them
before any projection or convolution runs.

Padding (fla's 2-D ``attention_mask``, 0 = padding) is handled without moving tokens: a padded token is
made *state-preserving* — its key is zeroed (it writes nothing), its decay is 1 (``g = 0``) and its
retention is 1 (``γ = 1``, the covariance is kept) — and its short-convolution input is zeroed, which is
exactly the zero history a sequence run alone starts from. Each sequence of a left-padded batch therefore
gets the state and outputs it would get alone; outputs at padded positions are zero, as fla's re-padding
leaves them. Every one of these is a selection (``torch.where``), never a product with the mask, and the
padded hidden states themselves are replaced by zeros first: ``0 · NaN = NaN``, so a product would carry a
NaN or Inf at a padded position into the chunk sums of the real tokens.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from probseq.ops.validation import ValueChecks, check_cu_seqlens

MASK_CONVENTION = (
    "fla's 0/1 padding mask [B, T] (1 = real token, 0 = padding), as bool or as integers/floats that are exactly 0 or 1"
)


class LayerInputs(NamedTuple):
    """A mixer's checked inputs (:func:`layer_inputs`).

    Attributes:
        x: ``hidden_states [B, T, D]`` with zeros at padded positions.
        mask: ``[B, T]`` real tokens among the current ones (``None``: no padding).
        full_mask: the whole ``attention_mask`` as bool ``[B, T_all]`` (``None`` without one).
        cu_seqlens: ``[S + 1]`` packed sequence boundaries, checked against ``T`` (or ``None``).
    """

    x: Tensor
    mask: Tensor | None
    full_mask: Tensor | None
    cu_seqlens: Tensor | None


def layer_inputs(
    layer: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None, cu_seqlens: Tensor | None, weight: Tensor
) -> LayerInputs:
    """Check a mixer's inputs at its boundary, before any projection or convolution.

    ``hidden_states`` must be ``[B, T, hidden_size]`` with the dtype and device of ``weight`` (the input
    projection; float32, bfloat16 or float16 under autocast); ``attention_mask`` follows
    :data:`MASK_CONVENTION`; ``cu_seqlens`` must be ``[0, …, T]``, nondecreasing (the ops' check, done here
    whatever ``validate`` is: a wrong packing is otherwise silent or fails deep inside). Padded positions are
    *selected* away (``where``, not a multiplication), so NaN or Inf there never reaches a real token. With
    ``layer.validate`` the real tokens of ``hidden_states`` must be finite; the message names the first bad
    ``(batch, time)``. Host synchronisations: ``cu_seqlens`` and ``validate`` share one; a mask costs one
    (two if it is not bool: its values are checked).
    """
    check_hidden_states(layer, hidden_states, weight)
    full = full_padding_mask(hidden_states, attention_mask, cu_seqlens)
    mask = current_mask(full, hidden_states.shape[1])
    x = keep_real(hidden_states, mask)
    validate = getattr(layer, "validate", False)
    if cu_seqlens is not None or validate:  # no value check (and no synchronisation) otherwise
        checks = ValueChecks()
        check_cu_seqlens(cu_seqlens, hidden_states.shape[0], hidden_states.shape[1], checks)
        if validate:
            checks.finite("hidden_states", x, dims=("batch", "time"))
        checks.resolve()
    return LayerInputs(x, mask, full, cu_seqlens)


def check_hidden_states(layer: nn.Module, hidden_states: Tensor, weight: Tensor) -> None:
    """``hidden_states`` is ``[B, T, hidden_size]`` with ``weight``'s dtype (any float under autocast) and device."""
    name = type(layer).__name__
    if not isinstance(hidden_states, Tensor):
        raise ValueError(f"hidden_states must be a torch.Tensor [B, T, D], got {type(hidden_states).__name__}")
    if hidden_states.dim() != 3 or hidden_states.shape[-1] != layer.hidden_size:
        raise ValueError(
            f"hidden_states must have shape [B, T, D] with D = hidden_size = {layer.hidden_size} of "
            f"{name}, got {list(hidden_states.shape)}"
        )
    device_type = hidden_states.device.type  # autocast exists for cpu, cuda, …, not for meta
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    allowed = {weight.dtype} | ({torch.float32, torch.bfloat16, torch.float16} if autocast else set())
    if hidden_states.dtype not in allowed:
        raise ValueError(
            f"hidden_states has dtype {hidden_states.dtype}, {name}'s parameters are {weight.dtype}: "
            f"cast the input (hidden_states.to({weight.dtype})) or the layer (layer.to(dtype)), or run "
            "under torch.autocast"
        )
    if hidden_states.device != weight.device:
        raise ValueError(f"hidden_states is on {hidden_states.device}, {name}'s parameters are on {weight.device}")


def full_padding_mask(hidden_states: Tensor, attention_mask: Tensor | None, cu_seqlens: Tensor | None) -> Tensor | None:
    """Check the padding inputs of a mixer; return ``attention_mask`` as bool ``[B, T_all]`` on the device of
    ``hidden_states`` (``None`` without one).

    Args:
        hidden_states: ``[B, T, D]``.
        attention_mask: fla's 0/1 padding mask ``[B, T_all]`` (0 = padding), ``T_all ≥ T``: while decoding
            it covers the cached tokens too, and its last ``T`` columns are the current tokens. Bool, or
            integers/floats that are all exactly 0 or 1; anything else (an additive 0/−inf mask, ``2·m``,
            ``0.5·m``, NaN) is refused — one host synchronisation checks the values.
        cu_seqlens: ``[S + 1]`` boundaries of packed sequences (``B == 1``).
    """
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must have shape [B, T, D], got {list(hidden_states.shape)}")
    batch, length, _ = hidden_states.shape
    if cu_seqlens is not None:
        if attention_mask is not None:
            raise ValueError("pass either attention_mask (padded batch) or cu_seqlens (packed sequences), not both")
        if batch != 1:
            raise ValueError(f"packed sequences (cu_seqlens) need batch size 1, got hidden_states of batch {batch}")
        return None
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise ValueError(
            f"attention_mask must be a torch.Tensor, {MASK_CONVENTION}; got {type(attention_mask).__name__}"
        )
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
        raise ValueError(
            "attention_mask must be a 0/1 padding mask [B, T] (0 = padding) covering the current "
            f"tokens, got shape {list(attention_mask.shape)} for hidden_states "
            f"{list(hidden_states.shape)}; "
            "arbitrary [B, T, T] masks are not supported"
        )
    mask = attention_mask.to(hidden_states.device)
    if mask.dtype != torch.bool and not torch.compiler.is_compiling():  # (a data-dependent check: eager only)
        binary = (mask == 0) | (mask == 1)
        if not bool(binary.all()):
            bad = mask[~binary]
            raise ValueError(
                f"attention_mask must be {MASK_CONVENTION}; got {mask.dtype} values such as "
                f"{bad[:3].tolist()} ({bad.numel()} not 0 or 1). An additive mask (0 = keep, "
                "-inf = padding) is not this convention: pass (attention_mask == 0) instead"
            )
    return mask != 0


def current_mask(full_mask: Tensor | None, length: int) -> Tensor | None:
    """The last ``length`` columns of a bool mask ``[B, T_all]`` (``None`` if there are no padded ones; under
    ``torch.compile`` the columns as they are, without the host read that would break the graph)."""
    if full_mask is None:
        return None
    mask = full_mask[:, full_mask.shape[1] - length :]
    if torch.compiler.is_compiling():
        return mask
    return None if bool(mask.all()) else mask


def check_mask_width(full_mask: Tensor | None, length: int, cached: bool) -> None:
    """A mixer's ``attention_mask`` ``[B, T_all]`` covers exactly the current ``length`` tokens when nothing is
    cached (a wider one is misaligned, not a history: refusing it beats silently reading its last columns)."""
    if full_mask is not None and not cached and full_mask.shape[1] != length:
        raise ValueError(
            f"attention_mask has {full_mask.shape[1]} columns for {length} tokens and no cached state: it must "
            "be [B, T] (only while decoding from past_key_values may it also cover the cached tokens)"
        )


#: the keyword arguments a mixer's ``forward`` reads (besides its named ones); others are ignored, as fla's
#: layers ignore them (a model passes its own extras, e.g. the Trainer's ``num_items_in_batch``)
FORWARD_KEYWORDS = ("cu_seqlens", "position_ids", "cache_position", "output_variance")
_FORWARD_NAMES = (
    *FORWARD_KEYWORDS,
    "hidden_states",
    "attention_mask",
    "past_key_values",
    "use_cache",
    "output_attentions",
)


def check_forward_keywords(layer: nn.Module, kwargs: dict) -> None:
    """Refuse a keyword that misspells one a mixer reads (``atention_mask``, ``past_key_value``,
    ``cu_seqlen``): it would otherwise be ignored, and the layer would run unmasked, uncached or unpacked."""
    for key in kwargs:
        if key in FORWARD_KEYWORDS:
            continue
        close = difflib.get_close_matches(key, _FORWARD_NAMES, n=1, cutoff=0.8)
        if close:
            raise ValueError(
                f"{type(layer).__name__}.forward got the keyword {key!r}: did you mean {close[0]!r}? "
                "(it would have been ignored)"
            )


def padding_mask(hidden_states: Tensor, attention_mask: Tensor | None, cu_seqlens: Tensor | None) -> Tensor | None:
    """Check a mixer's padding inputs (:func:`full_padding_mask`) and return the boolean mask ``[B, T]`` of
    the current real tokens (``None``: no padding)."""
    return current_mask(full_padding_mask(hidden_states, attention_mask, cu_seqlens), hidden_states.shape[1])


def keep_real(x: Tensor | None, mask: Tensor | None, fill: float = 0.0) -> Tensor | None:
    """``x [B, T, ...]`` at real tokens, ``fill`` at padded ones — a selection, so a NaN or Inf at a padded
    position is dropped (``0 · NaN`` would be NaN)."""
    if x is None or mask is None:
        return x
    return torch.where(mask.reshape(*mask.shape, *([1] * (x.dim() - 2))), x, fill)


def hold_padding(
    mask: Tensor | None, k: Tensor, g: Tensor | None, beta: Tensor | None = None, gamma: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Make padded tokens state-preserving: ``k = 0``, ``g = 0``, ``γ = 1`` and ``β = 1/2`` (any ``β``
    in ``(0, 1)`` keeps the noise ``r > 0``, so the innovation variance of a zero key stays positive).
    Every one is a selection (:func:`keep_real`), so whatever the padded values were never matters.

    Args:
        mask: ``[B, T]`` real tokens, or ``None`` (returns the inputs unchanged).
        k: ``[B, T, H, K]``; g: ``[B, T, H]`` or ``[B, T, H, K]``; beta, gamma: ``[B, T, H]``.
    """
    if mask is None:
        return k, g, beta, gamma
    return keep_real(k, mask), keep_real(g, mask), keep_real(beta, mask, 0.5), keep_real(gamma, mask, 1.0)


def guard_zero_keys(k: Tensor, beta: Tensor) -> Tensor:
    """``β = 1/2`` wherever a key is exactly zero. Such a token writes nothing whatever ``β`` is, but with
    ``β = 1`` and no noise floor its innovation variance ``‖k‖² + r`` would be ``0/0``."""
    return torch.where(k.abs().amax(-1) == 0, 0.5, beta)  # = (k == 0).all(-1), 5× faster on a CPU


def zero_padding(x: Tensor | None, mask: Tensor | None) -> Tensor | None:
    """Zero ``x [B, T, ...]`` at padded positions (a selection: NaN there becomes 0 too)."""
    return keep_real(x, mask)


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32, or in float64 if it is float64: the precision a layer computes its gates, norms and
    rotations in (half-precision inputs go up to float32; a float64 layer stays float64, so ``gradcheck`` and
    float64 references see float64 throughout)."""
    return x if x.dtype == torch.float64 else x.float()


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / max(‖x‖, eps)`` along the last dim, in float32 (float64 stays float64).

    The keys are then unit-norm to float rounding, which makes the covariance-reset write key
    ``k/(‖k‖² + r)`` equal to the delta rule's ``β k`` (docs/design-model.md §6). fla's kernels divide by
    ``sqrt(‖x‖² + 1e-6)`` instead; the two differ by ``O(1e-6/‖x‖²)``.
    """
    return torch.nn.functional.normalize(upcast(x), dim=-1, eps=eps)


def repeat_heads(x: Tensor, groups: int) -> Tensor:
    """``[B, T, H, ·] → [B, T, H·groups, ·]``: head ``h`` serves heads ``h·groups … h·groups + groups − 1``
    (fla's grouped-value / grouped-query layout)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


#: fla's kernel choice (a layer's ``mode``) → the filter form probseq runs for it (the ops' ``impl``).
MODES = {"chunk": "auto", "fused_chunk": "auto", "fused_recurrent": "recurrent"}
#: The modes of fla's delta-rule layers (``GatedDeltaNet``, ``DeltaNet``): no ``fused_chunk``.
DELTA_RULE_MODES = ("chunk", "fused_recurrent")


def check_mode(mode: object, modes: tuple[str, ...] = DELTA_RULE_MODES) -> None:
    """Refuse a ``mode`` the layer does not offer (``modes``: its names among :data:`MODES`)."""
    if mode not in modes:
        raise ValueError(f"mode must be one of {modes}, got {mode!r}")


def head_dims(hidden_size: int, expand_k: float, expand_v: float, num_heads: int) -> tuple[int, int]:
    """``(key_dim, value_dim) = (hidden_size · expand_k, hidden_size · expand_v)``, each refused unless a positive
    integer divisible by ``num_heads`` (fla's ``DeltaNet`` / ``LinearAttention`` sizes)."""
    key_dim, value_dim = hidden_size * expand_k, hidden_size * expand_v
    for name, dim in (("hidden_size * expand_k", key_dim), ("hidden_size * expand_v", value_dim)):
        if not math.isclose(dim, round(dim)) or round(dim) <= 0 or round(dim) % num_heads:
            raise ValueError(f"{name} = {dim} must be a positive integer divisible by num_heads={num_heads}")
    return round(key_dim), round(value_dim)


def check_positive(**values: object) -> None:
    """Raise a ``ValueError`` naming the first argument that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def delta_chunk_size(head_dim: int, chunk_size: int | None, covariance: bool = True) -> int:
    """The chunk length of a delta-rule layer's chunked form: ``chunk_size``, or by default half the key head dim
    between 16 (with a covariance path; 32 without: Gated DeltaNet, DeltaNet, and the Bayesian Layer's mean path) and
    64 — K = 32 → 16 (32), 64 → 32, ≥ 128 → 64. Exact for every length; on a CPU it was the fastest measured, or
    within 5 %, at K = 32, 64 and 128 (docs/numerics.md, "Chunk sizes"; ``python scripts/chunk_sizes.py``)."""
    if chunk_size is None:
        return min(64, max(16 if covariance else 32, head_dim // 2))
    check_positive(chunk_size=chunk_size)
    return chunk_size


def check_no_extra(layer: str, kwargs: dict) -> None:
    """Refuse constructor arguments a layer does not know (fla layers swallow them silently)."""
    if kwargs:
        raise ValueError(f"{layer} got unsupported argument(s) {sorted(kwargs)}")


def own_stream(parameter: str, layer_idx: int | None) -> torch.Generator:
    """A CPU generator for a parameter that only some variants of a model have (the learned retention's
    ``c_weight``), seeded from the run's seed (``torch.initial_seed()``, what ``torch.manual_seed`` /
    ``transformers.set_seed`` set), the parameter's name and its layer::

        seed = first 63 bits of sha256(f"{torch.initial_seed()}/{parameter}/{layer_idx}")

    Drawing it from here instead of the global stream leaves every later draw of the global stream where it
    would be without the parameter, so the parameters a variant shares with Gated DeltaNet start bit-identical
    for one seed (docs/training.md, "Initialisation")."""
    key = f"{torch.initial_seed()}/{parameter}/{layer_idx}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)


def log_uniform_decay_rate(num_heads: int, low: float, high: float) -> Tensor:
    """``A_log = log(A)``, ``A ~ U(low, high)`` per head (Mamba-2 / Gated DeltaNet initialisation)."""
    return torch.empty(num_heads, dtype=torch.float32).uniform_(low, high).log()


def inverse_softplus_step(num_heads: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> Tensor:
    """``dt_bias = softplus⁻¹(Δ)`` with ``Δ`` log-uniform in ``[dt_min, dt_max]`` (floored), per head."""
    log_dt = torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def gated_output(layer: nn.Module, o: Tensor, x: Tensor) -> Tensor:
    """The delta-rule layers' output: per-head RMSNorm of the filter output ``o [B, T, H, V]``, gated by
    ``SiLU(g_proj x)`` when ``layer.use_gate`` (fla's ``o_norm``), then ``o_proj`` → ``[B, T, D]``."""
    if layer.use_gate:
        o = layer.o_norm(o, rearrange(layer.g_proj(x), "b t (h d) -> b t h d", d=layer.head_v_dim))
    else:
        o = layer.o_norm(o)
    return layer.o_proj(rearrange(o, "b t h d -> b t (h d)"))


def num_sequences(hidden_states: Tensor, cu_seqlens: Tensor | None) -> int:
    """The sequences of a call, each with its own decoding state: ``B``, or ``S`` packed ones."""
    return hidden_states.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
