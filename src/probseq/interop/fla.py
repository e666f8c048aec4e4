"""flash-linear-attention Gated DeltaNet checkpoints ↔ probseq models (fla 0.6.0's format; docs/interop.md).

An fla ``GatedDeltaNetForCausalLM`` directory (``config.json`` with ``model_type = "gated_deltanet"``, weights in
``model.safetensors`` or safetensors shards with ``model.safetensors.index.json``) becomes a
:class:`~probseq.models.ProbSeqForCausalLM` whose recurrent layers are Bayesian Layers, and back::

    convert_fla(src, dst, retention="reset")     # the same model: Gated DeltaNet is the covariance reset
    convert_fla(src, dst, retention="learned")   # + c_weight, c_bias, c_scale at the start c_scale = 0 (γ ≡ 0)
    export_fla(model_or_dir, dst)                # a model that is a Gated DeltaNet → an fla directory

**Tensors.** probseq's blocks and mixers carry fla's parameter names (``models/blocks.py``,
``layers/bayesian.py``), so the tensor map is the identity on names (the table is in docs/interop.md). The
converter checks the checkpoint's name set and every shape against the model its mapped config builds: a
missing, unexpected or mis-shaped tensor is an error naming it. The only tensors added are learned
retention's ``c_weight c_bias c_scale`` (:attr:`BayesianLayer.RETENTION_PARAMETERS`), at their
function-preserving start; export drops them again and refuses a model whose retention ``ρ`` is not 0.

**Config.** Every field of fla 0.6.0's ``GatedDeltaNetConfig`` is either mapped to :class:`ProbSeqConfig`
(:data:`MAPPED_FIELDS`), a kernel or loss-implementation choice that does not change the function
(:data:`KERNEL_CHOICES`), the hybrid-attention spec ``attn``, or fixed to the one value probseq computes
(:data:`FIXED_FIELDS`; another value is refused with the reason). transformers' generic keys are ignored;
any other key is refused, so a field that changes the function is never dropped silently.

Neither direction imports fla: reading and writing its checkpoints needs json and safetensors only.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from transformers import PretrainedConfig

from probseq.files import atomic_write_text
from probseq.layers import RETENTIONS, BayesianLayer
from probseq.models import ProbSeqConfig, ProbSeqForCausalLM
from probseq.ops import R_MIN

FLA_MODEL_TYPE = "gated_deltanet"
FLA_ARCHITECTURE = "GatedDeltaNetForCausalLM"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

#: fla ``GatedDeltaNetConfig`` fields taken over by :class:`ProbSeqConfig` under the same name.
MAPPED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_heads",
    "num_v_heads",
    "head_dim",
    "expand_v",
    "use_gate",
    "use_short_conv",
    "conv_size",
    "output_gate_activation",
    "hidden_ratio",
    "intermediate_size",
    "norm_eps",
    "max_position_embeddings",
    "initializer_range",
    "tie_word_embeddings",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)

#: Kernel and loss-implementation choices (accepted values): the same function whatever their value.
KERNEL_CHOICES = {
    "attn_mode": ("chunk", "fused_recurrent"),
    "fuse_norm": (True, False),
    "fuse_swiglu": (True, False),
    "fuse_cross_entropy": (True, False),
    "fuse_linear_cross_entropy": (True, False),
}

#: Fields that change the function, with the one value probseq computes and why another is refused.
FIXED_FIELDS = {
    "allow_neg_eigval": (
        False,
        "it doubles β to (0, 2), and a write strength above 1 has no write-noise "
        "counterpart r = (1 − β)/β ≥ 0 in the Bayesian Layer",
    ),
    "hidden_act": ("swish", "probseq's MLP is SwiGLU; fla's 'powlu' gated MLP has no counterpart"),
    "use_l2warp": (
        False,
        "it adds an L2 penalty on the largest logit to the training gradient, which "
        "ProbSeqForCausalLM's loss does not apply (set it to false in config.json to convert "
        "anyway, e.g. for inference)",
    ),
    "attnres_block_size": (
        None,
        "attention residuals (learned mixing of earlier layers' outputs in place of "
        "the residual stream) are not part of probseq's pre-norm block",
    ),
}

#: Keys of fla's hybrid-attention spec ``attn`` (fla.models.configuration_utils.AttentionSpec).
ATTENTION_SPEC_KEYS = ("layers", "num_heads", "num_kv_heads", "qkv_bias", "window_size", "rope_theta")

#: transformers' own config keys (metadata and generic options), ignored; a few older spellings included.
_LEGACY_GENERIC_KEYS = ("torch_dtype", "auto_map", "tokenizer_class", "use_return_dict", "_attn_implementation")


def _generic_keys() -> set[str]:
    return set(PretrainedConfig().to_dict()) | set(_LEGACY_GENERIC_KEYS)


# ---------------------------------------------------------------------------------------------------------
# Config: fla → probseq
# ---------------------------------------------------------------------------------------------------------


def config_from_fla(fla_config: dict, retention: str = "reset") -> ProbSeqConfig:
    """The :class:`ProbSeqConfig` of an fla ``GatedDeltaNetConfig`` (given as its ``config.json`` dict).

    Args:
        fla_config: the fields of fla's ``config.json``.
        retention: the Bayesian Layers' certainty retention, ``"reset"`` (Gated DeltaNet itself),
            ``"learned"`` (starts at ``ρ = 0``, i.e. Gated DeltaNet) or ``"stationary"`` (``γ = α²``).

    Returns:
        A ``ProbSeqConfig`` with ``mixer="bayesian"`` and fla's hybrid attention layers, if any.

    Raises:
        ValueError: naming the field, for a wrong ``model_type``, a refused value (:data:`FIXED_FIELDS`), an
            invalid kernel choice, an ``attn`` spec probseq cannot honour, or a key that is not a field of
            fla 0.6.0's ``GatedDeltaNetConfig``.
    """
    if retention not in RETENTIONS:
        raise ValueError(f"retention must be one of {RETENTIONS}, got {retention!r}")
    if not isinstance(fla_config, dict):
        raise ValueError(f"the fla config must be a dict (config.json), got {type(fla_config).__name__}")
    model_type = fla_config.get("model_type")
    if model_type != FLA_MODEL_TYPE:
        raise ValueError(f"model_type must be {FLA_MODEL_TYPE!r} (fla's GatedDeltaNetConfig), got {model_type!r}")
    generic = _generic_keys()
    known = set(MAPPED_FIELDS) | set(KERNEL_CHOICES) | set(FIXED_FIELDS) | {"attn"} | generic
    unknown = sorted(set(fla_config) - known)
    if unknown:
        raise ValueError(
            f"fla config field(s) {unknown} are not fields of fla 0.6.0's GatedDeltaNetConfig; "
            "probseq does not know what they change and refuses to drop them"
        )
    for name, choices in KERNEL_CHOICES.items():
        if name in fla_config and fla_config[name] not in choices:
            raise ValueError(f"fla config field {name!r} must be one of {choices}, got {fla_config[name]!r}")
    for name, (value, reason) in FIXED_FIELDS.items():
        if name in fla_config and fla_config[name] != value:
            raise ValueError(
                f"fla config field {name}={fla_config[name]!r} is refused (probseq computes {name}={value!r}): {reason}"
            )
    kwargs = {name: fla_config[name] for name in MAPPED_FIELDS if name in fla_config}
    kwargs.update(_attention_from_fla(fla_config.get("attn"), fla_config.get("num_hidden_layers")))
    try:
        return ProbSeqConfig(
            mixer="bayesian", retention=retention, retention_init=0.0, conv_bias=False, allow_neg_eigval=False, **kwargs
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"the fla config does not make a valid probseq model: {error}") from None


def _attention_from_fla(attn, num_layers) -> dict:
    """ProbSeqConfig's hybrid fields from fla's ``attn`` spec (a dict or a list of dicts)."""
    if attn is None:
        return {}
    specs = [attn] if isinstance(attn, dict) else attn
    if not isinstance(specs, list) or not specs or not all(isinstance(spec, dict) for spec in specs):
        raise ValueError(f"fla config field 'attn' must be null, a dict or a non-empty list of dicts, got {attn!r}")
    layers: list[int] = []
    settings = []
    for spec in specs:
        unknown = sorted(set(spec) - set(ATTENTION_SPEC_KEYS))
        if unknown:
            raise ValueError(
                f"fla config field 'attn' has key(s) {unknown} that fla 0.6.0's attention spec does not "
                f"have ({', '.join(ATTENTION_SPEC_KEYS)})"
            )
        if "layers" not in spec or "num_heads" not in spec:
            raise ValueError(f"fla config field 'attn' needs 'layers' and 'num_heads' in every spec, got {spec!r}")
        if spec.get("window_size") is not None:
            raise ValueError(
                f"fla config field 'attn' has window_size={spec['window_size']!r}: sliding-window "
                "attention is not supported by probseq's Attention layer"
            )
        rope_theta = spec.get("rope_theta", 10000.0)
        if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or not rope_theta > 0:
            raise ValueError(f"fla config field 'attn' has rope_theta={rope_theta!r}; it must be a positive number")
        layers += list(spec["layers"])
        num_kv_heads = spec.get("num_kv_heads")
        settings.append(
            (
                spec["num_heads"],
                spec["num_heads"] if num_kv_heads is None else num_kv_heads,
                bool(spec.get("qkv_bias", False)),
                float(rope_theta),
            )
        )
    if len(set(settings)) > 1:
        raise ValueError(
            f"fla config field 'attn' gives attention layers different settings {sorted(set(settings))} "
            "(num_heads, num_kv_heads, qkv_bias, rope_theta); probseq has one setting for all of them"
        )
    num_heads, num_kv_heads, qkv_bias, rope_theta = settings[0]
    return dict(
        attn_layers=sorted(layers),
        attn_num_heads=num_heads,
        attn_num_kv_heads=num_kv_heads,
        qkv_bias=qkv_bias,
        rope_theta=rope_theta,
    )


# ---------------------------------------------------------------------------------------------------------
# Config: probseq → fla
# ---------------------------------------------------------------------------------------------------------


def config_to_fla(config: ProbSeqConfig) -> dict:
    """fla 0.6.0 ``GatedDeltaNetConfig`` fields (a ``config.json`` dict) of a probseq config whose recurrent
    layers are Gated DeltaNets: mixer ``gated_deltanet``, or ``bayesian`` with retention ``reset`` or
    ``learned`` (export checks that its ``ρ`` is 0), hybrid attention allowed.

    Raises:
        ValueError: naming what fla's Gated DeltaNet cannot represent (another mixer, ``stationary``
            retention, ``conv_bias``, a noise floor ``r_min`` above ``R_MIN``, attention without rotary).
    """
    mixers = sorted(set(config.layer_mixers) - {"attention"})
    if len(mixers) > 1 or (mixers and mixers[0] not in ("gated_deltanet", "bayesian")):
        raise ValueError(
            f"only gated_deltanet / bayesian (+ attention) models can be exported to fla's Gated "
            f"DeltaNet, got mixers {sorted(set(config.layer_mixers))}"
        )
    if mixers == ["bayesian"] and config.retention == "stationary":
        raise ValueError(
            "retention='stationary' (γ = α²) is not a Gated DeltaNet; only 'reset' and 'learned' at "
            "ρ = 0 can be exported"
        )
    if config.conv_bias:
        raise ValueError("conv_bias=True cannot be exported: fla's GatedDeltaNetConfig has no conv bias")
    if config.allow_neg_eigval:
        raise ValueError("allow_neg_eigval=True is not a probseq model")
    if mixers == ["bayesian"] and config.r_min is not None and config.r_min > R_MIN:
        raise ValueError(
            f"r_min={config.r_min} > {R_MIN}: the noise floor changes every write with "
            f"β > 1/(1 + r_min), so the model is not a Gated DeltaNet"
        )
    fla = {
        "model_type": FLA_MODEL_TYPE,
        "architectures": [FLA_ARCHITECTURE],
        **{name: getattr(config, name) for name in MAPPED_FIELDS},
        "attn_mode": "chunk",
        "fuse_norm": True,
        "fuse_swiglu": True,
        "fuse_cross_entropy": True,
        "fuse_linear_cross_entropy": False,
        **{name: value for name, (value, _) in FIXED_FIELDS.items()},
        "attn": None,
    }
    layers = [i for i, name in enumerate(config.layer_mixers) if name == "attention"]
    if layers:
        if config.rope_theta is None or not config.rope_theta > 0:
            raise ValueError(
                f"attention with rope_theta={config.rope_theta!r} cannot be exported: fla's attention "
                "always applies rotary embeddings"
            )
        num_heads = config.attn_num_heads or config.num_heads
        fla["attn"] = {
            "layers": layers,
            "num_heads": num_heads,
            "num_kv_heads": config.attn_num_kv_heads or num_heads,
            "qkv_bias": bool(config.qkv_bias),
            "window_size": None,
            "rope_theta": float(config.rope_theta),
        }
    return fla


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


def _read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def _read_safetensors(directory: Path) -> dict[str, Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed by ``model.safetensors.index.json``."""
    single, index = directory / WEIGHTS_NAME, directory / WEIGHTS_INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({error!r})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shard(s) that do not exist: {missing}")
    else:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{directory}: no safetensors weights, only torch pickles {pickles}; probseq reads "
                "safetensors only (re-save the model with save_pretrained(safe_serialization=True))"
            )
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")
    tensors: dict[str, Tensor] = {}
    for path in files:
        try:
            shard = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path}: cannot read safetensors ({error})") from None
        twice = sorted(set(shard) & set(tensors))
        if twice:
            raise ValueError(f"{path}: tensor(s) {twice} also appear in another shard")
        tensors.update(shard)
    return tensors


