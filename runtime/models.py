"""Generated models as the runtime uses them: render a spec into a module file, pick its model class, build
the optimizer over its derived param groups, count its FLOPs."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from pathlib import Path

import torch

MODEL_CLASSES = ("GatedDeltaNetForCausalLM", "TransformerForCausalLM", "MLPClassifier")
OPTIMIZERS = ("sgd", "sgd-nesterov", "adam", "adamw")


def make_optimizer(name: str, groups, lr: float, momentum: float = 0.9, betas=(0.9, 0.999)):
    """A torch optimizer over the generated param groups (each group keeps its own lr/wd/eps)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "sgd-nesterov":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def norm_eps_switch(module) -> bool:
    """Whether a generated module takes the derived norm eps as a switch (Config.derived_norm_eps, off by
    default). A module generated while the rule applied to every model (it scales a norm's eps but has no
    switch) is refused: it would ignore a config that leaves the rule off."""
    if "derived_norm_eps" in {f.name for f in dataclasses.fields(module.Config)}:
        return True
    if any(getattr(module, "NORM_EPS", {}).values()):
        raise ValueError(
            f"{module.__file__}: generated when every model took the derived norm eps (NORM_EPS without "
            "Config.derived_norm_eps); generate it again"
        )
    return False


def model_class(module):
    for name in MODEL_CLASSES:
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError("the generated module has no model class")


@functools.lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """A hash of the code that writes model files (graphs, derive, codegen with its templates): a file that an
    earlier version generated is not reused by a later one."""
    import mudelta.codegen
    import mudelta.derive
    import mudelta.graphs

    h = hashlib.sha256()
    for package in (mudelta.graphs, mudelta.derive, mudelta.codegen):
        root = Path(package.__file__).parent
        for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".j2", ".yaml") and p.is_file()):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def render(
    spec: str,
    options: dict | None,
    optimizer: str,
    parametrization: str,
    base_width: int,
    directory: str | Path,
) -> Path:
    """Generate the model module for a spec into `directory` (named by a hash of its inputs and of the
    generator's code, so every run and every torchrun rank with the same inputs reuses one file) and return
    its path."""
    from mudelta.codegen import generate
    from mudelta.graphs.presets import load

    options = {k: str(v) for k, v in (options or {}).items()}
    key = repr((spec, sorted(options.items()), optimizer, parametrization, int(base_width)))
    key += generator_fingerprint()
    for source in (spec, parametrization):  # a spec or parametrization file: its content, not just its name
        if Path(source).is_file():
            key += hashlib.sha256(Path(source).read_bytes()).hexdigest()
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem, par = (re.sub(r"[^A-Za-z0-9_]", "_", Path(s).stem) for s in (spec, parametrization))
    path = Path(directory) / f"{stem}_{par}_{optimizer.replace('-', '_')}_{digest}.py"
    if path.exists():
        return path
    flags = " ".join(f"--set {k}={v}" for k, v in sorted(options.items()))
    command = (
        f"mudelta codegen {spec} --optimizer {optimizer} --parametrization {parametrization} "
        f"--base-width {base_width} {flags}"
    ).strip()
    source = generate(load(spec, options), optimizer, parametrization, int(base_width), command=command,
                      spec=spec, options=options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(source)
    tmp.replace(path)
    return path


def flops_per_token(model, seq: int) -> float:
    """Model FLOPs per trained token (forward + backward = 3x forward): 6 per matmul weight (the tied
    embedding counted once, as the readout; an untied input embedding is a lookup, not a matmul) plus the
    sequence mixer: GDN's delta rule costs about 6 d_k d_v per head and token forward (S k, the rank-1 update,
    S q); softmax attention 4 T d per layer (QK^T and AV over all T x T pairs, as in PaLM's count)."""
    cfg = model.cfg
    n = 0
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        if name == "embeddings.weight" and not getattr(cfg, "tied", False):
            continue
        n += p.numel()
    mixer = 0.0
    layers = getattr(cfg, "layers", 0)
    every = getattr(cfg, "attn_every", 0) or 0
    n_attn = sum(1 for i in range(layers) if every and (i + 1) % every == 0)
    if type(model).__name__ == "GatedDeltaNetForCausalLM":
        mixer += 6 * (layers - n_attn) * cfg.size("heads") * cfg.size("d_k") * cfg.size("d_v")
        if n_attn:
            mixer += 4 * n_attn * seq * cfg.size("attn_heads") * cfg.size("attn_d_head")
    elif type(model).__name__ == "TransformerForCausalLM":
        mixer += 4 * layers * seq * cfg.size("d_model")
    return 6.0 * n + 3.0 * mixer
