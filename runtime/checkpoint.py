"""Checkpoints: model and optimizer state in safetensors, everything else (step, RNG states, data position,
config and its hash, file hashes) in JSON; each checkpoint is a folder written under a temporary name and
renamed into place, so a crash never leaves a half-written checkpoint that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

FORMAT = "mudelta-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or was written by a different configuration."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> tuple[dict, dict]:
    """(tensors, JSON) of every random generator the run may touch."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _split_optimizer(osd: dict) -> tuple[dict, dict]:
    """An optimizer state dict (keyed by parameter names) as safetensors tensors + JSON for the rest."""
    tensors, state = {}, {}
    for name, entries in osd["state"].items():
        state[name] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
                state[name][key] = {"tensor": f"{name}/{key}"}
            else:
                state[name][key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]
    ]
    return tensors, {"state": state, "param_groups": groups}


def _join_optimizer(tensors: dict, meta: dict) -> dict:
    state = {
        name: {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for k, v in entries.items()
        }
        for name, entries in meta["state"].items()
    }
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


FILES = ("model.safetensors", "optimizer.safetensors")


def _state_digest(meta: dict) -> str:
    """sha256 of state.json's content without its own digest: an edited or damaged state.json shows."""
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != "state_sha256"}))  # as read back
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


STEP_FOLDER = re.compile(r"step_\d{8}")


def folder(directory: Path, step: int) -> Path:
    """The checkpoint folder of a step: `directory`/step_NNNNNNNN."""
    return directory / f"step_{step:08d}"


def save(directory: Path, step: int, model_sd: dict, optim_sd: dict, extra: dict, keep: int = 2) -> Path:
    """Write checkpoint `directory`/step_NNNNNNNN atomically (call on one rank), point `latest` at it, and
    remove all but the newest `keep`."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    final = folder(directory, step)
    tmp = directory / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        rng_t, rng_meta = rng_state()
        opt_t, opt_meta = _split_optimizer(optim_sd)
        save_file({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
        save_file({**opt_t, **rng_t}, tmp / "optimizer.safetensors")
        meta = {
            "format": FORMAT,
            "step": step,
            "rng": rng_meta,
            "optimizer": opt_meta,
            **extra,
            "files": {f: _sha256(tmp / f) for f in FILES},
        }
        meta["state_sha256"] = _state_digest(meta)
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except BaseException:  # a second ^C or a full disk: no half-written folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = directory / "latest.tmp"
    latest.write_text(final.name + "\n")
    os.replace(latest, directory / "latest")
    _fsync_dir(directory)
    for old in sorted(directory.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in directory.glob(".tmp_step_*_*"):  # one writer per folder: the others were killed mid-save
        m = re.fullmatch(r"\.tmp_step_\d{8}_(\d{1,10})", tmp.name, re.ASCII)
        # this process's own save is renamed by now: one with its id is a killed run's that had the same id
        if m and (int(m[1]) == os.getpid() or not _alive(int(m[1]))):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _alive(pid: int) -> bool:
    """A process with this id runs on this machine (signal 0 checks without sending anything; POSIX only:
    on Windows os.kill would end the process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OverflowError, OSError):  # not a process id here
        return False
    return True


def latest(directory: Path) -> Path | None:
    """The checkpoint `latest` points at; without the pointer, or when the folder it names is gone (deleted
    as corrupt), the newest step_NNNNNNNN folder left, with a warning."""
    pointer = directory / "latest"
    name = pointer.read_text().strip() if pointer.exists() else None
    if name and STEP_FOLDER.fullmatch(name) and (directory / name).is_dir():
        return directory / name
    steps = sorted(p for p in directory.glob("step_*") if p.is_dir() and STEP_FOLDER.fullmatch(p.name))
    if name is not None:
        left = f"using the newest left, {steps[-1].name}" if steps else "none is left"
        warnings.warn(f"checkpoint pointer {pointer} names {name!r}, which does not exist; {left}",
                      stacklevel=2)
    return steps[-1] if steps else None


def load(path: Path, config_hash: str | tuple, config: dict | None = None) -> tuple[dict, dict, dict]:
    """(model state dict, optimizer state dict, metadata) of a checkpoint, after checking its format, its file
    hashes and that it was written by a config with the same trajectory hash (or one of several)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state_file = path / "state.json"
    try:
        meta = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no state.json (incomplete or not a checkpoint)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {state_file} is corrupt: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"checkpoint {path}: format {got!r}, expected {FORMAT!r}")
    if "state_sha256" in meta and meta["state_sha256"] != _state_digest(meta):
        raise CheckpointError(f"checkpoint {state_file} was edited or damaged: its content does not match "
                              "its state_sha256; delete its folder to resume from the one before")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or folder(path.parent, step) != path:
        raise CheckpointError(f"checkpoint {path}: state.json says step {step!r}, the folder another")
    if not isinstance(meta.get("files"), dict) or set(meta["files"]) != set(FILES):
        raise CheckpointError(f"checkpoint {state_file}: 'files' must list the hashes of {', '.join(FILES)}")
    if not isinstance(meta.get("optimizer"), dict):
        raise CheckpointError(f"checkpoint {state_file}: no optimizer state description")
    if meta.get("config_hash") not in ((config_hash,) if isinstance(config_hash, str) else config_hash):
        diff = _diff(meta.get("config", {}), config or {})
        raise CheckpointError(
            f"checkpoint {path} was written by a different configuration "
            f"({'; '.join(diff) or 'config hash differs'}); refusing to resume: restore "
            "the config or write to a new out folder"
        )
    for name, digest in meta.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(
                f"checkpoint {f} is corrupt: its sha256 does not match state.json "
                "(truncated or overwritten); delete its folder to resume from the one before"
            )
    try:
        model_sd = load_file(path / "model.safetensors")
        opt_t = load_file(path / "optimizer.safetensors")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read tensors: {exc}") from None
    rng = {k: v for k, v in opt_t.items() if k.startswith("rng/")}
    meta["rng_tensors"] = rng
    return model_sd, _join_optimizer(opt_t, meta["optimizer"]), meta


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out
