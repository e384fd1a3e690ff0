"""YAML specs: a valid spec derives like the builder; each kind of bad spec names the problem and line."""

import re
import textwrap

import pytest
import sympy as sp

from mudelta.derive import derive
from mudelta.graphs.builders import mlp
from mudelta.graphs.ir import GraphBuilder, SpecError
from mudelta.graphs.presets import load

GOOD = """\
name: tiny_mlp
dims: {d_in: 32, width: n, classes: 10}
nodes:
  - {name: x, op: input, dims: [d_in], kind: features}
  - repeat: 3
    nodes:
      - {name: "h{i}", op: linear, in: "{prev}", out: [width], param: "layers.{i}.weight"}
      - {name: "a{i}", op: relu, in: "h{i}"}
  - {name: logits, op: readout, in: a2, out: [classes], param: readout.weight}
  - {name: loss, op: cross_entropy, in: logits}
"""


def write(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_yaml_spec_matches_builder(tmp_path):
    from_yaml = derive(load(write(tmp_path, GOOD)), "adam")
    from_builder = derive(mlp(layers=3), "adam")
    assert [(r.name, r.a, r.b, r.c) for r in from_yaml.params] == [(r.name, r.a, r.b, r.c) for r in from_builder.params]


@pytest.mark.parametrize(
    "bad, message, line",
    [
        (GOOD.replace("op: relu", "op: reluu"), "unknown op 'reluu'", 8),
        (GOOD.replace("out: [classes]", "out: [clases]"), "unknown dim 'clases'", 9),
        (GOOD.replace('in: "h{i}"', "in: nothere"), "dangling input 'nothere'", 8),
        (GOOD.replace("{name: loss", "{name: logits"), "duplicate node name 'logits'", 10),
        (GOOD.replace('in: "{prev}"', "in: a2"), "cycle in the graph", None),
        (GOOD.replace("dims: [d_in]", "dims: [width, d_in, width]"), "repeated dim", 4),
        (GOOD.replace("out: [width], param", "fan_in: [classes], out: [width], param"), "do not end in", 7),
        (GOOD.replace("classes: 10", "classes: m"), "unknown name 'm'", 2),
        (GOOD + "  - {name: extra, op: add, in: [x]}\n", "at least 2 inputs", 11),
        (GOOD.replace("kind: features", "kind: features, colour: red"), "unknown key(s) ['colour']", 4),
        ("name: x\ndims: [1, 2\n", "invalid YAML", 3),
        (GOOD.replace("classes: 10}", "classes: 10, width: 7}"), "duplicate key 'width'", 2),
        (GOOD.replace("d_in: 32", "d_in: 2.5"), "a fixed size must be a whole number", 2),
        (GOOD.replace("    nodes:\n", "    node:\n"), "repeat block: unknown key(s) ['node']", 5),
        (GOOD.replace("{name: x,", "{name: [x],"), "node without a 'name' (a string)", 4),
        (GOOD.replace("dims: [d_in]", "dims: {d_in: 1}"), "'dims' must be a dim name or a list", 4),
        (GOOD.replace('in: "h{i}"', "in: null"), "inputs must be node names, got None", 8),
        (GOOD.replace("op: relu,", "op: relu, fn: exp,"), "is already the function", 8),
        (GOOD.replace("out: [width], param", "out: [width], bias: true, param"), "'bias' must be a name", 7),
        (GOOD.replace("[classes], param", "[classes], std: no, param"), "'std' must be positive", 9),
        (GOOD.replace(", param: readout.weight", ""), "missing key(s) 'param'", 9),
        (GOOD.replace("in: logits}", "in: a2}"), "has the width-scaling dim(s) ['width']", 10),
        (GOOD + "  - {name: dead, op: relu, in: a1}\n", "node 'dead' does not reach the loss", 11),
        (GOOD + "  - {name: after, op: relu, in: loss}\n", "node 'after' uses the loss", 11),
        (GOOD + "  - {name: loss2, op: cross_entropy, in: logits}\n", "exactly one cross_entropy", 11),
        (GOOD.replace("width: n", "width: 7"), "no dim grows with the width", None),
    ],
)
def test_bad_specs(tmp_path, bad, message, line):
    with pytest.raises(SpecError) as err:
        load(write(tmp_path, bad))
    assert message in str(err.value)
    if line is not None:
        assert f"spec.yaml:{line}:" in str(err.value)


def test_size_expressions_are_parsed_never_evaluated(tmp_path):
    """A dim size, a multiplier's `standard` or `fixed`, and a preset option pass through an arithmetic
    parser: Python in them is refused, not run."""
    marker = tmp_path / "ran"
    payload = f"__import__('os').system('touch {marker}') or 32"
    with pytest.raises(SpecError, match="is not arithmetic"):
        load(write(tmp_path, GOOD.replace("d_in: 32", f'd_in: "{payload}"')))
    b = GraphBuilder("t")
    b.dim("d", "n")
    x = b.input("x", ["d"])
    for key in ("standard", "fixed"):
        with pytest.raises(SpecError, match="is not arithmetic"):
            b.scale(f"s_{key}", x, "slot", **{key: payload})
    with pytest.raises(SpecError, match="is not arithmetic"):
        load("transformer", {"ffn_mult": payload.replace("32", "1")})
    assert not marker.exists()
    assert b.scale("ok", x, "slot", standard="d**-0.5") == "ok"  # arithmetic still parses
    from mudelta.graphs.ir import parse_size

    assert str(parse_size("a", "sqrt(n)")) == "a~sqrt(n)" and str(parse_size("a", "2*n^2")) == "a~2*n**2"
    with pytest.raises(SpecError, match="not a finite real number"):
        parse_size("a", "n/0")
    for slow in ("(((9**64)**64)**64)**64", "1e999", "-" * 5000 + "n"):  # refused at once, not computed
        with pytest.raises(SpecError, match="out of range|at most 200 characters"):
            parse_size("a", slow)


def test_one_slot_is_one_multiplier():
    b = GraphBuilder("t")
    b.dim("d", "n")
    x = b.input("x", ["d"])
    b.scale("s1", x, "slot", fixed="d**-1")
    with pytest.raises(SpecError, match="slot 'slot' is one multiplier, but its fixed here"):
        b.scale("s2", x, "slot")
    b.scale("s3", x, "slot", fixed="d**-1")  # the same value again is the same multiplier
    with pytest.raises(SpecError, match="has a constant factor"):
        b.scale("s4", x, "other", fixed="0.5")
    with pytest.raises(SpecError, match="its input must be a tokens input, not 's1'"):
        b.embedding("e", "s1", ["d"], "emb")


def test_attention_names_its_parts_and_a_graph_needs_parameters():
    b = GraphBuilder("t")
    b.dim("d", "n"), b.dim("v", 8)
    h = b.embedding("h", b.input("x", ["v"]), ["d"], "e")
    b.unary("att_scores", h, "relu")
    with pytest.raises(SpecError, match=r"makes nodes att_scores, _logits and _probs, but \['att_scores'\]"):
        b.attention("att", h, h, h, ["d"], "slot")
    frozen = GraphBuilder("f")
    frozen.dim("v", 8)
    x = frozen.input("x", ["v"], kind="features")
    frozen.cross_entropy("loss", frozen.mul("logits", x, frozen.param("w", "w", ["v"], trainable=False)))
    with pytest.raises(SpecError, match="no trainable parameter"):
        frozen.build()


def test_mismatched_dims_and_tied_shapes():
    b = GraphBuilder("t")
    b.dim("a", "n"), b.dim("b", 3)
    x = b.input("x", ["a"])
    y = b.input("y", ["b"])
    with pytest.raises(SpecError, match="mismatched dims"):
        b.add("z", x, y)
    b.linear("l1", x, ["a"], "w")
    with pytest.raises(SpecError, match="tied to an earlier use"):
        b.linear("l2", x, ["b"], "w")


@pytest.mark.parametrize("name", ["x); import os  #", "1abc", "class", "a b"])
def test_names_reaching_generated_code_are_validated(name):
    b = GraphBuilder("t")
    b.dim("a", "n")
    with pytest.raises(SpecError, match="invalid node name"):
        b.input(name, ["a"])


def test_preset_options():
    with pytest.raises(SpecError, match="did you mean 'layers'"):
        load("gdn", {"layres": "2"})
    with pytest.raises(SpecError, match="unknown spec"):
        load("gdnn")
    # embeddings, final norm, and 18 tensors per GDN + MLP block (tied lm_head)
    assert len(load("gdn", {"layers": "3"}).params) == 2 + 3 * 18


ATTN = """\
name: fixed_scale
dims: {vocab: 64, d: n, dh: n/4, heads: 4}
nodes:
  - {name: tok, op: input, dims: [vocab]}
  - {name: x, op: embedding, in: tok, out: [d], param: emb.weight}
  - {name: q, op: linear, in: x, out: [heads, dh], param: q.weight}
  - {name: k, op: linear, in: x, out: [heads, dh], param: k.weight}
  - {name: v, op: linear, in: x, out: [heads, dh], param: v.weight}
  - {name: s, op: dot, in: [q, k], over: [dh]}
  - {name: z, op: scale, in: s, slot: logit, fixed: "dh**-0.5"}
  - {name: p, op: softmax, in: z}
  - {name: o, op: mix, in: [p, v]}
  - {name: logits, op: linear, in: o, fan_in: [heads, dh], out: [vocab], param: head.weight}
  - {name: loss, op: cross_entropy, in: logits}
"""


def test_a_fixed_multiplier_that_cannot_work_names_the_failing_desideratum(tmp_path):
    # 1/sqrt(d) attention: after one step q.k is correlated (LLN), so the logits grow as n^1/2
    d = derive(load(write(tmp_path, ATTN)), "adam")
    assert [(v.desideratum, v.node, v.exponent) for v in d.violations] == [("update-bounded", "z", sp.Rational(1, 2))]


@pytest.mark.parametrize(
    "preset, options, message",
    [
        ("gdn-heads", {"heads": "12"}, "does not use it here: heads = d_model / (8 d_k)"),
        ("transformer", {"head_dim": "8", "heads": "12"}, "heads = d_model / head_dim"),
        ("gdn", {"d_k": "4"}, "d_k = d_model / 8"),
        ("gdn", {"attn_heads": "4"}, "no attention blocks"),
        ("transformer", {"head_dim": "0"}, "head_dim must be a positive integer"),
        ("gdn", {"attn_every": "9", "layers": "2"}, "leaves no attention block"),
        ("mlp", {"classes": "1"}, "classes must be at least 2"),
        ("transformer", {"vocab": "1"}, "vocab must be at least 2"),
        ("transformer", {"ffn_mult": "n"}, "option ffn_mult: unknown name 'n'"),
        ("mlp", {"act": "swish"}, "option act: unknown function 'swish'"),
    ],
)
def test_preset_options_that_would_be_ignored_or_degenerate(preset, options, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        load(preset, options)
