"""Gradient sizes at each SGD step of the coord check, against the engine's (coord/method.md, "The derived
norm eps at 1024-8192"): is the gradient reaching v after the first step larger than the engine's
after-step gradient, because the output norm's input o is still n^-1/2 while q.k has become Theta(1)?

    python benchmarks/coord/step_grad_probe.py --widths 256,512,1024,2048 --seeds 3 [--derived-norm-eps]

The probes' model (probe_setup.py: GDN, 2 layers, muP for SGD at base 64, float64, 1 x 32 bytes), trained as
the coord check trains it (its default SGD lr and the generated param groups). For the gradient computed at
step t = 0, 1, 2 (t optimizer steps taken): the log-log slope over width of rms(dL/d node) for layer 0's value
path, scores and output norm, next to the engine's exponent (grad at init for t = 0, after a step for t > 0);
and the forward sizes rms(o_t) and rms(o_t - o_0) that decide which one applies.
"""

import argparse

import torch
from mudelta.derive.api import derive
from mudelta.graphs.presets import load
from mudelta.runtime import coord
from mudelta.runtime.models import make_optimizer
from probe_setup import probe_module, seeded

NODES = ("l0_v_act", "l0_k_l2", "l0_q_l2", "l0_o", "l0_o_norm", "l0_gated")


def run(module, width, seed, steps, config, skip=0, lr=None):
    model, x, y = seeded(module, width, seed, **config)
    lr = coord.DEFAULT_LR["sgd"] if lr is None else lr
    opt = make_optimizer("sgd", model.param_groups(lr, weight_decay=0.0), lr)
    grads, fwd, rows, o0 = [], [], [], None
    kept = {}

    def tap(name, value):
        if torch.is_tensor(value) and value.requires_grad and name in NODES:
            value.retain_grad()
            kept[name] = value
        return value

    module.tap = tap
    for t in range(steps + 1):
        kept.clear()
        _, loss = model(x, y)
        loss.backward()
        grads.append({n: v.grad[:, skip:].pow(2).mean().sqrt().item() for n, v in kept.items()
                      if v.grad is not None})
        o = kept["l0_o"].detach()
        o0 = o.clone() if t == 0 else o0
        fwd.append((o.pow(2).mean().sqrt().item(), (o - o0).pow(2).mean().sqrt().item()))
        # per position: rms over heads and values of o and of its gradient ([batch, position, head, value])
        g = kept["l0_o"].grad[0]
        rows.append((o[0].pow(2).mean((1, 2)).sqrt().tolist(), g.pow(2).mean((1, 2)).sqrt().tolist()))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return grads, fwd, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,512,1024,2048")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--derived-norm-eps", action="store_true")
    ap.add_argument("--lr", type=float, default=None, help="SGD lr (default: the coord check's)")
    ap.add_argument("--positions", action="store_true", help="also print o and g(o) per position (seed 0)")
    ap.add_argument("--skip", type=int, default=0, help="leave the first SKIP positions out of the gradients")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    config = {"derived_norm_eps": True} if args.derived_norm_eps else {}
    module = probe_module("step_grad_probe")
    engine = derive(load("gdn", {"layers": "2", "vocab": "256", "tied": "true"}), "sgd").engine
    runs = {w: [run(module, w, s, args.steps, config, args.skip, args.lr) for s in range(args.seeds)]
            for w in widths}

    eps = "derived" if config else "one eps"
    skip = f", gradients over positions >= {args.skip}" if args.skip else ""
    skip += f", lr {args.lr}" if args.lr is not None else ""
    print(f"norm eps: {eps}; widths {widths}, {args.seeds} seeds (geometric means){skip}")
    for t in range(args.steps + 1):
        print(f"gradient at step {t} (after {t} updates)")
        for n in NODES:
            rms = [coord.geomean([g[t][n] for g, _, _ in runs[w]]) for w in widths]
            pred = engine.grad[n] if t == 0 else engine.grad1[n]
            sizes = " ".join(f"{r:.3g}" for r in rms)
            print(f"  {n:10s} slope {coord.slope(widths, rms):+.2f} (engine {float(pred):+.2f})  rms {sizes}")
        o = [coord.geomean([f[t][0] for _, f, _ in runs[w]]) for w in widths]
        do = [coord.geomean([f[t][1] for _, f, _ in runs[w]]) for w in widths] if t else None
        line = f"  rms(o_t) slope {coord.slope(widths, o):+.2f}: " + " ".join(f"{v:.3g}" for v in o)
        if do:
            sizes = " ".join(f"{v:.3g}" for v in do)
            line += f"; rms(o_t - o_0) slope {coord.slope(widths, do):+.2f}: {sizes}"
        print(line, flush=True)
        for w in widths if args.positions else ():
            o_rows, g_rows = runs[w][0][2][t]
            print(f"    width {w} seed 0, per position: o " + " ".join(f"{v:.1e}" for v in o_rows))
            print(f"    width {w} seed 0, per position: g(o) " + " ".join(f"{v:.1e}" for v in g_rows))


if __name__ == "__main__":
    main()
