import sys, json, torch, torch.nn.functional as F
torch.set_num_threads(1)
from probseq.experiments.recall import PRESETS
from probseq.train.data import generate
from probseq.train.trainer import build_model
from probseq.train.config import TrainConfig
from probseq.models.mqar_model import ZoologyModel
from probseq.layers import Mamba2
from einops import rearrange
import dataclasses

exp = dataclasses.replace(PRESETS["cpu"], n_layers=2, loss_weighting="example")
cfg = exp.train_config("mamba2", 1e-3, 0)
splits = generate(cfg.data, 0)
ev = splits.evaluation["valid_inside"]
inp, lab = torch.as_tensor(ev[0][:64]), torch.as_tensor(ev[1][:64])

def stats(model, tag):
    m = [l for l in model.layers if isinstance(l, Mamba2)][0]
    cap = {}
    def hook(mod, args, kwargs, out):
        u = args[0]
        z, xbc, dt = mod.in_proj(u).split([mod.intermediate_size, mod.conv_dim, mod.num_heads], -1)
        xbc2, _ = mod.conv1d(xbc)
        x, b, c = xbc2.split([mod.intermediate_size, mod.ssm_state_size*mod.n_groups, mod.ssm_state_size*mod.n_groups], -1)
        delta = F.softplus(dt + mod.dt_bias)
        A = -mod.A_log.exp()
        cap.update(u=u.std().item(), xbc_pre=xbc.std().item(), x=x.std().item(), B=b.std().item(), C=c.std().item(),
                   z=z.std().item(), delta_mean=delta.mean().item(), delta_max=delta.max().item(),
                   decay_per_tok=torch.exp(delta*A).mean().item(), A=A.tolist(), D=mod.D.tolist())
        # compute ssm output vs skip
        from probseq.ops import superposition_filter
        xh = rearrange(x, "b t (h p) -> b t h p", p=mod.head_dim)
        bh = b[:, :, None].expand(-1, -1, mod.num_heads, -1); ch = c[:, :, None].expand(-1, -1, mod.num_heads, -1)
        o = superposition_filter(ch, bh, xh, delta*A, delta, scale=1.0).output
        skip = xh * mod.D[:, None]
        cap.update(ssm_rms=o.pow(2).mean().sqrt().item(), skip_rms=skip.pow(2).mean().sqrt().item())
        cap["conv_w_std"] = mod.conv1d.weight.std().item(); cap["in_proj_std"] = mod.in_proj.weight.std().item()
        cap["out_proj_std"] = mod.out_proj.weight.std().item()
    h = m.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        logits = model(inp).logits
    h.remove()
    mask = lab != -100
    acc = (logits[mask].argmax(-1) == lab[mask]).float().mean().item()
    print(tag, "acc", round(acc, 3), {k: (round(v, 5) if isinstance(v, float) else [round(a, 3) for a in v]) for k, v in cap.items()})

for init in ("fla", "zoology"):
    c2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=init))
    stats(build_model(c2), f"init={init}")
import glob
for d in sorted(glob.glob("/root/.cache/probseq/runs/recall/mamba2-*")):
    if json.load(open(d + "/final/config.json"))["n_layers"] != 2: continue
    model = ZoologyModel.from_pretrained(d + "/final"); model.eval()
    stats(model, d.split("/")[-1])
