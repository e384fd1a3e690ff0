"""Parametrizations to evaluate (sp, ntk, mf, or exponents from a file) and conventions that pick one
(a, b, c) representative of a derived rule.

A rule is fixed by two symmetry invariants: beta = a + b (the init size of W = n^-a w) and the optimizer's
learning-rate invariant K (Adam: a + c; SGD: 2a + c). A convention picks a representative:
- tp5: Tensor Programs V Table 3: no multipliers (a = 0), the scaling lives in init and LR;
- mup: Tensor Programs V Table 8 / the `mup` package: output-like weights (width fan-in, finite fan-out)
  get init Theta(1) and the multiplier n^-beta (MuReadout); everything else a = 0;
- tp4: Tensor Programs IV: one global LR (c = 0), the scaling lives in multipliers and init.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import sympy as sp

from mudelta.graphs.ir import Graph, Param, suggest

from .optimizers import Optimizer

ZERO = sp.Integer(0)


def category(graph: Graph, p: Param) -> str:
    """input (finite -> width: embeddings, biases, gains), hidden (width -> width), output (width ->
    finite), scalar (no width dim), from the first use's fan-in / fan-out dims."""
    w_in = bool(graph.width_dims(p.fan_in))
    w_out = bool(graph.width_dims(p.fan_out))
    if w_in and w_out:
        return "hidden"
    if w_in:
        return "output"
    if w_out:
        return "input"
    return "scalar"


def _tp5(opt: Optimizer, cat: str, beta, k):
    return ZERO, beta, k - opt.b_coef * beta


def _mup(opt: Optimizer, cat: str, beta, k):
    a = beta if cat == "output" else ZERO
    b = beta - a
    return a, b, k - opt.a_coef * a - opt.b_coef * b


def _tp4(opt: Optimizer, cat: str, beta, k):
    a = (k - opt.b_coef * beta) / (opt.a_coef - opt.b_coef)
    return a, beta - a, ZERO


CONVENTIONS = {"tp5": _tp5, "mup": _mup, "tp4": _tp4}


def given_values(graph: Graph, opt: Optimizer, name):
    """(a, b, c) per parameter and the slot exponents of a named parametrization, a file, or a mapping in
    the file's format."""
    if isinstance(name, dict):
        return _from_mapping(graph, name, "parametrization")
    builtin = {"sp": _sp, "ntk": _ntk, "mf": _mf}
    if name in builtin:
        abc = {p.name: builtin[name](graph, opt, p) for p in graph.params.values() if p.trainable}
        return abc, _standard_slots(graph)
    path = Path(name)
    if not path.exists():
        raise ValueError(f"unknown parametrization {name!r}{suggest(name, [*builtin, 'mup'])}: use mup, sp, ntk, "
                         "mf or a YAML/JSON file of exponents")
    return _from_file(graph, path)


def _fan_in_b(graph: Graph, p: Param):
    """Init exponent of the reference implementation: a fixed std (e.g. 0.02) or constant init gives b = 0;
    the default fan-in init (var 1/fan_in) gives b = e(fan_in)/2."""
    if p.std is not None or p.init in ("ones", "zeros", "custom"):
        return ZERO
    return graph.exponent(p.fan_in) / 2


def _sp(graph, opt, p):
    """Standard parametrization: the reference implementation's init, no multipliers, one global LR."""
    return ZERO, _fan_in_b(graph, p), ZERO


def _ntk(graph, opt, p):
    """NTK parametrization: w ~ N(0, 1), multiplier 1/sqrt(fan_in), one global LR."""
    return graph.exponent(p.fan_in) / 2, ZERO, ZERO


def _mf(graph, opt, p):
    """Mean-field: like NTK but the readout multiplier is 1/fan_in, and SGD's LR grows as n (TP4)."""
    e_in = graph.exponent(p.fan_in)
    a = e_in if category(graph, p) == "output" else e_in / 2
    return a, ZERO, sp.Integer(-1) if opt.grad_coef else ZERO


def _standard_slots(graph: Graph):
    slots = {}
    for node in graph.nodes.values():
        if node.op == "scale" and "fixed" not in node.attrs:
            slots[node.attrs["slot"]] = node.attrs.get("standard", ZERO)
    return slots


def _from_file(graph: Graph, path: Path):
    """A YAML or JSON mapping: `parameters: {glob: {a, b, c}}` (first matching glob wins; an exponent left
    out is 0) and optionally `multipliers: {slot: exponent}`; unmatched slots take their standard value."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read parametrization file ({exc})") from None
    return _from_mapping(graph, data, str(path))


def _from_mapping(graph: Graph, data, path: str):
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'parameters' mapping of glob -> {{a, b, c}}")
    unknown = sorted(set(data) - {"parameters", "multipliers"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected parameters and optionally multipliers")
    for pattern, entry in data["parameters"].items():
        extra = sorted(set(entry) - set("abc")) if isinstance(entry, dict) else None
        if extra is None or extra:
            what = f"unknown key(s) {extra}" if extra else f"expected a mapping, got {entry!r}"
            raise ValueError(f"{path}: parameters.{pattern}: {what}; an entry is {{a, b, c}}")
    if not isinstance(data.get("multipliers") or {}, dict):
        got = data["multipliers"]
        raise ValueError(f"{path}: 'multipliers' must map slot names to exponents, got {got!r}")
    abc = {}
    for p in graph.params.values():
        if not p.trainable:
            continue
        for pattern, entry in data["parameters"].items():
            if fnmatch.fnmatchcase(p.name, str(pattern)):
                try:
                    abc[p.name] = tuple(sp.Rational(str(entry.get(k, 0))) for k in "abc")
                except (TypeError, AttributeError, ValueError) as exc:
                    raise ValueError(f"{path}: parameters.{pattern}: a, b, c must be rationals ({exc})") from None
                break
        else:
            raise ValueError(f"{path}: no entry in 'parameters' matches parameter {p.name!r}")
    slots = _standard_slots(graph)
    for slot, value in (data.get("multipliers") or {}).items():
        if slot not in slots:
            raise ValueError(f"{path}: unknown multiplier slot {slot!r}{suggest(slot, slots)}")
        try:
            slots[slot] = sp.Rational(str(value))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: multipliers.{slot}: an exponent must be a rational ({exc})") from None
    return abc, slots
