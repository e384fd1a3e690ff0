"""The training config: one YAML file with sections model, data, train and an output folder, overridable from
the command line with --set section.key=value (or key=value when the key is unique across sections)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or an override is invalid; the message names the key (and the file)."""


@dataclass
class ModelConfig:
    spec: str = "gdn"  # a builtin preset (codegen renders a model only from a preset's family)
    options: dict = field(default_factory=dict)  # preset options (see `mudelta presets`), e.g. layers: 8
    width: int = 128
    base_width: int = 128
    parametrization: str = "mup"  # mup | sp | ntk | mf
    optimizer: str = "adamw"  # adamw | adam | sgd | sgd-nesterov (the rules are derived for it)
    module: str | None = None  # an already generated model file: used instead of rendering spec
    multipliers: dict = field(default_factory=dict)  # base-width constants, e.g. {readout: 4.0}
    # every norm's eps is the same at every width unless this turns on the derived rule (the generated
    # NORM_EPS; it trains worse: benchmarks/lr_transfer/results.md, "the derived norm eps")
    derived_norm_eps: bool = False


@dataclass
class DataConfig:
    path: str = "data/stdlib-bytes"  # a folder written by `mudelta data prepare`
    seq: int = 256  # tokens per sequence
    batch: int = 32  # sequences per step, summed over all processes (the global batch)


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 3e-3  # base learning rate; each param group multiplies it by its derived factor
    lr_multipliers: dict = field(default_factory=dict)  # per parameter kind, width-independent: {hidden: 2.0}
    warmup: int = 100  # linear warmup steps, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    betas: list = field(default_factory=lambda: [0.9, 0.95])  # Adam(W)
    eps: float = 1e-8  # Adam(W), scaled per group by the generated rules
    momentum: float = 0.9  # SGD with Nesterov momentum
    # SGD-Nesterov: per parameter kind (input, hidden, output, scalar), its own momentum, e.g. {input: 0.0}
    momentum_by_kind: dict = field(default_factory=dict)
    seed: int = 0  # model init and data order
    dtype: str = "bf16"  # bf16 autocast on CUDA (fp32 turns it off); CPU always runs float32
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda
    eval_every: int = 100  # validation loss every N steps and at the last step (0: only at the last)
    eval_batches: int = 8
    log_every: int = 10  # 0: only the last step
    ckpt_every: int = 0  # checkpoint every N steps (0: only at the end)
    keep_ckpts: int = 2
    diverge_margin: float | None = 2.0  # stop as diverged when the loss exceeds the first step's loss by this
    peak_flops: float | None = None  # per device, for MFU (default: known GPUs' bf16 dense peak)
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard) instead of DDP


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/default"

    def to_dict(self) -> dict:
        return asdict(self)

    def trajectory(self, module_path: bool = False) -> dict:
        """Everything that changes the sequence of losses (not logging, checkpointing, compile, device).
        A generated model file counts by its content; module_path: by its path (checkpoints before that)."""
        d = self.to_dict()
        for key in (
            "eval_every",
            "eval_batches",
            "log_every",
            "ckpt_every",
            "keep_ckpts",
            "compile",
            "peak_flops",
            "device",
        ):
            d["train"].pop(key)
        for key in ("lr_multipliers", "momentum_by_kind"):  # absent and empty hash alike (older runs)
            if not d["train"][key]:
                d["train"].pop(key)
        if not d["model"]["derived_norm_eps"]:  # likewise for the norm eps rule, off by default
            d["model"].pop("derived_norm_eps")
        module = d["model"]["module"]
        if module and Path(module).is_file() and not module_path:  # a model is what it holds, anywhere
            d["model"]["module"] = "sha256:" + hashlib.sha256(Path(module).read_bytes()).hexdigest()[:16]
        d.pop("out")
        return d

    def trajectory_hash(self, module_path: bool = False) -> str:
        d = self.trajectory(module_path)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
