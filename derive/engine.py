"""The engine: propagates coordinate-size exponents through a graph and solves the muP desiderata.

Three passes over the graph, all in exponents of the width n:
1. forward, in topological order: each node's size at init (x) and its change after one optimizer step (d),
   and the aligned part of that change (a): what the node's own parameters' updates put there, propagated
   through parameter-free ops. Only that part is built from the gradient reaching the node, so only it is
   correlated with the other factor of a contraction the node feeds (LLN); the rest of the change comes
   from upstream updates driven by other consumers' gradients and contracts like an independent vector.
   Also the change to first order in the learning rate (d1): no products of two changes. That is what a
   coordinate check at a small learning rate measures; d adds the second-order terms that dominate once
   lr * n^(their extra exponent) is large.
   Each parameter's init exponent beta = a+b and update exponent rho (Delta W is n^-rho per entry) and each
   multiplier slot's exponent s are unknowns. At the first node whose bound they enter, each is solved to be
   as large as allowed (largest init, largest update, largest multiplier) without any node exceeding its
   natural scale. Given a parametrization instead, the same constraints give the largest stable values.
2. backward, in reverse order: the size of dL/d(node) at init, and of each parameter's gradient.
3. the optimizer maps rho and the gradient size to the learning-rate exponent (SGD: 2a+c = rho + grad).
Then every desideratum is checked; violations carry the offending exponent.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

import sympy as sp

from mudelta.graphs.ir import Graph

from . import rules as R
from .optimizers import Optimizer
from .rules import HALF, NEG_INF, Term, emax, emin, fmt_dims

ZERO = sp.Integer(0)


class UnsatisfiableError(ValueError):
    """The desiderata constrain an unknown from both sides and the bounds cross."""


@dataclass
class Step:
    key: tuple  # ("x"|"d"|"g", node) or ("beta"|"rho"|"grad"|"lr", param) or ("s", slot)
    value: sp.Expr
    text: str
    fact: str
    deps: tuple = ()


class Binding(NamedTuple):
    """The bound that fixed an unknown: at init or after the update, at which node, by which fact."""

    phase: str
    node: str
    fact: str
    deps: tuple = ()


@dataclass
class Unknown:
    """An exponent the desiderata solve for: a parameter's beta or rho, or a slot's s."""

    key: tuple
    symbol: sp.Symbol
    direction: int  # +1: prefer larger values (multipliers); -1: prefer smaller (beta, rho)
    order: int
    given: sp.Expr | None = None
    lower: list = field(default_factory=list)  # (bound, why)
    upper: list = field(default_factory=list)
    solved: sp.Expr | None = None  # the extreme value the desiderata allow
    why: str = ""
    binding: Binding | None = None  # the bound that set it (None: gauge-fixed)


@dataclass
class Violation:
    desideratum: str
    node: str
    exponent: sp.Expr
    message: str


class Engine:
    """One derivation: a graph, an optimizer, and either free unknowns (muP) or given values."""

    def __init__(self, graph: Graph, optimizer: Optimizer, given: dict | None = None, shares: dict | None = None):
        self.g = graph
        self.opt = optimizer
        self.given = given  # {("beta"|"rho"|"lr", param) or ("s", slot): exponent} or None
        # {linear node: exponent (<= 0) of its W^T g's share of the gradient at its input}, from an earlier
        # pass at the same exponents; None: every share Theta(1)
        self.shares_in = shares or {}
        self.shares: dict[str, sp.Expr] = {}
        self.x: dict[str, sp.Expr] = {}
        self.d: dict[str, sp.Expr] = {}
        self.a: dict[str, sp.Expr] = {}
        self.d1: dict[str, sp.Expr] = {}
        self._mode = "d"  # which change the rules propagate: d, a (aligned part) or d1 (first order)
        self.grad: dict[str, sp.Expr] = {}
        self.pgrad: dict[str, sp.Expr] = {}
        self.lineage: dict[str, frozenset] = {}
        # {node: {param in its lineage: size exponent of the part of the node's init value carried along that
        # lineage}}: a correlated contraction with the param is as large as that part, not the whole node
        self.carried: dict[str, dict[str, sp.Expr]] = {}
        self.trained: dict[str, bool] = {}
        self.steps: dict[tuple, Step] = {}
        self.unknowns: dict[tuple, Unknown] = {}
        self.contrib: dict[str, dict[str, sp.Expr]] = {}  # param -> {node: size of its own update's effect}
        self.assumptions: list[tuple] = []  # (node, name, exponent that must be <= 0, text)
        self.bound: dict[str, sp.Expr] = {}
        for name in graph.order:
            self.bound[name] = self._natural_scale(name)
        self.deferred = {name: self._is_deferred(name) for name in graph.order}
        self.notes: list[str] = []

    # ---- unknowns ---------------------------------------------------------------------------------
    def unknown(self, kind: str, name: str) -> sp.Expr:
        key = (kind, name)
        u = self.unknowns.get(key)
        if u is None:
            sym = sp.Symbol(f"{kind}[{name}]", real=True)
            u = self.unknowns[key] = Unknown(key, sym, +1 if kind == "s" else -1, len(self.unknowns))
            if self.given is not None and key in self.given:
                u.given = sp.Rational(self.given[key]) if self.given[key] is not None else None
        if u.given is not None and u.solved is not None:
            return u.given
        if u.solved is not None:
            return u.solved
        return u.symbol

    def value_of(self, key: tuple) -> sp.Expr:
        """The value used to propagate: the given one in evaluation mode, else the solved one."""
        u = self.unknowns[key]
        return u.given if u.given is not None else u.solved

    def _subs(self, expr):
        if expr.is_number:
            return expr
        reps = {}
        for sym in expr.free_symbols:
            u = self._by_symbol(sym)
            if u is not None and u.solved is not None:
                reps[sym] = self.value_of(u.key)
        return expr.xreplace(reps) if reps else expr

    def _by_symbol(self, sym):
        if not hasattr(self, "_sym_index") or len(self._sym_index) != len(self.unknowns):
            self._sym_index = {u.symbol: u for u in self.unknowns.values()}
        return self._sym_index.get(sym)

    def X(self, node):
        return self._subs(self.x[node])

    def D(self, node):
        return self._subs(getattr(self, self._mode)[node])

    def A(self, node):
        return self._subs(self.a[node])

    def D1(self, node):
        return self._subs(self.d1[node])

    def e(self, dims) -> sp.Rational:
        return self.g.exponent(dims)

    def beta(self, param):
        return self.unknown("beta", param)

    def rho(self, param):
        if not self.g.params[param].trainable:
            return sp.S.Infinity
        return self.unknown("rho", param)

    # ---- node classification ----------------------------------------------------------------------
    def _natural_scale(self, name) -> sp.Expr:
        node = self.g.nodes[name]
        if node.op == "l2norm":
            return -self.e(node.attrs["over"]) / 2
        if node.op == "scale":  # a multiplier may rescale a value up to its input's natural scale
            return self.bound[node.inputs[0]]
        return ZERO

    def _is_deferred(self, name) -> bool:
        """Nodes with no bound of their own: values that only feed multiplier slots (bounded after the
        multiplier), and the loss."""
        node = self.g.nodes[name]
        if node.op == "cross_entropy":
            return True
        cons = self.g.consumers(name)
        return bool(cons) and all(self.g.nodes[c].op == "scale" for c in cons)

    def is_hidden(self, name) -> bool:
        return bool(self.g.width_dims(self.g.nodes[name].dims))

    # ---- pass 1: forward ----------------------------------------------------------------------------
    def forward(self):
        for name in self.g.order:
            node = self.g.nodes[name]
            rule = getattr(self, f"_fwd_{node.op}")
            xs, ds = rule(node)
            self._settle(name, xs, ds)
            self._carry(node)
            for mode in ("a", "d1"):
                self._mode = mode
                try:
                    _, terms = rule(node)
                finally:
                    self._mode = "d"
                self._settle_change(mode, name, terms)

    def _carry(self, node):
        """Record `carried` for a settled node. A sum keeps each input's part as it is; an elementwise
        product multiplies it by the other factors; a linear map starts its own lineage (its output is all
        its weight's); any other op (a norm, a nonlinearity, a multiplier) rescales its input's parts with
        the node."""
        name, x = node.name, self.x[node.name]
        parts: dict[str, list] = {}
        inputs = () if node.op in ("linear", "embedding") else node.inputs
        for i, u in enumerate(inputs):
            for q, v in self.carried.get(u, {}).items():
                if node.op == "add":
                    part = v
                elif node.op in ("mul", "mix"):
                    part = v + sum((self.x[w] for j, w in enumerate(node.inputs) if j != i), ZERO)
                else:
                    part = v - self.x[u] + x
                parts.setdefault(q, []).append(part)
        self.carried[name] = {q: emax(parts[q]) if q in parts else x for q in self.lineage[name]}

    _CHANGES = {"a": "aligned change (own updates, built from this node's gradient): ",
                "d1": "change to first order in the learning rate: "}

    def _settle_change(self, kind, name, terms: list[Term]):
        terms = [t._replace(value=self._subs(t.value), text=t.text.replace("d(", f"{kind}("),
                            deps=tuple((kind, n) if k == "d" else (k, n) for k, n in t.deps)) for t in terms]
        value = getattr(self, kind)[name] = emax([t.value for t in terms])
        best = _argmax(terms)
        if best is None:
            self.steps[(kind, name)] = Step((kind, name), NEG_INF, "no term", "nothing upstream moves")
        else:
            self.steps[(kind, name)] = Step((kind, name), value, best.text, self._CHANGES[kind] + best.fact,
                                            best.deps)

    def _cap(self, value, text):
        """A change capped at the output's scale (saturation of a normalised, gated or softmaxed value)."""
        return emin(value, ZERO), f"min({text}, 0)"

    @staticmethod
    def _saturation(size):
        """The size exponent s > 0 of a bounded nonlinearity's input (sigmoid, tanh, softmax) that grows with
        width, or None (an O(1) or not yet known input). Its input entries spread over n^s, so the fraction
        within O(1) of the switch point, where the derivative is Theta(1), is n^-s (a density at 0)."""
        return size if size.is_number and size.is_finite and size > 0 else None

    @staticmethod
    def _saturated_change(s, du, text):
        """A saturated nonlinearity's change for an input change n^du (F_SATURATED)."""
        return (emin(ZERO, emin(du - s / 2, (du - s) / 2)),
                f"min(0, {text} - {s / 2}, ({text} - {s})/2)")

    @property
    def _second_order(self) -> bool:
        """Whether rules include products of two changes (not in the first-order pass)."""
        return self._mode != "d1"

    def _settle(self, name, xs: list[Term], ds: list[Term]):
        """Solve the unknowns this node's bound constrains, then record its exponents."""
        if not self.deferred[name]:
            self._constrain(name, [("init", t) for t in xs] + [("update", t) for t in ds])
        for kind, terms, store in (("x", xs, self.x), ("d", ds, self.d)):
            terms = [t._replace(value=self._subs(t.value)) for t in terms]
            store[name] = emax([t.value for t in terms])
            best = _argmax(terms)
            if best is not None:
                self.steps[(kind, name)] = Step((kind, name), store[name], best.text, best.fact, best.deps)
            else:
                self.steps[(kind, name)] = Step((kind, name), NEG_INF, "no term", "nothing upstream moves")
            if kind == "d":
                for t in terms:
                    if t.tag:
                        uses = self.contrib.setdefault(t.tag, {})
                        uses[name] = emax([uses.get(name, NEG_INF), t.value])

    def _constrain(self, name, terms: list[tuple[str, Term]]):
        bound = self.bound[name]
        pending = {}
        for phase, t in terms:
            for piece in _pieces(self._subs(t.value)):
                syms = [s for s in piece.free_symbols if self._by_symbol(s) is not None]
                open_ = [self._by_symbol(s) for s in syms if self._by_symbol(s).solved is None]
                if not open_:
                    continue
                if len(open_) > 1:
                    # Only a combination is constrained here: fix all but the newest (abc-symmetry gauge).
                    open_.sort(key=lambda u: u.order)
                    for u in open_[:-1]:
                        self._fix(u, ZERO, f"only the combination with {open_[-1].key[1]} is constrained at "
                                  f"node {name}; gauge fixed at 0")
                    piece = self._subs(piece)
                u = open_[-1]
                coef = piece.coeff(u.symbol)
                rest = piece - coef * u.symbol
                if coef == 0 or not rest.is_number:
                    continue
                limit = (bound - rest) / coef
                why = f"{phase}: {t.text} <= {bound} at node {name}"
                (u.upper if coef > 0 else u.lower).append((limit, why, Binding(phase, name, t.fact, t.deps)))
                pending[u.key] = u
        for u in sorted(pending.values(), key=lambda u: u.order):
            self._solve(u)

    def _solve(self, u: Unknown):
        bounds = u.upper if u.direction > 0 else u.lower
        if not bounds:
            self._fix(u, ZERO, "no desideratum limits it; gauge fixed at 0")
            return
        pick = min if u.direction > 0 else max
        value, why, binding = pick(bounds, key=lambda b: b[0])
        other = u.lower if u.direction > 0 else u.upper
        for limit, other_why, _ in other:
            if (value < limit) if u.direction > 0 else (value > limit):
                raise UnsatisfiableError(
                    f"{u.key[0]} of {u.key[1]}: the desiderata conflict: [{why}] requires "
                    f"{'<=' if u.direction > 0 else '>='} {value}, but [{other_why}] requires "
                    f"{'>=' if u.direction > 0 else '<='} {limit}"
                )
        self._fix(u, value, why, binding)

    def _fix(self, u: Unknown, value, why, binding: Binding | None = None):
        u.solved, u.why, u.binding = sp.Rational(value), why, binding
        shown = self.value_of(u.key)
        if u.given is not None:
            why = f"given {u.given}; the desiderata allow at most {'+' if u.direction > 0 else ''}{value} ({why})"
        fact, deps = "maximal: as large as the bounds allow", ()
        if binding is not None:
            fact += f"; the binding term: {binding.fact}"
            deps = tuple(k for k in binding.deps if k != u.key)
        self.steps[u.key] = Step(u.key, shown, why, fact, deps)

    # ---- op rules: forward -------------------------------------------------------------------------
    def _fwd_input(self, node):
        self.lineage[node.name], self.trained[node.name] = frozenset(), False
        return [Term(ZERO, "data", R.F_DATA)], []

    def _fwd_param(self, node):
        p = node.params["weight"]
        self.lineage[node.name] = frozenset([p])
        self.trained[node.name] = self.g.params[p].trainable
        x = [Term(-self.beta(p), f"-beta[{p}]", R.F_PARAM, (("beta", p),))]
        d = []
        if self.g.params[p].trainable:
            d = [Term(-self.rho(p), f"-rho[{p}]", R.F_PARAM, (("rho", p),), tag=p)]
        return x, d

    def _fwd_linear(self, node):
        (u,) = node.inputs
        p = node.params["weight"]
        fan_in = node.attrs["fan_in"] if node.op == "linear" else self.g.nodes[u].dims
        out = node.attrs["out"] if node.op == "linear" else node.dims
        e_c, e_o = self.e(fan_in), self.e(out)
        dims = fmt_dims(fan_in)
        beta, rho = self.beta(p), self.rho(p)
        xu, du = self.X(u), self.D(u)
        corr = p in self.lineage[u] and self._along(u, p, self._weight_axes(node)[1])
        own = self._subs(self.carried[u][p] - xu) if corr else ZERO  # p's part of u, relative to u
        if own.is_number and own < 0:  # only the part of u that p carries is correlated with p
            part = R.F_LLN.format(dims=dims, e=e_c) + f"; {u} carries {p} only as a part n^({own}) of it"
            xs = [Term(-beta + xu + own + e_c, f"-beta[{p}] + x({u}) + {own} + {e_c}", part,
                       (("beta", p), ("x", u))),
                  Term(-beta + xu + e_c / 2, f"-beta[{p}] + x({u}) + {e_c / 2}",
                       R.F_CLT.format(dims=dims, e=e_c), (("beta", p), ("x", u)))]
        else:
            gain = e_c if corr else e_c / 2
            fact = (R.F_LLN if corr else R.F_CLT).format(dims=dims, e=e_c)
            xs = [Term(-beta + xu + gain, f"-beta[{p}] + x({u}) + {gain}", fact, (("beta", p), ("x", u)))]
        w_dx = R.w_dx_gain(e_c, e_o)
        ds = []
        if self._mode != "a":  # W . Delta x follows the gradient at x (all its consumers'), not this node's
            share = self.shares_in.get(node.name, ZERO)
            w_dx = max(w_dx + share, e_c / 2)
            fact = R.F_W_DX.format(dims=dims, e=e_c, other=fmt_dims(out), o=e_o)
            if share != 0:
                fact += f"; W^T g is n^({share}) of the gradient at {u}, so only that share of Delta x is along it"
            ds.append(Term(-beta + du + w_dx, f"-beta[{p}] + d({u}) + {w_dx}", fact, (("beta", p), ("d", u))))
        if self.g.params[p].trainable:
            ds.append(Term(-rho + xu + e_c, f"-rho[{p}] + x({u}) + {e_c}", R.F_UPD_W.format(dims=dims),
                           (("rho", p), ("x", u)), tag=p))
            if self._second_order:
                ds.append(Term(-rho + du + e_c, f"-rho[{p}] + d({u}) + {e_c}", R.F_UPD_W.format(dims=dims),
                               (("rho", p), ("d", u)), tag=p))
        lineage = {p}
        if "bias" in node.params:
            b = node.params["bias"]
            lineage.add(b)
            xs.append(Term(-self.beta(b), f"-beta[{b}]", R.F_SUM, (("beta", b),)))
            if self.g.params[b].trainable:
                ds.append(Term(-self.rho(b), f"-rho[{b}]", R.F_SUM, (("rho", b),), tag=b))
        self.lineage[node.name] = frozenset(lineage)
        self.trained[node.name] = self.trained[u] or any(self.g.params[q].trainable for q in node.params.values())
        return xs, ds

    _fwd_embedding = _fwd_linear

    @staticmethod
    def _weight_axes(node) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(axes the output runs along, axes contracted) of a linear or embedding node's weight: a linear's
        weight is [*out, *fan_in], an embedding's [vocab, *out] (it picks rows)."""
        if node.op == "embedding":
            return tuple(range(1, 1 + len(node.dims))), (0,)
        k = len(node.attrs["out"])
        return tuple(range(k)), tuple(range(k, k + len(node.attrs["fan_in"])))

    def _along(self, u, p, contracted) -> bool:
        """Whether u carries weight p along the axes a use of p contracts (the correlated, LLN case). A value
        made by p runs along p's output axes: used again in the same orientation (W (W x)) p contracts the
        other axes, which pairs different entries of p, a CLT sum; a tied embedding read out by its transpose
        contracts the axes it produced, which pairs each entry with itself. Any other source of p in u (a
        param node, a gain) counts as correlated."""
        seen, stack = set(), [u]
        while stack:
            name = stack.pop()
            if name in seen or p not in self.lineage.get(name, ()):
                continue
            seen.add(name)
            node = self.g.nodes[name]
            if node.op in ("linear", "embedding") and p in node.params.values():
                if node.params.get("weight") != p or self._weight_axes(node)[0] == contracted:
                    return True
                continue  # a linear map starts its own lineage: nothing of p comes from its input
            if node.op in ("param", "rmsnorm", "layernorm", "conv1d") and p in node.params.values():
                return True
            stack.extend(node.inputs)
        return False

    def _fwd_conv1d(self, node):
        (u,) = node.inputs
        p = node.params["weight"]
        beta, rho = self.beta(p), self.rho(p)
        xu, du = self.X(u), self.D(u)
        fact = f"depthwise convolution: per channel, a sum over the finite kernel ({node.attrs['kernel']})"
        xs = [Term(-beta + xu, f"-beta[{p}] + x({u})", fact, (("beta", p), ("x", u)))]
        ds = [Term(-beta + du, f"-beta[{p}] + d({u})", fact, (("beta", p), ("d", u)))]
        if self.g.params[p].trainable:
            ds.append(Term(-rho + xu, f"-rho[{p}] + x({u})", fact, (("rho", p), ("x", u)), tag=p))
            if self._second_order:
                ds.append(Term(-rho + du, f"-rho[{p}] + d({u})", fact, (("rho", p), ("d", u)), tag=p))
        self.lineage[node.name] = self.lineage[u] | {p}
        self.trained[node.name] = self.trained[u] or self.g.params[p].trainable
        return xs, ds

    def _fwd_unary(self, node):
        (u,) = node.inputs
        fn = node.attrs["fn"]
        xu, du = self.X(u), self.D(u)
        self.lineage[node.name], self.trained[node.name] = self.lineage[u], self.trained[u]
        deps_x, deps_d = (("x", u),), (("d", u),)
        if fn in ("identity", "neg", "silu", "gelu", "relu"):
            fact = R.F_SMOOTH.format(fn=fn)
            return [Term(xu, f"x({u})", fact, deps_x)], [Term(du, f"d({u})", fact, deps_d)]
        if fn in ("sigmoid", "exp"):
            self._assume(node.name, "bounded-gate", emax([xu, du]),
                         f"the {fn} gate's input `{u}` (n^({xu}) at init, moves by n^({du})) must stay O(1): "
                         + ("otherwise the sigmoid saturates and its derivative vanishes" if fn == "sigmoid"
                            else "exp of an O(1) input is Theta(1) with a Theta(1) derivative; a growing input "
                                 "overflows, or for a log-decay g <= 0 drives exp(g) and its gradient to 0"))
        s = self._saturation(xu) if fn in ("sigmoid", "tanh") else None
        if s is not None:
            fact = R.F_SATURATED.format(fn=fn, s=s)
            change = self._saturated_change(s, du, f"d({u})")
            return [Term(ZERO, "0", fact, deps_x)], [Term(*change, fact, deps_d)]
        if fn in ("sigmoid", "exp"):
            fact = R.F_GATE.format(fn=fn)
            return [Term(ZERO, "0", fact, deps_x)], [Term(*self._cap(du, f"d({u})"), fact, deps_d)]
        if fn == "tanh":
            return ([Term(emin(xu, ZERO), f"min(x({u}), 0)", R.F_TANH, deps_x)],
                    [Term(*self._cap(du, f"d({u})"), R.F_TANH, deps_d)])
        # softplus
        return ([Term(emax([xu, ZERO]), f"max(x({u}), 0)", R.F_SOFTPLUS, deps_x)],
                [Term(du, f"d({u})", R.F_SOFTPLUS, deps_d)])

    def _fwd_add(self, node):
        self._merge(node)
        xs = [Term(self.X(u), f"x({u})", R.F_SUM, (("x", u),)) for u in node.inputs]
        ds = [Term(self.D(u), f"d({u})", R.F_SUM, (("d", u),)) for u in node.inputs]
        return xs, self._tag_param_inputs(node, ds)

    def _fwd_mul(self, node):
        self._merge(node)
        ins = node.inputs
        total = sum((self.X(u) for u in ins), ZERO)
        xs = [Term(total, " + ".join(f"x({u})" for u in ins), R.F_ELEM, tuple(("x", u) for u in ins))]
        ds = []
        for r in range(1, len(ins) + 1 if self._second_order else 2):
            for moving in itertools.combinations(ins, r):
                value = sum((self.D(u) if u in moving else self.X(u) for u in ins), ZERO)
                text = " + ".join(f"{'d' if u in moving else 'x'}({u})" for u in ins)
                deps = tuple(("d" if u in moving else "x", u) for u in ins)
                ds.append(Term(value, text, R.F_ELEM, deps))
        return xs, self._tag_param_inputs(node, ds)

    def _tag_param_inputs(self, node, ds):
        """A bare parameter's own update is the term where only it moves."""
        out = []
        for t in ds:
            moving = [u for kind, u in t.deps if kind == "d"]
            if len(moving) == 1 and self.g.nodes[moving[0]].op == "param":
                t = t._replace(tag=self.g.nodes[moving[0]].params["weight"])
            out.append(t)
        return out

    def _merge(self, node):
        self.lineage[node.name] = frozenset().union(*(self.lineage[u] for u in node.inputs))
        self.trained[node.name] = any(self.trained[u] for u in node.inputs)

    def _fwd_scale(self, node):
        (u,) = node.inputs
        slot = node.attrs["slot"]
        if "fixed" in node.attrs:
            s = node.attrs["fixed"]
            self.steps[("s", slot)] = Step(("s", slot), s, "fixed in the spec", "fixed multiplier")
        else:
            s = self.unknown("s", slot)
        self.lineage[node.name], self.trained[node.name] = self.lineage[u], self.trained[u]
        fact = R.F_SCALE.format(slot=slot)
        deps = (("s", slot),)
        return ([Term(self.X(u) + s, f"x({u}) + s[{slot}]", fact, (("x", u), *deps))],
                [Term(self.D(u) + s, f"d({u}) + s[{slot}]", fact, (("d", u), *deps))])

    def _fwd_rmsnorm(self, node):
        (u,) = node.inputs
        over = node.attrs["over"]
        fact = R.F_NORM.format(dims=fmt_dims(over))
        rel, rel_text = self._cap(self.D(u) - self.X(u), f"d({u}) - x({u})")
        xs = [Term(ZERO, "0", fact, (("x", u),))]
        ds = [Term(rel, rel_text, fact, (("d", u), ("x", u)))]
        lineage = set(self.lineage[u])
        trained = self.trained[u]
        if "gain" in node.params:
            p = node.params["gain"]
            lineage.add(p)
            trained = trained or self.g.params[p].trainable
            b = self.beta(p)
            xs = [Term(-b, f"-beta[{p}]", fact, (("beta", p),))]
            ds = [Term(rel - b, f"{rel_text} - beta[{p}]", fact, (("d", u), ("x", u), ("beta", p)))]
            if self.g.params[p].trainable:
                ds.append(Term(-self.rho(p), f"-rho[{p}]", R.F_ELEM, (("rho", p),), tag=p))
        if "bias" in node.params:
            p = node.params["bias"]
            lineage.add(p)
            xs.append(Term(-self.beta(p), f"-beta[{p}]", R.F_SUM, (("beta", p),)))
            if self.g.params[p].trainable:
                ds.append(Term(-self.rho(p), f"-rho[{p}]", R.F_SUM, (("rho", p),), tag=p))
        self.lineage[node.name], self.trained[node.name] = frozenset(lineage), trained
        return xs, ds

    _fwd_layernorm = _fwd_rmsnorm

    def _fwd_l2norm(self, node):
        (u,) = node.inputs
        over = node.attrs["over"]
        scale = -self.e(over) / 2
        fact = R.F_L2.format(dims=fmt_dims(over), e=self.e(over))
        self.lineage[node.name], self.trained[node.name] = self.lineage[u], self.trained[u]
        rel, text = self._cap(self.D(u) - self.X(u), f"d({u}) - x({u})")
        return ([Term(scale, f"{scale}", fact, (("x", u),))],
                [Term(rel + scale, f"{text} + {scale}", fact, (("d", u), ("x", u)))])

    def _contract(self, u, v, over):
        """Terms for a bilinear contraction of u and v over `over`, at init and after a step."""
        e_c = self.e(over)
        dims = fmt_dims(over)
        corr = bool(self.lineage[u] & self.lineage[v])
        g0 = e_c if corr else e_c / 2
        f0 = (R.F_LLN if corr else R.F_CLT).format(dims=dims, e=e_c)
        xs = [Term(self.X(u) + self.X(v) + g0, f"x({u}) + x({v}) + {g0}", f0, (("x", u), ("x", v)))]
        ds = []
        for a, b in ((u, v), (v, u)):
            pen = self._weight_penalty(b, over)
            gain = max(e_c / 2, e_c - pen)
            ds += [Term(self.A(a) + self.X(b) + gain, f"a({a}) + x({b}) + {gain}",
                        R.F_DU_V.format(dims=dims, p=pen), (("a", a), ("x", b))),
                   Term(self.D(a) + self.X(b) + g0, f"d({a}) + x({b}) + {g0}", f0, (("d", a), ("x", b)))]
            if self._second_order:
                ds.append(Term(self.A(a) + self.D(b) + e_c, f"a({a}) + d({b}) + {e_c}",
                               R.F_DU_V.format(dims=dims, p=0), (("a", a), ("d", b))))
        if self._second_order:
            ds.append(Term(self.D(u) + self.D(v) + g0, f"d({u}) + d({v}) + {g0}", f0, (("d", u), ("d", v))))
        return xs, ds

    def _weight_penalty(self, name, over):
        """A random weight matrix W spreads a correlated change over its other dims: W W^T loses e_other/2."""
        node = self.g.nodes[name]
        if node.op != "param":
            return ZERO
        return self.e([d for d in node.dims if d not in over]) / 2

    def _fwd_dot(self, node):
        u, v = node.inputs
        self._merge(node)
        return self._contract(u, v, node.attrs["over"])

    def _fwd_softmax(self, node):
        (u,) = node.inputs
        self.lineage[node.name], self.trained[node.name] = self.lineage[u], self.trained[u]
        s = self._saturation(self.X(u))
        if s is not None:
            fact = R.F_SATURATED.format(fn="softmax", s=s)
            return ([Term(ZERO, "0", fact, (("x", u),))],
                    [Term(*self._saturated_change(s, self.D(u), f"d({u})"), fact, (("d", u),))])
        return ([Term(ZERO, "0", R.F_SOFTMAX, (("x", u),))],
                [Term(*self._cap(self.D(u), f"d({u})"), R.F_SOFTMAX, (("d", u),))])

    def _fwd_mix(self, node):
        return self._fwd_mul(node)

    def _fwd_delta_rule(self, node):
        q, k, v, alpha, beta = node.inputs
        key = node.attrs["key"]
        e_k = self.e([key])
        X, D, A = self.X, self.D, self.A
        self.lineage[node.name] = self.lineage[v] | self.lineage[beta] | self.lineage[alpha]
        self.trained[node.name] = any(self.trained[u] for u in node.inputs)
        # Assumptions the recurrence's order relies on, checked here and reported if they fail.
        erase = X(beta) + 2 * X(k) + e_k
        self._assume(node.name, "recurrence-contraction", erase,
                     f"beta ||k||^2 = n^({erase}) must stay O(1) so that I - beta k k^T does not expand")
        self._assume(node.name, "bounded-decay", X(alpha), f"decay alpha = n^({X(alpha)}) must be O(1)")
        xs_ = X(beta) + X(v) + X(k)
        self.x[f"{node.name}.state"] = xs_
        self.steps[("x", f"{node.name}.state")] = Step(
            ("x", f"{node.name}.state"), xs_, f"x({beta}) + x({v}) + x({k})", R.F_WRITE,
            (("x", beta), ("x", v), ("x", k)))
        state = ("x", f"{node.name}.state")
        corr = bool(self.lineage[q] & self.lineage[k])
        g0 = e_k if corr else e_k / 2
        f0 = (R.F_LLN if corr else R.F_CLT).format(dims=f"({key})", e=e_k)
        lln = R.F_DU_V.format(dims=f"({key})", p=0)
        xs = [Term(xs_ + X(q) + g0, f"x(state) + x({q}) + {g0}  [o = S q]", f0, (state, ("x", q)))]
        ds = [
            Term(D(beta) + X(v) + X(k) + X(q) + g0, f"d({beta}) + x({v}) + x({k}) + x({q}) + {g0}", f0,
                 (("d", beta), ("x", v), ("x", k), ("x", q))),
            Term(X(beta) + D(v) + X(k) + X(q) + g0, f"x({beta}) + d({v}) + x({k}) + x({q}) + {g0}", f0,
                 (("x", beta), ("d", v), ("x", k), ("x", q))),
            Term(D(alpha) + xs_ + X(q) + g0, f"d({alpha}) + x(state) + x({q}) + {g0}", f0,
                 (("d", alpha), state, ("x", q))),
            # the keys' and queries' aligned changes are built from gradients through S q: correlated
            Term(X(beta) + X(v) + A(k) + X(q) + e_k, f"x({beta}) + x({v}) + a({k}) + x({q}) + {e_k}", lln,
                 (("x", beta), ("x", v), ("a", k), ("x", q))),
            Term(X(beta) + X(v) + D(k) + X(q) + g0, f"x({beta}) + x({v}) + d({k}) + x({q}) + {g0}", f0,
                 (("x", beta), ("x", v), ("d", k), ("x", q))),
            Term(xs_ + A(q) + e_k, f"x(state) + a({q}) + {e_k}", lln, (state, ("a", q))),
            Term(xs_ + D(q) + g0, f"x(state) + d({q}) + {g0}", f0, (state, ("d", q))),
        ]
        if not self._second_order:
            return xs, ds
        ds += [
            Term(X(beta) + X(v) + A(k) + D(q) + e_k, f"x({beta}) + x({v}) + a({k}) + d({q}) + {e_k}", lln,
                 (("x", beta), ("x", v), ("a", k), ("d", q))),
            Term(X(beta) + X(v) + D(k) + A(q) + e_k, f"x({beta}) + x({v}) + d({k}) + a({q}) + {e_k}", lln,
                 (("x", beta), ("x", v), ("d", k), ("a", q))),
            Term(X(beta) + X(v) + D(k) + D(q) + g0, f"x({beta}) + x({v}) + d({k}) + d({q}) + {g0}", f0,
                 (("x", beta), ("x", v), ("d", k), ("d", q))),
        ]
        return xs, ds

    def _assume(self, node, name, exponent, text):
        if self._mode != "d":
            return
        self.assumptions.append((node, name, self._subs(exponent), text))

    def _fwd_cross_entropy(self, node):
        self.lineage[node.name], self.trained[node.name] = frozenset(), self.trained[node.inputs[0]]
        return [Term(ZERO, "loss", R.F_LOSS)], []

    # ---- pass 2: backward ----------------------------------------------------------------------------
    def backward(self, after: bool = False):
        """dL/d(node) sizes at init, or (after=True) once a step has been taken: then every operand is
        its init value plus its change, and a change met in a contraction is correlated with the gradient
        it was built from (LLN). SGD's learning rates follow the gradient during training, not the
        transient at init (e.g. attention logits' gradient is CLT-small at init only)."""
        self.after = after
        tag = "g1" if after else "g"
        grad, pgrad = ({}, {})
        acc: dict[str, list[Term]] = {name: [] for name in self.g.order}
        pacc: dict[str, list[Term]] = {p: [] for p in self.g.params}
        for name in reversed(self.g.order):
            node = self.g.nodes[name]
            if node.op == "cross_entropy":
                grad[name] = ZERO
                self.steps[(tag, name)] = Step((tag, name), ZERO, "dL/dL = 1", "the loss itself")
                acc[node.inputs[0]].append(Term(ZERO, "softmax - onehot", R.F_LOSS, ((tag, name),)))
                continue
            terms = acc[name]
            gv = grad[name] = emax([t.value for t in terms])
            best = _argmax(terms)
            if best is None:
                self.steps[(tag, name)] = Step((tag, name), NEG_INF, "no path to the loss", "unused")
                continue
            self.steps[(tag, name)] = Step((tag, name), gv, best.text, best.fact, best.deps)
            if node.op == "param":
                pacc[node.params["weight"]].append(Term(gv, f"{tag}({name})", "dL/dp at the node exposing p",
                                                        ((tag, name),)))
            getattr(self, f"_bwd_{node.op}", self._bwd_none)(node, gv, acc, pacc)
        if not after:
            for name, contrib in self.shares.items():
                total = grad.get(self.g.nodes[name].inputs[0], NEG_INF)
                self.shares[name] = emin(contrib - total, ZERO) if total is not NEG_INF else ZERO
        for p, terms in pacc.items():
            pgrad[p] = emax([t.value for t in terms])
            best = _argmax(terms)
            if best is not None:
                key = ("pgrad1" if after else "grad", p)
                self.steps[key] = Step(key, pgrad[p], best.text, best.fact, best.deps)
        if after:
            self.grad1, self.pgrad1 = grad, pgrad
        else:
            self.grad, self.pgrad = grad, pgrad

    def _g(self, node):
        return ("g1" if self.after else "g", node.name)

    def _times(self, u, e_sum, what=""):
        """Options for the gradient times operand u, summed over dims of total exponent e_sum: the init
        value (independent of the gradient: CLT) and, after a step, u's change: its aligned part is built
        from this gradient (correlated, LLN), the rest is not (CLT)."""
        fact = R.F_CLT.format(dims=what or "the summed dims", e=e_sum) if e_sum else R.F_ELEM
        opts = [(self.X(u) + e_sum / 2, f"x({u}) + {e_sum / 2}" if e_sum else f"x({u})", fact, ("x", u))]
        if self.after and self.D(u) is not NEG_INF:
            opts.append((self.D(u) + e_sum / 2, f"d({u}) + {e_sum / 2}" if e_sum else f"d({u})", fact, ("d", u)))
        if self.after and self.A(u) is not NEG_INF and e_sum:
            opts.append((self.A(u) + e_sum, f"a({u}) + {e_sum}",
                         R.F_LLN.format(dims=what or "the summed dims", e=e_sum) + " [the aligned change is built "
                         "from this gradient]", ("a", u)))
        return opts

    def _scale_of(self, u):
        """An input's scale when a normalisation divides by it: at init, or after a step."""
        return emax([self.X(u), self.D(u)]) if self.after else self.X(u)

    def _bwd_none(self, node, gv, acc, pacc):
        pass

    def _bwd_linear(self, node, gv, acc, pacc):
        (u,) = node.inputs
        p = node.params["weight"]
        out = node.attrs["out"] if node.op == "linear" else node.dims
        e_o = self.e(out)
        g = self._g(node)
        b = self.value_of(("beta", p))
        acc[u].append(Term(gv - b + e_o / 2, f"{g[0]}({node.name}) - beta[{p}] + {e_o / 2}",
                           R.F_CLT.format(dims=fmt_dims(out), e=e_o) + " [W^T g]", (g, ("beta", p))))
        if not self.after:
            self.shares[node.name] = gv - b + e_o / 2  # made relative to the input's total gradient below
        if self.after and self.g.params[p].trainable:
            acc[u].append(Term(gv - self.value_of(("rho", p)) + e_o, f"{g[0]}({node.name}) - rho[{p}] + {e_o}",
                               R.F_LLN.format(dims=fmt_dims(out), e=e_o) + " [Delta W^T g: Delta W's rows are "
                               "built from the gradient]", (g, ("rho", p))))
        for value, text, fact, dep in self._times(u, ZERO):
            pacc[p].append(Term(gv + value, f"{g[0]}({node.name}) + {text}",
                                "dL/dW = g x^T summed over the finite tokens", (g, dep)))
        if "bias" in node.params:
            pacc[node.params["bias"]].append(Term(gv, f"{g[0]}({node.name})", "dL/db = g summed over tokens", (g,)))

    _bwd_embedding = _bwd_linear

    def _bwd_conv1d(self, node, gv, acc, pacc):
        (u,) = node.inputs
        p = node.params["weight"]
        g = self._g(node)
        acc[u].append(Term(gv - self.value_of(("beta", p)), f"{g[0]}({node.name}) - beta[{p}]",
                           "depthwise convolution: finite kernel", (g, ("beta", p))))
        for value, text, fact, dep in self._times(u, ZERO):
            pacc[p].append(Term(gv + value, f"{g[0]}({node.name}) + {text}", "dL/dW = g x summed over tokens",
                                (g, dep)))

    def _bwd_unary(self, node, gv, acc, pacc):
        (u,) = node.inputs
        g = self._g(node)
        fn = node.attrs["fn"]
        if fn in ("sigmoid", "tanh") and self._saturated_grad(node, fn, gv, acc):
            return
        acc[u].append(Term(gv, f"{g[0]}({node.name})", f"{fn}: bounded Theta(1) derivative", (g,)))

    def _bwd_add(self, node, gv, acc, pacc):
        g = self._g(node)
        for u in node.inputs:
            self._to_input(node, u, [(gv, f"{g[0]}({node.name})", R.F_SUM, (g,))], acc, pacc)

    def _bwd_mul(self, node, gv, acc, pacc):
        g = self._g(node)
        for u in node.inputs:
            missing = [d for d in node.dims if d not in self.g.nodes[u].dims]
            e_m = self.e(missing)
            options = [(gv, f"{g[0]}({node.name})", R.F_ELEM, (g,))]
            for w in node.inputs:
                if w == u:
                    continue
                options = [(v0 + v1, f"{t0} + {t1}", f1 if e_m else f0, d0 + (d1,))
                           for v0, t0, f0, d0 in options for v1, t1, f1, d1 in self._times(w, e_m, fmt_dims(missing))]
            self._to_input(node, u, options, acc, pacc)

    _bwd_mix = _bwd_mul

    def _to_input(self, node, u, options, acc, pacc):
        """Route gradient terms to input u. A sum over broadcast
        dims that no operand carries (e.g. in `add`) is a CLT sum of independent terms."""
        missing = [d for d in node.dims if d not in self.g.nodes[u].dims]
        e_m = self.e(missing)
        is_add = node.op == "add"
        for value, text, fact, deps in options:
            if is_add and missing:
                value, text = value + e_m / 2, f"{text} + {e_m / 2}"
                fact = R.F_BCAST.format(dims=fmt_dims(missing), e=e_m)
            acc[u].append(Term(value, text, fact, deps))

    def _bwd_scale(self, node, gv, acc, pacc):
        (u,) = node.inputs
        slot = node.attrs["slot"]
        s = node.attrs["fixed"] if "fixed" in node.attrs else self.value_of(("s", slot))
        g = self._g(node)
        acc[u].append(Term(gv + s, f"{g[0]}({node.name}) + s[{slot}]", R.F_SCALE.format(slot=slot), (g, ("s", slot))))

    def _bwd_rmsnorm(self, node, gv, acc, pacc):
        (u,) = node.inputs
        over = node.attrs["over"]
        g = self._g(node)
        b = self.value_of(("beta", node.params["gain"])) if "gain" in node.params else ZERO
        acc[u].append(Term(gv - b - self._scale_of(u), f"{g[0]}({node.name}) - beta[gain] - scale({u})",
                           R.F_NORM.format(dims=fmt_dims(over)), (g, ("x", u))))
        shared = [d for d in node.dims if d not in over]
        e_s = self.e(shared)
        for role in ("gain", "bias"):
            if role in node.params:
                fact = "dL/dgain = g * normalised input, summed over tokens"
                if shared:
                    fact += " and " + R.F_BCAST.format(dims=fmt_dims(shared), e=e_s)
                pacc[node.params[role]].append(Term(gv + e_s / 2, f"{g[0]}({node.name}) + {e_s / 2}", fact, (g,)))
                if self.after and shared and self.trained[u]:
                    rel = emin(self.A(u) - self.X(u), ZERO)
                    pacc[node.params[role]].append(Term(
                        gv + rel + e_s, f"{g[0]}({node.name}) + a(normalised {u}) + {e_s}",
                        R.F_LLN.format(dims=fmt_dims(shared), e=e_s) + " [the normalised input's aligned change "
                        "is built from this gradient]", (g, ("a", u))))

    _bwd_layernorm = _bwd_rmsnorm

    def _bwd_l2norm(self, node, gv, acc, pacc):
        (u,) = node.inputs
        over = node.attrs["over"]
        e = self.e(over)
        g = self._g(node)
        acc[u].append(Term(gv - self._scale_of(u) - e / 2, f"{g[0]}({node.name}) - scale({u}) - {e / 2}",
                           R.F_L2.format(dims=fmt_dims(over), e=e), (g, ("x", u))))

    def _bwd_dot(self, node, gv, acc, pacc):
        u, v = node.inputs
        over = node.attrs["over"]
        g = self._g(node)
        for a, b in ((u, v), (v, u)):
            free = [d for d in self.g.nodes[b].dims if d not in over and d not in self.g.nodes[a].dims]
            options = [(gv + val, f"{g[0]}({node.name}) + {text}", fact, (g, dep))
                       for val, text, fact, dep in self._times(b, self.e(free), fmt_dims(free))]
            self._to_input(node, a, options, acc, pacc)

    def _bwd_softmax(self, node, gv, acc, pacc):
        (u,) = node.inputs
        g = self._g(node)
        if self._saturated_grad(node, "softmax", gv, acc):
            return
        acc[u].append(Term(gv, f"{g[0]}({node.name})", R.F_SOFTMAX, (g,)))

    def _saturated_grad(self, node, fn, gv, acc) -> bool:
        """The gradient through a saturated nonlinearity (F_SATURATED), if its input grows with width: at
        init, or after a step with the changed input's size (its init size where that is not known yet)."""
        (u,) = node.inputs
        size = self._scale_of(u)
        s = self._saturation(size if size.is_number else self.X(u))
        if s is None:
            return False
        g = self._g(node)
        fact = R.F_SATURATED.format(fn=fn, s=s)
        acc[u].append(Term(gv - s / 2, f"{g[0]}({node.name}) - {s / 2}", fact, (g,)))
        return True

    def _bwd_delta_rule(self, node, gv, acc, pacc):
        q, k, v, alpha, beta = node.inputs
        e_k, e_v = self.e([node.attrs["key"]]), self.e([node.attrs["value"]])
        X, D, A = self.X, self.D, self.A
        g = self._g(node)
        st = f"{node.name}.state"
        xs_ = self.x[st]

        def state_change(D):  # the state's change: its write terms move with beta, v, k, its decay with alpha
            return emax([D(beta) + X(v) + X(k), X(beta) + D(v) + X(k), X(beta) + X(v) + D(k), D(alpha) + xs_])

        gs = gv + (emax([X(q), D(q)]) if self.after else X(q))
        gkey = (g[0], st)
        self.steps[gkey] = Step(gkey, gs, f"{g[0]}({node.name}) + x({q})", R.F_STATE_GRAD, (g, ("x", q)))
        both = "contraction over (value, key) of independent factors: plus e_v/2 + e_k/2 (CLT)"
        lln = " [after a step the changes are built from this gradient: LLN]"
        after = self.after

        def opts(base, init_extra, changed, e_corr, text, fact):
            """At init, and after a step: the operand's aligned change (LLN) and its whole change (CLT)."""
            out = [Term(base + init_extra, text, fact, (gkey,))]
            if after:
                aligned, whole = changed(A), changed(D)
                out += [Term(base + aligned + e_corr, text + " (aligned change)", fact + lln, (gkey,)),
                        Term(base + whole + e_corr / 2, text + " (changed operand)", fact, (gkey,))]
            return out

        acc[q] += opts(gv, xs_ + e_v / 2, state_change, e_v, f"{g[0]}({node.name}) + x(state) + {e_v / 2}",
                       R.F_CLT.format(dims="(value)", e=e_v) + " [S^T g_o]")
        acc[v] += opts(gs + X(beta), X(k) + e_k / 2, lambda D: D(k), e_k,
                       f"g(state) + x({beta}) + x({k}) + {e_k / 2}", R.F_CLT.format(dims="(key)", e=e_k) + " [beta g_S k]")
        write_k = X(beta) + X(v) + e_v / 2
        erase_k = X(beta) + xs_ + X(k) + e_v / 2 + e_k / 2
        acc[k] += opts(gs, emax([write_k, erase_k]), lambda D: X(beta) + D(v), e_v,
                       f"max(g(state) + x({beta}) + x({v}) + {e_v / 2}, erase term)",
                       R.F_CLT.format(dims="(value)", e=e_v) + " [beta g_S^T v, and the erase term]")
        acc[beta] += opts(gs, X(v) + X(k) + e_v / 2 + e_k / 2, lambda D: emax([D(v) + X(k), X(v) + D(k)]),
                          e_v + e_k, f"g(state) + x({v}) + x({k}) + {e_v / 2} + {e_k / 2}", both + " [<g_S, v k^T>]")
        acc[alpha] += opts(gs, xs_ + e_v / 2 + e_k / 2, state_change, e_v + e_k,
                           f"g(state) + x(state) + {e_v / 2} + {e_k / 2}", both + " [<g_S, S>]")


    # ---- run -------------------------------------------------------------------------------------------
    def run(self):
        self.run_init()
        self.backward(after=True)
        self._learning_rates()
        return self

    def run_init(self):
        """Forward pass, the remaining unknowns, and the gradients at init (no learning rates)."""
        self.forward()
        for u in self.unknowns.values():
            if u.solved is None:
                self._solve(u)
        self.backward()
        return self

    def _learning_rates(self):
        for p, param in self.g.params.items():
            if not param.trainable:
                continue
            rho = self.value_of(("rho", p))
            grad = self.pgrad1.get(p, NEG_INF)
            # The invariant learning-rate combination K = a_coef a + c (+ b_coef b): rho + grad for SGD.
            k = rho + grad if self.opt.grad_coef and grad is not NEG_INF else rho
            self.steps[("lr", p)] = Step(
                ("lr", p), k, f"rho[{p}] + grad[{p}] (during training)" if self.opt.grad_coef else f"rho[{p}]",
                self.opt.rule, (("rho", p), ("pgrad1", p)) if self.opt.grad_coef else (("rho", p),))


def _argmax(terms):
    best = None
    for t in terms:
        if t.value is NEG_INF:
            continue
        if best is None or (t.value.is_number and best.value.is_number and t.value > best.value):
            best = t
    return best


def _pieces(expr):
    """Affine pieces whose max bounds `expr` from above (exact for sums and maxes; a min is bounded by its
    numeric argument)."""
    if expr is NEG_INF:
        return []
    if isinstance(expr, sp.Max):
        return [p for a in expr.args for p in _pieces(a)]
    if isinstance(expr, sp.Min):
        nums = [a for a in expr.args if a.is_number]
        return [min(nums)] if nums else _pieces(expr.args[0])
    if isinstance(expr, sp.Add) and any(isinstance(a, (sp.Max, sp.Min)) for a in expr.args):
        parts = [_pieces(a) for a in expr.args]
        return [sp.Add(*combo) for combo in itertools.product(*parts)]
    return [expr]


__all__ = ["Engine", "Step", "Unknown", "Violation", "UnsatisfiableError", "HALF"]
