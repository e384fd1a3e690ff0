"""Coordinate checks for every builtin family, muP and SP, AdamW and SGD, on the CPU (issue 4).

    python benchmarks/coord_check.py   # writes benchmarks/coord/{summary.md, results.json, *.png}

Each case: 3 steps on one fixed batch of standard-library bytes, 3 seeds, the default learning rate of
`mudelta coord-check`, base width 64 (every rule is 1 there). A node passes when its measured log-log slope
is within the fixed tolerance of the engine's exponent. SP and the MLP: widths 64..1024, batch 4 x 64 (the
defaults of `mudelta coord-check`). muP of the attention models is measured where the width -> infinity
limit at fixed batch applies (the theory's limit): one sequence of 32 bytes (the aligned, LLN part of a
change is diluted over the batch's tokens, the CLT part is not, so the crossover width grows with the
tokens), and for the transformer widths 256..4096 (its attention scores reach the predicted n^1 only above
~1024), for the heads regime widths 256..2048 (heads = width/64: 4..32 heads; the per-head gates, set at the
rms of equal-probability strata of their init distribution, are exact in rms from one head on, but their SGD
changes weight higher moments, which a few heads do not sample).
"""

import datetime
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch
from mudelta.derive import report
from mudelta.runtime import coord

DEFAULT = {"widths": (64, 128, 256, 512, 1024), "batch": 4, "seq": 64}
# (spec, overrides, muP method); SP always uses DEFAULT
CASES = [
    ("mlp", {}, DEFAULT),
    ("transformer", {"layers": "2"}, {"widths": (256, 512, 1024, 2048, 4096), "batch": 1, "seq": 32}),
    ("gdn", {"layers": "2"}, {"widths": (64, 128, 256, 512, 1024), "batch": 1, "seq": 32}),
    (
        "gdn",
        {"layers": "2", "regime": "heads", "d_k": "8", "d_v": "16", "tied": "false"},
        {"widths": (256, 512, 1024, 2048), "batch": 1, "seq": 32},
    ),
]
BASE_WIDTH = 64
OUT = Path(__file__).parent / "coord"
SEEDS = 3  # sizes averaged over seeds before the fit


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def label(spec, opts):
    return spec + "".join(f"-{k}{v}" for k, v in opts.items() if k != "layers")


def main():
    OUT.mkdir(exist_ok=True)
    results, lines = [], []
    for spec, opts, method in CASES:
        for par in ("mup", "sp"):
            m = method if par == "mup" else DEFAULT
            for opt in ("adamw", "sgd"):
                t0 = time.time()
                r = coord.coord_check(
                    spec,
                    opts,
                    optimizer=opt,
                    parametrization=par,
                    seeds=SEEDS,
                    progress=False,
                    base_width=BASE_WIDTH,
                    **m,
                )
                name = f"{label(spec, opts)}_{par}_{opt}"
                coord.plot(r, OUT / f"{name}.png")
                results.append({"case": name, "overrides": opts, **coord.to_json(r)})
                fails = [n for n in r["nodes"] if not n.passed]
                kinds = Counter((report.collapse_layers(n.name), n.step) for n in fails)
                worst = ", ".join(f"{k[0]}@{k[1]}" for k, _ in kinds.most_common(8))
                w = r["widths"]
                lines.append(
                    f"| {label(spec, opts)} | {par} | {opt} | {w[0]}-{w[-1]} | {r['batch']} x {r['seq']} | "
                    f"{len(r['nodes']) - len(fails)}/{len(r['nodes'])} | {worst or '-'} | "
                    f"{time.time() - t0:.0f} |"
                )
                print(lines[-1], flush=True)
    meta = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "CPU",
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "tolerance": coord.TOLERANCE,
        "base_width": BASE_WIDTH,
        "seeds": SEEDS,
    }
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    md = [
        f"# Coordinate checks ({meta['date']}, {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"Python {meta['python']})",
        "",
        f"Script: `python benchmarks/coord_check.py`. 3 steps on one fixed batch of standard-library bytes, base "
        f"width {BASE_WIDTH} (every rule is 1 there), sizes averaged over {SEEDS} seeds, tolerance "
        f"{coord.TOLERANCE} on the log-log slope (fixed). Step 0 = size at init, step t = change after t steps. "
        "Predictions are first order in the learning rate (d1; equal to the full change under muP).",
        "",
        "Method (widths and batch per row): SP and the MLP use the `mudelta coord-check` defaults (widths "
        "64-1024, batch 4 x 64). muP of the attention models is measured in the limit the theory takes, width "
        "-> infinity at a fixed batch: one sequence of 32 bytes, since the aligned (LLN) part of a change is "
        "diluted over the batch's tokens and the CLT part is not, so the crossover width grows with the tokens; "
        "the transformer at widths 256-4096 (its layer-1 attention scores after one AdamW step reach slope 1 "
        "only above width ~1024), the heads regime (heads = width/64) at 256-2048, i.e. 4-32 heads: the per-head "
        "gates are set at the rms of equal-probability strata of their init distribution, exact in rms from one "
        "head on, but their SGD changes weight higher moments, which a few heads do not sample. Evidence and "
        "the remaining misses: [method.md](method.md), [change_terms.md](change_terms.md).",
        "",
        "| model | parametrization | optimizer | widths | batch | nodes passing | failing nodes (node@step, "
        "most common) | seconds |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
    ]
    (OUT / "summary.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
