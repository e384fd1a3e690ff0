"""Gradient sizes at init against the engine's backward exponents, node by node (coord/method.md, "SP"):
the coord check compares forward sizes and changes; this compares rms(dL/d node) at init, which decides
every SGD step's size.

    python benchmarks/coord/grad_probe.py transformer --set layers=2 [--std 0.125] [--coord sgd]

The model is the coord check's (its generated module, base width the first width, its fixed batch, float64);
for every node with a gradient: the log-log slope over width of its gradient's size (as the coord check takes
sizes: the rms, or for a node with only finite dims the largest feature per position), averaged over seeds
(geometric mean), next to the engine's `grad` exponent at init and the local slope at the two largest widths.
--std replaces the presets' fixed init std of the hidden matrices (0.02, the reference implementations'
initializer_range, which SP keeps at every width): the exponents do not depend on it, the widths where they
show do (each hidden matmul multiplies by std * sqrt(n), 0.16 at width 64 with 0.02, 1 with 0.125).
--coord OPT also runs the coord check (3 steps, its defaults) with that std and prints its failures.
"""

import argparse

import torch
from mudelta.codegen import generate, load_module
from mudelta.graphs import builders
from mudelta.graphs.presets import load
from mudelta.kernels import chunk_gated_delta_rule_torch
from mudelta.runtime import coord
from mudelta.runtime.models import model_class


def grads(module, width, seed, batch, seq, finite):
    torch.manual_seed(seed)
    model = model_class(module)(module.Config(width=width)).double()
    return model_grads(module, model, *coord._batch(model, batch, seq, seed), finite)


def model_grads(module, model, x, y, finite):
    """rms(dL/d node) of every tapped node of `model` (of generated `module`) on the batch (x, y)."""
    kept = {}

    def tap(name, value):
        value = value() if callable(value) else value
        if torch.is_tensor(value) and value.requires_grad:
            value.retain_grad()
            kept[name] = value
        return value

    module.tap, module.TAPS = tap, {}  # TAPS set: the spelled-out attention, every node tapped
    _, loss = model(x, y)
    loss.backward()
    return {n: coord._size(v.grad, finite.get(n)) for n, v in kept.items() if v.grad is not None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--parametrization", default="sp")
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--widths", default="64,128,256,512,1024")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--set", action="append", default=[], help="preset option KEY=VALUE")
    ap.add_argument("--std", default=None, help="the hidden matrices' fixed init std (default: the presets')")
    ap.add_argument("--coord", default=None, help="also run the coord check with this optimizer")
    args = ap.parse_args()
    if args.std is not None:
        builders.STD = args.std
    opts = {"vocab": "256", **dict(s.split("=", 1) for s in args.set)}
    if args.spec == "mlp":
        opts.pop("vocab")
    graph = load(args.spec, opts)
    widths = [int(w) for w in args.widths.split(",")]
    engine = coord._first_steps(graph, args.optimizer, args.parametrization).engine
    module = load_module(generate(graph, args.optimizer, args.parametrization, base_width=widths[0]), "gp")
    if hasattr(module, "chunk_gated_delta_rule"):  # as the coord check: the PyTorch recurrence, in float64
        module.chunk_gated_delta_rule = chunk_gated_delta_rule_torch
    finite = coord.finite_nodes(graph)  # sizes as the coord check takes them
    runs = [[grads(module, w, s, args.batch, args.seq, finite) for s in range(args.seeds)] for w in widths]
    print(f"{args.spec} {args.parametrization}, std {builders.STD}: rms(dL/d node) at init, "
          f"widths {args.widths}, {args.seeds} seeds")
    print(f"{'node':24s} {'engine':>7s} {'slope':>7s} {'last':>7s}  rms")
    for name in graph.order:
        if name not in runs[0][0] or name not in engine.grad:
            continue
        rms = [coord.geomean(r[name] for r in runs[i]) for i in range(len(widths))]
        pred = float(engine.grad[name])
        s, last = coord.slope(widths, rms), coord.slope(widths[-2:], rms[-2:])
        flag = "" if abs(s - pred) <= coord.TOLERANCE else "  <- off"
        print(f"{name:24s} {pred:7.2f} {s:7.2f} {last:7.2f}  " + " ".join(f"{v:.2e}" for v in rms) + flag)
    if args.coord:
        r = coord.coord_check(args.spec, opts, widths=widths, optimizer=args.coord,
                              parametrization=args.parametrization, seeds=args.seeds, progress=False)
        fails = [n for n in r["nodes"] if not n.passed]
        passed = len(r["nodes"]) - len(fails)
        print(f"\ncoord check {args.coord}, std {builders.STD}: {passed}/{len(r['nodes'])} pass")
        for n in fails:
            print(f"  {n.name:24s}@{n.step} predicted {n.predicted:6.2f} measured {n.measured:6.2f}")


if __name__ == "__main__":
    main()
