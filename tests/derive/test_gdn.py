"""Gated DeltaNet rules: invariants across conventions, both head-scaling regimes, tied and untied
embeddings, hybrids, the gate assumptions, the SP diagnosis, and the generated document."""

import json
from pathlib import Path

import pytest
import sympy as sp

from mudelta.derive import derive, report
from mudelta.graphs.builders import gdn, transformer
from mudelta.runtime.cli import main
from mudelta.runtime.docs import write

R = sp.Rational
OPTS = ["sgd", "sgd-nesterov", "adam", "adamw"]
GATES = ("a_proj.weight", "b_proj.weight")


@pytest.mark.parametrize("opt", OPTS)
@pytest.mark.parametrize("regime", ["head_dim", "heads"])
def test_conventions_are_one_rule(opt, regime):
    graph = gdn(layers=2, regime=regime)
    rules = {conv: derive(graph, opt, convention=conv) for conv in ("tp5", "mup", "tp4")}
    for r in rules["tp5"].params:
        inv = rules["tp5"].invariants(r.name)
        assert rules["mup"].invariants(r.name) == inv, r.name
        assert rules["tp4"].invariants(r.name) == inv, r.name
        assert rules["tp4"].param(r.name).c == 0  # tp4 = one global learning rate
        # the same update size in every convention
        assert rules["mup"].param(r.name).rho == r.rho == rules["tp4"].param(r.name).rho


@pytest.mark.parametrize("opt", OPTS)
def test_every_layer_gets_the_same_rule(opt):
    d = derive(gdn(layers=3), opt)
    by_role = {}
    for r in d.params:
        role = report.collapse_layers(r.name)
        by_role.setdefault(role, set()).add((r.a, r.b, r.c))
    assert all(len(v) == 1 for v in by_role.values()), by_role


@pytest.mark.parametrize("opt", OPTS)
def test_gate_rules_per_regime(opt):
    sgd = opt.startswith("sgd")
    # head-dim regime: d_model -> heads (finite) makes the gate projections readout-like (TP5 Table 3 output row)
    d = derive(gdn(layers=1), opt)
    for g in GATES:
        r = d.param(f"layers.0.attn.{g}")
        assert (r.category, r.a, r.b, r.c) == ("output", 0, 1, 1)
    # the per-head scalars: Theta(1) init and a width-independent LR under every optimizer
    for s in ("A_log", "dt_bias"):
        r = d.param(f"layers.0.attn.{s}")
        assert (r.category, r.a, r.b, r.c) == ("scalar", 0, 0, 0)
    # heads regime: hidden weights (SGD LR n^0, Adam LR n^-1), scalars now width-sized vectors (input-like)
    d = derive(gdn(layers=1, regime="heads"), opt)
    for g in GATES:
        r = d.param(f"layers.0.attn.{g}")
        assert (r.category, r.b, r.c) == ("hidden", R(1, 2), 0 if sgd else 1)
    for s in ("A_log", "dt_bias"):
        r = d.param(f"layers.0.attn.{s}")
        assert (r.category, r.b, r.c) == ("input", 0, -1 if sgd else 0)


def test_recurrence_sizes_in_the_head_dim_regime():
    d = derive(gdn(layers=1), "adamw")
    e = d.engine
    # q, k unit-norm over d_k ~ n: coordinates n^-1/2; the write beta v k^T and the state inherit k's size
    assert e.X("l0_q_l2") == e.X("l0_k_l2") == -R(1, 2)
    assert e.x["l0_o.state"] == -R(1, 2)
    # o = S q at init is a CLT sum over d_k: n^-1/2; after a step q and k align and o reaches Theta(1)
    assert e.X("l0_o") == -R(1, 2) and e.D("l0_o") == 0
    assert d.slots["attn.q_scale"] == 0  # the per-head RMSNorm after o absorbs the growth: no extra multiplier
    # heads regime: nothing inside a head depends on the width
    e = derive(gdn(layers=1, regime="heads"), "adamw").engine
    assert e.X("l0_q_l2") == e.x["l0_o.state"] == e.X("l0_o") == 0


