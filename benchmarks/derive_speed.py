"""Time to derive 8- to 48-layer models on the CPU, both optimizers, muP and SP. Targets: under 2 s for a
24-layer GDN hybrid (issue 3) and for 48 layers.

    python benchmarks/derive_speed.py   # writes benchmarks/results/derive_speed.{json,md}
"""

import datetime
import itertools
import json
import platform
import time
from pathlib import Path

import sympy

from mudelta.derive import derive
from mudelta.graphs.presets import load

CASES = [("gdn", {"layers": str(L)}) for L in (8, 48)] + [("gdn-hybrid", {"layers": "24"})] + [
    ("transformer", {"layers": str(L)}) for L in (8, 48)]


def main():
    rows = []
    for spec, opts in CASES:
        graph = load(spec, opts)
        for opt, par in itertools.product(("adamw", "sgd"), ("mup", "sp")):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                derive(graph, opt, par)
                times.append(time.perf_counter() - t0)
            rows.append({"spec": spec, "layers": int(opts["layers"]), "optimizer": opt, "parametrization": par,
                         "nodes": len(graph.nodes), "params": len(graph.params), "seconds_median": sorted(times)[1]})
            print(f"{spec:12s} L={opts['layers']:>2s} {opt:6s} {par:4s} {len(graph.nodes):5d} nodes  "
                  f"{sorted(times)[1]:.3f} s")
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "sympy": sympy.__version__, "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'})"}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "derive_speed.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = [f"# derive speed ({meta['date']}, {meta['machine']}, Python {meta['python']}, SymPy {meta['sympy']})", "",
          "Target: under 2 s for the 24-layer GDN hybrid and for 48 layers.", "",
          "| spec | layers | optimizer | parametrization | nodes | median s |", "|---|---|---|---|---|---|"]
    md += [f"| {r['spec']} | {r['layers']} | {r['optimizer']} | {r['parametrization']} | {r['nodes']} | "
           f"{r['seconds_median']:.3f} |" for r in rows]
    (out / "derive_speed.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
