"""Emitters for a derivation (table, markdown, JSON, LaTeX) and the step-by-step explanation of a rule."""

from __future__ import annotations

import json
import re

from mudelta.graphs.ir import suggest

from .api import Derivation, power
from .rules import NEG_INF
from .desiderata import DESIDERATA

_LAYER = re.compile(r"(?<=\.)(\d+)(?=\.)")
_NODE_LAYER = re.compile(r"\bl(\d+)_")


def _rows(d: Derivation, collapse: bool):
    """One row per parameter; with `collapse`, layers that share a rule become one `layers.*` row."""
    groups: dict[tuple, list] = {}
    for r in d.params:
        key = (_LAYER.sub("*", r.name) if collapse else r.name, r.init_std, r.multiplier, r.lr_scale, r.eps_scale)
        groups.setdefault(key, []).append(r)
    rows = []
    for (name, *_), rules in groups.items():
        r = rules[0]
        if len(rules) > 1:
            layers = [int(m.group(1)) for x in rules for m in [_LAYER.search(x.name)] if m]
            name = name + f"  [{len(rules)} layers]" if layers else name
        row = [name, " x ".join(r.shape), r.category, r.init_std, r.multiplier, r.lr_scale]
        if d.optimizer.decoupled_weight_decay:
            row.append(r.wd_scale)
        if d.optimizer.eps:
            row.append(r.eps_scale)
        if r.max_stable_c is not None:
            row.append(f"n**({-r.max_stable_c})" if r.max_stable_c else "1")
        rows.append(row)
    return rows


def _header(d: Derivation):
    head = ["parameter", "shape", "kind", "init std", "multiplier", "lr scale"]
    if d.optimizer.decoupled_weight_decay:
        head.append("wd scale")
    if d.optimizer.eps:
        head.append("eps scale")
    if any(r.max_stable_c is not None for r in d.params):
        head.append("max stable lr")
    return head


def table(d: Derivation, collapse: bool = True) -> str:
    head, rows = _header(d), _rows(d, collapse)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [_title(d), "", line(head), line(["-" * w for w in widths]), *map(line, rows)]
    out += _tail(d)
    return "\n".join(out)


def markdown(d: Derivation, collapse: bool = True) -> str:
    head, rows = _header(d), _rows(d, collapse)
    out = [f"**{_title(d)}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(f"`{c}`" if i in (0, 3, 4, 5, 6, 7) else str(c) for i, c in enumerate(row)) + " |"
            for row in rows]
    out += _tail(d)
    return "\n".join(out)


