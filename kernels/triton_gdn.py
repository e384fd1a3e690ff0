"""Triton kernels for the gated delta rule: chunked forward/backward (UT/WY form) and recurrent decode.

Algorithm, per sequence, head and chunk of BT = 64 tokens (positions i < L, L <= BT), with S0 the state
entering the chunk, gam_i the cumulative sum of g inside the chunk and Gam_ij = exp(gam_i - gam_j):

    A_ij = beta_i Gam_ij k_i.k_j (j < i),  T = (I + A)^-1  (unit lower triangular)
    W = T diag(beta e^gam) K,  U~ = T diag(beta) V,  U = U~ - W S0            (the "new values")
    o = scale (diag(e^gam) Q S0 + (Q K^T * Gam * [j <= i]) U)
    S_end = e^gam_last S0 + (diag(e^(gam_last - gam)) K)^T U

Forward: `_fwd_prepare` (chunk-parallel: gam, T, W, U~), `_fwd_state` (sequential over chunks: S0 of
every chunk, U, final state; also o when nothing is kept for a backward, or with CONFIG["state"]["fuse_o"]),
else `_fwd_output` (chunk-parallel: o from the stored S0 and U).
Backward: `_bwd_du_local` (chunk-parallel: the dO part of dU), `_bwd_state` (sequential, reversed: dS at
every chunk end, the rest of dU, dS0), `_bwd_dqk` (chunk-parallel: dq, the output/state parts of dk, dW,
dgam) and `_bwd_wy` (chunk-parallel: backward of the UT transform: dv, dbeta, the rest of dk and dgam, dg).
Derivation in benchmarks/NOTES.md.

All sequences are handled as packed tokens [B*T, H, *] with offsets (cu_seqlens); batches without
cu_seqlens get uniform offsets. Token offsets are 64-bit inside the kernels.

Hopper note: Triton 3.6 miscompiles tl.trans of a tl.dot result fed into another tl.dot; no kernel
here does that (transposed products are computed with swapped operands, or transposed only for stores).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import TRITON_MAX_K

BT = 64  # chunk size
# Intermediates stored between kernels (T, W, U~, per-chunk states, new values, their gradients) are bf16
# for bf16 inputs and float32 (tf32/ieee products) for fp16/fp32 inputs. The forward state recurrence and the
# backward gradient-state recurrence are carried in float32 registers either way; only what is stored for
# other kernels is rounded. Error budget: benchmarks/NOTES.md (v4).


def _inter(dtype):
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


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
def _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT: tl.constexpr):
    """Global chunk i_c: first token t0 (int64), length L, row index, token index (int64), row mask."""
    seq = tl.load(chunk_seq + i_c)
    pos = tl.load(chunk_pos + i_c).to(tl.int64)
    bos = tl.load(cu + seq).to(tl.int64)
    eos = tl.load(cu + seq + 1).to(tl.int64)
    return _chunk_rows(bos + pos * BT, eos, BT)


@triton.jit
def _chunk_rows(t0, eos, BT: tl.constexpr):
    L = tl.minimum(eos - t0, BT).to(tl.int32)
    rows = tl.arange(0, BT)
    return t0, L, rows, t0 + rows, rows < L


@triton.jit
def _kv_tile(i_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Columns, offsets and mask of the [BK, BV] block i_v of a [K, V] state."""
    cols_k = tl.arange(0, BK)
    cols_v = i_v * BV + tl.arange(0, BV)
    kv_off = cols_k[:, None] * V + cols_v[None, :]
    return cols_k, cols_v, kv_off, (cols_k < K)[:, None] & (cols_v < V)[None, :]


@triton.jit
def _seq_coords(cu, chunk_off, i_n, BT: tl.constexpr):
    """First token, end token (int64), first global chunk and number of chunks of sequence i_n."""
    bos = tl.load(cu + i_n).to(tl.int64)
    eos = tl.load(cu + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_off + i_n).to(tl.int64)
    NC = tl.cdiv(eos - bos, BT).to(tl.int32)
    return bos, eos, c0, NC


@triton.jit
def _segment_coords(seg, cu, chunk_off, H: tl.constexpr, BT: tl.constexpr):
    """Program (V block, segment * H + head) of a state recurrence over _segments' table: head, sequence, rank
    of the segment in it, segments of the sequence, the sequence's coordinates (_seq_coords) and the
    segment's chunk range [c_lo, c_hi)."""
    i_sh = tl.program_id(1)
    i_s = i_sh // H
    i_h = i_sh % H
    i_n = tl.load(seg + 3 * i_s)
    rank = tl.load(seg + 3 * i_s + 1)
    cs = tl.load(seg + 3 * i_s + 2)  # chunks per segment of this sequence
    bos, eos, c0, NC = _seq_coords(cu, chunk_off, i_n, BT)
    c_lo = rank * cs
    c_hi = tl.minimum(c_lo + cs, NC)
    nseg = tl.maximum(tl.cdiv(NC, cs), 1)
    return i_s, i_h, i_n, rank, nseg, bos, eos, c0, c_lo, c_hi


@triton.jit
def _toff(tok, i_h, cols, m_t, H: tl.constexpr, D: tl.constexpr):
    """Offsets and mask of the [BT, len(cols)] tile of a packed [tokens, H, D] tensor."""
    return (tok * H * D + i_h * D)[:, None] + cols[None, :], m_t[:, None] & (cols < D)[None, :]


