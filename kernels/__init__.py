"""mudelta.kernels: gated delta rule (GatedDeltaNet) ops.

Drop-in replacements for flash-linear-attention's ``chunk_gated_delta_rule`` and
``fused_recurrent_gated_delta_rule``: Triton kernels on CUDA tensors, a chunked pure-PyTorch path on
anything else, and ``naive_recurrent_gated_delta_rule`` (token-by-token, any dtype) as the reference.

Semantics per head (state S in R^{K x V}, float32): S <- exp(g_t) S; S <- S + k_t (beta_t (v_t - S^T k_t))^T;
o_t = scale S^T q_t, scale = K^-0.5 by default. q, k [B, T, H, K]; v [B, T, H, V]; g (log decay, <= 0) and
beta [B, T, H]; initial/final state [N, H, K, V] with N = B, or the number of sequences of ``cu_seqlens``
(packed sequences, B == 1). The chunked paths need g finite and <= 0 (they exponentiate in-chunk sums of g),
and cu_seqlens must rise from 0 to T. ``CHECK_VALUES`` says when that is checked: "auto" (default) where it
is cheap, i.e. tensors off CUDA and chunked calls with cu_seqlens (which wait for the GPU anyway, to read
the lengths; decoding does not); True on every call (one host round trip each: on an H200 it took the
forward at (8, 4096, 16, 128, 128) from 0.79 to 1.14 ms and a decode step from 0.09 to 0.35 ms,
benchmarks/results/kernels_v9_checks.md); False never.
"""

from __future__ import annotations

import warnings

import torch

from .reference import (
    check_inputs,
    check_values,
    chunk_gated_delta_rule_torch,
    l2norm,
    naive_recurrent_gated_delta_rule,
)

__all__ = [
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "naive_recurrent_gated_delta_rule",
    "chunk_gated_delta_rule_torch",
]


# The chunked Triton kernels keep [K, BV] state tiles in registers; wider keys take the PyTorch path.
TRITON_MAX_K = 256
# when to check g and cu_seqlens values ("auto", True or False; see above): a wrong cu_seqlens reads out of
# bounds, a g > 0 loses accuracy silently and a g = -inf gives NaN
CHECK_VALUES = "auto"


def _use_triton(t: torch.Tensor) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and t.is_cuda
        and t.dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


def _check_values_now(g, reads_lengths: bool) -> bool:
    """Whether this call checks g and cu_seqlens by CHECK_VALUES; reads_lengths: the call reads cu_seqlens
    on the host anyway (the chunked paths of a varlen batch). Never inside torch.compile (a host round trip
    would break the graph)."""
    mode = CHECK_VALUES
    if not (isinstance(mode, bool) or isinstance(mode, str) and mode == "auto"):
        raise ValueError(f'mudelta.kernels.CHECK_VALUES must be "auto", True or False, got {mode!r}')
    if mode is False or torch.compiler.is_compiling():
        return False
    return mode is True or not g.is_cuda or reads_lengths


def _checked(q, k, v, g, beta, scale, initial_state, cu_seqlens, reads_lengths):
    """Validate the inputs (check_inputs, check_values) and resolve the default scale K^-0.5."""
    _, T, _, K, _, _ = check_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    if _check_values_now(g, reads_lengths):
        check_values(g, T, cu_seqlens)
    if scale is None:
        return K**-0.5
    if isinstance(scale, torch.Tensor) and scale.requires_grad:
        raise TypeError("scale must be a number (no gradient is computed for it), got a tensor with grad")
    scale = float(scale)
    if not (scale > 0 and scale != float("inf")):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return scale


def _triton_call(fn, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, l2):
    """Normalise q and k if asked, then call one of the Triton entry points of triton_gdn."""
    if l2:
        q, k = l2norm(q), l2norm(k)
    return fn(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
):
    """Chunked gated delta rule with autograd for q, k, v, g, beta and initial_state.

    Returns (o [B, T, H, V] in v's dtype, final state [N, H, K, V] float32 or None).
    """
    scale = _checked(q, k, v, g, beta, scale, initial_state, cu_seqlens, reads_lengths=cu_seqlens is not None)
    args = (q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)
    if _use_triton(q):
        if q.shape[-1] <= TRITON_MAX_K:
            from .triton_gdn import chunk_gated_delta_rule_triton

            return _triton_call(chunk_gated_delta_rule_triton, *args)
        warnings.warn(
            f"chunk_gated_delta_rule: key dim K = {q.shape[-1]} > {TRITON_MAX_K}, the largest the Triton "
            "kernels take; running the chunked PyTorch path on the GPU (correct, slower)",
            stacklevel=2,
        )
    return chunk_gated_delta_rule_torch(*args)


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
):
    """Token-by-token gated delta rule for decoding (a few tokens per sequence, carried state).

    The Triton decode kernel is forward-only; when any input needs a gradient the call goes through the
    chunked path, which computes the same function with autograd.
    """
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k, v, g, beta, initial_state)
    )
    rest = (initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)
    if not _use_triton(q) or needs_grad:
        return chunk_gated_delta_rule(q, k, v, g, beta, scale, *rest)  # which checks the inputs
    # g <= 0, as for the chunked path; the decode kernel does not read cu_seqlens on the host
    scale = _checked(q, k, v, g, beta, scale, initial_state, cu_seqlens, reads_lengths=False)
    from .triton_gdn import fused_recurrent_triton

    return _triton_call(fused_recurrent_triton, q, k, v, g, beta, scale, *rest)
