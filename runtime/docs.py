"""Documents generated from the tool's own output (`mudelta docs`): the rules tables in docs/ are rendered
from derivations, never written by hand, and a test fails when a committed document and the tool disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mudelta.derive import derive, report
from mudelta.derive.api import Derivation, power
from mudelta.graphs.presets import load

OPTIMIZERS = ("sgd", "sgd-nesterov", "adam", "adamw")


@dataclass
class Rules:
    """One section: the muP rules of a preset (with options) under each optimizer."""

    title: str
    spec: str
    overrides: dict = field(default_factory=dict)
    optimizers: tuple = OPTIMIZERS
    text: str = ""


@dataclass
class Diagnosis:
    """One section: which desiderata a given parametrization breaks, and by which exponent."""

    title: str
    spec: str
    parametrization: str
    overrides: dict = field(default_factory=dict)
    optimizers: tuple = ("adamw", "sgd")
    text: str = ""


@dataclass
class Doc:
    title: str
    intro: str
    sections: list


GDN_INTRO = """\
Every exponent below is computed by `mudelta derive` from the Gated DeltaNet graph (`graphs/builders.py`,
the layer of flash-linear-attention's `GatedDeltaNet`); nothing is looked up. The document is generated
by `mudelta docs` and a test fails when it and the tool disagree.

How to read the tables: n is the width (`d_model`) relative to a base width, so `n**(-1)` means "halve it
when the width doubles". Rules are shown in the Tensor Programs V Table 3 representative (forward
multipliers a = 0 except the named slots): `init std` multiplies the base init std, `lr scale` the base
learning rate of that parameter group. Under AdamW the weight decay is scaled by the inverse of the LR
scale, so that lr x wd (the per-step shrink) does not change with width. Under Adam(W), `eps scale`
multiplies Adam's eps; it follows the parameter's gradient, so eps stays as small against it as at the base
width. The reason columns name the bound
that set each exponent: the node whose size (at init) or change (after one step) would otherwise exceed
its natural scale, and the fact used there (CLT: a sum of n independent terms grows as n^(1/2); LLN: a
sum of n correlated terms grows as n). `mudelta explain gdn PARAM --optimizer OPT` prints the full
derivation of any row. Layers that share a rule are one `layers.*` row; node names `l*_x` stand for every
layer's node `x`."""

DOCS = {
    "gdn.md": Doc(
        "Gated DeltaNet: derived muP rules",
        GDN_INTRO,
        [
            Rules("Head-dim regime (6 heads, d_k = d_model/8, d_v = d_model/4, tied embeddings)", "gdn",
                  text="The heads are fixed and the recurrence's inner dims grow with width: q and k are "
                       "L2-normalised over a growing d_k, the state S is d_v x d_k, and the gate projections "
                       "`a_proj`, `b_proj` map d_model to a fixed number of heads, so they behave like "
                       "readouts."),
            Rules("Heads regime (d_k = 128, d_v = 256 fixed, heads proportional to d_model, untied)",
                  "gdn", {"regime": "heads", "tied": "false"},
                  text="The head dims are fixed and the number of heads grows: every per-head quantity keeps "
                       "its size and the gate projections are ordinary hidden weights."),
            Rules("Hybrid (softmax attention in every 4th block, head-dim regime)", "gdn-hybrid",
                  optimizers=("adamw", "sgd")),
            Diagnosis("Standard parametrization (every weight N(0, 0.02^2), one learning rate for all)", "gdn",
                      "sp",
                      text="The same graph evaluated with every init std and every learning rate held fixed "
                           "as the width grows. `max stable lr` is how the learning rate of each group would "
                           "have to shrink for its update to stay bounded; the failures are what happens "
                           "instead with one fixed learning rate, each with the exponent of n by which the "
                           "node is off its natural scale (worst layer)."),
        ],
    ),
}


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def _grouped(d: Derivation, cells) -> list[list[str]]:
    """One row per parameter, layers with identical cells merged into `layers.*`."""
    groups: dict[tuple, int] = {}
    rows = []
    for r in d.params:
        name = report.collapse_layers(r.name)
        row = [f"`{name}`", *cells(r)]
        key = tuple(row)
        if key in groups:
            groups[key] += 1
            continue
        groups[key] = 1
        rows.append(row)
    return rows


