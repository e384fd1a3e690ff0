"""Chunked pure-PyTorch gated delta rule (the CPU path) against the naive float64 recurrence."""

import types

import pytest
import torch
from mudelta.kernels import (
    chunk_gated_delta_rule,
    chunk_gated_delta_rule_torch,
    fused_recurrent_gated_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from mudelta.kernels.testing import REGIMES, TOL, compare, make_inputs


@pytest.mark.parametrize("regime", REGIMES)
def test_chunk_torch_matches_naive_float64(regime):
    inp = make_inputs(2, 150, 2, 16, 12, torch.float64, regime=regime, seed=1)
    err = compare(chunk_gated_delta_rule_torch, inp)
    # outputs and gradients, and the outputs of the same forward run without gradients
    assert set(err) == {"o", "ht", "q", "k", "v", "g", "beta", "h0", "o_nograd", "ht_nograd"}
    for name, e in err.items():
        assert e < 1e-10, (name, e)


def test_chunk_torch_varlen_float64():
    cu = torch.tensor([0, 1, 2, 66, 67, 130, 200], dtype=torch.int64)
    inp = make_inputs(1, 200, 2, 16, 8, torch.float64, n_seq=6, seed=2)
    err = compare(chunk_gated_delta_rule_torch, inp, cu_seqlens=cu, l2norm=True, scale=0.7)
    for name, e in err.items():
        assert e < 1e-10, (name, e)


def test_varlen_equals_separate_calls():
    cu = torch.tensor([0, 1, 70, 71], dtype=torch.int32)
    inp = make_inputs(1, 71, 2, 8, 8, torch.float64, n_seq=3, seed=3)
    o, ht = chunk_gated_delta_rule(
        inp["q"],
        inp["k"],
        inp["v"],
        inp["g"],
        inp["beta"],
        initial_state=inp["h0"],
        output_final_state=True,
        cu_seqlens=cu,
    )
    for n in range(3):
        a, b = cu[n].item(), cu[n + 1].item()
        on, hn = naive_recurrent_gated_delta_rule(
            *(inp[x][:, a:b] for x in ("q", "k", "v", "g", "beta")),
            initial_state=inp["h0"][n : n + 1],
            output_final_state=True,
        )
        torch.testing.assert_close(o[:, a:b], on, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ht[n : n + 1], hn, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cpu_dispatch_low_precision(dtype):
    inp = make_inputs(2, 100, 2, 32, 32, dtype, seed=4)
    err = compare(chunk_gated_delta_rule, inp)
    for name, e in err.items():
        assert e < TOL[dtype][name], (name, e)


def test_fused_recurrent_cpu_fallback_and_carried_state():
    inp = make_inputs(3, 6, 2, 16, 16, torch.float32, seed=5)
    args = [inp[x] for x in ("q", "k", "v", "g", "beta")]
    o_all, h_all = fused_recurrent_gated_delta_rule(*args, initial_state=inp["h0"], output_final_state=True)
    # decode token by token with a carried state
    h = inp["h0"]
    for t in range(6):
        o_t, h = fused_recurrent_gated_delta_rule(
            *(a[:, t : t + 1] for a in args), initial_state=h, output_final_state=True
        )
        torch.testing.assert_close(o_t, o_all[:, t : t + 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, h_all, rtol=1e-4, atol=1e-5)
    assert h.dtype == torch.float32


def test_output_dtypes_and_no_final_state():
    inp = make_inputs(1, 10, 1, 8, 8, torch.bfloat16, seed=6)
    o, ht = chunk_gated_delta_rule(inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"])
    assert o.dtype == torch.bfloat16 and o.shape == (1, 10, 1, 8) and ht is None
    o, ht = chunk_gated_delta_rule(
        inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], output_final_state=True
    )
    assert ht.dtype == torch.float32 and ht.shape == (1, 1, 8, 8)


def _args(B=2, T=5, H=2, K=4, V=3):
    return [
        torch.randn(B, T, H, K),
        torch.randn(B, T, H, K),
        torch.randn(B, T, H, V),
        -torch.rand(B, T, H),
        torch.rand(B, T, H),
    ]


def test_validation_messages():
    q, k, v, g, beta = _args()
    with pytest.raises(ValueError, match=r"k must have the shape of q .*2x5x2x4.*got 2x5x2x5"):
        chunk_gated_delta_rule(q, torch.randn(2, 5, 2, 5), v, g, beta)
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, V\]"):
        chunk_gated_delta_rule(q, k, torch.randn(2, 4, 2, 3), g, beta)
    with pytest.raises(ValueError, match=r"g must be \[B, T, H\]"):
        chunk_gated_delta_rule(q, k, v, g[..., :1], beta)
    with pytest.raises(ValueError, match=r"beta must be \[B, T, H\]"):
        chunk_gated_delta_rule(q, k, v, g, beta[:, :2])
    with pytest.raises(ValueError, match=r"cu_seqlens needs B == 1"):
        chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 2, 5]))
    with pytest.raises(TypeError, match=r"share a dtype"):
        chunk_gated_delta_rule(q, k.double(), v, g, beta)
    with pytest.raises(ValueError, match=r"initial_state must be \[N, H, K, V\] = 2x2x4x3"):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(1, 2, 4, 3))
    with pytest.raises(TypeError, match=r"cu_seqlens must be int32 or int64"):
        chunk_gated_delta_rule(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=torch.tensor([0.0, 5.0]))
    with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to T=5"):
        chunk_gated_delta_rule(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=torch.tensor([0, 3]))


