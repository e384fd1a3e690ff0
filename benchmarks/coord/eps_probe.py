"""How much of a one-step Adam update Adam's eps takes at large width (coord/method.md, GPU widths section).

    python benchmarks/coord/eps_probe.py --widths 1024,4096,8192 > benchmarks/coord/eps_probe.txt

The transformer the coord check measures (2 layers, muP for AdamW, base width 64, seed 0, the check's
batch of 1 x 32 bytes, float32, CPU). Only layer 1's q_proj and k_proj take a gradient. The script prints
their gradient entries at init: the median |g| and the share under 1e-8, torch's default eps. It then
prints the change of layer 1's attention scores after one AdamW step of those two matrices alone, at the
coord check's lr. The step is taken three ways: with eps = 1e-8 for every parameter, with the derived
per-parameter eps (the generated param_groups), and with eps = 1e-14 (no eps to speak of). The ratios to
the last show what eps costs.
"""

import argparse

import torch
from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.runtime import coord
from mudelta.runtime.models import model_class

TRAINED = ("layers.1.attn.q_proj.weight", "layers.1.attn.k_proj.weight")


def probe(module, width: int, lr: float) -> str:
    torch.manual_seed(0)
    model = model_class(module)(module.Config(width=width))
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in TRAINED)
    derived = {n: g for g in model.param_groups(lr) for n in g["names"] if n in TRAINED}  # lr and eps
    init = {n: params[n].detach().clone() for n in TRAINED}
    x, y = coord._batch(model, 1, 32, 0)

    def scores():
        module.TAPS = {}
        with torch.no_grad():
            model(x, y)
        s, module.TAPS = module.TAPS["l1_attn_scores"], None
        return s

    s0 = scores()
    _, loss = model(x, y)
    loss.backward()
    g = torch.cat([params[n].grad.abs().flatten() for n in TRAINED])
    change = {}
    for label in ("1e-8", "derived", "1e-14"):
        with torch.no_grad():
            for n in TRAINED:
                params[n].copy_(init[n])
        groups = [{"params": [params[n]], "lr": derived[n]["lr"],
                   "eps": derived[n]["eps"] if label == "derived" else float(label)} for n in TRAINED]
        torch.optim.AdamW(groups, weight_decay=0.0).step()
        change[label] = (scores() - s0).pow(2).mean().sqrt().item()
    ref, small = change["1e-14"], (g < 1e-8).float().mean()
    return (f"width {width:5d}: |grad| median {g.median():.2g}, share < 1e-8 {small:.3f}; "
            f"derived eps {derived[TRAINED[0]]['eps']:.2g}; score change {ref:.4g}, ratio with eps 1e-8 "
            f"{change['1e-8'] / ref:.3f}, with the derived eps {change['derived'] / ref:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="1024,4096,8192")
    args = ap.parse_args()
    graph = load("transformer", {"layers": "2", "vocab": "256"})
    module = load_module(generate(graph, "adamw", "mup", 64), "eps_probe")
    lr = coord.DEFAULT_LR["adamw"]
    print(f"torch {torch.__version__}, base lr {lr}; l1 q/k: gradient at init, score change after one step")
    for w in (int(x) for x in args.widths.split(",")):
        print(probe(module, w, lr), flush=True)


if __name__ == "__main__":
    main()
