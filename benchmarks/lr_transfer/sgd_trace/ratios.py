"""Ratio of a quantity at the largest width to the same quantity at the smallest, per step, from trace.py
output: under exponents the engine predicts, ratio = (w_max/w_min)^(predicted exponent) at every step; a
ratio that climbs step after step is a quantity growing with width beyond its exponent.

    python benchmarks/lr_transfer/sgd_trace/ratios.py TRACE.jsonl KEY [KEY ...]   (param keys or node names)
"""

import json
import sys

runs = [json.loads(line) for line in open(sys.argv[1])]
lo, hi = runs[0], runs[-1]
steps = min(len(lo["steps"]), len(hi["steps"]))
print(f"{sys.argv[1]}: width {hi['width']} / width {lo['width']}, steps 1..{steps}")
print(
    "train loss "
    + " | ".join(f"w{r['width']}: " + " ".join(f"{s['train_loss']:.1f}" for s in r["steps"]) for r in runs)
)
for k in sys.argv[2:]:
    kind = "param" if k in lo["steps"][0]["param"] else "node"
    for field in ["dW", "grad"] if kind == "param" else [None]:

        def val(r, t):
            v = r["steps"][t][kind][k]
            return v[field] if field else v

        print(
            f"{k:32s} {field or 'd':4s} " + " ".join(f"{val(hi, t) / val(lo, t):7.3g}" for t in range(steps))
        )
