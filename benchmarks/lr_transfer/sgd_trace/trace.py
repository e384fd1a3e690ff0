"""Per-parameter update sizes and per-node changes over training, across widths (sgd_trace.md).

Trains the generated GDN LM exactly as `mudelta train` does (same config keys, param groups, warmup + cosine,
SGD-Nesterov, data order), and after every step records, for each parameter (layers merged as *):
rms(W_t - W_0), rms(W_0), rms(grad), and for every tapped graph node on one fixed validation probe batch:
rms(value_t - value_0) (finite-dim nodes: rms over positions of the largest feature entry, as the coord check).
One process, one thread. Output: one JSON object per width (JSONL).

    python benchmarks/lr_transfer/sgd_trace/trace.py --par mup --lr 0.1 --widths 64,128,256,512 --steps 20 \
        -o benchmarks/lr_transfer/sgd_trace/trace_mup_lr0.1.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from mudelta.runtime.config import load_config
from mudelta.runtime.coord import _size
from mudelta.runtime.data import Batches, TokenData, val_batches
from mudelta.runtime.train import build_model, optimizer_for, schedule


def key(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)


def setup(args, width: int):
    """Config, generated module, model, optimizer (SGD-Nesterov unless --set model.optimizer=...) and train
    batches of a trial, as `mudelta train`."""
    over = [
        f"model.options.layers={args.layers}",
        f"model.base_width={args.base}",
        f"model.width={width}",
        f"model.parametrization={args.par}",
        "model.optimizer=sgd-nesterov",
        f"model.multipliers.readout={args.alpha}",
        f"data.path={args.data}",
        f"data.batch={args.batch}",
        f"data.seq={args.seq}",
        f"train.steps={args.total_steps}",
        f"train.warmup={args.warmup}",
        f"train.lr={args.lr}",
        "train.weight_decay=0.0",
        "train.momentum=0.9",
        f"train.seed={args.seed}",
        *(f"model.options.{kv}" for kv in args.option),
        *args.set,
    ]
    cfg = load_config("benchmarks/lr_transfer/config.yaml", over)
    data = TokenData(cfg.data.path)
    torch.manual_seed(cfg.train.seed)
    module, model = build_model(cfg, data.vocab_size, Path(tempfile.gettempdir()) / "sgd_trace_models")
    opt = optimizer_for(cfg, module, model)
    batches = Batches(data, cfg.data.batch, cfg.data.seq, cfg.train.seed)
    return cfg, data, module, model, opt, batches


def run(args, width: int) -> dict:
    cfg, data, module, model, opt, batches = setup(args, width)
    px, py = val_batches(data, cfg.data.batch, cfg.data.seq, 1)[0]
    names = dict(model.named_parameters())
    w0 = {n: p.detach().clone() for n, p in names.items()}
    vocab, heads = model.cfg.vocab, model.cfg.size("heads")

    def probe():
        module.TAPS = {}
        with torch.no_grad():
            _, loss = model(px, py)
        taps, module.TAPS = module.TAPS, None
        return loss.item(), taps

    _, taps0 = probe()
    finite = {  # feature count of the nodes whose last dim is finite (the coord check's size for those)
        n: (
            v.shape[-1]
            if v.shape[-1] in (vocab, heads) and v.shape[-1] != model.cfg.size("d_model")
            else None
        )
        for n, v in taps0.items()
    }
    out = {"width": width, "lr": args.lr, "par": args.par, "steps": []}
    for step in range(args.steps):
        schedule(opt, step, cfg)
        x, y = batches(step)
        _, loss = model(x, y)
        loss.backward()
        rec = {"step": step + 1, "train_loss": loss.item(), "param": defaultdict(lambda: [0.0, 0.0, 0.0, 0])}
        grads = {
            n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in names.items()
        }
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, p in names.items():
            s = rec["param"][key(n)]  # mean squares, averaged over layers
            s[0] += (p.detach() - w0[n]).double().pow(2).mean().item()
            s[1] += w0[n].double().pow(2).mean().item()
            s[2] += grads[n].double().pow(2).mean().item()
            s[3] += 1
        rec["param"] = {
            k: {"dW": math.sqrt(v[0] / v[3]), "W0": math.sqrt(v[1] / v[3]), "grad": math.sqrt(v[2] / v[3])}
            for k, v in rec["param"].items()
        }
        ploss, taps = probe()
        rec["probe_loss"] = ploss
        rec["node"] = {n: _size(v - taps0[n], finite[n]) for n, v in taps.items()}
        out["steps"].append(rec)
        if not math.isfinite(loss.item()) or not math.isfinite(ploss):
            break
    out["node0"] = {n: _size(v, finite[n]) for n, v in taps0.items()}
    return out


def add_trial_args(ap: argparse.ArgumentParser) -> None:
    """The trial settings of setup() (the CPU analog of sgd_trace.md by default)."""
    ap.add_argument("--par", default="mup")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--total-steps", type=int, default=50, help="schedule length (as the sweep)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="data/stdlib-bpe8k")
    ap.add_argument("--option", action="append", default=[], help="a model option, e.g. gate=false (repeatable)")
    ap.add_argument("--set", action="append", default=[], help="a config override (KEY=VALUE, repeatable)")


def per_width(args, run, report=None) -> None:
    """run(args, width) for each of --widths, one thread; each result is written to --out as a JSON line as
    it finishes, then passed to report."""
    torch.set_num_threads(1)
    with open(args.out, "w") as f:
        for w in (int(v) for v in args.widths.split(",")):
            r = run(args, w)
            f.write(json.dumps(r) + "\n")
            f.flush()
            if report is not None:
                report(r)


def _report(r: dict) -> None:
    last = r["steps"][-1]
    print(
        f"width {r['width']}: {len(r['steps'])} steps, train loss {last['train_loss']:.3f}, "
        f"probe {last['probe_loss']:.3f}",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser()
    add_trial_args(ap)
    ap.add_argument("--steps", type=int, default=20, help="steps recorded")
    ap.add_argument("-o", "--out", required=True)
    per_width(ap.parse_args(), run, _report)


if __name__ == "__main__":
    main()
