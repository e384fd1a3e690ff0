"""GPU check and benchmark of mudelta.kernels against flash-linear-attention (fla-core).

    python benchmarks/kernels.py --check --bench --out DIR

--check: full-size correctness on the GPU against a float64 reference computed on the GPU (the chunked
         PyTorch path in float64, itself tested against the naive recurrence), fresh random inputs, every
         output and intermediate poisoned with NaN before each run; also one packed batch whose tensors pass
         2^31 elements (64-bit offsets).
--bench: triton.testing.do_bench medians of our kernels and fla's in the same process: forward and
         forward+backward at three shapes (bf16), decode at B=64; ms, tokens/s, ratio to fla, fraction of
         the roofline (FLOPs over the measured bf16 matmul rate, bytes over the measured copy bandwidth);
         "mudelta-checked" rows time ours with kernels.CHECK_VALUES = True (a host round trip per call).
Writes kernels.json and kernels.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import time

import mudelta.kernels
import torch
from mudelta.kernels import (
    chunk_gated_delta_rule,
    chunk_gated_delta_rule_torch,
    fused_recurrent_gated_delta_rule,
    triton_gdn,
)
from mudelta.kernels.testing import TOL, compare, error_ratio, make_inputs

SHAPES = [(8, 4096, 16, 128, 128), (4, 8192, 32, 128, 128), (1, 32768, 16, 128, 128)]
DECODE = (64, 16, 128, 128)


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------------------------------


def ref64(*args, **kw):
    return chunk_gated_delta_rule_torch(*args, **kw)


def run_checks(results, skip_fp32=False):
    triton_gdn.POISON = True
    dev = "cuda"
    cases = [
        ("full_bf16", (8, 4096, 16, 128, 128), torch.bfloat16, "normal", {}),
        ("no_decay_bf16", (2, 2048, 16, 128, 128), torch.bfloat16, "no_decay", {}),
        ("strong_decay_bf16", (2, 2048, 16, 128, 128), torch.bfloat16, "strong_decay", {}),
        ("beta0_bf16", (2, 2048, 16, 128, 128), torch.bfloat16, "beta0", {}),
        ("beta1_bf16", (2, 2048, 16, 128, 128), torch.bfloat16, "beta1", {}),
        ("odd_T_l2norm_bf16", (3, 1000, 8, 128, 128), torch.bfloat16, "normal", {"l2norm": True}),
        ("small_dims_bf16", (2, 777, 4, 64, 96), torch.bfloat16, "normal", {}),
        ("v32_bf16", (2, 1000, 4, 64, 32), torch.bfloat16, "normal", {}),
        ("long_seq_bf16", (1, 16384, 8, 128, 128), torch.bfloat16, "normal", {}),  # segmented state
        ("segments3_bf16", (2, 2048, 4, 128, 128), torch.bfloat16, "normal", {"segment": 3}),
        ("k16_bf16", (4, 512, 6, 16, 32), torch.bfloat16, "normal", {}),  # K < 64: padded to BK = 64
        ("k32_bf16", (4, 512, 6, 32, 64), torch.bfloat16, "normal", {}),
        ("k32_l2norm_bf16", (4, 512, 6, 32, 64), torch.bfloat16, "normal", {"l2norm": True}),
        ("fp16", (2, 2048, 16, 128, 128), torch.float16, "normal", {}),
        ("fp32", (1, 300, 4, 128, 128), torch.float32, "normal", {}),
    ]
    if skip_fp32:
        cases = [c for c in cases if c[2] != torch.float32]
    out = {}
    for name, (B, T, H, K, V), dtype, regime, extra in cases:
        torch.manual_seed(hash(name) % 2**31 + int(time.time()))
        inp = make_inputs(B, T, H, K, V, dtype, device=dev, regime=regime)
        t0 = time.time()
        try:
            with module_setting("SEGMENT_CHUNKS", extra.get("segment")):
                err = compare(chunk_gated_delta_rule, inp, l2norm=extra.get("l2norm", False), ref_fn=ref64)
        except Exception as e:
            log(f"check {name} raised {e!r}")
            err = {"exception": math.inf}
        ok = all(e < TOL[dtype].get(n, 0) for n, e in err.items())
        out[name] = {"shape": [B, T, H, K, V], "dtype": str(dtype), "regime": regime, "err": err, "ok": ok}
        log(
            f"check {name:22s} {'OK ' if ok else 'FAIL'} "
            + " ".join(f"{n}={e:.2e}" for n, e in err.items())
            + f"  ({time.time() - t0:.1f}s)"
        )
    # fla's own error ratios on the same kind of inputs (information only, not a pass/fail)
    fla_chunk, _, _ = load_fla()
    if fla_chunk is not None:
        inp = make_inputs(8, 4096, 16, 128, 128, torch.bfloat16, device=dev)
        try:
            err = compare(fla_chunk, inp, ref_fn=ref64)
            results["fla_error"] = err
            log("fla error (info)             " + " ".join(f"{n}={e:.2e}" for n, e in err.items()))
        except Exception as e:
            log(f"fla error check raised {e!r}")
    # varlen with length-1 sequences, full size
    lens = [1, 1, 4096, 1, 777, 64, 65, 1, 3000, 2048, 1, 5376]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
    Ttot = int(cu[-1])
    for dtype in (torch.bfloat16,):
        inp = make_inputs(1, Ttot, 16, 128, 128, dtype, device=dev, n_seq=len(lens))
        err = compare(chunk_gated_delta_rule, inp, cu_seqlens=cu, ref_fn=ref64)
        ok = all(e < TOL[dtype][n] for n, e in err.items())
        out["varlen_bf16"] = {"lens": lens, "err": err, "ok": ok}
        log(
            "check varlen_bf16            "
            + ("OK " if ok else "FAIL ")
            + " ".join(f"{n}={e:.2e}" for n, e in err.items())
        )
    # decode: a few steps with a carried state, T = 1 and T = 3, and varlen
    for name, (B, T) in (("decode_T1", (64, 1)), ("decode_T3", (16, 3))):
        inp = make_inputs(B, T, 16, 128, 128, torch.bfloat16, device=dev)
        err = compare(fused_recurrent_gated_delta_rule, inp, grads=False, ref_fn=ref64)
        ok = all(e < TOL[torch.bfloat16][n] for n, e in err.items())
        out[name] = {"err": err, "ok": ok}
        log(f"check {name:22s} {'OK ' if ok else 'FAIL'} " + " ".join(f"{n}={e:.2e}" for n, e in err.items()))
    # 64-bit offsets: q, k and the chunk states pass 2^31 elements; check the last sequence's output/state
    H, K, V = 16, 128, 64
    big = 2**20
    lens = [big, 192, 70]
    cu = torch.tensor([0, big, big + 192, big + 262], dtype=torch.int64, device=dev)
    Ttot = big + 262
    assert Ttot * H * K > 2**31
    q = torch.randn(1, Ttot, H, K, device=dev, dtype=torch.bfloat16)
    k = torch.nn.functional.normalize(torch.randn(1, Ttot, H, K, device=dev), dim=-1).to(torch.bfloat16)
    v = torch.randn(1, Ttot, H, V, device=dev, dtype=torch.bfloat16)
    g = torch.nn.functional.logsigmoid(torch.randn(1, Ttot, H, device=dev) + 2)
    beta = torch.rand(1, Ttot, H, device=dev, dtype=torch.bfloat16)
    h0 = torch.randn(3, H, K, V, device=dev)
    with torch.no_grad():
        o, ht = chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu
        )
        sl = slice(big, Ttot)
        cu_tail = torch.tensor([0, 192, 262], device=dev)
        o_ref, ht_ref = ref64(
            *(t[:, sl].double() for t in (q, k, v, g, beta)),
            initial_state=h0[1:].double(),
            output_final_state=True,
            cu_seqlens=cu_tail,
        )
        err = {
            "o_tail": error_ratio(o[:, sl], o_ref),
            "ht_tail": error_ratio(ht[1:], ht_ref),
            "o_all_finite": float(torch.isfinite(o).all().item()),
        }
    del q, k, v, g, beta, o
    ok = err["o_tail"] < 5e-3 and err["ht_tail"] < 5e-3 and err["o_all_finite"] == 1.0
    out["int64_offsets"] = {"tokens": Ttot, "H": H, "K": K, "V": V, "err": err, "ok": ok}
    log(f"check int64_offsets          {'OK ' if ok else 'FAIL'} {err}")
    torch.cuda.empty_cache()
    triton_gdn.POISON = False
    results["checks"] = out
    return all(c["ok"] for c in out.values())


# ----------------------------------------------------------------------------------------------------
# speed
# ----------------------------------------------------------------------------------------------------


def measure_ceilings():
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda a=a, b=b: a @ b, warmup=50, rep=300, return_mode="median")
    mm = 2 * 8192**3 / (ms * 1e-3)
    x = torch.randn(2**28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda x=x, y=y: y.copy_(x), warmup=50, rep=300, return_mode="median")
    bw = 2 * x.numel() * 4 / (ms * 1e-3)
    del a, b, x, y
    return mm, bw


def fwd_flops(B, T, H, K, V, C=64):
    # per token and head: A = K K^T, W = T K, U = T V, U - W S, state update, Q S, Q K^T, (QK^T) U
    return 2.0 * B * T * H * (3 * C * K + 2 * C * V + 3 * K * V)


def fwd_bytes(B, T, H, K, V, el=2):
    return B * T * H * (el * (2 * K + 2 * V) + 2 * 4)  # q, k, v in; o out; g, beta


def bwd_bytes(B, T, H, K, V, el=2):
    return (
        B * T * H * (el * (2 * K + 2 * V) + el * (2 * K + V) + 4 * 4)
    )  # q, k, v, do in; dq, dk, dv out; g, beta


def load_fla():
    try:
        import fla  # noqa: F401
        import fla.ops.common.chunk_o as fco
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_rec

        fco.TRITON_ABOVE_3_7_1 = True  # timing only: fla refuses its gated backward on triton < 3.7.1 Hopper
        return fla_chunk, fla_rec, getattr(fla, "__version__", "?")
    except Exception as e:  # pragma: no cover
        log("fla unavailable:", repr(e))
        return None, None, None


@contextlib.contextmanager
def module_setting(name, value, module=triton_gdn):
    """module.<name> (triton_gdn's SEGMENT_CHUNKS or SEGMENT_FILL, kernels' CHECK_VALUES) set to value
    inside the block."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def unsegmented(*args, **kw):
    """chunk_gated_delta_rule with the state recurrence run over whole sequences."""
    with module_setting("SEGMENT_CHUNKS", 0):
        return chunk_gated_delta_rule(*args, **kw)


