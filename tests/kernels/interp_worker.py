"""Runs the Triton kernels under TRITON_INTERPRET=1 on CPU tensors and prints error ratios as JSON.

Started as a subprocess by test_triton_interpret.py with TRITON_INTERPRET=1 in its environment: Triton
chooses interpreter or compiler when @triton.jit decorates a function, its own standard library (tl.cumsum,
...) included, so the variable must be set before triton is first imported. A separate process keeps that
away from every other test module in the pytest process.

Usage: python interp_worker.py CASE [CASE ...]   (no CASE: all of them)
"""

import json
import sys
import zlib

# name -> (B, T, H, K, V, dtype, regime, extra)
CASES = {
    "bf16_normal": (2, 80, 2, 32, 32, "bfloat16", "normal", {}),
    "bf16_no_decay": (2, 80, 2, 32, 32, "bfloat16", "no_decay", {}),
    "bf16_strong_decay": (2, 80, 2, 32, 32, "bfloat16", "strong_decay", {}),
    "bf16_beta0": (2, 80, 2, 32, 32, "bfloat16", "beta0", {}),
    "bf16_beta1": (2, 80, 2, 32, 32, "bfloat16", "beta1", {}),
    "bf16_short_T": (3, 5, 2, 32, 32, "bfloat16", "normal", {}),
    "bf16_varlen": (1, 135, 2, 32, 32, "bfloat16", "normal", {"cu": [0, 1, 2, 66, 67, 130, 135]}),
    "bf16_odd_dims_l2norm": (2, 70, 2, 24, 40, "bfloat16", "normal", {"l2norm": True, "scale": 0.3}),
    "bf16_no_h0": (1, 64, 2, 32, 32, "bfloat16", "normal", {"h0": False}),
    "bf16_k16": (2, 80, 2, 16, 32, "bfloat16", "normal", {}),
    "bf16_k128": (1, 70, 1, 128, 32, "bfloat16", "normal", {}),  # the benchmark's key dim
    "bf16_segments": (1, 300, 2, 32, 32, "bfloat16", "normal", {"segment": 1}),
    "bf16_segments_varlen": (
        1,
        335,
        2,
        32,
        32,
        "bfloat16",
        "normal",
        {"cu": [0, 1, 200, 200, 335], "segment": 2},
    ),
    "fp32_segments": (2, 200, 2, 32, 48, "float32", "strong_decay", {"segment": 1}),
    # no decay keeps the segments' maps far from 0, so the backward's composition over 5 segments counts; the
    # small gradients probe its range (an fp16 composition underflows here)
    "bf16_segments_no_decay_small_grad": (
        1,
        320,
        2,
        32,
        32,
        "bfloat16",
        "no_decay",
        {"segment": 1, "grad_scale": 1e-7},
    ),
    "fp32_segments_varlen_no_decay": (
        1,
        401,
        2,
        32,
        32,
        "float32",
        "no_decay",
        {"cu": [0, 1, 1, 260, 401], "segment": 1},
    ),
    "fp16_normal": (2, 80, 2, 32, 32, "float16", "normal", {}),
    "fp32_normal": (2, 80, 2, 32, 32, "float32", "normal", {}),
    "fp32_varlen": (1, 100, 2, 32, 32, "float32", "strong_decay", {"cu": [0, 1, 65, 66, 100]}),
    "decode_bf16": (4, 1, 2, 32, 32, "bfloat16", "normal", {"decode": True}),
    "decode_fp32_T3": (3, 3, 2, 32, 48, "float32", "normal", {"decode": True}),
    "decode_varlen": (1, 7, 2, 32, 32, "float32", "normal", {"decode": True, "cu": [0, 1, 2, 5, 7]}),
}


def _patch_bf16_dot():
    """Triton 3.9's interpreter multiplies bfloat16 dot operands as their raw uint16 bits (numpy has no
    bfloat16). Widen them to float32 first (exact), as the tensor cores do before accumulating in float32."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as ti

    orig = ti.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar == tl.bfloat16:
            return ti.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return orig(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    ti.InterpreterBuilder.create_dot = create_dot


def _patch_bf16_cast():
    """The interpreter converts float32 to bfloat16 by dropping the low 16 bits (round toward zero, a
    biased error twice the size of the GPU's round-to-nearest-even, cvt.rn.bf16.f32). Round to nearest even
    as the GPU does, so that error ratios of kernels that store bf16 intermediates mean the same thing."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as ti

    orig = ti.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            x = np.ascontiguousarray(src.data, dtype=np.float32)
            b = x.view(np.uint32)
            out = ((b + (((b >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
            out[np.isnan(x)] = 0x7FC0
            return ti.TensorHandle(out, tl.bfloat16)
        return orig(self, src, dst_type)

    ti.InterpreterBuilder.cast_impl = cast_impl


def run_case(name):
    import torch
    from mudelta.kernels import triton_gdn
    from mudelta.kernels.reference import l2norm as _l2
    from mudelta.kernels.testing import compare, make_inputs

    B, T, H, K, V, dtype, regime, extra = CASES[name]
    dtype = getattr(torch, dtype)
    cu = extra.get("cu")
    cu_t = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    inp = make_inputs(
        B,
        T,
        H,
        K,
        V,
        dtype,
        regime=regime,
        h0=extra.get("h0", True),
        n_seq=len(cu) - 1 if cu else None,
        seed=zlib.crc32(name.encode()),
    )
    torch.manual_seed(zlib.crc32(name.encode()))  # dO and dht
    decode = extra.get("decode", False)
    triton_gdn.SEGMENT_CHUNKS = extra.get("segment")
    triton_gdn.CONFIG["bwd_state"]["segment"] = "segment" in extra  # the backward's segments as well

    def fn(
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
        scale = K**-0.5 if scale is None else scale
        if use_qk_l2norm_in_kernel:
            q, k = _l2(q), _l2(k)
        if decode:
            return triton_gdn.fused_recurrent_triton(
                q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens
            )
        return triton_gdn.chunk_gated_delta_rule_triton(
            q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens
        )

    return compare(
        fn,
        inp,
        scale=extra.get("scale"),
        cu_seqlens=cu_t,
        l2norm=extra.get("l2norm", False),
        grads=not decode,
        grad_scale=extra.get("grad_scale", 1.0),
    )


def main():
    import os

    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    _patch_bf16_dot()
    _patch_bf16_cast()
    names = sys.argv[1:] or list(CASES)
    out = {}
    for n in names:
        try:
            out[n] = run_case(n)
        except Exception as e:  # reported per case by the test
            out[n] = {"error": f"{type(e).__name__}: {e}"}
    print("@@RESULT@@" + json.dumps(out))


if __name__ == "__main__":
    main()
