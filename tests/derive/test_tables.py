"""Known results as oracles: Tensor Programs IV (MLP, SGD) and Tensor Programs V Tables 3 and 8."""

import pytest
import sympy as sp

from mudelta.derive import derive
from mudelta.graphs.builders import gdn, mlp, transformer

R = sp.Rational


def abc(d, name):
    r = d.param(name)
    return (r.a, r.b, r.c)


def test_tp4_mlp_sgd():
    # TP4 muP: a_1 = -1/2, a_hidden = 0, a_out = 1/2, b = 1/2 everywhere, c = 0.
    d = derive(mlp(layers=3), "sgd", convention="tp4")
    assert abc(d, "layers.0.weight") == (R(-1, 2), R(1, 2), 0)
    assert abc(d, "layers.1.weight") == (0, R(1, 2), 0)
    assert abc(d, "layers.2.weight") == (0, R(1, 2), 0)
    assert abc(d, "readout.weight") == (R(1, 2), R(1, 2), 0)
    assert d.violations == []


# TP5 Table 3 (a = 0): (b, c_sgd, c_adam) per category; init var = n^-2b, LR = n^-c.
TABLE3 = {"input": (0, -1, 0), "hidden": (R(1, 2), 0, 1), "output": (1, 1, 1)}
# TP5 Table 8 (mup package): (a, b, c_sgd, c_adam).
TABLE8 = {"input": (0, 0, -1, 0), "hidden": (0, R(1, 2), 0, 1), "output": (1, 0, -1, 0)}


@pytest.mark.parametrize("graph", [mlp(layers=3, bias=True), transformer(layers=2)], ids=["mlp", "transformer"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_tp5_tables_3_and_8(graph, opt):
    t3 = derive(graph, opt, convention="tp5")
    t8 = derive(graph, opt, convention="mup")
    assert t3.violations == [] and t8.violations == []
    for r3, r8 in zip(t3.params, t8.params):
        if r3.category == "scalar":  # a bias of the finite readout: fan_out = vocab is finite
            assert (r3.b, r3.c) == (0, 0)
            continue
        b, c_sgd, c_adam = TABLE3[r3.category]
        assert (r3.a, r3.b, r3.c) == (0, b, c_sgd if opt == "sgd" else c_adam), r3.name
        a, b, c_sgd, c_adam = TABLE8[r8.category]
        assert (r8.a, r8.b, r8.c) == (a, b, c_sgd if opt == "sgd" else c_adam), r8.name
        # same rule, two conventions: the invariants agree
        assert t3.invariants(r3.name) == t8.invariants(r8.name)


def test_transformer_categories():
    d = derive(transformer(layers=1), "adam")
    cats = {r.name: r.category for r in d.params}
    assert cats["embeddings.weight"] == "input"
    assert cats["layers.0.attn.q_proj.weight"] == "hidden"
    assert cats["layers.0.attn_norm.weight"] == "input"
    assert cats["lm_head.weight"] == "output"


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_attention_logit_scale_is_solved_to_one_over_d(opt):
    # head dim ~ n (fixed head count): the free logit slot comes out as n^-1, i.e. 1/d, not 1/sqrt(d).
    d = derive(transformer(layers=2, heads=4), opt)
    assert d.slots["attn.logit_scale"] == -1
    # with a fixed head dim the logit scale is width-independent
    d = derive(transformer(layers=2, head_dim=64), opt)
    assert d.slots["attn.logit_scale"] == 0


def test_tied_embeddings_need_a_readout_multiplier():
    d = derive(transformer(layers=2, tied=True), "adam")
    assert d.slots["readout"] == -1  # the mup package's 1/width readout multiplier
    assert abc(d, "embeddings.weight") == (0, 0, 0)
    assert d.violations == []


@pytest.mark.parametrize("opt", ["sgd", "sgd-nesterov", "adam", "adamw"])
@pytest.mark.parametrize("regime", ["head_dim", "heads"])
def test_gdn_solutions_satisfy_every_desideratum(opt, regime):
    d = derive(gdn(layers=2, regime=regime, attn_every=2), opt)
    assert d.violations == []


def test_gdn_gates_are_readout_like_when_heads_are_fixed():
    # H fixed: a_proj, b_proj map width -> finite, so they scale like a readout (init var n^-2, Adam LR n^-1)
    d = derive(gdn(layers=1, regime="head_dim"), "adam")
    for name in ("layers.0.attn.a_proj.weight", "layers.0.attn.b_proj.weight"):
        assert d.param(name).category == "output"
        assert abc(d, name) == (0, 1, 1)
    # H ~ n: the same weights are hidden weights
    d = derive(gdn(layers=1, regime="heads"), "adam")
    assert abc(d, "layers.0.attn.a_proj.weight") == (0, R(1, 2), 1)


def test_fixed_std_sp_blows_up_where_predicted():
    # Reference-implementation init N(0, 0.02^2) ignores fan-in: pre-activations grow as n^1/2 at init, and
    # one Adam step at a width-independent LR moves them by n^1.
    d = derive(transformer(layers=1), "adam", parametrization="sp")
    bad = {(v.desideratum, v.node): v.exponent for v in d.violations}
    assert bad[("init-bounded", "l0_q")] == R(1, 2)
    assert bad[("update-bounded", "l0_q")] == 1
    assert d.param("layers.0.mlp.up_proj.weight").max_stable_c == 1


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_fan_in_sp_tp4(opt):
    # TP4: standard parametrization with a width-independent LR makes the logits blow up as n after one
    # step (SGD and Adam).
    d = derive(mlp(layers=2), opt, parametrization="sp")
    bad = {(v.desideratum, v.node): v.exponent for v in d.violations}
    # hidden pre-activations: one Adam step moves them by n^1 (Delta W x, LLN); SGD at LR 1 by n^1/2
    assert bad[("update-bounded", "h1")] == (1 if opt == "adam" else R(1, 2))
    assert bad[("update-bounded", "logits")] >= 1
    if opt == "adam":  # the first hidden weight sees Theta(1) inputs: its stable Adam LR is n^-1 (muP's)
        assert d.param("layers.1.weight").max_stable_c == 1


def test_ntk_has_no_feature_learning():
    d = derive(mlp(layers=2), "sgd", parametrization="ntk")
    kinds = {v.desideratum for v in d.violations}
    assert "feature-learning" in kinds
    assert "update-bounded" not in kinds and "init-bounded" not in kinds


def test_latex_output_carries_the_multipliers_and_the_failures():
    from mudelta.derive import report

    tex = report.latex(derive(transformer(layers=1), "adamw"))
    assert r"\begin{tabular}" in tex and r"attn.logit\_scale = $n^{-1}$" in tex
    sp_tex = report.latex(derive(transformer(layers=1), "adamw", "sp"))
    assert "desiderata that fail" in sp_tex and r"update-bounded $n^{" in sp_tex
