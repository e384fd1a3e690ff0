"""Is GDN's decay gradient at init a same-signed (LLN) part or a fluctuation? (coord/method.md, GPU widths)

    python benchmarks/coord/decay_grad_sign.py --widths 512,2048 [--untied] [--derived-norm-eps]

The probe's model (muP for SGD at base 64, 2 layers, float64, the coord check's batch of 1 x 32 bytes). Per
width, layer 0's dt_bias gradient over 8 seeds x 6 heads: how many are positive, their mean and rms. A
zero-mean fluctuation has about half positive and a mean near 0 that falls with the rms; an aligned part keeps
its sign.
"""

import argparse

from probe_setup import probe_module, seeded


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="512,2048")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--derived-norm-eps", action="store_true")
    args = ap.parse_args()
    module = probe_module("decay_grad_sign", tied=not args.untied)
    for w in (int(x) for x in args.widths.split(",")):
        grads = []
        for seed in range(args.seeds):
            model, x, y = seeded(module, w, seed, derived_norm_eps=args.derived_norm_eps)
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
