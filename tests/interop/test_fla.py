"""flash-linear-attention checkpoint interop (probseq.interop.fla) against fla 0.6.0's own model.

The oracle is fla's ``GatedDeltaNetForCausalLM`` itself — built, initialised, saved and run by fla. Only the
calls it makes into Triton kernels (which do not run on CPU) are replaced, at the names fla's modules look
them up: the chunked / fused-recurrent gated delta rule by fla's ``naive_recurrent_gated_delta_rule`` (with
fla's ``naive_gdn_gate`` for the in-kernel gate, and the in-kernel ``sigmoid(β)`` and q/k L2 norm), the
fused short convolution, the fused (gated) RMS norms (fla's ``rms_norm_ref``), SwiGLU, rotary embeddings
(fla's ``rotary_embedding_ref``) and flash-attention (SDPA), each by a small torch function below.

One known difference remains between the two models: fla's kernels L2-normalise q and k as
``x / sqrt(‖x‖² + 1e-6)``, probseq as ``x / max(‖x‖, 1e-6)`` (``layers/utils.l2_normalize``), a relative
difference ``O(1e-6 / ‖x‖²)`` per head. Logits are compared against fla as it is (relative error ≤ 1e-4, the
float32 row of the tolerance table) and, to show that the conversion itself is exact, against fla with
probseq's normalisation (max absolute error at float32 rounding).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from probseq.cli import main as cli_main
from probseq.interop.fla import FIXED_FIELDS, KERNEL_CHOICES, MAPPED_FIELDS, config_from_fla, convert_fla, export_fla
from probseq.layers import BayesianLayer
from probseq.models import ProbSeqConfig, ProbSeqForCausalLM
from tests.helpers import TOLERANCE, assert_close

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # fla warns that Triton and flash-attn are unavailable on CPU
    fla_models = pytest.importorskip("fla.models")
    import fla.layers.attn as fla_attn
    import fla.layers.gated_deltanet as fla_gdn
    import fla.modules.mlp as fla_mlp
    import fla.modules.rotary.ops as fla_rotary
    from fla.modules.norm.fused_norm_gate import FusedRMSNormGated
    from fla.modules.norm.layernorm import RMSNorm as FlaRMSNorm
    from fla.modules.norm.layernorm import rms_norm_ref
    from fla.modules.rotary.ops import rotary_embedding_ref
    from fla.ops.gated_delta_rule.gate import naive_gdn_gate
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    from transformers import AutoModelForCausalLM

pytestmark = [
    pytest.mark.filterwarnings("ignore:ShortConvolution is crucial:UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]

VOCAB = 97
BASE = dict(
    vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=16, expand_v=1.0, initializer_range=0.1
)  # larger than fla's 0.02, so that the mixers move the logits visibly
CASES = {
    # fla's defaults for the kernel choices (fused norms, fused SwiGLU)
    "fla-defaults": dict(BASE),
    # unfused modules (nn.RMSNorm), no output gate (plain RMSNorm), no short convolution
    "unfused-no-gate-no-conv": dict(
        BASE, fuse_norm=False, fuse_swiglu=False, fuse_cross_entropy=False, use_gate=False, use_short_conv=False
    ),
    # grouped value heads, wider values, sigmoid output gate, tied embeddings, explicit MLP width
    "gva-sigmoid-tied": dict(
        BASE,
        num_v_heads=4,
        expand_v=2.0,
        output_gate_activation="sigmoid",
        tie_word_embeddings=True,
        intermediate_size=96,
        norm_eps=1e-5,
    ),
    # hybrid: softmax attention (grouped-query) in the middle layer
    "hybrid-attention": dict(BASE, num_hidden_layers=3, attn={"layers": [1], "num_heads": 4, "num_kv_heads": 2}),
}


# --- fla's model on CPU: its Triton calls replaced by pure-PyTorch equivalents ---------------------------


def fla_l2norm(x: torch.Tensor) -> torch.Tensor:
    """fla's in-kernel q/k normalisation (``l2norm_fwd``): ``x / sqrt(‖x‖² + 1e-6)`` in float32."""
    x = x.float()
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def probseq_l2norm(x: torch.Tensor) -> torch.Tensor:
    """probseq's convention, ``x / max(‖x‖, 1e-6)`` — only to show the conversion itself is exact."""
    return F.normalize(x.float(), dim=-1, eps=1e-6)


