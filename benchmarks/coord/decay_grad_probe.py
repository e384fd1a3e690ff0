"""The gradient of GDN's log decay g at init, per token, against width (coord/method.md, GPU widths section).

    python benchmarks/coord/decay_grad_probe.py --widths 256,512,1024,2048 [--untied] [--detach-rms final]
        [--uniform-p] [--option gate=false] [--hold-gated-norm]

muP model generated for SGD at base width 64, 2 layers, float64, the coord check's batch (1 x 32 bytes), one
backward pass per seed. For layer 0 it prints the rms over tokens and heads of dL/dg_t, the mean over tokens
(a same-signed part survives it, a token-to-token random one falls by sqrt(T)), the part through the token's
own output, -beta_t (k_t . q_t) <dL/do_t, v_t>, and the rms of the dt_bias gradient (the sum over tokens);
geometric means over seeds. Ablations that cut one path from the loss to a forward quantity: --detach-rms
final|onorm|all treats the rms of the final norm (of the mixers' output norms, of every RMSNorm) as a constant
in the backward, so its Jacobian no longer projects along its input; --uniform-p backpropagates the
cross-entropy's cotangent with the softmax fixed at uniform (1/V - onehot(y)), so the cotangent no longer
depends on the forward through the logits. --hold-gated-norm holds the norm of each head's gated output
constant in the backward (the forward is unchanged).
"""

import argparse

import torch
import torch.nn.functional as F
from mudelta.kernels import chunk_gated_delta_rule_torch
from mudelta.runtime.coord import geomean
from probe_setup import probe_module, seeded


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,512,1024,2048")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--detach-rms", choices=["none", "final", "onorm", "all"], default="none")
    ap.add_argument("--uniform-p", action="store_true")
    ap.add_argument("--hold-gated-norm", action="store_true")
    ap.add_argument("--option", action="append", default=[], help="a preset option, e.g. gate=false")
    args = ap.parse_args()
    options = dict(kv.split("=", 1) for kv in args.option)
    module = probe_module("decay_grad_probe", tied=not args.untied, options=options)
    calls = []

    def recurrence(
        q, k, v, g, beta, scale=None, *rest, **kw
    ):  # keeps layer inputs and output for their grads
        g.retain_grad()
        o, state = chunk_gated_delta_rule_torch(q, k, v, g, beta, scale, *rest, **kw)
        o.retain_grad()
        calls.append((q, k, v, g, beta, o))
        return o, state

    module.chunk_gated_delta_rule = recurrence
    if args.hold_gated_norm:  # the gated output's norm per head held constant in the backward (same forward)
        tap = module.tap

        def held(name, x):
            if name.endswith("_gated"):
                norm = x.norm(dim=-1, keepdim=True)
                x = x * (norm.detach() / norm)
            return tap(name, x)

        module.tap = held

    def rms_constant(self, x):  # RMSNorm with its rms held constant in the backward
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps).detach() * self.weight

    for w in (int(x) for x in args.widths.split(",")):
        rows = []
        for seed in range(args.seeds):
            model, x, y = seeded(module, w, seed)
            onorms = [b.attn.o_norm for b in model.layers]
            norms = {"none": [], "final": [model.norm], "onorm": onorms, "all": list(model.modules())}[
                args.detach_rms
            ]
            for m in norms:
                if isinstance(m, module.RMSNorm):
                    m.forward = rms_constant.__get__(m)
            calls.clear()
            module.TAPS = {}
            logits, loss = model(x, y)
            module.TAPS = None
            if args.uniform_p:  # d loss / d logits = 1/V - onehot(y), whatever the logits
                cot = torch.full_like(logits, 1.0 / logits.shape[-1]) - F.one_hot(y, logits.shape[-1])
                loss = (logits * cot).sum() / y.numel()
            loss.backward()
            q, k, v, g, beta, o = calls[0]  # layer 0, [1, T, H, ...]
            dg = g.grad[0]
            own = -(beta[0] * (k[0] * q[0]).sum(-1) * (o.grad[0] * v[0]).sum(-1))
            with torch.no_grad():
                rows.append(
                    [
                        t.item()
                        for t in (
                            dg.pow(2).mean().sqrt(),
                            dg.mean(0).abs().mean(),
                            own.pow(2).mean().sqrt(),
                            own.mean(0).abs().mean(),
                            model.layers[0].attn.dt_bias.grad.pow(2).mean().sqrt(),
                        )
                    ]
                )
        geo = [geomean(r[i] for r in rows) for i in range(5)]
        print(
            f"width {w:5d}: dL/dg rms {geo[0]:.3g}, |mean over tokens| {geo[1]:.3g}; own-token part rms "
            f"{geo[2]:.3g}, |mean| {geo[3]:.3g}; dt_bias grad rms {geo[4]:.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
