"""Is GDN's decay gradient at init a same-signed (LLN) part or a fluctuation? (coord/method.md, GPU widths)

    python benchmarks/coord/decay_grad_sign.py --widths 512,2048 [--untied]

The probe's model (muP for SGD at base 64, 2 layers, float64, the coord check's batch of 1 x 32 bytes). Per
width, layer 0's dt_bias gradient over 8 seeds x 6 heads: how many are positive, their mean and rms. A
zero-mean fluctuation has about half positive and a mean near 0 that falls with the rms; an aligned part keeps
its sign.
"""

import argparse

import torch
from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.runtime import coord
from mudelta.runtime.models import model_class


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="512,2048")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--untied", action="store_true")
    args = ap.parse_args()
    opts = {"layers": "2", "vocab": "256", "tied": "false" if args.untied else "true"}
    module = load_module(generate(load("gdn", opts), "sgd", "mup", base_width=64), "decay_grad_sign")
    for w in (int(x) for x in args.widths.split(",")):
        grads = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = model_class(module)(module.Config(width=w)).double()
            x, y = coord._batch(model, 1, 32, seed)
            _, loss = model(x, y)
            loss.backward()
            grads += model.layers[0].attn.dt_bias.grad.tolist()
        mean = sum(grads) / len(grads)
        rms = (sum(g * g for g in grads) / len(grads)) ** 0.5
        print(
            f"width {w:5d} {'untied' if args.untied else 'tied'}: dt_bias grad {sum(g > 0 for g in grads)}/"
            f"{len(grads)} positive, mean {mean:+.3g}, rms {rms:.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
