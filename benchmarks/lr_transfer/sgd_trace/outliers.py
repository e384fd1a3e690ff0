"""Do GDN's activations concentrate on a few coordinates before the wide model's SGD spike? (sgd_trace.md,
addendum 8: the conclusion's guess that o_norm(o) * gate grows aligned outliers at larger width)

Trains the CPU analog (trace.setup) and after every step records, on one fixed validation probe batch, for
each tapped node of layers 0 and 1 that NODES names: max|x| / rms(x) over the whole tensor (Gaussian-like
coordinates of a few hundred thousand entries give ~5; a vector normalised over d entries is capped at
sqrt(d)), rms(x), and the top channel's share of the energy: max over the last dim c of sum x[..., c]^2 over
sum x^2 (1/d for channels of equal size), and that channel's index. Also, at every step's gradient, each
layer's v_proj and g_proj rows: the top row's share of the gradient's energy (times the row count) and its
index, and the o_norm gain's largest |gain - 1| and its index. One JSON line per width to --out.

    python benchmarks/lr_transfer/sgd_trace/outliers.py --lr 0.025 --widths 64,512 --steps 24 -o out.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trace import add_trial_args, per_width, setup  # noqa: E402

from mudelta.runtime.data import val_batches  # noqa: E402
from mudelta.runtime.train import schedule  # noqa: E402

NODES = ("o", "o_norm", "gate", "gated", "attn_out", "res_attn", "mlp_out", "res_mlp", "v_act", "k_l2")


def run(args, width: int) -> dict:
    cfg, data, module, model, opt, batches = setup(args, width)
    px, py = val_batches(data, cfg.data.batch, cfg.data.seq, 1)[0]
    wanted = {f"l{i}_{n}" for i in range(args.layers) for n in NODES}

    def probe():
        module.TAPS = {}
        with torch.no_grad():
            model(px, py)
        taps, module.TAPS = module.TAPS, None
        out = {}
        for n, v in taps.items():
            if n in wanted:
                rms = max(v.pow(2).mean().sqrt().item(), 1e-30)
                energy = v.pow(2).reshape(-1, v.shape[-1]).sum(0)
                share = (energy.max() / energy.sum()).item()
                out[n] = (v.abs().max().item() / rms, rms, share, v.shape[-1], int(energy.argmax()))
        return out

    out = {"width": width, "lr": args.lr, "seed": args.seed, "steps": [{"step": 0, "node": probe()}]}
    for step in range(args.steps):
        schedule(opt, step, cfg)
        x, y = batches(step)
        _, loss = model(x, y)
        loss.backward()
        rows = {}
        for i, block in enumerate(model.layers):
            for name in ("v_proj", "g_proj"):
                proj = getattr(block.attn, name, None)
                if proj is not None:
                    energy = proj.weight.grad.pow(2).sum(1)
                    rows[f"l{i}_{name}"] = ((energy.max() / energy.mean()).item(), int(energy.argmax()))
            gain = block.attn.o_norm.weight.detach()
            rows[f"l{i}_o_norm_gain"] = ((gain - 1).abs().max().item(), int((gain - 1).abs().argmax()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        out["steps"].append({"step": step + 1, "train_loss": loss.item(), "node": probe(), "rows": rows})
        if not math.isfinite(loss.item()):
            break
    return out


def report(r: dict) -> None:
    rows = [s for s in r["steps"] if s["step"] in (1, 5, 10, 15, 20, 25)]
    print(f"width {r['width']}: gradient rows (top share x rows [index]), o_norm gain max |g - 1| [index]")
    for n in sorted(rows[0]["rows"]):
        print(f"  {n:16s} " + " ".join(f"{s['step']}:{s['rows'][n][0]:.1f}[{s['rows'][n][1]}]" for s in rows))
    print(f"width {r['width']} lr {r['lr']} seed {r['seed']}: max|x|/rms(x) / the top channel's energy share "
          "times the channel count (1 = even) [its index], at steps 0, 5, 10, 15, 20, last")
    pick = [s for s in r["steps"] if s["step"] in (0, 5, 10, 15, 20)] + r["steps"][-1:]
    for n in sorted(r["steps"][0]["node"]):
        ratios = " ".join(f"{s['step']}:{s['node'][n][0]:.0f}/{s['node'][n][2] * s['node'][n][3]:.1f}"
                          f"[{s['node'][n][4]}]" for s in pick if n in s["node"])
        print(f"  {n:12s} {ratios}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trial_args(ap)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    per_width(args, run, report)


if __name__ == "__main__":
    main()
