"""GDN head-dim regime (6 heads, d_k = n/8, d_v = n/4; preset `gdn`, 2 layers), muP, base 64, 1 x 32 bytes:
where the change of the recurrence output `o` comes from, out to widths the coord check does not reach
(method.md, "GDN head-dim regime: o").

For each layer, step t and width (per seed):
- `o` total: rms of o_t - o_0 (the coord check's quantity);
- `o|qk`: the recurrence recomputed with q, k at step t and v, g, beta at init, minus o_0 (the part the
  engine calls Theta(1): the aligned change of q.k); `o|v`: only v at step t (n^-1/2: Delta v against the
  Theta(d_k^-1/2) scores at init);
- the scores A[t,s,h] = q_scaled_t . k_s (s <= t, per head), at init and their change dA, split into dq.k0
  and q0.dk, each with its CLT floor: a change u unrelated to k gives E (u . k)^2 = |u|^2 |k|^2 / d_k (the
  mean over a random rotation of k within the head); `floor` = the rms of that, `excess` = sqrt(rms^2 -
  floor^2), the part aligned with k (a lower bound). (a) predicts the excess flat and the floor ~ d_k^-1/2;
  (b) (a wrong exponent) no flat excess. With --data fixed (one batch for every seed) also `signal` /
  `noise`: the rms of the seed mean (bias-corrected) and of the deviation from it. The signal came out ~0:
  the aligned part is a Theta(1) random quantity (a contraction over d_v of v_s with the gradient at o_t),
  not a constant, so only the floor / excess split is informative;
- the split of dq.k (and q.dk) into the weight update dW_q x_0 and the input change W_q,0 dx (q recomputed
  from the layer's normed input at init with the new weights, and from the new input with the weights at
  init), each with its floor and excess; likewise b|dW, b|dx for b = b_proj x;
- `gram`: mean |cos| between the normed inputs x_t, x_s (t != s) of the layer; `b`, `beta` change sizes as
  the coord check measures them (coord._size), kept per seed for the geo / pooled comparison.

    python benchmarks/coord/o_probe.py --widths 64,128,256,512,1024,2048 --seeds 8 --steps 1 --out split8.json
    python benchmarks/coord/o_probe.py --widths 64,...,2048 --seeds 8 --steps 1 --optimizers adamw \
        --train-only layers.1. --out frozen8.json     # layer 1 alone trained: its input does not move
    python benchmarks/coord/o_probe.py --show split8.json
The committed o_probe_*.json: seed8 (64-4096 AdamW, 64-2048 SGD; before the dW/dx
split was added), split8 (64-2048 AdamW, 64-1024 SGD), frozen8 (AdamW), steps3 (--steps 3, AdamW,
64-2048), fixed8 (--data fixed, 64-4096 AdamW, 64-512 SGD; before the floor was added); all 8 seeds, one
step unless said, --batches = byte_batch(1, 32, seed) of this machine (the default). method.md has the
tables.
"""

import argparse
import json
import math
import sys
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--widths", default="64,128,256,512,1024")
ap.add_argument("--seeds", type=int, default=3)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--optimizers", default="adamw,sgd")
ap.add_argument(
    "--data", default="seed", help="seed: byte_batch(1, 32, seed) as the coord check; fixed: seed 0"
)
ap.add_argument("--device", default="cpu")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument(
    "--batches", default="", help="torch.save'd {seed: (x, y)} (so another machine sees these bytes)"
)
ap.add_argument(
    "--train-only",
    default="",
    help="train only the parameters whose names start with this "
    "(e.g. layers.1.: layer 1's input then does not change)",
)
ap.add_argument("--out", default="")
ap.add_argument("--show", default="")
a = ap.parse_args()


def slope(xs, ys):
    xs, ys = [math.log(x) for x in xs], [math.log(max(y, 1e-300)) for y in ys]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((p - mx) * (q - my) for p, q in zip(xs, ys, strict=True)) / sum((p - mx) ** 2 for p in xs)


def show(path):
    res = json.load(open(path))
    for opt, by_w in res.items():
        ws = sorted(int(w) for w in by_w)
        keys = list(by_w[str(ws[0])].keys())
        print(f"\n{opt}  ({path})\n{'quantity':26s} " + " ".join(f"{w:>8d}" for w in ws) + "  slope  local")
        for k in keys:
            ys = [by_w[str(w)][k] for w in ws]
            loc = [
                math.log(max(ys[i + 1], 1e-300) / max(ys[i], 1e-300)) / math.log(ws[i + 1] / ws[i])
                for i in range(len(ws) - 1)
            ]
            print(
                f"{k:26s} "
                + " ".join(f"{y:8.3g}" for y in ys)
                + f"  {slope(ws, ys):+.2f}  "
                + " ".join(f"{x:+.2f}" for x in loc)
            )


