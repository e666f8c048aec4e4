"""Controlled recall runs (own loop, the cpu-preset recipe): AdamW wd 0.1 (exempt: biases, norms,
_no_weight_decay), clip 1.0, cosine with 10% warmup, batch 64 mixed, example-weighted loss, fp32."""
import argparse, dataclasses, json, math, time, sys
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1)
from probseq.experiments.recall import PRESETS
from probseq.train.data import generate
from probseq.train.trainer import build_model, no_decay_parameter_names
from probseq.train.metrics import pre_shifted_cross_entropy
from probseq.layers import Mamba2

p = argparse.ArgumentParser()
p.add_argument("--mixer", default="mamba2"); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0); p.add_argument("--steps", type=int, default=1500)
p.add_argument("--init", default="fla"); p.add_argument("--conv_init", default="fla", help="fla|default: Mamba-2's own conv1d")
p.add_argument("--in_proj_init", default="fla", help="fla|default")
p.add_argument("--layout", default="conv", help="conv: [conv, mixer]; mamba: [mamba2, mamba2]")
p.add_argument("--state_size", type=int, default=16); p.add_argument("--wd", type=float, default=0.1)
p.add_argument("--dt_max", type=float, default=None); p.add_argument("--dt_min", type=float, default=None)
p.add_argument("--A_max", type=float, default=None); p.add_argument("--A_min", type=float, default=1.0)
p.add_argument("--D0", action="store_true"); p.add_argument("--out", required=True); p.add_argument("--gradlog", action="store_true")
a = p.parse_args()

exp = dataclasses.replace(PRESETS["cpu"], n_layers=2, loss_weighting="example")
cfg = exp.train_config(a.mixer, a.lr, a.seed)
cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=a.init, state_size=a.state_size))
splits = generate(cfg.data, a.seed)
model = build_model(cfg)

class Wrap(nn.Module):  # a mixer in a conv-block slot (returns a tensor)
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, x): return s.m(x)[0]

g = torch.Generator().manual_seed(1000 + a.seed)
def reinit_mamba(m):
    with torch.no_grad():
        if a.conv_init == "default": m.conv1d.reset_parameters()
        if a.D0: m.D.zero_()
        if a.in_proj_init == "default": m.in_proj.reset_parameters(); m.out_proj.reset_parameters()
        if a.dt_max or a.dt_min or a.A_max:
            from probseq.layers.utils import inverse_softplus_step, log_uniform_decay_rate
            m.dt_bias.copy_(inverse_softplus_step(m.num_heads, a.dt_min or m.dt_min, a.dt_max or m.dt_max))
            if a.A_max: m.A_log.copy_(log_uniform_decay_rate(m.num_heads, a.A_min, a.A_max))
if a.layout == "mamba":
    torch.manual_seed(a.seed + 77)
    m0 = Mamba2(hidden_size=64, head_dim=64, state_size=a.state_size, expand=2, conv_kernel=4, layer_idx=0)
    model._init_weights  # same init rule as the model's
    for mod in m0.modules(): model._init_weights(mod)
    model.layers[0] = Wrap(m0)
for mod in model.modules():
    if isinstance(mod, Mamba2): reinit_mamba(mod)

exempt = no_decay_parameter_names(model)
decay, nodecay = [], []
for n, prm in model.named_parameters():
    (nodecay if (n in exempt or n.endswith("bias") or "norm" in n) else decay).append(prm)
opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.999))
warm = int(0.1 * a.steps)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / max(1, warm) if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, a.steps - warm))))

rows = [(x, y) for seg in splits.train for x, y in zip(seg.inputs, seg.labels)]
def batch(idx):
    T = max(rows[i][0].shape[0] for i in idx)
    X = torch.zeros(len(idx), T, dtype=torch.long); Y = torch.full((len(idx), T), -100, dtype=torch.long)
    for j, i in enumerate(idx):
        x, y = rows[i]; X[j, : len(x)] = torch.as_tensor(x); Y[j, : len(y)] = torch.as_tensor(y)
    return X, Y

@torch.no_grad()
def evaluate(names=("valid_inside", "valid_num_pairs=16", "valid_gap=64")):
    model.eval(); res = {}
    for n in names:
        d = splits.evaluation[n]; X, Y = torch.as_tensor(d.inputs), torch.as_tensor(d.labels)
        correct = tot = 0
        for s in range(0, len(X), 125):
            x, y = X[s:s+125], Y[s:s+125]; m = y != -100
            lg = model(x, logits_mask=m).logits
            correct += (lg.argmax(-1) == y[m]).sum().item(); tot += m.sum().item()
        res[n] = round(correct / tot, 4)
    model.train(); return res

def gradnorms():
    out = {n: float(f"{prm.grad.norm().item():.3e}") for n, prm in model.named_parameters() if prm.grad is not None and ("layers" in n)}
    for name, mod in model.named_modules():
        if isinstance(mod, Mamba2):
            I, N, H = mod.intermediate_size, mod.ssm_state_size, mod.num_heads
            gw = mod.in_proj.weight.grad; gc = mod.conv1d.weight.grad
            for k, sl in {"z": slice(0, I), "x": slice(I, 2*I), "B": slice(2*I, 2*I+N), "C": slice(2*I+N, 2*I+2*N), "dt": slice(2*I+2*N, None)}.items():
                out[f"{name}.in_proj[{k}]"] = float(f"{gw[sl].norm().item():.3e}")
            for k, sl in {"x": slice(0, I), "B": slice(I, I+N), "C": slice(I+N, None)}.items():
                out[f"{name}.conv1d[{k}]"] = float(f"{gc[sl].norm().item():.3e}")
    return out

log = {"args": vars(a), "curve": []}
perm = torch.randperm(len(rows), generator=g).tolist(); pos = 0
t0 = time.time(); run_loss = 0.0
for step in range(a.steps):
    if pos + 64 > len(perm): perm = torch.randperm(len(rows), generator=g).tolist(); pos = 0
    X, Y = batch(perm[pos:pos+64]); pos += 64
    m = Y != -100
    loss = pre_shifted_cross_entropy(model(X, logits_mask=m).logits, Y, None, "example")
    opt.zero_grad(); loss.backward()
    if a.gradlog and step in (0, 100, 500): log[f"grad{step}"] = gradnorms()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); sched.step(); run_loss += loss.item()
    if (step + 1) % 250 == 0:
        ev = evaluate(("valid_inside",))
        log["curve"].append({"step": step + 1, "loss": round(run_loss / 250, 4), **ev}); run_loss = 0.0
        print(log["curve"][-1], f"{time.time()-t0:.0f}s", flush=True)
log["final"] = evaluate(); log["sec_per_step"] = round((time.time() - t0) / a.steps, 4)
print("FINAL", log["final"], log["sec_per_step"], flush=True)
json.dump(log, open(a.out, "w"), indent=1)