def _retention_tensor_names(model: ProbSeqForCausalLM) -> list[str]:
    """State-dict names of the learned-retention parameters (the tensors an fla checkpoint lacks)."""
    return [
        f"{name}.{parameter}"
        for name, module in model.named_modules()
        if isinstance(module, BayesianLayer) and module.retention == "learned"
        for parameter in BayesianLayer.RETENTION_PARAMETERS
    ]


def _check_tensors(tensors: dict[str, Tensor], model: ProbSeqForCausalLM, source: Path) -> dict[str, Tensor]:
    """The checkpoint tensors to load, after checking names and shapes against ``model`` (fla names are ours)."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    for name in _retention_tensor_names(model):
        expected.pop(name)
    tied = model.config.tie_word_embeddings
    if tied:  # stored once, as the embeddings; a saved copy of the head is fla's tied alias and is ignored
        expected.pop("lm_head.weight")
        tensors = {name: tensor for name, tensor in tensors.items() if name != "lm_head.weight"}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {missing}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {unexpected}")
    problems += [
        f"tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)}"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    if problems:
        raise ValueError(
            f"{source}: the weights do not match the Gated DeltaNet its config.json describes: " + "; ".join(problems)
        )
    return tensors


def _resolve_dtype(dtype, tensors: dict[str, Tensor]) -> torch.dtype:
    if dtype is None:
        found = {t.dtype for t in tensors.values() if t.is_floating_point()}
        return found.pop() if len(found) == 1 else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)} or a torch floating dtype, got {dtype!r}")
        return DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a torch floating dtype, got {dtype!r}")
    return dtype


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def convert_fla(
    src_dir, dst_dir, retention: str = "reset", dtype: torch.dtype | str | None = None
) -> ProbSeqForCausalLM:
    """Convert an fla ``GatedDeltaNetForCausalLM`` directory into a probseq model and save it.

    Args:
        src_dir: fla's directory (``config.json`` + ``model.safetensors`` or safetensors shards with
            ``model.safetensors.index.json``; torch pickles are not read).
        dst_dir: where the :class:`ProbSeqForCausalLM` is written (``save_pretrained``, safetensors), with
            the tokenizer files of ``src_dir`` if it has any.
        retention: ``"reset"`` — the same model (Gated DeltaNet is the Bayesian Layer's covariance reset);
            ``"learned"`` — adds ``c_weight c_bias c_scale`` per layer at ``c_scale = 0`` (``γ ≡ 0``: the same
            function wherever ``β ≤ 1/(1 + r_min)``, ``r_min = 1e-4``), ready to learn its retention;
            ``"stationary"`` — ``γ = α²`` (a different model, started from the GDN's weights).
        dtype: dtype of the saved model; ``None`` keeps the checkpoint's (float32 if it mixes dtypes).

    Returns:
        The converted model, in eval mode.

    Raises:
        FileNotFoundError: no such directory, no ``config.json`` or no weights.
        ValueError: a refused or unknown config field (named), or a missing / unexpected / mis-shaped
            tensor (named).
    """
    src, dst = Path(src_dir), Path(dst_dir)
    fla_config = _read_config(src)
    config = config_from_fla(fla_config, retention)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the destination is the fla source directory; choose another")
    tensors = _read_safetensors(src)
    target_dtype = _resolve_dtype(dtype, tensors)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the one random tensor added (learned retention's c_weight) is reproducible
        model = ProbSeqForCausalLM(config)
    tensors = _check_tensors(tensors, model, src)
    model.load_state_dict(tensors, strict=False)
    model = model.to(target_dtype).eval()
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    _copy_tokenizer(src, dst)
    return model


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------


def _load_probseq(model_or_dir) -> tuple[ProbSeqForCausalLM, Path | None]:
    if isinstance(model_or_dir, ProbSeqForCausalLM):
        return model_or_dir, None
    if not isinstance(model_or_dir, (str, Path)):
        raise ValueError(f"export_fla takes a ProbSeqForCausalLM or its directory, got {type(model_or_dir).__name__}")
    directory = Path(model_or_dir)
    model_type = _read_config(directory).get("model_type")
    if model_type != ProbSeqConfig.model_type:
        hint = " (an fla checkpoint: convert it with convert_fla)" if model_type == FLA_MODEL_TYPE else ""
        raise ValueError(f"{directory}: not a probseq model directory (model_type={model_type!r}){hint}")
    return ProbSeqForCausalLM.from_pretrained(directory), directory


def export_fla(model_or_dir, dst_dir) -> Path:
    """Write a probseq model that is a Gated DeltaNet as an fla ``GatedDeltaNetForCausalLM`` directory.

    The model's recurrent mixers must be ``gated_deltanet``, or ``bayesian`` with ``retention="reset"``, or
    ``"learned"`` with ``ρ = clamp(c_scale, 0, 1) = 0`` in every layer (its ``c_*`` tensors are dropped);
    hybrid attention layers become fla's ``attn`` spec. ``dst_dir`` gets fla's ``config.json`` (every
    ``GatedDeltaNetConfig`` field) and the weights under fla's names as safetensors (sharded like
    ``save_pretrained`` when large), which fla's ``AutoModelForCausalLM.from_pretrained`` loads with no
    missing or unexpected keys. Weight files already in ``dst_dir`` are replaced.

    Args:
        model_or_dir: a :class:`ProbSeqForCausalLM` or a directory saved by it.
        dst_dir: the fla directory to write.

    Returns:
        ``dst_dir`` as a ``Path``.

    Raises:
        ValueError: naming what makes the model something other than a Gated DeltaNet.
    """
    from huggingface_hub import save_torch_state_dict

    dst = Path(dst_dir)
    if isinstance(model_or_dir, (str, Path)) and dst.exists() and dst.resolve() == Path(model_or_dir).resolve():
        raise ValueError(f"{dst}: the destination is the probseq source directory; choose another")
    model, src = _load_probseq(model_or_dir)
    fla_config = config_to_fla(model.config)
    for name, module in model.named_modules():
        if isinstance(module, BayesianLayer) and module.retention == "learned":
            rho = module.c_scale.detach().float().clamp(0, 1)
            if bool((rho != 0).any()):
                raise ValueError(
                    f"{name}: learned retention is non-zero (max ρ = {rho.max().item():.3g}); with "
                    "γ ≠ 0 the layer is not a Gated DeltaNet and fla cannot represent it"
                )
    dropped = set(_retention_tensor_names(model))
    if model.config.tie_word_embeddings:
        dropped.add("lm_head.weight")  # fla stores tied weights once, as the embeddings
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items() if name not in dropped}
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    fla_config["dtype"] = str(dtypes.pop() if len(dtypes) == 1 else torch.float32).removeprefix("torch.")

    dst.mkdir(parents=True, exist_ok=True)
    for stale in [*dst.glob("model*.safetensors"), dst / WEIGHTS_INDEX_NAME]:
        stale.unlink(missing_ok=True)
    save_torch_state_dict(tensors, dst, metadata={"format": "pt"})
    atomic_write_text(dst / "config.json", json.dumps(fla_config, indent=2, sort_keys=True) + "\n")
    if src is not None:
        _copy_tokenizer(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def convert_main(args: argparse.Namespace) -> int:
    try:
        model = convert_fla(args.src, args.dst, retention=args.retention, dtype=args.dtype)
    except OSError as error:  # a missing directory or file: the CLI reports it without a traceback
        raise ValueError(str(error)) from None
    config = model.config
    print(
        f"wrote {args.dst}: ProbSeqForCausalLM, {config.num_hidden_layers} layers "
        f"({', '.join(sorted(set(config.layer_mixers)))}), retention={config.retention}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {model.dtype}"
    )
    return 0


def export_main(args: argparse.Namespace) -> int:
    try:
        export_fla(args.src, args.dst)
    except OSError as error:
        raise ValueError(str(error)) from None
    print(f"wrote {args.dst}: fla {FLA_ARCHITECTURE}")
    return 0


__all__ = [
    "ATTENTION_SPEC_KEYS",
    "FIXED_FIELDS",
    "KERNEL_CHOICES",
    "MAPPED_FIELDS",
    "config_from_fla",
    "config_to_fla",
    "convert_fla",
    "convert_main",
    "export_fla",
    "export_main",
]
