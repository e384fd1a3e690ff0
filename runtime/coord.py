"""Coordinate check: measure how every graph node's coordinate size scales with width, at init and after each
optimizer step, and compare the log-log slope with the exponent the engine predicts.

Step 0 is the node's value at init (predicted: its size exponent x); step t >= 1 is its change since init
after t optimizer steps on one fixed batch (predicted: d1, the change to first order in the learning rate;
products of two changes are second order and stay below the first-order terms at coordinate-check learning
rates and widths, taking over only once lr * n^(their extra exponent) is large; under muP d1 = d)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

from mudelta.codegen import generate, load_module
from mudelta.derive import derive
from mudelta.derive.rules import NEG_INF
from mudelta.graphs.presets import PRESETS, load, options
from mudelta.kernels import chunk_gated_delta_rule_torch

from .data import byte_batch
from .models import make_optimizer, model_class, norm_eps_switch

MIN_WIDTH = 16  # below it a check warns: the asymptotics have not set in
TOLERANCE = 0.2  # |measured slope - predicted exponent| allowed, fixed before looking at any result
DEFAULT_LR = {"sgd": 0.1, "sgd-nesterov": 0.05, "adam": 1e-2, "adamw": 1e-2}


@dataclass
class NodeCheck:
    name: str
    step: int
    predicted: float
    measured: float
    rms: list[float] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return abs(self.measured - self.predicted) <= TOLERANCE


def _batch(model, batch: int, seq: int, seed: int):
    x, y = byte_batch(batch, seq, seed)
    if hasattr(model.cfg, "vocab"):
        return x, y
    d_in, classes = model.cfg.size("d_in"), model.cfg.size("classes")
    rows = torch.stack([x[:, i : i + d_in] for i in range(0, seq - d_in, d_in)]).flatten(0, 1)
    return rows.float() / 127.5 - 1.0, y[:, d_in - 1 :: d_in][:, : rows.shape[0] // batch].flatten() % classes


def _size(t: torch.Tensor, features: int | None) -> float:
    """A node's coordinate size: the rms over all coordinates of a node with width-sized dims; for a node
    whose dims are all finite (logits, per-head gates), each coordinate is its own quantity and the
    exponent is the largest one's, so the rms over positions of the largest feature entry."""
    t = t.double()
    if features is not None and t.dim() >= 2 and t.shape[-1] == features:
        t = t.abs().amax(-1)
    return t.pow(2).mean().sqrt().item()


def measure(module, width: int, steps: int, optimizer: str, lr: float, seed: int, batch: int, seq: int,
            finite: dict[str, int] | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
            config: dict | None = None):
    """{node: [size at init, size of the change after 1..steps steps]} for one model; `finite` maps the
    nodes whose dims are all finite to their feature count. The model is initialised on the CPU in float32
    (the same weights on every device) and then moved to `device` and `dtype`; `config`: more fields of the
    generated Config."""
    finite = finite or {}
    torch.manual_seed(seed)
    model = model_class(module)(module.Config(width=width, **(config or {}))).to(device=device, dtype=dtype)
    opt = make_optimizer(optimizer, model.param_groups(lr, weight_decay=0.0), lr)
    x, y = (t.to(device, dtype if t.is_floating_point() else None) for t in _batch(model, batch, seq, seed))
    out, init = {}, {}
    try:
        for t in range(steps + 1):
            module.TAPS = {}
            _, loss = model(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"width {width}: loss is {loss.item()} at step {t}")
            for name, value in module.TAPS.items():
                if t == 0:
                    init[name] = value.clone()
                    out[name] = [_size(value, finite.get(name))]
                else:
                    out[name].append(_size(value - init[name], finite.get(name)))
            if t < steps:
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        module.TAPS = None
    return out


