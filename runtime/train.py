"""The training loop: a generated model, its derived param groups, warmup + cosine, clipping, bf16 autocast,
validation, checkpoints, divergence detection; DDP (or FSDP2) under torchrun. `run(cfg)` is the entry point
for the CLI and for sweeps."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint
from .config import Config, ConfigError
from .data import Batches, TokenData, val_batches
from .models import flops_per_token, make_optimizer, model_class, norm_eps_switch, render

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


class Diverged(RuntimeError):
    """The loss became non-finite or rose far above its first value; the message names the step and the
    parameter group responsible."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 to min_lr_ratio at the last step."""
    t = cfg.train
    if step < t.warmup:
        return (step + 1) / t.warmup
    span = max(1, t.steps - t.warmup)
    progress = min(1.0, (step - t.warmup) / span)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(opt, step: int, cfg: Config) -> float:
    """Set every param group's lr to its base lr (`base_lr`, the derived one) times lr_factor(step);
    returns the factor."""
    factor = lr_factor(step, cfg)
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor
    return factor


def _group_name(i: int, g: dict) -> str:
    names = g.get("names", [])
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
    return f"param group {i} (lr {g['lr']:.3g}, weight decay {g['weight_decay']:.3g}: {shown})"


@torch.no_grad()
def diagnose(optimizer) -> str:
    """The parameter group to blame for a blow-up: one with non-finite weights, else non-finite gradients,
    else the largest gradient relative to its weights."""
    worst, worst_ratio = None, -1.0
    for kind in ("weights", "gradients"):
        for i, g in enumerate(optimizer.param_groups):
            bad = [
                n
                for n, p in zip(g.get("names", []), g["params"], strict=False)
                if not torch.isfinite(p if kind == "weights" else (p.grad if p.grad is not None else p)).all()
            ]
            if bad:
                return f"non-finite {kind} in {_group_name(i, g)}, first {bad[0]}"
    for i, g in enumerate(optimizer.param_groups):  # float64: a float32 norm of finite entries can overflow
        grads = [p.grad.double().norm() for p in g["params"] if p.grad is not None]
        if grads:
            ratio = (
                torch.stack(grads).norm()
                / torch.stack([p.double().norm() for p in g["params"]]).norm().clamp_min(1e-12)
            ).item()
            if ratio > worst_ratio:
                worst, worst_ratio = i, ratio
    if worst is None:
        return "no gradients"
    return (
        f"largest gradient relative to its weights (|g|/|w| = {worst_ratio:.3g}) in "
        f"{_group_name(worst, optimizer.param_groups[worst])}"
    )


