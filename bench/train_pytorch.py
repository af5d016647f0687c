#!/usr/bin/env python3
"""PyTorch CPU baseline for `skymoe bench train`: the same decoder (RMSNorm, RoPE rotate-half, causal
MHA/GQA, top-k MoE with gating logit normalization and sparse per-expert dispatch, Skywork aux loss),
forward + backward + AdamW, fp32, on synthetic tokens. Prints one JSON line like skymoe's --json.

Use Debian's python3-torch with the OpenMP OpenBLAS (libopenblas0-openmp); otherwise torch runs on
the reference BLAS and is ~30x slower."""
import argparse, json, math, statistics, time

import torch
import torch.nn.functional as F

PRESETS = {  # vocab, hidden, layers, heads, kv_heads, intermediate, experts, top_k
    "train-moe": (8192, 512, 8, 8, 8, 1408, 16, 2),
    "train-dense": (8192, 512, 8, 8, 8, 1408, 0, 2),
    "tiny": (256, 64, 2, 4, 2, 96, 4, 2),
}


def rope_tables(seq, hd, theta=10000.0):
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):  # x [B, h, T, d]
    d = x.shape[-1] // 2
    a, b = x[..., :d], x[..., d:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Layer(torch.nn.Module):
    def __init__(s, H, nh, nkv, I, E, k):
        super().__init__()
        s.nh, s.nkv, s.hd, s.E, s.k = nh, nkv, H // nh, E, k
        s.n1 = torch.nn.Parameter(torch.ones(H))
        s.n2 = torch.nn.Parameter(torch.ones(H))
        s.q = torch.nn.Linear(H, nh * s.hd, bias=False)
        s.kp = torch.nn.Linear(H, nkv * s.hd, bias=False)
        s.v = torch.nn.Linear(H, nkv * s.hd, bias=False)
        s.o = torch.nn.Linear(nh * s.hd, H, bias=False)
        if E:
            s.gate = torch.nn.Linear(H, E, bias=False)
            # One parameter per expert: indexing a stacked [E, I, H] tensor would make autograd
            # zero-fill and add a whole [E, I, H] gradient for every expert (SelectBackward).
            s.w1 = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(I, H) * 0.02) for _ in range(E)])
            s.w3 = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(I, H) * 0.02) for _ in range(E)])
            s.w2 = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(H, I) * 0.02) for _ in range(E)])
        else:
            s.w1 = torch.nn.Linear(H, I, bias=False)
            s.w3 = torch.nn.Linear(H, I, bias=False)
            s.w2 = torch.nn.Linear(I, H, bias=False)

    def forward(s, x, cos, sin):
        B, T, H = x.shape
        h = F.rms_norm(x, (H,), s.n1, 1e-6) if hasattr(F, "rms_norm") else x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * s.n1
        q = s.q(h).view(B, T, s.nh, s.hd).transpose(1, 2)
        k = s.kp(h).view(B, T, s.nkv, s.hd).transpose(1, 2)
        v = s.v(h).view(B, T, s.nkv, s.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if s.nkv != s.nh:
            k = k.repeat_interleave(s.nh // s.nkv, dim=1)
            v = v.repeat_interleave(s.nh // s.nkv, dim=1)
        # Debian's torch 1.13 runs batched matmul (bmm) on a naive kernel (~0.5 GFLOP/s); 2-D mm goes
        # to BLAS, so attention loops over (batch, head) to give the baseline its best shot. unbind,
        # not q[bi, hi]: each indexing op's backward would zero-fill and add a whole [B, h, T, d] tensor.
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        qs, ks, vs = (t.reshape(B * s.nh, T, s.hd).unbind(0) for t in (q, k, v))
        outs = []
        for qi, ki, vi in zip(qs, ks, vs):
            sc = torch.mm(qi, ki.t()) / math.sqrt(s.hd)
            outs.append(torch.mm(sc.masked_fill(mask, float("-inf")).softmax(-1), vi))
        a = torch.stack(outs).view(B, s.nh, T, s.hd)
        x = x + s.o(a.transpose(1, 2).reshape(B, T, H))
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * s.n2
        if not s.E:
            return x + s.w2(F.silu(s.w1(h)) * s.w3(h)), None
        t = h.reshape(B * T, H)
        z = s.gate(t)
        z = (z - z.mean(-1, keepdim=True)) / z.std(-1, keepdim=True)  # gating logit normalization
        g = z.softmax(-1)
        w, idx = g.topk(s.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(t)
        flat = idx.reshape(-1)
        tok = torch.arange(B * T).repeat_interleave(s.k)
        wf = w.reshape(-1)
        for e in range(s.E):  # sparse dispatch: each expert runs on its own tokens only
            sel = (flat == e).nonzero(as_tuple=True)[0]
            if sel.numel() == 0:
                continue
            ti = tok[sel]
            xe = t[ti]
            ye = F.linear(F.silu(F.linear(xe, s.w1[e])) * F.linear(xe, s.w3[e]), s.w2[e])
            out.index_add_(0, ti, ye * wf[sel, None])
        aux = ((1.0 / s.E - g.mean(0)) ** 2).sum()
        return x + out.view(B, T, H), aux


class Model(torch.nn.Module):
    def __init__(s, V, H, L, nh, nkv, I, E, k):
        super().__init__()
        s.emb = torch.nn.Embedding(V, H)
        s.layers = torch.nn.ModuleList([Layer(H, nh, nkv, I, E, k) for _ in range(L)])
        s.nf = torch.nn.Parameter(torch.ones(H))
        s.head = torch.nn.Linear(H, V, bias=False)

    def forward(s, ids, tgt, cos, sin):
        x = s.emb(ids)
        aux = 0.0
        for l in s.layers:
            x, a = l(x, cos, sin)
            if a is not None:
                aux = aux + 0.01 * a
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * s.nf
        return F.cross_entropy(s.head(x).flatten(0, 1), tgt.flatten()) + aux


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="train-moe", choices=PRESETS)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    V, H, L, nh, nkv, I, E, k = PRESETS[a.preset]
    m = Model(V, H, L, nh, nkv, I, E, k)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    cos, sin = rope_tables(a.seq_len, H // nh)
    times = []
    for s in range(a.warmup_steps + a.steps):
        ids = torch.randint(0, V, (a.batch_size, a.seq_len))
        tgt = torch.roll(ids, -1, dims=1)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m(ids, tgt, cos, sin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if s >= a.warmup_steps:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "preset": a.preset, "threads": a.threads,
                      "tokens_per_s": a.batch_size * a.seq_len / med, "step_s": med}))


if __name__ == "__main__":
    main()
