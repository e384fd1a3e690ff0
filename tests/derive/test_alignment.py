"""Which part of a change is correlated with what: the aligned change (own updates), the share of a
layer's gradient at its input, and the change to first order in the learning rate."""

import math

import pytest
import sympy as sp
import torch

from mudelta.derive import derive
from mudelta.graphs.builders import gdn, mlp, transformer
from mudelta.graphs.ir import GraphBuilder

R = sp.Rational
GRAPHS = {"mlp": lambda: mlp(), "transformer": lambda: transformer(layers=2),
          "gdn": lambda: gdn(layers=2), "gdn-heads": lambda: gdn(layers=2, regime="heads")}


def evaluated(graph, opt):
    """The derived muP rules, evaluated as given exponents (first steps from the gradients at init)."""
    d = derive(graph, opt)
    given = {"parameters": {r.name: {"a": str(r.a), "b": str(r.b), "c": str(r.c)} for r in d.params},
             "multipliers": {s: str(v) for s, v in d.slots.items()}}
    return derive(graph, opt, given).engine


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
@pytest.mark.parametrize("name", GRAPHS)
def test_mup_changes_are_first_order(name, opt):
    # Under muP every change is Theta(1) at most, so products of two changes never outgrow the first-order
    # terms: the change to first order in the LR is the whole change, node by node.
    e = derive(GRAPHS[name](), opt).engine
    assert {n: e.D(n) for n in e.g.order} == {n: e.D1(n) for n in e.g.order}
    assert all(e.A(n) <= e.D(n) for n in e.g.order if e.A(n) is not sp.S.NegativeInfinity)


def test_sp_blow_up_of_second_order_is_separated():
    # SP under Adam: h2 moves by n^1 to first order (Delta W a1 and W Delta a1), n^2 once Delta W Delta a1
    # (second order in the LR) takes over at large lr * n.
    d = derive(mlp(), "adamw", "sp")
    e = d.engine
    assert e.D1("h2") == 1 and e.D("h2") == 2


def test_sgd_first_step_of_attention_scores():
    # SGD with the muP learning rates, first step: the gradient reaching q and k through the softmax is
    # CLT-small at init, so their own updates (the only part of their change aligned with each other)
    # are n^-1/2 short of maximal, and q.k moves by n^1/2, not n^1 (measured: tests/runtime).
    e = evaluated(transformer(layers=2), "sgd")
    assert e.A("l0_q") == -R(1, 2) and e.D("l0_q") == 0
    assert e.D("l0_attn_scores") == R(1, 2)
    # During training the same rules give the maximal n^1 (the LR is set from the training gradient).
    m = derive(transformer(layers=2), "sgd").engine
    assert m.D("l0_attn_scores") == 1


def test_share_of_a_gate_projection():
    # GDN head-dim regime, SGD first step: the gate projection a_proj (finite x d_model, output-like) gets
    # n^-1/2 of the gradient at its input, so only that share of Delta x lies along W_a^T: W_a Delta x
    # is a CLT sum, n^-1/2 (measured -0.5 at widths 256-2048), not Theta(1).
    e = evaluated(gdn(layers=2), "sgd")
    assert e.shares_in["l0_a"] == -R(1, 2)
    assert e.D("l0_a") == -R(1, 2)
    # Under AdamW the share is the same, but Adam's update does not scale with the gradient: a_proj's own
    # update moves the gate pre-activation by Theta(1).
    a = evaluated(gdn(layers=2), "adamw")
    assert a.shares_in["l0_a"] == -R(1, 2) and a.A("l0_a") == 0 and a.D("l0_a") == 0


def test_a_weight_used_twice_in_one_orientation_is_not_aligned_at_init():
    # h = U (U h0): the second use of U contracts its input axis, and U h0 runs along U's output axis, so the
    # sum pairs different entries of U (a CLT sum, rms Theta(1), measured below); it derives like two untied
    # layers. A tied embedding read out by its transpose contracts the axis it produced, each entry with
    # itself, and stays the LLN sum (tests/derive/test_tied_readout.py).
    def three_layers(second):
        b = GraphBuilder("t")
        b.dim("d_in", 32), b.dim("width", "n"), b.dim("classes", 10)
        x = b.input("x", ["d_in"], kind="features")
        h0 = b.linear("h0", x, ["width"], "w")
        h1 = b.linear("h1", h0, ["width"], "u")
        h = b.linear("h", h1, ["width"], second)
        b.cross_entropy("loss", b.linear("logits", h, ["classes"], "readout.weight"))
        return b.build()

    for opt in ("adamw", "sgd"):
        tied, untied = derive(three_layers("u"), opt), derive(three_layers("v"), opt)
        assert tied.engine.X("h") == 0 and not tied.violations
        rules = {r.name: (r.a, r.b, r.c) for r in untied.params}
        assert {r.name: (r.a, r.b, r.c) for r in tied.params} == {k: v for k, v in rules.items() if k != "v"}
    g = torch.Generator().manual_seed(0)
    rms = []
    for n in (64, 256, 1024):
        h0 = torch.randn(16, n, generator=g, dtype=torch.float64)
        u = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5
        rms.append((h0 @ u.T @ u.T).pow(2).mean().sqrt().item())
    assert abs(math.log(rms[-1] / rms[0]) / math.log(16)) < 0.05, rms  # slope 0, not the LLN's 1/2
