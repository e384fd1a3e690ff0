"""The floor under GDN's per-head gate gradients at init under muP SGD (coord/method.md, "SP in linear
response, SP's constants, and the gates' floor", item 5): rms(dL/d node) over widths for the gates, o and
the decay inputs, in float64 on the coord check's 1 x 32 batch, 3 seeds, for four variants: the model as
generated (one fixed o_norm eps), the final norm's denominator detached in the backward, the derived norm eps,
and the model untied.

    python benchmarks/coord/gate_floor_probe.py   # writes benchmarks/coord/gate_floor_probe.txt
"""

import datetime
import platform
import sys
from pathlib import Path

import torch
from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.kernels import chunk_gated_delta_rule_torch
from mudelta.runtime import coord
from mudelta.runtime.models import model_class

sys.path.insert(0, str(Path(__file__).parent))
from grad_probe import model_grads  # noqa: E402

WIDTHS = (64, 128, 256, 512, 1024, 2048)
NODES = ("l0_dt_bias", "l0_a", "l0_rate", "l1_dt_bias", "l1_a", "l1_rate", "l0_o", "l1_o")
VARIANTS = ("one eps", "final norm detached", "derived norm eps", "untied")


def grad_sizes(module, graph, width, seed, variant):
    torch.manual_seed(seed)
    cfg = module.Config(width=width, **({"derived_norm_eps": True} if variant == "derived norm eps" else {}))
    model = model_class(module)(cfg).double()
    if variant == "final norm detached":
        norm = model.norm

        def held(x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps).detach() * norm.weight

        norm.forward = held
    sizes = model_grads(module, model, *coord._batch(model, 1, 32, seed), coord.finite_nodes(graph))
    return {n: sizes[n] for n in NODES}


def main():
    torch.set_num_threads(1)
    today, py = datetime.date.today().isoformat(), platform.python_version()
    lines = [f"GDN (2 layers, vocab 256) muP SGD, rms(dL/d node) at init, float64, batch 1 x 32, 3 seeds; "
             f"{today}, CPU, torch {torch.__version__}, Python {py}",
             f"widths {WIDTHS}; engine exponent -0.5 for every node below; slope over all widths, last = "
             "slope of the last two", ""]
    for variant in VARIANTS:
        tied = {"tied": "false"} if variant == "untied" else {}
        graph = load("gdn", {"layers": "2", "vocab": "256", **tied})
        module = load_module(generate(graph, "sgd", "mup", base_width=WIDTHS[0]), "gate_floor")
        module.chunk_gated_delta_rule = chunk_gated_delta_rule_torch
        sizes = {n: [] for n in NODES}
        for w in WIDTHS:
            runs = [grad_sizes(module, graph, w, s, variant) for s in range(3)]
            for n in NODES:
                sizes[n].append(coord.geomean(r[n] for r in runs))
        lines.append(variant)
        for n in NODES:
            rms = sizes[n]
            lines.append(f"  {n:12s} slope {coord.slope(WIDTHS, rms):6.2f} last "
                         f"{coord.slope(WIDTHS[-2:], rms[-2:]):6.2f}  " + " ".join(f"{v:.2e}" for v in rms))
        print("\n".join(lines[-len(NODES) - 1:]), flush=True)
    (Path(__file__).parent / "gate_floor_probe.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
