"""The radial part of GDN's decay gradient at init: through the norm of each head's gated output (method.md).

    python benchmarks/coord/decay_grad_radial.py --widths 512,2048 [--norm-eps 1e-6] [--derived-norm-eps]

The probe's model (muP for SGD at base 64, 2 layers, tied, float64, the coord check's batch of 1 x 32 bytes),
8 seeds. For layer 0, with u the gated output (o_proj's input) of a token and head: the radial cotangent
rho = <dL/du, u/|u|> and the coefficient <dL/du, u>/<u, u>; the change of |u| and of |o_norm(o)| per unit of
dt_bias (finite difference, every head at once); and the dt_bias gradient's radial part, the sum over tokens
of rho d|u|/d dt_bias, next to the whole gradient (mean and rms over seeds and heads). --norm-eps sets
Config.norm_eps, every norm's eps unless --derived-norm-eps (then the o_norm eps is norm_eps * (width/64)^e
with the derived e, the default when decay_grad_radial.txt was written).
"""

import argparse

import torch
from mudelta.kernels import chunk_gated_delta_rule_torch
from probe_setup import probe_module, seeded


def stats(t):
    return f"mean {t.mean().item():+.2e} rms {t.pow(2).mean().sqrt().item():.2e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="512,2048")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--norm-eps", type=float, default=1e-6)
    ap.add_argument("--derived-norm-eps", action="store_true")
    args = ap.parse_args()
    module = probe_module("decay_grad_radial")
    outputs, seen = [], []

    def recurrence(*a, **kw):
        o, state = chunk_gated_delta_rule_torch(*a, **kw)
        outputs.append(o.detach())
        return o, state

    module.chunk_gated_delta_rule = recurrence
    for w in (int(x) for x in args.widths.split(",")):
        rows = {k: [] for k in ("rho", "coef", "du", "do", "radial", "grad")}
        for seed in range(args.seeds):
            eps = dict(norm_eps=args.norm_eps, derived_norm_eps=args.derived_norm_eps)
            model, x, y = seeded(module, w, seed, **eps)
            att = model.layers[0].attn
            hook = att.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
            outputs.clear()
            seen.clear()
            _, loss = model(x, y)
            seen[0].retain_grad()
            loss.backward()
            u, du, o = seen[0].detach(), seen[0].grad, outputs[0]
            eps = 1e-5
            with torch.no_grad():
                att.dt_bias += eps
                outputs.clear()
                seen.clear()
                model(x, y)
                att.dt_bias -= eps
            hook.remove()
            H = att.heads
            u, du, u2 = (t.view(*t.shape[:2], H, -1)[0] for t in (u, du, seen[0]))
            n0, n1 = u.norm(dim=-1), u2.norm(dim=-1)
            rho = (du * u).sum(-1) / n0
            dn = (n1 - n0) / eps
            rows["rho"].append(rho)
            rows["coef"].append((du * u).sum(-1) / n0**2)
            rows["du"].append(dn)
            rows["do"].append((att.o_norm(outputs[0]).norm(dim=-1) - att.o_norm(o).norm(dim=-1))[0] / eps)
            rows["radial"].append((rho * dn).sum(0))
            rows["grad"].append(att.dt_bias.grad.clone())
        r = {k: torch.stack(v) for k, v in rows.items()}
        print(
            f"width {w}: rho {stats(r['rho'])}; coefficient along u, mean |.| "
            f"{r['coef'].abs().mean().item():.2e}; "
            f"d|u|/d dt_bias {stats(r['du'])}; d|o_norm(o)|/d dt_bias {stats(r['do'])}; dt_bias grad: radial "
            f"part {stats(r['radial'])}, whole {stats(r['grad'])}",
            flush=True,
        )


if __name__ == "__main__":
    main()
