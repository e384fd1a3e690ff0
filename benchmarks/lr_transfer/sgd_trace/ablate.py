"""Is the width-dependent SGD instability in GDN's data-dependent gates? (sgd_trace.md, addendum 5)

Trains the CPU analog of sgd_trace.md (trace.setup: same config, param groups, schedule and data) for
--steps steps with parts of the recurrence's gating frozen at a token-independent value:

  --freeze decay   a_proj = 0, and a_proj, dt_bias, A_log not trained: every head decays by its init constant
  --freeze beta    b_proj = 0 and not trained: beta = 1/2 for every token and head
  --freeze both
  --freeze none    the model as trained in the sweep (a check of the reproduction)

--recurrence linear replaces the gated delta rule by gated linear attention with the same gates and no erase
term, S_t = alpha_t S_(t-1) + beta_t v_t k_t^T (computed in its quadratic form): a test of the delta rule.

--qkv-act none drops the silu after the q, k, v projections (and convolutions), as in the transformer's
attention; silu has a Theta(1) derivative, so no derived exponent depends on it.

--detach-final-rms holds the final norm's rms constant in the backward (the forward is unchanged), which cuts
the path by which the tied readout aligns the backward with the forward at init (coord/method.md, "Where the
aligned part comes from").

--conv-norm equal rescales every channel's short-convolution kernel (q, k and v) at init to the mean norm
over its channels: the runaway channels of addendum 8 start with the largest v kernels (addendum 10).

and prints, per width, the final train loss or the step at which the loss first rose 2 nats above its first
value (the sweep's divergence test). One JSON line per width goes to --out.

    python benchmarks/lr_transfer/sgd_trace/ablate.py --freeze decay --lr 0.05 --widths 64,512 -o abl.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from trace import add_trial_args, per_width, setup  # noqa: E402

from mudelta.runtime.train import schedule  # noqa: E402

FROZEN = {"decay": ("a_proj.weight", "dt_bias", "A_log"), "beta": ("b_proj.weight",)}
ZEROED = ("a_proj.weight", "b_proj.weight")


def gated_linear_attention(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, **_):
    """o_t = sum_(s <= t) exp(G_t - G_s) beta_s (q_t . k_s) v_s, G the cumulative log decay; [B, T, H, K]."""
    T = q.shape[1]
    G = g.to(torch.promote_types(g.dtype, torch.float32)).cumsum(1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
    decay = torch.where(causal, G[:, :, None] - G[:, None], -math.inf).exp()  # [B, t, s, H]
    scores = torch.einsum("bthk,bshk->btsh", q * (scale or 1.0), k) * decay * beta[:, None]
    return torch.einsum("btsh,bshv->bthv", scores.to(v.dtype), v), None


def run(args, width: int) -> dict:
    cfg, _, module, model, opt, batches = setup(args, width)
    if args.recurrence == "linear":
        module.chunk_gated_delta_rule = gated_linear_attention
    if args.qkv_act == "none":

        def branch(self, name, x):
            h = getattr(self, f"{name}_proj")(x)
            return getattr(self, f"{name}_conv1d")(h) if self.cfg.conv else h

        module.GatedDeltaNet.branch = branch
    parts = {k: v for k, v in FROZEN.items() if args.freeze in (k, "both")}
    if args.detach_final_rms:
        norm = model.norm

        def rms_held(x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps).detach() * norm.weight

        norm.forward = rms_held
    if args.conv_norm == "equal":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("_conv1d.weight"):
                    norms = p.reshape(p.shape[0], -1).norm(dim=1)
                    p.mul_((norms.mean() / norms).reshape(-1, *[1] * (p.dim() - 1)))
    frozen = [n for n, p in model.named_parameters() if any(n.endswith(s) for f in parts.values() for s in f)]
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
                if n.endswith(ZEROED):
                    p.zero_()
    losses, diverged = [], None
    for step in range(args.steps):
        schedule(opt, step, cfg)
        x, y = batches(step)
        _, loss = model(x, y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > losses[0] + cfg.train.diverge_margin:
            diverged = step + 1
            break
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    tail = losses[-5:]
    return {
        "width": width,
        "lr": args.lr,
        "seed": args.seed,
        "freeze": args.freeze,
        "options": args.option
        + (["detach_final_rms"] if args.detach_final_rms else [])
        + ([f"recurrence={args.recurrence}"] if args.recurrence != "delta" else [])
        + (["qkv_act=none"] if args.qkv_act == "none" else [])
        + (["conv_norm=equal"] if args.conv_norm == "equal" else []),
        "set": args.set,
        "frozen": len(frozen),
        "diverged_at": diverged,
        "final_train_loss": None if diverged else sum(tail) / len(tail),
        "losses": losses,
    }


def report(r: dict) -> None:
    end = (
        f"div@{r['diverged_at']}" if r["diverged_at"] else f"train loss (last 5) {r['final_train_loss']:.3f}"
    )
    print(
        f"freeze {r['freeze']} {' '.join(r.get('options', []))} width {r['width']} lr {r['lr']}: {end} "
        f"({r['frozen']} tensors frozen)",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_trial_args(ap)
    ap.add_argument("--freeze", choices=["none", "decay", "beta", "both"], required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--detach-final-rms", action="store_true")
    ap.add_argument("--recurrence", choices=["delta", "linear"], default="delta")
    ap.add_argument("--qkv-act", choices=["silu", "none"], default="silu")
    ap.add_argument("--conv-norm", choices=["init", "equal"], default="init")
    ap.add_argument("-o", "--out", required=True)
    per_width(ap.parse_args(), run, report)


if __name__ == "__main__":
    main()