def checked(fn):
    """fn with the value checks (kernels.check_values, one host round trip per call) on every call; the
    default ("auto") skips them on CUDA without cu_seqlens."""

    def call(*args, **kw):
        with module_setting("CHECK_VALUES", True, module=mudelta.kernels):
            return fn(*args, **kw)

    return call


def segmented_by_default(B, T, H, V):
    """Whether the kernels' own rule (triton_gdn._segments) splits these uniform sequences."""
    cu = torch.arange(B + 1, device="cuda", dtype=torch.int64) * T
    return triton_gdn._segments(T, H, V, None, cu, cu.device)[1] > B


def run_bench(results, shapes=SHAPES):
    from triton.testing import do_bench

    mm, bw = measure_ceilings()
    log(f"ceilings: bf16 matmul {mm / 1e12:.0f} TFLOP/s, copy {bw / 1e12:.2f} TB/s")
    results["ceilings"] = {"bf16_matmul_flops": mm, "copy_bytes_per_s": bw}
    fla_chunk, fla_rec, fla_ver = load_fla()
    results["fla_version"] = fla_ver
    rows = []

    def bench(fn):
        return do_bench(fn, warmup=100, rep=500, return_mode="median")

    for B, T, H, K, V in shapes:
        torch.manual_seed(0)
        inp = make_inputs(B, T, H, K, V, torch.bfloat16, device="cuda", h0=False)
        q, k, v, g, beta = (inp[n] for n in ("q", "k", "v", "g", "beta"))
        do = torch.randn_like(v)
        impls = [("mudelta", chunk_gated_delta_rule), ("mudelta-checked", checked(chunk_gated_delta_rule))]
        if segmented_by_default(B, T, H, V):
            impls.append(("mudelta-noseg", unsegmented))  # what the segmented state recurrence buys
        if fla_chunk is not None:
            impls.append(("fla", fla_chunk))
        for name, fn in impls:

            def fwd(fn=fn, args=(q, k, v, g, beta)):
                with torch.no_grad():
                    return fn(*args, output_final_state=False)

            leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, g, beta)]

            def fwdbwd(fn=fn, leaves=leaves, do=do):
                o, _ = fn(*leaves, output_final_state=False)
                torch.autograd.backward(o, do)

            def fwdsave(fn=fn, leaves=leaves):  # a training step's forward: keeps what the backward needs
                return fn(*leaves, output_final_state=False)

            for mode, f in (("fwd", fwd), ("fwd-save", fwdsave), ("fwd+bwd", fwdbwd)):
                try:
                    ms = bench(f)
                except Exception as e:
                    log(f"{name} {mode} {(B, T, H, K, V)} failed: {e!r}")
                    ms = math.nan
                train = mode == "fwd+bwd"
                fl = fwd_flops(B, T, H, K, V) * (3 if train else 1)
                by = fwd_bytes(B, T, H, K, V) + (bwd_bytes(B, T, H, K, V) if train else 0)
                roof = max(fl / mm, by / bw) * 1e3
                rows.append(
                    {
                        "impl": name,
                        "mode": mode,
                        "shape": [B, T, H, K, V],
                        "ms": ms,
                        "tokens_per_s": B * T / (ms * 1e-3),
                        "roofline_ms": roof,
                        "roofline_frac": roof / ms,
                    }
                )
                log(f"{name:15s} {mode:8s} {str((B, T, H, K, V)):26s} {ms:8.3f} ms")
        # segment count: programs per multiprocessor (the default is SEGMENT_FILL); where the GPU is full
        # without segments (the first two shapes) forcing them costs 0.2-0.6 ms (kernels_v6_log.txt)
        for fill in (1, 4, 8) if segmented_by_default(B, T, H, V) else ():
            with module_setting("SEGMENT_FILL", fill):
                ms = bench(lambda a=(q, k, v, g, beta): chunk_gated_delta_rule(*a, output_final_state=False))
                rows.append(
                    {
                        "impl": f"mudelta-fill{fill}",
                        "mode": "fwd",
                        "shape": [B, T, H, K, V],
                        "ms": ms,
                        "tokens_per_s": B * T / (ms * 1e-3),
                        "roofline_ms": math.nan,
                        "roofline_frac": math.nan,
                    }
                )
            log(f"mudelta fwd with SEGMENT_FILL={fill} {str((B, T, H, K, V)):26s} {ms:8.3f} ms")
        del q, k, v, g, beta, do, inp
        torch.cuda.empty_cache()
    # decode
    N, H, K, V = DECODE
    inp = make_inputs(N, 1, H, K, V, torch.bfloat16, device="cuda")
    q, k, v, g, beta, h0 = (inp[n] for n in ("q", "k", "v", "g", "beta", "h0"))
    impls = [
        ("mudelta", fused_recurrent_gated_delta_rule),
        ("mudelta-checked", checked(fused_recurrent_gated_delta_rule)),
    ]
    if fla_rec is not None:
        impls.append(("fla", fla_rec))
    state_bytes = 2 * N * H * K * V * 4
    for name, fn in impls:

        def dec(fn=fn):
            return fn(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True)

        with torch.no_grad():
            ms = bench(dec)
        by = state_bytes + N * H * (2 * K + 2 * V) * 2
        rows.append(
            {
                "impl": name,
                "mode": "decode",
                "shape": [N, 1, H, K, V],
                "ms": ms,
                "tokens_per_s": N / (ms * 1e-3),
                "state_TBps": state_bytes / (ms * 1e-3) / 1e12,
                "roofline_ms": by / bw * 1e3,
                "roofline_frac": by / bw * 1e3 / ms,
            }
        )
        log(
            f"{name:15s} decode   {str((N, 1, H, K, V)):26s} {ms:8.4f} ms"
            f"  state {state_bytes / ms / 1e9:.2f} TB/s"
        )
    for r in rows:
        ref = [x for x in rows if x["impl"] == "fla" and x["mode"] == r["mode"] and x["shape"] == r["shape"]]
        r["speedup_vs_fla"] = ref[0]["ms"] / r["ms"] if ref else None
    results["bench"] = rows