FACTORS = {("model", "multipliers"): "readout", ("train", "lr_multipliers"): "hidden"}  # field -> example key
KINDS = ("input", "hidden", "output", "scalar")  # the generated rules' parameter kinds


def _coerce(value, current, key: str, where: str):
    """Parse an override string (YAML syntax) and check it has the type of the field's default."""
    if isinstance(value, str):
        if not isinstance(current, (str, type(None))):  # strings stay as given
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{where}{key}: cannot parse {value!r}: {exc}") from None
        elif value in ("null", "~", "None"):
            value = None
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, float) or current is None and key.endswith(("margin", "flops")):
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) or value is None
        value = float(value) if ok and value is not None else value
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, list):
        ok = isinstance(value, list)
    elif isinstance(current, dict):
        ok = isinstance(value, dict)
    else:
        ok = value is None or isinstance(value, str)
        value = value if value is None else str(value)
    if not ok:
        raise ConfigError(f"{where}{key}: expected {type(current).__name__}, got {value!r}")
    return value


def _number_map(value, parts: list[str], key: str, where: str, what: str, example: str) -> dict:
    """A mapping field's entries, from one sub-key (--set train.lr_multipliers.hidden=2) or a whole mapping:
    {name: (the value as a float, NaN if it is not a number, the value as given)}."""
    value = {".".join(parts[2:]): value} if len(parts) > 2 else value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: expected a mapping of {what}, e.g. {example}")
    entries = {}
    for k, v in value.items():
        try:
            x = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        entries[str(k)] = (x, v)
    return entries


def _set(cfg: Config, key: str, value, where: str = "") -> None:
    parts = key.split(".")
    if parts[0] == "out" and len(parts) == 1:
        cfg.out = str(value)
        return
    if parts[0] not in SECTIONS:
        owners = [s for s, cls in SECTIONS.items() if parts[0] in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) != 1:
            known = sorted({f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)})
            what = "ambiguous" if owners else "unknown"
            raise ConfigError(f"{where}{key}: {what} key; known keys: out, {', '.join(known)}")
        parts = [owners[0], *parts]
    section = getattr(cfg, parts[0])
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key}: expected a mapping of {parts[0]} settings")
        for k, v in value.items():
            _set(cfg, f"{parts[0]}.{k}", v, where)
        return
    names = {f.name for f in dataclasses.fields(section)}
    if parts[1] not in names:
        raise ConfigError(f"{where}{'.'.join(parts)}: unknown key; {parts[0]} has {', '.join(sorted(names))}")
    if parts[0] == "model" and parts[1] == "options":  # preset options are strings, as on the command line
        value = {".".join(parts[2:]): value} if len(parts) > 2 else value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key}: expected a mapping of preset options, e.g. {{layers: 8}}")
        section.options = {**section.options, **{str(k): _option(v) for k, v in value.items()}}
        return
    if len(parts) == 2 and isinstance(value, str) and isinstance(getattr(section, parts[1]), dict):
        try:  # a whole mapping on the command line: --set train.lr_multipliers="{hidden: 2}"
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}{key}: cannot parse {value!r}: {exc}") from None
    if (parts[0], parts[1]) in FACTORS:  # name -> positive number
        example = f"{{{FACTORS[parts[0], parts[1]]}: 4.0}}"
        entries = _number_map(value, parts, key, where, "names to factors", example)
        for k, (x, v) in entries.items():
            if not x > 0 or math.isinf(x):
                raise ConfigError(f"{where}{parts[0]}.{parts[1]}.{k}: expected a positive number, got {v!r}")
        setattr(section, parts[1], {**getattr(section, parts[1]), **{k: x for k, (x, _) in entries.items()}})
        return
    if (parts[0], parts[1]) == ("train", "momentum_by_kind"):  # kind -> momentum in [0, 1)
        entries = _number_map(value, parts, key, where, "parameter kinds to momenta", "{input: 0.0}")
        for k, (x, v) in entries.items():
            name = f"{where}train.momentum_by_kind.{k}"
            if k not in KINDS:
                raise ConfigError(f"{name}: unknown parameter kind; kinds: {', '.join(KINDS)}")
            if not 0 <= x < 1:
                raise ConfigError(f"{name}: expected a momentum in [0, 1), got {v!r}")
        section.momentum_by_kind = {**section.momentum_by_kind, **{k: x for k, (x, _) in entries.items()}}
        return
    if len(parts) > 2:
        raise ConfigError(f"{where}{key}: {parts[0]}.{parts[1]} has no sub-keys")
    setattr(section, parts[1], _coerce(value, getattr(section, parts[1]), ".".join(parts), where))


