"""Render a runnable PyTorch model module from a graph and its derived rules (Jinja2 templates)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import jinja2
import sympy as sp

from mudelta.derive import derive, report
from mudelta.derive.api import Derivation, power
from mudelta.graphs.ir import Graph, SpecError, check_identifier

TEMPLATES = Path(__file__).parent / "templates"
MODEL_CLASSES = {"gdn": "GatedDeltaNetForCausalLM", "transformer": "TransformerForCausalLM", "mlp": "MLPClassifier"}
# parameters whose module applies a forward multiplier m**-a; every other parameter must have a = 0
_MULTIPLIED = ("_proj.weight", "_proj.bias", "lm_head.weight", "embeddings.weight", "readout.weight",
               "readout.bias")
_CUSTOM_INITS = {"A_log": "a_log", "dt_bias": "dt_bias"}
# the graph's unary functions as torch callables (the MLP's activation)
_TORCH_FNS = {"identity": "torch.nn.Identity()", "neg": "torch.neg", "silu": "F.silu", "gelu": "F.gelu",
              "relu": "F.relu", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh", "softplus": "F.softplus",
              "exp": "torch.exp"}
# Config fields of each family that change the graph, so its rules (the generated module keeps them fixed)
_STRUCTURE = {"mlp": ("layers", "bias", "act"),
              "lm": ("layers", "tied", "conv", "gate", "allow_neg_eigval", "attn_every")}


class CodegenError(ValueError):
    """The graph or its rules cannot be rendered into a model."""


def _py(value) -> str:
    """A Python literal for a validated value: rationals as exact fractions, bools, ints, floats, strings."""
    if isinstance(value, (bool, int, float, str, tuple)) and not isinstance(value, sp.Basic):
        return repr(value)
    r = sp.Rational(value)
    return str(r.p) if r.q == 1 else f"{r.p}/{r.q}"


def _doc(text: str) -> str:
    """User text (a command line, a file path) for the module docstring: backslashes and double quotes
    escaped, so nothing can end the string, and non-printable characters shown as '?'."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _wrap_command(text: str) -> str:
    """A command line wrapped for the docstring at spaces between arguments only: never inside a quoted
    argument or between an option and its value."""
    keep = re.sub(r"'[^']*'", lambda m: m[0].replace(" ", "\0"), text)
    keep = re.sub(r"(?<!\S)(--?[\w-]+) (?!-)", "\\1\0", keep)
    # a unit longer than a line may break after all (the module must stay within its line length)
    keep = " ".join(u if len(u) <= 80 else u.replace("\0", " ") for u in keep.split(" "))
    lines = textwrap.wrap(keep, 80, break_on_hyphens=False, break_long_words=False)
    return "\n    ".join(line.replace("\0", " ") for line in lines)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["pyrepr"] = _py
    env.filters["doc"] = _doc
    return env


def _rules(graph: Graph, d: Derivation, convention: str) -> list[dict]:
    by_key: dict[str, dict] = {}
    exact = []
    every_linear = graph.meta.get("family") == "mlp"  # the MLP's layers are all multiplier-applying Linears
    for r in d.params:
        p = graph.params[r.name]
        check_identifier(r.name, "parameter", dotted=True)
        if r.a != 0 and not every_linear and not r.name.endswith(_MULTIPLIED):
            advice = "; use --convention tp5" if convention != "tp5" else ""
            raise CodegenError(f"parameter {r.name!r} needs a forward multiplier n**({-r.a}), which its module "
                               f"does not apply{advice}")
        if p.init == "custom":
            kind = next((v for k, v in _CUSTOM_INITS.items() if r.name.endswith(k)), None)
            if kind is None:
                raise CodegenError(f"parameter {r.name!r} has a custom init that codegen does not know")
        else:
            kind = p.init
        if kind != "normal" and r.b != 0:
            raise CodegenError(f"parameter {r.name!r} ({kind} init) would need an init scale n**({-r.b})")
        std = _py(float(p.std)) if p.std is not None else _py(tuple(p.fan_in))
        e = -r.a if r.eps is None else r.eps  # Adam eps * m**e (SGD: unused)
        rule = {"a": _py(r.a), "b": _py(r.b), "c": _py(r.c), "e": _py(e), "init": kind, "std": std,
                "decay": kind == "normal", "kind": r.category,
                "comment": f"{r.category}: init std * {power(-r.b)}, lr * {power(-r.c)}"
                           + (f", multiplier {power(-r.a)}" if r.a else "")
                           + (f", eps * {power(r.eps)}" if r.eps is not None and r.eps != 0 else "")}
        key = report.collapse_layers(r.name)
        seen = by_key.setdefault(key, rule)
        if {k: v for k, v in seen.items() if k != "key"} != rule:
            exact.append({**rule, "key": r.name})  # this layer's rule differs from the pattern's
        seen["key"] = key
    return list(by_key.values()) + exact


