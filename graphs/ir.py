"""The architecture IR: named dims with width exponents, parameters, typed ops on a networkx DAG.

A graph says what is computed, never how it scales: every scaling fact is derived by `mudelta.derive`
from the op types and the dims below.

Dims.  Every tensor dimension has a name and a size ``coef * n**exponent`` in the single width symbol n:
``d_model ~ n`` (exponent 1), ``d_k ~ n/8`` (exponent 1, coef 1/8), ``vocab = 32000`` (exponent 0).

Tensors.  A node's value is a tensor over its named dims, per token: the batch and sequence axes are
implicit and finite, so they never change an exponent.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import re
from dataclasses import dataclass, field

import networkx as nx
import sympy as sp

N = sp.Symbol("n", positive=True)

# op name -> (min inputs, max inputs or None). The shape rules live in GraphBuilder methods.
OPS: dict[str, tuple[int, int | None]] = {
    "input": (0, 0),
    "param": (0, 0),
    "embedding": (1, 1),
    "linear": (1, 1),
    "conv1d": (1, 1),
    "unary": (1, 1),
    "add": (2, None),
    "mul": (2, None),
    "scale": (1, 1),
    "rmsnorm": (1, 1),
    "layernorm": (1, 1),
    "l2norm": (1, 1),
    "dot": (2, 2),
    "softmax": (1, 1),
    "mix": (2, 2),
    "delta_rule": (5, 5),
    "cross_entropy": (1, 1),
}
UNARY_FNS = ("identity", "neg", "silu", "gelu", "relu", "sigmoid", "tanh", "softplus", "exp")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """A malformed architecture: names the problem and where it is (spec path and line, or node)."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def check_identifier(name: str, what: str, where: str | None = None, dotted: bool = False) -> str:
    """Names reach generated code; only plain identifiers (dotted paths for parameters) pass."""
    parts = name.split(".") if dotted else [name]
    for part in parts:
        if dotted and part.isdigit():
            continue
        if not isinstance(part, str) or not _IDENT.match(part) or keyword.iskeyword(part):
            raise SpecError(
                f"invalid {what} name {name!r}: use letters, digits and '_' "
                f"{'(dot-separated) ' if dotted else ''}starting with a letter",
                where,
            )
    return name


@dataclass(frozen=True)
class Dim:
    name: str
    exponent: sp.Rational  # size ~ coef * n**exponent
    coef: sp.Rational = sp.Integer(1)

    @property
    def scales(self) -> bool:
        return self.exponent != 0

    def size(self, n: int) -> int:
        return max(1, int(round(float(self.coef * sp.Integer(n) ** self.exponent))))

    def __str__(self) -> str:
        if not self.scales:
            return f"{self.name}={self.coef}"
        return f"{self.name}~{self.coef * N**self.exponent}"


_BINARY = {ast.Add: sp.Add, ast.Sub: lambda a, b: a - b, ast.Mult: sp.Mul, ast.Div: lambda a, b: a / b,
           ast.Pow: sp.Pow}


