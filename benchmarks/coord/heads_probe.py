"""GDN heads regime (heads = width/64, d_k 8, d_v 16), muP SGD, base 64, 1 x 32 bytes: the rms over heads
of the change of per-head nodes after 1..3 steps, and of the dt_bias/A_log gradients at init, vs width
(method.md, "Heads regime under SGD"). Modes: real (the generated init), const (every head dt = 0.0333,
A = 9.24, set after reset_parameters), tileK (the generated K-head init repeated H/K times), iid (random
draws from the init distributions).

    python benchmarks/coord/heads_probe.py --widths 256,512,1024,2048,4096 --seeds 8 --modes real,const \
        --out r.json
    python benchmarks/coord/heads_probe.py --show r.json   # tables: geo (the coord check's statistic), pooled
"""

import argparse
import json
import math
import sys
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--widths", default="256,512,1024,2048")
ap.add_argument("--seeds", type=int, default=3)
ap.add_argument("--modes", default="real")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--lr", type=float, default=0.1)
ap.add_argument("--device", default="cpu")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--show", help="print the tables of a results file and exit")
ap.add_argument("--stat", default="geo", help="--show: geo | pooled | keff")
ap.add_argument("--out", default="")
ap.add_argument("--nodes", default="dt_bias,A_log,A,neg_A,a_dt,rate,g,alpha,a,k,k_conv,k_act,q,v,o")
a = ap.parse_args()


def slope(xs, ys):
    xs, ys = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((p - mx) * (q - my) for p, q in zip(xs, ys, strict=True)) / sum((p - mx) ** 2 for p in xs)


if a.show:
    for mode, nodes in json.load(open(a.show)).items():
        ws = sorted(int(w) for w in next(iter(nodes.values())))
        print(
            f"\nmode {mode}, statistic {a.stat}\n{'node@step':18s} "
            + " ".join(f"{w:>8d}" for w in ws)
            + "  slope  local"
        )
        for k, v in nodes.items():
            ys = [v[str(w)][a.stat] for w in ws]
            loc = [math.log(ys[i + 1] / ys[i]) / math.log(ws[i + 1] / ws[i]) for i in range(len(ws) - 1)]
            print(
                f"{k:18s} "
                + " ".join(f"{y:8.3g}" for y in ys)
                + f"  {slope(ws, ys):+.2f}  "
                + " ".join(f"{x:+.2f}" for x in loc)
            )
    sys.exit()
torch.set_num_threads(a.threads)
from mudelta.codegen import generate, load_module  # noqa: E402
from mudelta.graphs.presets import load  # noqa: E402
from mudelta.kernels.reference import chunk_gated_delta_rule_torch  # noqa: E402
from mudelta.runtime.data import byte_batch  # noqa: E402

graph = load(
    "gdn", {"layers": "2", "regime": "heads", "d_k": "8", "d_v": "16", "tied": "false", "vocab": "256"}
)
mod = load_module(generate(graph, "sgd", "mup", base_width=64), "heads_probe_model")
mod.chunk_gated_delta_rule = chunk_gated_delta_rule_torch  # the same math on every device
batches = {s: byte_batch(1, 32, s) for s in range(a.seeds)}
dev = torch.device(a.device)
if dev.type == "cuda":  # exact fp32 as on the CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
torch.set_default_device(dev)
nodes = [f"l{i}_{n}" for i in (0, 1) for n in a.nodes.split(",")]


def strata(H):
    lo = torch.arange(H, dtype=torch.float64, device="cpu") / H
    hi = lo + 1 / H
    c = 2 * math.log(0.1 / 1e-3)
    dt = 1e-3 * (((c * hi).exp() - (c * lo).exp()) * H / c).sqrt()
    A2 = (256 * (hi**3 - lo**3) * H / 3).tolist()
    target, acc, wsum, A = sum(A2) / H, 0.0, 0.0, [0.0] * H
    for i in sorted(range(H), key=lambda i: -dt[i].item()):
        w = dt[i].item() ** 2
        gap = [abs((acc + w * a2) / (wsum + w) - target) for a2 in A2]
        j = gap.index(min(gap))
        acc, wsum, A[i] = acc + w * A2[j], wsum + w, A2.pop(j) ** 0.5
    return dt, torch.tensor(A, dtype=torch.float64, device="cpu")