def gated_delta_rule(l2norm):
    """Stand-in for fla's ``chunk_gated_delta_rule`` / ``fused_recurrent_gated_delta_rule`` as
    ``GatedDeltaNet.forward`` calls them (raw gate and β, normalisation and sigmoid in the kernel)."""

    def run(
        q,
        k,
        v,
        g,
        beta,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        use_beta_sigmoid_in_kernel=False,
        allow_neg_eigval=False,
        use_gate_in_kernel=False,
        A_log=None,
        dt_bias=None,
        cu_seqlens=None,
        **kwargs,
    ):
        assert use_qk_l2norm_in_kernel and use_beta_sigmoid_in_kernel and use_gate_in_kernel
        assert initial_state is None and cu_seqlens is None
        groups = v.shape[2] // q.shape[2]  # fla's GVA: value head h reads q/k head h // groups
        q, k = l2norm(q).repeat_interleave(groups, 2), l2norm(k).repeat_interleave(groups, 2)
        g = naive_gdn_gate(g, A_log, dt_bias)
        beta = beta.float().sigmoid() * (2.0 if allow_neg_eigval else 1.0)
        o, state = naive_recurrent_gated_delta_rule(q, k, v, beta, g, output_final_state=output_final_state)
        return o.to(v.dtype), state  # the naive reference always returns float32

    return run


def causal_conv1d(x, weight, bias=None, activation=None, **kwargs):
    """fla's fused depthwise causal conv over ``x [B, T, D]`` with ``weight [D, W]``."""
    width = weight.shape[-1]
    y = F.conv1d(
        F.pad(x.transpose(1, 2), (width - 1, 0)), weight.reshape(weight.shape[0], 1, width), bias, groups=x.shape[-1]
    ).transpose(1, 2)
    return (F.silu(y) if activation in ("silu", "swish") else y), None


def rms_norm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    return rms_norm_ref(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=prenorm, upcast=True)


def gated_rms_norm_forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
    assert residual is None and not prenorm
    gate = torch.sigmoid(g.float()) if self.activation == "sigmoid" else F.silu(g.float())
    return (rms_norm_ref(x, self.weight, None, eps=self.eps, upcast=True).float() * gate).to(x.dtype)


def rotary_embedding(x, cos, sin, interleaved=False, seqlen_offsets=0, cu_seqlens=None, chunk_indices=None):
    assert seqlen_offsets == 0 and cu_seqlens is None
    return rotary_embedding_ref(x, cos[: x.shape[1]], sin[: x.shape[1]], interleaved)


def flash_attn_func(q, k, v, causal=False, window_size=(-1, -1), **kwargs):
    """flash-attn's causal attention on ``[B, T, H, D]``; query head h reads kv head h // groups."""
    assert causal and tuple(window_size) == (-1, -1)
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)


@contextlib.contextmanager
def fla_on_cpu(l2norm=fla_l2norm):
    """fla's model classes with their kernel calls replaced (construction needs it too: fla's attention
    refuses to build without flash-attn)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fla_gdn, "chunk_gated_delta_rule", gated_delta_rule(l2norm))
        patch.setattr(fla_gdn, "fused_recurrent_gated_delta_rule", gated_delta_rule(l2norm))
        patch.setattr(fla_gdn, "causal_conv1d", causal_conv1d)
        patch.setattr(FlaRMSNorm, "forward", rms_norm_forward)
        patch.setattr(FusedRMSNormGated, "forward", gated_rms_norm_forward)
        patch.setattr(fla_mlp, "swiglu", lambda gate, y: F.silu(gate) * y)
        patch.setattr(fla_mlp, "swiglu_linear", lambda x, y, weight, bias: F.linear(F.silu(x) * y, weight, bias))
        patch.setattr(fla_rotary, "rotary_embedding", rotary_embedding)
        patch.setattr(fla_attn, "flash_attn_func", flash_attn_func)
        yield


def fla_logits(model, ids, l2norm=fla_l2norm) -> torch.Tensor:
    with fla_on_cpu(l2norm), torch.no_grad():
        return model(ids, use_cache=False).logits


def our_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def tokens(batch=2, length=80, seed=0) -> torch.Tensor:  # 80 > 64: two chunks of probseq's chunked filter
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def build_fla(case: str, seed: int = 0):
    torch.manual_seed(seed)
    with fla_on_cpu():
        return fla_models.GatedDeltaNetForCausalLM(fla_models.GatedDeltaNetConfig(**CASES[case])).eval()


@pytest.fixture(scope="module")
def fla_dirs(tmp_path_factory):
    """Each case's fla model and its directory, saved by fla."""
    out = {}
    for case in CASES:
        model = build_fla(case)
        directory = tmp_path_factory.mktemp(f"fla-{case}")
        model.save_pretrained(directory)
        out[case] = (model, directory)
    return out


