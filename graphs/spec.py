"""YAML spec files -> Graph. Errors name the spec path and line.

    name: tiny_mlp
    dims: {d_in: 16, width: n, classes: 10}
    nodes:
      - {name: x, op: input, dims: [d_in], kind: features}
      - repeat: 2              # nodes below are repeated with {i} = 0, 1 ({i-1}, {i+1} also work)
        nodes:
          - {name: "h{i}", op: linear, in: "{prev}", out: [width], param: "layers.{i}.weight"}
          - {name: "a{i}", op: relu, in: "h{i}"}
      - {name: logits, op: linear, in: a1, out: [classes], param: readout.weight}
      - {name: loss, op: cross_entropy, in: logits}

Ops and their keys (besides name, op, in): input(dims, kind), param(param, shape, init), embedding(out, param),
linear|readout(out, param, bias, fan_in, std), conv1d(param, kernel), unary(fn) or the function name as the
op (silu, gelu, relu, sigmoid, tanh, softplus, exp, neg, identity), add, mul, scale(slot, fixed, standard),
rmsnorm|layernorm(gain, over), l2norm(over), dot(over), softmax, mix, attention(over, slot, standard),
delta_rule(key, value), cross_entropy. In a repeat block, "{prev}" names the previous iteration's last node
(the node before the block on the first iteration).
"""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import yaml

from .ir import UNARY_FNS, Graph, GraphBuilder, SpecError, arithmetic, suggest

_KEYS = {
    "input": {"dims", "kind"},
    "param": {"param", "shape", "init", "std"},
    "embedding": {"out", "param", "std"},
    "linear": {"out", "param", "bias", "fan_in", "std"},
    "conv1d": {"param", "kernel"},
    "unary": {"fn"},
    "add": set(),
    "mul": set(),
    "scale": {"slot", "fixed", "standard"},
    "rmsnorm": {"gain", "over"},
    "layernorm": {"gain", "bias", "over"},
    "l2norm": {"over"},
    "dot": {"over"},
    "softmax": set(),
    "mix": set(),
    "attention": {"over", "slot", "standard"},
    "delta_rule": {"key", "value"},
    "cross_entropy": set(),
}
_ALIASES = {"readout": "linear", "residual": "add", **{fn: "unary" for fn in UNARY_FNS}}
_ARITY = {"input": 0, "param": 0, "dot": 2, "mix": 2, "attention": 3, "delta_rule": 5}