def set_heads(m, mode, seed):
    H = m.layers[0].attn.dt_bias.numel()
    if mode == "real":
        dt, A = strata(H)
        got = torch.nn.functional.softplus(m.layers[0].attn.dt_bias.double()).cpu()
        assert torch.allclose(got, dt, rtol=1e-4), "template init differs from strata()"
        return
    gen = torch.Generator(device="cpu").manual_seed(1000 + seed)
    for blk in m.layers:
        if mode == "const":
            dt = torch.full((H,), 0.0333, dtype=torch.float64, device="cpu")
            A = torch.full((H,), 16 / 3**0.5, dtype=torch.float64, device="cpu")
        elif mode.startswith("tile"):
            K = int(mode[4:])
            dt, A = strata(K)
            dt, A = dt.repeat(H // K), A.repeat(H // K)
        elif mode == "iid":
            u = torch.rand(H, generator=gen, dtype=torch.float64, device="cpu")
            dt = 1e-3 * torch.exp(u * math.log(100))
            A = 16 * torch.rand(H, generator=gen, dtype=torch.float64, device="cpu")
        with torch.no_grad():
            blk.attn.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            blk.attn.A_log.copy_(A.log())


def run(mode, w, seed):
    torch.manual_seed(seed)
    m = mod.GatedDeltaNetForCausalLM(mod.Config(width=w))
    set_heads(m, mode, seed)
    groups = m.param_groups(a.lr, weight_decay=0.0)
    for gr in groups:
        gr.pop("names", None)
        gr.pop("eps", None)
    opt = torch.optim.SGD(groups, lr=a.lr)
    x, y = (t.to(dev) for t in batches[seed])
    init, out = {}, {}
    for t in range(a.steps + 1):
        mod.TAPS = {}
        _, loss = m(x, y)
        for n in nodes:
            v = mod.TAPS[n].double()
            if t == 0:
                init[n] = v.clone()
            else:  # per-head mean square of the change (over the other dims: tokens, d_k, ...)
                d = (v - init[n]).pow(2)
                out[n, t] = d.reshape(-1, d.shape[-1]).mean(0).cpu() if d.dim() > 1 else d.cpu()
        if t < a.steps:
            loss.backward()
            if t == 0:
                for i, blk in enumerate(m.layers):
                    for pn in ("dt_bias", "A_log"):
                        out[f"grad_l{i}_{pn}", 0] = getattr(blk.attn, pn).grad.double().pow(2).cpu()
            opt.step()
            opt.zero_grad(set_to_none=True)
    mod.TAPS = None
    return out


results = {}
for mode in a.modes.split(","):
    for w in [int(x) for x in a.widths.split(",")]:
        t0 = time.time()
        per = [run(mode, w, s) for s in range(a.seeds)]
        for k in per[0]:
            ms = torch.stack([p[k] for p in per])  # seeds x features, mean squares
            rms_seed = ms.mean(1).sqrt()
            c2 = ms.mean(0)
            results.setdefault(mode, {}).setdefault(f"{k[0]}@{k[1]}", {})[w] = {
                "geo": math.exp(
                    rms_seed.clamp_min(1e-300).log().mean().item()
                ),  # the coord check's statistic
                "pooled": ms.mean().sqrt().item(),
                "keff": (c2.sum() ** 2 / c2.pow(2).sum()).item(),
                "sd_log": rms_seed.log().std().item(),
            }
        print(f"{mode} width {w} ({time.time() - t0:.1f} s)", file=sys.stderr, flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
text = json.dumps(results)
if a.out:
    open(a.out, "w").write(text)
else:
    print(text)