if a.show:
    show(a.show)
    sys.exit()

torch.set_num_threads(a.threads)
from mudelta.codegen import generate, load_module  # noqa: E402
from mudelta.graphs.presets import load  # noqa: E402
from mudelta.kernels.reference import chunk_gated_delta_rule_torch  # noqa: E402
from mudelta.runtime.coord import DEFAULT_LR, _size, geomean  # noqa: E402
from mudelta.runtime.data import byte_batch  # noqa: E402
from mudelta.runtime.models import make_optimizer  # noqa: E402

dev = torch.device(a.device)
if dev.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
torch.set_default_device(dev)
graph = load("gdn", {"layers": "2", "vocab": "256"})
SEEDS = range(a.seeds) if a.data == "seed" else [0]
BATCHES = torch.load(a.batches, map_location="cpu") if a.batches else {s: byte_batch(1, 32, s) for s in SEEDS}


def rec(q, k, v, g, beta):
    return chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=1.0)[0].double()


def scores(q, k):  # [B,T,H,K] -> [T,T,H] lower triangle (s <= t) kept, rest 0
    A = torch.einsum("bthk,bshk->btsh", q.double(), k.double())[0]
    T = A.shape[0]
    return A * torch.tril(torch.ones(T, T, dtype=A.dtype)).unsqueeze(-1)


def qk(attn, x):  # q_scaled, k_l2 of a GatedDeltaNet layer from its normed input x, with its current weights
    B, T_, _ = x.shape
    H, K = attn.heads, attn.d_k
    q = torch.nn.functional.normalize(attn.branch("q", x).view(B, T_, H, K), dim=-1, eps=1e-6) * attn.q_scale
    k = torch.nn.functional.normalize(attn.branch("k", x).view(B, T_, H, K), dim=-1, eps=1e-6)
    return q, k


def floor(u, w):  # [B,T,H,K] x2 -> [T,T,H]: |u_t|^2 |w_s|^2 / d_k, lower triangle
    nu, nw = u[0].double().pow(2).sum(-1), w[0].double().pow(2).sum(-1)  # [T,H]
    T = nu.shape[0]
    return (
        nu[:, None, :]
        * nw[None, :, :]
        / u.shape[-1]
        * torch.tril(torch.ones(T, T, dtype=nu.dtype)).unsqueeze(-1)
    )


def rms(x):
    return x.pow(2).mean().sqrt().item()


def run(mod, opt_name, w, seed):
    torch.manual_seed(seed)
    m = mod.GatedDeltaNetForCausalLM(mod.Config(width=w))
    lr = DEFAULT_LR[opt_name]
    for n, w in m.named_parameters():
        if a.train_only and not n.startswith(a.train_only):
            w.requires_grad_(False)  # no gradient: the optimizer skips it
    opt = make_optimizer(opt_name, m.param_groups(lr, weight_decay=0.0), lr)
    x, y = (t.to(dev) for t in BATCHES[0 if a.data == "fixed" else seed])
    out, init = {}, {}
    for t in range(a.steps + 1):
        mod.TAPS = {}
        _, loss = m(x, y)
        T = {k: v.clone() for k, v in mod.TAPS.items()}
        if t < a.steps:  # before the dW/dx split below, which swaps the weights in place
            loss.backward()
        for L in (0, 1):
            p = f"l{L}_"
            q, k, g, beta = T[p + "q_scaled"], T[p + "k_l2"], T[p + "g"], T[p + "beta"]
            v = T[p + "v_act"].view(*q.shape[:3], -1)
            if t == 0:
                init[L] = dict(
                    q=q,
                    k=k,
                    v=v,
                    g=g,
                    beta=beta,
                    o=T[p + "o"].double(),
                    A=scores(q, k),
                    b=T[p + "b"],
                    be=T[p + "beta"],
                    xin=T[p + "attn_in"],
                    params={n: w.detach().clone() for n, w in m.layers[L].attn.named_parameters()},
                )
                xn = T[p + "attn_in"][0].double()
                xn = xn / xn.norm(dim=-1, keepdim=True)
                c = xn @ xn.T
                n = c.shape[0]
                out[f"l{L}_gram", 0] = (c.abs().sum() - c.diag().abs().sum()).item() / (n * n - n)
                out[f"l{L}_o", 0] = rms(init[L]["o"])
                out[f"l{L}_A", 0] = init[L]["A"]
                continue
            i = init[L]
            out[f"l{L}_o", t] = rms(T[p + "o"].double() - i["o"])
            out[f"l{L}_o|qk", t] = rms(rec(q, k, i["v"], i["g"], i["beta"]) - i["o"])
            out[f"l{L}_o|v", t] = rms(rec(i["q"], i["k"], v, i["g"], i["beta"]) - i["o"])
            out[f"l{L}_dA", t] = scores(q, k) - i["A"]
            out[f"l{L}_dq.k", t] = scores(q, i["k"]) - i["A"]
            out[f"l{L}_q.dk", t] = scores(i["q"], k) - i["A"]
            # the CLT floor of dq.k: E (u . R k)^2 = |u|^2 |k|^2 / d_k for a random rotation R within the head
            out[f"l{L}_dq.k", t, "floor"] = floor(q - i["q"], i["k"])
            out[f"l{L}_q.dk", t, "floor"] = floor(k - i["k"], i["q"])
            if t == 1:  # dq = (dW_q: new weights, input at init) + (dx: weights at init, new input) + cross
                attn = m.layers[L].attn
                x0, x1 = i["xin"], T[p + "attn_in"]
                new_p = {n: w.detach().clone() for n, w in attn.named_parameters()}
                with torch.no_grad():
                    q_dW, k_dW = qk(attn, x0)
                    out[f"l{L}_b|dW", t] = _size(attn.b_proj(x0) - i["b"], 6)
                    for n, w in attn.named_parameters():
                        w.copy_(i["params"][n])
                    q_dx, k_dx = qk(attn, x1)
                    out[f"l{L}_b|dx", t] = _size(attn.b_proj(x1) - i["b"], 6)
                    for n, w in attn.named_parameters():
                        w.copy_(new_p[n])
                del new_p
                for tag, qq, kk in (
                    ("dWq.k", q_dW, i["k"]),
                    ("dxq.k", q_dx, i["k"]),
                    ("q.dWk", i["q"], k_dW),
                    ("q.dxk", i["q"], k_dx),
                ):
                    out[f"l{L}_{tag}", t] = scores(qq, kk) - i["A"]
                    u, w = (qq - i["q"], kk) if tag.startswith("d") else (kk - i["k"], qq)
                    out[f"l{L}_{tag}", t, "floor"] = floor(u, w)
            out[f"l{L}_b", t] = _size(T[p + "b"] - i["b"], 6)
            out[f"l{L}_beta", t] = _size(T[p + "beta"] - i["be"], 6)
        if t < a.steps:
            opt.step()
            opt.zero_grad(set_to_none=True)
    mod.TAPS = None
    return {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in out.items()}