def read_yaml(path: str | Path) -> dict:
    """The mapping of a YAML config file (sections model, data, train, out, and sweep for `mudelta sweep`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected a mapping with sections model, data, train, out (sweep)")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                raw: dict | None = None) -> Config:
    """A Config from a YAML file (or the defaults) with `key=value` overrides applied in order; `raw`: the
    file's mapping when the caller has read it already (read_yaml)."""
    cfg = Config()
    if path is not None:
        for key, value in (read_yaml(path) if raw is None else raw).items():
            if key == "sweep":  # read by `mudelta sweep`
                continue
            _set(cfg, key, value, f"config {path}: ")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: list[str] | dict | None) -> Config:
    """Apply `key=value` strings (or a mapping) to cfg in place, check the values' ranges, return cfg."""
    items = overrides.items() if isinstance(overrides, dict) else [_pair(p) for p in overrides or []]
    for key, value in items:
        _set(cfg, key, value, "--set ")
    check(cfg)
    return cfg


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# key -> (test of the value, what it must be)
_RANGES = {
    "model.width": (lambda v: v >= 1, "a positive integer"),
    "model.base_width": (lambda v: v >= 1, "a positive integer"),
    "data.seq": (lambda v: v >= 1, "a positive integer"),
    "data.batch": (lambda v: v >= 1, "a positive integer"),
    "train.steps": (lambda v: v >= 1, "a positive integer"),
    "train.warmup": (lambda v: v >= 0, "an integer >= 0"),
    "train.lr": (lambda v: _finite(v) and v > 0, "a positive number"),
    "train.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.weight_decay": (lambda v: _finite(v) and v >= 0, "a number >= 0"),
    "train.grad_clip": (lambda v: _finite(v) and v >= 0, "a number >= 0 (0: no clipping)"),
    "train.betas": (lambda v: len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v),
                    "two numbers in [0, 1)"),
    "train.eps": (lambda v: _finite(v) and v > 0, "a positive number"),
    "train.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.dtype": (lambda v: v in ("bf16", "fp32"), "bf16 or fp32"),
    "train.device": (lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    "train.eval_every": (lambda v: v >= 0, "an integer >= 0 (0: the last step only)"),
    "train.eval_batches": (lambda v: v >= 1, "a positive integer"),
    "train.log_every": (lambda v: v >= 0, "an integer >= 0 (0: the last step only)"),
    "train.ckpt_every": (lambda v: v >= 0, "an integer >= 0 (0: the end only)"),
    "train.keep_ckpts": (lambda v: v >= 1, "a positive integer"),
    "train.diverge_margin": (lambda v: v is None or _finite(v) and v > 0, "a positive number, or null"),
    "train.peak_flops": (lambda v: v is None or _finite(v) and v > 0, "a positive number, or null"),
    "out": (lambda v: bool(v and v.strip()), "a folder path"),
}


def check(cfg: Config) -> None:
    """Every value in its range; a ConfigError names the key otherwise."""
    for key, (ok, what) in _RANGES.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{key} must be {what}, got {value!r}")


def _option(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.lr=1e-3")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def from_dict(d: dict) -> Config:
    cfg = Config()
    for key, value in d.items():
        _set(cfg, key, value)
    return cfg
