"""`derive(graph, optimizer, parametrization)`: the rules, their conventions, and the desiderata that fail."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from mudelta.graphs.ir import Graph, Param, suggest

from .desiderata import check
from .engine import Engine, Violation
from .optimizers import Optimizer, get_optimizer
from .parametrizations import CONVENTIONS, category, given_values
from .rules import NEG_INF


@dataclass
class ParamRule:
    name: str
    shape: list[str]
    category: str  # input | hidden | output | scalar
    beta: sp.Rational  # a + b: W's entries are n^-beta at init
    rho: sp.Rational  # Delta W's entries are n^-rho after one step
    grad: sp.Expr  # dL/dW's entries are n^grad at init
    lr: sp.Rational  # the optimizer's invariant a_coef a + c (+ b_coef b)
    a: sp.Rational
    b: sp.Rational
    c: sp.Rational
    max_stable_c: sp.Rational | None = None  # evaluation mode: the smallest c (largest LR) that stays bounded
    eps: sp.Rational | None = None  # Adam: eps * n^eps keeps its ratio to the stored parameter's gradient

    @property
    def init_std(self) -> str:
        return power(-self.b)

    @property
    def multiplier(self) -> str:
        return power(-self.a)

    @property
    def lr_scale(self) -> str:
        return power(-self.c)

    @property
    def eps_scale(self) -> str:
        return "-" if self.eps is None else power(self.eps)

    @property
    def wd_scale(self) -> str:
        """Decoupled weight decay multiplier keeping lr * wd (the per-step shrink) width-independent."""
        return power(self.c)


def power(e) -> str:
    e = sp.Rational(e)
    if e == 0:
        return "1"
    if e == 1:
        return "n"
    return f"n**({e})" if e.q != 1 or e < 0 else f"n**{e}"


@dataclass
class Derivation:
    graph: Graph
    optimizer: Optimizer
    parametrization: str
    convention: str
    engine: Engine
    params: list[ParamRule]
    slots: dict[str, sp.Rational]
    violations: list[Violation]
    norm_eps: dict[str, sp.Rational] = field(default_factory=dict)  # norm node -> eps * n^e (see derive())

    @property
    def spec(self) -> str:
        return self.graph.name

    def param(self, name: str) -> ParamRule:
        for rule in self.params:
            if rule.name == name:
                return rule
        raise KeyError(f"no parameter {name!r} in {self.spec}{suggest(name, [r.name for r in self.params])}")

    def invariants(self, name: str) -> tuple[sp.Rational, sp.Rational]:
        """(a + b, the optimizer's LR invariant): unchanged by the abc-symmetry."""
        rule = self.param(name)
        return rule.a + rule.b, self.optimizer.a_coef * rule.a + self.optimizer.b_coef * rule.b + rule.c

    def to_dict(self) -> dict:
        e = self.engine
        nodes = []
        for name in self.graph.order:
            nodes.append({"name": name, "init": _s(e.X(name)), "grad": _s(e.grad.get(name, NEG_INF)),
                          "update": _s(e.D(name))})
        return {
            "spec": self.spec,
            "optimizer": self.optimizer.name,
            "parametrization": self.parametrization,
            "convention": self.convention,
            "parameters": [
                {"name": r.name, "shape": r.shape, "category": r.category, "a": _s(r.a), "b": _s(r.b),
                 "c": _s(r.c), "init_std": r.init_std, "multiplier": r.multiplier, "lr_scale": r.lr_scale,
                 **({"wd_scale": r.wd_scale} if self.optimizer.decoupled_weight_decay else {}),
                 **({"eps_scale": r.eps_scale} if r.eps is not None else {}),
                 **({"max_stable_c": _s(r.max_stable_c)} if r.max_stable_c is not None else {})}
                for r in self.params
            ],
            "multipliers": [{"name": s, "exponent": _s(v), "multiplier": power(v)} for s, v in self.slots.items()],
            "norm_eps": [{"node": k, "exponent": _s(v), "scale": power(v)} for k, v in self.norm_eps.items()],
            "nodes": nodes,
            "violations": [{"desideratum": v.desideratum, "node": v.node, "exponent": _s(v.exponent),
                            "message": v.message} for v in self.violations],
        }


def _s(value) -> str:
    if value is None:
        return "null"
    if value is NEG_INF:
        return "-oo"
    return str(sp.nsimplify(value))


def derive(graph: Graph, optimizer: str | Optimizer = "adam", parametrization: str | dict = "mup",
           convention: str = "tp5") -> Derivation:
    """Derive (parametrization="mup") or evaluate (sp, ntk, mf, a YAML/JSON file of exponents, or a mapping
    in that file's format) the
    width-scaling rules of every parameter of `graph` under `optimizer`."""
    opt = get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}{suggest(convention, CONVENTIONS)}; "
                         f"choose from {', '.join(CONVENTIONS)}")
    if parametrization == "mup":
        engine = Engine(graph, opt).run()
        abc = None
    else:
        abc, slots = given_values(graph, opt, parametrization)
        given = {("beta", p): a + b for p, (a, b, c) in abc.items()} | {("s", s): v for s, v in slots.items()}
        # A first pass measures the gradients at init (they depend on the init exponents only): SGD's first
        # step is as large as they are, and each linear layer's share of the gradient at its input says how
        # much of that input's change lies along it.
        if not opt.grad_coef:
            for p, (a, b, c) in abc.items():
                given[("rho", p)] = opt.rho(a, b, c, 0)
        first = Engine(graph, opt, given).run_init()
        if opt.grad_coef:
            for p, (a, b, c) in abc.items():
                grad = first.pgrad.get(p, NEG_INF)
                given[("rho", p)] = None if grad is NEG_INF else opt.rho(a, b, c, grad)
        engine = Engine(graph, opt, given, shares=first.shares).run()
    rules = []
    for p in graph.params.values():
        if not p.trainable:
            continue
        rules.append(_rule(engine, opt, p, convention, abc))
    slots = {key[1]: engine.value_of(key) for key in engine.unknowns if key[0] == "s"}
    for node in graph.nodes.values():
        if node.op == "scale" and "fixed" in node.attrs:
            slots[node.attrs["slot"]] = node.attrs["fixed"]
    label = "given" if isinstance(parametrization, dict) else str(parametrization)
    return Derivation(graph, opt, label, convention, engine, rules, slots, check(engine),
                      _norm_eps(engine, derived=abc is None))