@triton.jit
def _gam(gam, tok, m_t, t0, L, H: tl.constexpr, i_h):
    """In-chunk cumulative log decay (rows past the chunk's end repeat the last) and its last value."""
    g_last = tl.load(gam + (t0 + L - 1) * H + i_h)
    b_gam = tl.where(m_t, tl.load(gam + tok * H + i_h, mask=m_t, other=0.0), g_last)
    return b_gam, g_last


@triton.jit
def _mm_inv(a, b, P: tl.constexpr):
    """Product for the (I + A)^-1 formulas: "fp16" rounds the operands to float16 (the 10-bit mantissa of
    tf32, at twice the tensor-core rate and half the operand bytes); otherwise a float32 dot in P."""
    if P == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        return tl.dot(a, b, input_precision=P)


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
    STORE_T: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    t0, L, rows, tok, m_t = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    cols_k = tl.arange(0, BK)
    tk_off, m_tk = _toff(tok, i_h, cols_k, m_t, H, K)

    b_g = tl.load(g + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_gam = tl.cumsum(b_g, 0)
    tl.store(gam_out + tok * H + i_h, b_gam, mask=m_t)
    b_beta = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)

    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
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
    b_P = _mm_inv(b_D, b_D, PREC_INV)
    b_TD = eye - b_D
    b_TD += _mm_inv(b_TD, b_P, PREC_INV)
    b_P = _mm_inv(b_P, b_P, PREC_INV)
    b_TD += _mm_inv(b_TD, b_P, PREC_INV)
    b_P = _mm_inv(b_P, b_P, PREC_INV)
    b_TD += _mm_inv(b_TD, b_P, PREC_INV)
    b_N = _mm_inv(b_TD, b_L, PREC_INV)
    b_N2 = _mm_inv(b_N, b_N, PREC_INV)
    b_X = eye - b_N
    b_X += _mm_inv(b_X, b_N2, PREC_INV)
    b_T = _mm_inv(b_X, b_TD, PREC_INV)

    if STORE_T:  # for the backward only
        p_T = T_out + (tok * H * BT + i_h * BT)[:, None] + rows[None, :]
        tl.store(p_T, b_T.to(T_out.dtype.element_ty), mask=m_t[:, None])

    # W and U~ are products with T in PREC_INV too (fp16 operands: |v| must stay below 6.5e4 there)
    b_kb = b_k.to(tl.float32) * (b_beta * tl.exp(b_gam))[:, None]
    b_w = _mm_inv(b_T, b_kb, PREC_INV)
    tl.store(w_out + tk_off, b_w.to(w_out.dtype.element_ty), mask=m_tk)

    for i_v in range(0, tl.cdiv(V, BV)):
        tv_off, m_tv = _toff(tok, i_h, i_v * BV + tl.arange(0, BV), m_t, H, V)
        b_v = tl.load(v + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        b_u = _mm_inv(b_T, b_v * b_beta[:, None], PREC_INV)
        tl.store(u_out + tv_off, b_u.to(u_out.dtype.element_ty), mask=m_tv)


@triton.jit
def _fwd_state(
    q,
    k,
    w,
    u,
    gam,
    h0,
    cu,
    chunk_off,
    seg,
    h_out,
    vn_out,
    ht_out,
    seg_e,
    seg_m,
    o,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    PREC_S: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    MODE: tl.constexpr,
    SEGMENTED: tl.constexpr,
    SAVE: tl.constexpr,
    FUSE_O: tl.constexpr,
):
    """The state recurrence over the chunks of one segment of a sequence (a whole sequence unless the
    sequences are split into segments, see _segments). The state is carried in float32 and its products take
    PREC_S operands (fp16: 10 mantissa bits like tf32, at twice the rate; or tf32/ieee); the per-chunk states
    and new values are stored in the intermediate dtype (bf16 for bf16 inputs) for the output kernel and the
    backward only.

    A chunk maps the state affinely, S -> (e^gam_last I - Kd^T W) S + Kd^T U~, so a segment maps its entering
    state S to M S + E (M the product of the chunks' K x K matrices, E the end state from a zero start).
    MODE "run": the recurrence, storing states and new values (SAVE: for the backward, or for _fwd_output
    unless FUSE_O); a segment after the first starts from E_0 and then M_j S + E_j over the earlier segments j
    of its sequence (read from seg_e, seg_m). FUSE_O: the chunk's output o is computed here from the state
    and new values in registers (float32, PREC_S operands), off the recurrence's dependency chain, instead of
    by _fwd_output from their bf16 copies.
    MODE "end": E of every segment but the last (the first starts from h0) into seg_e, nothing else stored.
    MODE "map": M of the segments a later one needs (not the first, not the last), into seg_m; launched with
    V = K: the state is the K x K identity and U~ = 0."""
    i_v = tl.program_id(0)
    i_s, i_h, i_n, rank, nseg, bos, eos, c0, c_lo, c_hi = _segment_coords(seg, cu, chunk_off, H, BT)
    cols_k, cols_v, kv_off, m_kv = _kv_tile(i_v, K, V, BK, BV)
    h_base = i_n.to(tl.int64) * H + i_h

    if MODE == "map":
        # only the segments between the first and the last are needed (the others store the identity)
        c_hi = tl.where((rank > 0) & (rank < nseg - 1), c_hi, c_lo)
        b_h = tl.where(cols_k[:, None] == cols_v[None, :], 1.0, 0.0)
    else:
        if MODE == "end":  # the last segment's end state is never read
            c_hi = tl.where(rank < nseg - 1, c_hi, c_lo)
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            if rank == 0:
                b_h += tl.load(h0 + h_base * K * V + kv_off, mask=m_kv, other=0.0).to(tl.float32)
        if MODE == "run" and SEGMENTED:
            if rank > 0:
                s0 = i_s.to(tl.int64) - rank  # the sequence's first segment
                b_h += tl.load(seg_e + (s0 * H + i_h) * K * V + kv_off, mask=m_kv, other=0.0)
                m_off = cols_k[:, None] * K + cols_k[None, :]
                m_kk = (cols_k < K)[:, None] & (cols_k < K)[None, :]
                for j in range(1, rank):
                    p = (s0 + j) * H + i_h
                    b_m = tl.load(seg_m + p * K * K + m_off, mask=m_kk, other=0.0)
                    b_e = tl.load(seg_e + p * K * V + kv_off, mask=m_kv, other=0.0)
                    b_h = b_e + _mm_inv(b_m, b_h, PREC_S)
    for c in range(c_lo, c_hi):
        t0, L, rows, tok, m_t = _chunk_rows(bos + c * BT, eos, BT)
        tk_off, m_tk = _toff(tok, i_h, cols_k, m_t, H, K)
        b_w = tl.load(w + tk_off, mask=m_tk, other=0.0).to(tl.float32)
        if MODE == "map":
            b_vn = -_mm_inv(b_w, b_h, PREC_S)
        else:
            tv_off, m_tv = _toff(tok, i_h, cols_v, m_t, H, V)
            if MODE == "run" and SAVE:
                tl.store(
                    h_out + ((c0 + c) * H + i_h) * K * V + kv_off, b_h.to(h_out.dtype.element_ty), mask=m_kv
                )
            b_u = tl.load(u + tv_off, mask=m_tv, other=0.0).to(tl.float32)
            b_vn = b_u - _mm_inv(b_w, b_h, PREC_S)
            if MODE == "run" and SAVE:
                tl.store(vn_out + tv_off, b_vn.to(vn_out.dtype.element_ty), mask=m_tv)
        b_gam, g_last = _gam(gam, tok, m_t, t0, L, H, i_h)
        b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
        if MODE == "run" and FUSE_O:  # o = scale (diag(e^gam) Q S0 + (Q K^T * Gam * [j <= i]) U)
            b_q = tl.load(q + tk_off, mask=m_tk, other=0.0)
            b_o = _mm_inv(b_q.to(tl.float32), b_h, PREC_S) * tl.exp(b_gam)[:, None]
            lower = rows[:, None] >= rows[None, :]
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
            b_s = tl.where(lower, b_s * tl.exp(tl.where(lower, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
            b_o += _mm_inv(b_s, b_vn, PREC_S)
            tl.store(o + tv_off, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)
        b_kd = b_k.to(tl.float32) * tl.where(m_t, tl.exp(g_last - b_gam), 0.0)[:, None]
        b_h = b_h * tl.exp(g_last) + _mm_inv(tl.trans(b_kd), b_vn, PREC_S)
    if MODE == "end":
        tl.store(seg_e + (i_s.to(tl.int64) * H + i_h) * K * V + kv_off, b_h, mask=m_kv)
    elif MODE == "map":
        tl.store(seg_m + (i_s.to(tl.int64) * H + i_h) * K * K + kv_off, b_h, mask=m_kv)
    elif STORE_HT:
        if rank == nseg - 1:
            tl.store(ht_out + h_base * K * V + kv_off, b_h, mask=m_kv)


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
    PREC_INV: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    t0, L, rows, tok, m_t = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    cols_k, cols_v, kv_off, m_kv = _kv_tile(i_v, K, V, BK, BV)
    tk_off, m_tk = _toff(tok, i_h, cols_k, m_t, H, K)
    tv_off, m_tv = _toff(tok, i_h, cols_v, m_t, H, V)
    DT = h.dtype.element_ty

    b_q = tl.load(q + tk_off, mask=m_tk, other=0.0)
    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
    b_gam, g_last = _gam(gam, tok, m_t, t0, L, H, i_h)
    b_h = tl.load(h + (i_c.to(tl.int64) * H + i_h) * K * V + kv_off, mask=m_kv, other=0.0)
    b_o = tl.dot(b_q.to(DT), b_h, input_precision=PREC) * tl.exp(b_gam)[:, None]
    lower = rows[:, None] >= rows[None, :]
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_s = tl.where(lower, b_s * tl.exp(tl.where(lower, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
    # (Q K^T * Gam) U in PREC_INV: fp16 operands keep 10 mantissa bits (rounding to bf16 would add ~4e-4
    # to o's error) at the bf16 rate
    b_vn = tl.load(vn + tv_off, mask=m_tv, other=0.0)
    b_o += _mm_inv(b_s, b_vn.to(tl.float32), PREC_INV)
    tl.store(o + tv_off, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------------
# backward: every product runs on the intermediate dtype DT (bf16 for bf16 inputs, with float32
# accumulation; float32 in tf32/ieee otherwise); the carried gradient state stays float32.
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_du_local(
    q,
    k,
    gam,
    do,
    cu,
    chunk_seq,
    chunk_pos,
    scale,
    du_out,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    """Chunk-parallel part of dU: scale (Q K^T * Gam * [j <= i])^T dO (off the dependency chain of
    _bwd_state, which adds the state part)."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    t0, L, rows, tok, m_t = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    tk_off, m_tk = _toff(tok, i_h, tl.arange(0, BK), m_t, H, K)
    DT = du_out.dtype.element_ty
    b_q = tl.load(q + tk_off, mask=m_tk, other=0.0)
    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
    b_gam, g_last = _gam(gam, tok, m_t, t0, L, H, i_h)
    # M^T[j, i] = k_j.q_i Gam_ij for i >= j
    upper = rows[:, None] <= rows[None, :]
    b_mt = tl.dot(b_k, tl.trans(b_q), input_precision=PREC)
    b_mt = tl.where(
        upper, b_mt * (scale * tl.exp(tl.where(upper, b_gam[None, :] - b_gam[:, None], 0.0))), 0.0
    )
    b_mt = b_mt.to(DT)
    for i_v in range(0, tl.cdiv(V, BV)):
        tv_off, m_tv = _toff(tok, i_h, i_v * BV + tl.arange(0, BV), m_t, H, V)
        b_do = tl.load(do + tv_off, mask=m_tv, other=0.0).to(DT)
        b_du = tl.dot(b_mt, b_do, input_precision=PREC)
        tl.store(du_out + tv_off, b_du.to(DT), mask=m_tv)


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
    seg,
    scale,
    dh_out,
    du_out,
    dh0_out,
    seg_e,
    seg_m,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    PREC_S: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    MODE: tl.constexpr,
    SEGMENTED: tl.constexpr,
):
    """Reversed recurrence of the state gradient over the chunks of one segment of a sequence (a whole
    sequence unless it is split, see _segments): dS at every chunk end; completes dU (du_out holds the local
    part from _bwd_du_local and is overwritten with the whole).

    A chunk maps the gradient affinely, dS -> (e^gam_last I - W^T Kd) dS + Q^T dO~ - W^T dU_local, so a
    segment maps the dS entering it from the later chunks to M dS + E, as in _fwd_state but in reverse. The
    maps (identity-scale) take PREC_S operands; applying them to a dS, which has no fixed scale, takes PREC.
    MODE "run": the recurrence with its stores; a segment before the last starts from the last segment's E,
    then E_j + M_j dS over the later segments j of its sequence (read from seg_e, seg_m).
    MODE "end": E of every segment but the first (the last starts from dht), nothing else stored.
    MODE "map": M of the segments an earlier one needs (not the first, not the last), into seg_m; launched
    with V = K: dS is the K x K identity and dO, dU_local are 0."""
    i_v = tl.program_id(0)
    i_s, i_h, i_n, rank, nseg, bos, eos, c0, c_lo, c_hi = _segment_coords(seg, cu, chunk_off, H, BT)
    cols_k, cols_v, kv_off, m_kv = _kv_tile(i_v, K, V, BK, BV)
    h_base = i_n.to(tl.int64) * H + i_h
    DT = dh_out.dtype.element_ty

    if MODE == "map":
        # only the segments between the first and the last are needed
        c_hi = tl.where((rank > 0) & (rank < nseg - 1), c_hi, c_lo)
        b_dh = tl.where(cols_k[:, None] == cols_v[None, :], 1.0, 0.0)
    else:
        if MODE == "end":  # the first segment's end is never read
            c_hi = tl.where(rank > 0, c_hi, c_lo)
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_DHT:
            if rank == nseg - 1:
                b_dh += tl.load(dht + h_base * K * V + kv_off, mask=m_kv, other=0.0).to(tl.float32)
        if MODE == "run" and SEGMENTED:
            if rank < nseg - 1:
                s0 = i_s.to(tl.int64) - rank  # the sequence's first segment
                b_dh += tl.load(seg_e + ((s0 + nseg - 1) * H + i_h) * K * V + kv_off, mask=m_kv, other=0.0)
                m_off = cols_k[:, None] * K + cols_k[None, :]
                m_kk = (cols_k < K)[:, None] & (cols_k < K)[None, :]
                for jj in range(rank + 1, nseg - 1):
                    p = (s0 + rank + nseg - 1 - jj) * H + i_h  # segments nseg - 2 down to rank + 1
                    b_m = tl.load(seg_m + p * K * K + m_off, mask=m_kk, other=0.0)
                    b_e = tl.load(seg_e + p * K * V + kv_off, mask=m_kv, other=0.0)
                    # a gradient has no fixed scale: tf32/ieee keeps float32's range (fp16 would not)
                    b_dh = b_e + tl.dot(b_m, b_dh, input_precision=PREC)
    # q, k and w enter the products as loaded: the decays scale rows of a result or of dO instead (no
    # rounded decayed copies of q and k, fewer live registers along the chain)
    for cc in range(c_lo, c_hi):
        c = c_lo + c_hi - 1 - cc
        t0, L, rows, tok, m_t = _chunk_rows(bos + c * BT, eos, BT)
        tk_off, m_tk = _toff(tok, i_h, cols_k, m_t, H, K)
        b_gam, g_last = _gam(gam, tok, m_t, t0, L, H, i_h)
        b_kd = tl.where(m_t, tl.exp(g_last - b_gam), 0.0)[:, None]
        if MODE == "map":
            b_k = tl.load(k + tk_off, mask=m_tk, other=0.0).to(tl.float32)
            b_w = tl.load(w + tk_off, mask=m_tk, other=0.0).to(tl.float32)
            b_du = _mm_inv(b_k, b_dh, PREC_S) * b_kd
            b_dh = b_dh * tl.exp(g_last) - _mm_inv(tl.trans(b_w), b_du, PREC_S)
        else:
            tv_off, m_tv = _toff(tok, i_h, cols_v, m_t, H, V)
            b_dhc = b_dh.to(DT)
            if MODE == "run":
                tl.store(dh_out + ((c0 + c) * H + i_h) * K * V + kv_off, b_dhc, mask=m_kv)
            b_k = tl.load(k + tk_off, mask=m_tk, other=0.0).to(DT)
            b_du = tl.load(du_out + tv_off, mask=m_tv, other=0.0).to(tl.float32)
            b_du += tl.dot(b_k, b_dhc, input_precision=PREC) * b_kd
            b_duc = b_du.to(DT)
            if MODE == "run":
                tl.store(du_out + tv_off, b_duc, mask=m_tv)
            b_q = tl.load(q + tk_off, mask=m_tk, other=0.0).to(DT)
            b_do = tl.load(do + tv_off, mask=m_tv, other=0.0).to(tl.float32)
            b_doe = (b_do * (scale * tl.exp(b_gam))[:, None]).to(DT)
            b_w = tl.load(w + tk_off, mask=m_tk, other=0.0).to(DT)
            b_dh = b_dh * tl.exp(g_last) + tl.dot(tl.trans(b_q), b_doe, input_precision=PREC)
            b_dh -= tl.dot(tl.trans(b_w), b_duc, input_precision=PREC)
    if MODE == "end":
        tl.store(seg_e + (i_s.to(tl.int64) * H + i_h) * K * V + kv_off, b_dh, mask=m_kv)
    elif MODE == "map":
        tl.store(seg_m + (i_s.to(tl.int64) * H + i_h) * K * K + kv_off, b_dh, mask=m_kv)
    elif STORE_DH0:
        if rank == 0:
            tl.store(dh0_out + h_base * K * V + kv_off, b_dh, mask=m_kv)


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
    t0, L, rows, tok, m_t = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    hoff = (i_c.to(tl.int64) * H + i_h) * K * V
    tk_off, m_tk = _toff(tok, i_h, tl.arange(0, BK), m_t, H, K)
    DT = h.dtype.element_ty

    b_q = tl.load(q + tk_off, mask=m_tk, other=0.0)
    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
    b_gam, g_last = _gam(gam, tok, m_t, t0, L, H, i_h)

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    dgl = 0.0
    for i_v in range(0, tl.cdiv(V, BV)):
        cols_k, cols_v, kv_off, m_kv = _kv_tile(i_v, K, V, BK, BV)
        tv_off, m_tv = _toff(tok, i_h, cols_v, m_t, H, V)
        b_h = tl.load(h + hoff + kv_off, mask=m_kv, other=0.0)
        b_dh = tl.load(dh + hoff + kv_off, mask=m_kv, other=0.0)
        b_do = tl.load(do + tv_off, mask=m_tv, other=0.0).to(DT)
        b_vn = tl.load(vn + tv_off, mask=m_tv, other=0.0)
        b_du = tl.load(du + tv_off, mask=m_tv, other=0.0)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dks += tl.dot(b_vn, tl.trans(b_dh), input_precision=PREC)
        b_dw -= tl.dot(b_du, tl.trans(b_h), input_precision=PREC)
        b_ds += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        dgl += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32))

    e_gam = tl.exp(b_gam)
    lower = rows[:, None] >= rows[None, :]
    b_ds = tl.where(lower, b_ds * scale * tl.exp(tl.where(lower, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
    b_ds = b_ds.to(DT)
    b_qf = b_q.to(tl.float32)
    b_kf = b_k.to(tl.float32)
    b_dq = b_dq * (scale * e_gam)[:, None] + tl.dot(b_ds, b_k.to(DT), input_precision=PREC)
    # output part of dk: dS^T Q, as (Q^T dS)^T (the transposed product only reaches sums and the store)
    b_dko = tl.trans(tl.dot(tl.trans(b_q.to(DT)), b_ds, input_precision=PREC))
    b_dks = b_dks * tl.where(m_t, tl.exp(g_last - b_gam), 0.0)[:, None]
    c_s = tl.sum(b_dks * b_kf, 1)
    b_dgam = tl.sum(b_dq * b_qf, 1) - tl.sum(b_dko * b_kf, 1) - c_s
    b_dgam += tl.where(rows == L - 1, tl.sum(c_s) + dgl * tl.exp(g_last), 0.0)
    tl.store(dq + tk_off, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk_part + tk_off, (b_dko + b_dks).to(dk_part.dtype.element_ty), mask=m_tk)
    tl.store(dw + tk_off, b_dw.to(dw.dtype.element_ty), mask=m_tk)
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
    t0, L, rows, tok, m_t = _chunk_coords(cu, chunk_seq, chunk_pos, i_c, BT)
    tk_off, m_tk = _toff(tok, i_h, tl.arange(0, BK), m_t, H, K)
    DT = Tm.dtype.element_ty

    b_k = tl.load(k + tk_off, mask=m_tk, other=0.0)
    b_gam, g_last = _gam(gam, tok, m_t, t0, L, H, i_h)
    b_beta = tl.load(beta + tok * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    # T^T loaded directly from memory (T is stored row-major per token)
    b_TT = tl.load(
        Tm + ((t0 + rows[None, :]) * H * BT + i_h * BT) + rows[:, None], mask=m_t[None, :], other=0.0
    )

    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        tv_off, m_tv = _toff(tok, i_h, i_v * BV + tl.arange(0, BV), m_t, H, V)
        b_du = tl.load(du + tv_off, mask=m_tv, other=0.0)
        b_v = tl.load(v + tv_off, mask=m_tv, other=0.0).to(tl.float32)
        # U~ = T (beta V):  dT += dU (beta V)^T,  d(beta V) = T^T dU
        b_dT += tl.dot(b_du, tl.trans((b_v * b_beta[:, None]).to(DT)), input_precision=PREC)
        b_dvb = tl.dot(b_TT, b_du, input_precision=PREC)
        tl.store(dv + tv_off, (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        b_dbeta += tl.sum(b_dvb * b_v, 1)

    e_gam = tl.exp(b_gam)
    b_kf = b_k.to(tl.float32)
    b_dk = tl.load(dk_part + tk_off, mask=m_tk, other=0.0).to(tl.float32)
    b_dgam = tl.load(dgam_part + tok * H + i_h, mask=m_t, other=0.0)
    b_dw = tl.load(dw + tk_off, mask=m_tk, other=0.0)
    # W = T diag(beta e^gam) K:  d(kbe) = T^T dW,  dT += dW kbe^T
    b_be = b_beta * e_gam
    b_dkbe = tl.dot(b_TT, b_dw, input_precision=PREC)
    b_dk += b_dkbe * b_be[:, None]
    r_kbe = tl.sum(b_dkbe * b_kf, 1)  # k_i.d(kbe)_i: dbeta gets it times e^gam, dgam times beta e^gam
    b_dbeta += r_kbe * e_gam
    b_dgam += r_kbe * b_be
    b_dT += tl.dot(b_dw, tl.trans((b_kf * b_be[:, None]).to(DT)), input_precision=PREC)
    # dA = -T^T dT T^T on the strictly lower part
    strict = rows[:, None] > rows[None, :]
    b_dA = tl.dot(b_TT, b_dT.to(DT), input_precision=PREC)
    b_dA = -tl.dot(b_dA.to(DT), b_TT, input_precision=PREC)
    b_dA = tl.where(strict, b_dA, 0.0)
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    b_dec = tl.where(strict, tl.exp(tl.where(strict, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
    b_E = b_dA * b_dec * b_kk  # dA_ij Gam_ij k_i.k_j
    b_dbeta += tl.sum(b_E, 1)
    b_Eb = b_E * b_beta[:, None]  # dA_ij A_ij
    b_dgam += tl.sum(b_Eb, 1) - tl.sum(b_Eb, 0)
    b_dAk = (b_dA * b_dec * b_beta[:, None]).to(DT)
    b_kc = b_k.to(DT)
    b_dk += tl.dot(b_dAk, b_kc, input_precision=PREC)
    b_dk += tl.trans(tl.dot(tl.trans(b_kc), b_dAk, input_precision=PREC))

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
    cols_k, cols_v, kv_off, m_kv = _kv_tile(i_v, K, V, BK, BV)
    m_k = cols_k < K
    m_v = cols_v < V
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
CONFIG = {  # best of benchmarks/kernels.py --tune on an H100 (v4, v5: benchmarks/results/kernels_v*_log.txt)
    "prepare": dict(BV=64, num_warps=4, num_stages=1),
    # lowp: products in PREC_INV; fuse_o: o computed in the state recurrence (no _fwd_output launch) also
    # when the states are kept for a backward (a forward that keeps nothing always fuses); off: 3.087 vs
    # 3.119 ms fwd+bwd on the H200 (benchmarks/results/kernels_v7_log.txt)
    "state": dict(BV=64, num_warps=4, num_stages=2, lowp=True, fuse_o=False),
    "output": dict(BV=64, num_warps=4, num_stages=2),
    "bwd_du_local": dict(BV=64, num_warps=4, num_stages=1),
    # segment: the gradient recurrence split into segments as the forward's (_segments) when the programs
    # cannot fill the GPU: 5.23 -> 3.95 ms fwd+bwd at (1, 32768, 16) on the H200 (benchmarks/NOTES.md, v9)
    "bwd_state": dict(BV=64, num_warps=4, num_stages=1, segment=True),
    "bwd_dqk": dict(BV=64, num_warps=8, num_stages=1),
    "bwd_wy": dict(BV=64, num_warps=4, num_stages=1),
    "decode": dict(BV=32, num_warps=2, num_stages=1),
}


# Triton 3.6 on the H100 fails with an illegal memory access when a product whose left operand is computed
# in registers and cast to fp16/bf16 has N = BV = 32 or 128 (seen in _fwd_prepare, _fwd_output, _bwd_state;
# benchmarks/results/kernels_v4_log.txt); N = 64 passes every check. These kernels always take BV = 64;
# masks cover V < 64 (checked on the GPU with V = 32).
FIXED_BV = {"prepare": 64, "state": 64, "output": 64, "bwd_du_local": 64, "bwd_state": 64}


FLAGS = ("lowp", "fuse_o", "segment")  # CONFIG entries that are not launch parameters


def _cfg(name, V):
    c = dict(CONFIG[name])
    for flag in FLAGS:
        c.pop(flag, None)
    bv = c.pop("BV")
    return FIXED_BV.get(name, min(bv, _next_pow2(V))), c


def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


# precision of the 11 small dots that invert I + A for bf16/fp16 inputs: "fp16" rounds their operands to
# float16 (the same 10-bit mantissa as tf32, twice the MMA rate, half the operand bytes; 0.08 ms less per
# forward than "tf32" on the H100, benchmarks/results/kernels_v4_log.txt). The entries of A are bounded by
# beta |k_i| |k_j|: safe for the usual l2-normalised keys; "tf32" or "tf32x3" for unnormalised ones.
PREC_INV_LOWP = "fp16"


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


# The state recurrence is sequential over a sequence's chunks. When there are too few (sequence, head,
# V-block) programs to fill the GPU (long sequences, small batches), each sequence is cut into segments run in
# parallel (see _fwd_state): about 3x the state work on SEGMENT_FILL x more programs. SEGMENT_CHUNKS forces a
# segment length in chunks (tests), 0 turns segments off; None chooses from the multiprocessor count.
SEGMENT_CHUNKS = None
SEGMENT_FILL = 2  # aim at this many programs per multiprocessor
SEGMENT_MIN = 16  # chunks per segment at least, unless forced


def _segments(T, H, V, cu_seqlens, cu, device, split=True):
    """Segment table [nseg, 3] int32 (sequence, rank in it, chunks per segment of it) and nseg; split=False:
    one segment per sequence."""
    N = cu.numel() - 1
    cs = SEGMENT_CHUNKS if split else 0
    if cs is None and device.type == "cuda":
        programs = N * H * triton.cdiv(V, FIXED_BV["state"])
        want = SEGMENT_FILL * torch.cuda.get_device_properties(device).multi_processor_count // programs
        if want > 1:
            longest = T if cu_seqlens is None else int((cu[1:] - cu[:-1]).max())
            cs = max(SEGMENT_MIN, triton.cdiv(triton.cdiv(longest, BT), want))
    if not cs:  # one segment per sequence: no host round trip
        n = torch.arange(N, device=device, dtype=torch.int32)
        return torch.stack([n, torch.zeros_like(n), torch.full_like(n, 2**30)], 1), N
    if cu_seqlens is None:
        per = triton.cdiv(triton.cdiv(T, BT), cs)
        i = torch.arange(N * per, device=device, dtype=torch.int32)
        return torch.stack([i // per, i % per, torch.full_like(i, cs)], 1), N * per
    nchunks = ((cu[1:] - cu[:-1] + BT - 1) // BT).tolist()
    rows = [(n, r, cs) for n, nc in enumerate(nchunks) for r in range(max(1, triton.cdiv(nc, cs)))]
    return torch.tensor(rows, dtype=torch.int32, device=device), len(rows)


class _Launch:
    """Shape, precision and intermediate dtype of one call, and the launcher of its kernels."""

    def __init__(self, q, v, H):
        self.K, self.V, self.H = q.shape[-1], v.shape[-1], H
        # K < 64 is padded to BK = 64 (masked): bf16 products with BK = 16 or 32 crash or lose accuracy on
        # Hopper with Triton 3.6 (the register-cast family of the BV bug below; benchmarks/NOTES.md)
        self.BK = _next_pow2(self.K, lo=64)
        if self.BK > TRITON_MAX_K:
            raise ValueError(f"the Triton kernels support K <= {TRITON_MAX_K}, got K = {self.K}")
        self.prec = _prec(q.dtype)
        self.inter = _inter(q.dtype)
        self.dev = q.device

    def empty(self, *shape, dtype=None):
        return _empty(*shape, device=self.dev, dtype=self.inter if dtype is None else dtype)

    def __call__(self, kernel, name, grid, *args, V_=None, **const):
        """Launch kernel with the config of `name`; grid(BV) gives the grid; V_ stands in for V."""
        V = self.V if V_ is None else V_
        BV, kw = _cfg(name, V)
        kernel[grid(BV)](
            *args, H=self.H, K=self.K, V=V, BT=BT, BK=self.BK, BV=BV, PREC=self.prec, **const, **kw
        )


def _or(t, dummy):
    return t if t is not None else dummy


def chunk_fwd(q, k, v, g, beta, scale, h0, cu_seqlens, output_final_state, save=True):
    """save: keep what the backward needs (returned as the third value; None otherwise)."""
    B, T, H, _ = q.shape
    run = _Launch(q, v, H)
    K, V = run.K, run.V
    cu, chunk_seq, chunk_pos, chunk_off, NCt = _chunk_tables(B, T, cu_seqlens, q.device)
    N = cu.numel() - 1
    gam = run.empty(B, T, H, dtype=torch.float32)
    Tm = run.empty(B, T, H, BT) if save else q
    w, u = run.empty(B, T, H, K), run.empty(B, T, H, V)
    run(
        _fwd_prepare,
        "prepare",
        lambda bv: (NCt, H),
        *(k, v, g, beta, cu, chunk_seq, chunk_pos, gam, Tm, w, u),
        PREC_INV=_prec_inv(q.dtype),
        STORE_T=save,
    )
    fuse = not save or CONFIG["state"].get("fuse_o", False)
    keep = save or not fuse  # per-chunk states and new values: for the backward, or for _fwd_output
    h = run.empty(NCt, H, K, V) if keep else q
    vn = run.empty(B, T, H, V) if keep else q
    ht = run.empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    seg, nseg = _segments(T, H, V, cu_seqlens, cu, q.device)
    segmented = nseg > N
    seg_e = run.empty(nseg, H, K, V, dtype=torch.float32) if segmented else q
    seg_m = run.empty(nseg, H, K, K, dtype=torch.float32) if segmented else q
    o = run.empty(B, T, H, V, dtype=v.dtype)
    args = (q, k, w, u, gam, _or(h0, q), cu, chunk_off, seg, h, vn, _or(ht, q), seg_e, seg_m, o, scale)
    const = dict(
        PREC_S=_prec_inv(q.dtype) if CONFIG["state"].get("lowp", True) else run.prec,
        HAS_H0=h0 is not None,
        STORE_HT=ht is not None,
        SEGMENTED=segmented,
        SAVE=keep,
        FUSE_O=fuse,
    )
    if segmented:  # segments' end states and maps first (independent launches), then the recurrence
        run(_fwd_state, "state", lambda bv: (triton.cdiv(V, bv), nseg * H), *args, MODE="end", **const)
        run(_fwd_state, "state", lambda bv: (triton.cdiv(K, bv), nseg * H), *args, MODE="map", V_=K, **const)
    run(_fwd_state, "state", lambda bv: (triton.cdiv(V, bv), nseg * H), *args, MODE="run", **const)
    if not fuse:
        run(
            _fwd_output,
            "output",
            lambda bv: (triton.cdiv(V, bv), NCt, H),
            *(q, k, vn, gam, h, cu, chunk_seq, chunk_pos, o, scale),
            PREC_INV=_prec_inv(q.dtype),
        )
    # the segment table goes along: the backward's, when it segments, is the same (no second host round trip)
    saved = (gam, Tm, w, h, vn, cu, chunk_seq, chunk_pos, chunk_off, seg, NCt, nseg) if save else None
    return o, ht, saved


def chunk_bwd(q, k, v, g, beta, scale, h0, do, dht, saved):
    gam, Tm, w, h, vn, cu, chunk_seq, chunk_pos, chunk_off, fwd_seg, NCt, fwd_nseg = saved
    B, T, H, _ = q.shape
    run = _Launch(q, v, H)
    K, V = run.K, run.V
    N = cu.numel() - 1
    do = do.contiguous()
    dh, du = run.empty(NCt, H, K, V), run.empty(B, T, H, V)
    dh0 = run.empty(N, H, K, V, dtype=torch.float32) if h0 is not None else None
    run(
        _bwd_du_local,
        "bwd_du_local",
        lambda bv: (NCt, H),
        *(q, k, gam, do, cu, chunk_seq, chunk_pos, scale, du),
    )
    if CONFIG["bwd_state"].get("segment", False):
        seg, nseg = fwd_seg, fwd_nseg
    else:
        seg, nseg = _segments(T, H, V, None, cu, q.device, split=False)
    segmented = nseg > N
    seg_e = run.empty(nseg, H, K, V, dtype=torch.float32) if segmented else q
    seg_m = run.empty(nseg, H, K, K, dtype=torch.float32) if segmented else q
    args = (q, k, w, gam, do, _or(dht, q), cu, chunk_off, seg, scale, dh, du, _or(dh0, q), seg_e, seg_m)
    const = dict(
        PREC_S=_prec_inv(q.dtype),
        HAS_DHT=dht is not None,
        STORE_DH0=dh0 is not None,
        SEGMENTED=segmented,
    )
    grid_v, grid_k = (lambda bv: (triton.cdiv(V, bv), nseg * H)), (lambda bv: (triton.cdiv(K, bv), nseg * H))
    if segmented:  # segments' end gradients and maps first (independent launches), then the recurrence
        run(_bwd_state, "bwd_state", grid_v, *args, MODE="end", **const)
        run(_bwd_state, "bwd_state", grid_k, *args, MODE="map", V_=K, **const)
    run(_bwd_state, "bwd_state", grid_v, *args, MODE="run", **const)
    dq = run.empty(*q.shape, dtype=q.dtype)
    dk_part, dw = run.empty(*k.shape), run.empty(*k.shape)
    dgam = run.empty(B, T, H, dtype=torch.float32)
    run(
        _bwd_dqk,
        "bwd_dqk",
        lambda bv: (NCt, H),
        *(q, k, gam, h, dh, vn, du, do, cu, chunk_seq, chunk_pos, scale, dq, dk_part, dw, dgam),
    )
    dk, dv = run.empty(*k.shape, dtype=k.dtype), run.empty(*v.shape, dtype=v.dtype)
    dbeta, dg = run.empty(*beta.shape, dtype=beta.dtype), run.empty(*g.shape, dtype=g.dtype)
    run(
        _bwd_wy,
        "bwd_wy",
        lambda bv: (NCt, H),
        *(k, v, beta, gam, Tm, dw, du, dk_part, dgam, cu, chunk_seq, chunk_pos, dk, dv, dbeta, dg),
    )
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, h0, cu_seqlens, output_final_state):
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        h0 = h0.contiguous() if h0 is not None else None
        save = any(ctx.needs_input_grad[:7])
        o, ht, saved = chunk_fwd(q, k, v, g, beta, scale, h0, cu_seqlens, output_final_state, save=save)
        if save:
            ctx.save_for_backward(q, k, v, g, beta, h0, *saved[:-2])
            ctx.nct, ctx.nseg = saved[-2:]
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
            (*saved, ctx.nct, ctx.nseg),
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
