"""Top eigenvalue of the learning-rate-preconditioned Hessian across widths (sgd_trace.md, addendum 3).

SGD with per-group learning rates lr * m_p is gradient descent on the loss in the coordinates w = D^-1/2 theta
with D = diag(m_p); it is stable while lr * lambda stays under a constant (2 (1 + mu) for heavy-ball momentum
mu), where lambda is the largest eigenvalue of D^1/2 H D^1/2 (H the Hessian of the training loss on one fixed
batch). If muP-for-SGD keeps the preconditioned curvature Theta(1) in width, lambda is flat; a lambda growing
as n^s gives a largest stable lr shrinking as n^-s. Power iteration with Hessian-vector products (double
backward through the CPU reference recurrence), at init and after some SGD steps at a stable lr; also the share
of the top eigenvector's squared mass in each parameter group (layers merged).

    python benchmarks/lr_transfer/sgd_trace/sharpness.py --lr 0.0125 --at 0,10,20 \
        -o benchmarks/lr_transfer/sgd_trace/sharpness_mup.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trace import add_trial_args, key, per_width, setup  # noqa: E402

from mudelta.runtime.train import schedule  # noqa: E402


def _power(grads, params, scale, iters: int, seed: int, shift: float = 0.0):
    """Power iteration on D^1/2 H D^1/2 - shift I: (Rayleigh quotient + shift, eigenvector)."""
    gen = torch.Generator().manual_seed(seed)
    u = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((t * t).sum() for t in u))
        u = [t / norm for t in u]
        hw = torch.autograd.grad(
            grads, params, grad_outputs=[t * s for t, s in zip(u, scale)], retain_graph=True
        )
        au = [h.detach() * s - shift * t for h, s, t in zip(hw, scale, u)]
        lam = sum((a * b).sum() for a, b in zip(u, au)).item()
        u = au
    norm = torch.sqrt(sum((t * t).sum() for t in u))
    return lam + shift, [t / norm for t in u]


def top_eig(model, params, scale, x, y, iters: int, seed: int):
    """Largest (positive) eigenvalue of D^1/2 H D^1/2 at the current weights, the eigenvalue of largest
    magnitude, and the top eigenvector's mass per parameter. When the largest magnitude is negative, the
    iteration is repeated on the matrix shifted by it, whose largest eigenvalue is then the top one."""
    _, loss = model(x, y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    lam_abs, u = _power(grads, params, scale, iters, seed)
    lam = lam_abs
    if lam_abs <= 0:
        lam, u = _power(grads, params, scale, iters, seed + 1, shift=lam_abs)
    return loss.item(), lam, lam_abs, [(t**2).sum().item() for t in u]


def run(args, width: int) -> dict:
    cfg, _, _, model, opt, batches = setup(args, width)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    mult = {id(p): g["base_lr"] / cfg.train.lr for g in opt.param_groups for p in g["params"]}
    scale = [mult[id(p)] ** 0.5 for p in params]
    x0, y0 = batches(0)
    at = sorted(int(v) for v in args.at.split(","))
    out = {"width": width, "lr": args.lr, "par": args.par, "points": []}
    for step in range(at[-1] + 1):
        if step in at:
            loss, lam, lam_abs, mass = top_eig(model, params, scale, x0, y0, args.iters, args.seed)
            share = defaultdict(float)
            for n, m in zip(names, mass):
                share[key(n)] += m
            top = dict(sorted(share.items(), key=lambda kv: -kv[1])[:6])
            out["points"].append(
                {"step": step, "loss": loss, "lambda": lam, "lambda_absmax": lam_abs, "share": top}
            )
            print(
                f"width {width} step {step}: loss {loss:.3f} lambda {lam:.4g} (largest |.|: {lam_abs:.4g})",
                flush=True,
            )
        if step == at[-1]:
            break
        schedule(opt, step, cfg)
        x, y = batches(step)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    add_trial_args(ap)
    ap.add_argument("--at", default="0,10", help="steps at which to measure (0: init)")
    ap.add_argument("--iters", type=int, default=15, help="power iterations")
    ap.add_argument("-o", "--out", required=True)
    per_width(ap.parse_args(), run)  # run() prints each measured point


if __name__ == "__main__":
    main()
