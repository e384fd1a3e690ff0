"""Markdown table of the CPU sweep results (results.jsonl): final val loss per (parametrization, width, lr), or
'div@STEP' for a trial stopped as diverged."""

import json
import sys
from collections import defaultdict
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/lr_transfer/sgd_trace/results.jsonl")
cells, lrs = defaultdict(dict), set()
for line in path.read_text().splitlines():
    r = json.loads(line)
    par = Path(r["parametrization"]).stem.replace("sgd_abl_", "")
    lrs.add(r["lr"])
    cells[(par, r["width"])][r["lr"]] = (
        f"div@{r['steps'] + 1}" if r["diverged"] else f"{r['final_val_loss']:.3f}"
    )
lrs = sorted(lrs)
print("| parametrization | width | " + " | ".join(f"lr {v:g}" for v in lrs) + " |")
print("|---|---:|" + "---:|" * len(lrs))
for (par, w), row in sorted(cells.items(), key=lambda kv: (kv[0][0] != "mup", kv[0][0], kv[0][1])):
    print(f"| {par} | {w} | " + " | ".join(row.get(v, "") for v in lrs) + " |")