results = {}
for opt_name in a.optimizers.split(","):
    mod = load_module(generate(graph, opt_name, "mup", base_width=64), f"o_probe_{opt_name}")
    mod.chunk_gated_delta_rule = chunk_gated_delta_rule_torch  # the same math on every device
    for w in [int(s) for s in a.widths.split(",")]:
        t0 = time.time()
        per = [run(mod, opt_name, w, s) for s in range(a.seeds)]
        r = {}
        for key in per[0]:
            if len(key) == 3:  # the floor of a score term: mean square, and the excess over it
                name, t, _ = key
                fl = torch.stack([p[key] for p in per])
                tri = (
                    torch.tril(torch.ones(fl.shape[1], fl.shape[1], dtype=torch.bool))
                    .unsqueeze(-1)
                    .expand(*fl.shape[1:])
                )
                f2 = fl[:, tri].mean().item()
                tot2 = torch.stack([p[name, t] for p in per])[:, tri].pow(2).mean().item()
                r[f"{name}@{t} floor"] = math.sqrt(f2)
                r[f"{name}@{t} excess"] = math.sqrt(max(tot2 - f2, 0.0))
                continue
            name, t = key
            vals = [p[key] for p in per]
            tag = f"{name}@{t}"
            if torch.is_tensor(vals[0]):
                X = torch.stack(vals)  # seeds x T x T x H
                T_ = X.shape[1]
                tri = torch.tril(torch.ones(T_, T_, dtype=torch.bool)).unsqueeze(-1).expand(*X.shape[1:])
                if name.endswith("_A"):
                    r[f"{name}_init@0"] = rms(X[:, tri])
                    continue
                r[f"{tag} rms"] = rms(X[:, tri])
                if a.data == "fixed" and len(vals) > 1:
                    mean, var = X.mean(0), X.var(0)
                    sig2 = (mean.pow(2) - var / len(vals))[tri].mean().item()
                    r[f"{tag} signal"] = math.sqrt(max(sig2, 0.0))
                    r[f"{tag} noise"] = var[tri].mean().sqrt().item()
            else:
                r[f"{tag} geo"] = geomean(vals)
                if name.endswith(("_b", "_beta", "_o", "_o|qk", "_o|v", "_b|dW", "_b|dx")) and t > 0:
                    r[f"{tag} pooled"] = math.sqrt(sum(v * v for v in vals) / len(vals))
        results.setdefault(opt_name, {})[w] = r
        print(f"{opt_name} width {w}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if a.out:
            open(a.out, "w").write(json.dumps(results))
if not a.out:
    print(json.dumps(results))