def test_values_the_chunked_paths_cannot_compute_are_refused():
    # g > 0 (growth): the chunked paths exponentiate in-chunk sums of g and lose accuracy long before they
    # overflow (relative error 1.4e-2 at g = +0.2 over 64 tokens); the naive recurrence computes it exactly
    inp = make_inputs(1, 20, 1, 8, 8, torch.float64, seed=7)
    args = [inp[n] for n in ("q", "k", "v", "g", "beta")]
    grow = 0.01 * torch.rand_like(inp["g"])
    with pytest.raises(ValueError, match=r"g must be <= 0"):
        chunk_gated_delta_rule(*args[:3], grow, args[4])
    assert torch.isfinite(naive_recurrent_gated_delta_rule(*args[:3], grow, args[4])[0]).all()
    with pytest.raises(ValueError, match=r"g must be finite"):
        chunk_gated_delta_rule(*args[:3], torch.full_like(grow, -float("inf")), args[4])
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"scale must be a positive finite number"):
            chunk_gated_delta_rule(*args, scale=scale)
    with pytest.raises(TypeError, match=r"cu_seqlens must be a torch.Tensor or None, got list"):
        chunk_gated_delta_rule(*args, cu_seqlens=[0, 20])
    with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to T=20"):
        fused_recurrent_gated_delta_rule(*args, cu_seqlens=torch.tensor([0, 4, 21]))
    with pytest.raises(ValueError, match=r"B, H, K >= 1"):
        chunk_gated_delta_rule(*(t[:0] for t in args))


def test_check_values_modes(monkeypatch):
    """CHECK_VALUES "auto" checks off CUDA, and on CUDA where the call reads cu_seqlens on the host anyway
    (elsewhere a check is one more host round trip per call); True always, False never, others refused."""
    import mudelta.kernels as kernels

    inp = make_inputs(1, 20, 1, 8, 8, torch.float64, seed=7)
    q, k, v, _, beta = (inp[n] for n in ("q", "k", "v", "g", "beta"))
    grow = 0.01 * torch.rand_like(inp["g"])
    on_gpu = types.SimpleNamespace(is_cuda=True)
    assert kernels.CHECK_VALUES == "auto"
    assert kernels._check_values_now(grow, False) and kernels._check_values_now(on_gpu, True)
    assert not kernels._check_values_now(on_gpu, False)
    monkeypatch.setattr(kernels, "CHECK_VALUES", True)
    assert kernels._check_values_now(on_gpu, False)
    monkeypatch.setattr(kernels, "CHECK_VALUES", False)
    assert not kernels._check_values_now(grow, True)
    assert torch.isfinite(chunk_gated_delta_rule(q, k, v, grow, beta)[0]).all()  # unchecked: computed
    for bad in ("yes", 0, 1):  # 0 and 1 are not False and True here: a typo, not a mode
        monkeypatch.setattr(kernels, "CHECK_VALUES", bad)
        with pytest.raises(ValueError, match=r'CHECK_VALUES must be "auto", True or False, got '):
            chunk_gated_delta_rule(q, k, v, grow, beta)


def test_decode_fallback_checks_values_once(monkeypatch):
    """Decoding off the Triton kernel goes through the chunked path, which checks the values itself."""
    import mudelta.kernels as kernels

    calls = []
    monkeypatch.setattr(kernels, "check_values", lambda *a: calls.append(a))
    inp = make_inputs(1, 3, 2, 8, 8, torch.float64, seed=3)
    fused_recurrent_gated_delta_rule(*(inp[n] for n in ("q", "k", "v", "g", "beta")))
    assert len(calls) == 1


def test_wide_keys_take_the_torch_path_with_a_warning(monkeypatch):
    """K above the Triton kernels' limit runs the chunked PyTorch path (as on CPU) and says so."""
    import mudelta.kernels as kernels

    monkeypatch.setattr(kernels, "_use_triton", lambda t: True)  # as if the tensors were on a GPU
    x = make_inputs(1, 8, 1, kernels.TRITON_MAX_K * 2, 4, torch.float64, h0=False, seed=0)
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    with pytest.warns(UserWarning, match="K = 512 > 256"):
        o, _ = kernels.chunk_gated_delta_rule(*args)
    assert torch.allclose(o, naive_recurrent_gated_delta_rule(*args)[0])