def _rules(section: Rules) -> list[str]:
    out = [f"## {section.title}", ""]
    if section.text:
        out += [section.text, ""]
    opts = ", ".join(f"{k}={v}" for k, v in section.overrides.items())
    cmd = f"mudelta derive {section.spec}" + "".join(f" --set {k}={v}" for k, v in section.overrides.items())
    out += [f"Preset `{section.spec}`{' with ' + opts if opts else ''}; reproduce with `{cmd} --optimizer OPT`.",
            ""]
    for opt in section.optimizers:
        d = derive(load(section.spec, section.overrides), opt, "mup")

        def cells(r, d=d):
            init_why, lr_why = report.reasons(d, r.name, collapse=True)
            eps = [f"`{r.eps_scale}`"] if d.optimizer.eps else []
            return [r.category, f"`{r.init_std}`", init_why, f"`{r.lr_scale}`", lr_why, *eps]

        out += [f"### {opt}", ""]
        head = ["parameter", "kind", "init std", "why", "lr scale", "why"]
        out += _table(head + ["eps scale"] * d.optimizer.eps, _grouped(d, cells))
        out += [""]
        if d.slots:
            out += ["Forward multipliers:", ""]
            out += [f"- `{s}` = `{power(v)}`: {report.collapse_layers(report.slot_reason(d, s))}"
                    for s, v in d.slots.items()]
            out += [""]
        scaled = report.norm_eps_groups(d)
        if scaled:
            out += ["Norm eps, opt-in (`derived_norm_eps`; eps times this scale keeps its share of the norm "
                    "input's mean square at init): "
                    + ", ".join(f"`{k}` `{power(v)}`" for k, v in scaled), ""]
        out += _assumptions(d)
        if d.violations:
            out += ["Desiderata that fail:", ""] + _failures(d)
        else:
            out += ["All desiderata hold.", ""]
    return out


def _assumptions(d: Derivation) -> list[str]:
    seen, out = set(), []
    for node, kind, exponent, text in d.engine.assumptions:
        line = (f"- {kind} at `{report.collapse_layers(node)}` (exponent {exponent}, must be <= 0): "
                f"{report.collapse_layers(text)}")
        if line not in seen:
            seen.add(line)
            out.append(line)
    return ["Assumptions the derivation relies on, with the exponent they hold by:", "", *out, ""] if out else []


def _failures(d: Derivation) -> list[str]:
    rows = [[kind, f"`{power(e)}`", ", ".join(f"`{n}`" for n in nodes)]
            for kind, e, nodes in report.violation_groups(d)]
    return _table(["desideratum", "off by", "nodes"], rows) + [""]


def _diagnosis(section: Diagnosis) -> list[str]:
    out = [f"## {section.title}", ""]
    if section.text:
        out += [section.text, ""]
    for opt in section.optimizers:
        d = derive(load(section.spec, section.overrides), opt, section.parametrization)
        cmd = f"mudelta derive {section.spec} --parametrization {section.parametrization} --optimizer {opt}"
        out += [f"### {opt}", "", f"`{cmd}`", ""]

        def cells(r):
            return ["-" if r.max_stable_c is None else f"`{power(-r.max_stable_c)}`"]

        out += _table(["parameter", "max stable lr"], _grouped(d, cells)) + [""]
        if d.slots:
            out += ["Forward multipliers: " + ", ".join(f"`{s}` = `{power(v)}`" for s, v in d.slots.items()), ""]
        out += ["Desiderata that fail as the width grows:", ""] + _failures(d)
    return out


def render(name: str) -> str:
    doc = DOCS[name]
    out = [f"# {doc.title}", "", "<!-- generated by `mudelta docs`; do not edit by hand -->", "", doc.intro, ""]
    for section in doc.sections:
        out += _rules(section) if isinstance(section, Rules) else _diagnosis(section)
    return "\n".join(out).rstrip() + "\n"


def write(directory: Path, check: bool = False) -> list[str]:
    """Render every document into `directory`; with `check`, write nothing and return the stale ones."""
    stale = []
    for name in DOCS:
        path = directory / name
        text = render(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path))
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return stale