def latex(d: Derivation, collapse: bool = True) -> str:
    head, rows = _header(d), _rows(d, collapse)

    def tex(cell):
        s = str(cell)
        m = re.fullmatch(r"n\*\*\((.+)\)", s) or re.fullmatch(r"n\*\*(.+)", s)
        if m:
            return f"$n^{{{m.group(1)}}}$"
        return s.replace("_", r"\_").replace("*", r"$\ast$")

    out = [r"\begin{tabular}{" + "l" * len(head) + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    out += [" & ".join(tex(c) for c in row) + r" \\" for row in rows]
    out += [r"\bottomrule", r"\end{tabular}", "", r"\noindent"]
    out += [_tex_text(line) + r" \\" for line in _tail(d) if line]  # multipliers, norm eps, failures
    return "\n".join(out)


def _tex_text(line: str) -> str:
    """A line of the table's tail as LaTeX text: specials escaped, n**(e) and n^(e) as powers."""
    line = re.sub(r"[\\&%#_{}$]", lambda m: r"\textbackslash{}" if m[0] == "\\" else "\\" + m[0], line)
    line = re.sub(r"n(?:\*\*|\^)\(([^)]+)\)", r"$n^{\1}$", line)
    line = re.sub(r"n\*\*(-?[\d/]+)", r"$n^{\1}$", line)
    return line.replace("*", r"$\ast$").replace("  - ", r"\quad ")


def to_json(d: Derivation, **extra) -> str:
    """The derivation as JSON; `extra` keys (the CLI's preset and options) come first."""
    return json.dumps({**extra, **d.to_dict()}, indent=2)


def short_fact(fact: str) -> str:
    """The fact behind a bound in a few words, for one-line reasons."""
    dims = re.search(r"over (\([^)]*\))", fact)
    over = f" over {dims.group(1)}" if dims else ""
    for start, words in (("contraction over", None), ("the update Delta W", f"Delta W . x: LLN{over}"),
                         ("Delta x has a component", f"W . Delta x{over}"),
                         ("the change of one factor", f"correlated change{over}"),
                         ("normalisation", f"normalised{over}"), ("L2 normalisation", f"L2-normalised{over}"),
                         ("a parameter's entries", "its own entries")):
        if fact.startswith(start):
            if words is None:
                return ("LLN" if "correlated" in fact else "CLT") + over
            return words
    return fact.split(":")[0]


def reasons(d: Derivation, param: str, collapse: bool = False) -> tuple[str, str]:
    """One line each on why `param` gets its init (a + b) and its learning rate: the bound that set it."""
    e = d.engine

    def why(kind, verb_init, verb_update):
        u = e.unknowns.get((kind, param))
        if u is None or u.binding is None:
            return "nothing bounds it (gauge 0)"
        b = u.binding
        verb = verb_init if b.phase == "init" else verb_update
        return f"{verb.format(node=f'`{b.node}`')} ({short_fact(b.fact)})"

    init = why("beta", "largest init keeping {node} at its scale", "largest init keeping {node}'s change bounded")
    lr = why("rho", "largest update keeping {node} bounded", "largest update keeping {node}'s change bounded")
    rule = d.param(param)
    if d.optimizer.grad_coef and rule.grad is not NEG_INF:
        lr += f"; gradient n^({rule.grad}) during training"
    return (collapse_layers(init), collapse_layers(lr)) if collapse else (init, lr)


def slot_reason(d: Derivation, slot: str) -> str:
    """Why a multiplier slot got its exponent: the node it keeps in bounds and the size of what it scales."""
    e = d.engine
    u = e.unknowns.get(("s", slot))
    if u is None:
        return "fixed in the spec"
    if u.binding is None:
        return "nothing bounds it (gauge 0)"
    node = d.graph.nodes[u.binding.node]
    src = node.inputs[0] if node.op == "scale" else u.binding.node
    kind, when = ("x", "at init") if u.binding.phase == "init" else ("d", "after one step")
    step = e.steps[(kind, src)]
    return (f"largest multiplier keeping `{u.binding.node}` at its scale: `{src}` is n^({step.value}) {when} "
            f"({short_fact(step.fact)})")


def collapse_layers(text: str) -> str:
    """Layer indices replaced by `*`: `layers.3.attn` -> `layers.*.attn`, node `l3_q` -> `l*_q`."""
    return _LAYER.sub("*", _NODE_LAYER.sub("l*_", text))


def violation_groups(d: Derivation, collapse: bool = True) -> list[tuple[str, str, list[str]]]:
    """(desideratum, exponent, nodes): each node (layers merged as l*_x) with its worst exponent over the
    layers, nodes that fail by the same exponent together, worst first."""
    worst: dict[tuple, object] = {}
    for v in d.violations:
        node = collapse_layers(v.node) if collapse else v.node
        key = (v.desideratum, node)
        if key not in worst or abs(v.exponent) > abs(worst[key]):
            worst[key] = v.exponent
    groups: dict[tuple, list[str]] = {}
    for (kind, node), e in worst.items():
        groups.setdefault((kind, e), []).append(node)
    order = sorted(groups, key=lambda k: (list(DESIDERATA).index(k[0]), -abs(float(k[1]))))
    return [(k[0], str(k[1]), groups[k]) for k in order]


def norm_eps_groups(d: Derivation) -> list[tuple[str, object]]:
    """The norms whose eps scales with the width, layers merged as *, in graph order."""
    out: dict[str, object] = {}
    for node, e in d.norm_eps.items():
        if e != 0:
            out.setdefault(collapse_layers(node), e)
    return list(out.items())


def _title(d: Derivation) -> str:
    return (f"{d.spec}: {d.parametrization} under {d.optimizer.name} "
            f"(convention {d.convention}; n = width, rules relative to a base width)")


def _tail(d: Derivation) -> list[str]:
    out = []
    if d.slots:
        out += ["", "forward multipliers: " + ", ".join(f"{s} = {power(v)}" for s, v in d.slots.items())]
    scaled = norm_eps_groups(d)
    if scaled:
        out += ["", "norm eps, opt-in (derived_norm_eps; eps * scale keeps its share of the input's mean "
                "square at init): "
                + ", ".join(f"{k} * {power(v)}" for k, v in scaled)]
    if d.violations:
        out += ["", f"desiderata that fail ({len(d.violations)}; exponent of n by which each is off):"]
        out += [f"  - {k} n^({e}): {', '.join(nodes)}" for k, e, nodes in violation_groups(d)]
    else:
        out += ["", "all desiderata hold: " + "; ".join(DESIDERATA[k] for k in ("init-bounded", "update-bounded",
                                                                              "feature-learning", "max-update"))]
    return out


def explain(d: Derivation, param: str, depth: int | None = None) -> str:
    """Every step used to reach `param`'s rule, dependencies first, each with the fact applied."""
    names = [r.name for r in d.params]
    note = []
    if param not in names and "*" in param:  # a collapsed name of the table: its first layer's derivation
        pattern = re.escape(param).replace(r"\*", r"\d+")
        matches = [r for r in d.params if re.fullmatch(pattern, r.name)]
        if len({(r.init_std, r.multiplier, r.lr_scale, r.eps_scale) for r in matches}) > 1:
            covered = ", ".join(r.name for r in matches)
            raise KeyError(f"{param} covers layers with different rules ({covered}): give one layer's number")
        if matches:
            note = [f"({param}: the derivation for {matches[0].name}; every layer it covers has its rule)"]
            param = matches[0].name
    if param not in names:
        raise KeyError(f"no parameter {param!r} in {d.spec}{suggest(param, names)}")
    rule = d.param(param)
    steps = d.engine.steps
    roots = [("beta", param), ("rho", param), ("lr", param), ("pgrad1", param)]
    for key in (("beta", param), ("rho", param)):  # the node whose bound set the rule: its size and change
        u = d.engine.unknowns.get(key)
        if u is not None and u.binding is not None:
            roots += [("x", u.binding.node), ("d", u.binding.node)]
    order, seen = [], set()

    def visit(key, level):
        if key in seen or key not in steps:
            return
        seen.add(key)
        if depth is None or level < depth:
            for dep in steps[key].deps:
                visit(dep, level + 1)
        order.append(key)

    for key in roots:
        visit(key, 0)
    opt = d.optimizer
    out = [
        *note,
        f"{param}  ({rule.category} weight, shape {' x '.join(rule.shape)}) under {opt.name}:",
        f"  init std {rule.init_std}, multiplier {rule.multiplier}, lr scale {rule.lr_scale}"
        + (f", eps scale {rule.eps_scale}" if rule.eps is not None else "")
        + f"  [convention {d.convention}: a = {rule.a}, b = {rule.b}, c = {rule.c}]",
        f"  invariants: a + b = {rule.beta} (entries of W are n^-(a+b) at init), {opt.invariant()} = {rule.lr}",
        *([f"  eps scale {rule.eps_scale}: the stored weight's gradient entries are n^(g - a), g the smaller of "
           "their exponents at init and in training (g, g1 below); eps keeps its ratio to them"]
          if rule.eps is not None and d.parametrization == "mup" else []),
        "",
        "derivation (x: size at init, d: change after one step, g: gradient at init, g1: gradient during "
        "training; all exponents of n):",
    ]
    for i, key in enumerate(order, 1):
        s = steps[key]
        label = _label(key)
        out.append(f"{i:4d}. {label} = {_fmt(s.value)}    <- {s.text}")
        out.append(f"        fact: {s.fact}")
    rel = [a for a in d.engine.assumptions if any(k[1] == a[0] for k in order)]
    if rel:
        out += ["", "assumptions (hold while the exponent is <= 0):"]
        out += [f"  - {kind} at {node}: exponent {_fmt(e)}: {text}" for node, kind, e, text in rel]
    return "\n".join(out)


def _label(key) -> str:
    kind, name = key
    names = {"beta": "a+b", "rho": "update", "lr": "lr invariant", "grad": "grad(param, init)",
             "pgrad1": "grad(param, training)", "s": "multiplier"}
    return f"{names.get(kind, kind)}[{name}]" if kind in names else f"{kind}({name})"


def _fmt(v) -> str:
    return "-oo" if v == -float("inf") or str(v) == "-oo" else str(v)