class _LineLoader(yaml.SafeLoader):
    """Records each mapping's line as the key '__line__'; a key given twice is an error (YAML keeps the
    last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} in one mapping", key_node.start_mark
                )
            seen.add(key)
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def load_spec(path: str | Path) -> Graph:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", str(path)) from None
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where) from None
    if not isinstance(data, dict):
        raise SpecError("a spec is a mapping with keys name, dims, nodes", str(path))
    at = _at(path, data)
    unknown = set(data) - {"name", "dims", "nodes", "__line__"}
    if unknown:
        raise SpecError(f"unknown top-level key(s) {sorted(unknown)}; expected name, dims, nodes", at)
    b = GraphBuilder(str(data.get("name", path.stem)))
    dims = data.get("dims")
    if not isinstance(dims, dict) or len(dims) <= 1:
        raise SpecError("'dims' must map dim names to sizes (e.g. d_model: n, vocab: 256)", at)
    b.where = _at(path, dims)
    for name, size in dims.items():
        if name != "__line__":
            b.dim(str(name), size)
    if not isinstance(data.get("nodes"), list):
        raise SpecError("'nodes' must be a list of node mappings", at)
    entries = _expand(path, data["nodes"], {})
    for entry in _ordered(path, entries):
        _add(b, path, entry)
    return b.build()


def _at(path, mapping) -> str:
    line = mapping.get("__line__") if isinstance(mapping, dict) else None
    return f"{path}:{line}" if line else str(path)


def _expand(path, items, env, prev=None) -> list[dict]:
    """Unroll repeat blocks, substituting {i}, {i-1}, {i+1} and {prev}."""
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise SpecError(f"each node must be a mapping, got {item!r}", str(path))
        if "repeat" in item:
            count = item["repeat"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise SpecError(f"repeat must be a positive integer, got {count!r}", _at(path, item))
            extra = set(item) - {"repeat", "as", "nodes", "__line__"}
            if extra:
                raise SpecError(f"repeat block: unknown key(s) {sorted(extra)}; allowed: as, nodes, repeat",
                                _at(path, item))
            var = item.get("as", "i")
            if not isinstance(var, str) or not var.isidentifier() or var == "prev":
                raise SpecError(f"repeat block: 'as' must name a loop variable (not prev), got {var!r}",
                                _at(path, item))
            if not isinstance(item.get("nodes"), list) or not item["nodes"]:
                raise SpecError("repeat block: 'nodes' must be a non-empty list of nodes", _at(path, item))
            for i in range(count):
                body = _expand(path, item["nodes"], {**env, var: i}, prev)
                out += body
                prev = body[-1]["name"] if body else prev
            continue
        node = {k: _subst(v, env, prev, path, item) for k, v in item.items()}
        if not isinstance(node.get("name"), str):
            got = f", got {node['name']!r}" if "name" in node else ""
            raise SpecError(f"node without a 'name' (a string){got}", _at(path, item))
        out.append(node)
        prev = node["name"]
    return out


_VAR = re.compile(r"\{(\w+)\s*([+-]\s*\d+)?\}")


def _subst(value, env, prev, path, item):
    if isinstance(value, list):
        return [_subst(v, env, prev, path, item) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m):
        var, off = m.group(1), m.group(2)
        if var == "prev":
            if prev is None:
                raise SpecError("{prev} used before any node", _at(path, item))
            return prev
        if var not in env:
            raise SpecError(f"unknown variable {{{var}}} (defined: {sorted(env) or 'none'})", _at(path, item))
        return str(env[var] + (int(off.replace(" ", "")) if off else 0))

    return _VAR.sub(repl, value)


def _inputs(entry) -> list:
    ins = entry.get("in", [])
    return [ins] if isinstance(ins, str) else list(ins) if isinstance(ins, list) else [ins]


def _ordered(path, entries):
    """Entries in dependency order; a cycle is reported with its nodes and the line of one of them."""
    names = {}
    for e in entries:
        if e["name"] in names:
            raise SpecError(f"duplicate node name {e['name']!r} (first at line {names[e['name']]['__line__']})",
                            _at(path, e))
        names[e["name"]] = e
    dag = nx.DiGraph()
    for e in entries:
        dag.add_node(e["name"])
        for src in _inputs(e):
            if not isinstance(src, str):
                raise SpecError(f"node {e['name']!r}: inputs must be node names, got {src!r}", _at(path, e))
            if src not in names:
                raise SpecError(f"node {e['name']!r}: dangling input {src!r}, no such node"
                                f"{suggest(src, names)}", _at(path, e))
            dag.add_edge(src, e["name"])
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        index = {e["name"]: i for i, e in enumerate(entries)}
        return [names[n] for n in nx.lexicographical_topological_sort(dag, key=index.__getitem__)]
    chain = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
    raise SpecError(f"cycle in the graph: {chain}", _at(path, names[cycle[0][0]]))


def _add(b: GraphBuilder, path, entry):
    b.where = _at(path, entry)
    entry = {k: v for k, v in entry.items() if k != "__line__"}
    name, op = entry.pop("name"), entry.pop("op", None)
    if op is None:
        raise SpecError(f"node {name!r} has no 'op'", b.where)
    kw = {k: v for k, v in entry.items() if k != "in"}
    if not isinstance(op, str):
        raise SpecError(f"node {name!r}: 'op' must be an op name, got {op!r}", b.where)
    if op in _ALIASES:
        if _ALIASES[op] == "unary" and op != "unary":
            if "fn" in kw:
                raise SpecError(f"node {name!r}: op {op!r} is already the function; drop 'fn' or use "
                                "op unary", b.where)
            kw["fn"] = op
        op = _ALIASES[op]
    if op not in _KEYS:
        raise SpecError(f"node {name!r}: unknown op {op!r}{suggest(op, [*_KEYS, *_ALIASES])}", b.where)
    extra = set(kw) - _KEYS[op]
    if extra:
        raise SpecError(f"node {name!r} ({op}): unknown key(s) {sorted(extra)}; allowed: "
                        f"{sorted(_KEYS[op]) or 'none'}", b.where)
    for key, value in kw.items():
        if key in ("kernel", "key", "value") and isinstance(value, list) and len(value) == 1:
            kw[key] = value = value[0]  # one dim, also written as a list like out: [width]
        _check_type(name, op, key, value, b.where)
        if key == "std" and value is not None:
            kw[key] = _positive_number(name, op, value, b.where)  # 1/32 as 0.03125
    ins = _inputs({"in": entry.get("in", [])})
    want = _ARITY.get(op, 1 if op not in ("add", "mul") else None)
    if want is not None and len(ins) != want:
        raise SpecError(f"node {name!r} ({op}) takes {want} input(s) in 'in', got {len(ins)}", b.where)
    if want is None and len(ins) < 2:
        raise SpecError(f"node {name!r} ({op}) takes at least 2 inputs in 'in', got {len(ins)}", b.where)
    try:
        if op in ("input", "param"):
            getattr(b, op)(name, **kw)
        elif op in ("add", "mul"):
            getattr(b, op)(name, *ins)
        else:
            getattr(b, op)(name, *ins, **kw)
    except TypeError as exc:
        missing = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)", str(exc))
        if missing:
            raise SpecError(f"node {name!r} ({op}): missing key(s) {missing.group(1)}", b.where) from None
        raise SpecError(f"node {name!r} ({op}): {exc}", b.where) from None


_NAME_KEYS = {"param", "bias", "gain", "slot", "kind", "init", "fn", "kernel", "key", "value"}  # a name each
_DIMS_KEYS = {"out", "dims", "over", "shape", "fan_in"}  # a dim name or a list of them


def _check_type(name, op, key, value, where):
    """A node key's value has the type its op reads: a name or a list of dim names."""
    if key in _NAME_KEYS and not isinstance(value, str):
        raise SpecError(f"node {name!r} ({op}): {key!r} must be a name, got {value!r}", where)
    if key in _DIMS_KEYS and not (isinstance(value, str) or isinstance(value, list)
                                  and all(isinstance(d, str) for d in value)):
        raise SpecError(f"node {name!r} ({op}): {key!r} must be a dim name or a list of dim names, "
                        f"got {value!r}", where)


def _positive_number(name, op, value, where) -> float:
    """A std: a positive number or arithmetic on numbers (1/32), as a float."""
    try:
        x = arithmetic(value, {}, "std", where)
    except SpecError:
        x = None
    if x is None or not (x.is_number and x.is_positive and x.is_finite):
        raise SpecError(f"node {name!r} ({op}): 'std' must be positive, a number, got {value!r}", where)
    return float(x)