def test_tied_and_untied_readout():
    tied = derive(gdn(layers=1, tied=True), "adam")
    assert tied.slots["readout"] == -1 and tied.param("embeddings.weight").category == "input"
    untied = derive(gdn(layers=1, tied=False), "adam")
    assert "readout" not in untied.slots
    r = untied.param("lm_head.weight")
    assert (r.category, r.b, r.c) == ("output", 1, 1)
    assert untied.violations == [] and tied.violations == []


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_hybrid_attention_blocks_get_the_transformer_rules(opt):
    hybrid = derive(gdn(layers=4, attn_every=2), opt)
    tf = derive(transformer(layers=1, heads=4), opt)
    assert hybrid.violations == []
    assert hybrid.slots["attn.logit_scale"] == tf.slots["attn.logit_scale"] == -1
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        mine, theirs = hybrid.param(f"layers.1.attn.{n}.weight"), tf.param(f"layers.0.attn.{n}.weight")
        assert (mine.a, mine.b, mine.c) == (theirs.a, theirs.b, theirs.c)
    # the GDN blocks of the hybrid keep the pure-GDN rules
    pure = derive(gdn(layers=1), opt)
    for r in pure.params:
        if r.name.startswith("layers.0."):
            assert (hybrid.param(r.name).b, hybrid.param(r.name).c) == (r.b, r.c), r.name


def test_gate_assumptions_hold_under_mup_and_fail_under_sp():
    d = derive(gdn(layers=1), "adamw")
    kinds = {(node, kind): e for node, kind, e, _ in d.engine.assumptions}
    assert {("l0_beta", "bounded-gate"), ("l0_alpha", "bounded-gate"), ("l0_o", "recurrence-contraction"),
            ("l0_o", "bounded-decay")} <= set(kinds)
    assert all(e <= 0 for e in kinds.values())
    # SP: the gate pre-activations grow as n^1/2 at init and move by n^1 per Adam step: saturation
    sp_ = derive(gdn(layers=1), "adamw", parametrization="sp")
    bad = {(v.desideratum, v.node): v.exponent for v in sp_.violations}
    assert bad[("bounded-gate", "l0_beta")] == 1 and bad[("bounded-gate", "l0_alpha")] == 1
    assert bad[("init-bounded", "l0_b")] == R(1, 2)
    # the largest stable Adam LR of the gates is muP's n^-1
    assert sp_.param("layers.0.attn.a_proj.weight").max_stable_c == 1


def test_sp_diagnosis_groups_layers():
    d = derive(gdn(layers=3), "sgd", parametrization="sp")
    groups = report.violation_groups(d)
    nodes = [n for _, _, ns in groups for n in ns]
    assert not any(n.startswith(("l0_", "l1_", "l2_")) for n in nodes)  # merged into l*_
    kinds = [k for k, _, _ in groups]
    assert kinds == sorted(kinds, key=list(report.DESIDERATA).index)
    assert len(groups) < len(d.violations)


def test_explain_shows_the_gradient_through_the_recurrence(capsys):
    assert main(["explain", "gdn", "layers.0.attn.a_proj.weight", "--set", "layers=1", "--optimizer", "sgd"]) == 0
    out = capsys.readouterr().out
    assert "g1(l0_alpha)" in out and "g1(l0_a)" in out  # dL/d(decay) reaches the gate pre-activation
    assert "grad(param, training)[layers.0.attn.a_proj.weight]" in out
    assert "bounded-gate at l0_alpha" in out and "recurrence-contraction at l0_o" in out
    # Adam: the LR does not depend on the gradient, but the trace still shows its size and the bound that set it
    assert main(["explain", "gdn", "layers.0.attn.b_proj.weight", "--set", "layers=1"]) == 0
    out = capsys.readouterr().out
    assert "g1(l0_beta)" in out and "d(l0_b)" in out and "the binding term" in out


def test_explain_takes_the_tables_collapsed_names(capsys):
    """`layers.*.x` as `derive` prints it: layer 0's derivation when every layer shares the rule, else an
    error naming the layers (the hybrid's attention and GDN blocks both have an attn.q_proj)."""
    assert main(["explain", "gdn", "layers.*.attn.a_proj.weight", "--set", "layers=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("(layers.*.attn.a_proj.weight: the derivation for layers.0.attn.a_proj.weight")
    assert main(["explain", "gdn-hybrid", "layers.*.attn.q_proj.weight", "--set", "layers=4"]) == 2
    assert "covers layers with different rules" in capsys.readouterr().err


def test_json_contract(capsys):
    assert main(["derive", "gdn", "--set", "layers=1", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"spec", "optimizer", "parametrization", "parameters", "multipliers", "nodes", "violations"} <= set(data)
    assert data["preset"] == "gdn" and data["options"] == {"layers": "1"}
    gate = next(p for p in data["parameters"] if p["name"] == "layers.0.attn.a_proj.weight")
    assert (gate["init_std"], gate["lr_scale"], gate["wd_scale"]) == ("n**(-1)", "n**(-1)", "n")


def test_docs_match_the_tool():
    docs = Path(__file__).resolve().parents[2] / "docs"
    stale = write(docs, check=True)
    assert stale == [], f"{stale} disagree with the tool: run `mudelta docs` to regenerate"
