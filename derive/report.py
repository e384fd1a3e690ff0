"""Emitters for a derivation (table, markdown, JSON, LaTeX) and the step-by-step explanation of a rule."""

from __future__ import annotations

import json
import re

from mudelta.graphs.ir import suggest

from .api import Derivation, power
from .desiderata import DESIDERATA

_LAYER = re.compile(r"(?<=\.)(\d+)(?=\.)")


def _rows(d: Derivation, collapse: bool):
    """One row per parameter; with `collapse`, layers that share a rule become one `layers.*` row."""
    groups: dict[tuple, list] = {}
    for r in d.params:
        key = (_LAYER.sub("*", r.name) if collapse else r.name, r.init_std, r.multiplier, r.lr_scale)
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
        if r.max_stable_c is not None:
            row.append(f"n**({-r.max_stable_c})" if r.max_stable_c else "1")
        rows.append(row)
    return rows


def _header(d: Derivation):
    head = ["parameter", "shape", "kind", "init std", "multiplier", "lr scale"]
    if d.optimizer.decoupled_weight_decay:
        head.append("wd scale")
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
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out)


def to_json(d: Derivation) -> str:
    return json.dumps(d.to_dict(), indent=2)


def _title(d: Derivation) -> str:
    return (f"{d.spec}: {d.parametrization} under {d.optimizer.name} "
            f"(convention {d.convention}; n = width, rules relative to a base width)")


def _tail(d: Derivation) -> list[str]:
    out = []
    if d.slots:
        out += ["", "forward multipliers: " + ", ".join(f"{s} = {power(v)}" for s, v in d.slots.items())]
    if d.violations:
        out += ["", f"desiderata that fail ({len(d.violations)}):"]
        out += [f"  - {v.desideratum}: {v.message}" for v in d.violations]
    else:
        out += ["", "all desiderata hold: " + "; ".join(DESIDERATA[k] for k in ("init-bounded", "update-bounded",
                                                                              "feature-learning", "max-update"))]
    return out


def explain(d: Derivation, param: str, depth: int | None = None) -> str:
    """Every step used to reach `param`'s rule, dependencies first, each with the fact applied."""
    names = [r.name for r in d.params]
    if param not in names:
        raise KeyError(f"no parameter {param!r} in {d.spec}{suggest(param, names)}")
    rule = d.param(param)
    steps = d.engine.steps
    roots = [("beta", param), ("rho", param), ("lr", param)]
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
        f"{param}  ({rule.category} weight, shape {' x '.join(rule.shape)}) under {opt.name}:",
        f"  init std {rule.init_std}, multiplier {rule.multiplier}, lr scale {rule.lr_scale}"
        f"  [convention {d.convention}: a = {rule.a}, b = {rule.b}, c = {rule.c}]",
        f"  invariants: a + b = {rule.beta} (entries of W are n^-(a+b) at init), {opt.invariant()} = {rule.lr}",
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
