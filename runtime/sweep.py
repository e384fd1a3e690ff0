"""Learning-rate sweeps: a grid of widths x learning rates x parametrizations x optimizers (x seeds) over one
base training config, trials run in parallel (one subprocess per GPU slot, or CPU workers), one JSON line per
finished trial appended to the results file. Re-running skips finished trials; --shard i/N runs every N-th."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import Config, ConfigError, apply_overrides, from_dict, load_config, read_yaml

GRID_KEYS = ("widths", "lrs", "parametrizations", "optimizers", "seeds")

# `--preset tiny`: a CPU sweep that finishes in a few minutes on two cores (run in CI)
TINY = {
    "model": {"spec": "transformer", "options": {"layers": 2}, "base_width": 32},
    "data": {"seq": 64, "batch": 8},
    "train": {
        "steps": 40,
        "warmup": 5,
        "eval_every": 40,
        "eval_batches": 4,
        "log_every": 10,
        "grad_clip": 1.0,
        "min_lr_ratio": 0.1,
    },
    "out": "runs/sweep-tiny",
    "sweep": {
        "widths": [32, 64, 128],
        "parametrizations": ["mup", "sp"],
        "optimizers": ["adamw"],
        "lrs": {"adamw": [2e-3, 8e-3, 3.2e-2, 1.28e-1]},
    },
}
PRESETS = {"tiny": TINY}


@dataclass
class Trial:
    width: int
    lr: float
    parametrization: str
    optimizer: str
    config: Config

    @property
    def name(self) -> str:
        seed = self.config.train.seed  # seed 0 keeps the name trials had before sweeps took seeds
        name = f"{self.parametrization}_{self.optimizer}_w{self.width}_lr{self.lr:.4g}"
        return name + (f"_s{seed}" if seed else "")

    @property
    def key(self) -> str:
        return self.config.trajectory_hash()


def load_sweep(path: str | None, preset: str | None, overrides: list[str] | None) -> tuple[Config, dict]:
    """The base config and the grid, from a YAML file with a `sweep:` section or a preset; overrides
    `sweep.KEY=VALUE` (e.g. sweep.widths=[32,64], sweep.lrs.adamw=[0.01]) change the grid."""
    grid_sets = [o for o in overrides or [] if o.startswith("sweep.")]
    overrides = [o for o in overrides or [] if not o.startswith("sweep.")]
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r}: unknown; presets: {', '.join(PRESETS)}")
        raw = copy.deepcopy(PRESETS[preset])
        grid = raw.pop("sweep")
        raw["data"]["path"] = "@out/data"
        base = apply_overrides(from_dict(raw), overrides)
        if base.data.path == "@out/data":  # stdlib bytes, prepared on first use
            base.data.path = str(Path(base.out) / "data")
    else:
        if path is None:
            raise ConfigError("mudelta sweep: give a config file or --preset")
        raw = read_yaml(path)
        grid = raw.get("sweep")
        if not isinstance(grid, dict):
            raise ConfigError(
                f"config {path}: no `sweep:` section (widths, lrs, parametrizations, optimizers, seeds)"
            )
        base = load_config(path, overrides, raw)
    for item in grid_sets:
        key, _, value = item.partition("=")
        parts = key.split(".")[1:]
        if not parts or not all(parts) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected sweep.KEY=VALUE, e.g. sweep.widths=[32,64]")
        node = grid
        for k in parts[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: sweep.{k} is not a mapping (set it whole: sweep.{k}=...)")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: cannot parse the value: {exc}") from None
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ConfigError(f"sweep: unknown keys {sorted(unknown)}; expected {', '.join(GRID_KEYS)}")
    grid.setdefault("parametrizations", [base.model.parametrization])
    grid.setdefault("optimizers", [base.model.optimizer])
    grid.setdefault("widths", [base.model.width])
    grid.setdefault("seeds", [base.train.seed])
    seeds = grid["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
        or len(set(seeds)) < len(seeds)
    ):
        raise ConfigError(f"sweep.seeds: expected a non-empty list of distinct integers, got {seeds!r}")
    if "lrs" not in grid:
        raise ConfigError("sweep: no `lrs` (a list, or a mapping optimizer -> list)")
    widths = grid["widths"]
    if not isinstance(widths, list) or not widths or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ConfigError(f"sweep.widths: expected a non-empty list of positive integers, got {widths!r}")
    for key in ("parametrizations", "optimizers"):
        if not isinstance(grid[key], list) or not grid[key] or not all(isinstance(x, str) for x in grid[key]):
            raise ConfigError(f"sweep.{key}: expected a non-empty list of names, got {grid[key]!r}")
    lrs = grid["lrs"]
    for opt in grid["optimizers"]:
        if isinstance(lrs, dict) and opt not in lrs:
            raise ConfigError(f"sweep.lrs: no learning rates for optimizer {opt!r}")
    for name, values in lrs.items() if isinstance(lrs, dict) else [("", lrs)]:
        key = f"sweep.lrs{'.' + name if name else ''}"
        if not isinstance(values, list) or not values or not all(_positive(v) for v in values):
            raise ConfigError(f"{key}: expected a non-empty list of positive learning rates, got {values!r}")
    return base, grid


def _positive(v) -> bool:
    """A positive number (YAML reads 1e-3, without a dot, as a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return False
    try:
        return math.isfinite(float(v)) and float(v) > 0
    except ValueError:
        return False


def trials(base: Config, grid: dict) -> list[Trial]:
    """Every trial of the grid, largest width first (so the longest trials start first)."""
    out = []
    for opt in grid["optimizers"]:
        lrs = grid["lrs"][opt] if isinstance(grid["lrs"], dict) else grid["lrs"]
        for par in grid["parametrizations"]:
            for width in sorted(grid["widths"], reverse=True):
                for lr in lrs:
                    for seed in grid.get("seeds", [base.train.seed]):
                        cfg = from_dict(base.to_dict())
                        cfg.model.width, cfg.model.parametrization, cfg.model.optimizer = int(width), par, opt
                        cfg.train.lr, cfg.train.seed = float(lr), seed
                        trial = Trial(int(width), float(lr), par, opt, cfg)
                        cfg.out = str(Path(base.out) / "trials" / trial.name)
                        out.append(trial)
    return sorted(out, key=lambda t: -t.width)


def shard(items: list, spec: str | None) -> list:
    """`i/N` (0 <= i < N): every N-th item starting at i."""
    if not spec:
        return items
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {spec!r}: expected i/N, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {spec!r}: need 0 <= i < N")
    return items[i::n]


def read_rows(results: Path):
    """(line number, row) for each row of a results file; a line that is not a JSON object (a trial killed
    while writing it) is skipped with a warning."""
    for n, line in enumerate(results.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            print(f"warning: {results}:{n}: not a JSON object, ignored", file=sys.stderr)
            continue
        yield n, row


def finished(results: Path) -> dict[str, dict]:
    """Trials already in the results file with a final outcome (ok or diverged), by config hash."""
    if not results.exists():
        return {}
    return {
        row["config_hash"]: row for _, row in read_rows(results) if row.get("status") in ("ok", "diverged")
    }


def _row(trial: Trial, result: dict | None, error: str | None = None) -> dict:
    result = result or {}
    status = "error" if error else ("diverged" if result.get("diverged") else "ok")
    return {
        "width": trial.width,
        "lr": trial.lr,
        "parametrization": trial.parametrization,
        "optimizer": trial.optimizer,
        "base_width": trial.config.model.base_width,
        "spec": trial.config.model.spec,
        "seed": trial.config.train.seed,
        "status": status,
        "tokens": result.get("tokens"),
        "final_val_loss": result.get("final_val_loss"),
        "best_val_loss": result.get("best_val_loss"),
        "diverged": bool(result.get("diverged")),
        "init_loss": result.get("init_loss"),
        "tokens_per_s": result.get("tokens_per_s"),
        "mfu": result.get("mfu"),
        "flops_per_token": result.get("flops_per_token"),
        "params": result.get("params"),
        "steps": result.get("steps"),
        "seconds": result.get("seconds"),
        "device": result.get("device"),
        "error": error or result.get("error"),
        "config_hash": trial.key,
        "out": trial.config.out,
    }


def _pin_models(base: Config, todo: list[Trial]) -> None:
    """Render each (parametrization, optimizer) model once into <out>/models and point its trials at it."""
    from .models import render

    paths: dict[tuple, str] = {}
    for t in todo:
        m = t.config.model
        if m.module:
            continue
        k = (m.optimizer, m.parametrization)
        if k not in paths:
            paths[k] = str(
                render(
                    m.spec, m.options, m.optimizer, m.parametrization, m.base_width, Path(base.out) / "models"
                ).resolve()
            )
        m.module = paths[k]


class _Running:
    """The trials' processes, each in a session of its own, so that a terminal's ^C reaches only the sweep,
    which passes it on: stop() sends every running trial one SIGINT (it saves a checkpoint and exits; a
    second stop() is a second ^C, which aborts), and a trial that starts after a stop() gets it at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set = set()
        self.stops = 0

    def add(self, proc) -> None:
        with self._lock:
            self._procs.add(proc)
            for _ in range(self.stops):
                proc.send_signal(signal.SIGINT)

    def discard(self, proc) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop(self) -> int:
        with self._lock:
            self.stops += 1
            for proc in self._procs:
                proc.send_signal(signal.SIGINT)
            return len(self._procs)


def _subprocess(trial: Trial, env: dict, log: Path, running: _Running) -> dict:
    """Train one trial in its own process (kept in `running` while it runs, for ^C to reach it)."""
    trial_dir = Path(trial.config.out)
    trial_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = trial_dir / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(trial.config.to_dict(), sort_keys=False))
    cmd = [sys.executable, "-m", "mudelta.runtime.cli", "train", str(cfg_file), "--resume", "--quiet"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        running.add(proc)
        try:
            proc.wait()
        finally:
            running.discard(proc)
    result_file = trial_dir / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if proc.returncode == 0 or result.get("diverged"):  # a diverged run exits non-zero: an outcome
            return result
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"exit code {proc.returncode}; log {log}:\n{tail}")


def run_sweep(
    base: Config,
    grid: dict,
    results: str | Path | None = None,
    shard_spec: str | None = None,
    devices: list[str] | None = None,
    per_gpu: int = 1,
    workers: int = 1,
    progress: bool = True,
) -> list:
    """Run the trials not yet in `results` (default <out>/results.jsonl); returns the new rows."""
    from tqdm import tqdm

    from .data import TokenData, prepare

    if per_gpu < 1 or workers < 1:
        raise ConfigError(f"--per-gpu and --workers must be at least 1, got {per_gpu} and {workers}")
    shard([], shard_spec)  # a bad --shard is named before any data is prepared
    results = Path(results) if results else Path(base.out) / "results.jsonl"
    if results.is_dir():
        raise ConfigError(f"--results {results}: a folder; give the results file's path")
    data = Path(base.data.path)
    if not (data / "header.json").exists():
        if data.resolve().parent != Path(base.out).resolve():
            TokenData(data)  # a clear error: the user's data folder is missing
        print(f"preparing stdlib bytes into {data}", file=sys.stderr)
        prepare(None, data, "bytes", progress=progress)
    from mudelta.graphs.presets import PRESETS as SPECS
    from mudelta.graphs.presets import options

    m = base.model
    if not m.module and m.spec in SPECS and "vocab" in options(m.spec) and "vocab" not in m.options:
        m.options = {**m.options, "vocab": str(TokenData(data).vocab_size)}
    all_trials = trials(base, grid)
    if m.module:  # one given model for the whole grid: every trial must be what it was generated for
        from mudelta.codegen import load_module

        from .train import check_module

        given = load_module(Path(m.module), f"mudelta_sweep_{Path(m.module).stem}")
        for t in all_trials:
            check_module(given, t.config, m.module)
    _pin_models(base, all_trials)
    grid_trials = shard(all_trials, shard_spec)
    done = finished(results)
    todo = [t for t in grid_trials if t.key not in done]
    print(
        f"sweep: {len(grid_trials)} trials in this shard, {len(grid_trials) - len(todo)} finished, "
        f"{len(todo)} to run -> {results}",
        file=sys.stderr,
    )
    if not todo:
        return []
    results.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    rows = []

    def record(row: dict):
        with lock:
            with open(results, "a+") as fh:  # a row cut off by a kill gets its line ended, not joined
                fh.seek(0, os.SEEK_END)
                if fh.tell():
                    fh.seek(fh.tell() - 1)
                    if fh.read(1) != "\n":
                        fh.write("\n")
                fh.write(json.dumps(row) + "\n")
            rows.append(row)
            loss = row["final_val_loss"]
            msg = "diverged" if row["diverged"] else (row["status"] if loss is None else f"val {loss:.4f}")
            seed = f"seed {row['seed']} " if len(grid.get("seeds", [])) > 1 or row["seed"] else ""
            tqdm.write(
                f"{row['parametrization']:>4s} {row['optimizer']:>12s} width {row['width']:>5d} "
                f"lr {row['lr']:<9.3g} {seed}{msg}",
                file=sys.stderr,
            )
            bar.update(1)

    bar = tqdm(total=len(todo), desc="sweep", unit="trial", disable=not progress)
    if devices is None:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    if not devices and workers <= 1:
        from .train import run

        for t in todo:
            try:
                record(_row(t, run(t.config, resume=True, progress=False)))
            except Exception as exc:  # a crashed trial is recorded, the sweep goes on
                record(_row(t, None, f"{type(exc).__name__}: {exc}"))
        bar.close()
        return rows
    slots = [d for d in devices for _ in range(per_gpu)] if devices else [None] * workers
    free = list(slots)
    free_lock = threading.Condition()
    threads = max(1, (os.cpu_count() or 1) // len(slots))
    running = _Running()  # ^C: start no more trials, record none that it cut short

    def work(t: Trial) -> None:
        with free_lock:
            while not free:
                free_lock.wait()
            slot = free.pop()
        try:
            if running.stops:
                return
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
                env.setdefault("OMP_NUM_THREADS", "4")
            else:
                env["CUDA_VISIBLE_DEVICES"] = ""
                env["OMP_NUM_THREADS"] = str(threads)
            log = Path(t.config.out) / "train.log"
            try:
                row = _row(t, _subprocess(t, env, log, running))
            except RuntimeError as exc:
                if running.stops:  # stopped by the ^C: it left a checkpoint, the next sweep resumes it
                    return
                row = _row(t, None, str(exc))
            record(row)  # here, not in the main thread: a finished trial is kept whatever happens there
        finally:
            with free_lock:
                free.append(slot)
                free_lock.notify()

    pool = ThreadPoolExecutor(len(slots))
    futures = []
    try:
        futures += [pool.submit(work, t) for t in todo]
        for fut in as_completed(futures):
            fut.result()
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        n = running.stop()
        tqdm.write(
            f"interrupted: stopping {n} running trial(s) at their next step (each writes a checkpoint; ^C "
            f"again aborts them); finished trials are in {results}; running the sweep again continues it",
            file=sys.stderr,
        )
        raise
    finally:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # a second ^C while the trials save: abort them too
            running.stop()
            raise
    bar.close()
    return rows
