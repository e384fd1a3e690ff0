"""Triton kernels for the gated delta rule: chunked forward/backward (UT/WY form) and recurrent decode.

Algorithm, per sequence, head and chunk of BT = 64 tokens (positions i < L, L <= BT), with S0 the state
entering the chunk, gam_i the cumulative sum of g inside the chunk and Gam_ij = exp(gam_i - gam_j):

    A_ij = beta_i Gam_ij k_i.k_j (j < i),  T = (I + A)^-1  (unit lower triangular)
    W = T diag(beta e^gam) K,  U~ = T diag(beta) V,  U = U~ - W S0            (the "new values")
    o = scale (diag(e^gam) Q S0 + (Q K^T * Gam * [j <= i]) U)
    S_end = e^gam_last S0 + (diag(e^(gam_last - gam)) K)^T U

Forward: `_fwd_prepare` (chunk-parallel: gam, T, W, U~), `_fwd_state` (sequential over chunks: S0 of
every chunk, U, final state), `_fwd_output` (chunk-parallel: o).
Backward: `_bwd_state` (sequential, reversed: dS at every chunk end, dU, dS0), `_bwd_dqk`
(chunk-parallel: dq, the output/state parts of dk, dW, dgam) and `_bwd_wy` (chunk-parallel: backward of
the UT transform: dv, dbeta, the rest of dk and dgam, dg).  Derivation in benchmarks/NOTES.md.

All sequences are handled as packed tokens [B*T, H, *] with offsets (cu_seqlens); batches without
cu_seqlens get uniform offsets. Token offsets are 64-bit inside the kernels.

Hopper note: Triton 3.6 miscompiles tl.trans of a tl.dot result fed into another tl.dot; no kernel
here does that (transposed products are computed with swapped operands, or transposed only for stores).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BT = 64  # chunk size
# intermediates (W, U~, per-chunk states, new values and their gradients) are kept in float32 and multiplied
# in tf32 (ieee for float32 inputs): rounding them to bf16 costs ~0.002 relative error each, which adds up
# past the 0.005 budget of the output.
INTER = torch.float32
# checks set this to fill every buffer with NaN before the kernels run, so unwritten elements show up
POISON = False


def _empty(*shape, device, dtype):
    if POISON:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


def _next_pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


# ----------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_prepare(
    k,
    v,
    g,
    beta,
    cu,
    chunk_seq,
    chunk_pos,
    gam_out,
    T_out,
    w_out,
    u_out,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    PREC_INV: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    seq = tl.load(chunk_seq + i_c)
    pos = tl.load(chunk_pos + i_c).to(tl.int64)
    bos = tl.load(cu + seq).to(tl.int64)
    eos = tl.load(cu + seq + 1).to(tl.int64)
    t0 = bos + pos * BT
    L = tl.minimum(eos - t0, BT).to(tl.int32)
    rows = tl.arange(0, BT)
    m_t = rows < L
    tok = t0 + rows  # int64
    cols_k = tl.arange(0, BK)
    m_k = cols_k < K

    b_g = tl.load(g + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_gam = tl.cumsum(b_g, 0)
    tl.store(gam_out + tok * H + i_h, b_gam, mask=m_t)
    b_beta = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)

    p_k = k + (tok * H * K + i_h * K)[:, None] + cols_k[None, :]
    b_k = tl.load(p_k, mask=m_t[:, None] & m_k[None, :], other=0.0)
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    strict = rows[:, None] > rows[None, :]
    diff = tl.where(strict, b_gam[:, None] - b_gam[None, :], 0.0)
    b_A = tl.where(strict, b_kk * b_beta[:, None] * tl.exp(diff), 0.0)

    # T = (I + A)^-1. A = D + L with D the four 16x16 diagonal blocks (nilpotent, D^16 = 0) and L the
    # strictly block-lower rest. T_D = (I + D)^-1 = (I - D)(I + D^2)(I + D^4)(I + D^8); with N = T_D L
    # (N^4 = 0), T = (I + N)^-1 T_D = (I - N)(I + N^2) T_D. 11 small dots in PREC_INV.
    eye = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    same = (rows // 16)[:, None] == (rows // 16)[None, :]
    b_D = tl.where(same, b_A, 0.0)
    b_L = tl.where(same, 0.0, b_A)
    b_P = tl.dot(b_D, b_D, input_precision=PREC_INV)
    b_TD = eye - b_D
    b_TD += tl.dot(b_TD, b_P, input_precision=PREC_INV)
    b_P = tl.dot(b_P, b_P, input_precision=PREC_INV)
    b_TD += tl.dot(b_TD, b_P, input_precision=PREC_INV)
    b_P = tl.dot(b_P, b_P, input_precision=PREC_INV)
    b_TD += tl.dot(b_TD, b_P, input_precision=PREC_INV)
    b_N = tl.dot(b_TD, b_L, input_precision=PREC_INV)
    b_N2 = tl.dot(b_N, b_N, input_precision=PREC_INV)
    b_X = eye - b_N
    b_X += tl.dot(b_X, b_N2, input_precision=PREC_INV)
    b_T = tl.dot(b_X, b_TD, input_precision=PREC_INV)

    p_T = T_out + (tok * H * BT + i_h * BT)[:, None] + rows[None, :]
    tl.store(p_T, b_T, mask=m_t[:, None])

    b_kb = b_k.to(tl.float32) * (b_beta * tl.exp(b_gam))[:, None]
    b_w = tl.dot(b_T, b_kb, input_precision=PREC)
    p_w = w_out + (tok * H * K + i_h * K)[:, None] + cols_k[None, :]
    tl.store(p_w, b_w.to(w_out.dtype.element_ty), mask=m_t[:, None] & m_k[None, :])

    for i_v in range(0, tl.cdiv(V, BV)):
        cols_v = i_v * BV + tl.arange(0, BV)
        m_v = cols_v < V
        p_v = v + (tok * H * V + i_h * V)[:, None] + cols_v[None, :]
        b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
        b_u = tl.dot(b_T, b_v * b_beta[:, None], input_precision=PREC)
        p_u = u_out + (tok * H * V + i_h * V)[:, None] + cols_v[None, :]
        tl.store(p_u, b_u.to(u_out.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _fwd_state(
    k,
    w,
    u,
    gam,
    h0,
    cu,
    chunk_off,
    h_out,
    vn_out,
    ht_out,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_off + i_n).to(tl.int64)
    NC = tl.cdiv(eos - bos, BT).to(tl.int32)
    rows = tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    m_k = cols_k < K
    m_v = cols_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    kv_off = cols_k[:, None] * V + cols_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + kv_off, mask=m_kv, other=0.0).to(tl.float32)
    dt = w.dtype.element_ty
    for c in range(0, NC):
        t0 = bos + c * BT
        L = tl.minimum(eos - t0, BT).to(tl.int32)
        tok = t0 + rows
        m_t = rows < L
        p_h = h_out + ((c0 + c) * H + i_h) * K * V + kv_off
        tl.store(p_h, b_h.to(h_out.dtype.element_ty), mask=m_kv)
        b_w = tl.load(
            w + (tok * H * K + i_h * K)[:, None] + cols_k[None, :],
            mask=m_t[:, None] & m_k[None, :],
            other=0.0,
        )
        b_u = tl.load(
            u + (tok * H * V + i_h * V)[:, None] + cols_v[None, :],
            mask=m_t[:, None] & m_v[None, :],
            other=0.0,
        ).to(tl.float32)
        b_vn = b_u - tl.dot(b_w, b_h.to(dt), input_precision=PREC)
        tl.store(
            vn_out + (tok * H * V + i_h * V)[:, None] + cols_v[None, :],
            b_vn.to(vn_out.dtype.element_ty),
            mask=m_t[:, None] & m_v[None, :],
        )
        g_last = tl.load(gam + (t0 + L - 1) * H + i_h)
        b_gam = tl.load(gam + tok * H + i_h, mask=m_t, other=0.0)
        b_gam = tl.where(m_t, b_gam, g_last)
        b_k = tl.load(
            k + (tok * H * K + i_h * K)[:, None] + cols_k[None, :],
            mask=m_t[:, None] & m_k[None, :],
            other=0.0,
        ).to(tl.float32)
        b_kd = b_k * tl.where(m_t, tl.exp(g_last - b_gam), 0.0)[:, None]
        b_h = b_h * tl.exp(g_last) + tl.dot(tl.trans(b_kd.to(dt)), b_vn.to(dt), input_precision=PREC)
    if STORE_HT:
        tl.store(ht_out + i_nh.to(tl.int64) * K * V + kv_off, b_h, mask=m_kv)


@triton.jit
def _fwd_output(
    q,
    k,
    vn,
    gam,
    h,
    cu,
    chunk_seq,
    chunk_pos,
    o,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    seq = tl.load(chunk_seq + i_c)
    pos = tl.load(chunk_pos + i_c).to(tl.int64)
    bos = tl.load(cu + seq).to(tl.int64)
    eos = tl.load(cu + seq + 1).to(tl.int64)
    t0 = bos + pos * BT
    L = tl.minimum(eos - t0, BT).to(tl.int32)
    rows = tl.arange(0, BT)
    m_t = rows < L
    tok = t0 + rows
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    m_k = cols_k < K
    m_v = cols_v < V

    b_q = tl.load(
        q + (tok * H * K + i_h * K)[:, None] + cols_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0
    )
    b_k = tl.load(
        k + (tok * H * K + i_h * K)[:, None] + cols_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0
    )
    g_last = tl.load(gam + (t0 + L - 1) * H + i_h)
    b_gam = tl.where(m_t, tl.load(gam + tok * H + i_h, mask=m_t, other=0.0), g_last)
    b_h = tl.load(
        h + (i_c.to(tl.int64) * H + i_h) * K * V + cols_k[:, None] * V + cols_v[None, :],
        mask=m_k[:, None] & m_v[None, :],
        other=0.0,
    )
    b_o = tl.dot(b_q.to(tl.float32), b_h, input_precision=PREC) * tl.exp(b_gam)[:, None]
    lower = rows[:, None] >= rows[None, :]
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_s = tl.where(lower, b_s * tl.exp(tl.where(lower, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
    b_vn = tl.load(
        vn + (tok * H * V + i_h * V)[:, None] + cols_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0
    )
    b_o += tl.dot(b_s, b_vn.to(tl.float32), input_precision=PREC)
    tl.store(
        o + (tok * H * V + i_h * V)[:, None] + cols_v[None, :],
        (b_o * scale).to(o.dtype.element_ty),
        mask=m_t[:, None] & m_v[None, :],
    )


# ----------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_state(
    q,
    k,
    w,
    gam,
    do,
    dht,
    cu,
    chunk_off,
    scale,
    dh_out,
    du_out,
    dh0_out,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_off + i_n).to(tl.int64)
    NC = tl.cdiv(eos - bos, BT).to(tl.int32)
    rows = tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    m_k = cols_k < K
    m_v = cols_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    kv_off = cols_k[:, None] * V + cols_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + kv_off, mask=m_kv, other=0.0).to(tl.float32)
    for cc in range(0, NC):
        c = NC - 1 - cc
        t0 = bos + c * BT
        L = tl.minimum(eos - t0, BT).to(tl.int32)
        tok = t0 + rows
        m_t = rows < L
        tl.store(dh_out + ((c0 + c) * H + i_h) * K * V + kv_off, b_dh.to(dh_out.dtype.element_ty), mask=m_kv)
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_q = tl.load(q + (tok * H * K + i_h * K)[:, None] + cols_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (tok * H * K + i_h * K)[:, None] + cols_k[None, :], mask=m_tk, other=0.0)
        b_w = tl.load(w + (tok * H * K + i_h * K)[:, None] + cols_k[None, :], mask=m_tk, other=0.0)
        b_do = tl.load(do + (tok * H * V + i_h * V)[:, None] + cols_v[None, :], mask=m_tv, other=0.0)
        g_last = tl.load(gam + (t0 + L - 1) * H + i_h)
        b_gam = tl.where(m_t, tl.load(gam + tok * H + i_h, mask=m_t, other=0.0), g_last)
        # M^T[j, i] = k_j.q_i Gam_ij for i >= j
        upper = rows[:, None] <= rows[None, :]
        b_mt = tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
        b_mt = tl.where(upper, b_mt * tl.exp(tl.where(upper, b_gam[None, :] - b_gam[:, None], 0.0)), 0.0)
        b_kd = b_k.to(tl.float32) * tl.where(m_t, tl.exp(g_last - b_gam), 0.0)[:, None]
        b_du = scale * tl.dot(b_mt, b_do.to(tl.float32), input_precision=PREC)
        b_du += tl.dot(b_kd, b_dh, input_precision=PREC)
        tl.store(
            du_out + (tok * H * V + i_h * V)[:, None] + cols_v[None, :],
            b_du.to(du_out.dtype.element_ty),
            mask=m_tv,
        )
        b_qe = b_q.to(tl.float32) * (scale * tl.exp(b_gam))[:, None]
        b_dh = b_dh * tl.exp(g_last) + tl.dot(tl.trans(b_qe), b_do.to(tl.float32), input_precision=PREC)
        b_dh -= tl.dot(tl.trans(b_w.to(tl.float32)), b_du, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0_out + i_nh.to(tl.int64) * K * V + kv_off, b_dh, mask=m_kv)


@triton.jit
def _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT: tl.constexpr):
    seq = tl.load(chunk_seq + i_c)
    pos = tl.load(chunk_pos + i_c).to(tl.int64)
    bos = tl.load(cu + seq).to(tl.int64)
    eos = tl.load(cu + seq + 1).to(tl.int64)
    t0 = bos + pos * BT
    L = tl.minimum(eos - t0, BT).to(tl.int32)
    return t0, L


@triton.jit
def _bwd_dqk(
    q,
    k,
    gam,
    h,
    dh,
    vn,
    du,
    do,
    cu,
    chunk_seq,
    chunk_pos,
    scale,
    dq,
    dk_part,
    dw,
    dgam_part,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """dq; the output and state parts of dk; dW = -dU S0^T; the matching parts of dgam."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    t0, L = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    rows = tl.arange(0, BT)
    m_t = rows < L
    tok = t0 + rows
    cols_k = tl.arange(0, BK)
    m_k = cols_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    hoff = (i_c.to(tl.int64) * H + i_h) * K * V
    tk_off = (tok * H * K + i_h * K)[:, None] + cols_k[None, :]

    b_q = tl.load(q + tk_off, mask=m_tk, other=0.0)
    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
    g_last = tl.load(gam + (t0 + L - 1) * H + i_h)
    b_gam = tl.where(m_t, tl.load(gam + tok * H + i_h, mask=m_t, other=0.0), g_last)

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    b_dst = tl.zeros([BT, BT], dtype=tl.float32)
    dgl = 0.0
    for i_v in range(0, tl.cdiv(V, BV)):
        cols_v = i_v * BV + tl.arange(0, BV)
        m_v = cols_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        kv_off = cols_k[:, None] * V + cols_v[None, :]
        tv_off = (tok * H * V + i_h * V)[:, None] + cols_v[None, :]
        b_h = tl.load(h + hoff + kv_off, mask=m_kv, other=0.0).to(tl.float32)
        b_dh = tl.load(dh + hoff + kv_off, mask=m_kv, other=0.0).to(tl.float32)
        b_do = tl.load(do + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        b_vn = tl.load(vn + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        b_du = tl.load(du + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dks += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw -= tl.dot(b_du, tl.trans(b_h), input_precision=PREC)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dst += tl.dot(b_vn, tl.trans(b_do), input_precision=PREC)
        dgl += tl.sum(b_h * b_dh)

    e_gam = tl.exp(b_gam)
    lower = rows[:, None] >= rows[None, :]
    upper = rows[:, None] <= rows[None, :]
    b_ds = tl.where(lower, b_ds * scale * tl.exp(tl.where(lower, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
    b_dst = tl.where(
        upper, b_dst * scale * tl.exp(tl.where(upper, b_gam[None, :] - b_gam[:, None], 0.0)), 0.0
    )
    b_qf = b_q.to(tl.float32)
    b_kf = b_k.to(tl.float32)
    b_dq = b_dq * (scale * e_gam)[:, None] + tl.dot(b_ds, b_kf, input_precision=PREC)
    b_dko = tl.dot(b_dst, b_qf, input_precision=PREC)
    b_dks = b_dks * tl.where(m_t, tl.exp(g_last - b_gam), 0.0)[:, None]
    c_s = tl.sum(b_dks * b_kf, 1)
    b_dgam = tl.sum(b_dq * b_qf, 1) - tl.sum(b_dko * b_kf, 1) - c_s
    b_dgam += tl.where(rows == L - 1, tl.sum(c_s) + dgl * tl.exp(g_last), 0.0)
    tl.store(dq + tk_off, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk_part + tk_off, b_dko + b_dks, mask=m_tk)
    tl.store(dw + tk_off, b_dw, mask=m_tk)
    tl.store(dgam_part + tok * H + i_h, b_dgam, mask=m_t)


@triton.jit
def _bwd_wy(
    k,
    v,
    beta,
    gam,
    Tm,
    dw,
    du,
    dk_part,
    dgam_part,
    cu,
    chunk_seq,
    chunk_pos,
    dk,
    dv,
    dbeta,
    dg,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """Backward of the UT transform (U~ = T beta V, W = T beta e^gam K, T = (I + A)^-1): dv, dbeta, the
    rest of dk and dgam; then dg = reverse cumsum of dgam."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    t0, L = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    rows = tl.arange(0, BT)
    m_t = rows < L
    tok = t0 + rows
    cols_k = tl.arange(0, BK)
    m_k = cols_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    tk_off = (tok * H * K + i_h * K)[:, None] + cols_k[None, :]

    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
    g_last = tl.load(gam + (t0 + L - 1) * H + i_h)
    b_gam = tl.where(m_t, tl.load(gam + tok * H + i_h, mask=m_t, other=0.0), g_last)
    b_beta = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    # T^T loaded directly from memory (T is stored row-major per token)
    b_TT = tl.load(
        Tm + ((t0 + rows[None, :]) * H * BT + i_h * BT) + rows[:, None], mask=m_t[None, :], other=0.0
    )

    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        cols_v = i_v * BV + tl.arange(0, BV)
        m_v = cols_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        tv_off = (tok * H * V + i_h * V)[:, None] + cols_v[None, :]
        b_du = tl.load(du + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        b_v = tl.load(v + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        # U~ = T (beta V):  dT += dU (beta V)^T,  d(beta V) = T^T dU
        b_dT += tl.dot(b_du, tl.trans(b_v * b_beta[:, None]), input_precision=PREC)
        b_dvb = tl.dot(b_TT, b_du, input_precision=PREC)
        tl.store(dv + tv_off, (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_dbeta += tl.sum(b_dvb * b_v, 1)

    e_gam = tl.exp(b_gam)
    b_kf = b_k.to(tl.float32)
    b_dk = tl.load(dk_part + tk_off, mask=m_tk, other=0.0)
    b_dgam = tl.load(dgam_part + tok * H + i_h, mask=m_t, other=0.0)
    b_dw = tl.load(dw + tk_off, mask=m_tk, other=0.0)
    # W = T diag(beta e^gam) K:  d(kbe) = T^T dW,  dT += dW kbe^T
    b_kbe = b_kf * (b_beta * e_gam)[:, None]
    b_dkbe = tl.dot(b_TT, b_dw, input_precision=PREC)
    b_dk += b_dkbe * (b_beta * e_gam)[:, None]
    b_dbeta += tl.sum(b_dkbe * b_kf, 1) * e_gam
    b_dgam += tl.sum(b_dkbe * b_kbe, 1)
    b_dT += tl.dot(b_dw, tl.trans(b_kbe), input_precision=PREC)
    # dA = -T^T dT T^T on the strictly lower part
    strict = rows[:, None] > rows[None, :]
    b_dA = -tl.dot(tl.dot(b_TT, b_dT, input_precision=PREC), b_TT, input_precision=PREC)
    b_dA = tl.where(strict, b_dA, 0.0)
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    b_dec = tl.where(strict, tl.exp(tl.where(strict, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
    b_E = b_dA * b_dec * b_kk  # dA_ij Gam_ij k_i.k_j
    b_dbeta += tl.sum(b_E, 1)
    b_Eb = b_E * b_beta[:, None]  # dA_ij A_ij
    b_dgam += tl.sum(b_Eb, 1) - tl.sum(b_Eb, 0)
    b_dAk = b_dA * b_dec * b_beta[:, None]
    b_dk += tl.dot(b_dAk, b_kf, input_precision=PREC)
    b_dk += tl.trans(tl.dot(tl.trans(b_kf), b_dAk, input_precision=PREC))

    b_dgam = tl.where(m_t, b_dgam, 0.0)
    b_dg = tl.cumsum(b_dgam, 0, reverse=True)
    tl.store(dk + tk_off, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + tok * H + i_h, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    tl.store(dg + tok * H + i_h, b_dg.to(dg.dtype.element_ty), mask=m_t)


# ----------------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _recurrent_fwd(
    q,
    k,
    v,
    g,
    beta,
    h0,
    cu,
    o,
    ht,
    scale,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    VARLEN: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    if VARLEN:
        bos = tl.load(cu + i_n).to(tl.int64)
        eos = tl.load(cu + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    m_k = cols_k < K
    m_v = cols_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    kv_off = cols_k[:, None] * V + cols_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + kv_off, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        b_q = tl.load(q + (t * H + i_h) * K + cols_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + (t * H + i_h) * K + cols_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + (t * H + i_h) * V + cols_v, mask=m_v, other=0.0).to(tl.float32)
        b_g = tl.load(g + t * H + i_h).to(tl.float32)
        b_b = tl.load(beta + t * H + i_h).to(tl.float32)
        b_h *= tl.exp(b_g)
        b_u = b_b * (b_v - tl.sum(b_h * b_k[:, None], 0))
        b_h += b_k[:, None] * b_u[None, :]
        b_o = tl.sum(b_h * b_q[:, None], 0) * scale
        tl.store(o + (t * H + i_h) * V + cols_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + kv_off, b_h, mask=m_kv)


# ----------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------


# Launch configurations (block of V per program, warps, pipelining stages); benchmarks/kernels.py --tune
# times alternatives on the GPU and can overwrite these.
CONFIG = {  # best of benchmarks/kernels.py --tune on an H100 (benchmarks/results/kernels_v2.json)
    "prepare": dict(BV=64, num_warps=4, num_stages=1),
    "state": dict(BV=64, num_warps=4, num_stages=2),
    "output": dict(BV=32, num_warps=4, num_stages=2),
    "bwd_state": dict(BV=64, num_warps=4, num_stages=1),
    "bwd_dqk": dict(BV=32, num_warps=8, num_stages=1),
    "bwd_wy": dict(BV=64, num_warps=8, num_stages=1),
    "decode": dict(BV=32, num_warps=2, num_stages=1),
}


def _cfg(name, V):
    c = dict(CONFIG[name])
    bv = min(c.pop("BV"), _next_pow2(V))
    return bv, c


def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


# precision of the 11 small dots that invert I + A for bf16/fp16 inputs. "tf32x3" (about float32 accuracy)
# cost 1.2 ms more per forward on the H100; "tf32" passed every full-size check there with the same error
# ratios (benchmarks/results/kernels_v3_log.txt), so it is the default.
PREC_INV_LOWP = "tf32"


def _prec_inv(dtype):
    return "ieee" if dtype == torch.float32 else PREC_INV_LOWP


def _chunk_tables(B, T, cu_seqlens, device):
    """cu (int64 offsets into packed tokens), chunk_seq, chunk_pos (per global chunk), chunk_off (per seq)."""
    if cu_seqlens is None:
        NT = triton.cdiv(T, BT)
        cu = torch.arange(0, B + 1, device=device, dtype=torch.int64) * T
        idx = torch.arange(B * NT, device=device, dtype=torch.int32)
        chunk_seq, chunk_pos = idx // NT, idx % NT
        chunk_off = torch.arange(0, B + 1, device=device, dtype=torch.int32) * NT
        return cu, chunk_seq, chunk_pos, chunk_off, B * NT
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    lens = cu[1:] - cu[:-1]
    nchunks = (lens + BT - 1) // BT
    total = int(nchunks.sum().item())
    chunk_off = torch.zeros(len(lens) + 1, device=device, dtype=torch.int32)
    chunk_off[1:] = torch.cumsum(nchunks, 0)
    chunk_seq = torch.repeat_interleave(
        torch.arange(len(lens), device=device, dtype=torch.int32), nchunks, output_size=total
    )
    first = chunk_off[:-1].long()[chunk_seq.long()]
    chunk_pos = (torch.arange(total, device=device, dtype=torch.int64) - first).to(torch.int32)
    return cu, chunk_seq, chunk_pos, chunk_off, total


def _dims(q, v):
    K, V = q.shape[-1], v.shape[-1]
    BK = _next_pow2(K)
    if BK > 256:
        raise ValueError(f"the Triton kernels support K <= 256, got K = {K}")
    return K, V, BK


def chunk_fwd(q, k, v, g, beta, scale, h0, cu_seqlens, output_final_state):
    B, T, H, _ = q.shape
    K, V, BK = _dims(q, v)
    cu, chunk_seq, chunk_pos, chunk_off, NCt = _chunk_tables(B, T, cu_seqlens, q.device)
    N = cu.numel() - 1
    PREC = _prec(q.dtype)
    dev = q.device
    gam = _empty(B, T, H, device=dev, dtype=torch.float32)
    Tm = _empty(B, T, H, BT, device=dev, dtype=torch.float32)
    w = _empty(B, T, H, K, device=dev, dtype=INTER)
    u = _empty(B, T, H, V, device=dev, dtype=INTER)
    BV, kw = _cfg("prepare", V)
    _fwd_prepare[(NCt, H)](
        k,
        v,
        g,
        beta,
        cu,
        chunk_seq,
        chunk_pos,
        gam,
        Tm,
        w,
        u,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=PREC,
        PREC_INV=_prec_inv(q.dtype),
        **kw,
    )
    h = _empty(NCt, H, K, V, device=dev, dtype=INTER)
    vn = _empty(B, T, H, V, device=dev, dtype=INTER)
    ht = _empty(N, H, K, V, device=dev, dtype=torch.float32) if output_final_state else None
    BV, kw = _cfg("state", V)
    _fwd_state[(triton.cdiv(V, BV), N * H)](
        k,
        w,
        u,
        gam,
        h0 if h0 is not None else q,
        cu,
        chunk_off,
        h,
        vn,
        ht if ht is not None else q,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=PREC,
        HAS_H0=h0 is not None,
        STORE_HT=ht is not None,
        **kw,
    )
    o = _empty(B, T, H, V, device=dev, dtype=v.dtype)
    BV, kw = _cfg("output", V)
    _fwd_output[(triton.cdiv(V, BV), NCt, H)](
        q,
        k,
        vn,
        gam,
        h,
        cu,
        chunk_seq,
        chunk_pos,
        o,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=PREC,
        **kw,
    )
    saved = (gam, Tm, w, h, vn, cu, chunk_seq, chunk_pos, chunk_off, NCt)
    return o, ht, saved


def chunk_bwd(q, k, v, g, beta, scale, h0, do, dht, saved):
    gam, Tm, w, h, vn, cu, chunk_seq, chunk_pos, chunk_off, NCt = saved
    B, T, H, _ = q.shape
    K, V, BK = _dims(q, v)
    N = cu.numel() - 1
    PREC = _prec(q.dtype)
    dev = q.device
    do = do.contiguous()
    dh = _empty(NCt, H, K, V, device=dev, dtype=INTER)
    du = _empty(B, T, H, V, device=dev, dtype=torch.float32)
    dh0 = _empty(N, H, K, V, device=dev, dtype=torch.float32) if h0 is not None else None
    BV, kw = _cfg("bwd_state", V)
    _bwd_state[(triton.cdiv(V, BV), N * H)](
        q,
        k,
        w,
        gam,
        do,
        dht if dht is not None else q,
        cu,
        chunk_off,
        scale,
        dh,
        du,
        dh0 if dh0 is not None else q,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=PREC,
        HAS_DHT=dht is not None,
        STORE_DH0=dh0 is not None,
        **kw,
    )
    dq = _empty(*q.shape, device=dev, dtype=q.dtype)
    dk_part = _empty(*k.shape, device=dev, dtype=torch.float32)
    dw = _empty(*k.shape, device=dev, dtype=torch.float32)
    dgam = _empty(B, T, H, device=dev, dtype=torch.float32)
    BV, kw = _cfg("bwd_dqk", V)
    _bwd_dqk[(NCt, H)](
        q,
        k,
        gam,
        h,
        dh,
        vn,
        du,
        do,
        cu,
        chunk_seq,
        chunk_pos,
        scale,
        dq,
        dk_part,
        dw,
        dgam,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=PREC,
        **kw,
    )
    dk = _empty(*k.shape, device=dev, dtype=k.dtype)
    dv = _empty(*v.shape, device=dev, dtype=v.dtype)
    dbeta = _empty(*beta.shape, device=dev, dtype=beta.dtype)
    dg = _empty(*g.shape, device=dev, dtype=g.dtype)
    BV, kw = _cfg("bwd_wy", V)
    _bwd_wy[(NCt, H)](
        k,
        v,
        beta,
        gam,
        Tm,
        dw,
        du,
        dk_part,
        dgam,
        cu,
        chunk_seq,
        chunk_pos,
        dk,
        dv,
        dbeta,
        dg,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=PREC,
        **kw,
    )
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, h0, cu_seqlens, output_final_state):
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        h0 = h0.contiguous() if h0 is not None else None
        o, ht, saved = chunk_fwd(q, k, v, g, beta, scale, h0, cu_seqlens, output_final_state)
        ctx.save_for_backward(q, k, v, g, beta, h0, *saved[:-1])
        ctx.nct = saved[-1]
        ctx.scale = scale
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0, *saved = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = chunk_bwd(
            q,
            k,
            v,
            g,
            beta,
            ctx.scale,
            h0,
            do,
            dht.contiguous() if dht is not None else None,
            (*saved, ctx.nct),
        )
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return dq, dk, dv, dg, dbeta, None, dh0, None, None


def chunk_gated_delta_rule_triton(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens):
    """q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H] (already l2-normalised if wanted)."""
    return ChunkGatedDeltaRule.apply(q, k, v, g, beta, scale, initial_state, cu_seqlens, output_final_state)


def fused_recurrent_triton(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens):
    """Forward-only token loop (decode). Returns (o, final state or None)."""
    q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BK = _next_pow2(K)
    BV, kw = _cfg("decode", V)
    o = _empty(*v.shape, device=v.device, dtype=v.dtype)
    ht = _empty(N, H, K, V, device=q.device, dtype=torch.float32) if output_final_state else None
    h0 = initial_state.contiguous() if initial_state is not None else None
    _recurrent_fwd[(triton.cdiv(V, BV), N * H)](
        q,
        k,
        v,
        g,
        beta,
        h0 if h0 is not None else q,
        cu_seqlens if cu_seqlens is not None else q,
        o,
        ht if ht is not None else q,
        scale,
        T,
        H=H,
        K=K,
        V=V,
        BK=BK,
        BV=BV,
        HAS_H0=h0 is not None,
        STORE_HT=ht is not None,
        VARLEN=cu_seqlens is not None,
        **kw,
    )
    return o, ht
