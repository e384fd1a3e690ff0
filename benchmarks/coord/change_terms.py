"""Where a node's change comes from, input by input, at widths up to 4096 (CPU): the evidence for the two
muP coordinate-check nodes whose slopes at widths 64-1024 miss the engine's exponent.

    python benchmarks/coord/change_terms.py   # writes benchmarks/coord/change_terms.{json,md}

- GDN o = S q (n^-1/2 at init) is predicted to move by Theta(1) through the aligned changes of q and k
  (each built from the gradient through S q, so contracted over d_k by LLN); through v it moves by n^-1/2
  (CLT). Measured slope of o at 64-1024: about -0.3.
- Transformer attention scores q.k are predicted to move by n^1 through the aligned changes of q and k;
  the rest of their change contracts by CLT (n^1/2). Measured slope at 64-1024: 0.6-0.8.
Each node is recomputed with one input at a time replaced by its value after one AdamW step (muP, one
layer, batch 2 x 16 bytes, mean of 2 seeds). If the parts the engine calls Theta(1) flatten at large
widths while the others fall at their CLT rate, the fitted slope at small widths is a finite-width
crossover (the CLT parts have larger coefficients there), not a wrong exponent.
"""

import datetime
import json
import math
from pathlib import Path

import torch

from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.kernels import chunk_gated_delta_rule
from mudelta.runtime.coord import _batch, make_optimizer, model_class

WIDTHS = (128, 256, 512, 1024, 2048, 4096)
OUT = Path(__file__).parent


def recurrence(t):
    q, v = t["q_scaled"], t["v_act"]
    return chunk_gated_delta_rule(q, t["k_l2"], v.view(*v.shape[:2], q.shape[2], -1), t["g"], t["beta"],
                                  scale=1.0)[0]


def scores(t, heads=4):
    q, k = (t[n].view(*t[n].shape[:2], heads, -1).transpose(1, 2) for n in ("q", "k"))
    return q @ k.transpose(-1, -2)


# name: (preset, overrides, node, inputs, function of the inputs' values)
CASES = {
    "gdn_o": ("gdn", {"layers": "1"}, "o", ("q_scaled", "k_l2", "v_act", "g", "beta"), recurrence),
    "transformer_scores": ("transformer", {"layers": "1", "heads": "4"}, "attn_scores", ("q", "k"), scores),
}


def rms(t):
    return t.double().pow(2).mean().sqrt().item()


def parts(module, inputs, fn, width, seed):
    torch.manual_seed(seed)
    model = model_class(module)(module.Config(width=width))
    opt = make_optimizer("adamw", model.param_groups(1e-2, weight_decay=0.0), 1e-2)
    x, y = _batch(model, 2, 16, seed)
    taps = []
    for step in range(2):
        module.TAPS = {}
        _, loss = model(x, y)
        taps.append({n: module.TAPS["l0_" + n].detach().double() for n in inputs})
        if step == 0:
            loss.backward()
            opt.step()
    module.TAPS = None
    before = fn(taps[0])
    out = {"total": rms(fn(taps[1]) - before), "init": rms(before)}
    for n in inputs:
        out[n] = rms(fn({**taps[0], n: taps[1][n]}) - before)
    return out


def main():
    results, md = {}, []
    date = datetime.date.today().isoformat()
    for case, (preset, overrides, node, inputs, fn) in CASES.items():
        graph = load(preset, {**overrides, "vocab": "256"})
        module = load_module(generate(graph, "adamw", "mup", base_width=WIDTHS[0]), f"terms_{case}")
        rows = {}
        for w in WIDTHS:
            runs = [parts(module, inputs, fn, w, s) for s in range(2)]
            rows[w] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
            print(case, w, {k: f"{v:.3e}" for k, v in rows[w].items()}, flush=True)
        lo, hi = WIDTHS[-3], WIDTHS[-1]
        slopes = {k: math.log(rows[hi][k] / rows[lo][k]) / math.log(hi / lo) for k in rows[lo]}
        results[case] = {"node": node, "rows": rows, "slopes": slopes}
        keys = list(rows[lo])
        md += [f"## {case}: `{node}`", "", "| width | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        md += [f"| {w} | " + " | ".join(f"{rows[w][k]:.2e}" for k in keys) + " |" for w in WIDTHS]
        md += [f"| slope {lo}-{hi} | " + " | ".join(f"{slopes[k]:+.2f}" for k in keys) + " |", ""]
    meta = {"date": date, "torch": torch.__version__, "device": "CPU"}
    (OUT / "change_terms.json").write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")
    head = [f"# A node's change, input by input ({date}, CPU, torch {meta['torch']})", "",
            "rms of the node's change after one AdamW step (muP, one layer, 2 x 16 bytes, mean of 2 seeds) when "
            "only the named input takes its new value (`total`: all of them; `init`: the node at init). "
            "Script: change_terms.py.", ""]
    (OUT / "change_terms.md").write_text("\n".join(head + md))


if __name__ == "__main__":
    main()