class Interrupted(KeyboardInterrupt):
    """^C (SIGINT) during training: the run stopped after a whole step and wrote a checkpoint there."""

    def __init__(self, step: int, path: Path | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.path = step, path


@contextmanager
def _stop_on_sigint():
    """A flag set by the first ^C (the loop finishes its step, saves and stops); a second ^C aborts now."""
    flag = {"set": False}
    old = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or old in (signal.SIG_IGN, None):
        yield flag  # off the main thread signals cannot be caught; an ignored ^C (a `&` job) stays ignored
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True
        # os.write: a print could re-enter the stderr buffer that the progress bar was writing
        os.write(2, b"\ninterrupted: stopping after this step, saving a checkpoint (^C again: abort now)\n")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


class _Dist:
    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        self.on = self.world > 1
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device is cuda, but no CUDA device is visible (use auto or cpu)")
        if device == "cuda":
            torch.cuda.set_device(self.local)
            self.device = torch.device("cuda", self.local)
        else:
            self.device = torch.device("cpu")
        if self.on and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.on:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def close(self):
        if self.on and dist.is_initialized():
            dist.destroy_process_group()


def _check_momentum_by_kind(cfg: Config) -> None:
    if cfg.train.momentum_by_kind and cfg.model.optimizer != "sgd-nesterov":
        raise ConfigError(f"train.momentum_by_kind: for sgd-nesterov, not {cfg.model.optimizer}")


def optimizer_for(cfg: Config, module, model):
    """The optimizer over the model's derived param groups (each keeps its base lr for the schedule); with
    train.momentum_by_kind, the groups are split by parameter kind and each kind named takes its own momentum
    (SGD-Nesterov only)."""
    t = cfg.train
    _check_momentum_by_kind(cfg)
    groups = model.param_groups(t.lr, weight_decay=t.weight_decay, eps=t.eps, lr_multipliers=t.lr_multipliers)
    if t.momentum_by_kind:
        split = []
        for g in groups:
            kinds = [module.rule_for(n).kind for n in g["names"]]
            for kind in dict.fromkeys(kinds):
                part = [i for i, k in enumerate(kinds) if k == kind]
                m = t.momentum_by_kind.get(kind, t.momentum)
                params, names = [g["params"][i] for i in part], [g["names"][i] for i in part]
                split.append(g | {"params": params, "names": names, "momentum": m, "nesterov": m > 0})
        groups = split
    for g in groups:
        g["base_lr"] = g["lr"]
    return make_optimizer(cfg.model.optimizer, groups, t.lr, momentum=t.momentum, betas=t.betas)


def check_module(module, cfg: Config, path) -> None:
    """A given model.module must be what the config describes: its rules are for one parametrization and
    optimizer, and the options its Config records (layers, tied, vocab, ...) were applied when it was
    rendered. Options it does not record (heads, d_k, ...) cannot be checked here."""
    gen, m = module.Config(), cfg.model
    for key in ("parametrization", "optimizer"):
        if getattr(gen, key) != getattr(m, key):
            raise ValueError(
                f"model.module {path} was generated for {key} {getattr(gen, key)!r}, the config says "
                f"{getattr(m, key)!r}; regenerate it, or drop model.module to render one"
            )
    for key, value in m.options.items():
        if hasattr(gen, key) and str(value).lower() != str(getattr(gen, key)).lower():  # "true", "6"
            raise ValueError(
                f"model.options.{key}={value!r} cannot change model.module {path}, generated with "
                f"{key}={getattr(gen, key)!r}; regenerate it with mudelta codegen --set {key}=..., or drop "
                "model.module"
            )


def build_model(cfg: Config, vocab: int | None, workdir: Path):
    """The generated model module (rendered into workdir unless cfg.model.module names one) and the model."""
    from mudelta.codegen import load_module
    from mudelta.graphs.presets import PRESETS, options

    m = cfg.model
    opts = dict(m.options)
    if m.module:
        path = Path(m.module)
    else:
        if vocab is not None and m.spec in PRESETS and "vocab" in options(m.spec) and "vocab" not in opts:
            opts["vocab"] = str(vocab)
        path = render(m.spec, opts, m.optimizer, m.parametrization, m.base_width, workdir / "models")
    module = load_module(path, f"mudelta_run_{path.stem}")
    cls = model_class(module)
    if cls.__name__ == "MLPClassifier":
        raise ValueError(
            f"model {m.spec}: an MLP classifier; `mudelta train` trains language models "
            "(gdn, gdn-heads, gdn-hybrid, transformer)"
        )
    if m.module:
        check_module(module, cfg, path)
    base = module.Config().base_width
    if base != m.base_width:
        raise ValueError(
            f"model.module {path} was generated for base width {base}, the config says {m.base_width}"
        )
    if not norm_eps_switch(module) and m.derived_norm_eps:
        raise ValueError(f"model {path}: model.derived_norm_eps is set, but the model has no norm eps rule")
    kw = {"derived_norm_eps": True} if m.derived_norm_eps else {}
    factors = {k: float(v) for k, v in m.multipliers.items()}
    model = cls(module.Config(width=m.width, multipliers=factors, **kw))
    if vocab is not None and model.cfg.vocab < vocab:
        raise ValueError(
            f"model vocab {model.cfg.vocab} is smaller than the data's {vocab}; set "
            f"model.options.vocab={vocab}"
        )
    return module, model


def _evaluate(model, batches, dev: _Dist, autocast) -> float:
    model.eval()
    total = torch.zeros((), device=dev.device, dtype=torch.float64)
    with torch.no_grad(), autocast():
        for x, y in batches:
            _, loss = model(x.to(dev.device), y.to(dev.device))
            total += loss.double()
    model.train()
    return dev.mean(total / len(batches)).item()


def _wrap(model, cfg: Config, dev: _Dist):
    if not dev.on:
        return model
    if cfg.train.fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard
        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.local] if dev.device.type == "cuda" else None)


