"""Shared checking helpers: random inputs per gate regime, and the error ratio of an implementation's
outputs and gradients against the float64 naive recurrence. Used by tests/kernels and benchmarks."""

from __future__ import annotations

import math

import torch

from .reference import naive_recurrent_gated_delta_rule

# thresholds on rms(out - ref) / rms(ref), bf16 inputs (issue 5); fp16 uses the same, fp32 far tighter
_LOWP = {"o": 5e-3, "ht": 5e-3, "q": 8e-3, "k": 8e-3, "v": 8e-3, "h0": 8e-3, "g": 2e-2, "beta": 2e-2}
_LOWP.update(o_nograd=_LOWP["o"], ht_nograd=_LOWP["ht"])  # the same forward without keeping anything
TOL = {
    torch.bfloat16: _LOWP,
    torch.float16: dict(_LOWP),
    torch.float32: {n: 1e-4 for n in _LOWP},
}

REGIMES = ("normal", "no_decay", "strong_decay", "beta0", "beta1")


def error_ratio(out: torch.Tensor, ref: torch.Tensor) -> float:
    """rms(out - ref) / rms(ref) in float64; NaN/inf anywhere gives inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    den = ref.pow(2).mean().sqrt().item()
    num = (out - ref).pow(2).mean().sqrt().item()
    return num / den if den > 0 else num


def make_inputs(B, T, H, K, V, dtype, device="cpu", regime="normal", h0=True, n_seq=None, seed=None):
    """Random inputs for one gate regime. k is L2-normalised (the stable regime of the delta rule)."""
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()

    def rnd(*s):
        return torch.randn(*s, generator=gen)

    def uni(*s):
        return torch.rand(*s, generator=gen)

    q = rnd(B, T, H, K)
    k = torch.nn.functional.normalize(rnd(B, T, H, K), dim=-1)
    v = rnd(B, T, H, V)
    if regime == "no_decay":
        g = -1e-4 * uni(B, T, H)
    elif regime == "strong_decay":
        g = -2.0 - 6.0 * uni(B, T, H)
    else:
        g = torch.nn.functional.logsigmoid(rnd(B, T, H) + 2.0)  # mostly in [-1, 0]
    if regime == "beta0":
        beta = 1e-3 * uni(B, T, H)
    elif regime == "beta1":
        beta = 1.0 - 1e-3 * uni(B, T, H)
    else:
        beta = uni(B, T, H)
    N = B if n_seq is None else n_seq
    hs = rnd(N, H, K, V) if h0 else None
    gdt = torch.float64 if dtype == torch.float64 else torch.float32
    if hs is not None:
        hs = hs.to(gdt)
    out = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g.to(gdt), beta=beta.to(dtype), h0=hs)
    return {n: (t.to(device) if t is not None else None) for n, t in out.items()}


def run_and_grad(
    fn, inp, scale=None, cu_seqlens=None, l2norm=False, grads=True, do=None, dht=None, grad_scale=1.0, **kw
):
    """Call fn like chunk_gated_delta_rule; return (outputs and gradients by name, do, dht). Without do and
    dht given, both are standard normal times grad_scale (a small one probes the gradients' range)."""
    names = ["q", "k", "v", "g", "beta", "h0"]
    leaves = {
        n: (inp[n].detach().clone().requires_grad_(grads) if inp[n] is not None else None) for n in names
    }
    with torch.set_grad_enabled(grads):
        o, ht = fn(
            leaves["q"],
            leaves["k"],
            leaves["v"],
            leaves["g"],
            leaves["beta"],
            scale=scale,
            initial_state=leaves["h0"],
            output_final_state=True,
            cu_seqlens=cu_seqlens,
            use_qk_l2norm_in_kernel=l2norm,
            **kw,
        )
    res = {"o": o.detach(), "ht": ht.detach()}
    if grads:
        if do is None:
            do = (torch.randn_like(o, dtype=torch.float32) * grad_scale).to(o.dtype)
            dht = torch.randn_like(ht, dtype=torch.float32) * grad_scale
        loss = (o.double() * do.double()).sum() + (ht.double() * dht.double()).sum()
        loss.backward()
        for n in names:
            if leaves[n] is not None:
                res[n] = leaves[n].grad.detach()
    return res, do, dht


def compare(
    fn, inp, scale=None, cu_seqlens=None, l2norm=False, grads=True, ref_fn=None, grad_scale=1.0, **kw
):
    """Error ratios of fn against a float64 reference (default: the naive recurrence) on the same inputs."""
    out, do, dht = run_and_grad(fn, inp, scale, cu_seqlens, l2norm, grads, grad_scale=grad_scale, **kw)
    inp64 = {n: (t.double() if t is not None else None) for n, t in inp.items()}
    ref, _, _ = run_and_grad(
        ref_fn or naive_recurrent_gated_delta_rule,
        inp64,
        scale,
        cu_seqlens,
        l2norm,
        grads,
        do=do.double() if do is not None else None,
        dht=dht.double() if dht is not None else None,
    )
    err = {n: error_ratio(out[n], ref[n]) for n in out}
    if grads:  # the forward alone (nothing kept for a backward) must give the same outputs
        out_ng, _, _ = run_and_grad(fn, inp, scale, cu_seqlens, l2norm, False, **kw)
        err.update({f"{n}_nograd": error_ratio(out_ng[n], ref[n]) for n in ("o", "ht")})
    return err