def generate(graph: Graph, optimizer: str = "adamw", parametrization: str = "mup", base_width: int = 256,
             convention: str = "tp5", command: str | None = None, spec: str | None = None,
             options: dict | None = None) -> str:
    """The source of one self-contained model module (formatted with ruff when it is installed). `command`
    is the command line that made it, `spec` and `options` the preset and --set options it was built from
    (the module's pointer to `mudelta explain` repeats them)."""
    family = graph.meta.get("family")
    if family is None or graph.name not in MODEL_CLASSES:
        from mudelta.graphs.presets import PRESETS

        raise CodegenError(f"graph {graph.name!r} has no model family codegen can render; use a builtin preset "
                           f"({', '.join(PRESETS)}) with --set options")
    if not isinstance(base_width, int) or base_width <= 0:
        raise CodegenError(f"base width must be a positive integer, got {base_width!r}")
    d = derive(graph, optimizer, parametrization, convention)
    if parametrization == "mup" and d.violations:
        raise CodegenError(f"the derived rules violate {d.violations[0].desideratum}: {d.violations[0].message}")
    for name in graph.dims:
        check_identifier(name, "dim")
    slots = []
    for name, exponent in d.slots.items():
        check_identifier(name, "multiplier slot", dotted=True)
        why = report.collapse_layers(report.slot_reason(d, name)).replace("`", "")
        slots.append({"name": name, "exponent": _py(exponent), "comment": textwrap.wrap(why, 80)})
    norm_eps = {}
    for node, exponent in d.norm_eps.items():
        gain = graph.nodes[node].params.get("gain")
        if gain is None or not gain.endswith(".weight"):
            raise CodegenError(f"norm {node!r} has no gain parameter to name its module by")
        check_identifier(gain, "parameter", dotted=True)
        key = report.collapse_layers(gain.removesuffix(".weight"))
        if norm_eps.setdefault(key, _py(exponent)) != _py(exponent):
            raise CodegenError(f"norm {key!r} needs a different eps exponent in different layers")
    dims = [{"name": n, "coef": _py(dim.coef), "exponent": _py(dim.exponent)} for n, dim in graph.dims.items()]
    small = [f"{n} = {dim.coef * base_width ** dim.exponent}" for n, dim in graph.dims.items()
             if dim.scales and dim.coef * base_width ** dim.exponent < 1]
    if small:
        raise CodegenError(f"at base width {base_width} {', '.join(small)}, below 1: take a larger "
                           "--base-width")
    meta = dict(graph.meta)
    every = meta.get("attn_every", 0)
    attn_layers = bool(every) and meta["layers"] >= every
    flags = [f"--set {k}={v}" for k, v in (options or {}).items()]
    flags += [f"--{key} {value}" for key, value, default in (("optimizer", optimizer, "adamw"),
              ("parametrization", parametrization, "mup"), ("convention", convention, "tp5")) if value != default]
    explain = shlex.join(["mudelta", "explain", spec or graph.name, "PARAM"]) + "".join(
        " " + shlex.join(f.split(" ", 1)) for f in flags)
    command = command or shlex.join(["mudelta", "codegen", spec or graph.name, *" ".join(flags).split(),
                                     "--base-width", str(base_width)])
    context = {
        "title": f"{MODEL_CLASSES[graph.name]} ({graph.name})",
        "command": _wrap_command(_doc(command)),
        "explain": _wrap_command(_doc(explain)),
        "optimizer": optimizer, "parametrization": parametrization,
        "convention": convention, "base_width": base_width, "rules": _rules(graph, d, convention),
        "slots": slots,
        "norm_eps": norm_eps,
        "dims": dims, "meta": meta, "model_class": MODEL_CLASSES[graph.name],
        "attn_layers": attn_layers, "gdn_layers": graph.name == "gdn" and (not every or every > 1),
        "attn_dims": meta.get("attn_dims", ()),
    }
    if family == "mlp":
        context["act_fn"] = _TORCH_FNS[meta["act"]]
    gdn_only = () if context["gdn_layers"] else ("conv", "gate", "allow_neg_eigval")  # Config lacks them
    context["generated"] = {k: meta[k] for k in _STRUCTURE[family] if k in meta and k not in gdn_only}
    template = "mlp.py.j2" if family == "mlp" else "lm.py.j2"
    return _format(_env().get_template(template).render(**context))


def _format(source: str) -> str:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        return source
    out = subprocess.run([ruff, "format", "--isolated", "--stdin-filename", "model.py", "-"], input=source,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise CodegenError(f"generated code does not parse (a template bug):\n{out.stderr}")
    return out.stdout


def load_module(source: str | Path, name: str = "mudelta_generated"):
    """Import a generated module from its source text or a file path."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith(".py")):
        path = Path(source)
        if not path.is_file() or path.suffix != ".py":
            raise FileNotFoundError(f"no generated model at {path} (a .py file written by mudelta codegen)")
    else:
        path = Path(tempfile.mkdtemp(prefix="mudelta_")) / f"{name}.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
