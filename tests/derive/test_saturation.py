"""A bounded nonlinearity (softmax, sigmoid, tanh) whose input grows with width saturates: the engine then
takes the derivative's rms as n^-s/2 (only the fraction n^-s of entries near the switch point keep a Theta(1)
slope). Under muP no such input grows, so no muP rule depends on it; under SP it decides where the
gradients of the attention scores and of the delta rule's beta go."""

import sympy as sp

from mudelta.derive import derive
from mudelta.derive.engine import Engine
from mudelta.graphs.builders import gdn, transformer

R = sp.Rational


def test_saturated_change_regimes():
    s = R(1)
    change = lambda d: Engine._saturated_change(s, R(d), "d")[0]  # noqa: E731
    assert change(-1) == R(-3, 2)  # small change: linear response, times the derivative's rms n^-1/2
    assert change(R(1, 2)) == R(-1, 4)  # 0 < d < s: the fraction n^(d - s) of entries flips by Theta(1)
    assert change(2) == 0  # d >= s: everything moves by Theta(1), capped at the bounded output
    assert Engine._saturation(R(1, 2)) == R(1, 2) and Engine._saturation(R(0)) is None


def test_sp_attention_logits_saturate_and_mup_never_does():
    for opt in ("sgd", "adamw"):
        e = derive(transformer(layers=2), opt, parametrization="sp").engine
        x = e.X("l1_attn_logits")
        assert x > 0  # SP: q.k grows as n^(3/2), times the n^-1/2 logit scale
        assert e.grad["l1_attn_logits"] == e.grad["l1_attn_probs"] - x / 2
        m = derive(transformer(layers=2), opt).engine
        assert m.X("l1_attn_logits") <= 0 and m.grad["l1_attn_logits"] == m.grad["l1_attn_probs"]
        assert "saturated" not in " ".join(st.fact for st in m.steps.values())


def test_sp_beta_gate_saturates_and_keeps_its_violation():
    d = derive(gdn(layers=1), "sgd", parametrization="sp")
    e = d.engine
    x = e.X("l0_b")
    assert x == R(1, 2)
    assert e.grad["l0_b"] == e.grad["l0_beta"] - x / 2
    assert ("bounded-gate", "l0_beta") in {(v.desideratum, v.node) for v in d.violations}
