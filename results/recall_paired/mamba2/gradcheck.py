import torch, math, torch.nn.functional as F, copy
torch.set_num_threads(1)
from probseq.layers import Mamba2
torch.manual_seed(0)
def naive(m, x):
    Bn, T, _ = x.shape
    z, xbc, dt = m.in_proj(x).split([m.intermediate_size, m.conv_dim, m.num_heads], -1)
    W = m.conv_kernel_size; w = m.conv1d.weight[:, 0]
    xp = F.pad(xbc, (0, 0, W - 1, 0))
    conv = F.silu(torch.stack([(xp[:, t:t + W] * w.T).sum(1) + m.conv1d.bias for t in range(T)], 1))
    ng = m.n_groups
    xs, B, C = conv.split([m.intermediate_size, ng * m.ssm_state_size, ng * m.ssm_state_size], -1)
    H, P, N = m.num_heads, m.head_dim, m.ssm_state_size
    xs = xs.view(Bn, T, H, P); B = B.view(Bn, T, ng, N); C = C.view(Bn, T, ng, N)
    delta = F.softplus(dt + m.dt_bias); A = -m.A_log.exp()
    h = torch.zeros(Bn, H, P, N, dtype=x.dtype); ys = []
    gi = torch.arange(H) // (H // ng)
    for t in range(T):
        h = torch.exp(delta[:, t] * A)[..., None, None] * h + delta[:, t][..., None, None] * xs[:, t][..., None] * B[:, t, gi][:, :, None]
        ys.append((h * C[:, t, gi][:, :, None]).sum(-1) + m.D[:, None] * xs[:, t])
    y = torch.stack(ys, 1).reshape(Bn, T, -1) * F.silu(z)
    y = y.view(Bn, T, ng, -1); y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm_eps)
    return m.out_proj(y.reshape(Bn, T, -1) * m.norm.weight)
for T in (45, 130):
    m = Mamba2(hidden_size=32, head_dim=16, state_size=8, n_groups=1, chunk_size=64)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("proj.weight", "conv1d.weight")): p.copy_(torch.randn(p.shape) / math.sqrt(p.shape[-1]))
    m2 = copy.deepcopy(m)
    x = torch.randn(2, T, 32); tgt = torch.randn(2, T, 32)
    (m(x)[0] * tgt).sum().backward(); (naive(m2, x) * tgt).sum().backward()
    for (n, p), (_, q) in zip(m.named_parameters(), m2.named_parameters()):
        print(T, n, f"{(p.grad - q.grad).abs().max().item():.2e}", f"{q.grad.abs().max().item():.2e}")
