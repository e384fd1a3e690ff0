"""The share eps / mean(u^2) of every RMSNorm's input at init in the lr-transfer model (config.yaml: GDN, 8
layers, 6 heads, tied, base 128, vocab 8192), at widths 128 and 1024, with one eps and with the derived rule
(results.md, "AdamW on a sqrt(2) grid, and the derived norm eps"). Random tokens, 2 x 256, seed 0; CPU.

    python benchmarks/lr_transfer/norm_eps_share.py
"""

import torch
from mudelta.codegen import generate, load_module
from mudelta.graphs.presets import load
from mudelta.runtime.models import model_class


def main():
    graph = load("gdn", {"layers": "8", "heads": "6", "tied": "true", "vocab": "8192"})
    module = load_module(generate(graph, "adamw", "mup", 128), "norm_eps_share")
    for derived in (False, True):
        for width in (128, 1024):
            torch.manual_seed(0)
            model = model_class(module)(module.Config(width=width, derived_norm_eps=derived))
            share = {}

            def record(m, args, name, share=share):
                share.setdefault(name, []).append(m.eps / args[0].pow(2).mean().item())

            hooks = [m.register_forward_pre_hook(lambda m, a, n=n: record(m, a, n))
                     for n, m in model.named_modules() if isinstance(m, module.RMSNorm)]
            idx = torch.randint(0, 8192, (2, 257), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                model(idx[:, :-1], idx[:, 1:])
            for h in hooks:
                h.remove()
            groups = {}
            for n, s in share.items():
                groups.setdefault(n.split(".")[-1], []).extend(s)
            text = ", ".join(f"{k} {100 * sum(v) / len(v):.2f}%" for k, v in sorted(groups.items()))
            label = "derived rule" if derived else "one eps"
            print(f"{label:12s} width {width:4d}: eps / mean(u^2), mean over layers: {text}")


if __name__ == "__main__":
    main()