def edited_copy(src, dst, config_edit=None, tensor_edit=None):
    """A copy of the fla directory ``src`` with its config.json and/or tensors edited."""
    shutil.copytree(src, dst)
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if tensor_edit is not None:
        tensors = load_file(dst / "model.safetensors")
        tensor_edit(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# --- conversion against fla's model ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("retention", ["reset", "learned"])
def test_converted_model_matches_fla_logits(fla_dirs, tmp_path, case, retention):
    fla_model, src = fla_dirs[case]
    model = convert_fla(src, tmp_path / "probseq", retention=retention)
    ids = tokens()
    ours = our_logits(model, ids)
    assert_close(ours, fla_logits(fla_model, ids), TOLERANCE[torch.float32], f"{case}, {retention} vs fla")
    exact = (ours - fla_logits(fla_model, ids, l2norm=probseq_l2norm)).abs().max().item()
    assert exact <= 2e-5, f"{case}, {retention}: max |Δlogit| {exact:.3g} with probseq's L2 normalisation"

    # the saved directory is that model, for our class and the Auto class
    for loaded in (
        ProbSeqForCausalLM.from_pretrained(tmp_path / "probseq"),
        AutoModelForCausalLM.from_pretrained(tmp_path / "probseq"),
    ):
        assert type(loaded) is ProbSeqForCausalLM
        assert torch.equal(our_logits(loaded.eval(), ids), ours)
    layers = [m for m in model.modules() if isinstance(m, BayesianLayer)]
    assert layers and all(layer.retention == retention for layer in layers)
    assert model.config.layer_mixers == [
        "attention" if i in (CASES[case].get("attn") or {}).get("layers", ()) else "bayesian"
        for i in range(CASES[case]["num_hidden_layers"])
    ]
    if retention == "learned":  # the only tensors added, at the function-preserving start
        assert all(bool((layer.c_scale == 0).all()) and bool((layer.c_bias == 0).all()) for layer in layers)
        extra = set(model.state_dict()) - set(fla_model.state_dict())
        assert extra == {
            f"model.layers.{i}.attn.{name}"
            for i, block in enumerate(model.model.layers)
            if isinstance(block.attn, BayesianLayer)
            for name in BayesianLayer.RETENTION_PARAMETERS
        }


@pytest.mark.parametrize("case", ["fla-defaults", "hybrid-attention"])
def test_stationary_retention_is_a_different_model(fla_dirs, tmp_path, case):
    """The comparison above sees the mixers: γ = α² moves the logits far outside the tolerance."""
    fla_model, src = fla_dirs[case]
    ids = tokens()
    model = convert_fla(src, tmp_path / "probseq", retention="stationary")
    reference = fla_logits(fla_model, ids)
    assert ((our_logits(model, ids) - reference).norm() / reference.norm()).item() > 1e-2


def test_learned_start_gets_a_retention_gradient(fla_dirs, tmp_path):
    model = convert_fla(fla_dirs["fla-defaults"][1], tmp_path / "probseq", retention="learned").train()
    ids = tokens(length=20)
    model(ids, labels=ids).loss.backward()
    for block in model.model.layers:
        assert bool((block.attn.c_scale.grad != 0).all())


def test_sharded_checkpoint_and_dtype(fla_dirs, tmp_path):
    fla_model, src = fla_dirs["fla-defaults"]
    fla_model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    sharded = convert_fla(tmp_path / "sharded", tmp_path / "a")
    single = convert_fla(src, tmp_path / "b")
    assert sharded.state_dict().keys() == single.state_dict().keys()
    assert all(torch.equal(value, single.state_dict()[name]) for name, value in sharded.state_dict().items())

    half = convert_fla(src, tmp_path / "c", dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert ProbSeqForCausalLM.from_pretrained(tmp_path / "c").dtype == torch.bfloat16
    copy.deepcopy(fla_model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert convert_fla(tmp_path / "bf16", tmp_path / "d").dtype == torch.bfloat16  # dtype=None keeps it


def test_tokenizer_files_are_copied(fla_dirs, tmp_path):
    src = shutil.copytree(fla_dirs["fla-defaults"][1], tmp_path / "fla")
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    convert_fla(src, tmp_path / "probseq")
    assert (tmp_path / "probseq" / "tokenizer.json").read_text() == '{"version": "1.0"}'


# --- round trip ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("retention", ["reset", "learned"])
def test_round_trip_convert_export_loads_in_fla(fla_dirs, tmp_path, case, retention):
    fla_model, src = fla_dirs[case]
    model = convert_fla(src, tmp_path / "probseq", retention=retention)
    export_fla(tmp_path / "probseq" if retention == "reset" else model, tmp_path / "fla")
    with fla_on_cpu():
        loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "fla", output_loading_info=True)
    assert type(loaded) is type(fla_model)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    reference = fla_model.state_dict()
    assert loaded.state_dict().keys() == reference.keys()
    assert all(torch.equal(value, reference[name]) for name, value in loaded.state_dict().items())
    for name in (*MAPPED_FIELDS, *FIXED_FIELDS, "attn"):
        assert getattr(loaded.config, name) == getattr(fla_model.config, name), name
    ids = tokens()  # export writes fla's default kernel choices (fused norms): equal up to float rounding
    assert_close(fla_logits(loaded.eval(), ids), fla_logits(fla_model, ids), 1e-6, f"{case}: fla after round trip")


def test_export_of_a_native_probseq_model(tmp_path):
    """A model trained in probseq (gated_deltanet mixer, hybrid) exports, and fla computes what it computes."""
    torch.manual_seed(1)
    config = ProbSeqConfig(
        mixer="gated_deltanet",
        attn_layers=[0],
        attn_num_heads=4,
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=16,
        expand_v=1.0,
        intermediate_size=96,
        initializer_range=0.1,
    )
    model = ProbSeqForCausalLM(config).eval()
    export_fla(model, tmp_path / "fla")
    with fla_on_cpu():
        loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "fla", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = tokens()
    assert_close(our_logits(model, ids), fla_logits(loaded.eval(), ids), TOLERANCE[torch.float32], "export")


# --- refusals --------------------------------------------------------------------------------------------


def test_every_fla_config_field_is_mapped_or_refused():
    """fla 0.6.0's GatedDeltaNetConfig, field by field: a new field in fla must be classified here."""
    fields = set(inspect.signature(fla_models.GatedDeltaNetConfig.__init__).parameters) - {"self", "kwargs"}
    classified = set(MAPPED_FIELDS) | set(KERNEL_CHOICES) | set(FIXED_FIELDS) | {"attn"}
    assert fields == classified


REFUSED = [
    ({"allow_neg_eigval": True}, "allow_neg_eigval"),
    ({"use_l2warp": True}, "use_l2warp"),
    ({"attnres_block_size": 2}, "attnres_block_size"),
    ({"hidden_act": "powlu"}, "hidden_act"),
    ({"attn_mode": "parallel"}, "attn_mode"),
    ({"fuse_norm": "yes"}, "fuse_norm"),
    ({"norm_first": True}, "norm_first"),
    ({"conv_bias": True}, "conv_bias"),
    ({"model_type": "mamba2"}, "model_type"),
    ({"num_v_heads": 3}, "num_v_heads"),
    ({"attn": {"layers": [1], "num_heads": 4, "window_size": 16}}, "window_size"),
    ({"attn": {"layers": [1], "num_heads": 4, "qk_norm": True}}, "qk_norm"),
    ({"attn": [{"layers": [0], "num_heads": 4}, {"layers": [1], "num_heads": 2}]}, "different settings"),
]


@pytest.mark.parametrize("edit, match", REFUSED, ids=[m for _, m in REFUSED])
def test_refused_fla_config_raises_naming_the_field(fla_dirs, tmp_path, edit, match):
    src = edited_copy(fla_dirs["fla-defaults"][1], tmp_path / "fla", config_edit=lambda c: c.update(edit))
    with pytest.raises(ValueError, match=match):
        convert_fla(src, tmp_path / "probseq")
    assert not (tmp_path / "probseq").exists()


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_tensor_problems_are_named(fla_dirs, tmp_path, problem):
    edits = {
        "missing": (lambda t: t.pop("model.layers.1.attn.A_log"), r"missing tensor.*model\.layers\.1\.attn\.A_log"),
        "unexpected": (
            lambda t: t.update({"model.layers.0.attn.q_norm.weight": torch.ones(16)}),
            r"unexpected tensor.*model\.layers\.0\.attn\.q_norm\.weight",
        ),
        "shape": (lambda t: t.update({"model.norm.weight": torch.ones(65)}), r"'model\.norm\.weight' has shape"),
    }
    edit, match = edits[problem]
    src = edited_copy(fla_dirs["fla-defaults"][1], tmp_path / "fla", tensor_edit=edit)
    with pytest.raises(ValueError, match=match):
        convert_fla(src, tmp_path / "probseq")


def test_missing_files_and_pickles(fla_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        convert_fla(tmp_path / "nowhere", tmp_path / "probseq")
    src = shutil.copytree(fla_dirs["fla-defaults"][1], tmp_path / "fla")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        convert_fla(src, tmp_path / "probseq")
    with pytest.raises(ValueError, match="retention"):
        convert_fla(fla_dirs["fla-defaults"][1], tmp_path / "probseq", retention="sometimes")
    with pytest.raises(ValueError, match="destination"):
        convert_fla(fla_dirs["fla-defaults"][1], fla_dirs["fla-defaults"][1])


def _learned_with_retention(fla_dirs, tmp_path):
    model = convert_fla(fla_dirs["fla-defaults"][1], tmp_path / "probseq", retention="learned")
    with torch.no_grad():
        model.model.layers[1].attn.c_scale[0] = 0.25
    return model


@pytest.mark.parametrize(
    "what, match",
    [
        ("learned retention", "learned retention is non-zero"),
        ("stationary", "stationary"),
        ("mamba2", "mixers"),
        ("conv_bias", "conv_bias"),
        ("r_min", "r_min"),
    ],
)
def test_export_refuses_what_is_not_a_gated_deltanet(fla_dirs, tmp_path, what, match):
    small = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=8, intermediate_size=48)
    models = {
        "stationary": lambda: ProbSeqForCausalLM(ProbSeqConfig(retention="stationary", **small)),
        "mamba2": lambda: ProbSeqForCausalLM(ProbSeqConfig(mixer="mamba2", **small)),
        "conv_bias": lambda: ProbSeqForCausalLM(ProbSeqConfig(retention="reset", conv_bias=True, **small)),
        "r_min": lambda: ProbSeqForCausalLM(ProbSeqConfig(retention="reset", r_min=0.1, **small)),
        "learned retention": lambda: _learned_with_retention(fla_dirs, tmp_path),
    }
    with pytest.raises(ValueError, match=match):
        export_fla(models[what](), tmp_path / "fla")
    assert not (tmp_path / "fla").exists()


def test_config_from_fla_without_fla_installed():
    """The mapping reads config.json as data: no fla class is needed to convert."""
    config = config_from_fla(
        {
            "model_type": "gated_deltanet",
            "hidden_size": 64,
            "num_heads": 2,
            "head_dim": 16,
            "num_hidden_layers": 1,
            "vocab_size": VOCAB,
            "transformers_version": "4.50.0",
            "torch_dtype": "bfloat16",
        },
        retention="learned",
    )
    assert (config.mixer, config.retention, config.retention_init) == ("bayesian", "learned", 0.0)
    assert config.conv_bias is False and config.layer_mixers == ["bayesian"]


# --- command line ------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_convert_and_export(fla_dirs, tmp_path, capsys):
    fla_model, src = fla_dirs["fla-defaults"]
    assert cli_main(["convert-fla", str(src), str(tmp_path / "probseq"), "--retention", "learned"]) == 0
    assert "retention=learned" in capsys.readouterr().out
    assert cli_main(["export-fla", str(tmp_path / "probseq"), str(tmp_path / "fla")]) == 0
    with fla_on_cpu():
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fla")
    ids = tokens()
    assert torch.equal(fla_logits(loaded.eval(), ids), fla_logits(fla_model, ids))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["convert-fla", "{tmp}/nowhere", "{tmp}/out"], "no such directory"),
        (["convert-fla", "{bad}", "{tmp}/out"], "allow_neg_eigval"),
        (["export-fla", "{src}", "{tmp}/out"], "convert_fla"),
        (["export-fla", "{tmp}/nowhere", "{tmp}/out"], "no such directory"),
        (["export-fla", "{tmp}/probseq", "{tmp}/probseq"], "destination"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(fla_dirs, tmp_path, capsys, argv, match):
    bad = edited_copy(
        fla_dirs["fla-defaults"][1], tmp_path / "bad", config_edit=lambda c: c.update(allow_neg_eigval=True)
    )
    convert_fla(fla_dirs["fla-defaults"][1], tmp_path / "probseq")
    argv = [a.format(tmp=tmp_path, bad=bad, src=fla_dirs["fla-defaults"][1]) for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"probseq {argv[0]}: error:" in err and match in err and "Traceback" not in err