TUNE = {  # (BV, num_warps, num_stages); small spaces: every candidate compiles once
    # prepare, state, output, bwd_du_local and bwd_state always run with BV = 64 (FIXED_BV in triton_gdn)
    "prepare": [(64, 4, 1), (64, 2, 1), (64, 4, 2)],
    "state": [(64, 4, 2), (64, 4, 3), (64, 8, 2), (64, 8, 1)],
    "output": [(64, 4, 2), (64, 4, 3), (64, 4, 1)],
    "bwd_du_local": [(64, 4, 1), (64, 8, 1)],
    "bwd_state": [(64, 4, 1), (64, 4, 2), (64, 8, 2)],
    "bwd_dqk": [(32, 8, 1), (64, 8, 1), (64, 4, 1), (128, 8, 1), (64, 8, 2)],
    "bwd_wy": [(64, 8, 1), (64, 4, 1), (128, 8, 1), (32, 4, 1)],
    "decode": [(32, 4, 1), (16, 2, 1), (64, 4, 1), (32, 2, 1), (16, 4, 1)],
}


# on/off switches tuned by fwd+bwd time before the launch configs: the state products in PREC_INV (lowp) or
# tf32, o fused into the state kernel when saving or not
TUNE_FLAGS = {"state": ("lowp", "fuse_o")}