def finite_nodes(graph) -> dict[str, int]:
    """{node: feature count} for the nodes whose dims are all finite (logits, per-head gates), which _size
    measures by their largest feature per position."""
    return {n: math.prod(graph.dims[x].size(1) for x in node.dims) for n, node in graph.nodes.items()
            if node.dims and not graph.width_dims(node.dims)}


def geomean(values) -> float:
    """Geometric mean (a zero counts as 1e-300: the log-log fits stay finite)."""
    values = list(values)
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values))


def slope(widths, values) -> float:
    xs = [math.log(w) for w in widths]
    ys = [math.log(max(v, 1e-300)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def _first_steps(graph, optimizer: str, parametrization: str):
    """The engine's predictions for the first optimizer steps under the rules the generated model uses:
    muP rules are derived, then evaluated as given exponents, so that SGD's first steps follow the gradient
    sizes at init (evaluation mode), exactly as the measured model takes them."""
    d = derive(graph, optimizer, parametrization)
    if parametrization != "mup":
        return d
    given = {"parameters": {r.name: {"a": str(r.a), "b": str(r.b), "c": str(r.c)} for r in d.params},
             "multipliers": {s: str(v) for s, v in d.slots.items()}}
    return derive(graph, optimizer, given)


def coord_check(spec: str, overrides: dict | None = None, widths=(64, 128, 256, 512, 1024), steps: int = 3,
                optimizer: str = "adamw", parametrization: str = "mup", lr: float | None = None, seeds: int = 1,
                batch: int = 4, seq: int = 64, progress: bool = True,
                base_width: int | None = None, device: str = "cpu", dtype: str = "float32",
                derived_norm_eps: bool = False) -> dict:
    """Measured slopes vs predicted exponents for every node. The models are generated with every rule 1 at
    `base_width` (default: the smallest width), so that widths far above it can be measured at the same base.
    `dtype` float32 or float64 (a float64 check has no rounding floor under the smallest changes); on a GPU
    TF32 is off for the check's duration. derived_norm_eps: the norms take the derived eps rule."""
    overrides = dict(overrides or {})
    if spec in PRESETS and "vocab" in options(spec) and "vocab" not in overrides:
        overrides["vocab"] = "256"  # the batch is bytes
    graph = load(spec, overrides)
    widths = sorted(int(w) for w in widths)
    if len(set(widths)) < 2:
        raise ValueError("a coordinate check needs at least two different widths")
    if len(set(widths)) < len(widths):
        raise ValueError(f"widths {widths}: a width is given twice")
    if widths[0] < MIN_WIDTH:
        print(f"warning: widths from {widths[0]}: a slope fitted below width {MIN_WIDTH} measures "
              "finite-width effects as much as the exponent (the default widths start at 64)",
              file=sys.stderr)
    for name, value, low in (("steps", steps, 0), ("seeds", seeds, 1), ("batch", batch, 1), ("seq", seq, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a positive number, got {lr!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device (torch {torch.__version__})")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype {dtype!r}: a coordinate check runs in float32 or float64")
    d = _first_steps(graph, optimizer, parametrization)
    base_width = widths[0] if base_width is None else int(base_width)
    source = generate(graph, optimizer, parametrization, base_width=base_width, spec=spec, options=overrides)
    module = load_module(source, f"mudelta_coord_{graph.name}_{parametrization}_{optimizer.replace('-', '_')}")
    if hasattr(module, "chunk_gated_delta_rule"):
        # the recurrence on the chunked PyTorch path as on the CPU, in the check's dtype, at any head dim (the
        # Triton kernels take K <= 256 and would compile a float32 variant per head dim)
        module.chunk_gated_delta_rule = chunk_gated_delta_rule_torch
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    config = {"derived_norm_eps": True} if derived_norm_eps else None
    if config and not norm_eps_switch(module):
        raise ValueError(f"{graph.name}: --derived-norm-eps, but the model has no norm eps rule")
    finite = finite_nodes(graph)
    runs = {}
    total = len(widths) * seeds
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for i, (w, s) in enumerate((w, s) for w in widths for s in range(seeds)):
            if progress:
                print(f"\rcoord check {graph.name}: width {w} seed {s} ({i + 1}/{total})", end="",
                      file=sys.stderr, flush=True)
            runs[w, s] = measure(module, w, steps, optimizer, lr, s, batch, seq, finite, device,
                                 getattr(torch, dtype), config)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    if progress:
        print(file=sys.stderr)
    nodes = []
    for name in graph.order:
        if name not in runs[widths[0], 0]:
            continue
        for t in range(steps + 1):
            pred = d.engine.X(name) if t == 0 else d.engine.D1(name)
            if pred is NEG_INF:
                continue
            rms = [geomean(runs[w, s][name][t] for s in range(seeds)) for w in widths]
            nodes.append(NodeCheck(name, t, float(pred), slope(widths, rms), rms))
    return {"spec": spec, "optimizer": optimizer, "parametrization": parametrization, "widths": widths,
            "base_width": base_width, "batch": batch, "seq": seq, "lr": lr, "steps": steps,
            "tolerance": TOLERANCE, "device": str(device), "dtype": dtype,
            "derived_norm_eps": derived_norm_eps, "nodes": nodes}


def to_json(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "nodes"} | {
        "nodes": [{"name": n.name, "step": n.step, "predicted": n.predicted, "measured": round(n.measured, 4),
                   "pass": n.passed, "rms": n.rms} for n in result["nodes"]]}


def table(result: dict, failures_only: bool = False) -> str:
    nodes = result["nodes"]
    ok = sum(n.passed for n in nodes)
    head = (f"coord check: {result['spec']}, {result['parametrization']} under {result['optimizer']} "
            f"(lr {result['lr']}), widths {result['widths']} (base {result['base_width']}), batch "
            f"{result['batch']} x {result['seq']}, {result['dtype']} on {result['device']}"
            f"{', derived norm eps' if result.get('derived_norm_eps') else ''}; step 0 = size at init, "
            "step t = change after t "
            f"steps; slope of log rms vs log width, tolerance {result['tolerance']}")
    rows = [f"{'node':28s} {'step':>4s} {'predicted':>9s} {'measured':>9s}  result"]
    for n in nodes:
        if failures_only and n.passed:
            continue
        rows.append(f"{n.name:28s} {n.step:4d} {n.predicted:9.3f} {n.measured:9.3f}  {'pass' if n.passed else 'FAIL'}")
    return "\n".join([head, "", *rows, "", f"{ok}/{len(nodes)} pass"])


def plot(result: dict, path) -> None:
    """One panel per step: each node's rms relative to the smallest width (log-log), failures in red, with
    the predicted slopes as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths, steps = result["widths"], result["steps"]
    fig, axes = plt.subplots(1, steps + 1, figsize=(4 * (steps + 1), 3.6), sharex=True, squeeze=False)
    for t, ax in enumerate(axes[0]):
        mine = [n for n in result["nodes"] if n.step == t]
        for n in mine:
            rel = [v / n.rms[0] for v in n.rms]
            ax.plot(widths, rel, color="tab:red" if not n.passed else "0.6", lw=1.2 if not n.passed else 0.6,
                    alpha=1.0 if not n.passed else 0.5)
        for e in sorted({n.predicted for n in mine}):
            ax.plot(widths, [(w / widths[0]) ** e for w in widths], "--", color="tab:blue", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title("init" if t == 0 else f"change after {t} step{'s' * (t > 1)}")
        ax.set_xlabel("width")
    axes[0][0].set_ylabel("rms / rms at smallest width")
    fails = sum(not n.passed for n in result["nodes"])
    fig.suptitle(f"{result['spec']}: {result['parametrization']} / {result['optimizer']}  "
                 f"({fails} of {len(result['nodes'])} off the predicted slope; dashed: predicted slopes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
