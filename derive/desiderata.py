"""The muP desiderata, checked on a finished derivation. Each failure names the node and the exponent."""

from __future__ import annotations

from .engine import Engine, Violation
from .rules import NEG_INF

LINEAR_OPS = ("linear", "embedding", "conv1d")

DESIDERATA = {
    "init-bounded": "every value is O(1) at init (at most its natural scale)",
    "init-theta1": "every hidden pre-activation (output of a weight) is Theta(1) at init",
    "update-bounded": "after one step no value changes by more than its natural scale",
    "feature-learning": "after one step every hidden value depending on trained weights changes by Theta(1)",
    "output-learns": "after one step the output (logits) changes by Theta(1)",
    "max-update": "every parameter is updated as much as possible: its own update moves its output by Theta(1)",
    "recurrence-contraction": "a delta-rule recurrence's erase operator I - beta k k^T does not expand",
    "bounded-decay": "a recurrence's decay stays O(1)",
    "bounded-gate": "a gate's (sigmoid, exp) input stays O(1) at init and after a step: no saturation, no overflow",
}


def check(engine: Engine) -> list[Violation]:
    g = engine.g
    out: list[Violation] = []
    logits = g.nodes[g.loss].inputs[0]
    for name in g.order:
        node = g.nodes[name]
        if engine.deferred[name]:
            continue
        bound, x, d = engine.bound[name], engine.X(name), engine.D(name)
        if x > bound:
            out.append(Violation("init-bounded", name, x - bound, f"{name} grows as n^{x - bound} at init"))
        if d is not NEG_INF and d > bound:
            out.append(Violation("update-bounded", name, d - bound,
                                 f"{name} changes by n^{d - bound} times its scale after one step (blows up)"))
        hidden = engine.is_hidden(name)
        if node.op in LINEAR_OPS and hidden and x < bound:
            out.append(Violation("init-theta1", name, x - bound, f"{name} vanishes as n^{x - bound} at init"))
        if hidden and engine.trained[name] and d < bound:
            out.append(Violation("feature-learning", name, d - bound,
                                 f"{name} changes only by n^{d - bound} after one step (no feature learning)"))
    d_out = engine.D(logits)
    if d_out < 0:
        out.append(Violation("output-learns", logits, d_out, f"the output {logits} changes only by n^{d_out}"))
    for node, kind, exponent, text in engine.assumptions:
        if exponent > 0:
            out.append(Violation(kind, node, exponent, text))
    for p, uses in engine.contrib.items():
        live = [(n, v) for n, v in uses.items() if not engine.deferred[n] or g.nodes[n].op == "param"]
        if not live:
            continue
        node, own = live[0]
        own = engine._subs(own)
        bound = engine.bound[node]
        if own < bound:
            out.append(Violation("max-update", p, own - bound,
                                 f"{p} is under-updated: its own update moves {node} by n^{own - bound} only"))
    return out
