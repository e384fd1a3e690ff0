"""Propagation facts: for each op type, the coordinate-size exponents of its output at init (x), after one
optimizer step (d, the change) and of the loss gradient reaching its inputs (g).

Every rule returns `Term`s: one candidate exponent each, with the formula and the fact that produced it.
The node's exponent is the max of its terms (sums take the max). Nothing here knows an architecture:
a rule sees one op, its input exponents and the dims it contracts.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

NEG_INF = sp.S.NegativeInfinity
HALF = sp.Rational(1, 2)

# The facts, as they appear in derivation traces.
F_DATA = "data: the input's coordinates are Theta(1) and do not change with training"
F_PARAM = "a parameter's entries are n^-(a+b) at init and move by n^-rho per step"
F_CLT = "contraction over {dims} (n^{e}) of independent factors: sizes add, plus e/2 (CLT)"
F_LLN = "contraction over {dims} (n^{e}) of correlated factors: sizes add, plus e (LLN)"
F_UPD_W = (
    "the update Delta W is built from this input (outer products of gradient and input), so "
    "Delta W . x is a correlated contraction over {dims}: plus e (LLN)"
)
F_W_DX = (
    "Delta x has a component along W^T(.) because the gradient reaching x came through W; W W^T "
    "over {dims} (n^{e}) with W's other dims {other} (n^{o}) gives max(e/2, e - o/2)"
)
F_DU_V = (
    "the change of one factor contains the other (its gradient through this contraction is proportional "
    "to the other factor), so the contraction over {dims} is correlated: max(e/2, e - p) with p = {p} "
    "for a random weight's free dims"
)
F_ELEM = "elementwise product: exponents add"
F_SUM = "sum: the largest term wins (generic terms do not cancel)"
F_SMOOTH = "{fn} keeps the order of its input (Theta(1) derivative; ~x/2 near 0, ~x for large inputs)"
F_GATE = (
    "bounded gate: {fn} of an O(1) input is Theta(1) and its derivative is bounded (assumes the "
    "input stays O(1), a desideratum checked at the input)"
)
F_TANH = "tanh: ~x for small inputs, saturates at 1"
F_SOFTPLUS = "softplus: Theta(1) for O(1) inputs (log 2 at 0), ~x for large inputs; derivative sigmoid in (0, 1)"
F_NORM = (
    "normalisation over {dims}: output scale fixed at Theta(1) (times the gain); its change is the input's "
    "relative change, capped at the output scale; the backward gradient is divided by the input's scale"
)
F_L2 = (
    "L2 normalisation over {dims} (n^{e}): unit norm, so coordinates are n^-e/2; change is the input's "
    "relative change, capped; backward divided by the input's norm"
)
F_SCALE = "multiplier slot {slot}: multiplies by n^{{s}}"
F_SOFTMAX = "softmax over the (finite) sequence of O(1) logits: Theta(1) weights with bounded derivative"
F_MIX = "weighted sum over the (finite) sequence: exponents add"
F_SATURATED = (
    "{fn} saturated: its input is n^({s}), so only the fraction n^(-{s}) of entries (rows, for a "
    "softmax) whose input (gap) lies within O(1) of the switch point keep a Theta(1) derivative: the "
    "derivative's rms is n^(-{s}/2); a change n^d moves it by n^(d - {s}/2) for d <= 0 and "
    "n^((d - {s})/2) for d > 0, capped at 0"
)
F_WRITE = (
    "delta rule: a linear recurrence whose contraction factor alpha (I - beta k k^T) is bounded away from "
    "expansion keeps the order of its write term beta v k^T, summed over a finite number of tokens"
)
F_STATE_GRAD = "dL/dS = sum over later tokens of g_o q^T (outer product, finite sum)"
F_LOSS = "cross-entropy: dL/dlogits = softmax - onehot has Theta(1) entries over the finite vocabulary"
F_BCAST = "gradient of a broadcast input sums over {dims} (n^{e}) of independent terms (CLT)"


class Term(NamedTuple):
    value: sp.Expr
    text: str
    fact: str
    deps: tuple = ()
    tag: str | None = None  # the parameter whose own update this term is (for maximal-update checks)


def fmt_dims(dims) -> str:
    return "(" + ", ".join(dims) + ")" if dims else "()"


def emax(values):
    """Max of exponents (numbers or expressions); -oo for none."""
    values = [v for v in values if v is not NEG_INF]
    if not values:
        return NEG_INF
    if all(v.is_number for v in values):
        return max(values)
    return sp.Max(*values)


def emin(a, b):
    if a.is_number and b.is_number:
        return min(a, b)
    return sp.Min(a, b)


def w_dx_gain(e_c, e_other) -> sp.Expr:
    return max(e_c / 2, e_c - e_other / 2)
