"""Slopes (log rms vs log width) of the per-parameter updates, gradients and per-node changes recorded by
trace.py, next to the engine's exponents for the same rules (muP for SGD-Nesterov, 2 layers).

    python benchmarks/lr_transfer/sgd_trace/analyze.py TRACE.jsonl [--steps 1,2,4,8] [--widths 64,128,256]
"""

from __future__ import annotations

import argparse
import json

from mudelta.derive import derive
from mudelta.graphs.presets import load
from mudelta.runtime.coord import slope


def predictions(layers: int):
    g = load("gdn", {"layers": str(layers), "vocab": "8192"})
    d = derive(g, "sgd-nesterov", "mup")
    e = d.engine
    par = {}
    for r in d.params:
        k = r.name.replace(".0.", ".*.")
        if k not in par:
            par[k] = {"dW": -float(r.rho), "grad_init": float(r.grad), "W0": -float(r.beta)}
    node = {}
    for n in g.order:
        try:
            x, d1 = e.X(n), e.D1(n)
            node[n] = (float(x), float(d1))
        except (TypeError, KeyError):
            pass
    return par, node


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--widths", default=None)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--nodes", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = [json.loads(line) for line in open(args.trace)]
    if args.widths:
        keep = {int(w) for w in args.widths.split(",")}
        runs = [r for r in runs if r["width"] in keep]
    ws = [r["width"] for r in runs]
    steps = [int(s) for s in args.steps.split(",")]
    steps = [s for s in steps if all(len(r["steps"]) >= s for r in runs)]
    par, node = predictions(args.layers)
    out = {"trace": args.trace, "widths": ws, "steps": steps, "param": {}, "node": {}}
    print(f"{args.trace}: widths {ws}; train loss at each step shown per width at the end")
    print(
        f"{'parameter':34s} {'pred dW':>7s} "
        + " ".join(f"dW@{s:<3d}" for s in steps)
        + "   "
        + " ".join(f"g@{s:<4d}" for s in steps)
        + f" {'g0 pred':>7s}"
    )
    for k in runs[0]["steps"][0]["param"]:
        dw = [slope(ws, [r["steps"][s - 1]["param"][k]["dW"] for r in runs]) for s in steps]
        gr = [slope(ws, [r["steps"][s - 1]["param"][k]["grad"] for r in runs]) for s in steps]
        p = par.get(k, {})
        out["param"][k] = {"pred_dW": p.get("dW"), "pred_grad_init": p.get("grad_init"), "dW": dw, "grad": gr}
        print(
            f"{k:34s} {p.get('dW', float('nan')):7.2f} "
            + " ".join(f"{v:6.2f}" for v in dw)
            + "   "
            + " ".join(f"{v:6.2f}" for v in gr)
            + f" {p.get('grad_init', float('nan')):7.2f}"
        )
    if args.nodes:
        print(f"\n{'node':24s} {'pred d':>6s} " + " ".join(f"d@{s:<4d}" for s in steps))
        for n in runs[0]["steps"][0]["node"]:
            if n not in node:
                continue
            dv = [slope(ws, [r["steps"][s - 1]["node"][n] for r in runs]) for s in steps]
            out["node"][n] = {"pred_d1": node[n][1], "d": dv}
            flag = "  <-- above" if any(v - node[n][1] > 0.25 for v in dv) else ""
            print(f"{n:24s} {node[n][1]:6.2f} " + " ".join(f"{v:6.2f}" for v in dv) + flag)
    print("\ntrain loss per step:")
    for r in runs:
        print(f"  width {r['width']:5d}: " + " ".join(f"{s['train_loss']:.2f}" for s in r["steps"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
