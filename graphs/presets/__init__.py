"""Builtin presets: a name -> a builder and its default options, overridable with `--set key=value`."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path

from .. import builders
from ..ir import Graph, SpecError, suggest
from ..spec import load_spec

PRESETS = {
    "mlp": builders.mlp,
    "transformer": builders.transformer,
    "gdn": builders.gdn,
    "gdn-heads": partial(builders.gdn, regime="heads", tied=False),
    "gdn-hybrid": partial(builders.gdn, attn_every=4),
}


# (option, whether the builder ignores it given all the options, why): setting it then is refused
_UNUSED = [
    ("d_k", lambda s: s.get("regime") == "head_dim", "d_k = d_model / 8 in the head_dim regime"),
    ("d_v", lambda s: s.get("regime") == "head_dim", "d_v = d_model / 4 in the head_dim regime"),
    ("heads", lambda s: s.get("regime") == "heads", "heads = d_model / (8 d_k) in the heads regime"),
    ("heads", lambda s: s.get("head_dim") is not None, "heads = d_model / head_dim when head_dim is set"),
    ("attn_heads", lambda s: not s.get("attn_every", 1), "there are no attention blocks (attn_every=0)"),
]


def options(preset: str) -> dict:
    """The preset's options and their defaults."""
    fn = PRESETS[preset]
    sig = inspect.signature(fn.func if isinstance(fn, partial) else fn)
    defaults = {k: p.default for k, p in sig.parameters.items()}
    if isinstance(fn, partial):
        defaults.update(fn.keywords)
    return defaults


def _coerce(preset: str, key: str, value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SpecError(f"--set {key}={value}: expected true or false")
    if isinstance(default, int) or default is None and key.endswith("dim"):
        try:
            return int(value)
        except ValueError:
            raise SpecError(f"--set {key}={value}: expected an integer") from None
    return value


def load(spec: str, overrides: dict[str, str] | None = None) -> Graph:
    """A builtin preset name (with `overrides`) or a YAML spec path."""
    overrides = overrides or {}
    if spec in PRESETS:
        defaults = options(spec)
        kwargs = {}
        for key, value in overrides.items():
            if key not in defaults:
                raise SpecError(f"--set {key}: preset {spec!r} has no option {key!r}{suggest(key, defaults)}; "
                                f"options: {', '.join(defaults)}")
            kwargs[key] = _coerce(spec, key, value, defaults[key])
        settings = {**defaults, **kwargs}
        for key, unused, why in _UNUSED:
            if key in kwargs and unused(settings):
                raise SpecError(f"option {key}: preset {spec!r} does not use it here: {why}")
        return PRESETS[spec](**kwargs)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if overrides:
            raise SpecError("--set applies to builtin presets; edit the spec file instead", spec)
        return load_spec(path)
    raise SpecError(f"unknown spec {spec!r}{suggest(spec, PRESETS)}: use a preset ({', '.join(PRESETS)}) "
                    "or a YAML file")
