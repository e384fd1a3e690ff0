"""Where GDN's o = S q change comes from, per input of the recurrence, at widths up to 4096 (CPU).

    python benchmarks/coord/gdn_o_terms.py   # writes benchmarks/coord/gdn_o_terms.{json,md}

The engine predicts that o (n^-1/2 at init) moves by Theta(1) after a step, through the aligned changes
of q and k (each built from the gradient through S q, so contracted over d_k by LLN); the change through
v is n^-1/2 (CLT). The coordinate check at widths 64-1024 measures a slope near -0.3 for o. This script
re-runs the recurrence with one input at a time replaced by its value after one AdamW step (muP, 1 layer,
batch 2 x 16 bytes, 2 seeds) and reports the rms of each part of the change: the q and k parts flatten
(slope -> 0), the v part falls as n^-1/2, and at small widths the v part's larger coefficient pulls the
fitted slope of the sum down: a finite-width crossover, not a wrong exponent.
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
INPUTS = ("q_scaled", "k_l2", "v_act", "g", "beta")
OUT = Path(__file__).parent


def rms(t):
    return t.double().pow(2).mean().sqrt().item()


def recurrence(taps):
    q, k, v, g, beta = (taps[n] for n in INPUTS)
    return chunk_gated_delta_rule(q, k, v.view(*v.shape[:2], q.shape[2], -1), g, beta, scale=1.0)[0]


def parts(module, width, seed):
    torch.manual_seed(seed)
    model = model_class(module)(module.Config(width=width))
    opt = make_optimizer("adamw", model.param_groups(1e-2, weight_decay=0.0), 1e-2)
    x, y = _batch(model, 2, 16, seed)
    taps = []
    for step in range(2):
        module.TAPS = {}
        _, loss = model(x, y)
        taps.append({n: module.TAPS["l0_" + n].detach().double() for n in INPUTS})
        if step == 0:
            loss.backward()
            opt.step()
    module.TAPS = None
    o0 = recurrence(taps[0])
    out = {"total": rms(recurrence(taps[1]) - o0), "init": rms(o0)}
    for n in INPUTS:
        out[n] = rms(recurrence({**taps[0], n: taps[1][n]}) - o0)
    return out


def main():
    graph = load("gdn", {"layers": "1", "vocab": "256"})
    module = load_module(generate(graph, "adamw", "mup", base_width=WIDTHS[0]), "gdn_o_terms")
    rows = {}
    for w in WIDTHS:
        runs = [parts(module, w, s) for s in range(2)]
        rows[w] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        print(w, {k: f"{v:.3e}" for k, v in rows[w].items()}, flush=True)
    slopes = {}
    for k in rows[WIDTHS[0]]:
        a, b = rows[WIDTHS[-3]][k], rows[WIDTHS[-1]][k]
        slopes[k] = math.log(b / a) / math.log(WIDTHS[-1] / WIDTHS[-3])
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "device": "CPU"}
    (OUT / "gdn_o_terms.json").write_text(json.dumps({"meta": meta, "rows": rows, "slopes": slopes}, indent=1))
    keys = list(rows[WIDTHS[0]])
    md = [f"# GDN o = S q: the change by input ({meta['date']}, CPU, torch {meta['torch']})", "",
          "rms of the change of o after one AdamW step (muP, 1 layer, 2 x 16 bytes, mean of 2 seeds) when only "
          "one input of the recurrence takes its new value; `init` is o's size at init.", "",
          "| width | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    md += [f"| {w} | " + " | ".join(f"{rows[w][k]:.2e}" for k in keys) + " |" for w in WIDTHS]
    md += [f"| slope {WIDTHS[-3]}-{WIDTHS[-1]} | " + " | ".join(f"{slopes[k]:+.2f}" for k in keys) + " |"]
    (OUT / "gdn_o_terms.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
