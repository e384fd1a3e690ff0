"""The `mudelta` command line."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import sys
from pathlib import Path

from mudelta.graphs.ir import SpecError
from mudelta.graphs.presets import PRESETS, load, options


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SpecError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        if key.strip() in out and out[key.strip()] != value.strip():
            raise SpecError(f"--set {key.strip()} is given twice ({out[key.strip()]} and {value.strip()})")
        out[key.strip()] = value.strip()
    return out


def _derivation(args):
    from mudelta.derive import derive

    graph = load(args.spec, _overrides(args.set))
    return derive(graph, args.optimizer, args.parametrization, args.convention)


def cmd_derive(args) -> int:
    from mudelta.derive import report

    d = _derivation(args)
    emit = {"table": report.table, "markdown": report.markdown, "latex": report.latex}
    if args.format == "json":  # "spec" is the graph's name; the preset or file and options say which one
        print(report.to_json(d, preset=args.spec, options=_overrides(args.set)))
    else:
        print(emit[args.format](d, collapse=not args.all_layers))
    return 1 if (d.violations and args.parametrization == "mup") else 0


def cmd_explain(args) -> int:
    from mudelta.derive import report

    d = _derivation(args)
    print(report.explain(d, args.param, args.depth))
    return 0


def cmd_codegen(args) -> int:
    from mudelta.codegen import generate

    options = _overrides(args.set)
    graph = load(args.spec, options)
    command = shlex.join(["mudelta", *sys.argv[1:]]) if args.command_line is None else args.command_line
    source = generate(graph, args.optimizer, args.parametrization, args.base_width, args.convention, command,
                      args.spec, options)
    if args.output == "-":
        print(source, end="")
    else:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"-o {out}: no folder {out.parent}")
        if out.is_dir():
            raise ValueError(f"-o {out}: a folder; give the model file's path, e.g. {out / 'model.py'}")
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(source)
        tmp.replace(out)  # atomic: a failed run never leaves half a file
        print(
            f"wrote {out} ({args.spec}, {args.parametrization} under {args.optimizer}, base width "
            f"{args.base_width})"
        )
    return 0


def _check_png(option: str, path: str) -> None:
    """A PNG path that can be written: its folder exists, it is not a folder, it ends in .png."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"{option} {path}: expected a .png path (or 'none' to skip the plot)")
    if p.is_dir():
        raise ValueError(f"{option} {path}: a folder, not a file")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"{option} {path}: no folder {p.parent}")


def cmd_coord_check(args) -> int:
    import json

    from mudelta.runtime import coord

    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise ValueError(
            f"--widths {args.widths!r}: expected comma-separated integers, e.g. 64,128,256"
        ) from None
    if any(w <= 0 for w in widths):
        raise ValueError(f"--widths {args.widths!r}: widths must be positive")
    overrides = _overrides(args.set)
    # the default name tells runs with other options apart, from names that are safe on any filesystem
    opts = [f"{k}={v}" for k, v in sorted(overrides.items())]
    name = "_".join([args.spec, args.parametrization, args.optimizer, *opts])
    safe = re.sub(r"[^A-Za-z0-9.=+-]+", "_", name)
    if safe != name or len(safe) > 100:  # a hash of the options keeps names that the cut makes equal apart
        safe = safe[:80] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    png = args.plot or f"coord_{safe}.png"
    if png != "none":
        _check_png("--plot", png)  # before the measurement, which can take long
    result = coord.coord_check(
        args.spec,
        overrides,
        widths,
        args.steps,
        args.optimizer,
        args.parametrization,
        args.lr,
        args.seeds,
        batch=args.batch,
        seq=args.seq,
        progress=not args.quiet,  # on stderr: a json report on stdout stays clean
        base_width=args.base_width,
        device=args.device,
        dtype=args.dtype,
        derived_norm_eps=args.derived_norm_eps,
    )
    if png != "none":
        coord.plot(result, png)
    if args.format == "json":
        print(json.dumps(coord.to_json(result), indent=1))
    else:
        print(coord.table(result, failures_only=args.failures))
        if png != "none":
            print(f"plot: {png}")
    return 0 if all(n.passed for n in result["nodes"]) else 1