def run(cfg: Config, resume: bool = False, progress: bool = True) -> dict:
    """Train one model; returns {tokens, final_val_loss, best_val_loss, diverged, error, tokens_per_s, mfu,
    flops_per_token, steps, seconds, ...}; writes metrics.jsonl, result.json and checkpoints under cfg.out."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    t = cfg.train
    _check_momentum_by_kind(cfg)  # before anything is written
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out}: a file is in the way (a run writes a folder)")
    dev = _Dist(t.device)
    try:
        main = dev.rank == 0
        ckdir = out / "checkpoints"
        if main:
            out.mkdir(parents=True, exist_ok=True)
        if dev.on:
            dist.barrier()
        if not resume and checkpoint.latest(ckdir) is not None:
            raise checkpoint.CheckpointError(
                f"{out} already holds a run (checkpoints in {ckdir}); pass --resume "
                "to continue it, or choose another out folder"
            )
        if t.warmup > t.steps and main and progress:
            print(f"warning: train.warmup {t.warmup} > train.steps {t.steps}: the lr never reaches train.lr",
                  file=sys.stderr)
        data = TokenData(cfg.data.path)
        torch.manual_seed(t.seed)
        module, model = build_model(cfg, data.vocab_size, out)
        model.to(dev.device)
        fpt = flops_per_token(model, cfg.data.seq)
        n_params = sum(p.numel() for p in model.parameters())
        model = _wrap(model, cfg, dev)
        inner = model.module if hasattr(model, "module") else model
        opt = optimizer_for(cfg, module, inner)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        step, best, metrics_mode = 0, math.inf, "w"
        init_loss = val_loss = None
        path = checkpoint.latest(ckdir) if resume else None
        if path is not None:
            hashes = (cfg.trajectory_hash(), cfg.trajectory_hash(module_path=True))  # the latter: older runs
            model_sd, opt_sd, meta = checkpoint.load(path, hashes, cfg.trajectory())
            if meta.get("data_fingerprint", data.fingerprint) != data.fingerprint:
                raise checkpoint.CheckpointError(
                    f"checkpoint {path} was trained on other data than {cfg.data.path} holds now (prepared "
                    "again, or from other sources); refusing to resume: restore the data or use a new out "
                    "folder"
                )
            set_model_state_dict(model, model_sd, options=StateDictOptions(full_state_dict=True))
            # plain SGD keeps no optimizer state, and a group with momentum 0 none for its parameters (the
            # config, checked by its hash, rebuilds the groups; the schedule sets their lrs)
            if opt_sd.get("state"):
                set_optimizer_state_dict(
                    model, opt, opt_sd, options=StateDictOptions(full_state_dict=True, strict=False)
                )
            checkpoint.set_rng_state(meta["rng_tensors"], meta["rng"])
            step, best, init_loss = meta["step"], meta.get("best_val_loss") or math.inf, meta.get("init_loss")
            metrics_mode = "a"
            if main:
                _truncate(out / "metrics.jsonl", step)
                if progress:
                    print(f"resumed from {path} at step {step}", file=sys.stderr)
            # a run resumed at its last step reports that step's validation loss as its final loss (checkpoints
            # written before the loss was kept in them: the last one logged up to the step)
            if "val_loss" in meta or not main:
                val_loss = meta.get("val_loss")
            else:
                val_loss = _last_val_loss(out / "metrics.jsonl", step)
        elif resume and main and progress:
            print(f"no checkpoint in {ckdir}: starting at step 0", file=sys.stderr)
        batches = Batches(data, cfg.data.batch, cfg.data.seq, t.seed, dev.rank, dev.world)
        val = val_batches(data, cfg.data.batch, cfg.data.seq, t.eval_batches, dev.rank, dev.world)
        use_bf16 = dev.device.type == "cuda" and t.dtype == "bf16"

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

        fwd = torch.compile(model) if t.compile else model
        params = [p for g in opt.param_groups for p in g["params"]]
        tokens_per_step = cfg.data.batch * cfg.data.seq
        metrics = open(out / "metrics.jsonl", metrics_mode) if main else None  # noqa: SIM115
        result = {
            "tokens": step * tokens_per_step,
            "final_val_loss": None,
            "best_val_loss": None,
            "diverged": False,
            "error": None,
            "params": n_params,
            "flops_per_token": fpt,
        }

        def log(entry: dict):
            if metrics is not None:
                metrics.write(json.dumps(entry) + "\n")
                metrics.flush()

        def save(at: int):
            model_sd = get_model_state_dict(model, options=opts)
            opt_sd = get_optimizer_state_dict(model, opt, options=opts)
            if main:
                extra = {
                    "config_hash": cfg.trajectory_hash(),
                    "config": cfg.trajectory(),
                    "best_val_loss": None if best == math.inf else best,
                    "val_loss": val_loss,
                    "init_loss": init_loss,
                    "data_position": batches.position(at),
                    "data_fingerprint": data.fingerprint,
                    "world_size": dev.world,
                }
                checkpoint.save(ckdir, at, model_sd, opt_sd, extra, keep=t.keep_ckpts)
            if dev.on:
                dist.barrier()

        bar = None
        if progress and main:
            from tqdm import tqdm

            bar = tqdm(
                total=t.steps,
                initial=step,
                desc=f"train w{cfg.model.width}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
            )
        start = step
        timed_from = step + max(1, min(10, (t.steps - step) // 10))
        timed_seconds, started = 0.0, time.perf_counter()
        stack = ExitStack()
        interrupt = stack.enter_context(_stop_on_sigint())
        try:
            while step < t.steps:
                tick = time.perf_counter()
                factor = schedule(opt, step, cfg)
                x, y = batches(step)
                with autocast():
                    _, loss = fwd(x.to(dev.device, non_blocking=True), y.to(dev.device, non_blocking=True))
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf)
                # the interrupt flag rides along with the loss: every rank stops after the same step
                value = loss.detach().float()
                stop = value.new_full((), interrupt["set"])  # a fill on the device, not a blocking copy
                loss_value, stopping = dev.mean(torch.stack([value, stop])).tolist()
                norm_value = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if init_loss is None:
                    init_loss = loss_value
                if not math.isfinite(loss_value) or not math.isfinite(norm_value):
                    what = (
                        f"loss {loss_value}"
                        if not math.isfinite(loss_value)
                        else f"gradient norm {norm_value}"
                    )
                    raise Diverged(
                        f"{what} at step {step + 1} (lr factor {factor:.3g}): {diagnose(opt)}", step + 1
                    )
                if t.diverge_margin is not None and loss_value > init_loss + t.diverge_margin:
                    raise Diverged(
                        f"loss {loss_value:.4g} at step {step + 1} exceeds the first step's {init_loss:.4g} "
                        f"by more than diverge_margin {t.diverge_margin}: {diagnose(opt)}",
                        step + 1,
                    )
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if step > timed_from:
                    if dev.device.type == "cuda":
                        torch.cuda.synchronize(dev.device)
                    timed_seconds += time.perf_counter() - tick
                if (t.log_every and step % t.log_every == 0) or step == t.steps:
                    log(
                        {
                            "step": step,
                            "loss": loss_value,
                            "lr": t.lr * factor,
                            "grad_norm": norm_value,
                            "tokens": step * tokens_per_step,
                            "time": round(time.perf_counter() - started, 3),
                        }
                    )
                if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
                    val_loss = _evaluate(fwd, val, dev, autocast)
                    best = min(best, val_loss) if math.isfinite(val_loss) else best
                    log({"step": step, "val_loss": val_loss, "tokens": step * tokens_per_step})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{loss_value:.4f}", val=f"{val_loss:.4f}" if val_loss else "-", refresh=False
                    )
                if (t.ckpt_every and step % t.ckpt_every == 0) or step == t.steps or stopping:
                    save(step)
                if stopping and step < t.steps:
                    raise Interrupted(step, checkpoint.folder(ckdir, step))
            result["final_val_loss"] = val_loss
            if val_loss is not None and not math.isfinite(val_loss):
                result["diverged"], result["error"] = True, f"validation loss {val_loss} at step {step}"
                result["final_val_loss"] = None
        except Diverged as exc:
            result["diverged"], result["error"] = True, str(exc)
            log({"step": exc.step, "diverged": str(exc)})
        finally:
            stack.close()
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        timed_steps = step - timed_from
        tps = tokens_per_step * timed_steps / timed_seconds if timed_steps > 0 and timed_seconds > 0 else None
        peak = t.peak_flops or _peak(dev.device)
        result.update(
            {
                "tokens": step * tokens_per_step,
                "steps": step,
                "best_val_loss": None if best == math.inf else best,
                "init_loss": init_loss,
                "tokens_per_s": tps,
                "mfu": tps * fpt / (peak * dev.world) if tps and peak else None,
                "seconds": round(time.perf_counter() - started, 3),
                "world_size": dev.world,
                "device": torch.cuda.get_device_name(dev.device) if dev.device.type == "cuda" else "cpu",
            }
        )
        # resumed a finished run: keep its timing
        if path is not None and step == start == t.steps and (out / "result.json").exists():
            try:
                old = json.loads((out / "result.json").read_text())
                result.update({k: old.get(k) for k in ("tokens_per_s", "mfu", "seconds")})
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                pass  # a damaged summary is rewritten from the checkpoint
        if main:
            tmp = out / "result.json.tmp"
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, out / "result.json")
        return result
    finally:
        dev.close()


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _last_val_loss(path: Path, step: int) -> float | None:
    """The last validation loss logged at or before `step`, if any."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    vals = [r["val_loss"] for r in rows if "val_loss" in r and r.get("step", 0) <= step]
    return vals[-1] if vals else None


def _truncate(path: Path, step: int) -> None:
    """Drop metrics logged after `step` (a run that died after its last checkpoint)."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in keep))
