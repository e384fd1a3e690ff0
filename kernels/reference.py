"""Pure-PyTorch gated delta rule: a naive per-token recurrence (the reference for every test) and a
chunked implementation (autograd through plain torch ops; the CPU fallback of the public functions).

Semantics, per sequence and head, with the state S in R^{K x V}:

    S <- exp(g_t) * S
    S <- S + k_t (beta_t * (v_t - S^T k_t))^T
    o_t = scale * S^T q_t

Layouts: q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H]; states [N, H, K, V] in float32
(N = B, or the number of sequences when ``cu_seqlens`` is given, which needs B == 1).
"""

from __future__ import annotations

import torch

__all__ = [
    "check_inputs",
    "l2norm",
    "naive_recurrent_gated_delta_rule",
    "chunk_gated_delta_rule_torch",
    "CHUNK",
]

CHUNK = 64
L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, computed in float32 (or float64), cast back."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) if t.dim() else "scalar"


def check_inputs(q, k, v, g, beta, initial_state=None, cu_seqlens=None):
    """Validate shapes, dtypes and devices; return (B, T, H, K, V, N). The values of g and cu_seqlens are
    checked by check_values."""
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("initial_state", initial_state), ("cu_seqlens", cu_seqlens)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {_shape(q)}")
    B, T, H, K = q.shape
    if B == 0 or H == 0 or K == 0:
        raise ValueError(f"q must have B, H, K >= 1, got shape {_shape(q)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, K] = {_shape(q)}, got {_shape(k)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {B}, {T}, {H} (from q), got {_shape(v)}")
    V = v.shape[3]
    if g.shape != q.shape[:3]:
        raise ValueError(f"g must be [B, T, H] = {B}x{T}x{H} (from q), got {_shape(g)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {B}x{T}x{H} (from q), got {_shape(beta)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"q, k, v must be float16, bfloat16, float32 or float64, got {q.dtype}")
    for name, t in (("g", g), ("beta", beta)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    devs = {t.device for t in (q, k, v, g, beta)}
    if initial_state is not None:
        devs.add(initial_state.device)
    if cu_seqlens is not None:
        devs.add(cu_seqlens.device)
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devs)}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(
                f"cu_seqlens needs B == 1 (sequences packed along T), got q of shape {_shape(q)}"
            )
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with N+1 >= 2 offsets, got {_shape(cu_seqlens)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None:
        if tuple(initial_state.shape) != (N, H, K, V):
            raise ValueError(
                f"initial_state must be [N, H, K, V] = {N}x{H}x{K}x{V}, got {_shape(initial_state)}"
            )
        if not initial_state.is_floating_point():
            raise TypeError(f"initial_state must be floating, got {initial_state.dtype}")
    return B, T, H, K, V, N


def check_values(g, T, cu_seqlens=None) -> None:
    """cu_seqlens rising from 0 to T, and g finite and <= 0: the chunked paths exponentiate sums of g within
    a chunk, so a positive g (growth) loses accuracy long before it overflows, and -inf gives NaN (-inf -
    -inf); decoding takes the same g, as it falls back to them on CPU and under autograd. One host round
    trip for all of it."""
    flags = [~torch.isfinite(g).all(), (g > 0).any()]
    if cu_seqlens is not None:
        cu = cu_seqlens.long()
        flags += [(cu[0] != 0) | (cu[-1] != T) | (cu[1:] < cu[:-1]).any()]
    bad = torch.stack(flags).tolist()
    if bad[0]:
        raise ValueError("g must be finite (a log decay; a decay of exactly 0 is g = -inf, not supported)")
    if bad[1]:
        raise ValueError(
            f"g must be <= 0 (a log decay), got max {g.max().item():.3g}; the chunked kernels "
            "lose accuracy for g > 0 (naive_recurrent_gated_delta_rule computes it exactly)"
        )
    if cu_seqlens is not None and bad[-1]:
        raise ValueError(f"cu_seqlens must rise from 0 to T={T}, got {cu_seqlens.tolist()}")


def _seq_bounds(T, B, cu_seqlens):
    """List of (batch index, start, end) per sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    offs = cu_seqlens.tolist()
    if offs[0] != 0 or offs[-1] != T or any(a > b for a, b in zip(offs[:-1], offs[1:], strict=True)):
        raise ValueError(f"cu_seqlens must rise from 0 to T={T}, got {offs}")
    return [(0, a, b) for a, b in zip(offs[:-1], offs[1:], strict=True)]


def naive_recurrent_gated_delta_rule(
    q,
    k,
    v,
    g,
    beta,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
):
    """Token-by-token recurrence in the dtype of q (use float64 for a reference).

    Returns (o [B, T, H, V] in v's dtype, final state [N, H, K, V] in float32 or float64, or None).
    """
    B, T, H, K, V, N = check_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    scale = K**-0.5 if scale is None else scale
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q.to(dt)), l2norm(k.to(dt))
    q, k, v, g, beta = (t.to(dt) for t in (q, k, v, g, beta))
    o = q.new_zeros(B, T, H, V)
    finals = []
    for n, (b, bos, eos) in enumerate(_seq_bounds(T, B, cu_seqlens)):
        S = q.new_zeros(H, K, V) if initial_state is None else initial_state[n].to(dt)
        outs = []
        for t in range(bos, eos):
            S = S * g[b, t].exp()[:, None, None]
            kt = k[b, t]  # [H, K]
            pred = torch.einsum("hkv,hk->hv", S, kt)
            u = beta[b, t][:, None] * (v[b, t] - pred)
            S = S + kt[:, :, None] * u[:, None, :]
            outs.append(scale * torch.einsum("hkv,hk->hv", S, q[b, t]))
        if outs:
            o[b, bos:eos] = torch.stack(outs, 0)
        finals.append(S)
    o = o.to(v.dtype)
    final = torch.stack(finals, 0) if output_final_state else None
    if final is not None and dt == torch.float32:
        final = final.float()
    return o, final


def _chunk_one(q, k, v, g, beta, scale, S, C):
    """One sequence. q, k [H, T, K]; v [H, T, V]; g, beta [H, T]; S [H, K, V]. Returns o [H, T, V], S."""
    H, T, K = q.shape
    V = v.shape[-1]
    pad = (-T) % C
    if pad:
        # padded tokens have k = 0, beta = 0, g = 0: they leave the state untouched
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (torch.nn.functional.pad(t, (0, pad)) for t in (g, beta))
    NT = (T + pad) // C
    q, k = q.reshape(H, NT, C, K), k.reshape(H, NT, C, K)
    v = v.reshape(H, NT, C, V)
    g, beta = g.reshape(H, NT, C), beta.reshape(H, NT, C)
    gam = g.cumsum(-1)  # within-chunk cumulative log decay
    idx = torch.arange(C, device=q.device)
    strict = idx[:, None] > idx[None, :]
    lower = idx[:, None] >= idx[None, :]
    diff = gam[..., :, None] - gam[..., None, :]
    decay_strict = diff.masked_fill(~strict, float("-inf")).exp()
    decay_lower = diff.masked_fill(~lower, float("-inf")).exp()
    # UT transform: (I + A) U = beta (V - e^gam K S0), A_ij = beta_i e^{gam_i - gam_j} k_i.k_j (j < i)
    A = (k * beta[..., None]) @ k.transpose(-1, -2) * decay_strict
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    Tm = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    W = Tm @ (k * (beta * gam.exp())[..., None])
    U0 = Tm @ (v * beta[..., None])
    qk = q @ k.transpose(-1, -2) * decay_lower
    outs = []
    for n in range(NT):
        u = U0[:, n] - W[:, n] @ S
        o = scale * (gam[:, n, :, None].exp() * (q[:, n] @ S) + qk[:, n] @ u)
        outs.append(o)
        glast = gam[:, n, -1]
        kd = k[:, n] * (glast[:, None] - gam[:, n]).exp()[..., None]
        S = glast.exp()[:, None, None] * S + kd.transpose(-1, -2) @ u
    o = torch.stack(outs, 1).reshape(H, NT * C, V)[:, :T]
    return o, S


def chunk_gated_delta_rule_torch(
    q,
    k,
    v,
    g,
    beta,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    use_qk_l2norm_in_kernel=False,
    chunk_size=CHUNK,
):
    """Chunked (UT/WY) gated delta rule in plain torch ops, differentiable by autograd.

    Computes in float32 (float64 for float64 inputs); o comes back in v's dtype, the state in float32.
    """
    B, T, H, K, V, N = check_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    scale = K**-0.5 if scale is None else scale
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q.to(dt)), l2norm(k.to(dt))
    qf, kf, vf, gf, bf = (t.to(dt) for t in (q, k, v, g, beta))
    o_parts, finals = [], []
    for n, (b, bos, eos) in enumerate(_seq_bounds(T, B, cu_seqlens)):
        S = qf.new_zeros(H, K, V) if initial_state is None else initial_state[n].to(dt)
        if eos > bos:
            sl = slice(bos, eos)
            o_n, S = _chunk_one(
                qf[b, sl].transpose(0, 1),
                kf[b, sl].transpose(0, 1),
                vf[b, sl].transpose(0, 1),
                gf[b, sl].transpose(0, 1),
                bf[b, sl].transpose(0, 1),
                scale,
                S,
                chunk_size,
            )
            o_parts.append((b, o_n.transpose(0, 1)))
        finals.append(S)
    if cu_seqlens is None:
        o = torch.stack([p for _, p in o_parts], 0) if T > 0 else vf.new_zeros(B, 0, H, V)
    else:
        o = torch.cat([p for _, p in o_parts], 0)[None] if o_parts else vf.new_zeros(1, 0, H, V)
    final = None
    if output_final_state:
        final = torch.stack(finals, 0)
        if dt == torch.float32:
            final = final.float()
    return o.to(v.dtype), final
