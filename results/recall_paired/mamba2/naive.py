import torch, math, torch.nn.functional as F
torch.set_num_threads(1)
from probseq.layers import Mamba2
torch.manual_seed(0)
for ng in (1, 2):
    m = Mamba2(hidden_size=32, head_dim=8, state_size=8, n_groups=ng, chunk_size=16).double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("proj.weight", "conv1d.weight")):
                p.copy_(torch.randn(p.shape, dtype=p.dtype) / math.sqrt(p.shape[-1]))
        m.D.zero_()
    x = torch.randn(2, 45, 32, dtype=torch.double)
    out = m(x)[0]
    # naive
    z, xbc, dt = m.in_proj(x).split([m.intermediate_size, m.conv_dim, m.num_heads], -1)
    W = m.conv_kernel_size
    w = m.conv1d.weight[:, 0]  # [C, W]
    xp = F.pad(xbc, (0, 0, W - 1, 0))
    conv = torch.stack([(xp[:, t:t + W] * w.T).sum(1) + m.conv1d.bias for t in range(45)], 1)
    conv = F.silu(conv)
    xs, B, C = conv.split([m.intermediate_size, ng * m.ssm_state_size, ng * m.ssm_state_size], -1)
    H, P, N = m.num_heads, m.head_dim, m.ssm_state_size
    xs = xs.view(2, 45, H, P); B = B.view(2, 45, ng, N); C = C.view(2, 45, ng, N)
    delta = F.softplus(dt + m.dt_bias); A = -m.A_log.exp()
    h = torch.zeros(2, H, P, N, dtype=torch.double); ys = []
    for t in range(45):
        g = torch.arange(H) // (H // ng)
        Bt, Ct = B[:, t, g], C[:, t, g]  # [2,H,N]
        h = torch.exp(delta[:, t] * A)[..., None, None] * h + delta[:, t][..., None, None] * xs[:, t][..., None] * Bt[:, :, None]
        ys.append((h * Ct[:, :, None]).sum(-1) + m.D[:, None] * xs[:, t])
    y = torch.stack(ys, 1).reshape(2, 45, -1)
    y = y * F.silu(z)
    y = y.view(2, 45, ng, -1); y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm_eps); y = y.reshape(2, 45, -1) * m.norm.weight
    ref = m.out_proj(y)
    print(ng, (out - ref).abs().max().item(), ref.abs().max().item())
    # causality: perturb future
    x2 = x.clone(); x2[:, 30:] += torch.randn_like(x2[:, 30:])
    print("causal", (m(x2)[0][:, :30] - out[:, :30]).abs().max().item())