def run_tune(results, only=None):
    """One pass of coordinate search over the launch configs at the first shape (and decode)."""
    from triton.testing import do_bench

    B, T, H, K, V = SHAPES[0]
    inp = make_inputs(B, T, H, K, V, torch.bfloat16, device="cuda", h0=False)
    args = [inp[n] for n in ("q", "k", "v", "g", "beta")]
    leaves = [t.detach().clone().requires_grad_(True) for t in args]
    do = torch.randn_like(inp["v"])
    dinp = make_inputs(DECODE[0], 1, DECODE[1], DECODE[2], DECODE[3], torch.bfloat16, device="cuda")
    dargs = [dinp[n] for n in ("q", "k", "v", "g", "beta")]

    def fwd():
        with torch.no_grad():
            chunk_gated_delta_rule(*args)

    def fwdbwd():
        o, _ = chunk_gated_delta_rule(*leaves)
        torch.autograd.backward(o, do)

    def dec():
        with torch.no_grad():
            fused_recurrent_gated_delta_rule(*dargs, initial_state=dinp["h0"], output_final_state=True)

    timer = {"prepare": fwd, "state": fwd, "output": fwd, "decode": dec}
    log_rows = []
    for prec in ("tf32", "fp16"):  # precision of the small dots inverting I + A (accuracy checked after)
        triton_gdn.PREC_INV_LOWP = prec
        ms = do_bench(fwd, warmup=25, rep=100, return_mode="median")
        log(f"tune prec_inv {prec}: fwd {ms:.3f} ms")
        log_rows.append({"kernel": "prec_inv", "prec": prec, "ms": ms})
    best_prec = min((r for r in log_rows if r["kernel"] == "prec_inv"), key=lambda r: r["ms"])
    triton_gdn.PREC_INV_LOWP = best_prec["prec"]
    for name, flags in TUNE_FLAGS.items():
        if name not in (only or TUNE):
            continue
        for flag in flags:
            for value in (True, False):
                triton_gdn.CONFIG[name][flag] = value
                ms = {
                    m: do_bench(f, warmup=25, rep=100, return_mode="median")
                    for m, f in (("fwd", fwd), ("fwd+bwd", fwdbwd))
                }
                log(f"tune {name} {flag}={value}: fwd {ms['fwd']:.3f} ms, fwd+bwd {ms['fwd+bwd']:.3f} ms")
                log_rows.append(
                    {"kernel": f"{name}_{flag}", flag: value, "ms": ms["fwd+bwd"], "fwd_ms": ms["fwd"]}
                )
            best = min((r for r in log_rows if r["kernel"] == f"{name}_{flag}"), key=lambda r: r["ms"])
            triton_gdn.CONFIG[name][flag] = best[flag]
    for name, cands in TUNE.items():
        if only and name not in only:
            continue
        if name == "output" and triton_gdn.CONFIG["state"].get("fuse_o", False):
            continue  # o is computed in the state kernel: no _fwd_output launch to tune
        f = timer.get(name, fwdbwd)
        best = None
        for bv, nw, ns in cands:
            extra = {k: v for k, v in triton_gdn.CONFIG[name].items() if k in triton_gdn.FLAGS}
            triton_gdn.CONFIG[name] = dict(BV=bv, num_warps=nw, num_stages=ns, **extra)
            try:
                ms = do_bench(f, warmup=25, rep=100, return_mode="median")
            except Exception as e:
                log(f"tune {name} {(bv, nw, ns)} failed: {type(e).__name__}")
                ms = math.inf
            log_rows.append({"kernel": name, "BV": bv, "num_warps": nw, "num_stages": ns, "ms": ms})
            log(f"tune {name:10s} BV={bv:3d} warps={nw} stages={ns}: {ms:.3f} ms")
            if best is None or ms < best[0]:
                best = (ms, bv, nw, ns)
        triton_gdn.CONFIG[name] = dict(BV=best[1], num_warps=best[2], num_stages=best[3], **extra)
    results["tune"] = log_rows
    results["config"] = {k: dict(v) for k, v in triton_gdn.CONFIG.items()}
    results["prec_inv"] = triton_gdn.PREC_INV_LOWP
    log("best config:", json.dumps(results["config"]), "prec_inv:", triton_gdn.PREC_INV_LOWP)