def cmd_docs(args) -> int:
    from mudelta.runtime.docs import write

    stale = write(Path(args.dir), check=args.check)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and stale:
        print(
            "mudelta: error: the documents disagree with the tool; run `mudelta docs` to regenerate",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_data_prepare(args) -> int:
    from mudelta.runtime.data import prepare

    if args.tokenizer == "bytes" and args.vocab_size is not None:
        raise ValueError("--vocab-size is for --tokenizer bpe; bytes always have 256 tokens")
    header = prepare(
        args.sources,
        args.out,
        args.tokenizer,
        8192 if args.vocab_size is None else args.vocab_size,
        args.val_fraction,
        args.pattern,
        args.text_column,
        progress=not args.quiet,
    )
    splits = ", ".join(
        f"{k} {v['tokens']:,} tokens in {v['documents']} documents" for k, v in header["splits"].items()
    )
    print(
        f"wrote {args.out}: {header['tokenizer']['kind']} tokens (vocab {header['tokenizer']['vocab_size']}); "
        f"{splits}"
    )
    return 0


def cmd_train(args) -> int:
    import json
    import os

    from mudelta.runtime.config import load_config
    from mudelta.runtime.train import run

    sets = list(args.set or [])
    if args.fsdp:
        sets.append("train.fsdp=true")
    cfg = load_config(args.config, sets)
    result = run(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    if result["diverged"]:
        print(f"mudelta: error: training diverged: {result['error']}", file=sys.stderr)
        return 3
    return 0


def cmd_sweep(args) -> int:
    from mudelta.runtime.sweep import load_sweep, run_sweep

    base, grid = load_sweep(args.config, args.preset, args.set)
    devices = None if args.devices is None else [d for d in args.devices.split(",") if d != ""]
    if args.cpu:
        devices = []
    elif devices:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--devices {args.devices}: no CUDA device is visible (--cpu runs on the CPU)")
    rows = run_sweep(
        base, grid, args.results, args.shard, devices, args.per_gpu, args.workers, progress=not args.quiet
    )
    errors = [r for r in rows if r["status"] == "error"]
    for r in errors:
        print(f"mudelta: trial {r['out']} failed: {r['error']}", file=sys.stderr)
    return 1 if errors else 0


def cmd_plot(args) -> int:
    import json

    from mudelta.runtime import plot

    if args.output != "none":
        _check_png("-o", args.output)
    rows = plot.read_many(args.results)
    errors = [r for r in rows if r.get("status") == "error"]
    if errors:  # crashed trials have no loss: say what the summary leaves out
        where = sorted({(r["parametrization"], r["optimizer"], r["width"]) for r in errors})
        print(
            f"note: {len(errors)} trial(s) ended in an error and are left out: "
            + ", ".join(f"{p} {o} width {w}" for p, o, w in where),
            file=sys.stderr,
        )
    summary = plot.summarize(rows, args.metric)
    if not summary:
        raise ValueError(f"no finished trials to summarise in {', '.join(args.results)}")
    if args.output != "none":
        plot.plot(rows, args.output, args.metric)
    if args.format == "json":
        print(json.dumps(summary, indent=1))
    elif args.format == "markdown":
        print(plot.markdown(summary), end="")
    else:
        print(plot.text(summary), end="")
        if args.output != "none":
            print(f"plot: {args.output}")
    return 0


def cmd_presets(args) -> int:
    for name in PRESETS:
        opts = ", ".join(f"{k}={v}" for k, v in options(name).items())
        print(f"{name:12s} {opts}")
    return 0


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _common(p, yaml_specs=True):
    presets = f"a builtin preset ({', '.join(PRESETS)})"
    p.add_argument("spec", help=presets + " or a YAML spec path" if yaml_specs else presets)
    p.add_argument("--optimizer", default="adamw", choices=["sgd", "sgd-nesterov", "adam", "adamw"])
    p.add_argument(
        "--parametrization",
        default="mup",
        help="mup (derive), or evaluate sp, ntk, mf, or a YAML/JSON file of exponents",
    )
    p.add_argument(
        "--convention",
        default="tp5",
        choices=["tp5", "mup", "tp4"],
        help="which (a, b, c) representative to print: tp5 = Tensor Programs V Table 3 (no "
        "multipliers), mup = Table 8 / mup package (readout multiplier), tp4 = one global LR",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="preset option, e.g. layers=24")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mudelta",
        description="Width-scaling rules (muP), derived from the computation graph instead of guessed.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "derive", help="derive (or evaluate) every parameter's init, multiplier and LR exponent"
    )
    _common(p)
    p.add_argument("--format", default="table", choices=["table", "markdown", "json", "latex"])
    p.add_argument(
        "--all-layers", action="store_true", help="one row per layer instead of grouping equal layers"
    )
    p.set_defaults(func=cmd_derive)
    p = sub.add_parser("explain", help="the step-by-step derivation of one parameter's rule")
    _common(p)
    p.add_argument("param", help="parameter name, e.g. layers.0.attn.a_proj.weight")
    p.add_argument("--depth", type=_count, default=None, help="follow dependencies this many levels only")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("codegen", help="render a runnable PyTorch model module with the rules baked in")
    _common(p, yaml_specs=False)  # a model module is rendered from a preset's family
    p.add_argument("-o", "--output", default="-", help="output .py file (default: stdout)")
    p.add_argument("--base-width", type=int, default=256, help="width at which every rule is 1 (default 256)")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_codegen)
    p = sub.add_parser(
        "coord-check", help="measure coordinate sizes vs width and compare with the derivation"
    )
    _common(p, yaml_specs=False)  # it measures a generated model, which only a preset's family renders
    p.add_argument(
        "--widths",
        default="64,128,256,512,1024",
        help="comma-separated widths; the smallest is the base unless --base-width",
    )
    p.add_argument("--steps", type=int, default=3, help="optimizer steps after init (default 3)")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: per optimizer)")
    p.add_argument("--seeds", type=int, default=1, help="models per width, rms averaged (geometric mean)")
    p.add_argument("--batch", type=int, default=4, help="sequences in the fixed batch (default 4)")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument(
        "--base-width", type=int, default=None, help="width at which every rule is 1 (default: first width)"
    )
    p.add_argument(
        "--device", default="cpu", help="torch device of the models, e.g. cuda (initialised on the CPU)"
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="the models' precision (default float32)"
    )
    p.add_argument(
        "--derived-norm-eps", action="store_true", help="norms take the derived eps rule (default: one eps)"
    )
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.add_argument("--failures", action="store_true", help="table: list only the nodes that fail")
    p.add_argument(
        "--plot", default=None, help="PNG path (default coord_SPEC_PAR_OPT[_OPTIONS].png; 'none' to skip)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_coord_check)
    p = sub.add_parser(
        "docs", help="regenerate the derived-rules documents (docs/*.md) from the tool's output"
    )
    p.add_argument("--dir", default="docs", help="output folder (default: docs)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a document is out of date")
    p.set_defaults(func=cmd_docs)
    p = sub.add_parser("data", help="prepare token shards for training")
    dsub = p.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser(
        "prepare", help="tokenize text (files, folders, globs, a datasets folder) into shards"
    )
    p.add_argument(
        "sources",
        nargs="*",
        help="files, folders, globs or a saved Hugging Face datasets folder "
        "(default: the running interpreter's standard library, *.py)",
    )
    p.add_argument("--tokenizer", default="bytes", choices=["bytes", "bpe"])
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default 8192)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents for validation")
    p.add_argument(
        "--pattern", default=None, help="file-name pattern inside folders (default: all; stdlib *.py)"
    )
    p.add_argument("--text-column", default="text", help="text column of a datasets folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_prepare)
    p = sub.add_parser("train", help="train a generated model from a YAML config")
    p.add_argument("config", nargs="?", default=None, help="YAML config (sections model, data, train, out)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3 or width=256"
    )
    p.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 instead of DDP")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sweep", help="learning-rate sweep over widths x lrs x parametrizations x optimizers")
    p.add_argument("config", nargs="?", default=None, help="YAML config with a `sweep:` section")
    p.add_argument("--preset", default=None, help="a builtin sweep instead of a config (tiny: CPU, minutes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the base config")
    p.add_argument("--results", default=None, help="results JSONL (default: OUT/results.jsonl)")
    p.add_argument("--shard", default=None, help="i/N: run every N-th trial starting at i (0-based)")
    p.add_argument("--devices", default=None, help="GPU ids, e.g. 0,1,2,3 (default: all visible)")
    p.add_argument("--per-gpu", type=int, default=1, help="trials sharing one GPU at a time (default 1)")
    p.add_argument(
        "--workers", type=int, default=1, help="CPU: parallel trial processes (1: in this process)"
    )
    p.add_argument("--cpu", action="store_true", help="run on CPU even when GPUs are visible")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("plot", help="val loss vs LR per width, optimal LR per width and its drift")
    p.add_argument(
        "results", nargs="+", help="results JSONL written by `mudelta sweep` (several: one panel per file)"
    )
    p.add_argument("-o", "--output", default="lr_sweep.png", help="PNG path ('none' to skip)")
    p.add_argument("--metric", default="final_val_loss", choices=["final_val_loss", "best_val_loss"])
    p.add_argument("--format", default="table", choices=["table", "json", "markdown"])
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("presets", help="list the builtin presets and their options")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"mudelta: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`mudelta derive gdn | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:  # ^C: train's Interrupted names its checkpoint
        train = sys.modules.get("mudelta.runtime.train")  # loaded if training ran (no torch import here)
        if train is not None and isinstance(exc, train.Interrupted):
            again = "run the sweep again to continue" if args.func is cmd_sweep else "continue with --resume"
            print(f"mudelta: {exc}; checkpoint {exc.path}; {again}", file=sys.stderr)
        else:
            print("mudelta: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
