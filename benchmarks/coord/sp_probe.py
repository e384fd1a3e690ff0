"""SP's coordinate check in linear response and with other SP constants (coord/method.md, "SP in linear
response, SP's constants, and the gates' floor"): each case is `coord.coord_check` with the lr, batch,
widths named, and optionally the hidden matrices' fixed std (`fan_in`: 1/sqrt(fan-in), Tensor Programs' SP)
and the embedding's std replaced in the preset builders (probe-only, as grad_probe.py --std).

    python benchmarks/coord/sp_probe.py   # writes benchmarks/coord/sp_probe.json, prints one line per case
"""

import datetime
import json
import platform
from pathlib import Path

import torch
from mudelta.graphs import builders
from mudelta.runtime import coord

# name -> (spec, optimizer, lr, (batch, seq), widths, hidden std or None (preset), embedding std or None)
W64, W256 = (64, 128, 256, 512, 1024), (256, 512, 1024, 2048, 4096)
CASES = {
    "mlp_sgd_lr0.1": ("mlp", "sgd", 0.1, (4, 64), W64, None, None),
    "mlp_sgd_lr0.01": ("mlp", "sgd", 0.01, (4, 64), W64, None, None),
    "mlp_sgd_lr0.001": ("mlp", "sgd", 0.001, (4, 64), W64, None, None),
    "mlp_adamw_lr1e-4": ("mlp", "adamw", 1e-4, (4, 64), W64, None, None),
    "mlp_adamw_lr1e-4_256-4096": ("mlp", "adamw", 1e-4, (4, 64), W256, None, None),
    "mlp_adamw_lr1e-3_256-4096": ("mlp", "adamw", 1e-3, (4, 64), W256, None, None),
    "mlp_adamw_lr0.01_256-4096": ("mlp", "adamw", 0.01, (4, 64), W256, None, None),
    "transformer_sgd_lr0.01": ("transformer", "sgd", 0.01, (4, 64), W64, None, None),
    "transformer_adamw_lr1e-3": ("transformer", "adamw", 1e-3, (4, 64), W64, None, None),
    "transformer_sgd_lr0.1_fanin": ("transformer", "sgd", 0.1, (4, 64), W64, "fan_in", None),
    "transformer_sgd_lr0.1_fanin_embed1": ("transformer", "sgd", 0.1, (4, 64), W64, "fan_in", "1"),
    "transformer_adamw_lr0.01_fanin_embed1": ("transformer", "adamw", 0.01, (4, 64), W64, "fan_in", "1"),
    "gdn_sgd_lr0.1_fanin_embed1": ("gdn", "sgd", 0.1, (4, 64), W64, "fan_in", "1"),
}


def main():
    preset_std, preset_embed = builders.STD, builders._embed
    rows = {}
    for name, (spec, opt, lr, (batch, seq), widths, std, embed_std) in CASES.items():
        builders.STD = preset_std if std is None else (None if std == "fan_in" else std)
        if embed_std is None:
            builders._embed = preset_embed
        else:

            def _embed(b, std=embed_std):
                tokens = b.input("tokens", ["vocab"])
                return b.embedding("embed", tokens, ["d_model"], "embeddings.weight", std=std)

            builders._embed = _embed
        try:
            r = coord.coord_check(spec, {} if spec == "mlp" else {"layers": "2"}, optimizer=opt,
                                  parametrization="sp", seeds=3, progress=False, base_width=64, lr=lr,
                                  batch=batch, seq=seq, widths=widths)
        finally:
            builders.STD, builders._embed = preset_std, preset_embed
        passed = sum(n.passed for n in r["nodes"])
        rows[name] = {"hidden_std": std, "embedding_std": embed_std, "passed": passed,
                      "total": len(r["nodes"]), **coord.to_json(r)}
        print(f"{name}: {passed}/{len(r['nodes'])}", flush=True)
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "python": platform.python_version(), "device": "CPU", "threads": torch.get_num_threads()}
    out = Path(__file__).parent / "sp_probe.json"
    out.write_text(json.dumps({"meta": meta, "cases": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