def profile(results, shape=0):
    """Per-kernel times of one fwd+bwd at SHAPES[shape] (ours and fla's)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    B, T, H, K, V = SHAPES[shape]
    inp = make_inputs(B, T, H, K, V, torch.bfloat16, device="cuda", h0=False)
    leaves = [inp[n].detach().clone().requires_grad_(True) for n in ("q", "k", "v", "g", "beta")]
    do = torch.randn_like(inp["v"])
    fla_chunk, _, _ = load_fla()
    for name, fn in (("mudelta", chunk_gated_delta_rule), ("fla", fla_chunk)):
        if fn is None:
            continue
        for _ in range(3):
            o, _ = fn(*leaves, output_final_state=False)
            torch.autograd.backward(o, do)
        torch.cuda.synchronize()
        with tprof(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5):
                o, _ = fn(*leaves, output_final_state=False)
                torch.autograd.backward(o, do)
            torch.cuda.synchronize()
        table = p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
        log(f"--- profile {name} (5 x fwd+bwd at {SHAPES[shape]}) ---\n{table}")
        results.setdefault("profile", {})[f"{name} {SHAPES[shape]}"] = table


def write_outputs(results, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernels.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    lines = [
        f"# mudelta.kernels on {results['device']}",
        "",
        f"torch {results['torch']}, triton {results['triton']}, fla-core {results.get('fla_version')}, "
        f"{results['date']}",
        "",
    ]
    if "ceilings" in results:
        c = results["ceilings"]
        lines += [
            f"Measured ceilings: bf16 matmul {c['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s, "
            f"copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write).",
            "",
        ]
    if "checks" in results:
        lines += [
            "## Correctness (error ratio rms(out - ref) / rms(ref) vs float64 on the GPU)",
            "",
            "| case | ok | errors |",
            "|---|---|---|",
        ]
        for n, c in results["checks"].items():
            lines.append(
                f"| {n} | {'yes' if c['ok'] else 'NO'} | "
                + ", ".join(f"{k}={v:.1e}" for k, v in c["err"].items())
                + " |"
            )
        lines.append("")
    if "bench" in results:
        lines += [
            "## Speed (do_bench median)",
            "",
            "| impl | mode | (B, T, H, K, V) | ms | tokens/s | vs fla | roofline frac |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["bench"]:
            sp = f"{r['speedup_vs_fla']:.2f}x" if r.get("speedup_vs_fla") else "-"
            extra = f" ({r['state_TBps']:.2f} TB/s state)" if "state_TBps" in r else ""
            lines.append(
                f"| {r['impl']} | {r['mode']} | {tuple(r['shape'])} | {r['ms']:.3f}{extra} | "
                f"{r['tokens_per_s']:.3g} | {sp} | {r['roofline_frac']:.2f} |"
            )
    with open(os.path.join(out_dir, "kernels.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--profile", type=int, nargs="*", default=None, help="indices into SHAPES (none: 0)")
    ap.add_argument("--tune", nargs="*", default=None, help="kernels to tune (none listed: all)")
    ap.add_argument("--config-from", default=None, help="kernels.json of a --tune run: use its config")
    ap.add_argument("--shapes", type=int, nargs="*", default=None, help="indices into SHAPES to time")
    ap.add_argument("--skip-fp32", action="store_true", help="skip the float32 check (slow to compile)")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument(
        "--flag",
        action="append",
        default=[],
        metavar="KERNEL.FLAG=0|1",
        help="set a CONFIG switch first, e.g. state.fuse_o=1 (before --config-from and --tune)",
    )
    args = ap.parse_args()
    for item in args.flag:
        key, _, value = item.partition("=")
        name, _, flag = key.partition(".")
        have = [f for f in triton_gdn.CONFIG.get(name, {}) if f in triton_gdn.FLAGS]
        if flag not in have or value not in ("0", "1"):
            switches = [f"{k}.{f}" for k, c in triton_gdn.CONFIG.items() for f in c if f in triton_gdn.FLAGS]
            ap.error(f"--flag {item}: expected KERNEL.FLAG=0|1, one of {', '.join(switches)}")
        triton_gdn.CONFIG[name][flag] = value == "1"
    import triton

    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.config_from and os.path.exists(args.config_from):
        prev = json.load(open(args.config_from))
        for name, c in prev.get("config", {}).items():
            triton_gdn.CONFIG[name] = dict(c)
        triton_gdn.PREC_INV_LOWP = prev.get("prec_inv", triton_gdn.PREC_INV_LOWP)
        log("config from", args.config_from, json.dumps(triton_gdn.CONFIG), triton_gdn.PREC_INV_LOWP)
    ok = True
    try:  # pre-flight: fall back to ieee for the inverse if this Triton rejects the configured precision
        t = make_inputs(1, 100, 2, 128, 128, torch.bfloat16, device="cuda")
        chunk_gated_delta_rule(*(t[n] for n in ("q", "k", "v", "g", "beta")))
    except Exception as e:
        log(f"pre-flight failed with {triton_gdn.PREC_INV_LOWP} ({e!r}); using ieee for the inverse")
        triton_gdn.PREC_INV_LOWP = "ieee"
    results["prec_inv"] = triton_gdn.PREC_INV_LOWP
    try:
        if args.tune is not None:
            run_tune(results, only=set(args.tune))
        results["config"] = {k: dict(v) for k, v in triton_gdn.CONFIG.items()}
        if args.check:
            ok = run_checks(results, skip_fp32=args.skip_fp32)
        if args.bench:
            run_bench(results, SHAPES if args.shapes is None else [SHAPES[i] for i in args.shapes])
        for i in args.profile or ([0] if args.profile is not None else []):
            profile(results, i)
    finally:
        write_outputs(results, args.out)
    if "bench" in results:
        log("\n" + open(os.path.join(args.out, "kernels.md")).read())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