def arithmetic(value, symbols: dict, what: str, where: str | None = None) -> sp.Expr:
    """A number or an arithmetic expression (+ - * / ** or ^, sqrt, parentheses) over the named symbols, as an
    exact SymPy expression. Parsed from Python's syntax tree, never evaluated: anything else is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(f"{what}: expected a number or an expression such as n/8, got {value!r}", where)

    def build(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if not math.isfinite(node.value) or abs(node.value) > 1e12:
                raise SpecError(f"{what}: {value!r}: the number {node.value!r} is out of range", where)
            return sp.Rational(repr(node.value)) if isinstance(node.value, float) else sp.Integer(node.value)
        if isinstance(node, ast.Name) and node.id in symbols:
            return symbols[node.id]
        if isinstance(node, ast.Name):
            known = ", ".join(sorted(symbols)) or "none"
            raise SpecError(f"{what}: unknown name {node.id!r} in {value!r} (known: {known})", where)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Pow) and not (right.is_Number and abs(right) <= 64):
                raise SpecError(f"{what}: {value!r}: an exponent must be a number of size <= 64", where)
            out = _BINARY[type(node.op)](left, right)
            if out.is_Number and out.is_finite and abs(out) > 1e12:
                raise SpecError(f"{what}: {value!r}: a number in it is out of range", where)
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt" \
                and len(node.args) == 1 and not node.keywords:
            return sp.sqrt(build(node.args[0]))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = build(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        raise SpecError(f"{what}: {value!r} is not arithmetic over numbers and {sorted(symbols)}", where)

    if len(str(value)) > 200:
        raise SpecError(f"{what}: {str(value)[:40]!r}...: an expression of at most 200 characters", where)
    try:  # n^2 is n**2 (as sympify read it), with the precedence of a power
        tree = ast.parse(str(value).strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"{what}: cannot parse {value!r} ({exc.msg})", where) from None
    out = build(tree.body)
    if out.has(sp.zoo, sp.nan, sp.oo, -sp.oo, sp.I):
        raise SpecError(f"{what}: {value!r} is not a finite real number or power (a division by 0?)", where)
    return out


def parse_size(name: str, value, where: str | None = None) -> Dim:
    """`32000`, `n`, `n/8`, `2*n`, `n**(1/2)`: a monomial c * n**e with rational c > 0, e >= 0."""
    expr = arithmetic(value, {"n": N}, f"dim {name!r}: size", where)
    coef, e = sp.Integer(1), sp.Integer(0)
    for factor in sp.Mul.make_args(expr):
        base, exp = factor.as_base_exp()
        if base == N and exp.is_Rational:
            e += exp
        elif factor.is_Rational:
            coef *= factor
        else:
            raise SpecError(f"dim {name!r}: size {value!r} is not a monomial c*n**e", where)
    if coef <= 0 or e < 0:
        raise SpecError(f"dim {name!r}: size {value!r} must be positive and not shrink with n", where)
    if e == 0 and not coef.is_Integer:
        raise SpecError(f"dim {name!r}: a fixed size must be a whole number, got {value!r}", where)
    return Dim(name, sp.Rational(e), sp.Rational(coef))


@dataclass
class Param:
    """A trainable tensor. `fan_in` / `fan_out` name its dims by role (the first use decides)."""

    name: str
    shape: tuple[str, ...]
    fan_in: tuple[str, ...] = ()
    fan_out: tuple[str, ...] = ()
    init: str = "normal"  # normal | ones | zeros | custom (the runtime draws custom ones itself)
    std: str | None = None  # a fixed std in the reference implementation (e.g. "0.02"), for `sp`
    trainable: bool = True
    uses: list[str] = field(default_factory=list)  # node names, in insertion order


@dataclass
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    dims: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # role -> param name
    where: str | None = None  # spec location, for errors


class Graph:
    """A validated computation graph. Build it with GraphBuilder (Python) or `load_spec` (YAML)."""

    def __init__(self, name: str, dims: dict[str, Dim], params: dict[str, Param], nodes: dict[str, Node],
                 meta: dict | None = None):
        self.name = name
        self.meta = dict(meta or {})  # builders record {"family": ..., options}: what codegen renders
        self.dims = dims
        self.params = params
        self.nodes = nodes
        self.dag = nx.DiGraph()
        for node in nodes.values():
            self.dag.add_node(node.name)
            for src in node.inputs:
                self.dag.add_edge(src, node.name)
        if not nx.is_directed_acyclic_graph(self.dag):
            cycle = " -> ".join(a for a, _ in nx.find_cycle(self.dag))
            first = nodes[nx.find_cycle(self.dag)[0][0]]
            raise SpecError(f"cycle in the graph: {cycle}", first.where)
        index = {name: i for i, name in enumerate(nodes)}
        self.order = list(nx.lexicographical_topological_sort(self.dag, key=index.__getitem__))
        outputs = [n for n in self.order if nodes[n].op == "cross_entropy"]
        if len(outputs) != 1:
            where = nodes[outputs[1]].where if outputs else None
            raise SpecError(f"graph {name!r} needs exactly one cross_entropy loss node, has {len(outputs)}",
                            where)
        self.loss = outputs[0]
        after = list(self.dag.successors(self.loss))
        if after:
            raise SpecError(f"node {after[0]!r} uses the loss {self.loss!r}; the loss is the graph's last "
                            "node", nodes[after[0]].where)
        feeding = nx.ancestors(self.dag, self.loss) | {self.loss}
        dead = [n for n in self.order if n not in feeding]
        if dead:
            raise SpecError(f"node {dead[0]!r} does not reach the loss (nothing it computes is trained or "
                            f"measured){'; also ' + ', '.join(map(repr, dead[1:4])) if dead[1:] else ''}",
                            nodes[dead[0]].where)
        if not any(p.trainable for p in params.values()):
            raise SpecError(f"graph {name!r} has no trainable parameter: there is nothing to derive")
        if not any(d.scales for d in dims.values()):
            raise SpecError(f"graph {name!r}: no dim grows with the width (give one a size in n, e.g. n/8)")

    def consumers(self, name: str) -> list[str]:
        return list(self.dag.successors(name))

    def exponent(self, dims) -> sp.Rational:
        return sum((self.dims[d].exponent for d in dims), sp.Integer(0))

    def width_dims(self, dims) -> tuple[str, ...]:
        return tuple(d for d in dims if self.dims[d].scales)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, {len(self.params)} params)"


class GraphBuilder:
    """Adds typed ops one at a time, checking names, dims and inputs as it goes."""

    def __init__(self, name: str, meta: dict | None = None):
        self.name = check_identifier(name.replace("-", "_"), "graph")
        self.meta = meta
        self.dims: dict[str, Dim] = {}
        self.params: dict[str, Param] = {}
        self.nodes: dict[str, Node] = {}
        self.where: str | None = None  # set by the spec loader before each op

    # ---- dims and params -------------------------------------------------------------------------
    def dim(self, name: str, size) -> str:
        check_identifier(name, "dim", self.where)
        if name in self.dims:
            raise SpecError(f"duplicate dim {name!r}", self.where)
        self.dims[name] = parse_size(name, size, self.where)
        return name

    def _check_dims(self, dims, what: str, repeats: bool = False) -> tuple[str, ...]:
        if isinstance(dims, str):
            dims = (dims,)
        dims = tuple(dims)
        for d in dims:
            if d not in self.dims:
                close = suggest(d, self.dims)
                raise SpecError(f"{what}: unknown dim {d!r}{close}", self.where)
        if not repeats and len(set(dims)) != len(dims):
            raise SpecError(f"{what}: repeated dim in {list(dims)}", self.where)
        return dims

    def _param(self, name, shape, node: str, fan_in=(), fan_out=(), init="normal", std=None, trainable=True):
        check_identifier(name, "parameter", self.where, dotted=True)
        shape = self._check_dims(shape, f"parameter {name!r}", repeats=True)
        if name in self.params:
            p = self.params[name]
            if p.shape != shape:
                raise SpecError(
                    f"parameter {name!r} is tied to an earlier use with shape {list(p.shape)}, "
                    f"but this use needs {list(shape)}",
                    self.where,
                )
        else:
            if init not in ("normal", "ones", "zeros", "custom"):
                raise SpecError(f"parameter {name!r}: unknown init {init!r}", self.where)
            p = self.params[name] = Param(name, shape, tuple(fan_in), tuple(fan_out), init, std, trainable)
        p.uses.append(node)
        return name

    # ---- nodes ----------------------------------------------------------------------------------
    def _node(self, name, op, inputs, dims, attrs=None, params=None) -> str:
        check_identifier(name, "node", self.where)
        if name in self.nodes:
            raise SpecError(f"duplicate node name {name!r}", self.where)
        lo, hi = OPS[op]
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}"
            raise SpecError(f"node {name!r} ({op}) takes {want} input(s), got {len(inputs)}", self.where)
        for src in inputs:
            if src not in self.nodes:
                raise SpecError(
                    f"node {name!r} ({op}): dangling input {src!r}, no such node{suggest(src, self.nodes)}",
                    self.where,
                )
        self.nodes[name] = Node(name, op, tuple(inputs), tuple(dims), attrs or {}, params or {}, self.where)
        return name

    def dims_of(self, node: str) -> tuple[str, ...]:
        return self.nodes[node].dims

    def input(self, name, dims, kind="tokens"):
        dims = self._check_dims(dims, f"node {name!r}")
        if kind not in ("tokens", "features"):
            raise SpecError(f"input {name!r}: kind must be tokens or features, not {kind!r}", self.where)
        return self._node(name, "input", (), dims, {"kind": kind})

    def param(self, name, param, shape, init="normal", std=None, trainable=True):
        self._param(param, shape, name, fan_out=tuple(shape), init=init, std=std, trainable=trainable)
        return self._node(name, "param", (), self.params[param].shape, params={"weight": param})

    def embedding(self, name, x, out, param, std=None):
        src = self.nodes.get(x)
        if src is not None and (src.op != "input" or src.attrs.get("kind") != "tokens"):
            raise SpecError(f"node {name!r} (embedding): looks up rows by token id, so its input must be a "
                            f"tokens input, not {x!r}", self.where)
        (vocab,) = self._expect_dims(name, x, 1)
        out = self._check_dims(out, f"node {name!r}")
        self._param(param, (vocab, *out), name, fan_in=(vocab,), fan_out=out, std=std)
        return self._node(name, "embedding", (x,), out, params={"weight": param})

    def linear(self, name, x, out, param, bias=None, fan_in=None, std=None, init="normal"):
        xd = self.dims_of(x)
        fan_in = self._check_dims(fan_in if fan_in is not None else xd, f"node {name!r} fan_in")
        out = self._check_dims(out, f"node {name!r} out")
        if xd[len(xd) - len(fan_in) :] != fan_in:
            raise SpecError(
                f"node {name!r} (linear): input {x!r} has dims {list(xd)}, which do not end in the "
                f"fan-in dims {list(fan_in)}",
                self.where,
            )
        lead = xd[: len(xd) - len(fan_in)]
        dims = self._check_dims((*lead, *out), f"node {name!r}")
        params = {"weight": self._param(param, (*out, *fan_in), name, fan_in, out, init=init, std=std)}
        if bias:
            params["bias"] = self._param(bias, out, name, (), out, init="zeros")
        return self._node(name, "linear", (x,), dims, {"fan_in": fan_in, "out": out}, params)

    def conv1d(self, name, x, param, kernel):
        kernel = self._check_dims(kernel, f"node {name!r} kernel")
        if self.dims[kernel[0]].scales:
            raise SpecError(f"node {name!r} (conv1d): kernel dim {kernel[0]!r} must be finite", self.where)
        xd = self.dims_of(x)
        p = self._param(param, (*xd, *kernel), name, fan_in=kernel, fan_out=xd)
        return self._node(name, "conv1d", (x,), xd, {"kernel": kernel[0]}, {"weight": p})

    def unary(self, name, x, fn):
        if fn not in UNARY_FNS:
            raise SpecError(f"node {name!r}: unknown function {fn!r}{suggest(fn, UNARY_FNS)}", self.where)
        return self._node(name, "unary", (x,), self.dims_of(x), {"fn": fn})

    def _elementwise(self, name, op, xs):
        dims = max((self.dims_of(x) for x in xs), key=len)
        for x in xs:
            if not set(self.dims_of(x)) <= set(dims):
                raise SpecError(
                    f"node {name!r} ({op}): mismatched dims: {x!r} has {list(self.dims_of(x))}, "
                    f"which do not broadcast against {list(dims)}",
                    self.where,
                )
        return self._node(name, op, tuple(xs), dims)

    def add(self, name, *xs):
        return self._elementwise(name, "add", xs)

    def mul(self, name, *xs):
        return self._elementwise(name, "mul", xs)

    def scale(self, name, x, slot, fixed=None, standard=None):
        """A forward multiplier n**(-m) whose exponent m is solved for (or `fixed`). Nodes sharing a
        slot name share one multiplier. `standard` is the reference implementation's value, as an
        expression in dim names (e.g. ``d_k**-0.5``), used when evaluating a given parametrization."""
        check_identifier(slot, "multiplier slot", self.where, dotted=True)
        attrs = {"slot": slot}
        for key, value in (("fixed", fixed), ("standard", standard)):
            if value is not None:
                attrs[key] = self._dim_exponent(value, f"node {name!r} {key}")
        for other in self.nodes.values():  # one slot is one multiplier: its uses must agree on it
            if other.op == "scale" and other.attrs["slot"] == slot:
                for key in ("fixed", "standard"):
                    if other.attrs.get(key) != attrs.get(key):
                        raise SpecError(
                            f"node {name!r}: slot {slot!r} is one multiplier, but its {key} here "
                            f"({attrs.get(key)}) differs from node {other.name!r}'s ({other.attrs.get(key)})",
                            self.where,
                        )
                break
        return self._node(name, "scale", (x,), self.dims_of(x), attrs)

    def _dim_exponent(self, expr, what) -> sp.Rational:
        """The width exponent of a size expression over dims, e.g. d_k**-0.5 -> -e(d_k)/2."""
        syms = {d: sp.Symbol(d, positive=True) for d in self.dims}
        e = arithmetic(expr, syms, what, self.where)
        if e.as_coeff_Mul()[0] != 1:
            raise SpecError(f"{what}: {expr!r} has a constant factor; only the width exponent is kept, so "
                            "write powers of dims (a constant is a base-width multiplier: model.multipliers)",
                            self.where)
        e = e.subs({syms[d]: N ** self.dims[d].exponent for d in self.dims})
        deg = sp.simplify(sp.log(e, N)) if e.has(N) else sp.Integer(0)
        if not deg.is_Rational:
            raise SpecError(f"{what}: {expr!r} is not a power of the dims", self.where)
        return sp.Rational(deg)

    def _norm(self, name, op, x, over, gain, bias=None):
        xd = self.dims_of(x)
        over = self._check_dims(over if over is not None else xd[-1:], f"node {name!r} over")
        if not set(over) <= set(xd):
            raise SpecError(f"node {name!r} ({op}): normalises over {list(over)}, not in {list(xd)}", self.where)
        params = {}
        if gain:
            params["gain"] = self._param(gain, over, name, (), over, init="ones")
        if bias:
            params["bias"] = self._param(bias, over, name, (), over, init="zeros")
        return self._node(name, op, (x,), xd, {"over": over}, params)

    def rmsnorm(self, name, x, gain=None, over=None):
        return self._norm(name, "rmsnorm", x, over, gain)

    def layernorm(self, name, x, gain=None, bias=None, over=None):
        return self._norm(name, "layernorm", x, over, gain, bias)

    def l2norm(self, name, x, over=None):
        return self._norm(name, "l2norm", x, over, None)

    def dot(self, name, u, v, over):
        over = self._check_dims(over, f"node {name!r} over")
        ud, vd = self.dims_of(u), self.dims_of(v)
        for d in over:
            if d not in ud or d not in vd:
                raise SpecError(
                    f"node {name!r} (dot): contracted dim {d!r} must be in both inputs "
                    f"({u!r}: {list(ud)}, {v!r}: {list(vd)})",
                    self.where,
                )
        dims = tuple(d for d in ud if d not in over) + tuple(d for d in vd if d not in over and d not in ud)
        return self._node(name, "dot", (u, v), dims, {"over": over})

    def softmax(self, name, x):
        return self._node(name, "softmax", (x,), self.dims_of(x))

    def mix(self, name, probs, v):
        if not set(self.dims_of(probs)) <= set(self.dims_of(v)):
            raise SpecError(
                f"node {name!r} (mix): weights {probs!r} {list(self.dims_of(probs))} must broadcast "
                f"against values {v!r} {list(self.dims_of(v))}",
                self.where,
            )
        return self._node(name, "mix", (probs, v), self.dims_of(v))

    def attention(self, name, q, k, v, over, slot, standard=None):
        """Causal softmax attention, expanded into dot -> scale (logit multiplier slot) -> softmax -> mix."""
        taken = [n for n in (f"{name}_scores", f"{name}_logits", f"{name}_probs") if n in self.nodes]
        if taken:
            raise SpecError(f"node {name!r} (attention) makes nodes {name}_scores, _logits and _probs, but "
                            f"{taken} already exist", self.where)
        s = self.dot(f"{name}_scores", q, k, over)
        s = self.scale(f"{name}_logits", s, slot, standard=standard)
        p = self.softmax(f"{name}_probs", s)
        return self.mix(name, p, v)

    def delta_rule(self, name, q, k, v, alpha, beta, key, value):
        """Gated delta rule per head: S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,
        o_t = S_t q_t. q, k: [heads..., key]; v: [heads..., value]; alpha, beta: [heads...]."""
        key, value = self._check_dims(key, name)[0], self._check_dims(value, name)[0]
        heads = self.dims_of(alpha)
        want = {q: (*heads, key), k: (*heads, key), v: (*heads, value), beta: heads}
        for x, dims in want.items():
            if self.dims_of(x) != dims:
                raise SpecError(
                    f"node {name!r} (delta_rule): input {x!r} has dims {list(self.dims_of(x))}, "
                    f"expected {list(dims)}",
                    self.where,
                )
        return self._node(
            name, "delta_rule", (q, k, v, alpha, beta), (*heads, value), {"key": key, "value": value}
        )

    def cross_entropy(self, name, logits):
        growing = [d for d in self.dims_of(logits) if self.dims[d].scales]
        if growing:
            raise SpecError(f"node {name!r}: the loss is over a finite set of classes, but {logits!r} has "
                            f"the width-scaling dim(s) {growing}; read out to a fixed dim first", self.where)
        return self._node(name, "cross_entropy", (logits,), ())

    def _expect_dims(self, name, x, count):
        xd = self.dims_of(x)
        if len(xd) != count:
            raise SpecError(f"node {name!r}: input {x!r} must have {count} dim(s), has {list(xd)}", self.where)
        return xd

    def build(self) -> Graph:
        self.where = None
        return Graph(self.name, self.dims, self.params, self.nodes, self.meta)


def suggest(name: str, options) -> str:
    """' (did you mean ...?)' naming the closest options, or ''."""
    near = difflib.get_close_matches(str(name), list(options), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(x) for x in near)}?)" if near else ""