def _norm_eps(engine: Engine, derived: bool) -> dict[str, sp.Rational]:
    """A norm divides by sqrt(mean(u^2) + eps). Its input u is smallest at init (it only grows in training),
    n^(2 x(u)) in mean square, so a derived rule scales eps by n^(2 x(u)): eps keeps its share of mean(u^2) at
    the base width, and the norm stays as scale-invariant as it is there. A fixed eps against an input that
    shrinks with width turns the norm into a scale as the width grows. An input that does not shrink keeps eps
    fixed (its share can only fall), and so does a given parametrization."""
    out = {}
    for name in engine.g.order:
        node = engine.g.nodes[name]
        if node.op in ("rmsnorm", "layernorm"):
            x = engine.X(node.inputs[0])
            out[name] = sp.Rational(2 * x) if derived and x is not NEG_INF and x < 0 else sp.Integer(0)
    return out


def _rule(engine: Engine, opt: Optimizer, p: Param, convention: str, abc) -> ParamRule:
    beta = engine.value_of(("beta", p.name))
    rho = engine.value_of(("rho", p.name))
    # muP rules follow the gradient during training; a given parametrization is judged on its first step
    grad = (engine.pgrad1 if abc is None else engine.pgrad).get(p.name, NEG_INF)
    lr = engine.steps[("lr", p.name)].value
    cat = category(engine.g, p)
    if abc is not None:
        a, b, c = abc[p.name]
        limit = engine.unknowns[("rho", p.name)].solved
        max_c = None
        if limit is not None and (grad is not NEG_INF or not opt.grad_coef):
            max_c = opt.c_for(limit, a, b, grad if opt.grad_coef else 0)
    else:
        a, b, c = CONVENTIONS[convention](opt, cat, beta, lr)
        max_c = None
    eps = None
    if opt.eps:
        # The stored w = n^a W has gradient entries n^(g - a). A derived rule scales eps with the smaller of the
        # gradient's exponents at init and in training, so that eps stays at least as small against the
        # gradient as at the base width in both (Adam's size-free update assumes it); a given parametrization
        # keeps eps fixed in its own convention (scaled only with the multiplier).
        sizes = [x for x in (grad, engine.pgrad.get(p.name, NEG_INF)) if x is not NEG_INF]
        eps = -a if abc is not None or not sizes else sp.Min(*sizes) - a
    return ParamRule(p.name, _shape(engine.g, p), cat, beta, rho, grad, lr, a, b, c, max_c, eps)


def _shape(graph: Graph, p: Param) -> list[str]:
    if p.fan_in and p.fan_out and len(p.shape) == len(p.fan_in) + len(p.fan_out):
        return ["*".join(p.fan_out), "*".join(p.fan_in)] if p.shape[: len(p.fan_out)] == p.fan_out else list(p.shape)
    return list(p.shape)
