import torch, glob, json, dataclasses, torch.nn.functional as F, sys
torch.set_num_threads(1)
from einops import rearrange
from probseq.experiments.recall import PRESETS
from probseq.train.data import generate
from probseq.models.mqar_model import ZoologyModel
from probseq.layers import Mamba2
exp = dataclasses.replace(PRESETS["cpu"], n_layers=2, loss_weighting="example")
cfg = exp.train_config("mamba2", 1e-3, 0)
splits = generate(cfg.data, 0)
ev = splits.evaluation["valid_inside"]; X = torch.as_tensor(ev.inputs[:100]); Y = torch.as_tensor(ev.labels[:100])
K = 64; W = 11
def clean(t): return torch.where(t > K, t - K, t)
def probe(model, tag):
    m = [l for l in model.layers if isinstance(l, Mamba2)][0]
    cap = {}
    m.register_forward_hook(lambda mod, args, out: cap.update(u=args[0]))
    with torch.no_grad():
        model(X)
        u = cap["u"]
        z, xbc, dt = m.in_proj(u).split([m.intermediate_size, m.conv_dim, m.num_heads], -1)
        xbc, _ = m.conv1d(xbc)
        x, b, c = xbc.split([m.intermediate_size, m.ssm_state_size, m.ssm_state_size], -1)
        delta = F.softplus(dt + m.dt_bias); A = -m.A_log.exp()
        ld = (delta * A).cumsum(1)  # [B,T,H]
        hits = torch.zeros(m.num_heads); tot = 0; mass = torch.zeros(m.num_heads)
        for i in range(X.shape[0]):
            qs = (Y[i] != -100).nonzero()[:, 0]
            for t in qs.tolist():
                keys = clean(X[i, 0:2*W:2]); js = (keys == clean(X[i, t])).nonzero()[:, 0]
                s = 2 * js.max().item() + 1
                score = (c[i, t] @ b[i, : t + 1].T)[:, None] * delta[i, : t + 1] * torch.exp(ld[i, t] - ld[i, : t + 1])  # [s,H]
                hits += (score[: 2*W].argmax(0) == s).float(); tot += 1
                mass += score[s].abs() / score[: 2*W].abs().sum(0)
        print(tag, "retrieval argmax acc per head", (hits / tot).tolist(), "mass on target", (mass / tot).tolist(), "chance~1/22")
for d in sorted(glob.glob("/root/.cache/probseq/runs/recall/mamba2-*")):
    if json.load(open(d + "/final/config.json"))["n_layers"] != 2: continue
    probe(ZoologyModel.from_pretrained(d + "/final").eval(), d.split("/")[-1])
